// quest experiment lr-sweep: sweep file + flags -> experiments::plan_sweep / run_sweep -> LR
// sensitivity table, files, figures.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "commands.h"
#include "quest/lab/experiments/lr_sweep.h"
#include "quest/lab/report/plots.h"
#include "quest/lab/runs/experiment_dir.h"
#include "quest/torch/runtime.h"
#include "train_flags.h"

namespace quest::cli {
namespace {

namespace fs = std::filesystem;

struct LrSweepFlags {
  std::string sweep_path;
  std::vector<std::string> kinds, sizes;
  std::vector<double> lrs;
  std::vector<uint64_t> seeds;
  std::string out_dir = "runs/lr-sweep";
  int workers = 2;
  bool resume = false;
  std::string record;  // default <out-dir>/record.jsonl
};

experiments::LrSweep resolve_sweep(const LrSweepFlags& f) {
  std::ifstream in(f.sweep_path);
  if (!in) throw std::runtime_error("cannot open sweep file '" + f.sweep_path + "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument("sweep file '" + f.sweep_path + "' is not JSON: " + e.what());
  }
  if (j.is_object()) {  // flags replace the file's lists
    if (!f.kinds.empty()) j["kinds"] = f.kinds;
    if (!f.lrs.empty()) j["lrs"] = f.lrs;
    if (!f.seeds.empty()) j["seeds"] = f.seeds;
  }
  experiments::LrSweep sweep = experiments::sweep_from_json(j);
  if (!f.sizes.empty()) {
    std::vector<experiments::SweepSize> chosen;
    for (const auto& name : f.sizes) {
      const auto it = std::find_if(sweep.sizes.begin(), sweep.sizes.end(), [&](const auto& s) { return s.name == name; });
      if (it == sweep.sizes.end()) throw std::invalid_argument("--sizes: '" + name + "' is not a size of " + f.sweep_path);
      chosen.push_back(*it);
    }
    sweep.sizes = chosen;
  }
  return sweep;
}

void run_lr_sweep(const LrSweepFlags& f, const std::string& command) {
  warn_if_slow_blas();
  const int threads = configure_threads();
  const experiments::LrSweep sweep = resolve_sweep(f);
  const runs::ExperimentDir experiment(f.out_dir);
  const auto points = experiments::plan_sweep(sweep, f.out_dir);
  experiment.create();
  const int workers = std::min<int>(f.workers, static_cast<int>(points.size()));
  std::printf("lr sweep (%s): %zu runs = %zu sizes x %zu learning rates x (%zu kinds + %zu variants) x seeds, %d at a time -> %s\n",
              sweep.task.c_str(), points.size(), sweep.sizes.size(), sweep.lrs.size(), sweep.kinds.size(),
              sweep.variants.size(), workers, f.out_dir.c_str());
  std::fflush(stdout);
  const auto executor = compare_executor(workers, threads);
  std::map<std::string, const experiments::SweepPoint*> by_dir;
  for (const auto& p : points) by_dir[p.run.run_dir] = &p;
  size_t done = 0;
  runs::ExecutorEvents events;
  events.on_end = [&](const runs::RunSpec& run, const runs::RunOutcome& outcome) {
    const auto* p = by_dir.at(run.run_dir);
    std::printf("[%zu] %s lr %g %s: %s%s%s\n", ++done, p->size.c_str(), p->lr, run.label().c_str(),
                to_string(outcome.status).c_str(), outcome.message.empty() ? "" : ": ", outcome.message.c_str());
    std::fflush(stdout);
  };
  const std::string record = f.record.empty() ? (std::filesystem::path(f.out_dir) / "record.jsonl").string() : f.record;
  const auto results = experiments::run_sweep(
      points, f.resume, *executor, events,
      [](const std::string& line) {
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
      },
      record);

  std::vector<std::string> failed;
  nlohmann::json runs_json = nlohmann::json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    nlohmann::json j = results[i].to_json();
    j["run_dir"] = points[i].run.run_dir;
    runs_json.push_back(j);
    if (results[i].outcome.status == runs::RunStatus::failed)
      failed.push_back(points[i].run.run_dir + ": " + results[i].outcome.message);
  }
  const auto rows = experiments::sensitivities(sweep, results);
  const report::Table table = experiments::sensitivity_table(rows);
  std::printf("\n%s", table.console().c_str());
  std::printf("(LR sensitivity: mean over the learning rates of the final validation loss capped at the initial loss, "
              "minus the best rate's; 95 %% bootstrap interval over seeds; Wortsman et al. 2023)\n");
  experiment.write(experiment.sensitivity_csv(), table.csv());
  experiment.write(experiment.runs_csv(), experiments::runs_table(results).csv());
  experiment.write(experiment.sweep_json(),
                   nlohmann::json({{"command", command}, {"sweep", experiments::to_json(sweep)},
                                   {"sensitivity", table.json()}, {"runs", runs_json}, {"workers", workers}}));
  if (!failed.empty()) {
    std::string lines;
    for (const auto& l : failed) lines += "\n  " + l;
    throw std::runtime_error("quest experiment lr-sweep: runs failed:" + lines);
  }
  experiments::write_sweep_plots(sweep, results, f.out_dir);
  std::printf("results in %s (sweep.json, sensitivity.csv, runs.csv, plots/loss-vs-lr-*.png, plots/logit-vs-lr-*.png%s)\n",
              f.out_dir.c_str(),
              sweep.sizes.size() >= 2 ? ", plots/sensitivity-vs-size.png, plots/stable-*-vs-size.png, "
                                        "plots/scale-vs-size.png (the three side by side)"
                                      : "");
  for (const auto& size : sweep.sizes)
    if (const auto lr = experiments::contrast_lr(results, size.name)) {
      const auto point = experiment.sweep_point(size.name, *lr).root();
      if (report::training_runs(point).empty()) {  // a fresh machine resuming from the record
        std::printf("training curves, size %s at lr %g: not drawn, no run directory under %s (its runs were "
                    "taken from the record)\n", size.name.c_str(), *lr, point.c_str());
        continue;
      }
      const auto plots = report::write_training_plots(point);
      std::printf("training curves, size %s at lr %g (standard against quest and the rest): %s\n", size.name.c_str(),
                  *lr, plots.dir.c_str());
    }
}

}  // namespace

