// quest train / quest eval: thin over quest::training. A config is a JSON file (the config.json
// every run writes is one) plus flag overrides; the resolved config is saved in the run directory.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "commands.h"
#include "stats.h"
#include "subprocess.h"
#include "quest/data/idx.h"
#include "quest/quest.h"
#include "quest/training/trainer.h"

namespace quest::cli {
namespace {

namespace fs = std::filesystem;
using training::TrainConfig;

struct TrainFlags {
  std::string config_path, data_dir = data::kFashionMnistDir;
  std::string attention, backend, stem;
  int64_t epochs = 0, batch_size = 0, dim = 0, depth = 0, heads = 0, patch_size = 0;
  int64_t log_every = -1, train_subset = 0;
  double lr = 0, min_lr = -1, weight_decay = -1, warmup_epochs = -1, mlp_ratio = 0, dropout = -1,
         attention_dropout = -1, drop_path = -1, label_smoothing = -1, clip_grad_norm = -1;
  double val_fraction = 0.1;
  uint64_t seed = 0;
  bool no_augment = false, resume = false;
  std::string run_dir = "runs/train";
  CLI::App* cmd = nullptr;
  bool given(const char* name) const {  // given on the command line (not every command has it)
    const CLI::Option* opt = cmd->get_option_no_throw(name);
    return opt && opt->count() > 0;
  }
};

TrainConfig resolve_config(const TrainFlags& f) {
  TrainConfig c;
  if (!f.config_path.empty()) {
    std::ifstream in(f.config_path);
    if (!in) throw CLI::ValidationError("--config", "cannot read '" + f.config_path + "'");
    try {
      c = training::config_from_json(nlohmann::json::parse(in));
    } catch (const nlohmann::json::exception& e) {
      throw CLI::ValidationError("--config", "'" + f.config_path + "': " + e.what());
    } catch (const c10::Error& e) {
      throw CLI::ValidationError("--config", "'" + f.config_path + "': " + e.what_without_backtrace());
    }
  }
  if (f.given("--attention")) {
    const auto kind = parse_kind(f.attention);
    if (!kind) throw CLI::ValidationError("--attention", "unknown kind '" + f.attention + "'");
    c.model.attention(*kind);
  }
  if (f.given("--backend")) {
    const auto backend = parse_backend(f.backend);
    if (!backend) throw CLI::ValidationError("--backend", "unknown backend '" + f.backend + "'");
    c.model.backend(*backend);
  }
  if (f.given("--epochs")) c.epochs = f.epochs;
  if (f.given("--batch-size")) c.batch_size = f.batch_size;
  if (f.given("--dim")) c.model.dim(f.dim);
  if (f.given("--depth")) c.model.depth(f.depth);
  if (f.given("--heads")) c.model.heads(f.heads);
  if (f.given("--patch-size")) c.model.patch_size(f.patch_size);
  if (f.given("--stem")) c.model.stem(f.stem);
  if (f.given("--mlp-ratio")) c.model.mlp_ratio(f.mlp_ratio);
  if (f.given("--dropout")) c.model.dropout(f.dropout);
  if (f.given("--attention-dropout")) c.model.attention_dropout(f.attention_dropout);
  if (f.given("--drop-path")) c.model.drop_path(f.drop_path);
  if (f.given("--lr")) c.lr = f.lr;
  if (f.given("--min-lr")) c.min_lr = f.min_lr;
  if (f.given("--weight-decay")) c.weight_decay = f.weight_decay;
  if (f.given("--warmup-epochs")) c.warmup_epochs = f.warmup_epochs;
  if (f.given("--label-smoothing")) c.label_smoothing = f.label_smoothing;
  if (f.given("--clip-grad-norm")) c.clip_grad_norm = f.clip_grad_norm;
  if (f.given("--log-every")) c.log_every = f.log_every;
  if (f.given("--seed")) c.seed = f.seed;
  if (f.given("--train-subset")) c.train_subset = f.train_subset;
  if (f.no_augment) c.augment = false;
  if (f.given("--run-dir") || c.run_dir.empty()) c.run_dir = f.run_dir;
  return c;
}

// Progress: one rewritten line on a terminal, plain lines every log_every steps otherwise.
class Progress {
 public:
  Progress(int64_t total_steps, int64_t batch, int64_t every)
      : total_(total_steps), batch_(batch), every_(std::max<int64_t>(every, 1)),
        tty_(isatty(fileno(stdout))), start_(std::chrono::steady_clock::now()) {}
  void update(const nlohmann::json& line) {
    const int64_t step = line["step"].get<int64_t>() + 1;
    if (!tty_ && step % every_ != 0 && step != total_) return;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double ips = (step - first_) * batch_ / std::max(secs, 1e-9);
    const double eta = (total_ - step) * batch_ / std::max(ips, 1e-9);
    std::printf("%sepoch %lld  step %lld/%lld  loss %.4f  lr %.2e  %.0f img/s  ETA %.0fs%s",
                tty_ ? "\r" : "", (long long)line["epoch"].get<int64_t>(), (long long)step,
                (long long)total_, line["loss"].get<double>(), line["lr"].get<double>(), ips, eta,
                tty_ ? "   " : "\n");
    std::fflush(stdout);
  }
  void start_at(int64_t step) { first_ = step; }
  void finish() {
    if (tty_) std::printf("\n");
  }

