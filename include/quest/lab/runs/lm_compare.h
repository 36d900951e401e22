// Comparing attention kinds on the byte-level language model: one run trained to a typed outcome
// (what `quest lm train` runs), the plan, the evaluation of trained runs in bits per byte on the
// test split, and the per-kind table. Training and its bookkeeping are compare.h's (train_plan and
// the executors), shared with the ViT.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "quest/lab/runs/compare.h"
#include "quest/lab/training/lm.h"

namespace quest::runs {

struct LmTrainReport {
  RunOutcome outcome;
  training::LmEval valid, test;  // valid: its first eval_bytes; test: the whole split; only when ok
  double train_seconds = 0, tokens_per_second = 0;
  bool checkpoint_kept = false;
  std::vector<std::optional<HeadDiagnostics>> diagnostics;  // per layer, at the stop (diverged)
};
struct LmTrainCallbacks {
  std::function<void(const data::ByteSplits&)> on_data;  // before training
  std::function<void(const nlohmann::json&)> on_step;    // every step's line
  bool evaluate_test = true;  // false: no valid/test evaluation, no result.json (a sweep scores validation)
};
// One LM run in this process, start to end: corpus, LmTrainer, resume, divergence. Writes the run's
// config.json, metrics, checkpoints, outcome.json, and result.json (test bits per byte) when ok.
// `parallel`: one rank of a data-parallel run (as train_run).
LmTrainReport train_lm_run(const training::LmConfig& config, bool resume, const LmTrainCallbacks& callbacks = {},
                           const training::DataParallel& parallel = {});

// `base` with each run's attention, seed and run_dir; a child process trains it as `quest lm train`.
std::vector<RunSpec> plan_lm_compare(const training::LmConfig& base, const std::vector<std::string>& kinds,
                                     const std::vector<uint64_t>& seeds, const std::string& out_dir);

struct LmRunResult {
  RunSpec spec;
  RunOutcome outcome;
  double test_bits_per_byte = 0, test_accuracy = 0;
  double train_seconds = 0, tokens_per_second = 0;  // over resumed segments too
  FinalDiagnostics diagnostics;                     // on the test split's first windows
  nlohmann::json to_json() const;
};

struct LmCompareResult {
  std::vector<LmRunResult> runs;    // evaluated runs, plan order
  std::vector<std::string> failed;  // one line per run that could not be evaluated
  std::vector<std::string> kinds;   // table order
};

// train_plan, then every run with a checkpoint scored on the whole test split: the run's own
// result.json when it was written for the checkpoint's step, else evaluated from the checkpoint.
LmCompareResult compare_lm(const std::vector<RunSpec>& plan, bool resume, Executor& executor,
                           const ExecutorEvents& events = {},
                           const std::function<void(const std::string&)>& on_note = {});

// Per kind: test bits per byte mean ± std over seeds, seeds, the last seed's final diagnostics,
// mean training tokens/s and seconds.
report::Table summarize(const LmCompareResult& result);

}  // namespace quest::runs
