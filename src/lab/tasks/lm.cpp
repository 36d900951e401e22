#include "quest/lab/tasks/lm.h"

#include <cmath>
#include <cstdio>
#include <mutex>

#include "builtin.h"

namespace quest::training {

nlohmann::json to_json(const LmConfig& c) {
  const auto& m = c.model;
  nlohmann::json j = {{"task", "lm"},
          {"model",
           {{"vocab_size", m.vocab_size()}, {"context", m.context()}, {"dim", m.dim()},
            {"depth", m.depth()}, {"heads", m.heads()}, {"kv_heads", m.kv_heads()}, {"mlp_ratio", m.mlp_ratio()},
            {"dropout", m.dropout()}, {"attention", to_string(m.attention())},
            {"backend", to_string(m.backend())}, {"positions", to_string(m.positions())},
            {"tied_embeddings", m.tied_embeddings()}}},
          {"steps_per_epoch", c.steps_per_epoch}, {"corpus", c.corpus},
          {"corpus_bytes", c.corpus_bytes}, {"eval_bytes", c.eval_bytes}};
  j.update(to_json(static_cast<const RunSettings&>(c)));
  return j;
}

LmConfig lm_config_from_json(const nlohmann::json& j) {
  LmConfig c;
  const nlohmann::json merged = read_task_config("lm", to_json(c), j, c);
  const auto& m = merged.at("model");
  const auto [kind, backend] = attention_choice(m);
  c.model.vocab_size(m.at("vocab_size")).context(m.at("context")).dim(m.at("dim"))
      .depth(m.at("depth")).heads(m.at("heads")).kv_heads(m.at("kv_heads")).mlp_ratio(m.at("mlp_ratio"))
      .dropout(m.at("dropout")).attention(kind).backend(backend).positions(models::parse_positions(m.at("positions")))
      .tied_embeddings(m.at("tied_embeddings"));
  TORCH_CHECK(c.model.kv_heads() >= 0 && (c.model.kv_heads() == 0 || c.model.heads() % c.model.kv_heads() == 0),
              "quest::training: model.kv_heads must be 0 (as many as heads) or divide heads (", c.model.heads(),
              "), got ", c.model.kv_heads());
  c.steps_per_epoch = merged.at("steps_per_epoch");
  c.corpus = merged.at("corpus");
  c.corpus_bytes = merged.at("corpus_bytes");
  c.eval_bytes = merged.at("eval_bytes");
  return c;
}

data::ByteSplits load_lm_data(const LmConfig& c) {
  data::TextCorpusOptions o;
  o.dir = c.corpus;
  o.max_bytes = c.corpus_bytes;
  return data::byte_splits(data::read_text_corpus(o));
}

// The per-byte figures of an evaluation from its sums (nats, correct, bytes).
static LmEval with_rates(LmEval e) {
  e.nats_per_byte = e.nats / e.bytes;
  e.bits_per_byte = e.nats_per_byte / std::log(2.0);
  e.accuracy = static_cast<double>(e.correct) / e.bytes;
  return e;
}

// Next-byte prediction on random windows of the training stream.
class LmTrainer::LmTask : public Task {
 public:
  explicit LmTask(const LmConfig& c) : config(c), gpt(c.model) {}

  torch::nn::Module& model() override { return *gpt; }
  void initialize(at::Generator generator) override { gpt->initialize(generator); }
  int64_t steps_per_epoch() const override { return config.steps_per_epoch; }
  void begin_epoch(int64_t, at::Generator data_generator) override {
    TORCH_CHECK(train, "quest::training: no training data (fit sets it)");
    const int64_t span = config.model.context() + 1;
    TORCH_CHECK(train->numel() > span, "quest::training: the training split has ",
                train->numel(), " bytes, fewer than one window of ", span);
    starts = torch::randint(0, train->numel() - span + 1,
                            {config.steps_per_epoch, config.batch_size}, data_generator);
  }
  bool set_shard(int r, int w) override {
    rank = r, world = w;
    return true;
  }
  StepOutput forward_step(int64_t b) override {
    const auto [lo, hi] = shard_range(config.batch_size, rank, world);  // never empty: check_batch
    const auto [inputs, targets] = windows(*train, starts[b].slice(0, lo, hi));
    const auto logits = gpt->forward(inputs);
    const auto loss = torch::nn::functional::cross_entropy(logits.flatten(0, 1), targets.flatten());
    return {loss, inputs.numel(), logits.argmax(-1).eq(targets).sum().item<int64_t>(),
            logits.logsumexp(-1)};
  }
  std::optional<EvalResult> validate() override {
    if (!valid || valid->numel() < 2) return EvalResult{};
    const LmEval e = evaluate(*valid, config.eval_bytes);
    return EvalResult{e.nats_per_byte, e.accuracy, e.bytes};
  }
  void record_diagnostics(bool on) override { gpt->set_record_diagnostics(on); }
  std::vector<std::optional<HeadDiagnostics>> attention_diagnostics() const override {
    return gpt->attention_diagnostics();
  }
  std::string sample_name() const override { return "tokens"; }

  // (inputs, targets) (n, context) int64 for windows starting at `starts` (n).
  std::pair<torch::Tensor, torch::Tensor> windows(const torch::Tensor& stream,
                                                  const torch::Tensor& from) const {
    const int64_t span = config.model.context() + 1;
    const auto idx = from.unsqueeze(1) + torch::arange(span, torch::kLong).unsqueeze(0);
    const auto bytes = stream.index({idx}).to(torch::kLong);
    return {bytes.narrow(1, 0, span - 1), bytes.narrow(1, 1, span - 1)};
  }

