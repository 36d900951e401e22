// The task registry: a task registered from outside the library (a toy regression) runs through
// the one stack — plan, train, compare, summarize, resume — as the ViT and the language model do;
// configs name their task, and a wrong or unknown task is an error that says so.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "error_message.h"
#include "fixtures.h"
#include "quest/lab/runs/compare.h"
#include "quest/lab/tasks/task_kind.h"

namespace quest::tasks {
namespace {

namespace fs = std::filesystem;

// y = x·w + noise on 4 features; the "model" is one linear layer (the attention kind is recorded,
// as a plan sets it, and unused).
struct ToyConfig : training::RunSettings {
  std::string attention = "quest";
  int64_t samples = 256;  // per split
};

nlohmann::json to_json(const ToyConfig& c) {
  nlohmann::json j = {{"task", "toy"}, {"model", {{"attention", c.attention}}}, {"samples", c.samples}};
  j.update(training::to_json(static_cast<const training::RunSettings&>(c)));
  return j;
}

ToyConfig toy_from_json(const nlohmann::json& j) {
  ToyConfig c;
  const nlohmann::json merged = training::read_task_config("toy", to_json(c), j, c);
  c.attention = merged["model"]["attention"];
  TORCH_CHECK(parse_kind(c.attention), "toy: unknown attention kind '", c.attention, "'");
  c.samples = merged["samples"];
  return c;
}

struct Split {
  torch::Tensor x, y;
};
Split make_split(int64_t n, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const torch::Tensor w = torch::tensor({1.0f, -2.0f, 0.5f, 3.0f}).view({4, 1});
  const torch::Tensor x = torch::randn({n, 4}, gen);
  return {x, x.mm(w) + 0.1 * torch::randn({n, 1}, gen)};
}

class ToyTask : public training::Task {
 public:
  explicit ToyTask(const ToyConfig& c)
      : config(c), train(make_split(c.samples, 1)), valid(make_split(c.samples, 2)), net(4, 1) {}
  torch::nn::Module& model() override { return *net; }
  void initialize(at::Generator generator) override {
    torch::NoGradGuard no_grad;
    net->weight.normal_(0, 0.1, generator);
    net->bias.zero_();
  }
  int64_t steps_per_epoch() const override { return (config.samples + config.batch_size - 1) / config.batch_size; }
  void begin_epoch(int64_t, at::Generator generator) override { order = torch::randperm(config.samples, generator); }
  training::StepOutput forward_step(int64_t b) override {
    const auto idx = order.slice(0, b * config.batch_size, std::min(config.samples, (b + 1) * config.batch_size));
    return {torch::mse_loss(net->forward(train.x.index_select(0, idx)), train.y.index_select(0, idx)),
            idx.size(0), -1};
  }
  std::optional<training::EvalResult> validate() override { return training::EvalResult{mse(valid), 0, config.samples}; }
  double mse(const Split& s) {
    torch::NoGradGuard no_grad;
    return torch::mse_loss(net->forward(s.x), s.y).item<double>();
  }

  ToyConfig config;
  Split train, valid;
  torch::nn::Linear net;
  torch::Tensor order;
};

class ToyRun : public TaskRun {
 public:
  explicit ToyRun(const ToyConfig& c) : config_(c), task_(c), engine_(training::engine_config(c), task_) {}
  void fit(bool resume, const std::function<void(const nlohmann::json&)>& on_step) override {
    runs::RunDir(config_.run_dir).write_config(to_json(config_));
    engine_.fit(resume, on_step);
  }
  nlohmann::json test_metrics() override { return {{"test_mse", task_.mse(make_split(config_.samples, 3))}}; }
  std::vector<std::optional<HeadDiagnostics>> test_diagnostics() override { return {}; }
  std::vector<std::optional<HeadDiagnostics>> attention_diagnostics() override { return {}; }
  std::string describe_data() const override { return std::to_string(config_.samples) + " samples per split"; }
  int64_t epoch() const override { return engine_.epoch(); }
  int64_t step() const override { return engine_.step(); }
  double train_seconds() const override { return engine_.train_seconds(); }
  training::Engine& engine() { return engine_; }

