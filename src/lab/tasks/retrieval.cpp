// The "retrieval" task: the spurious-pattern retrieval toy (data/retrieval.h, models/retrieval.h)
// as a run of its own — config.json, metrics, checkpoints, resume, compare — trained on fresh
// samples every step at a constant learning rate, as the paper's stability experiment trains it
// (`quest experiment spurious` runs whole grids of these in threads, with trajectories). Scores:
// accuracy on the biased, unbiased and conflicting splits (one fixed set each, shared by every
// run), and success — the robust cue learned (docs/spurious.md).
#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>

#include "builtin.h"
#include "quest/lab/data/retrieval.h"
#include "quest/lab/models/retrieval.h"
#include "quest/lab/runs/run_dir.h"

namespace quest::tasks {

namespace {

using data::RetrievalSplit;

struct RetrievalConfig : training::RunSettings {
  RetrievalConfig() {
    steps_per_epoch = 1000;
    batch_size = 64;
    clip_grad_norm = 0;
    log_every = 100;
  }
  data::RetrievalTaskOptions data;
  models::RetrievalModelOptions model;  // key_dim and classes are the data's
  int64_t steps_per_epoch;
  int64_t eval_size = 2000;  // samples per scored split
  // Success: accuracy >= these on the unbiased and the conflicting split (as the experiment's).
  double unbiased_threshold = 0.9, conflicting_threshold = 0.5;
};

nlohmann::json to_json(const RetrievalConfig& c) {
  const auto& t = c.data;
  const auto& m = c.model;
  nlohmann::json j = {
      {"task", "retrieval"},
      {"data",
       {{"tokens", t.tokens}, {"key_dim", t.key_dim}, {"classes", t.classes}, {"bias_probability", t.bias_probability},
        {"high_variance", t.high_variance}, {"low_variance", t.low_variance}, {"bias_scale", t.bias_scale},
        {"bias_noise", t.bias_noise}}},
      {"model",
       {{"attention", to_string(m.attention())}, {"projections", m.projections()}, {"queries", to_string(m.queries())},
        {"dim", m.dim()}, {"heads", m.heads()}, {"hidden", m.hidden()}, {"backend", to_string(m.backend())}}},
      {"steps_per_epoch", c.steps_per_epoch},
      {"eval_size", c.eval_size},
      {"unbiased_threshold", c.unbiased_threshold},
      {"conflicting_threshold", c.conflicting_threshold}};
  j.update(training::to_json(static_cast<const training::RunSettings&>(c)));
  return j;
}

RetrievalConfig retrieval_config_from_json(const nlohmann::json& j) {
  RetrievalConfig c;
  const nlohmann::json merged = training::read_task_config("retrieval", to_json(c), j, c);
  const auto& t = merged.at("data");
  c.data.tokens = t.at("tokens");
  c.data.key_dim = t.at("key_dim");
  c.data.classes = t.at("classes");
  c.data.bias_probability = t.at("bias_probability");
  c.data.high_variance = t.at("high_variance");
  c.data.low_variance = t.at("low_variance");
  c.data.bias_scale = t.at("bias_scale");
  c.data.bias_noise = t.at("bias_noise");
  data::validate(c.data);
  const auto& m = merged.at("model");
  const auto [kind, backend] = training::attention_choice(m);
  c.model.attention(kind).backend(backend).projections(m.at("projections"))
      .queries(models::parse_queries(m.at("queries"))).dim(m.at("dim")).heads(m.at("heads")).hidden(m.at("hidden"))
      .key_dim(c.data.key_dim).classes(c.data.classes);
  c.steps_per_epoch = merged.at("steps_per_epoch");
  c.eval_size = merged.at("eval_size");
  c.unbiased_threshold = merged.at("unbiased_threshold");
  c.conflicting_threshold = merged.at("conflicting_threshold");
  TORCH_CHECK(c.epochs >= 1 && c.steps_per_epoch >= 1 && c.batch_size >= 1 && c.eval_size >= 1 && c.lr > 0,
              "quest::training: retrieval needs epochs, steps_per_epoch, batch_size, eval_size >= 1 and lr > 0");
  return c;
}

// The scored splits: one fixed stream, whatever the run's seed, so every run is scored alike.
struct ScoredSplits {
  data::RetrievalBatch biased, unbiased, conflicting;
};
ScoredSplits scored_splits(const RetrievalConfig& c) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(20260331);
  return {data::generate_retrieval(c.data, RetrievalSplit::biased, c.eval_size, gen),
          data::generate_retrieval(c.data, RetrievalSplit::unbiased, c.eval_size, gen),
          data::generate_retrieval(c.data, RetrievalSplit::conflicting, c.eval_size, gen)};
}

double accuracy(models::RetrievalModel& net, const data::RetrievalBatch& set) {
  torch::NoGradGuard no_grad;
  net->eval();
  const double a = net->forward(set.keys, set.codes).argmax(1).eq(set.labels).to(torch::kDouble).mean().item<double>();
  net->train();
  return a;
}

// Fresh training samples every step, drawn from the epoch's generator (so a resumed epoch replays).
class RetrievalTask : public training::Task {
 public:
  explicit RetrievalTask(const RetrievalConfig& c) : config(c), splits(scored_splits(c)), net(c.model) {}
  torch::nn::Module& model() override { return *net; }
  void initialize(at::Generator generator) override { net->initialize(generator); }
  int64_t steps_per_epoch() const override { return config.steps_per_epoch; }
  void begin_epoch(int64_t, at::Generator data_generator) override { gen = data_generator; }
  training::StepOutput forward_step(int64_t) override {
    const auto batch = data::generate_retrieval(config.data, RetrievalSplit::training, config.batch_size, gen);
    const auto logits = net->forward(batch.keys, batch.codes);
    return {torch::cross_entropy_loss(logits, batch.labels), config.batch_size,
            logits.argmax(1).eq(batch.labels).sum().item<int64_t>(), logits.logsumexp(1)};
  }
  std::optional<training::EvalResult> validate() override {
    torch::NoGradGuard no_grad;
    net->eval();
    const auto& u = splits.unbiased;
    const auto logits = net->forward(u.keys, u.codes);
    const double loss = torch::cross_entropy_loss(logits, u.labels).item<double>();
    const double acc = logits.argmax(1).eq(u.labels).to(torch::kDouble).mean().item<double>();
    net->train();
    return training::EvalResult{loss, acc, config.eval_size};
  }
  std::string sample_name() const override { return "samples"; }

