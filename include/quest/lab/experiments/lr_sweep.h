// Learning-rate sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer
// training instabilities"): kinds x learning rates x seeds x model sizes of one task (the ViT or the
// language model), everything but the learning rate held fixed; per run the final validation loss,
// whether and when it diverged, and the attention-logit growth over training; per kind and size the
// LR sensitivity, the expected degradation of the final loss over the learning rates relative to the
// best one, with the loss capped at the loss at initialisation:
//   S = mean_lr[min(L(lr), L0)] - min_lr L(lr)   (a diverged run counts as L0).
// Training goes through the comparison machinery (runs/compare.h: plan, executors, resume).
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "quest/lab/report/table.h"
#include "quest/lab/runs/compare.h"

namespace quest::experiments {

// One model size: keys of the task config's "model" object laid over the base config's, and the
// seeds run at this size (empty: the sweep's).
struct SweepSize {
  std::string name;
  nlohmann::json model = nlohmann::json::object();
  std::vector<uint64_t> seeds;
};

// A kind trained with extra config keys, swept beside the plain kinds under its own name (its run
// directories and table rows), e.g. {"name": "standard+qk-clip", "kind": "standard", "config":
// {"qk_clip": 100}, "sizes": ["l", "xl"]}; "sizes" absent: every size.
struct SweepVariant {
  std::string name, kind;
  nlohmann::json config = nlohmann::json::object();  // top-level keys laid over the task config
  std::vector<std::string> sizes;
  bool at(const std::string& size) const;
};

// A sweep file (configs/lr-sweep-*.json): {"task": "vit"|"lm"|any registered task, "config": {...},
// "sizes": [{"name", "model", "seeds"?}], "kinds": [...], "variants": [...]?, "lrs": [...], "seeds": [...]}.
struct LrSweep {
  std::string task = "vit";
  nlohmann::json config = nlohmann::json::object();  // the task's config (its data included)
  std::vector<SweepSize> sizes = {{"base", nlohmann::json::object(), {}}};
  std::vector<std::string> kinds = {"standard", "quest", "qnorm", "qknorm", "qk_layernorm"};
  std::vector<SweepVariant> variants;
  std::vector<double> lrs;
  std::vector<uint64_t> seeds = {0, 1};
  // What is swept at a size, in table order: the kinds, then the variants run there.
  std::vector<std::string> labels(const SweepSize& size) const;
  const std::vector<uint64_t>& seeds_of(const SweepSize& size) const { return size.seeds.empty() ? seeds : size.seeds; }
};
// Throws std::invalid_argument naming the key: unknown task (tasks/task_kind.h) or key, no learning rate, a learning rate
// that is not positive or listed twice, a size or variant named twice, a variant whose name is a
// kind's or whose size is not swept, a seed listed twice; the task config is checked by the task.
LrSweep sweep_from_json(const nlohmann::json& j);
nlohmann::json to_json(const LrSweep& sweep);

// One run of the sweep: run directory <out>/<size>/lr-<lr>/<kind or variant>/seed-<s>.
struct SweepPoint {
  std::string size;
  double lr = 0;
  runs::RunSpec run;
  // What the sweep file asks for this run: {"config": the task config before its defaults fill it
  // in (the size's model and the rate laid over, a variant's keys too), "kind", "seed"[, "variant"]}.
  nlohmann::json request;
};
// sizes x learning rates x (kinds, then variants) x seeds, in that order. Each run is trained without the test
// evaluation (the sweep scores the final validation loss).
std::vector<SweepPoint> plan_sweep(const LrSweep& sweep, const std::string& out_dir);

// What a trained run's metrics say.
struct SweepRunResult {
  std::string size, kind;
  double lr = 0;
  uint64_t seed = 0;
  runs::RunOutcome outcome;
  std::optional<int64_t> diverged_step;  // the step its metrics stop at, when it diverged
  std::optional<int64_t> warned_step;    // the logit monitor's first warning
  double init_loss = NAN;   // training loss of step 0 (before any update)
  double final_loss = NAN;  // validation loss after the last epoch; NaN unless ok
  // Over the logged steps, all layers and heads:
  double logit_abs_max = NAN, q_norm_max = NAN, k_norm_max = NAN, entropy_min = NAN;
  double log_z_abs_max = NAN;  // |mean log-partition| of the output logits
  // From the run's segment lines (a resumed run: comma-joined where segments differ).
  int64_t parameters = 0;
  std::string simd_target, threads;
  nlohmann::json to_json() const;
};
SweepRunResult read_sweep_run(const SweepPoint& point, const runs::RunOutcome& outcome);
SweepRunResult sweep_run_from_json(const nlohmann::json& j);  // to_json's inverse

// Trains the sweep (runs::train_plan with `executor`) and reads every run. On resume, finished runs
// and runs whose outcome.json says diverged are not trained again (a rerun would diverge the same way).
// `record` (a path, optional): the sweep's durable state, one JSON line per run that ended (ok or
// diverged), appended as it ends, with a fingerprint of what the sweep file asked for it
// (SweepPoint::request). Small enough to commit; on resume a recorded run whose request is
// unchanged is taken from it and not trained again even when its run directory is gone (a sweep
// spread over machines). Without resume it starts empty.
std::vector<SweepRunResult> run_sweep(const std::vector<SweepPoint>& points, bool resume, runs::Executor& executor,
                                      const runs::ExecutorEvents& events = {},
                                      const std::function<void(const std::string&)>& on_note = {},
                                      const std::string& record = "");

// LR sensitivity of one kind at one size.
struct Sensitivity {
  std::string size, kind;
  double value = NAN;                  // S on the seed-mean capped loss at each learning rate
  double low = NAN, high = NAN;        // 95 % bootstrap interval (seeds resampled at each rate)
  double best_loss = NAN, best_lr = NAN;
  double init_loss = NAN;              // L0, median over the runs' step-0 losses
  int diverged = 0, runs = 0;
  int64_t parameters = 0;              // the model's (the largest over the runs)
  // At the highest learning rate where no run diverged: seed means of the runs' max |logit| and
  // min entropy (NaN: every rate had a divergence).
  double stable_lr = NAN, stable_logit_abs_max = NAN, stable_entropy_min = NAN;
};
// Capped loss per learning rate (rates in ascending order), one vector of seeds' losses each.
// S of the means, and the interval from `resamples` bootstrap draws (seeded, so reproducible).
Sensitivity lr_sensitivity(const std::vector<double>& lrs, const std::vector<std::vector<double>>& capped_losses,
                           int resamples = 2000);
// Per size and kind (table order), from the sweep's runs.
std::vector<Sensitivity> sensitivities(const LrSweep& sweep, const std::vector<SweepRunResult>& runs);

report::Table sensitivity_table(const std::vector<Sensitivity>& rows);
// One row per run: size, kind, lr, seed, status, losses, diagnostics.
report::Table runs_table(const std::vector<SweepRunResult>& runs);

// Figures into <out>/plots: per size, final validation loss vs learning rate and max attention
// logit vs learning rate (log x; one colour per kind, seed means, diverged runs at L0 and marked);
// with two sizes or more, LR sensitivity (95 % interval) against parameter count and max |logit| /
// min entropy at the highest stable rate against parameter count (Wortsman et al.'s Figure 1 form).
void write_sweep_plots(const LrSweep& sweep, const std::vector<SweepRunResult>& runs, const std::string& out_dir);

// The learning rate whose training curves show standard attention against quest at one size: the
// lowest rate at which a standard run diverged and no quest run did; failing that, the rate where
// standard's max |logit| is largest relative to quest's. nullopt without runs of both kinds.
std::optional<double> contrast_lr(const std::vector<SweepRunResult>& runs, const std::string& size);

}  // namespace quest::experiments
