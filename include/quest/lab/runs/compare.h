// Comparing attention kinds, for every task (tasks/task_kind.h): the plan (kinds x seeds, one run
// directory each), training one run to a typed outcome, executors that train a plan in this
// process or in child processes, the scoring of the trained runs, and the per-kind summary.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "quest/lab/report/table.h"
#include "quest/lab/runs/run_dir.h"
#include "quest/lab/tasks/task_kind.h"

namespace quest::runs {

// One run of a comparison, whatever its task: what the executors and the plan's bookkeeping need.
// The run directory describes the run (config.json names its task and data): in this process
// train_run trains it, in a child process `quest run <run_dir>` does.
struct RunSpec {
  std::string kind;
  uint64_t seed = 0;
  std::string run_dir;
  int64_t epochs = 0;     // a checkpoint holding this many epochs is a finished run
  nlohmann::json config;  // the run's resolved config, written to config.json
  bool evaluate_test = true;  // false: no test scores, no result.json (a sweep scores validation)
  RunDir dir() const { return RunDir(run_dir); }
  std::string label() const { return kind + " seed " + std::to_string(seed); }
};

// kinds x seeds of `base` (a task's config, its "task" naming the task) in table order, each with
// its attention kind, seed and run_dir <out_dir>/<kind>/seed-<s>. Throws std::invalid_argument for
// an unknown kind or a kind or seed listed twice (it would count the same run twice in a mean).
std::vector<RunSpec> plan_runs(const nlohmann::json& base, const std::vector<std::string>& kinds,
                               const std::vector<uint64_t>& seeds, const std::string& out_dir);

// One run trained in this process, start to end: its task's data and model, resume, divergence.
// Writes the run's config.json, metrics, checkpoints, outcome.json, and result.json (the test
// scores, the step they are of, the training seconds and the config) when it ends ok.
struct TrainReport {
  RunOutcome outcome;
  nlohmann::json metrics = nlohmann::json::object();  // training measurements; test scores when ok
  double wall_seconds = 0, train_seconds = 0;
  int64_t epoch = 0, step = 0;  // done
  bool checkpoint_kept = false;
  std::vector<std::optional<HeadDiagnostics>> diagnostics;  // per layer, at the stop (diverged)
};
struct TrainCallbacks {
  std::function<void(const tasks::TaskRun&)> on_start;  // data loaded, model built, before training
  std::function<void(const nlohmann::json&)> on_step;   // every step's line
  bool evaluate_test = true;  // false: no test scores, no result.json (a sweep scores validation)
};
// `config`: any task's (its "task" key picks it; task_kind_of). `parallel`: this process is one rank
// of a data-parallel run; every rank calls train_run, rank 0 alone writes the run directory.
TrainReport train_run(const nlohmann::json& config, bool resume, const TrainCallbacks& callbacks = {},
                      const training::DataParallel& parallel = {});

// What an executor reports while it trains.
struct ExecutorEvents {
  std::function<void(const RunSpec&)> on_start;
  std::function<void(const RunSpec&, const nlohmann::json&)> on_step;   // in-process only
  std::function<void(const RunSpec&, const nlohmann::json&)> on_epoch;  // each finished epoch
  std::function<void(const RunSpec&, const RunOutcome&)> on_end;
};

class Executor {
 public:
  virtual ~Executor() = default;
  // Trains every run (resuming from checkpoints when `resume`); one outcome per run, in order.
  virtual std::vector<RunOutcome> execute(const std::vector<RunSpec>& runs, bool resume,
                                          const ExecutorEvents& events) = 0;
  virtual std::string describe() const = 0;
};

// One run after another in this process, with every thread.
std::unique_ptr<Executor> in_process_executor();
// `workers` runs side by side, each `<executable> run <run_dir> [--resume] [--no-test]` in a child
// process with `threads` threads (stdout and stderr to <run>/train.log); the outcome comes
// from the run's outcome.json, or from the exit code and the log's last line when it has none.
std::unique_ptr<Executor> child_process_executor(int workers, int threads,
                                                 std::string executable = "/proc/self/exe");

// Final attention diagnostics of a model on its first test samples, over layers and heads.
struct FinalDiagnostics {
  double k_norm_max = 0, q_norm_max = 0, logit_abs_max = 0, entropy_mean = 0;
};
// Maxima over layers and heads of a model's recorded diagnostics, entropy averaged over them.
FinalDiagnostics final_diagnostics_of(const std::vector<std::optional<HeadDiagnostics>>& layers);
nlohmann::json to_json(const FinalDiagnostics& d);

struct RunResult {
  RunSpec spec;
  RunOutcome outcome;
  nlohmann::json metrics = nlohmann::json::object();  // the task's test scores and training measurements
  double train_seconds = 0;                           // over resumed segments too
  FinalDiagnostics diagnostics;                       // on the first test samples
  nlohmann::json to_json() const;
};

struct CompareResult {
  std::string task;                 // the plan's (one task per comparison)
  std::vector<RunResult> runs;      // evaluated runs (ok or diverged with a checkpoint), plan order
  std::vector<std::string> failed;  // one line per run that could not be evaluated
  std::vector<std::string> kinds;   // table order
};

// The training half of every comparison: trains the plan with `executor`, except, when `resume`,
// runs whose checkpoint already holds every epoch (noted "finished, evaluating only"). One outcome
// per run of the plan. `on_note` gets one line per event worth printing.
std::vector<RunOutcome> train_plan(const std::vector<RunSpec>& plan, bool resume, Executor& executor,
                                   const ExecutorEvents& events = {},
                                   const std::function<void(const std::string&)>& on_note = {});
// Why a trained run cannot be evaluated (it failed, or diverged before its first checkpoint);
// nullopt when it can.
std::optional<std::string> not_evaluable(const RunSpec& run, const RunOutcome& outcome);
// The kinds of a plan in table order.
std::vector<std::string> kinds_of(const std::vector<RunSpec>& plan);

// A trained run's scores: its own result.json when written for the checkpoint's step (scoring a
// test split can take minutes), else its task's test_metrics of the checkpoint; the diagnostics.
RunResult evaluate_run(const RunSpec& run, const RunOutcome& outcome);

// train_plan, then every run that has a checkpoint scored (evaluate_run).
CompareResult compare(const std::vector<RunSpec>& plan, bool resume, Executor& executor,
                      const ExecutorEvents& events = {},
                      const std::function<void(const std::string&)>& on_note = {});

// Per kind: the task's headline test metric, mean ± std over seeds; the seeds; the last seed's
// final diagnostics; the means of the task's further columns and of the training seconds.
report::Table summarize(const CompareResult& result);

}  // namespace quest::runs
