// Robustness of trained checkpoints: accuracy under common corruptions (with CE and mCE against a
// baseline kind) and under white-box attacks (with built-in sanity checks). Every checkpoint is
// evaluated on the same test images; results are per checkpoint, summarised per attention kind
// (mean ± std over its checkpoints, i.e. over seeds).
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "quest/lab/report/table.h"
#include "quest/lab/robustness/attacks.h"
#include "quest/lab/tasks/vit.h"

namespace quest::robustness {

struct EvaluatedModel {
  std::string checkpoint, kind;
  uint64_t seed = 0;
  std::shared_ptr<training::VitTrainer> trainer;
  Classifier classify;  // [0, 1] images -> logits, normalised as the run was trained
};

struct ModelSet {
  std::vector<EvaluatedModel> models;
  torch::Tensor images;  // (N, 1, H, W) float in [0, 1]: the first `limit` test images
  torch::Tensor labels;
  std::vector<std::string> kinds;  // in order of first appearance
  std::vector<std::string> notes;  // e.g. a normalisation recomputed for an old checkpoint
};

// Loads each checkpoint with its run's config.json; inputs are normalised with the statistics
// saved in the checkpoint (recomputed from `data_dir`'s training images for checkpoints written
// before quest saved them). limit 0: every test image.
ModelSet load_models(const std::vector<std::string>& checkpoints, const std::string& data_dir, int64_t limit);

double accuracy(const EvaluatedModel& model, const torch::Tensor& images, const torch::Tensor& labels,
                int64_t batch_size);

// Progress of a long evaluation: (units done, units in all, what is being done).
using Progress = std::function<void(int64_t, int64_t, const std::string&)>;

// ---------------------------------------------------------------------------- corruptions

struct CorruptionOptions {
  std::vector<std::string> corruptions;  // empty: all (corruption_names())
  std::vector<int> severities = {1, 2, 3, 4, 5};
  std::string baseline_kind = "standard";
  uint64_t seed = 0;
  int64_t batch_size = 500;
};
// Throws std::invalid_argument naming an unknown corruption or a severity outside 1..5.
void validate(const CorruptionOptions& options);

struct CorruptionReport {
  CorruptionOptions options;  // corruptions filled in
  std::vector<double> clean;                                   // [model]
  std::vector<std::vector<std::vector<double>>> accuracy;      // [corruption][severity][model]
  std::vector<std::vector<double>> ce;                         // [model][corruption]; NaN without baseline
  std::vector<double> mce, mean_corrupted;                     // [model]
  bool has_baseline = false;
  int64_t test_images = 0;
};

// CE_c = sum_s E_cs / sum_s E_cs(baseline), the baseline's error the mean over its checkpoints;
// mCE = mean_c CE_c (Hendrycks & Dietterich).
CorruptionReport evaluate_corruptions(const ModelSet& set, const CorruptionOptions& options,
                                      const Progress& progress = {});
// Rows: clean, each corruption (mean over severities), mean corrupted, mCE; columns: the kinds.
report::Table corruption_table(const ModelSet& set, const CorruptionReport& report);
// robustness.json, robustness.csv and the figures accuracy_vs_severity.png and
// accuracy_by_corruption.png (data under plot_data/).
void write_corruption_outputs(const ModelSet& set, const CorruptionReport& report, const std::filesystem::path& dir);

// ---------------------------------------------------------------------------- attacks

struct AttackSweepOptions {
  std::vector<std::string> attacks = {"fgsm", "pgd_linf", "pgd_l2"};
  std::vector<double> eps = {0, 1.0 / 255, 2.0 / 255, 4.0 / 255, 8.0 / 255, 0.1, 0.2};  // L-inf radii
  std::vector<double> l2_eps = {0, 0.1, 0.2, 0.5, 1.0, 2.0};                           // pgd_l2 radii
  int64_t steps = 10;
  double step_ratio = 0.25;
  uint64_t seed = 0;
  int64_t batch_size = 500;
  const std::vector<double>& radii(AttackKind kind) const { return kind == AttackKind::pgd_l2 ? l2_eps : eps; }
};
// Throws std::invalid_argument naming an unknown attack or a negative radius.
std::vector<AttackKind> validate(const AttackSweepOptions& options);

struct AttackReport {
  AttackSweepOptions options;
  std::vector<AttackKind> attacks;
  std::vector<double> clean;                               // [model]
  std::vector<std::vector<std::vector<double>>> accuracy;  // [model][attack][radius]
  // Sanity checks. Always enforced (an error, not a warning): every adversarial image inside its
  // ball and inside [0, 1]. Reported: eps 0 reproduces clean accuracy; PGD never gains accuracy
  // as eps grows.
  std::vector<std::string> warnings;
  bool eps0_is_clean = true, pgd_monotone = true;
  int64_t test_images = 0;
};

AttackReport evaluate_attacks(const ModelSet& set, const AttackSweepOptions& options, const Progress& progress = {});
// Rows: (attack, eps); columns: the kinds (accuracy mean ± std over checkpoints).
report::Table attack_table(const ModelSet& set, const AttackReport& report);
// attack.json, attack.csv and accuracy_vs_eps.png (data under plot_data/).
void write_attack_outputs(const ModelSet& set, const AttackReport& report, const std::filesystem::path& dir);

}  // namespace quest::robustness
