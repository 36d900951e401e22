#include "train_flags.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "quest/lab/report/plots.h"

namespace quest::cli {

void add_training_flags(CLI::App* cmd, const std::shared_ptr<TrainFlags>& f) {
  f->cmd = cmd;
  const auto positive = CLI::Range(int64_t{1}, int64_t{1} << 30);
  cmd->add_option("--config", f->config_path, "JSON config (e.g. a run's config.json); flags override it");
  cmd->add_option("--data-dir", f->data.dir, "Directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]")
      ->capture_default_str();
  cmd->add_option("--backend", f->backend, "automatic, fused, composite or reference");
  cmd->add_option("--epochs", f->epochs)->check(positive);
  cmd->add_option("--batch-size", f->batch_size)->check(positive);
  cmd->add_option("--dim", f->dim, "Embedding width")->check(positive);
  cmd->add_option("--depth", f->depth, "Transformer blocks")->check(positive);
  cmd->add_option("--heads", f->heads)->check(positive);
  cmd->add_option("--patch-size", f->patch_size)->check(positive);
  cmd->add_option("--stem", f->stem,
                  "patch (linear patch embedding), conv (3x3 stride-2 convolutions) or conv_bn (the same "
                  "with BatchNorm + ReLU and a final 1x1 conv)")
      ->check(CLI::IsMember(models::names_of(models::kStemNames)));
  cmd->add_option("--mlp-ratio", f->mlp_ratio)->check(CLI::PositiveNumber);
  cmd->add_option("--dropout", f->dropout)->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--attention-dropout", f->attention_dropout)->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--drop-path", f->drop_path)->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--lr", f->lr, "Peak learning rate")->check(CLI::PositiveNumber);
  cmd->add_option("--min-lr", f->min_lr)->check(CLI::NonNegativeNumber);
  cmd->add_option("--weight-decay", f->weight_decay)->check(CLI::NonNegativeNumber);
  cmd->add_option("--warmup-epochs", f->warmup_epochs)->check(CLI::NonNegativeNumber);
  cmd->add_option("--label-smoothing", f->label_smoothing)->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--clip-grad-norm", f->clip_grad_norm, "<= 0 turns clipping off");
  cmd->add_option("--log-every", f->log_every, "Steps between metric lines")->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", f->seed);
  cmd->add_option("--val-fraction", f->data.val_fraction, "Held-out share of the training set")
      ->check(CLI::Range(0.0, 0.9))
      ->capture_default_str();
  cmd->add_option("--train-subset", f->train_subset, "Use only the first N training images (quick runs)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--no-augment", f->no_augment, "No random crop / flip");
  cmd->add_flag("--resume", f->resume, "Continue from the run directory's checkpoint");
}

training::TrainConfig resolve_config(const TrainFlags& f) {
  auto given = [&](const char* name) {  // given on the command line (not every command has it)
    const CLI::Option* opt = f.cmd->get_option_no_throw(name);
    return opt && opt->count() > 0;
  };
  training::TrainConfig c;
  if (!f.config_path.empty()) {
    std::ifstream in(f.config_path);
    if (!in) throw std::invalid_argument("--config: cannot read '" + f.config_path + "'");
    try {
      c = training::config_from_json(nlohmann::json::parse(in));
    } catch (const nlohmann::json::exception& e) {
      throw std::invalid_argument("--config: '" + f.config_path + "': " + e.what());
    } catch (const c10::Error& e) {
      throw std::invalid_argument("--config: '" + f.config_path + "': " + e.what_without_backtrace());
    }
  }
  if (given("--attention")) {
    const auto kind = parse_kind(f.attention);
    if (!kind) throw std::invalid_argument("--attention: unknown kind '" + f.attention + "'");
    c.model.attention(*kind);
  }
  if (given("--backend")) {
    const auto backend = parse_backend(f.backend);
    if (!backend) throw std::invalid_argument("--backend: unknown backend '" + f.backend + "'");
    c.model.backend(*backend);
  }
  if (given("--epochs")) c.epochs = f.epochs;
  if (given("--batch-size")) c.batch_size = f.batch_size;
  if (given("--dim")) c.model.dim(f.dim);
  if (given("--depth")) c.model.depth(f.depth);
  if (given("--heads")) c.model.heads(f.heads);
  if (given("--patch-size")) c.model.patch_size(f.patch_size);
  if (given("--stem")) c.model.stem(models::parse_stem(f.stem));
  if (given("--mlp-ratio")) c.model.mlp_ratio(f.mlp_ratio);
  if (given("--dropout")) c.model.dropout(f.dropout);
  if (given("--attention-dropout")) c.model.attention_dropout(f.attention_dropout);
  if (given("--drop-path")) c.model.drop_path(f.drop_path);
  if (given("--lr")) c.lr = f.lr;
  if (given("--min-lr")) c.min_lr = f.min_lr;
  if (given("--weight-decay")) c.weight_decay = f.weight_decay;
  if (given("--warmup-epochs")) c.warmup_epochs = f.warmup_epochs;
  if (given("--label-smoothing")) c.label_smoothing = f.label_smoothing;
  if (given("--clip-grad-norm")) c.clip_grad_norm = f.clip_grad_norm;
  if (given("--log-every")) c.log_every = f.log_every;
  if (given("--seed")) c.seed = f.seed;
  if (given("--train-subset")) c.train_subset = f.train_subset;
  if (f.no_augment) c.augment = false;
  if (given("--run-dir") || c.run_dir.empty()) c.run_dir = f.run_dir;
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
