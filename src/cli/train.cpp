// quest train / quest eval: flags -> runs::train_run / training::load_run -> print.
#include <cstdio>

#include "commands.h"
#include "divergence.h"
#include "progress.h"
#include "quest/torch/runtime.h"
#include "parallel.h"
#include "train_flags.h"

namespace quest::cli {

static int run_train(const TrainFlags& flags, bool no_test, const ParallelFlags& parallel_flags) {
  const training::TrainConfig config = resolve_config(flags);
  const ParallelRole role = start_parallel(parallel_flags);
  if (role.launched) return *role.launched;
  const bool reports = role.parallel.writes();  // rank 0 (or alone) prints; the other ranks train
  if (reports) warn_if_slow_blas();
  configure_threads();
  std::unique_ptr<StepProgress> progress;
  runs::TrainCallbacks callbacks;
  callbacks.on_data = [&](const training::MnistSplits& data) {
    if (!reports) return;
    if (role.parallel.active())
      std::printf("data-parallel: %d ranks, global batch %lld (%lld per rank)\n", role.parallel.group->world_size(),
                  (long long)config.batch_size, (long long)(config.batch_size / role.parallel.group->world_size()));
    std::printf("train %lld / validation %lld / test %lld images; attention %s; run dir %s\n",
                (long long)data.train.size(), (long long)data.validation.size(), (long long)data.test.size(),
                to_string(config.model.attention()).c_str(), config.run_dir.c_str());
    progress = std::make_unique<StepProgress>(config.batch_size, config.log_every);
  };
  callbacks.on_step = [&](const nlohmann::json& line) {
    if (progress) progress->update(line);
  };
  callbacks.evaluate_test = !no_test;
  const runs::TrainReport report = runs::train_run(config, flags.data, flags.resume, callbacks, role.parallel);
  if (progress) progress->finish();
  if (!reports) return report.outcome.status == runs::RunStatus::diverged ? kExitDiverged : 0;
  if (report.outcome.status == runs::RunStatus::diverged)
    return report_divergence(report.outcome, report.diagnostics, report.checkpoint_kept, config.run_dir);
  if (no_test) std::printf("trained (no test evaluation), wall %.1f s\n", report.wall_seconds);
  else
    std::printf("test accuracy %.4f, test loss %.4f, wall %.1f s\n", report.test.accuracy, report.test.loss,
                report.wall_seconds);
  return 0;
}

static int run_eval(const std::string& checkpoint, const std::string& data_dir) {
  configure_threads();
  const auto trainer = training::load_run(checkpoint);
  const auto test =
      trainer->evaluate(training::load_mnist_test(data_dir, trainer->normalization_or_recomputed(data_dir)));
  std::printf("%s: epoch %lld, test accuracy %.4f, test loss %.4f\n", checkpoint.c_str(),
              (long long)trainer->epoch(), test.accuracy, test.loss);
  return 0;
}

void add_train(CLI::App& app) {
  auto f = std::make_shared<TrainFlags>();
  CLI::App* cmd = app.add_subcommand("train", "Train a ViT on Fashion-MNIST (or any MNIST-format directory)");
  add_training_flags(cmd, f);
  f->config->add<std::string>("--attention", "model.attention", "standard, quest, qnorm, qknorm or qk_layernorm");
  f->config->add<uint64_t>("--seed", "seed");
  f->config->add<std::string>("--run-dir", "run_dir",
                              std::string("Where metrics, checkpoints and config go (else the config's, else ") +
                                  kDefaultTrainRunDir + ")");
  auto no_test = std::make_shared<bool>(false);
  cmd->add_flag("--no-test", *no_test, "Skip the test-split evaluation and result.json (sweeps score validation)");
  auto parallel = std::make_shared<ParallelFlags>();
  add_parallel_flags(cmd, parallel);
  cmd->callback([f, no_test, parallel] { exit_with(run_train(*f, *no_test, *parallel)); });

  auto checkpoint = std::make_shared<std::string>();
  auto data_dir = std::make_shared<std::string>(data::kFashionMnistDir);
  CLI::App* eval = app.add_subcommand("eval", "Test accuracy of a checkpoint (its run's config.json beside it)");
  eval->add_option("checkpoint", *checkpoint, "Path to checkpoint.pt")->required();
  eval->add_option("--data-dir", *data_dir)->capture_default_str();
  eval->callback([checkpoint, data_dir] { exit_with(run_eval(*checkpoint, *data_dir)); });
}

}  // namespace quest::cli
