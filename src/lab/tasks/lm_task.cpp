// The "lm" task: byte-level language modelling with the GPT on a text corpus (training/lm.h).
// Scores in bits per byte; the test split is scored whole, validation on its first eval_bytes.
#include <cmath>
#include <cstdio>
#include <mutex>

#include "builtin.h"
#include "quest/lab/training/lm.h"

namespace quest::tasks {

namespace {

using training::LmConfig;
using training::LmEval;
using training::LmTrainer;

// A corpus read once for every run that reads it alike (a compare scores many runs of one corpus).
std::shared_ptr<const data::ByteSplits> corpus_splits(const LmConfig& c) {
  static std::mutex mutex;
  static std::string key;
  static std::shared_ptr<const data::ByteSplits> cached;
  std::lock_guard<std::mutex> lock(mutex);
  const std::string k = c.corpus + "#" + std::to_string(c.corpus_bytes);
  if (!cached || key != k) cached = std::make_shared<const data::ByteSplits>(training::load_lm_data(c)), key = k;
  return cached;
}

void add_eval(nlohmann::json& j, const std::string& split, const LmEval& e) {
  j[split + "_bits_per_byte"] = e.bits_per_byte;
  j[split + "_nats_per_byte"] = e.nats_per_byte;
  j[split + "_accuracy"] = e.accuracy;
  j[split + "_bytes"] = e.bytes;
}

class LmRun : public TaskRun {
 public:
  LmRun(const LmConfig& config, const training::DataParallel& parallel)
      : data_(std::make_shared<const data::ByteSplits>(training::load_lm_data(config))),
        trainer_(std::make_unique<LmTrainer>(config, parallel)) {}
  explicit LmRun(std::unique_ptr<LmTrainer> trainer) : trainer_(std::move(trainer)) {}

  void fit(bool resume, const std::function<void(const nlohmann::json&)>& on_step) override {
    trainer_->fit(*data_, resume, on_step);
  }
  nlohmann::json test_metrics() override {
    nlohmann::json j = nlohmann::json::object();
    add_eval(j, "valid", trainer_->evaluate(data().valid, trainer_->config().eval_bytes));
    add_eval(j, "test", trainer_->evaluate(data().test));
    return j;
  }
  // The first 8 windows of the test split.
  std::vector<std::optional<HeadDiagnostics>> test_diagnostics() override {
    const torch::Tensor& test = data().test;
    auto& gpt = trainer_->model();
    torch::NoGradGuard no_grad;
    gpt->eval();
    gpt->set_record_diagnostics(true);
    const int64_t context = trainer_->config().model.context();
    const int64_t windows = std::max<int64_t>(1, std::min<int64_t>(8, test.numel() / context));
    const int64_t length = std::min<int64_t>(context, test.numel());
    gpt->forward(test.narrow(0, 0, windows * length).to(torch::kLong).view({windows, length}));
    gpt->set_record_diagnostics(false);
    return gpt->attention_diagnostics();
  }
  std::vector<std::optional<HeadDiagnostics>> attention_diagnostics() override {
    return trainer_->model()->attention_diagnostics();
  }
  nlohmann::json training_metrics() const override {
    const LmConfig& c = trainer_->config();
    const double seconds = trainer_->train_seconds();
    return {{"tokens_per_second",
             seconds > 0 ? static_cast<double>(trainer_->step()) * c.batch_size * c.model.context() / seconds : 0.0}};
  }
  std::string describe_data() const override {
    char line[256];
    std::snprintf(line, sizeof line, "corpus %s: train %lld / valid %lld / test %lld bytes; %s positions",
                  trainer_->config().corpus.c_str(), (long long)data_->train.numel(), (long long)data_->valid.numel(),
                  (long long)data_->test.numel(), to_string(trainer_->config().model.positions()).c_str());
    return line;
  }
  int64_t epoch() const override { return trainer_->epoch(); }
  int64_t step() const override { return trainer_->step(); }
  double train_seconds() const override { return trainer_->train_seconds(); }

 private:
  const data::ByteSplits& data() {
    if (!data_) data_ = corpus_splits(trainer_->config());
    return *data_;
  }
  std::shared_ptr<const data::ByteSplits> data_;
  std::unique_ptr<LmTrainer> trainer_;
};

class LmKind : public TaskKind {
 public:
  std::string name() const override { return "lm"; }
  nlohmann::json defaults() const override { return training::to_json(LmConfig{}); }
  nlohmann::json resolve(const nlohmann::json& config) const override {
    return training::to_json(training::lm_config_from_json(config));
  }
  std::unique_ptr<TaskRun> start(const nlohmann::json& config, const training::DataParallel& parallel) const override {
    return std::make_unique<LmRun>(training::lm_config_from_json(config), parallel);
  }
  std::unique_ptr<TaskRun> load(const std::string& checkpoint) const override {
    return std::make_unique<LmRun>(training::load_lm_run(checkpoint));
  }
  MetricColumn headline() const override { return {"test_bits_per_byte", 4}; }
  std::vector<MetricColumn> more_columns() const override { return {{"tokens_per_second", 0}}; }
  std::string legend() const override {
    return "test bits per byte over the whole test split; diagnostics: final model on the first test windows, "
           "last seed";
  }
  std::string describe_scores(const nlohmann::json& m) const override {
    std::string lines;
    char line[256];
    for (const auto& [split, what] : {std::pair{"valid", "valid (first eval_bytes)"}, {"test", "test"}}) {
      const std::string s = split;
      if (!m.contains(s + "_bits_per_byte")) continue;
      std::snprintf(line, sizeof line, "%s: %.4f bits per byte (%.4f nats), next-byte accuracy %.4f over %lld bytes\n",
                    what, m.value(s + "_bits_per_byte", NAN), m.value(s + "_nats_per_byte", NAN),
                    m.value(s + "_accuracy", NAN), (long long)m.value(s + "_bytes", int64_t{0}));
      lines += line;
    }
    if (m.contains("tokens_per_second")) {
      std::snprintf(line, sizeof line, "%.0f tokens/s", m.value("tokens_per_second", 0.0));
      lines += line;
    }
    return lines;
  }
  std::string describe_headline(const nlohmann::json& m) const override {
    char line[64];
    std::snprintf(line, sizeof line, "test %.4f bits per byte", m.value("test_bits_per_byte", NAN));
    return line;
  }
  std::string describe_epoch(const nlohmann::json& e) const override {
    char line[128];
    std::snprintf(line, sizeof line, "train loss %.4f  valid %.4f bits per byte", e.value("train_loss", 0.0),
                  e.value("val_loss", 0.0) / std::log(2.0));
    return line;
  }
  StepSize step_size(const nlohmann::json& config) const override {
    return {config.at("batch_size").get<int64_t>() * config.at("model").at("context").get<int64_t>(), "tok"};
  }
};

}  // namespace

std::shared_ptr<const TaskKind> lm_task_kind() { return std::make_shared<LmKind>(); }

}  // namespace quest::tasks
