// Comparing attention kinds: the plan (kinds x seeds, one run directory each), training one run
// to a typed outcome, executors that train a plan in this process or in child processes, the
// evaluation of the trained runs, and the per-kind summary.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "quest/lab/data/idx.h"
#include "quest/lab/report/table.h"
#include "quest/lab/runs/run_dir.h"
#include "quest/lab/training/trainer.h"

namespace quest::runs {

// Where a run's images come from.
struct DataSource {
  std::string dir = data::kFashionMnistDir;  // MNIST-format directory
  double val_fraction = 0.1;                 // held-out share of the training split
};

struct RunSpec {
  std::string kind;
  uint64_t seed = 0;
  training::TrainConfig config;  // attention, seed and run_dir set for this run
  RunDir dir() const { return RunDir(config.run_dir); }
  std::string label() const { return kind + " seed " + std::to_string(seed); }
};

// The (kind, seed) runs of a comparison in table order, each in <out_dir>/<kind>/seed-<s>.
// Throws std::invalid_argument for an unknown kind or a kind or seed listed twice (it would count
// the same run twice in a mean).
std::vector<RunSpec> plan_compare(const training::TrainConfig& base, const std::vector<std::string>& kinds,
                                  const std::vector<uint64_t>& seeds, const std::string& out_dir);

// One run trained in this process, start to end: data, Trainer, resume, divergence. Writes the
// run's config.json, metrics, checkpoints, outcome.json, and result.json (test metrics) when ok.
struct TrainReport {
  RunOutcome outcome;
  training::EvalResult test;  // on the test split; only when ok
  double wall_seconds = 0;
  int64_t epoch = 0;          // epochs done
  bool checkpoint_kept = false;
  std::vector<std::optional<HeadDiagnostics>> diagnostics;  // per layer, at the stop (diverged)
};
struct TrainCallbacks {
  std::function<void(const training::MnistSplits&)> on_data;  // before training
  std::function<void(const nlohmann::json&)> on_step;         // every step's line
};
TrainReport train_run(const training::TrainConfig& config, const DataSource& data, bool resume,
                      const TrainCallbacks& callbacks = {});

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
  virtual std::vector<RunOutcome> execute(const std::vector<RunSpec>& runs, const DataSource& data, bool resume,
                                          const ExecutorEvents& events) = 0;
  virtual std::string describe() const = 0;
};

// One run after another in this process, with every thread.
std::unique_ptr<Executor> in_process_executor();
// `workers` runs side by side, each `<executable> train --config <run>/config.json ...` in a
// child process with `threads` threads (stdout and stderr to <run>/train.log); the outcome comes
// from the run's outcome.json, or from the exit code and the log's last line when it has none.
std::unique_ptr<Executor> child_process_executor(int workers, int threads,
                                                 std::string executable = "/proc/self/exe");

// Final attention diagnostics of a model on up to 256 test images, over layers and heads.
struct FinalDiagnostics {
  double k_norm_max = 0, q_norm_max = 0, logit_abs_max = 0, entropy_mean = 0;
};

struct RunResult {
  RunSpec spec;
  RunOutcome outcome;
  double test_accuracy = 0, test_loss = 0;
  double train_seconds = 0;  // over resumed segments too
  FinalDiagnostics diagnostics;
  nlohmann::json to_json() const;
};

struct CompareResult {
  std::vector<RunResult> runs;      // evaluated runs (ok or diverged with a checkpoint), plan order
  std::vector<std::string> failed;  // one line per run that could not be evaluated
  std::vector<std::string> kinds;   // table order
};

// Trains the plan with `executor` (runs whose checkpoint already holds every epoch are only
// evaluated when `resume`), then evaluates every run that has a checkpoint on the test split.
// `on_note` gets one line per event worth printing (a finished run, a failure, an evaluation).
CompareResult compare(const std::vector<RunSpec>& plan, const DataSource& data, bool resume, Executor& executor,
                      const ExecutorEvents& events = {},
                      const std::function<void(const std::string&)>& on_note = {});

// Per kind: test accuracy mean ± std over seeds, seeds, the last seed's final diagnostics and
// the mean training seconds.
report::Table summarize(const CompareResult& result);

}  // namespace quest::runs
