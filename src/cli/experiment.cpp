// quest experiment spurious: the spurious-pattern stability grid (kinds x learning rates x weight
// decays x seeds), its success-rate table, JSON/CSV results and gnuplot figures.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "commands.h"
#include "gnuplot.h"
#include "quest/experiments/spurious.h"
#include "stats.h"

namespace quest::cli {
namespace {

namespace fs = std::filesystem;
using experiments::SpuriousRunConfig;
using experiments::SpuriousRunResult;

struct SpuriousFlags {
  std::vector<std::string> kinds{"standard", "quest", "qnorm", "qknorm"};
  std::vector<double> lrs{1e-3, 3e-3, 1e-2};
  std::vector<double> weight_decays{0.0, 0.1, 1.0};
  std::vector<uint64_t> seeds{0, 1, 2};
  std::string projections = "on";
  SpuriousRunConfig base;
  int workers = 2;
  std::string out_dir = "runs/spurious";
  std::string backend = "automatic";
};

// The paper's reported success rates (../shared/reference/quest-paper.md), for the table.
const std::map<std::string, std::string> kPaperSuccess = {
    {"standard", "25 %"}, {"qnorm", "49 %"}, {"qknorm", "~0 %"}, {"quest", "58 %"}};

std::string fmt(double v, const char* f = "%.3g") {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::vector<SpuriousRunConfig> build_grid(const SpuriousFlags& f) {
  std::vector<SpuriousRunConfig> grid;
  const auto backend = parse_backend(f.backend);
  if (!backend) throw CLI::ValidationError("--backend", "unknown backend '" + f.backend + "'");
  for (const auto& name : f.kinds) {
    const auto kind = parse_kind(name);
    if (!kind) throw CLI::ValidationError("--kinds", "unknown kind '" + name + "'");
    for (double lr : f.lrs)
      for (double wd : f.weight_decays)
        for (uint64_t seed : f.seeds) {
          SpuriousRunConfig c = f.base;
          c.model.attention(*kind).projections(f.projections == "on").backend(*backend);
          c.lr = lr;
          c.weight_decay = wd;
          c.seed = seed;
          grid.push_back(c);
        }
  }
  return grid;
}

// The runs of one heat-map / trajectory cell: one kind at one (lr, weight decay), every seed.
std::vector<const SpuriousRunResult*> cell_runs(const std::vector<SpuriousRunResult>& results,
                                                const std::string& kind, double lr, double wd) {
  std::vector<const SpuriousRunResult*> cell;
  for (const auto& r : results)
    if (to_string(r.config.model.attention()) == kind && r.config.lr == lr && r.config.weight_decay == wd)
      cell.push_back(&r);
  return cell;
}

struct KindSummary {
  int runs = 0, successes = 0, diverged = 0;
  std::vector<double> biased, unbiased, conflicting, key_biased, key_unbiased, max_logit;
};

void write_outputs(const SpuriousFlags& f, const experiments::SpuriousEvalSets& eval,
                   const std::vector<SpuriousRunResult>& results,
                   const std::string& command, double seconds) {
  const fs::path dir = f.out_dir;
  std::map<std::string, KindSummary> by_kind;
  std::ofstream csv(dir / "runs.csv");
  csv << "kind,projections,lr,weight_decay,seed,success,diverged,accuracy_biased,accuracy_unbiased,"
         "accuracy_conflicting,key_norm_biased,key_norm_unbiased,key_norm_ordinary,query_norm,max_logit,"
         "entropy,seconds\n";
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& r : results) {
    const std::string kind = to_string(r.config.model.attention());
    const auto& last = r.trajectory.back();
    csv << kind << "," << (r.config.model.projections() ? "on" : "off") << "," << r.config.lr << ","
        << r.config.weight_decay << "," << r.config.seed << "," << r.success << "," << r.diverged << ","
        << r.accuracy_biased << "," << r.accuracy_unbiased << "," << r.accuracy_conflicting << ","
        << last.key_norm_biased << "," << last.key_norm_unbiased << "," << last.key_norm_ordinary << ","
        << last.query_norm << "," << last.max_logit << "," << last.entropy << "," << r.seconds << "\n";
    auto& s = by_kind[kind];
    ++s.runs;
    s.successes += r.success;
    s.diverged += r.diverged;
    s.biased.push_back(r.accuracy_biased);
    s.unbiased.push_back(r.accuracy_unbiased);
    s.conflicting.push_back(r.accuracy_conflicting);
    s.key_biased.push_back(last.key_norm_biased);
    s.key_unbiased.push_back(last.key_norm_unbiased);
    s.max_logit.push_back(last.max_logit);
    runs.push_back(experiments::to_json(r));
  }

  // Table: success rate per kind, beside the paper's.
  std::ofstream success_csv(dir / "success.csv");
  success_csv << "kind,runs,successes,success_rate,diverged,accuracy_biased,accuracy_unbiased,"
                 "accuracy_conflicting,key_norm_biased,key_norm_unbiased,max_logit,paper\n";
  nlohmann::json summary = nlohmann::json::object();
  std::printf("\n%-13s %9s %9s %17s %17s %17s %10s %10s %9s %7s\n", "kind", "success", "diverged",
              "acc biased", "acc unbiased", "acc conflicting", "|k| b-ans", "|k| ans", "max|s|", "paper");
  for (const auto& name : f.kinds) {
    const std::string kind = to_string(*parse_kind(name));
    const auto& s = by_kind[kind];
    const double rate = s.runs ? double(s.successes) / s.runs : 0;
    const std::string paper = kPaperSuccess.count(kind) ? kPaperSuccess.at(kind) : "-";
    auto pm = [](const std::vector<double>& v) { return fmt(mean_of(v), "%.3f") + " ± " + fmt(std_of(v), "%.3f"); };
    std::printf("%-13s %3d/%-3d %2.0f%% %9d %17s %17s %17s %10.3g %10.3g %9.3g %7s\n", kind.c_str(), s.successes,
                s.runs, 100 * rate, s.diverged, pm(s.biased).c_str(), pm(s.unbiased).c_str(),
                pm(s.conflicting).c_str(), mean_of(s.key_biased), mean_of(s.key_unbiased), mean_of(s.max_logit),
                paper.c_str());
    success_csv << kind << "," << s.runs << "," << s.successes << "," << rate << "," << s.diverged << ","
                << mean_of(s.biased) << "," << mean_of(s.unbiased) << "," << mean_of(s.conflicting) << ","
                << mean_of(s.key_biased) << "," << mean_of(s.key_unbiased) << "," << mean_of(s.max_logit) << ","
                << paper << "\n";
    summary[kind] = {{"runs", s.runs}, {"successes", s.successes}, {"success_rate", rate},
                     {"diverged", s.diverged}, {"paper", paper}};
  }
  std::printf("%-13s %9s %9s %17.3f %17.3f %17.3f   (Bayes-optimal reader of the training distribution)\n",
              "oracle", "", "", eval.oracle_biased, eval.oracle_unbiased, eval.oracle_conflicting);
  const nlohmann::json oracle = {{"accuracy_biased", eval.oracle_biased},
                                 {"accuracy_unbiased", eval.oracle_unbiased},
                                 {"accuracy_conflicting", eval.oracle_conflicting}};

  // Heat-maps: success rate per (lr, wd) cell over seeds, one PNG per kind.
  const int L = f.lrs.size(), W = f.weight_decays.size();
  std::string heat_script = kGnuplotHeader;
  heat_script += "set terminal pngcairo size 700,560 font ',10' noenhanced\nset cbrange [0:1]\n"
                 "set palette defined (0 '#b2182b', 0.5 '#f7f7f7', 1 '#2166ac')\nunset key\n"
                 "set xlabel 'learning rate'\nset ylabel 'weight decay'\nset cblabel 'success rate over seeds'\n";
  std::string xtics = "set xtics (", ytics = "set ytics (";
  for (int i = 0; i < L; ++i) xtics += (i ? ", " : "") + gnuplot_quote(fmt(f.lrs[i])) + " " + std::to_string(i);
  for (int j = 0; j < W; ++j)
    ytics += (j ? ", " : "") + gnuplot_quote(fmt(f.weight_decays[j])) + " " + std::to_string(j);
  heat_script += xtics + ")\n" + ytics + ")\n";
  heat_script += "set xrange [-0.5:" + std::to_string(L - 0.5) + "]\nset yrange [-0.5:" + std::to_string(W - 0.5) + "]\n";
  for (const auto& name : f.kinds) {
    const std::string kind = to_string(*parse_kind(name));
    std::ofstream dat(dir / ("heatmap-" + kind + ".dat"));
    for (int i = 0; i < L; ++i) {
      for (int j = 0; j < W; ++j) {
        const auto cell = cell_runs(results, kind, f.lrs[i], f.weight_decays[j]);
        const int n = cell.size();
        int ok = 0;
        for (auto* r : cell) ok += r->success;
        dat << i << " " << j << " " << (n ? double(ok) / n : 0) << " " << ok << "/" << n << "\n";
      }
      dat << "\n";
    }
    dat.close();
    const std::string d = gnuplot_quote((dir / ("heatmap-" + kind + ".dat")).string());
    heat_script += "set output " + gnuplot_quote((dir / ("heatmap-" + kind + ".png")).string()) + "\n";
    heat_script += "set title " + gnuplot_quote(kind + ": success rate (robust solution learned)") + "\n";
    // Filled boxes rather than `with image`, which needs at least a 2 x 2 grid.
    heat_script += "plot " + d + " using 1:2:(0.5):(0.5):3 with boxxyerror fillstyle solid 1.0 noborder "
                   "fillcolor palette, " + d + " using 1:2:4 with labels\n";
  }
  run_gnuplot(dir / "heatmap.gp", heat_script);

  // Trajectories, one PNG per kind: each (lr, wd) cell averaged over seeds.
  std::string traj_script = kGnuplotHeader;
  for (const auto& name : f.kinds) {
    const std::string kind = to_string(*parse_kind(name));
    const fs::path dat_path = dir / ("trajectories-" + kind + ".dat");
    std::ofstream dat(dat_path);
    std::vector<std::string> titles;
    for (double lr : f.lrs)
      for (double wd : f.weight_decays) {
        const auto cell = cell_runs(results, kind, lr, wd);
        if (cell.empty()) continue;
        size_t points = cell[0]->trajectory.size();
        for (auto* r : cell) points = std::min(points, r->trajectory.size());  // diverged runs stop early
        dat << "# lr " << lr << " wd " << wd << "\n";
        for (size_t t = 0; t < points; ++t) {
          double kb = 0, ku = 0, ko = 0, qn = 0, ml = 0, en = 0;
          for (auto* r : cell) {
            const auto& p = r->trajectory[t];
            kb += p.key_norm_biased, ku += p.key_norm_unbiased, ko += p.key_norm_ordinary;
            qn += p.query_norm, ml += p.max_logit, en += p.entropy;
          }
          const double n = cell.size();
          dat << cell[0]->trajectory[t].step << " " << kb / n << " " << ku / n << " " << ko / n << " " << qn / n
              << " " << ml / n << " " << en / n << "\n";
        }
        dat << "\n\n";
        titles.push_back("lr " + fmt(lr) + " wd " + fmt(wd));
      }
    dat.close();
    const std::string d = gnuplot_quote(dat_path.string());
    traj_script += "set output " + gnuplot_quote((dir / ("trajectories-" + kind + ".png")).string()) + "\n";
    traj_script += "set multiplot layout 2,2 title " +
                   gnuplot_quote(kind + " (mean over seeds per lr, wd; solid: biased answers, dashed: unbiased)") + "\n";
    auto panel = [&](const std::string& title, int column, bool log, int second_column) {
      std::string s = "set title " + gnuplot_quote(title) + "\nset xlabel 'step'\n";
      s += log ? "set logscale y\n" : "unset logscale y\n";
      s += "plot ";
      for (size_t i = 0; i < titles.size(); ++i) {
        s += (i ? ", " : "") + d + " index " + std::to_string(i) + " using 1:" + std::to_string(column) +
             " with lines lc " + std::to_string(i + 1) + " dt 1 title " + gnuplot_quote(titles[i]);
        if (second_column)
          s += ", " + d + " index " + std::to_string(i) + " using 1:" + std::to_string(second_column) +
               " with lines lc " + std::to_string(i + 1) + " dt 2 notitle";
      }
      return s + "\n";
    };
    traj_script += panel("key norm |k| of answer tokens", 2, true, 3);
    traj_script += panel("query norm |q|", 5, true, 0);
    traj_script += panel("max |logit|", 6, true, 0);
    traj_script += panel("attention entropy (nats)", 7, false, 0);
    traj_script += "unset multiplot\n";
  }
  run_gnuplot(dir / "trajectories.gp", traj_script);

  nlohmann::json out = {{"command", command}, {"seconds", seconds}, {"summary", summary},
                        {"oracle", oracle}, {"runs", runs}};
  std::ofstream(dir / "results.json") << out.dump(1) << "\n";
  std::printf("\n%zu runs in %.0f s; results in %s (results.json, runs.csv, success.csv, heatmap-*.png, "
              "trajectories-*.png)\n",
              results.size(), seconds, dir.string().c_str());
}

int run_spurious_command(const SpuriousFlags& f, const std::string& command) {
  const auto grid = build_grid(f);
  fs::create_directories(f.out_dir);
  std::printf("spurious-pattern grid: %zu runs (%zu kinds x %zu lrs x %zu weight decays x %zu seeds), "
              "projections %s, queries %s, %d workers -> %s\n",
              grid.size(), f.kinds.size(), f.lrs.size(), f.weight_decays.size(), f.seeds.size(),
              f.projections.c_str(), f.base.model.queries().c_str(), f.workers, f.out_dir.c_str());
  std::fflush(stdout);
  const auto start = std::chrono::steady_clock::now();
  size_t done = 0;
  const auto eval = experiments::make_eval_sets(f.base.task, f.base.eval_size, f.base.probe_size);
  std::printf("Bayes-optimal reader of the training distribution: biased %.3f, unbiased %.3f, conflicting %.3f\n",
              eval.oracle_biased, eval.oracle_unbiased, eval.oracle_conflicting);
  const auto results = experiments::run_spurious_grid(grid, eval, f.workers, [&](size_t, const SpuriousRunResult& r) {
    ++done;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("[%zu/%zu] %-12s lr %-6s wd %-6s seed %llu  biased %.3f unbiased %.3f conflicting %.3f  %s  "
                "(%.1f s, ETA %.0f s)\n",
                done, grid.size(), to_string(r.config.model.attention()).c_str(), fmt(r.config.lr).c_str(),
                fmt(r.config.weight_decay).c_str(), (unsigned long long)r.config.seed, r.accuracy_biased,
                r.accuracy_unbiased, r.accuracy_conflicting,
                r.diverged ? "DIVERGED" : (r.success ? "success" : "shortcut"), r.seconds,
                elapsed / done * (grid.size() - done));
    std::fflush(stdout);
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  write_outputs(f, eval, results, command, seconds);
  return 0;
}

}  // namespace

void add_experiment(CLI::App& app) {
  CLI::App* exp = app.add_subcommand("experiment", "Experiments that test the paper's claims");
  exp->require_subcommand(1);
  auto f = std::make_shared<SpuriousFlags>();
  auto command = std::make_shared<std::string>();
  CLI::App* cmd = exp->add_subcommand(
      "spurious",
      "The spurious-pattern retrieval grid (paper claim 1): kinds x lrs x weight decays x seeds; "
      "success = accuracy >= thresholds on the unbiased and the conflicting split");
  auto& b = f->base;
  auto positive_int = CLI::Range(int64_t{1}, int64_t{1} << 30);
  cmd->add_option("--kinds", f->kinds, "Attention kinds")->delimiter(',')->capture_default_str();
  cmd->add_option("--lrs", f->lrs, "Learning rates (AdamW, constant)")->delimiter(',')->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--weight-decays", f->weight_decays, "AdamW weight decays (linear-layer weights only)")
      ->delimiter(',')->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--seeds", f->seeds)->delimiter(',')->capture_default_str();
  cmd->add_option("--projections", f->projections,
                  "on: MLP token encoder + learnable Q/K/V projections; off: a learned query on raw x^k")
      ->check(CLI::IsMember({"on", "off"}))->capture_default_str();
  cmd->add_option("--queries", b.model.queries(),
                  "learned: one learned query token reads the sequence; tokens: self-attention, rows averaged")
      ->check(CLI::IsMember({"learned", "tokens"}))->capture_default_str();
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
  cmd->add_option("--backend", f->backend, "automatic, fused, composite or reference")->capture_default_str();
  cmd->add_option("--workers", f->workers, "Runs trained side by side (one thread each)")
      ->check(CLI::Range(1, 256))->capture_default_str();
  cmd->add_option("--out-dir", f->out_dir)->capture_default_str();
  cmd->callback([f, cmd] {
    std::string line = "quest experiment spurious";
    for (const auto* opt : cmd->get_options())
      if (opt->count() && opt->get_name() != "--help") {
        line += " " + opt->get_name();
        for (const auto& v : opt->results()) line += " " + v;
      }
    run_spurious_command(*f, line);
  });
}

}  // namespace quest::cli