 private:
  ToyConfig config_;
  ToyTask task_;
  training::Engine engine_;
};

class ToyKind : public TaskKind {
 public:
  std::string name() const override { return "toy"; }
  nlohmann::json defaults() const override { return to_json(ToyConfig{}); }
  nlohmann::json resolve(const nlohmann::json& c) const override { return to_json(toy_from_json(c)); }
  std::unique_ptr<TaskRun> start(const nlohmann::json& c, const training::DataParallel&) const override {
    return std::make_unique<ToyRun>(toy_from_json(c));
  }
  std::unique_ptr<TaskRun> load(const std::string& checkpoint) const override {
    auto run = std::make_unique<ToyRun>(toy_from_json(training::run_config_of(checkpoint)));
    run->engine().load_checkpoint(checkpoint);
    return run;
  }
  MetricColumn headline() const override { return {"test_mse", 5}; }
  std::string legend() const override { return "test mean squared error"; }
  std::string describe_scores(const nlohmann::json& m) const override { return describe_headline(m); }
  std::string describe_headline(const nlohmann::json& m) const override {
    return "test mse " + std::to_string(m.value("test_mse", NAN));
  }
  std::string describe_epoch(const nlohmann::json& e) const override {
    return "val mse " + std::to_string(e.value("val_loss", NAN));
  }
  StepSize step_size(const nlohmann::json& c) const override { return {c.at("batch_size").get<int64_t>(), "samples"}; }
};

void register_toy() {
  static std::once_flag once;
  std::call_once(once, [] { register_task_kind(std::make_shared<ToyKind>()); });
}

TEST(TaskKinds, AToyTaskRunsThroughTheOneStack) {
  register_toy();
  EXPECT_NE(testing::error_message([] { register_task_kind(std::make_shared<ToyKind>()); })
                .find("task kind 'toy' is registered twice"),
            std::string::npos);
  testing::TempDir dir("quest_task_kind_test");
  const nlohmann::json base = {{"task", "toy"}, {"epochs", 3}, {"batch_size", 16}, {"lr", 0.3}, {"log_every", 4}};
  const auto plan = runs::plan_runs(base, {"standard", "quest"}, {0, 1}, dir.str());
  ASSERT_EQ(plan.size(), 4u);
  EXPECT_EQ(plan[3].label(), "quest seed 1");
  EXPECT_EQ(plan[3].config["model"]["attention"], "quest");
  EXPECT_EQ(plan[3].config["seed"], 1u);
  EXPECT_EQ(plan[3].epochs, 3);

  auto executor = runs::in_process_executor();
  const runs::CompareResult first = runs::compare(plan, false, *executor);
  ASSERT_TRUE(first.failed.empty()) << first.failed[0];
  ASSERT_EQ(first.runs.size(), 4u);
  const Split test = make_split(256, 3);
  const double predict_zero = test.y.pow(2).mean().item<double>();
  for (const auto& r : first.runs) {
    EXPECT_EQ(r.outcome.status, runs::RunStatus::ok);
    EXPECT_LT(r.metrics["test_mse"].get<double>(), 0.1 * predict_zero);  // it learned w
    EXPECT_EQ(r.spec.dir().checkpoint_epoch(), 3);
    const auto result = nlohmann::json::parse(std::ifstream(r.spec.dir().result()));
    EXPECT_EQ(result["test_mse"], r.metrics["test_mse"]);
    EXPECT_EQ(result["config"]["task"], "toy");
  }
  // Seeds differ: different initialisations and data orders.
  EXPECT_NE(first.runs[0].metrics["test_mse"], first.runs[1].metrics["test_mse"]);

  const auto table = runs::summarize(first);
  const auto rows = table.json();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1]["kind"], "quest");
  EXPECT_EQ(rows[1]["seeds"], 2);
  EXPECT_NEAR(rows[1]["test_mse"]["mean"].get<double>(),
              (first.runs[2].metrics["test_mse"].get<double>() + first.runs[3].metrics["test_mse"].get<double>()) / 2,
              1e-12);
  EXPECT_NE(table.csv().find("kind,test_mse_mean,test_mse_std,seeds"), std::string::npos) << table.csv();

  // Resumed: every run is finished, so nothing trains and each is scored from its checkpoint (its
  // result.json after a step check: one is made stale, so it is scored afresh, to the same number).
  nlohmann::json stale = nlohmann::json::parse(std::ifstream(plan[0].dir().result()));
  stale["step"] = -1;
  stale["test_mse"] = 99.0;
  std::ofstream(plan[0].dir().result()) << stale.dump();
  std::vector<std::string> notes;
  const runs::CompareResult again =
      runs::compare(plan, true, *executor, {}, [&](const std::string& n) { notes.push_back(n); });
  EXPECT_EQ(notes[0], "standard seed 0: finished, evaluating only");
  EXPECT_EQ(notes[4], "0 runs to train, one after another in this process");
  ASSERT_EQ(again.runs.size(), 4u);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_NEAR(again.runs[i].metrics["test_mse"].get<double>(), first.runs[i].metrics["test_mse"].get<double>(),
                1e-12)
        << i;
}

