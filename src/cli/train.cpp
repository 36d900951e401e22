// quest run / quest train / quest eval: a run directory or flags -> train_one (runs::train_run) ->
// print; a checkpoint -> training::load_vit_run -> print.
#include <cstdio>

#include "commands.h"
#include "quest/lab/tasks/vit.h"
#include "quest/torch/runtime.h"
#include "train_flags.h"

namespace quest::cli {

namespace {

struct RunFlags {
  bool resume = false, no_test = false;
};

void add_run_flags(CLI::App* cmd, const std::shared_ptr<RunFlags>& f) {
  cmd->add_flag("--resume", f->resume, "Continue from the run directory's checkpoint");
  cmd->add_flag("--no-test", f->no_test, "Skip the test-split evaluation and result.json (sweeps score validation)");
}

// The run a directory describes: its config.json (any task), trained into that directory.
nlohmann::json config_of_run_dir(const std::string& dir) {
  nlohmann::json config = runs::RunDir(dir).read_config();
  config["run_dir"] = dir;
  return tasks::task_kind_of(config).resolve(config);
}

int run_eval(const std::string& checkpoint, const std::string& data_dir) {
  configure_threads();
  const auto trainer = training::load_vit_run(checkpoint);
  const std::string dir = data_dir.empty() ? trainer->config().data.dir : data_dir;
  const auto test = trainer->evaluate(training::load_mnist_test(dir, trainer->normalization_or_recomputed(dir)));
  std::printf("%s: epoch %lld, test accuracy %.4f, test loss %.4f\n", checkpoint.c_str(),
              (long long)trainer->epoch(), test.accuracy, test.loss);
  return 0;
}

}  // namespace

void add_train(CLI::App& app) {
  {
    auto dir = std::make_shared<std::string>();
    auto f = std::make_shared<RunFlags>();
    auto parallel = std::make_shared<ParallelFlags>();
    CLI::App* cmd = app.add_subcommand(
        "run", "Train the run a directory describes (its config.json names the task: vit, lm, ...)");
    cmd->add_option("run-dir", *dir, "Run directory with config.json")->required();
    add_run_flags(cmd, f);
    add_parallel_flags(cmd, parallel);
    cmd->callback([dir, f, parallel] {
      exit_with(train_one(config_of_run_dir(*dir), f->resume, f->no_test, *parallel));
    });
  }
  {
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
    cmd->callback([f, no_test, parallel] {
      const nlohmann::json config = resolve_task_config(*f->config, tasks::task_kind("vit"), kDefaultTrainRunDir);
      exit_with(train_one(config, f->resume, *no_test, *parallel));
    });
  }
  {
    auto checkpoint = std::make_shared<std::string>();
    auto data_dir = std::make_shared<std::string>();
    CLI::App* eval = app.add_subcommand("eval", "Test accuracy of a checkpoint (its run's config.json beside it)");
    eval->add_option("checkpoint", *checkpoint, "Path to checkpoint.pt")->required();
    eval->add_option("--data-dir", *data_dir, "MNIST-format directory (default: the run's)");
    eval->callback([checkpoint, data_dir] { exit_with(run_eval(*checkpoint, *data_dir)); });
  }
}

}  // namespace quest::cli
