#include "train_flags.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "quest/lab/report/plots.h"

namespace quest::cli {

void add_training_flags(CLI::App* cmd, const std::shared_ptr<TrainFlags>& f) {
  f->config = std::make_unique<ConfigFlags>(cmd, "JSON config (e.g. a run's config.json); flags override it");
  ConfigFlags& c = *f->config;
  const auto positive = CLI::Range(int64_t{1}, int64_t{1} << 30);
  cmd->add_option("--data-dir", f->data.dir, "Directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]")
      ->capture_default_str();
  c.add<std::string>("--backend", "model.backend", "automatic, fused, composite or reference");
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
  cmd->add_option("--val-fraction", f->data.val_fraction, "Held-out share of the training set")
      ->check(CLI::Range(0.0, 0.9))
      ->capture_default_str();
  c.add<int64_t>("--train-subset", "train_subset", "Use only the first N training images (quick runs)")
      ->check(CLI::NonNegativeNumber);
  c.add_switch("--no-augment", "augment", false, "No random crop / flip");
  cmd->add_flag("--resume", f->resume, "Continue from the run directory's checkpoint");
}

training::TrainConfig resolve_config(const TrainFlags& f) {
  training::TrainConfig c = f.config->resolve(training::config_from_json);
  if (c.run_dir.empty()) c.run_dir = kDefaultTrainRunDir;
  return c;
}

void add_compare_flags(CLI::App* cmd, const std::shared_ptr<CompareFlags>& compare) {
  cmd->add_option("--kinds", compare->kinds, "Attention kinds (space- or comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--seeds", compare->seeds, "Seeds (each kind runs on each)")->delimiter(',')->capture_default_str();
  cmd->add_option("--out-dir", compare->out_dir, "Runs go to <out-dir>/<kind>/seed-<s>")->capture_default_str();
  cmd->add_option("--workers", compare->workers,
                  "Runs trained side by side, each a child 'quest' process with its share of the threads "
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

void finish_compare(const std::string& command, const std::string& out_dir, const report::Table& table,
                    const nlohmann::json& runs, int workers, const std::vector<std::string>& failed,
                    const std::string& legend) {
  namespace fs = std::filesystem;
  std::printf("\n%s", table.console().c_str());
  std::ofstream(fs::path(out_dir) / "summary.csv") << table.csv();
  std::ofstream(fs::path(out_dir) / "compare.json")
      << nlohmann::json({{"summary", table.json()}, {"runs", runs}, {"workers", workers}}).dump(2) << "\n";
  std::printf("(%s; results in %s)\n", legend.c_str(), out_dir.c_str());
  if (!failed.empty()) {
    std::string lines;
    for (const auto& f : failed) lines += "\n  " + f;
    throw std::runtime_error(command + ": runs failed:" + lines);
  }
  const auto plots = report::write_training_plots(out_dir);
  std::printf("plots of %zu run(s) in %s\n", plots.runs, plots.dir.c_str());
}

}  // namespace quest::cli