TEST(TaskKinds, ConfigsNameTheirTask) {
  EXPECT_EQ(task_name_of(nlohmann::json::object()), "vit");  // format 1: no "task", no corpus
  EXPECT_EQ(task_name_of({{"corpus", "/x"}}), "lm");
  EXPECT_EQ(task_name_of({{"task", "lm"}}), "lm");
  EXPECT_EQ(task_kind_of(nlohmann::json::object()).name(), "vit");
  EXPECT_EQ(task_kind("vit").defaults()["task"], "vit");
  EXPECT_EQ(task_kind("lm").defaults()["task"], "lm");
  const std::string unknown = testing::error_message([] { task_kind("rnn"); });
  EXPECT_NE(unknown.find("unknown task 'rnn' ("), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("lm, "), std::string::npos) << unknown;
  const std::string wrong = testing::error_message([] { task_kind("vit").resolve({{"task", "lm"}, {"corpus", "/x"}}); });
  EXPECT_NE(wrong.find("this config is for task \"lm\", not \"vit\""), std::string::npos) << wrong;
  // The ViT config carries its data: a run directory describes itself.
  const nlohmann::json vit = task_kind("vit").resolve({{"data", {{"dir", "/images"}}}});
  EXPECT_EQ(vit["data"]["dir"], "/images");
  EXPECT_EQ(vit["data"]["val_fraction"], 0.1);
  const std::string bad = testing::error_message([] { task_kind("vit").resolve({{"data", {{"val_fraction", 1.5}}}}); });
  EXPECT_NE(bad.find("data.val_fraction must be in [0, 1)"), std::string::npos) << bad;
  EXPECT_THROW(runs::plan_runs({{"task", "rnn"}}, {"quest"}, {0}, "/tmp/x"), c10::Error);
}

// The retrieval toy (the spurious-pattern experiment's model) as a task: a comparison of it, and a
// run killed after its first epoch resumes to the uninterrupted run's scores.
TEST(TaskKinds, RetrievalIsATaskOfItsOwn) {
  testing::TempDir dir("quest_task_kind_test");
  const nlohmann::json base = {{"task", "retrieval"}, {"epochs", 2}, {"steps_per_epoch", 15}, {"batch_size", 16},
                               {"eval_size", 200},    {"lr", 3e-3},  {"log_every", 5}};
  const auto plan = runs::plan_runs(base, {"standard", "quest"}, {0}, (dir.path / "cmp").string());
  auto executor = runs::in_process_executor();
  const runs::CompareResult result = runs::compare(plan, false, *executor);
  ASSERT_TRUE(result.failed.empty()) << result.failed[0];
  ASSERT_EQ(result.runs.size(), 2u);
  for (const auto& r : result.runs)
    for (const char* key : {"test_accuracy_biased", "test_accuracy_unbiased", "test_accuracy_conflicting", "success"}) {
      const double v = r.metrics.at(key).get<double>();
      EXPECT_TRUE(v >= 0 && v <= 1) << key << " " << v;
    }
  // quest's keys are unit vectors: its logits are bounded by the query norm (one head).
  const runs::FinalDiagnostics& q = result.runs[1].diagnostics;
  EXPECT_GT(q.q_norm_max, 0);
  EXPECT_LE(q.logit_abs_max, q.q_norm_max * (1 + 1e-5));
  const auto rows = runs::summarize(result).json();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_TRUE(rows[0].contains("test_accuracy_conflicting") && rows[0].contains("success")) << rows[0].dump();

  // Fresh samples come from each epoch's generator, so a resumed run replays the uninterrupted one.
  nlohmann::json one = plan[1].config;
  one["epochs"] = 1;
  one["run_dir"] = (dir.path / "resumed").string();
  runs::train_run(one, false);
  nlohmann::json two = one;
  two["epochs"] = 2;
  const runs::TrainReport resumed = runs::train_run(two, true);
  EXPECT_EQ(resumed.step, 30);
  EXPECT_EQ(resumed.metrics["test_accuracy_unbiased"], result.runs[1].metrics["test_accuracy_unbiased"]);
  EXPECT_EQ(resumed.metrics["test_accuracy_conflicting"], result.runs[1].metrics["test_accuracy_conflicting"]);
  const std::string bad = testing::error_message([] { task_kind("retrieval").resolve({{"data", {{"tokens", 1}}}}); });
  EXPECT_FALSE(bad.empty());
}

}  // namespace
}  // namespace quest::tasks
