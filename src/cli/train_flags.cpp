#include "train_flags.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "divergence.h"
#include "progress.h"
#include "quest/lab/data/idx.h"
#include "quest/lab/models/vit.h"
#include "quest/lab/report/plots.h"
#include "quest/lab/runs/experiment_dir.h"
#include "quest/torch/runtime.h"

namespace quest::cli {

namespace fs = std::filesystem;

void add_training_flags(CLI::App* cmd, const std::shared_ptr<TrainFlags>& f) {
  f->config = std::make_unique<ConfigFlags>(cmd, "JSON config (e.g. a run's config.json); flags override it");
  ConfigFlags& c = *f->config;
  const auto positive = CLI::Range(int64_t{1}, int64_t{1} << 30);
  c.add<std::string>("--data-dir", "data.dir",
                     std::string("Directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (default ") +
                         data::kFashionMnistDir + ")");
  c.add<std::string>("--backend", "model.backend", "automatic, fused, composite, reference or sdpa");
  add_run_settings_flags(c);
  c.add<int64_t>("--dim", "model.dim", "Embedding width")->check(positive);
  c.add<int64_t>("--depth", "model.depth", "Transformer blocks")->check(positive);
  c.add<int64_t>("--heads", "model.heads")->check(positive);
  c.add<int64_t>("--patch-size", "model.patch_size")->check(positive);
  c.add<std::string>("--stem", "model.stem",
                     "patch (linear patch embedding), conv (3x3 stride-2 convolutions) or conv_bn (the same "
                     "with BatchNorm + ReLU and a final 1x1 conv)")
      ->check(CLI::IsMember(models::names_of(models::kStemNames)));
  c.add<double>("--mlp-ratio", "model.mlp_ratio")->check(CLI::PositiveNumber);
  c.add<double>("--dropout", "model.dropout")->check(CLI::Range(0.0, 0.99));
  c.add<double>("--attention-dropout", "model.attention_dropout")->check(CLI::Range(0.0, 0.99));
  c.add<double>("--drop-path", "model.drop_path")->check(CLI::Range(0.0, 0.99));
  c.add<double>("--label-smoothing", "label_smoothing")->check(CLI::Range(0.0, 0.99));
  c.add<double>("--val-fraction", "data.val_fraction", "Held-out share of the training set (default 0.1)")
      ->check(CLI::Range(0.0, 0.9));
  c.add<int64_t>("--train-subset", "train_subset", "Use only the first N training images (quick runs)")
      ->check(CLI::NonNegativeNumber);
  c.add_switch("--no-augment", "augment", false, "No random crop / flip");
  cmd->add_flag("--resume", f->resume, "Continue from the run directory's checkpoint");
}

nlohmann::json resolve_task_config(const ConfigFlags& flags, const tasks::TaskKind& task,
                                   const std::string& default_run_dir) {
  nlohmann::json config = flags.resolve([&](nlohmann::json j) {
    if (j.is_object() && !j.contains("task")) j["task"] = task.name();  // a file of this command's task
    return task.resolve(j);
  });
  if (config.at("run_dir").get<std::string>().empty()) config["run_dir"] = default_run_dir;
  return config;
}

int train_one(const nlohmann::json& config, bool resume, bool no_test, const ParallelFlags& parallel_flags) {
  const tasks::TaskKind& task = tasks::task_kind_of(config);
  const std::string run_dir = config.at("run_dir").get<std::string>();
  const ParallelRole role = start_parallel(parallel_flags);
  if (role.launched) return *role.launched;
  const bool reports = role.parallel.writes();  // rank 0 (or alone) prints; the other ranks train
  if (reports) warn_if_slow_blas();
  configure_threads();
  const tasks::TaskKind::StepSize step = task.step_size(config);
  std::unique_ptr<StepProgress> progress;
  runs::TrainCallbacks callbacks;
  callbacks.on_start = [&](const tasks::TaskRun& run) {
    if (!reports) return;
    if (role.parallel.active()) {
      const int64_t batch = config.at("batch_size").get<int64_t>();
      std::printf("data-parallel: %d ranks, global batch %lld (%lld per rank)\n", role.parallel.group->world_size(),
                  (long long)batch, (long long)(batch / role.parallel.group->world_size()));
    }
    std::printf("task %s: %s; attention %s; run dir %s\n", task.name().c_str(), run.describe_data().c_str(),
                config.at("model").at("attention").get<std::string>().c_str(), run_dir.c_str());
    progress = std::make_unique<StepProgress>(step.per_step, config.at("log_every").get<int64_t>(), step.unit);
  };
  callbacks.on_step = [&](const nlohmann::json& line) {
    if (progress) progress->update(line);
  };
  callbacks.evaluate_test = !no_test;
  const runs::TrainReport report = runs::train_run(config, resume, callbacks, role.parallel);
  if (progress) progress->finish();
  if (!reports) return report.outcome.status == runs::RunStatus::diverged ? kExitDiverged : 0;
  if (report.outcome.status == runs::RunStatus::diverged)
    return report_divergence(report.outcome, report.diagnostics, report.checkpoint_kept, run_dir);
  if (no_test) std::printf("trained (no test evaluation)\n");
  const std::string scores = task.describe_scores(report.metrics);
  if (!scores.empty()) std::printf("%s%s", scores.c_str(), scores.back() == '\n' ? "" : "\n");
  std::printf("training %.1f s, wall %.1f s\n", report.train_seconds, report.wall_seconds);
  return 0;
}

void add_compare_flags(CLI::App* cmd, const std::shared_ptr<CompareFlags>& compare) {
  cmd->add_option("--kinds", compare->kinds, "Attention kinds (space- or comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--seeds", compare->seeds, "Seeds (each kind runs on each)")->delimiter(',')->capture_default_str();
  cmd->add_option("--out-dir", compare->out_dir, "Runs go to <out-dir>/<kind>/seed-<s>")->capture_default_str();
  cmd->add_option("--workers", compare->workers,
                  "Runs trained side by side, each a child 'quest run' process with its share of the threads "
                  "(log in <run-dir>/train.log); 1 = one after another with every thread")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
}

std::unique_ptr<runs::Executor> compare_executor(int workers, int threads) {
  // Side by side, each child gets its share of the threads: small models use extra threads poorly,
  // so two 1-thread runs outpace one 2-thread run (results/full/README.md).
  return workers > 1 ? runs::child_process_executor(workers, std::max(1, threads / workers))
                     : runs::in_process_executor();
}

void compare_kinds(const std::string& command, const nlohmann::json& base, bool resume, const CompareFlags& compare) {
  warn_if_slow_blas();
  const int threads = configure_threads();
  const tasks::TaskKind& task = tasks::task_kind_of(base);
  const runs::ExperimentDir experiment(compare.out_dir);
  const auto plan = runs::plan_runs(base, compare.kinds, compare.seeds, compare.out_dir);
  experiment.create();
  const int workers = std::min<int>(compare.workers, static_cast<int>(plan.size()));
  const auto executor = compare_executor(workers, threads);
  runs::ExecutorEvents events;
  std::unique_ptr<StepProgress> progress;  // in this process: the run's steps as `quest run` shows them
  events.on_start = [&](const runs::RunSpec& run) {
    if (workers > 1) return;
    std::printf("%s\n", run.label().c_str());
    const tasks::TaskKind::StepSize step = task.step_size(run.config);
    progress = std::make_unique<StepProgress>(step.per_step, run.config.at("log_every").get<int64_t>(), step.unit);
  };
  if (workers == 1)
    events.on_step = [&](const runs::RunSpec&, const nlohmann::json& line) { progress->update(line); };
  events.on_epoch = [&](const runs::RunSpec& run, const nlohmann::json& line) {
    if (progress) progress->finish();
    std::printf("%-12s seed %llu: epoch %lld/%lld  %s\n", run.kind.c_str(), (unsigned long long)run.seed,
                (long long)line["epoch"].get<int64_t>() + 1, (long long)run.epochs, task.describe_epoch(line).c_str());
    std::fflush(stdout);
  };
  events.on_end = [](const runs::RunSpec& run, const runs::RunOutcome& outcome) {
    if (outcome.status != runs::RunStatus::ok)
      std::printf("%s: %s: %s\n", run.label().c_str(), to_string(outcome.status).c_str(), outcome.message.c_str());
    std::fflush(stdout);
  };
  const runs::CompareResult result = runs::compare(plan, resume, *executor, events, [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  });
  const report::Table table = runs::summarize(result);
  nlohmann::json run_lines = nlohmann::json::array();
  for (const auto& r : result.runs) run_lines.push_back(r.to_json());
  std::printf("\n%s", table.console().c_str());
  experiment.write_compare(task.name(), table, run_lines, workers);
  std::printf("(%s; results in %s)\n", task.legend().c_str(), compare.out_dir.c_str());
  if (!result.failed.empty()) {
    std::string lines;
    for (const auto& f : result.failed) lines += "\n  " + f;
    throw std::runtime_error(command + ": runs failed:" + lines);
  }
  const auto plots = report::write_training_plots(experiment.root());
  std::printf("plots of %zu run(s) in %s\n", plots.runs, plots.dir.c_str());
}

}  // namespace quest::cli
