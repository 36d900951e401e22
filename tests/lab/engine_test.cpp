// The training engine over a task that is not the ViT: a small classifier on a fixed dataset,
// with dropout, so that every source of randomness the engine owns is exercised.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "error_message.h"
#include "quest/lab/training/engine.h"
#include "quest/torch/nn/dropout.h"
#include "quest/torch/nn/init.h"
#include "quest/torch/nn/multihead_attention.h"
#include "quest/torch/random.h"

namespace quest::training {
namespace {

namespace fs = std::filesystem;

class ToyTask : public Task {
 public:
  explicit ToyTask(double dropout = 0.2, int64_t steps = 8, int64_t hidden = 16) : steps_(steps), dropout_(dropout) {
    auto gen = quest::make_generator(123);
    x_ = torch::randn({64, 6}, gen);
    y_ = (x_.narrow(1, 0, 1).squeeze(1) > 0).to(torch::kLong);
    net_ = torch::nn::Sequential(torch::nn::Linear(6, hidden), torch::nn::ReLU(), nn::Dropout(dropout_),
                                 torch::nn::Linear(hidden, 2));
  }
  torch::nn::Module& model() override { return *net_; }
  void initialize(at::Generator generator) override { nn::reset_parameters(*net_, generator); }
  int64_t steps_per_epoch() const override { return steps_; }
  void begin_epoch(int64_t, at::Generator data) override { order_ = torch::randperm(64, data); }
  StepOutput forward_step(int64_t b) override {
    const auto idx = order_.slice(0, (b * 8) % 64, (b * 8) % 64 + 8);
    const auto logits = net_->forward(x_.index_select(0, idx)) * scale + offset;
    const auto labels = y_.index_select(0, idx);
    StepOutput out{torch::cross_entropy_loss(logits, labels), 8, logits.argmax(1).eq(labels).sum().item<int64_t>(), {}};
    if (report_log_z) out.log_partition = logits.logsumexp(1);
    return out;
  }
  std::optional<EvalResult> validate() override {
    torch::NoGradGuard no_grad;
    net_->eval();
    const auto logits = net_->forward(x_);
    return EvalResult{torch::cross_entropy_loss(logits, y_).item<double>(),
                      logits.argmax(1).eq(y_).to(torch::kDouble).mean().item<double>()};
  }
  torch::Tensor flat() const {
    std::vector<torch::Tensor> all;
    for (const auto& p : net_->parameters()) all.push_back(p.detach().flatten());
    return torch::cat(all);
  }
  double scale = 1;  // a huge scale makes the loss overflow
  bool report_log_z = false;
  double offset = 0;  // shifts every logit: the loss ignores it, log Z does not

