// The spurious-pattern grid's outputs: the success table per kind, runs.csv / success.csv /
// results.json, success-rate heat-maps and key-norm trajectories (gnuplot).
#include <cstdio>
#include <fstream>
#include <sstream>
#include <map>

#include "quest/lab/experiments/spurious.h"
#include "quest/lab/runs/experiment_dir.h"
#include "quest/lab/report/plots.h"

namespace quest::experiments {

namespace fs = std::filesystem;
using report::gnuplot_quote;
using report::mean_of;
using report::mean_std;

namespace {

// The paper's reported success rates (../shared/reference/quest-paper.md), for the table.
const std::map<std::string, std::string> kPaperSuccess = {
    {"standard", "25 %"}, {"qnorm", "49 %"}, {"qknorm", "~0 %"}, {"quest", "58 %"}};

std::string fmt(double v, const char* f = "%.3g") {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
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

}  // namespace

std::vector<SpuriousRunConfig> build_grid(const SpuriousGrid& grid) {
  std::vector<SpuriousRunConfig> runs;
  for (const auto& name : grid.kinds) {
    const auto kind = parse_kind(name);
    if (!kind) throw std::invalid_argument("--kinds: unknown kind '" + name + "'");
    for (double lr : grid.lrs)
      for (double wd : grid.weight_decays)
        for (uint64_t seed : grid.seeds) {
          SpuriousRunConfig c = grid.base;
          c.model.attention(*kind);
          c.lr = lr;
          c.weight_decay = wd;
          c.seed = seed;
          runs.push_back(c);
        }
  }
  return runs;
}

report::Table success_table(const SpuriousGrid& grid, const std::vector<SpuriousRunResult>& results) {
  report::Table table({{"kind"}, {"success"}, {"success_rate", 2}, {"diverged"}, {"accuracy_biased"},
                       {"accuracy_unbiased"}, {"accuracy_conflicting"}, {"key_norm_biased", 3},
                       {"key_norm_unbiased", 3}, {"max_logit", 3}, {"paper"}});
  for (const auto& name : grid.kinds) {
    const std::string kind = to_string(*parse_kind(name));
    int64_t runs = 0, successes = 0, diverged = 0;
    std::vector<double> biased, unbiased, conflicting, key_biased, key_unbiased, max_logit;
    for (const auto& r : results) {
      if (to_string(r.config.model.attention()) != kind) continue;
      const auto& last = r.trajectory.back();
      ++runs;
      successes += r.success;
      diverged += r.diverged;
      biased.push_back(r.accuracy_biased);
      unbiased.push_back(r.accuracy_unbiased);
      conflicting.push_back(r.accuracy_conflicting);
      key_biased.push_back(last.key_norm_biased);
      key_unbiased.push_back(last.key_norm_unbiased);
      max_logit.push_back(last.max_logit);
    }
    const double rate = runs ? double(successes) / runs : 0;
    char success[64];
    std::snprintf(success, sizeof success, "%lld/%lld (%.0f%%)", (long long)successes, (long long)runs, 100 * rate);
    table.add_row({kind, success, rate, diverged, mean_std(biased), mean_std(unbiased), mean_std(conflicting),
                   mean_of(key_biased), mean_of(key_unbiased), mean_of(max_logit),
                   kPaperSuccess.count(kind) ? kPaperSuccess.at(kind) : "-"});
  }
  return table;
}

void write_spurious_outputs(const fs::path& dir, const SpuriousGrid& grid, const SpuriousEvalSets& eval,
                            const std::vector<SpuriousRunResult>& results, const std::string& command, double seconds) {
  const runs::ExperimentDir experiment(dir);
  experiment.create();
  std::ostringstream csv;
  csv << "kind,projections,lr,weight_decay,seed,success,diverged,accuracy_biased,accuracy_unbiased,"
         "accuracy_conflicting,key_norm_biased,key_norm_unbiased,key_norm_ordinary,query_norm,max_logit,"
         "entropy,seconds\n";
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& r : results) {
    const auto& last = r.trajectory.back();
    csv << to_string(r.config.model.attention()) << "," << (r.config.model.projections() ? "on" : "off") << ","
        << r.config.lr << "," << r.config.weight_decay << "," << r.config.seed << "," << r.success << ","
        << r.diverged << "," << r.accuracy_biased << "," << r.accuracy_unbiased << "," << r.accuracy_conflicting
        << "," << last.key_norm_biased << "," << last.key_norm_unbiased << "," << last.key_norm_ordinary << ","
        << last.query_norm << "," << last.max_logit << "," << last.entropy << "," << r.seconds << "\n";
    runs.push_back(to_json(r));
  }
  experiment.write(experiment.runs_csv(), csv.str());
  const report::Table success = success_table(grid, results);
  experiment.write(experiment.success_csv(), success.csv());
  nlohmann::json summary = nlohmann::json::object();
  for (const auto& row : success.json()) summary[row["kind"].get<std::string>()] = row;
  const nlohmann::json oracle = {{"accuracy_biased", eval.oracle_biased},
                                 {"accuracy_unbiased", eval.oracle_unbiased},
                                 {"accuracy_conflicting", eval.oracle_conflicting}};

  // Heat-maps: success rate per (lr, wd) cell over seeds, one PNG per kind.
  const int L = grid.lrs.size(), W = grid.weight_decays.size();
  std::string heat_script = report::kGnuplotHeader;
  heat_script += "set terminal pngcairo size 700,560 font ',10' noenhanced\nset cbrange [0:1]\n"
                 "set palette defined (0 '#b2182b', 0.5 '#f7f7f7', 1 '#2166ac')\nunset key\n"
                 "set xlabel 'learning rate'\nset ylabel 'weight decay'\nset cblabel 'success rate over seeds'\n";
  std::string xtics = "set xtics (", ytics = "set ytics (";
  for (int i = 0; i < L; ++i) xtics += (i ? ", " : "") + gnuplot_quote(fmt(grid.lrs[i])) + " " + std::to_string(i);
  for (int j = 0; j < W; ++j)
    ytics += (j ? ", " : "") + gnuplot_quote(fmt(grid.weight_decays[j])) + " " + std::to_string(j);
  heat_script += xtics + ")\n" + ytics + ")\n";
  heat_script += "set xrange [-0.5:" + std::to_string(L - 0.5) + "]\nset yrange [-0.5:" + std::to_string(W - 0.5) + "]\n";
  for (const auto& name : grid.kinds) {
    const std::string kind = to_string(*parse_kind(name));
    std::ofstream dat(dir / ("heatmap-" + kind + ".dat"));
    for (int i = 0; i < L; ++i) {
      for (int j = 0; j < W; ++j) {
        const auto cell = cell_runs(results, kind, grid.lrs[i], grid.weight_decays[j]);
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
  report::run_gnuplot(dir / "heatmap.gp", heat_script);

  // Trajectories, one PNG per kind: each (lr, wd) cell averaged over seeds.
  std::string traj_script = report::kGnuplotHeader;
  for (const auto& name : grid.kinds) {
    const std::string kind = to_string(*parse_kind(name));
    const fs::path dat_path = dir / ("trajectories-" + kind + ".dat");
    std::ofstream dat(dat_path);
    std::vector<std::string> titles;
    for (double lr : grid.lrs)
      for (double wd : grid.weight_decays) {
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
  report::run_gnuplot(dir / "trajectories.gp", traj_script);

  nlohmann::json out = {{"command", command}, {"seconds", seconds}, {"summary", summary},
                        {"oracle", oracle}, {"runs", runs}};
  experiment.write(experiment.results_json(), out.dump(1) + "\n");
}

}  // namespace quest::experiments
