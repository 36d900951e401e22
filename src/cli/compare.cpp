// quest compare: flags -> runs::plan_compare + runs::compare with an executor -> table, files, plots.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "commands.h"
#include "progress.h"
#include "quest/torch/runtime.h"
#include "train_flags.h"

namespace quest::cli {

namespace fs = std::filesystem;

static int run_compare(const TrainFlags& flags, const CompareFlags& compare) {
  warn_if_slow_blas();
  const int threads = configure_threads();
  const auto plan = runs::plan_compare(resolve_config(flags), compare.kinds, compare.seeds, compare.out_dir, flags.data);
  fs::create_directories(compare.out_dir);
  const int workers = std::min<int>(compare.workers, static_cast<int>(plan.size()));
  const auto executor = compare_executor(workers, threads);
  runs::ExecutorEvents events;
  std::unique_ptr<StepProgress> progress;  // in this process: the run's steps as `quest train` shows them
  events.on_start = [&](const runs::RunSpec& run) {
    if (workers > 1) return;
    std::printf("%s\n", run.label().c_str());
    progress = std::make_unique<StepProgress>(run.config.at("batch_size").get<int64_t>(),
                                              run.config.at("log_every").get<int64_t>());
  };
  if (workers == 1)
    events.on_step = [&](const runs::RunSpec&, const nlohmann::json& line) { progress->update(line); };
  events.on_epoch = [&](const runs::RunSpec& run, const nlohmann::json& line) {
    if (progress) progress->finish();
    std::printf("%-12s seed %llu: epoch %lld/%lld  train loss %.4f  val accuracy %.4f  %.0f img/s\n", run.kind.c_str(),
                (unsigned long long)run.seed, (long long)line["epoch"].get<int64_t>() + 1,
                (long long)run.epochs, line.value("train_loss", 0.0), line.value("val_accuracy", 0.0),
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
  nlohmann::json run_lines = nlohmann::json::array();
  for (const auto& r : result.runs) run_lines.push_back(r.to_json());
  finish_compare("quest compare", compare.out_dir, runs::summarize(result), run_lines, workers, result.failed,
                 "test_accuracy in %; diagnostics: final model on 256 test images, last seed");
  return 0;  // a diverged run is a result (its status is in the table's compare.json), not an error
}

void add_compare(CLI::App& app) {
  auto f = std::make_shared<TrainFlags>();
  auto compare = std::make_shared<CompareFlags>();
  CLI::App* cmd = app.add_subcommand(
      "compare", "Train every requested attention kind on the same seeds and data; table of test accuracy");
  add_training_flags(cmd, f);
  add_compare_flags(cmd, compare);
  cmd->callback([f, compare] { exit_with(run_compare(*f, *compare)); });
}

}  // namespace quest::cli
