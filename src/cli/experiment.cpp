// quest experiment spurious (and registers lr-sweep): flags -> experiments::run_spurious_grid -> table, files, figures.
#include <chrono>
#include <cstdio>

#include "commands.h"
#include "quest/lab/experiments/spurious.h"

namespace quest::cli {
namespace {

struct SpuriousFlags {
  experiments::SpuriousGrid grid;
  std::string projections = "on";
  std::string queries = "learned";
  int workers = 2;
  std::string out_dir = "runs/spurious";
  std::string backend = "automatic";
};

void run_spurious(SpuriousFlags f, const std::string& command) {
  const auto backend = parse_backend(f.backend);
  if (!backend) throw std::invalid_argument("--backend: unknown backend '" + f.backend + "'");
  f.grid.base.model.projections(f.projections == "on").backend(*backend).queries(models::parse_queries(f.queries));
  const auto runs = experiments::build_grid(f.grid);
  std::printf("spurious-pattern grid: %zu runs (%zu kinds x %zu lrs x %zu weight decays x %zu seeds), "
              "projections %s, queries %s, %d workers -> %s\n",
              runs.size(), f.grid.kinds.size(), f.grid.lrs.size(), f.grid.weight_decays.size(), f.grid.seeds.size(),
              f.projections.c_str(), to_string(f.grid.base.model.queries()).c_str(), f.workers, f.out_dir.c_str());
  std::fflush(stdout);
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  const auto& base = f.grid.base;
  const auto eval = experiments::make_eval_sets(base.task, base.eval_size, base.probe_size);
  std::printf("Bayes-optimal reader of the training distribution: biased %.3f, unbiased %.3f, conflicting %.3f\n",
              eval.oracle_biased, eval.oracle_unbiased, eval.oracle_conflicting);
  size_t done = 0;
  const auto results = experiments::run_spurious_grid(runs, eval, f.workers, [&](size_t, const auto& r) {
    ++done;
    std::printf("[%zu/%zu] %-12s lr %-6g wd %-6g seed %llu  biased %.3f unbiased %.3f conflicting %.3f  %s  "
                "(%.1f s, ETA %.0f s)\n",
                done, runs.size(), to_string(r.config.model.attention()).c_str(), r.config.lr, r.config.weight_decay,
                (unsigned long long)r.config.seed, r.accuracy_biased, r.accuracy_unbiased, r.accuracy_conflicting,
                r.diverged ? "DIVERGED" : (r.success ? "success" : "shortcut"), r.seconds,
                elapsed() / done * (runs.size() - done));
    std::fflush(stdout);
  });
  const double seconds = elapsed();
  std::printf("\n%s", experiments::success_table(f.grid, results).console().c_str());
  std::printf("oracle (Bayes-optimal reader of the training distribution): biased %.3f, unbiased %.3f, "
              "conflicting %.3f\n",
              eval.oracle_biased, eval.oracle_unbiased, eval.oracle_conflicting);
  experiments::write_spurious_outputs(f.out_dir, f.grid, eval, results, command, seconds);
  std::printf("\n%zu runs in %.0f s; results in %s (results.json, runs.csv, success.csv, heatmap-*.png, "
              "trajectories-*.png)\n",
              results.size(), seconds, f.out_dir.c_str());
}

}  // namespace

std::string command_line(const std::string& name, const CLI::App* cmd) {
  std::string line = name;
  for (const auto* opt : cmd->get_options())
    if (opt->count() && opt->get_name() != "--help") {
      line += " " + opt->get_name();
      for (const auto& v : opt->results()) line += " " + v;
    }
  return line;
}

void add_experiment(CLI::App& app) {
  CLI::App* exp = app.add_subcommand("experiment", "Experiments that test the paper's claims");
  exp->require_subcommand(1);
  add_lr_sweep(exp);
  auto f = std::make_shared<SpuriousFlags>();
  CLI::App* cmd = exp->add_subcommand(
      "spurious",
      "The spurious-pattern retrieval grid (paper claim 1): kinds x lrs x weight decays x seeds; "
      "success = accuracy >= thresholds on the unbiased and the conflicting split");
  auto& b = f->grid.base;
  auto positive_int = CLI::Range(int64_t{1}, int64_t{1} << 30);
  cmd->add_option("--kinds", f->grid.kinds, "Attention kinds")->delimiter(',')->capture_default_str();
  cmd->add_option("--lrs", f->grid.lrs, "Learning rates (AdamW, constant)")->delimiter(',')->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--weight-decays", f->grid.weight_decays, "AdamW weight decays (linear-layer weights only)")
      ->delimiter(',')->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--seeds", f->grid.seeds)->delimiter(',')->capture_default_str();
  cmd->add_option("--projections", f->projections,
                  "on: MLP token encoder + learnable Q/K/V projections; off: a learned query on raw x^k")
      ->check(CLI::IsMember({"on", "off"}))->capture_default_str();
  cmd->add_option("--queries", f->queries,
                  "learned: one learned query token reads the sequence; tokens: self-attention, rows averaged")
      ->check(CLI::IsMember(models::names_of(models::kQueriesNames)))->capture_default_str();
  cmd->add_option("--steps", b.steps, "Training steps per run")->check(positive_int)->capture_default_str();
  cmd->add_option("--batch-size", b.batch_size)->check(positive_int)->capture_default_str();
  cmd->add_option("--log-every", b.log_every, "Steps between trajectory points")->check(positive_int)->capture_default_str();
  cmd->add_option("--eval-size", b.eval_size, "Samples per evaluation split")->check(positive_int)->capture_default_str();
  cmd->add_option("--unbiased-threshold", b.unbiased_threshold, "Success needs this accuracy on the unbiased split")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--conflicting-threshold", b.conflicting_threshold,
                  "... and this on the conflicting split (b planted on a non-answer token)")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--tokens", b.task.tokens, "N, tokens per sample")->check(CLI::Range(int64_t{2}, int64_t{1} << 20))->capture_default_str();
  cmd->add_option("--key-dim", b.task.key_dim, "d, width of x^k")->check(CLI::Range(int64_t{2}, int64_t{1} << 20))->capture_default_str();
  cmd->add_option("--classes", b.task.classes, "C, answer codes")->check(CLI::Range(int64_t{2}, int64_t{1} << 20))->capture_default_str();
  cmd->add_option("--bias-probability", b.task.bias_probability, "p, share of biased samples")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--high-variance", b.task.high_variance, "Sigma on the first half of x^k")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--low-variance", b.task.low_variance, "Sigma on the second half")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--bias-scale", b.task.bias_scale, "b = bias_scale * (1, ..., 1)")->capture_default_str();
  cmd->add_option("--dim", b.model.dim(), "Attention width")->check(positive_int)->capture_default_str();
  cmd->add_option("--heads", b.model.heads())->check(positive_int)->capture_default_str();
  cmd->add_option("--hidden", b.model.hidden(), "Token encoder width")->check(positive_int)->capture_default_str();
  cmd->add_option("--backend", f->backend, "automatic, fused, composite, reference or sdpa")->capture_default_str();
  cmd->add_option("--workers", f->workers, "Runs trained side by side (one thread each)")
      ->check(CLI::Range(1, 256))->capture_default_str();
  cmd->add_option("--out-dir", f->out_dir)->capture_default_str();
  cmd->callback([f, cmd] {
    run_spurious(*f, command_line("quest experiment spurious", cmd));
  });
}

}  // namespace quest::cli
