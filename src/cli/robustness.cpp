// quest robustness / quest attack: flags -> robustness::evaluate_* -> tables, files, figures.
#include <cstdio>
#include <filesystem>

#include "commands.h"
#include "progress.h"
#include "quest/lab/data/idx.h"
#include "quest/lab/robustness/evaluation.h"
#include "quest/torch/runtime.h"

namespace quest::cli {

namespace {

struct CommonFlags {
  std::vector<std::string> checkpoints;
  std::string data_dir = data::kFashionMnistDir, out_dir;
  int64_t limit = 0, batch_size = 500;
  uint64_t seed = 0;
};

robustness::ModelSet load(const CommonFlags& f) {
  configure_threads();
  robustness::ModelSet set = robustness::load_models(f.checkpoints, f.data_dir, f.limit);
  for (const auto& note : set.notes) std::printf("note: %s\n", note.c_str());
  return set;
}

robustness::Progress progress_printer() {
  auto clock = std::make_shared<Stopwatch>();
  return [clock](int64_t done, int64_t total, const std::string& what) {
    char line[256];
    std::snprintf(line, sizeof line, "%lld/%lld  %s  %.0f s  ETA %.0f s", (long long)done, (long long)total,
                  what.c_str(), clock->seconds(), clock->eta(done, total));
    progress_line(line, done == total);
  };
}

void run_robustness(const CommonFlags& f, robustness::CorruptionOptions o) {
  o.seed = f.seed;
  o.batch_size = f.batch_size;
  robustness::validate(o);  // before the slow loading
  const robustness::ModelSet set = load(f);
  const auto report = robustness::evaluate_corruptions(set, o, progress_printer());
  if (!report.has_baseline)
    std::printf("note: no '%s' checkpoint among the inputs: CE and mCE are not computed (--baseline-kind)\n",
                o.baseline_kind.c_str());
  std::printf("\naccuracy %% under corruption (mean over the severities; mean ± std over checkpoints), %lld test "
              "images\n%s",
              (long long)report.test_images, robustness::corruption_table(set, report).console().c_str());
  robustness::write_corruption_outputs(set, report, f.out_dir);
  std::printf("results: %s/robustness.{json,csv}, accuracy_vs_severity.png, accuracy_by_corruption.png\n",
              f.out_dir.c_str());
}

void run_attack(const CommonFlags& f, robustness::AttackSweepOptions o) {
  o.seed = f.seed;
  o.batch_size = f.batch_size;
  robustness::validate(o);
  const robustness::ModelSet set = load(f);
  const auto report = robustness::evaluate_attacks(set, o, progress_printer());
  std::printf("\nper checkpoint: accuracy %% (%lld test images, %lld PGD steps, step %.2f eps)\n",
              (long long)report.test_images, (long long)o.steps, o.step_ratio);
  for (size_t i = 0; i < set.models.size(); ++i) {
    const auto& m = set.models[i];
    std::printf("%s (%s, seed %llu): clean %.2f\n", m.checkpoint.c_str(), m.kind.c_str(), (unsigned long long)m.seed,
                100 * report.clean[i]);
    for (size_t t = 0; t < report.attacks.size(); ++t) {
      const auto& radii = o.radii(report.attacks[t]);
      std::printf("  %-9s", robustness::to_string(report.attacks[t]).c_str());
      for (size_t e = 0; e < radii.size(); ++e) std::printf("  eps %.4f: %5.2f", radii[e], 100 * report.accuracy[i][t][e]);
      std::printf("\n");
    }
  }
  std::printf("\nper kind: accuracy %% mean ± std over checkpoints\n%s",
              robustness::attack_table(set, report).console().c_str());
  robustness::write_attack_outputs(set, report, f.out_dir);
  for (const auto& w : report.warnings) std::printf("sanity check: %s\n", w.c_str());
  std::printf("sanity checks: every adversarial image inside its ball and in [0, 1]; eps 0 = clean: %s; "
              "PGD non-increasing in eps: %s\n",
              report.eps0_is_clean ? "yes" : "NO", report.pgd_monotone ? "yes" : "NO");
  std::printf("results: %s/attack.{json,csv}, accuracy_vs_eps.png\n", f.out_dir.c_str());
}

void add_common(CLI::App* cmd, CommonFlags& f, int64_t default_limit, const char* default_out) {
  cmd->add_option("checkpoints", f.checkpoints, "checkpoint.pt files (each with its run's config.json beside it)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--data-dir", f.data_dir, "MNIST-format directory (its t10k split is evaluated)")->capture_default_str();
  f.limit = default_limit;
  cmd->add_option("--limit", f.limit, "Evaluate the first N test images (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--batch-size", f.batch_size)->check(CLI::Range(int64_t{1}, int64_t{1} << 30))->capture_default_str();
  cmd->add_option("--seed", f.seed, "Seed of the random corruptions / attack starts")->capture_default_str();
  f.out_dir = default_out;
  cmd->add_option("--out-dir", f.out_dir, "Where JSON, CSV and PNG go")->capture_default_str();
}

}  // namespace

void add_robustness(CLI::App& app) {
  auto f = std::make_shared<CommonFlags>();
  auto r = std::make_shared<robustness::CorruptionOptions>();
  CLI::App* cmd = app.add_subcommand(
      "robustness", "Accuracy under common corruptions x severities; CE and mCE against a baseline kind");
  add_common(cmd, *f, 0, "runs/robustness");
  cmd->add_option("--corruptions", r->corruptions, "Subset of corruptions (default: all; see README)")->delimiter(',');
  cmd->add_option("--severities", r->severities)->delimiter(',')->capture_default_str();
  cmd->add_option("--baseline-kind", r->baseline_kind, "Attention kind whose checkpoints (mean error) normalise CE and mCE")
      ->capture_default_str();
  cmd->callback([f, r] { run_robustness(*f, *r); });

  auto fa = std::make_shared<CommonFlags>();
  auto a = std::make_shared<robustness::AttackSweepOptions>();
  CLI::App* atk = app.add_subcommand("attack", "Accuracy under FGSM, PGD-Linf and PGD-L2 for each checkpoint");
  add_common(atk, *fa, 1000, "runs/attack");
  atk->add_option("--attacks", a->attacks, "fgsm, pgd_linf, pgd_l2")->delimiter(',')->capture_default_str();
  atk->add_option("--eps", a->eps, "L-inf radii for fgsm and pgd_linf (pixels in [0, 1])")
      ->delimiter(',')
      ->capture_default_str();
  atk->add_option("--l2-eps", a->l2_eps, "L2 radii for pgd_l2")->delimiter(',')->capture_default_str();
  atk->add_option("--steps", a->steps, "PGD iterations")->check(CLI::Range(int64_t{1}, int64_t{1} << 20))->capture_default_str();
  atk->add_option("--step-ratio", a->step_ratio, "PGD step size as a fraction of eps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  atk->callback([fa, a] { run_attack(*fa, *a); });
}

}  // namespace quest::cli