 private:
  int64_t total_, batch_, every_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  int64_t first_ = 0;
};

using Data = training::MnistSplits;

Data load_data(const std::string& dir, double val_fraction, uint64_t seed, int64_t subset) {
  return training::load_mnist_splits(dir, val_fraction, seed, subset);
}

int run_train(const TrainFlags& flags) {
  warn_if_reference_blas();
  configure_threads();
  const TrainConfig config = resolve_config(flags);
  const Data data = load_data(flags.data_dir, flags.val_fraction, config.seed, config.train_subset);
  std::printf("train %lld / validation %lld / test %lld images; attention %s; run dir %s\n",
              (long long)data.train.size(), (long long)data.validation.size(),
              (long long)data.test.size(), to_string(config.model.attention()).c_str(),
              config.run_dir.c_str());
  training::Trainer trainer(config);
  const int64_t steps = config.epochs * ((data.train.size() + config.batch_size - 1) / config.batch_size);
  Progress progress(steps, config.batch_size, config.log_every);
  bool started = false;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    trainer.fit(data.train, data.validation, flags.resume, [&](const nlohmann::json& line) {
      if (!started) progress.start_at(line["step"].get<int64_t>());
      started = true;
      progress.update(line);
    });
  } catch (const training::DivergenceError& e) {
    progress.finish();
    std::fprintf(stderr, "error: training diverged: %s\n", e.what());
    for (size_t layer = 0; layer < trainer.model()->attention_diagnostics().size(); ++layer)
      if (const auto& d = trainer.model()->attention_diagnostics()[layer])
        std::fprintf(stderr, "layer %zu attention:\n%s", layer, format_diagnostics(*d).c_str());
    if (fs::exists(trainer.checkpoint_path()))
      std::fprintf(stderr, "the last good checkpoint is kept: %s\n", trainer.checkpoint_path().c_str());
    else
      std::fprintf(stderr, "no checkpoint yet: it diverged within its first epoch\n");
    return 3;
  }
  progress.finish();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto test = trainer.evaluate(data.test);
  std::printf("test accuracy %.4f, test loss %.4f, wall %.1f s\n", test.accuracy, test.loss, secs);
  nlohmann::json result = {{"test_accuracy", test.accuracy}, {"test_loss", test.loss},
                           {"wall_seconds", secs}, {"config", training::to_json(config)}};
  std::ofstream(fs::path(config.run_dir) / "result.json") << result.dump(2) << "\n";
  return 0;
}

int run_eval(const std::string& checkpoint, const std::string& data_dir) {
  configure_threads();
  const auto trainer = training::load_run(checkpoint);
  const Data data = load_data(data_dir, 0.0, trainer->config().seed, 0);
  const auto test = trainer->evaluate(data.test);
  std::printf("%s: epoch %lld, test accuracy %.4f, test loss %.4f\n", checkpoint.c_str(),
              (long long)trainer->epoch(), test.accuracy, test.loss);
  return 0;
}

struct CompareFlags {
  std::vector<std::string> kinds = {"standard", "quest", "qknorm"};
  std::vector<uint64_t> seeds = {0, 1, 2};
  std::string out_dir = "runs/compare";
  int workers = 1;
};

// Final attention diagnostics of a trained model on one test batch, averaged over layers/heads.
nlohmann::json final_diagnostics(training::Trainer& trainer, const training::Dataset& test) {
  torch::NoGradGuard no_grad;
  trainer.model()->eval();
  trainer.model()->set_record_diagnostics(true);
  trainer.model()->forward(test.images.narrow(0, 0, std::min<int64_t>(256, test.size())));
  trainer.model()->set_record_diagnostics(false);
  double kmax = 0, qmax = 0, logit = 0, entropy = 0;
  int64_t n = 0;
  for (const auto& d : trainer.model()->attention_diagnostics()) {
    if (!d) continue;
    for (size_t h = 0; h < d->entropy_mean.size(); ++h, ++n) {
      kmax = std::max(kmax, d->k_norm_max[h]);
      qmax = std::max(qmax, d->q_norm_max[h]);
      logit = std::max(logit, d->logit_abs_max[h]);
      entropy += d->entropy_mean[h];
    }
  }
  return {{"k_norm_max", kmax}, {"q_norm_max", qmax}, {"logit_abs_max", logit},
          {"entropy_mean", n ? entropy / n : 0.0}};
}

struct CompareRun {
  std::string kind;
  uint64_t seed;
  TrainConfig config;
};

// The (kind, seed) runs of a comparison, in table order; a kind or seed listed twice is an error
// (it would count the same run twice in the mean).
std::vector<CompareRun> plan_compare(const TrainFlags& flags, const CompareFlags& compare) {
  std::vector<CompareRun> runs;
  for (size_t i = 0; i < compare.kinds.size(); ++i) {
    const std::string& kind_name = compare.kinds[i];
    if (!parse_kind(kind_name)) throw CLI::ValidationError("--kinds", "unknown kind '" + kind_name + "'");
    for (size_t j = 0; j < i; ++j)
      if (compare.kinds[j] == kind_name)
        throw CLI::ValidationError("--kinds", "'" + kind_name + "' is listed twice");
  }
  for (size_t i = 0; i < compare.seeds.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (compare.seeds[j] == compare.seeds[i])
        throw CLI::ValidationError("--seeds", std::to_string(compare.seeds[i]) + " is listed twice");
  for (const std::string& kind_name : compare.kinds)
    for (uint64_t seed : compare.seeds) {
      TrainConfig config = resolve_config(flags);
      config.model.attention(*parse_kind(kind_name));
      config.seed = seed;
      config.run_dir = (fs::path(compare.out_dir) / kind_name / ("seed-" + std::to_string(seed))).string();
      runs.push_back({kind_name, seed, config});
    }
  return runs;
}

// A finished (or diverged) run's line in compare.json, from its trained model.
nlohmann::json compare_result(const CompareRun& run, training::Trainer& trainer, const Data& data,
                              const std::string& status, double wall_seconds) {
  const double train_secs = trainer.train_seconds();  // over resumed segments too
  const auto test = trainer.evaluate(data.test);
  const auto diag = final_diagnostics(trainer, data.test);
  std::printf("%-12s seed %llu: test accuracy %.4f  (%s, training %.0f s)\n", run.kind.c_str(),
              (unsigned long long)run.seed, test.accuracy, status.c_str(), train_secs);
  std::fflush(stdout);
  return {{"kind", run.kind}, {"seed", run.seed}, {"test_accuracy", test.accuracy},
          {"test_loss", test.loss}, {"train_seconds", train_secs},
          {"wall_seconds_this_invocation", wall_seconds}, {"status", status},
          {"diagnostics", diag}, {"run_dir", run.config.run_dir}};
}

// One run after another in this process, every thread on each, with a progress bar.
std::vector<nlohmann::json> compare_in_turn(const TrainFlags& flags, const std::vector<CompareRun>& runs) {
  std::vector<nlohmann::json> results;
  for (const CompareRun& run : runs) {
    const auto& config = run.config;
    const Data data = load_data(flags.data_dir, flags.val_fraction, run.seed, config.train_subset);
    training::Trainer trainer(config);
    const auto t0 = std::chrono::steady_clock::now();
    std::string status = "ok";
    const int64_t steps = config.epochs * ((data.train.size() + config.batch_size - 1) / config.batch_size);
    Progress progress(steps, config.batch_size, config.log_every);
    try {
      bool started = false;
      std::printf("%s seed %llu (%lld training images)\n", run.kind.c_str(), (unsigned long long)run.seed,
                  (long long)data.train.size());
      trainer.fit(data.train, data.validation, flags.resume, [&](const nlohmann::json& line) {
        if (!started) progress.start_at(line["step"].get<int64_t>());
        started = true;
        progress.update(line);
      });
      progress.finish();
    } catch (const training::DivergenceError& e) {
      progress.finish();  // end the progress line before the run's result line
      status = std::string("diverged: ") + e.what();
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    results.push_back(compare_result(run, trainer, data, status, secs));
  }
  return results;
}

// `workers` runs side by side, each a `quest train` child with its share of the threads (on this
// 2-core machine two 1-thread runs train ~1.5x as many images/s as one 2-thread run). Each child
// logs to <run-dir>/train.log; this process prints a line per finished epoch, then evaluates every
// run from its checkpoint.
std::vector<nlohmann::json> compare_side_by_side(const TrainFlags& flags, const std::vector<CompareRun>& runs,
                                                 int workers, int threads) {
  const int child_threads = std::max(1, threads / workers);
  // A resumed run whose checkpoint already holds every epoch needs no child: the evaluation below
  // is all that is left of it.
  auto train_log = [](const CompareRun& run) { return (fs::path(run.config.run_dir) / "train.log").string(); };
  std::vector<ChildJob> jobs;
  std::vector<size_t> run_of_job;
  std::vector<int> codes(runs.size(), 0);
  for (size_t i = 0; i < runs.size(); ++i) {
    const CompareRun& run = runs[i];
    const std::string checkpoint = training::checkpoint_path(run.config.run_dir);
    if (flags.resume && fs::exists(checkpoint) && training::load_run(checkpoint)->epoch() >= run.config.epochs) {
      std::printf("%-12s seed %llu: finished, evaluating only\n", run.kind.c_str(), (unsigned long long)run.seed);
      continue;
    }
    fs::create_directories(run.config.run_dir);
    const std::string config_path = (fs::path(run.config.run_dir) / "config.json").string();
    std::ofstream(config_path) << training::to_json(run.config).dump(2) << "\n";
    ChildJob job;
    job.args = {"train", "--config", config_path, "--run-dir", run.config.run_dir, "--data-dir", flags.data_dir,
                "--val-fraction", nlohmann::json(flags.val_fraction).dump()};
    if (flags.resume) job.args.push_back("--resume");
    job.env = {{"OMP_NUM_THREADS", std::to_string(child_threads)},
               {"OPENBLAS_NUM_THREADS", std::to_string(child_threads)}};
    job.log_path = train_log(run);
    jobs.push_back(job);
    run_of_job.push_back(i);
  }
  std::printf("%zu runs to train, %d side by side with %d thread(s) each; logs in <run-dir>/train.log\n",
              jobs.size(), workers, child_threads);
  std::fflush(stdout);
  // Each running run's newest epoch line, once per epoch; lines from before its child started are
  // not news, and a run whose child has exited was read a last time then.
  std::vector<int64_t> epoch_reported(runs.size(), -1);
  std::vector<std::optional<fs::file_time_type>> started(runs.size());
  std::vector<bool> exited(runs.size(), false);
  auto report_epochs = [&] {
    for (size_t i = 0; i < runs.size(); ++i) {
      if (!started[i] || exited[i]) continue;
      const fs::path metrics = fs::path(runs[i].config.run_dir) / "metrics.jsonl";
      std::error_code ec;
      const auto modified = fs::last_write_time(metrics, ec);
      if (ec || modified < *started[i]) continue;
      std::ifstream in(metrics);
      nlohmann::json last;
      for (std::string text; std::getline(in, text);) {
        if (text.find("\"type\":\"epoch\"") == std::string::npos) continue;
        try {
          last = nlohmann::json::parse(text);
        } catch (const nlohmann::json::exception&) {  // being written
        }
      }
      if (last.is_null() || last["epoch"].get<int64_t>() <= epoch_reported[i]) continue;
      epoch_reported[i] = last["epoch"].get<int64_t>();
      std::printf("%-12s seed %llu: epoch %lld/%lld  train loss %.4f  val accuracy %.4f  %.0f img/s\n",
                  runs[i].kind.c_str(), (unsigned long long)runs[i].seed, (long long)epoch_reported[i] + 1,
                  (long long)runs[i].config.epochs, last["train_loss"].get<double>(),
                  last["val_accuracy"].get<double>(), last["images_per_second"].get<double>());
      std::fflush(stdout);
    }
  };
  const std::vector<int> job_codes = run_children(
      jobs, workers, [&](size_t j) { started[run_of_job[j]] = fs::file_time_type::clock::now(); }, report_epochs,
      [&](size_t j, int code) {
        const size_t i = run_of_job[j];
        report_epochs();
        exited[i] = true;
        if (code != 0)
          std::printf("%-12s seed %llu: exit code %d (see %s)\n", runs[i].kind.c_str(),
                      (unsigned long long)runs[i].seed, code, jobs[j].log_path.c_str());
        std::fflush(stdout);
      });
  for (size_t j = 0; j < jobs.size(); ++j) codes[run_of_job[j]] = job_codes[j];
  std::vector<nlohmann::json> results;
  std::string failed;
  for (size_t i = 0; i < runs.size(); ++i) {
    const std::string log_path = train_log(runs[i]);
    // quest train exits 3 when training diverged (its last good checkpoint is kept).
    if (codes[i] != 0 && codes[i] != 3) {
      std::ifstream log(log_path);
      std::string line, last;
      while (std::getline(log, line))
        if (!line.empty()) last = line;
      failed += "\n  " + runs[i].kind + " seed " + std::to_string(runs[i].seed) + ": exit code " +
                std::to_string(codes[i]) + ", log " + log_path + "\n    " + last;
      continue;
    }
    const std::string checkpoint = training::checkpoint_path(runs[i].config.run_dir);
    if (!fs::exists(checkpoint)) {
      failed += "\n  " + runs[i].kind + " seed " + std::to_string(runs[i].seed) +
                ": diverged before its first checkpoint, log " + log_path;
      continue;
    }
    const Data data = load_data(flags.data_dir, flags.val_fraction, runs[i].seed, runs[i].config.train_subset);
    auto trainer = training::load_run(checkpoint);
    const std::string status = codes[i] == 0 ? "ok" : "diverged: see " + log_path;
    results.push_back(compare_result(runs[i], *trainer, data, status, NAN));
  }
  if (!failed.empty()) throw std::runtime_error("quest compare: runs failed:" + failed);
  return results;
}

int run_compare(TrainFlags flags, const CompareFlags& compare) {
  warn_if_reference_blas();
  const int threads = configure_threads();
  const std::vector<CompareRun> plan = plan_compare(flags, compare);
  fs::create_directories(compare.out_dir);
  const int workers = std::min<int>(compare.workers, static_cast<int>(plan.size()));
  const std::vector<nlohmann::json> runs =
      workers > 1 ? compare_side_by_side(flags, plan, workers, threads) : compare_in_turn(flags, plan);
  std::map<std::string, std::vector<double>> acc, wall;
  std::map<std::string, nlohmann::json> last_diag;
  for (const auto& run : runs) {
    const std::string kind = run["kind"];
    acc[kind].push_back(run["test_accuracy"].get<double>());
    wall[kind].push_back(run["train_seconds"].get<double>());
    last_diag[kind] = run["diagnostics"];
  }
  std::printf("\n%-12s %-18s %6s %12s %12s %10s %10s\n", "kind", "test acc (mean±std)", "seeds",
              "max |k|", "max |logit|", "entropy", "train s");
  std::ofstream csv(fs::path(compare.out_dir) / "summary.csv");
  csv << "kind,test_accuracy_mean,test_accuracy_std,seeds,k_norm_max,logit_abs_max,entropy_mean,train_seconds_mean\n";
  nlohmann::json summary = nlohmann::json::array();
  for (const std::string& kind_name : compare.kinds) {
    const auto& d = last_diag[kind_name];
    std::printf("%-12s %8.2f ± %-7.2f %6zu %12.2f %12.2f %10.3f %10.0f\n", kind_name.c_str(),
                100 * mean_of(acc[kind_name]), 100 * std_of(acc[kind_name]), acc[kind_name].size(),
                d["k_norm_max"].get<double>(), d["logit_abs_max"].get<double>(),
                d["entropy_mean"].get<double>(), mean_of(wall[kind_name]));
    csv << kind_name << "," << mean_of(acc[kind_name]) << "," << std_of(acc[kind_name]) << ","
        << acc[kind_name].size() << "," << d["k_norm_max"].get<double>() << ","
        << d["logit_abs_max"].get<double>() << "," << d["entropy_mean"].get<double>() << ","
        << mean_of(wall[kind_name]) << "\n";
    summary.push_back({{"kind", kind_name}, {"test_accuracy_mean", mean_of(acc[kind_name])},
                       {"test_accuracy_std", std_of(acc[kind_name])}, {"seeds", acc[kind_name].size()},
                       {"final_diagnostics_last_seed", d}, {"train_seconds_mean", mean_of(wall[kind_name])}});
  }
  std::ofstream(fs::path(compare.out_dir) / "compare.json")
      << nlohmann::json({{"summary", summary}, {"runs", runs}, {"workers", workers}}).dump(2) << "\n";
  std::printf("(diagnostics: final model on 256 test images, last seed; results in %s)\n",
              compare.out_dir.c_str());
  write_plots(compare.out_dir);
  return 0;
}

}  // namespace

// The training flags shared by train and compare.
static void add_training_flags(CLI::App* cmd, const std::shared_ptr<TrainFlags>& f) {
  f->cmd = cmd;
  cmd->add_option("--config", f->config_path, "JSON config (e.g. a run's config.json); flags override it");
  cmd->add_option("--data-dir", f->data_dir, "Directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]")
      ->capture_default_str();
  cmd->add_option("--backend", f->backend, "automatic, fused, composite or reference");
  cmd->add_option("--epochs", f->epochs)->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--batch-size", f->batch_size)->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--dim", f->dim, "Embedding width")->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--depth", f->depth, "Transformer blocks")->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--heads", f->heads)->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--patch-size", f->patch_size)->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--stem", f->stem,
                  "patch (linear patch embedding), conv (3x3 stride-2 convolutions) or conv_bn (the same "
                  "with BatchNorm + ReLU and a final 1x1 conv)")
      ->check(CLI::IsMember({"patch", "conv", "conv_bn"}));
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
  cmd->add_option("--val-fraction", f->val_fraction, "Held-out share of the training set")
      ->check(CLI::Range(0.0, 0.9))->capture_default_str();
  cmd->add_option("--train-subset", f->train_subset, "Use only the first N training images (quick runs)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--no-augment", f->no_augment, "No random crop / flip");
  cmd->add_flag("--resume", f->resume, "Continue from <run-dir>/checkpoint.pt");
}

