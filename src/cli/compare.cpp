// quest compare: flags -> runs::plan_compare + runs::compare with an executor -> table, files, plots.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "commands.h"
#include "progress.h"
#include "quest/lab/report/plots.h"
#include "quest/torch/runtime.h"
#include "train_flags.h"

namespace quest::cli {

namespace fs = std::filesystem;

struct CompareFlags {
  std::vector<std::string> kinds = {"standard", "quest", "qknorm"};
  std::vector<uint64_t> seeds = {0, 1, 2};
  std::string out_dir = "runs/compare";
  int workers = 1;
};

static int run_compare(const TrainFlags& flags, const CompareFlags& compare) {
  warn_if_slow_blas();
  const int threads = configure_threads();
  const auto plan = runs::plan_compare(resolve_config(flags), compare.kinds, compare.seeds, compare.out_dir);
  fs::create_directories(compare.out_dir);
  const int workers = std::min<int>(compare.workers, static_cast<int>(plan.size()));
  // Side by side, each child gets its share of the threads: on this 2-core machine two 1-thread
  // runs train ~1.5x as many images/s as one 2-thread run.
  const auto executor = workers > 1 ? runs::child_process_executor(workers, std::max(1, threads / workers))
                                    : runs::in_process_executor();
  runs::ExecutorEvents events;
  std::unique_ptr<StepProgress> progress;  // in this process: the run's steps as `quest train` shows them
  events.on_start = [&](const runs::RunSpec& run) {
    if (workers > 1) return;
    std::printf("%s\n", run.label().c_str());
    progress = std::make_unique<StepProgress>(run.config.batch_size, run.config.log_every);
  };
  if (workers == 1)
    events.on_step = [&](const runs::RunSpec&, const nlohmann::json& line) { progress->update(line); };
  events.on_epoch = [&](const runs::RunSpec& run, const nlohmann::json& line) {
    if (progress) progress->finish();
    std::printf("%-12s seed %llu: epoch %lld/%lld  train loss %.4f  val accuracy %.4f  %.0f img/s\n", run.kind.c_str(),
                (unsigned long long)run.seed, (long long)line["epoch"].get<int64_t>() + 1,
                (long long)run.config.epochs, line.value("train_loss", 0.0), line.value("val_accuracy", 0.0),
                line.value("images_per_second", 0.0));
    std::fflush(stdout);
  };
  events.on_end = [](const runs::RunSpec& run, const runs::RunOutcome& outcome) {
    if (outcome.status != runs::RunStatus::ok)
      std::printf("%s: %s: %s\n", run.label().c_str(), to_string(outcome.status).c_str(), outcome.message.c_str());
    std::fflush(stdout);
  };
  const runs::CompareResult result = runs::compare(plan, flags.data, flags.resume, *executor, events,
                                                   [](const std::string& line) {
                                                     std::printf("%s\n", line.c_str());
                                                     std::fflush(stdout);
                                                   });
  const report::Table table = runs::summarize(result);
  std::printf("\n%s", table.console().c_str());
  std::ofstream(fs::path(compare.out_dir) / "summary.csv") << table.csv();
  nlohmann::json run_lines = nlohmann::json::array();
  for (const auto& r : result.runs) run_lines.push_back(r.to_json());
  std::ofstream(fs::path(compare.out_dir) / "compare.json")
      << nlohmann::json({{"summary", table.json()}, {"runs", run_lines}, {"workers", workers}}).dump(2) << "\n";
  std::printf("(test_accuracy in %%; diagnostics: final model on 256 test images, last seed; results in %s)\n",
              compare.out_dir.c_str());
  if (!result.failed.empty()) {
    std::string lines;
    for (const auto& f : result.failed) lines += "\n  " + f;
    throw std::runtime_error("quest compare: runs failed:" + lines);
  }
  const auto plots = report::write_training_plots(compare.out_dir);
  std::printf("plots of %zu run(s) in %s\n", plots.runs, plots.dir.c_str());
  return 0;  // a diverged run is a result (its status is in the table's compare.json), not an error
}

void add_compare(CLI::App& app, int& exit_code) {
  auto f = std::make_shared<TrainFlags>();
  auto compare = std::make_shared<CompareFlags>();
  CLI::App* cmd = app.add_subcommand(
      "compare", "Train every requested attention kind on the same seeds and data; table of test accuracy");
  add_training_flags(cmd, f);
  cmd->add_option("--kinds", compare->kinds, "Attention kinds (space- or comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--seeds", compare->seeds, "Seeds (each kind runs on each)")->delimiter(',')->capture_default_str();
  cmd->add_option("--out-dir", compare->out_dir, "Runs go to <out-dir>/<kind>/seed-<s>")->capture_default_str();
  cmd->add_option("--workers", compare->workers,
                  "Runs trained side by side, each a 'quest train' process with its share of the threads "
                  "(log in <run-dir>/train.log); 1 = one after another with every thread")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  cmd->callback([f, compare, &exit_code] { exit_code = run_compare(*f, *compare); });
}

}  // namespace quest::cli