void add_lr_sweep(CLI::App* experiment) {
  auto f = std::make_shared<LrSweepFlags>();
  CLI::App* cmd = experiment->add_subcommand(
      "lr-sweep",
      "Learning-rate sensitivity (Wortsman et al. 2023): sizes x learning rates x kinds x seeds of the ViT or the "
      "language model; final validation loss, divergence and logit growth per run");
  cmd->add_option("--sweep", f->sweep_path, "Sweep file (configs/lr-sweep-vit.json, configs/lr-sweep-lm.json)")
      ->required();
  cmd->add_option("--kinds", f->kinds, "Override the file's attention kinds")->delimiter(',');
  cmd->add_option("--lrs", f->lrs, "Override the file's peak learning rates")->delimiter(',')->check(CLI::PositiveNumber);
  cmd->add_option("--seeds", f->seeds, "Override the file's seeds")->delimiter(',');
  cmd->add_option("--sizes", f->sizes, "Only these sizes of the file (by name)")->delimiter(',');
  cmd->add_option("--out-dir", f->out_dir, "Runs go to <out-dir>/<size>/lr-<lr>/<kind>/seed-<s>")->capture_default_str();
  cmd->add_option("--workers", f->workers,
                  "Runs trained side by side, each a child 'quest' process with its share of the threads; "
                  "1 = one after another in this process")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  cmd->add_flag("--resume", f->resume, "Continue unfinished runs; finished and diverged runs are only read");
  cmd->add_option("--record", f->record,
                  "The sweep's record, one line per ended run (default <out-dir>/record.jsonl): with --resume, a "
                  "recorded run is not trained again even where its run directory is gone; commit it to carry a "
                  "sweep across machines");
  cmd->callback([f, cmd] {
    run_lr_sweep(*f, command_line("quest experiment lr-sweep", cmd));
  });
}

}  // namespace quest::cli