  RetrievalConfig config;
  ScoredSplits splits;
  models::RetrievalModel net;
  at::Generator gen;
};

class RetrievalRun : public TaskRun {
 public:
  explicit RetrievalRun(const RetrievalConfig& c) : config_(c), task_(c), engine_(engine_config(c), task_) {}

  void fit(bool resume, const std::function<void(const nlohmann::json&)>& on_step) override {
    if (!config_.run_dir.empty()) runs::RunDir(config_.run_dir).write_config(to_json(config_));
    engine_.fit(resume, on_step);
  }
  nlohmann::json test_metrics() override {
    const double biased = accuracy(task_.net, task_.splits.biased);
    const double unbiased = accuracy(task_.net, task_.splits.unbiased);
    const double conflicting = accuracy(task_.net, task_.splits.conflicting);
    const bool success = unbiased >= config_.unbiased_threshold && conflicting >= config_.conflicting_threshold;
    return {{"test_accuracy_biased", biased},
            {"test_accuracy_unbiased", unbiased},
            {"test_accuracy_conflicting", conflicting},
            {"success", success ? 1.0 : 0.0}};
  }
  // One head row from the model's probe of the unbiased split (its norms are means over heads).
  std::vector<std::optional<HeadDiagnostics>> test_diagnostics() override {
    torch::NoGradGuard no_grad;
    task_.net->eval();
    const auto& u = task_.splits.unbiased;
    const models::RetrievalProbe p = task_.net->probe(u.keys, u.codes);
    task_.net->train();
    HeadDiagnostics d;
    d.resize(1);
    d.q_norm_mean[0] = p.query_norm.mean().item<double>();
    d.q_norm_max[0] = p.query_norm.max().item<double>();
    d.k_norm_mean[0] = p.key_norms.mean().item<double>();
    d.k_norm_max[0] = p.key_norms.max().item<double>();
    d.logit_abs_max[0] = p.max_logit;
    d.entropy_mean[0] = p.entropy;
    return {d};
  }
  std::vector<std::optional<HeadDiagnostics>> attention_diagnostics() override { return {}; }
  std::string describe_data() const override {
    char line[160];
    std::snprintf(line, sizeof line, "%lld fresh samples a step, %lld tokens; scored on %lld per split",
                  (long long)config_.batch_size, (long long)config_.data.tokens, (long long)config_.eval_size);
    return line;
  }
  int64_t epoch() const override { return engine_.epoch(); }
  int64_t step() const override { return engine_.step(); }
  double train_seconds() const override { return engine_.train_seconds(); }
  training::Engine& engine() { return engine_; }

