// The spurious-pattern stability experiment (the QUEST paper's claim 1): train the retrieval toy
// model (quest/models/retrieval.h) on the biased retrieval task (quest/data/retrieval.h) and ask
// whether it learned the robust cue (Sigma) or only the shortcut (b). One run per
// (kind, learning rate, weight decay, seed); a grid of runs gives each kind's success rate.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include <filesystem>

#include "quest/lab/data/retrieval.h"
#include "quest/lab/report/table.h"
#include "quest/lab/models/retrieval.h"

namespace quest::experiments {

struct SpuriousRunConfig {
  data::RetrievalTaskOptions task;
  models::RetrievalModelOptions model;  // key_dim and classes are taken from `task`
  double lr = 1e-3;
  double weight_decay = 0.0;  // AdamW (decoupled); biases, the query token and kind parameters get none
  int64_t steps = 1000;
  int64_t batch_size = 64;   // fresh samples every step: no sample is seen twice
  int64_t log_every = 50;    // steps between trajectory points
  int64_t eval_size = 2000;  // samples per evaluation split
  int64_t probe_size = 256;  // samples per split for the trajectory statistics
  uint64_t seed = 0;         // model initialisation and training stream
  // Success, "the robust solution is learned": accuracy >= unbiased_threshold on the unbiased
  // split (the Sigma cue alone finds the answer) and >= conflicting_threshold on the conflicting
  // split (Sigma outweighs a planted b more often than not). Not 0.9 there too: with the default
  // task the Bayes-optimal reader of the training distribution itself gets ~0.72 on conflicting,
  // since b is a perfectly reliable cue wherever it occurs in training.
  double unbiased_threshold = 0.9;
  double conflicting_threshold = 0.5;
};

// Statistics at one step, on fixed probe samples (biased and unbiased splits).
struct SpuriousPoint {
  int64_t step = 0;
  double loss = 0;                  // training loss, mean over the last log_every steps
  double key_norm_biased = 0;       // mean |k| of answer tokens in biased samples
  double key_norm_unbiased = 0;     // ... in unbiased samples
  double key_norm_ordinary = 0;     // mean |k| of non-answer tokens
  double query_norm = 0;
  double max_logit = 0;             // max |s| over both probes
  double entropy = 0;               // mean attention entropy over both probes
  double accuracy_biased = 0, accuracy_unbiased = 0;
};

struct SpuriousRunResult {
  SpuriousRunConfig config;
  std::vector<SpuriousPoint> trajectory;
  double accuracy_biased = 0, accuracy_unbiased = 0, accuracy_conflicting = 0;
  bool success = false;
  bool diverged = false;  // non-finite loss: the run stopped there; success is false
  int64_t steps_done = 0;
  double seconds = 0;
};

// Evaluation splits shared by every run of a grid (fixed seed, independent of the run's seed).
struct SpuriousEvalSets {
  data::RetrievalBatch biased, unbiased, conflicting;        // eval_size each
  data::RetrievalBatch probe_biased, probe_unbiased;         // probe_size each
  // Accuracy of the Bayes-optimal reader (data::oracle_predictions) on each evaluation split.
  double oracle_biased = 0, oracle_unbiased = 0, oracle_conflicting = 0;
};
SpuriousEvalSets make_eval_sets(const data::RetrievalTaskOptions& task, int64_t eval_size, int64_t probe_size);

// One training run on the training engine (quest/lab/training/engine.h). Deterministic for a
// given config (and eval sets): every random draw comes from generators seeded by config.seed.
SpuriousRunResult run_spurious(const SpuriousRunConfig& config, const SpuriousEvalSets& eval);

// Every config of `grid` (all on `eval`'s task), `workers` threads side by side (each run
// single-threaded inside, each with its own generators, so the results equal one-by-one runs);
// results in grid order; `on_done(index, result)` is called as each finishes (from one
// thread at a time).
std::vector<SpuriousRunResult> run_spurious_grid(
    const std::vector<SpuriousRunConfig>& grid, const SpuriousEvalSets& eval, int workers,
    const std::function<void(size_t, const SpuriousRunResult&)>& on_done = {});

nlohmann::json to_json(const SpuriousRunConfig& config);
nlohmann::json to_json(const SpuriousRunResult& result);

// A grid: every kind x learning rate x weight decay x seed, on `base` (task, model, steps, ...).
struct SpuriousGrid {
  std::vector<std::string> kinds{"standard", "quest", "qnorm", "qknorm"};
  std::vector<double> lrs{1e-3, 3e-3, 1e-2};
  std::vector<double> weight_decays{0.0, 0.1, 1.0};
  std::vector<uint64_t> seeds{0, 1, 2};
  SpuriousRunConfig base;
};
// The grid's runs, kind-major. Throws std::invalid_argument naming an unknown kind.
std::vector<SpuriousRunConfig> build_grid(const SpuriousGrid& grid);

// Per kind: successes / runs, diverged runs, accuracies on the three splits (mean ± std over the
// kind's runs), final key norms and max |logit|, and the paper's reported success rate.
report::Table success_table(const SpuriousGrid& grid, const std::vector<SpuriousRunResult>& results);

// runs.csv, success.csv, results.json (with `command` and `seconds`), heatmap-<kind>.png (success
// rate per lr x weight decay) and trajectories-<kind>.png (key norms, query norm, max |logit|,
// entropy over steps, each cell averaged over seeds).
void write_spurious_outputs(const std::filesystem::path& dir, const SpuriousGrid& grid, const SpuriousEvalSets& eval,
                            const std::vector<SpuriousRunResult>& results, const std::string& command,
                            double seconds);

}  // namespace quest::experiments
