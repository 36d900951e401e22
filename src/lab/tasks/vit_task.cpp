// The "vit" task: ViT image classification on an MNIST-format directory (training/trainer.h).
#include <cstdio>
#include <mutex>

#include "builtin.h"
#include "quest/lab/training/trainer.h"

namespace quest::tasks {

namespace {

using training::Dataset;
using training::Normalization;
using training::Trainer;

// The test split a trained run is scored on, read once for every run normalised alike.
const Dataset& test_split(const std::string& dir, Normalization n) {
  static std::mutex mutex;
  static std::optional<std::tuple<std::string, double, double, Dataset>> cached;
  std::lock_guard<std::mutex> lock(mutex);
  if (!cached || std::get<0>(*cached) != dir || std::get<1>(*cached) != n.mean || std::get<2>(*cached) != n.std)
    cached.emplace(dir, n.mean, n.std, training::load_mnist_test(dir, n));
  return std::get<3>(*cached);
}

class VitRun : public TaskRun {
 public:
  // A run to train: the splits of its data directory.
  VitRun(const training::TrainConfig& config, const training::DataParallel& parallel)
      : splits_(training::load_mnist_splits(config.data.dir, config.data.val_fraction, config.seed,
                                            config.train_subset)),
        trainer_(std::make_unique<Trainer>(config, parallel)) {
    trainer_->set_normalization({splits_->mean, splits_->std});
  }
  // A trained run: its test split when it is scored.
  explicit VitRun(std::unique_ptr<Trainer> trainer) : trainer_(std::move(trainer)) {}

  void fit(bool resume, const std::function<void(const nlohmann::json&)>& on_step) override {
    trainer_->fit(splits_->train, splits_->validation, resume, on_step);
  }
  nlohmann::json test_metrics() override {
    const training::EvalResult scores = trainer_->evaluate(test());
    return {{"test_accuracy", scores.accuracy}, {"test_loss", scores.loss}};
  }
  std::vector<std::optional<HeadDiagnostics>> test_diagnostics() override {
    const Dataset& data = test();
    auto& vit = trainer_->model();
    torch::NoGradGuard no_grad;
    vit->eval();
    vit->set_record_diagnostics(true);
    vit->forward(data.images.narrow(0, 0, std::min<int64_t>(256, data.size())));
    vit->set_record_diagnostics(false);
    return vit->attention_diagnostics();
  }
  std::vector<std::optional<HeadDiagnostics>> attention_diagnostics() override {
    return trainer_->model()->attention_diagnostics();
  }
  std::string describe_data() const override {
    if (!splits_) return "";
    char line[160];
    std::snprintf(line, sizeof line, "train %lld / validation %lld / test %lld images", (long long)splits_->train.size(),
                  (long long)splits_->validation.size(), (long long)splits_->test.size());
    return line;
  }
  int64_t epoch() const override { return trainer_->epoch(); }
  int64_t step() const override { return trainer_->step(); }
  double train_seconds() const override { return trainer_->train_seconds(); }

 private:
  // Normalised as the run was trained (the statistics of all training images, saved with the run).
  const Dataset& test() {
    if (splits_) return splits_->test;
    const std::string& dir = trainer_->config().data.dir;
    return test_split(dir, trainer_->normalization_or_recomputed(dir));
  }

  std::optional<training::MnistSplits> splits_;
  std::unique_ptr<Trainer> trainer_;
};

class VitKind : public TaskKind {
 public:
  std::string name() const override { return "vit"; }
  nlohmann::json defaults() const override { return training::to_json(training::TrainConfig{}); }
  nlohmann::json resolve(const nlohmann::json& config) const override {
    return training::to_json(training::config_from_json(config));
  }
  std::unique_ptr<TaskRun> start(const nlohmann::json& config, const training::DataParallel& parallel) const override {
    return std::make_unique<VitRun>(training::config_from_json(config), parallel);
  }
  std::unique_ptr<TaskRun> load(const std::string& checkpoint) const override {
    return std::make_unique<VitRun>(training::load_run(checkpoint));
  }
  MetricColumn headline() const override { return {"test_accuracy", 2, 100}; }
  std::string legend() const override {
    return "test_accuracy in %; diagnostics: final model on 256 test images, last seed";
  }
  std::string describe_scores(const nlohmann::json& m) const override {
    if (!m.contains("test_accuracy")) return "";
    char line[128];
    std::snprintf(line, sizeof line, "test accuracy %.4f, test loss %.4f", m.value("test_accuracy", NAN),
                  m.value("test_loss", NAN));
    return line;
  }
  std::string describe_headline(const nlohmann::json& m) const override {
    char line[64];
    std::snprintf(line, sizeof line, "test accuracy %.4f", m.value("test_accuracy", NAN));
    return line;
  }
  std::string describe_epoch(const nlohmann::json& e) const override {
    char line[128];
    std::snprintf(line, sizeof line, "train loss %.4f  val accuracy %.4f  %.0f img/s", e.value("train_loss", 0.0),
                  e.value("val_accuracy", 0.0), e.value("images_per_second", 0.0));
    return line;
  }
  StepSize step_size(const nlohmann::json& config) const override {
    return {config.at("batch_size").get<int64_t>(), "img"};
  }
};

}  // namespace

std::shared_ptr<const TaskKind> vit_task_kind() { return std::make_shared<VitKind>(); }

}  // namespace quest::tasks