 private:
  int64_t steps_;
  double dropout_;
  torch::Tensor x_, y_, order_;
  torch::nn::Sequential net_{nullptr};
};

EngineConfig config(uint64_t seed = 0) {
  EngineConfig c;
  c.epochs = 3;
  c.lr = 1e-2;
  c.weight_decay = 0.01;
  c.warmup_epochs = 0.5;
  c.seed = seed;
  c.log_every = 4;
  return c;
}

TEST(Engine, LearnsAGenericTask) {
  ToyTask task;
  auto c = config();
  c.epochs = 12;
  c.lr = 3e-2;
  Engine engine(c, task);
  const EvalResult before = *task.validate();
  engine.fit(false);
  const EvalResult after = *task.validate();
  EXPECT_LT(after.loss, 0.6 * before.loss);
  EXPECT_GT(after.accuracy, 0.9);
  EXPECT_EQ(engine.step(), 12 * 8);
  EXPECT_EQ(engine.epoch(), 12);
}

TEST(Engine, SameSeedSameRunDifferentSeedDifferentRun) {
  ToyTask a, b, c;
  Engine(config(1), a).fit(false);
  Engine(config(1), b).fit(false);
  Engine(config(2), c).fit(false);
  EXPECT_TRUE(torch::equal(a.flat(), b.flat()));
  EXPECT_FALSE(torch::equal(a.flat(), c.flat()));
}

TEST(Engine, RunsInThreadsEqualRunsOneAfterAnother) {
  ToyTask alone0, alone1, side0, side1;
  Engine(config(0), alone0).fit(false);
  Engine(config(1), alone1).fit(false);
  // Both constructed and trained at once, in two threads: no shared random stream.
  std::thread t0([&] { Engine(config(0), side0).fit(false); });
  std::thread t1([&] { Engine(config(1), side1).fit(false); });
  t0.join();
  t1.join();
  EXPECT_TRUE(torch::equal(side0.flat(), alone0.flat()));
  EXPECT_TRUE(torch::equal(side1.flat(), alone1.flat()));
}

TEST(Engine, TheGlobalGeneratorIsNeitherUsedNorDisturbed) {
  ToyTask task, other;  // LibTorch's module constructors draw their default init from it
  torch::manual_seed(42);
  const auto expected = torch::rand({4});
  torch::manual_seed(42);
  Engine(config(), task).fit(false);
  EXPECT_TRUE(torch::equal(torch::rand({4}), expected));
  torch::manual_seed(7);  // and a run does not depend on it
  Engine(config(), other).fit(false);
  EXPECT_TRUE(torch::equal(task.flat(), other.flat()));
}

TEST(Engine, ScheduleWarmsUpThenDecaysOrStaysConstant) {
  ToyTask task;
  Engine warm(config(), task);
  EXPECT_NEAR(warm.learning_rate(0), 1e-2 / 4, 1e-12);  // 4 warmup steps
  EXPECT_NEAR(warm.learning_rate(3), 1e-2, 1e-12);
  EXPECT_LT(warm.learning_rate(20), warm.learning_rate(10));
  EXPECT_NEAR(warm.learning_rate(24), 1e-5, 1e-9);
  auto c = config();
  c.schedule = Schedule::constant;
  ToyTask other;
  Engine constant(c, other);
  EXPECT_EQ(constant.learning_rate(0), 1e-2);
  EXPECT_EQ(constant.learning_rate(23), 1e-2);
}

// z-loss: value and gradient of loss + c mean(lse^2) against a hand computation.
TEST(Engine, ZLossAddsItsTermWithItsGradient) {
  const auto logits = torch::tensor({{1.0, 2.0, -1.0}, {0.5, 0.0, 3.0}}, torch::kDouble).requires_grad_();
  const auto labels = torch::tensor({1, 2});
  StepOutput out{torch::cross_entropy_loss(logits, labels), 2, -1, logits.logsumexp(1)};
  const double c = 0.3;
  const auto objective = training_objective(out, c);
  objective.backward();
  double value = out.loss.item<double>(), grad[2][3];
  for (int i = 0; i < 2; ++i) {
    double z = 0;
    for (int j = 0; j < 3; ++j) z += std::exp(logits[i][j].item<double>());
    const double lse = std::log(z);
    value += c * lse * lse / 2;
    for (int j = 0; j < 3; ++j) {  // d/ds_ij: cross-entropy's (p - onehot)/2 + c * 2 lse p / 2
      const double p = std::exp(logits[i][j].item<double>()) / z;
      grad[i][j] = (p - (j == labels[i].item<int64_t>())) / 2 + c * lse * p;
    }
  }
  EXPECT_NEAR(objective.item<double>(), value, 1e-12);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) EXPECT_NEAR(logits.grad()[i][j].item<double>(), grad[i][j], 1e-12);
  EXPECT_TRUE(training_objective(out, 0).is_same(out.loss));  // off: the task's loss itself
  // In training: the logged loss is the task's, log Z is logged, and z-loss pulls it towards 0.
  auto mean_log_z = [](double z_loss) {
    ToyTask task(0.0);
    task.offset = 5;
    task.report_log_z = true;
    auto c = config();
    c.epochs = 6;
    c.lr = 0.1;
    c.z_loss = z_loss;
    Engine engine(c, task);
    double last = NAN;
    engine.fit(false, [&](const nlohmann::json& line) { last = line.at("log_z"); });
    return last;
  };
  EXPECT_LT(std::abs(mean_log_z(1.0)), 0.5 * std::abs(mean_log_z(0.0)));
}

// bf16 autocast: the training forward runs its linears in bfloat16 over float32 parameters, the
// validation forward in float32, the state is restored after every step (nesting balanced, so
// the cache of bfloat16 weight copies was cleared after each step: a stale copy would train on
// the weights before the update), and the toy still learns.
TEST(Engine, AutocastRunsTheTrainingForwardInBfloat16) {
  struct Recording : ToyTask {
    Recording() : ToyTask(0.0) {}
    StepOutput forward_step(int64_t b) override {
      train_dtypes.push_back(model().parameters()[0].scalar_type());
      autocast_on.push_back(at::autocast::is_autocast_enabled(at::kCPU));
      StepOutput out = ToyTask::forward_step(b);
      losses.push_back(out.loss.item<double>());
      return out;
    }
    std::optional<EvalResult> validate() override {
      validate_autocast.push_back(at::autocast::is_autocast_enabled(at::kCPU));
      return ToyTask::validate();
    }
    std::vector<c10::ScalarType> train_dtypes;
    std::vector<bool> autocast_on, validate_autocast;
    std::vector<double> losses;
  };
  // The linear's output dtype under the guard the engine uses, seen from inside a step.
  struct Probe : ToyTask {
    Probe() : ToyTask(0.0) {}
    StepOutput forward_step(int64_t b) override {
      out_dtype = model().as<torch::nn::SequentialImpl>()->ptr(0)->as<torch::nn::LinearImpl>()->forward(
          torch::randn({2, 6})).scalar_type();
      return ToyTask::forward_step(b);
    }
    c10::ScalarType out_dtype = c10::ScalarType::Undefined;
  };
  for (const bool on : {false, true}) {
    auto c = config();
    c.epochs = 6;
    c.lr = 0.05;
    if (on) c.autocast = c10::ScalarType::BFloat16;
    Recording task;
    Engine(c, task).fit(false);
    ASSERT_FALSE(task.losses.empty());
    for (size_t i = 0; i < task.losses.size(); ++i) {
      EXPECT_EQ(task.autocast_on[i], on) << i;
      EXPECT_EQ(task.train_dtypes[i], c10::ScalarType::Float) << "parameters stay float32";
    }
    for (bool v : task.validate_autocast) EXPECT_FALSE(v);
    EXPECT_FALSE(at::autocast::is_autocast_enabled(at::kCPU));
    EXPECT_EQ(at::autocast::increment_nesting(), 1) << "the engine left autocast nested";
    at::autocast::decrement_nesting();
    const double first = (task.losses[0] + task.losses[1]) / 2;
    const double last = (task.losses[task.losses.size() - 1] + task.losses[task.losses.size() - 2]) / 2;
    EXPECT_LT(last, 0.6 * first) << "autocast " << on;
    Probe probe;
    Engine(c, probe).fit(false);
    EXPECT_EQ(probe.out_dtype, on ? c10::ScalarType::BFloat16 : c10::ScalarType::Float);
  }
  EXPECT_EQ(autocast_dtype("off"), std::nullopt);
  EXPECT_EQ(autocast_dtype("bf16"), c10::ScalarType::BFloat16);
  EXPECT_NE(testing::error_message([] { autocast_dtype("fp16"); }).find("'autocast' must be"), std::string::npos);
}

// QK-clip in the engine: a task with a quest::nn::MultiheadAttention, a threshold below its max
// logits: every step reports heads clipped and the trained weights differ from an unclipped run.
TEST(Engine, QkClipRescalesAfterEveryStep) {
  struct AttentionTask : Task {
    AttentionTask() : mha(nn::MultiheadAttentionOptions(8, 2).kind(Kind::standard)), head(8, 2) {
      net->register_module("mha", mha);
      net->register_module("head", head);
      auto gen = quest::make_generator(3);
      x = torch::randn({64, 6, 8}, gen) * 3;
      y = (x.select(1, 0).select(1, 0) > 0).to(torch::kLong);
    }
    torch::nn::Module& model() override { return *net; }
    void initialize(at::Generator g) override { nn::reset_parameters(*net, g); }
    int64_t steps_per_epoch() const override { return 4; }
    void begin_epoch(int64_t, at::Generator) override {}
    void record_diagnostics(bool on) override { mha->set_record_diagnostics(on); }
    StepOutput forward_step(int64_t b) override {
      const auto logits = head(mha(x.slice(0, b * 16, (b + 1) * 16)).mean(1));
      return {torch::cross_entropy_loss(logits, y.slice(0, b * 16, (b + 1) * 16)), 16, -1, {}};
    }
    std::shared_ptr<torch::nn::Module> net = std::make_shared<torch::nn::Module>();
    nn::MultiheadAttention mha;
    torch::nn::Linear head;
    torch::Tensor x, y;
  };
  auto train = [](double tau, std::vector<int64_t>* clipped) {
    AttentionTask task;
    auto c = config();
    c.qk_clip = tau;
    c.log_every = 0;  // QK-clip records diagnostics on every step regardless
    Engine engine(c, task);
    engine.fit(false, [&](const nlohmann::json& line) {
      if (clipped) clipped->push_back(line.value("qk_clipped", int64_t{-1}));
    });
    return task.mha->qkv->weight.clone();
  };
  std::vector<int64_t> clipped, off;
  const auto clipped_weights = train(0.05, &clipped), plain = train(0, &off);
  ASSERT_EQ(clipped.size(), 12u);
  for (int64_t n : clipped) EXPECT_GE(n, 1);
  for (int64_t n : off) EXPECT_EQ(n, -1);
  EXPECT_FALSE(torch::allclose(clipped_weights, plain));
}

TEST(Engine, NonFiniteLossStopsWithTheStep) {
  ToyTask task;
  task.scale = std::numeric_limits<double>::infinity();
  Engine engine(config(), task);
  try {
    engine.fit(false);
    FAIL() << "no divergence";
  } catch (const DivergenceError& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite loss"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("at step 0 (epoch 0)"), std::string::npos) << e.what();
  }
}

TEST(Engine, WritesMetricsAndResumesExactly) {
  const fs::path root = fs::temp_directory_path() / ("quest_engine_test_" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto c = config(3);
  c.run_dir = runs::RunDir(root / "full");
  ToyTask full;
  Engine(c, full).fit(false);
  c.run_dir = runs::RunDir(root / "killed");
  {
    ToyTask killed;
    Engine engine(c, killed);
    EXPECT_THROW(engine.fit(false, [](const nlohmann::json& line) {
      if (line["step"] == 13) throw std::runtime_error("killed");
    }),
                 std::runtime_error);
  }
  ToyTask resumed;
  Engine engine(c, resumed);
  engine.fit(true);
  EXPECT_TRUE(torch::equal(resumed.flat(), full.flat()));
  const auto lines = runs::RunDir(root / "killed").read_metrics();
  EXPECT_EQ(lines.size(), runs::RunDir(root / "full").read_metrics().size());
  const auto segments = runs::RunDir(root / "killed").read_segments();
  ASSERT_EQ(segments.size(), 2u);  // the first segment and the resumed one, each with its machine
  EXPECT_EQ(segments[1]["epoch"], 1);
  EXPECT_EQ(segments[1]["parameters"], 6 * 16 + 16 + 16 * 2 + 2);
  EXPECT_TRUE(segments[1]["simd_target"].is_string());
  EXPECT_GE(segments[1]["threads"].get<int>(), 1);
  EXPECT_EQ(runs::RunDir(root / "full").read_segments().size(), 1u);
  EXPECT_EQ(runs::RunDir(root / "killed").read_metrics("epoch").size(), 3u);
  EXPECT_EQ(runs::RunDir(root / "killed").read_metrics("epoch")[2]["samples_per_second"].is_number(), true);
  fs::remove_all(root);
}

// What a bad checkpoint does: it is named, and nothing is half-loaded or lost.
TEST(Engine, BadCheckpointsAreNamedAndLeaveEverythingAsItWas) {
  const fs::path root = fs::temp_directory_path() / ("quest_engine_ckpt_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  ToyTask trained;
  Engine engine(config(4), trained);
  engine.fit(false);
  const std::string good = (root / "good.pt").string();
  engine.save_checkpoint(good);

  const auto message = testing::error_message;
  ToyTask fresh;
  Engine target(config(5), fresh);
  const torch::Tensor before = fresh.flat();
  // Truncated (a copy cut in half) and garbage: rejected, weights untouched, the step unchanged.
  const std::string cut = (root / "cut.pt").string();
  fs::copy_file(good, cut);
  fs::resize_file(cut, fs::file_size(good) / 2);
  const std::string cut_error = message([&] { target.load_checkpoint(cut); });
  EXPECT_NE(cut_error.find("checkpoint '" + cut + "' cannot be loaded: corrupt or truncated"), std::string::npos)
      << cut_error;
  std::ofstream(root / "garbage.pt") << "not a checkpoint";
  EXPECT_NE(message([&] { target.load_checkpoint((root / "garbage.pt").string()); }).find("garbage.pt"),
            std::string::npos);
  // From another model: the part that fits is not kept either.
  ToyTask wider(0.2, 8, 32);
  Engine other(config(6), wider);
  const std::string foreign = (root / "foreign.pt").string();
  other.save_checkpoint(foreign);
  const std::string foreign_error = message([&] { target.load_checkpoint(foreign); });
  EXPECT_NE(foreign_error.find("'0.weight' has shape [32, 6] there, [16, 6] in this model"), std::string::npos)
      << foreign_error;
  EXPECT_TRUE(torch::equal(fresh.flat(), before));
  EXPECT_EQ(target.step(), 0);
  // The good one still loads.
  target.load_checkpoint(good);
  EXPECT_TRUE(torch::equal(fresh.flat(), trained.flat()));
  EXPECT_EQ(target.step(), engine.step());

  // A write that fails (here: the temp path is taken by a directory) names the file and keeps
  // the previous checkpoint whole.
  const auto good_size = fs::file_size(good);
  fs::create_directories(good + ".tmp");
  const std::string write_error = message([&] { target.save_checkpoint(good); });
  EXPECT_NE(write_error.find("cannot write checkpoint '" + good + ".tmp'"), std::string::npos) << write_error;
  EXPECT_NE(write_error.find("previous checkpoint '" + good + "' is unchanged"), std::string::npos);
  EXPECT_EQ(fs::file_size(good), good_size);
  fs::remove_all(good + ".tmp");
  target.load_checkpoint(good);
  // A full disk: the temp file is /dev/full, where every write fails with ENOSPC.
  fs::create_symlink("/dev/full", good + ".tmp");
  const std::string full_error = message([&] { target.save_checkpoint(good); });
  EXPECT_NE(full_error.find("No space left on device"), std::string::npos) << full_error;
  EXPECT_NE(full_error.find("previous checkpoint '" + good + "' is unchanged"), std::string::npos);
  EXPECT_FALSE(fs::exists(fs::symlink_status(good + ".tmp")));  // the temp file is cleaned up
  EXPECT_EQ(fs::file_size(good), good_size);
  target.load_checkpoint(good);
  fs::remove_all(root);
}

// A checkpoint records its format; one newer than this build reads is refused by name before
// anything is loaded, one without a format (written before it was recorded) still loads.
TEST(Engine, CheckpointsCarryTheirFormatAndANewerOneIsRefused) {
  const fs::path root = fs::temp_directory_path() / ("quest_engine_format_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  ToyTask trained;
  Engine engine(config(4), trained);
  const std::string good = (root / "good.pt").string();
  engine.save_checkpoint(good);
  torch::serialize::InputArchive in;
  runs::load_archive_bytes(runs::read_archive_file(good), good, in);
  torch::Tensor format;
  ASSERT_TRUE(in.try_read("format", format));
  EXPECT_EQ(format.item<int64_t>(), 2);

  torch::serialize::OutputArchive newer, optim;
  trained.model().save(newer);
  newer.write("optimizer", optim);
  newer.write("format", torch::tensor(int64_t{99}));
  newer.write("epoch", torch::tensor(int64_t{1}));
  newer.write("step", torch::tensor(int64_t{8}));
  const std::string path = (root / "newer.pt").string();
  runs::save_archive(path, newer);
  ToyTask fresh;
  Engine target(config(5), fresh);
  const torch::Tensor before = fresh.flat();
  const std::string error = testing::error_message([&] { target.load_checkpoint(path); });
  EXPECT_NE(error.find("checkpoint '" + path + "' cannot be loaded: it has format 99, newer than "
                       "this build reads (up to 2)"),
            std::string::npos)
      << error;
  EXPECT_TRUE(torch::equal(fresh.flat(), before));
  EXPECT_EQ(target.step(), 0);
  fs::remove_all(root);
}

}  // namespace
}  // namespace quest::training
