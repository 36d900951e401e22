#include "quest/lab/training/lm.h"

#include <cmath>

namespace quest::training {

nlohmann::json to_json(const LmConfig& c) {
  const auto& m = c.model;
  nlohmann::json j = {{"task", "lm"},
          {"model",
           {{"vocab_size", m.vocab_size()}, {"context", m.context()}, {"dim", m.dim()},
            {"depth", m.depth()}, {"heads", m.heads()}, {"mlp_ratio", m.mlp_ratio()},
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
  // The task first: another task's config would otherwise fail on its first unknown key.
  TORCH_CHECK(!j.is_object() || !j.contains("task") || j["task"] == "lm", "quest::training: this config is for task ",
              j.is_object() && j.contains("task") ? j["task"].dump() : "", ", not \"lm\"");
  const nlohmann::json merged = merged_config(to_json(c), j);
  const auto& m = merged.at("model");
  const auto kind = parse_kind(m.at("attention").get<std::string>());
  TORCH_CHECK(kind, "quest::training: unknown attention kind '", m.at("attention").get<std::string>(), "'");
  const auto backend = parse_backend(m.at("backend").get<std::string>());
  TORCH_CHECK(backend, "quest::training: unknown backend '", m.at("backend").get<std::string>(), "'");
  c.model.vocab_size(m.at("vocab_size")).context(m.at("context")).dim(m.at("dim"))
      .depth(m.at("depth")).heads(m.at("heads")).mlp_ratio(m.at("mlp_ratio"))
      .dropout(m.at("dropout")).attention(*kind).backend(*backend).positions(models::parse_positions(m.at("positions")))
      .tied_embeddings(m.at("tied_embeddings"));
  read_run_settings(merged, c);
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
            logits.detach().logsumexp(-1).mean().item<double>()};
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