  LmEval evaluate(const torch::Tensor& stream, int64_t max_bytes) {
    torch::NoGradGuard no_grad;
    const bool was_training = gpt->is_training();
    gpt->eval();
    const int64_t n = max_bytes > 0 ? std::min(max_bytes, stream.numel()) : stream.numel();
    const int64_t span = config.model.context() + 1;
    LmEval e;
    auto score = [&](const torch::Tensor& inputs, const torch::Tensor& targets) {
      const auto logits = gpt->forward(inputs);
      e.nats += torch::nn::functional::cross_entropy(
                  logits.flatten(0, 1), targets.flatten(),
                  torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                  .item<double>();
      e.correct += logits.argmax(-1).eq(targets).sum().item<int64_t>();
      e.bytes += targets.numel();
    };
    // Windows k = 0, 1, ... start at k * context and hold context + 1 bytes (k * context + span
    // <= n), in batches; then the tail [done, n) as one shorter window.
    // A data-parallel rank scores its shard of the windows (the tail goes with the last shard).
    const int64_t full = n >= span ? (n - span) / (span - 1) + 1 : 0;
    const auto [first, last] = shard_range(full, rank, world);
    for (int64_t w = first; w < last; w += 64) {
      const int64_t count = std::min<int64_t>(64, last - w);
      const auto from = (torch::arange(w, w + count, torch::kLong) * (span - 1));
      const auto [inputs, targets] = windows(stream, from);
      score(inputs, targets);
    }
    const int64_t done = full * (span - 1);  // bytes [0, done] are used (+1 for the first input byte)
    if (n - 1 - done >= 1 && rank == world - 1) {
      const auto tail = stream.narrow(0, done, n - done).to(torch::kLong).unsqueeze(0);
      score(tail.narrow(1, 0, tail.size(1) - 1), tail.narrow(1, 1, tail.size(1) - 1));
    }
    gpt->train(was_training);
    TORCH_CHECK(e.bytes > 0 || world > 1, "quest::training: nothing to evaluate (", n, " bytes)");
    return with_rates(e);
  }

  LmConfig config;
  models::Gpt gpt;
  const torch::Tensor* train = nullptr;
  const torch::Tensor* valid = nullptr;
  torch::Tensor starts;
  int rank = 0, world = 1;
};

LmTrainer::LmTrainer(LmConfig config, DataParallel parallel)
    : config_(std::move(config)), parallel_(std::move(parallel)) {
  TORCH_CHECK(config_.epochs >= 1 && config_.steps_per_epoch >= 1 && config_.batch_size >= 1 &&
                  config_.lr > 0,
              "quest::training: need epochs, steps_per_epoch, batch_size >= 1 and lr > 0");
  parallel_.check_batch(config_.batch_size);
  task_ = std::make_unique<LmTask>(config_);
  engine_ = std::make_unique<Engine>(engine_config(config_, parallel_), *task_);
}

LmTrainer::~LmTrainer() = default;

void LmTrainer::fit(const data::ByteSplits& data, bool resume,
                    const std::function<void(const nlohmann::json&)>& on_step) {
  if (!config_.run_dir.empty() && parallel_.writes()) runs::RunDir(config_.run_dir).write_config(to_json(config_));
  task_->train = &data.train;
  task_->valid = &data.valid;
  engine_->fit(resume, on_step);
}

LmEval LmTrainer::evaluate(const torch::Tensor& stream, int64_t max_bytes) {
  LmEval e = task_->evaluate(stream, max_bytes);
  if (!parallel_.active()) return e;
  const auto s = parallel_.group->sum({e.nats, double(e.correct), double(e.bytes)}, "the evaluation all-reduce");
  e.nats = s[0], e.correct = static_cast<int64_t>(s[1]), e.bytes = static_cast<int64_t>(s[2]);
  TORCH_CHECK(e.bytes > 0, "quest::training: nothing to evaluate");
  return with_rates(e);
}
void LmTrainer::save_checkpoint(const std::string& path) { engine_->save_checkpoint(path); }
void LmTrainer::load_checkpoint(const std::string& path) { engine_->load_checkpoint(path); }
models::Gpt& LmTrainer::model() { return task_->gpt; }
int64_t LmTrainer::epoch() const { return engine_->epoch(); }
int64_t LmTrainer::step() const { return engine_->step(); }
double LmTrainer::train_seconds() const { return engine_->train_seconds(); }

std::unique_ptr<LmTrainer> load_lm_run(const std::string& checkpoint) {
  const nlohmann::json config = run_config_of(checkpoint);
  TORCH_CHECK(!(config.contains("model") && config["model"].contains("image_size")), "quest: ",
              checkpoint, " is the checkpoint of an image-classification (ViT) run, not of a "
              "language model: `quest eval` evaluates it");
  auto trainer = std::make_unique<LmTrainer>(lm_config_from_json(config));
  trainer->load_checkpoint(checkpoint);
  return trainer;
}

}  // namespace quest::training

// The task kind "lm" (tasks/task_kind.h) over LmTrainer. Scores in bits per byte; the test split is
// scored whole, validation on its first eval_bytes.
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