void add_train(CLI::App& app, int& exit_code) {
  auto f = std::make_shared<TrainFlags>();
  CLI::App* cmd = app.add_subcommand("train", "Train a ViT on Fashion-MNIST (or any MNIST-format directory)");
  add_training_flags(cmd, f);
  cmd->add_option("--attention", f->attention, "standard, quest, qnorm, qknorm or qk_layernorm");
  cmd->add_option("--run-dir", f->run_dir, "Where metrics, checkpoints and config go")->capture_default_str();
  cmd->callback([f, &exit_code] { exit_code = run_train(*f); });

  auto cf = std::make_shared<TrainFlags>();
  auto compare = std::make_shared<CompareFlags>();
  CLI::App* cmp = app.add_subcommand(
      "compare", "Train every requested attention kind on the same seeds and data; table of test accuracy");
  add_training_flags(cmp, cf);
  cmp->add_option("--kinds", compare->kinds, "Attention kinds (space- or comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  cmp->add_option("--seeds", compare->seeds, "Seeds (each kind runs on each)")
      ->delimiter(',')
      ->capture_default_str();
  cmp->add_option("--out-dir", compare->out_dir, "Runs go to <out-dir>/<kind>/seed-<s>")->capture_default_str();
  cmp->add_option("--workers", compare->workers,
                  "Runs trained side by side, each a 'quest train' process with its share of the threads "
                  "(log in <run-dir>/train.log); 1 = one after another with every thread")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  cmp->callback([cf, compare, &exit_code] { exit_code = run_compare(*cf, *compare); });

  auto checkpoint = std::make_shared<std::string>();
  auto data_dir = std::make_shared<std::string>(data::kFashionMnistDir);
  CLI::App* eval = app.add_subcommand("eval", "Test accuracy of a checkpoint (its run's config.json beside it)");
  eval->add_option("checkpoint", *checkpoint, "Path to checkpoint.pt")->required();
  eval->add_option("--data-dir", *data_dir)->capture_default_str();
  eval->callback([checkpoint, data_dir, &exit_code] { exit_code = run_eval(*checkpoint, *data_dir); });
}

}  // namespace quest::cli