 private:
  // The experiment's schedule: a constant learning rate.
  static training::EngineConfig engine_config(const RetrievalConfig& c) {
    training::EngineConfig e = training::engine_config(c);
    e.schedule = training::Schedule::constant;
    return e;
  }
  RetrievalConfig config_;
  RetrievalTask task_;
  training::Engine engine_;
};

class RetrievalKind : public TaskKind {
 public:
  std::string name() const override { return "retrieval"; }
  nlohmann::json defaults() const override { return to_json(RetrievalConfig{}); }
  nlohmann::json resolve(const nlohmann::json& config) const override {
    return to_json(retrieval_config_from_json(config));
  }
  std::unique_ptr<TaskRun> start(const nlohmann::json& config, const training::DataParallel& parallel) const override {
    TORCH_CHECK(!parallel.active(), "quest: the retrieval task trains in one process");
    return std::make_unique<RetrievalRun>(retrieval_config_from_json(config));
  }
  std::unique_ptr<TaskRun> load(const std::string& checkpoint) const override {
    auto run = std::make_unique<RetrievalRun>(retrieval_config_from_json(training::run_config_of(checkpoint)));
    run->engine().load_checkpoint(checkpoint);
    return run;
  }
  MetricColumn headline() const override { return {"test_accuracy_conflicting", 2, 100}; }
  std::vector<MetricColumn> more_columns() const override {
    return {{"test_accuracy_unbiased", 2, 100}, {"test_accuracy_biased", 2, 100}, {"success", 2}};
  }
  std::string legend() const override {
    return "accuracies in %, headline: the conflicting split (Sigma against a planted b); success: the share of "
           "seeds that learned the robust cue; diagnostics: the unbiased split, last seed";
  }
  std::string describe_scores(const nlohmann::json& m) const override {
    if (!m.contains("test_accuracy_conflicting")) return "";
    char line[200];
    std::snprintf(line, sizeof line, "accuracy biased %.4f, unbiased %.4f, conflicting %.4f; robust cue learned: %s",
                  m.value("test_accuracy_biased", NAN), m.value("test_accuracy_unbiased", NAN),
                  m.value("test_accuracy_conflicting", NAN), m.value("success", 0.0) > 0 ? "yes" : "no");
    return line;
  }
  std::string describe_headline(const nlohmann::json& m) const override {
    char line[64];
    std::snprintf(line, sizeof line, "conflicting accuracy %.4f", m.value("test_accuracy_conflicting", NAN));
    return line;
  }
  std::string describe_epoch(const nlohmann::json& e) const override {
    char line[128];
    std::snprintf(line, sizeof line, "train loss %.4f  unbiased accuracy %.4f", e.value("train_loss", 0.0),
                  e.value("val_accuracy", 0.0));
    return line;
  }
  StepSize step_size(const nlohmann::json& config) const override {
    return {config.at("batch_size").get<int64_t>(), "samples"};
  }
};

}  // namespace

std::shared_ptr<const TaskKind> retrieval_task_kind() { return std::make_shared<RetrievalKind>(); }

}  // namespace quest::tasks
