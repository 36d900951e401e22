// ViT and trainer on tiny synthetic data: shapes, learning, checkpoint round trip, exact resume
// after a kill, divergence handling.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>
#include <tuple>

#include "error_message.h"
#include "fixtures.h"
#include "quest/lab/tasks/vit.h"

namespace quest::training {
namespace {

namespace fs = std::filesystem;

Dataset synthetic(int64_t n, uint64_t seed) { return testing::synthetic_images(n, seed); }

// The one-pass augmentation against its definition in torch ops: zero-pad, crop at the drawn
// offsets, mirror where drawn; several channels, float and double, a non-contiguous input.
TEST(Augmentation, IsPadCropFlip) {
  for (auto dtype : {torch::kFloat, torch::kDouble})
    for (int64_t pad : {0, 2, 5}) {
      torch::manual_seed(pad);
      const auto images = torch::randn({9, 3, 7, 6}, dtype).transpose(2, 3).contiguous().transpose(2, 3);
      auto gen = at::make_generator<at::CPUGeneratorImpl>(pad + 1);
      const AugmentDraw d = draw_augmentation(9, pad, true, gen);
      std::vector<torch::Tensor> expected;
      for (int64_t i = 0; i < 9; ++i) {
        torch::Tensor x = images[i];
        if (pad > 0)
          x = torch::constant_pad_nd(x, {pad, pad, pad, pad}, 0.0)
                  .narrow(1, d.dy[i].item<int64_t>(), 7).narrow(2, d.dx[i].item<int64_t>(), 6);
        if (d.flip[i].item<bool>()) x = x.flip({2});
        expected.push_back(x);
      }
      const auto got = apply_augmentation(images, d, pad);
      EXPECT_TRUE(torch::equal(got, torch::stack(expected))) << "pad " << pad << " " << dtype;
      EXPECT_GT(d.flip.sum().item<int64_t>(), 0);
    }
}

VitConfig tiny_config(const std::string& run_dir, Kind kind = Kind::quest) {
  VitConfig c;
  c.model.image_size(8).patch_size(4).num_classes(2).dim(16).depth(2).heads(2).attention(kind);
  c.epochs = 3;
  c.batch_size = 32;
  c.lr = 3e-3;
  c.warmup_epochs = 0.5;
  c.log_every = 2;
  c.crop_padding = 1;
  c.run_dir = run_dir;
  return c;
}

struct TempDir : testing::TempDir {
  TempDir() : testing::TempDir("quest_train_test") {}
};

// metrics.jsonl as (type, epoch, step, loss) per line: what a resumed run must log exactly once.
std::vector<std::tuple<std::string, int64_t, int64_t, double>> metric_lines(const fs::path& run_dir) {
  std::vector<std::tuple<std::string, int64_t, int64_t, double>> lines;
  std::ifstream in(runs::RunDir(run_dir).metrics());
  for (std::string text; std::getline(in, text);) {
    const auto j = nlohmann::json::parse(text);
    lines.emplace_back(j["type"], j["epoch"], j["step"], j.contains("loss") ? j["loss"] : j["train_loss"]);
  }
  return lines;
}

bool same_weights(models::Vit& a, models::Vit& b) {
  const auto pa = a->named_parameters(), pb = b->named_parameters();
  for (const auto& p : pa)
    if (!torch::equal(p.value(), pb[p.key()])) return false;
  return true;
}

TEST(Vit, ShapesForEveryKindAndBadInput) {
  for (Kind kind : all_kinds()) {
    models::Vit vit(models::VitOptions().image_size(8).patch_size(4).dim(16).depth(1).heads(2).attention(kind));
    EXPECT_EQ(vit->forward(torch::randn({3, 1, 8, 8})).sizes(), (std::vector<int64_t>{3, 10}));
  }
  models::Vit vit(models::VitOptions().image_size(8).patch_size(4).dim(16).depth(1).heads(2));
  EXPECT_NE(testing::error_message([&] { vit->forward(torch::randn({3, 1, 9, 9})); })
                .find("expected images of shape"),
            std::string::npos);
  EXPECT_THROW(models::Vit(models::VitOptions().image_size(10).patch_size(4)), c10::Error);
}

TEST(VitTrainer, WeightDecayGoesToMatricesOnly) {
  // Every ViT parameter, every kind and stem: decay exactly for linear and convolution weights.
  for (Kind kind : all_kinds())
    for (const char* stem : {"patch", "conv_bn"}) {
      models::Vit vit(models::VitOptions().image_size(8).patch_size(4).dim(16).depth(2).heads(2).attention(kind).stem(models::parse_stem(stem)));
      int decayed = 0;
      for (const auto& p : vit->named_parameters()) {
        const std::string& name = p.key();
        const bool layer_weight = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 &&
                                  name.find("norm") == std::string::npos;
        EXPECT_EQ(applies_weight_decay(name, p.value()), layer_weight) << name;
        decayed += layer_weight;
      }
      EXPECT_GE(decayed, 2 * 4 + 2) << to_string(kind);  // qkv, out_proj, fc1, fc2 per block; stem; head
    }
  for (const char* name : {"pos_embed", "cls_token", "query_token"})
    EXPECT_FALSE(applies_weight_decay(name, torch::zeros({1, 4, 4}))) << name;
  EXPECT_TRUE(applies_weight_decay("encoder.0.weight", torch::zeros({4, 4})));
  EXPECT_FALSE(applies_weight_decay("blocks.0.attn.head_scale", torch::zeros({4})));
}

TEST(VitTrainer, LearnsAndWritesMetrics) {
  TempDir dir;
  VitTrainer trainer(tiny_config(dir.str()));
  const Dataset train = synthetic(256, 1), val = synthetic(128, 2);
  const double before = trainer.evaluate(val).loss;
  trainer.fit(train, val, false);
  const EvalResult after = trainer.evaluate(val);
  EXPECT_LT(after.loss, 0.8 * before);
  EXPECT_GT(after.accuracy, 0.8);
  const runs::RunDir run(dir.path);
  EXPECT_TRUE(fs::exists(run.metrics()));
  EXPECT_TRUE(fs::exists(run.config()));
  EXPECT_TRUE(fs::exists(run.checkpoint()));
  EXPECT_FALSE(fs::exists(run.checkpoint().string() + ".tmp"));  // the atomic write's temporary is gone
}

TEST(VitTrainer, CheckpointRoundTrip) {
  // Every stem: the convolutional ones hold stateless children (ReLU) that LibTorch's archive
  // leaves out, which loading once took for a foreign checkpoint.
  for (const char* stem : {"patch", "conv", "conv_bn"}) {
    SCOPED_TRACE(stem);
    TempDir dir;
    auto config = tiny_config(dir.str());
    config.model.stem(models::parse_stem(stem));
    config.epochs = 1;
    VitTrainer a(config);
    a.fit(synthetic(64, 1), synthetic(32, 2), false);
    config.seed = 99;  // a different initialisation, replaced by the checkpoint
    VitTrainer b(config);
    b.load_checkpoint(a.checkpoint_path());
    EXPECT_TRUE(same_weights(a.model(), b.model()));
    EXPECT_EQ(b.epoch(), 1);
    EXPECT_EQ(b.step(), a.step());
    EXPECT_GT(a.train_seconds(), 0.0);
    EXPECT_EQ(b.train_seconds(), a.train_seconds());
  }
}

TEST(VitTrainer, KilledRunResumesToTheSameWeights) {
  const Dataset train = synthetic(96, 1), val = synthetic(32, 2);
  TempDir full_dir, killed_dir;
  auto config = tiny_config(full_dir.str());
  config.model.dropout(0.1).drop_path(0.1).attention_dropout(0.1);  // randomness must replay too
  VitTrainer full(config);
  full.fit(train, val, false);

  config.run_dir = killed_dir.str();
  {
    VitTrainer killed(config);
    // "Kill" the run in the middle of its second epoch.
    EXPECT_THROW(killed.fit(train, val, false,
                            [](const nlohmann::json& line) {
                              if (line["epoch"] == 1 && line["step"] == 4) throw std::runtime_error("killed");
                            }),
                 std::runtime_error);
  }
  VitTrainer resumed(config);
  resumed.fit(train, val, true);
  EXPECT_EQ(resumed.step(), full.step());
  EXPECT_TRUE(same_weights(full.model(), resumed.model()));
  // The killed epoch's step lines are logged once, not once per attempt.
  const auto lines = metric_lines(full_dir.path);
  ASSERT_EQ(lines.size(), 5u + 3u);  // steps 0, 2, 4, 6, 8 of 9; an epoch line per epoch
  EXPECT_EQ(metric_lines(killed_dir.path), lines);
  // A fresh start in a used run directory starts the log afresh.
  config.epochs = 1;
  VitTrainer restarted(config);
  restarted.fit(train, val, false);
  EXPECT_EQ(metric_lines(killed_dir.path).size(), 3u);
}

// The ViT with every random layer on: two runs in two threads of one process end with the weights
// each ends with alone (run-owned generators; nothing shared but the thread pools).
TEST(VitTrainer, RunsInThreadsEqualRunsOneAfterAnother) {
  const Dataset train = synthetic(96, 1), val = synthetic(32, 2);
  auto config = [](uint64_t seed) {
    auto c = tiny_config("", seed % 2 ? Kind::standard : Kind::quest);
    c.epochs = 2;
    c.seed = seed;
    c.model.dropout(0.1).drop_path(0.1).attention_dropout(0.1);
    return c;
  };
  VitTrainer alone0(config(0)), alone1(config(1));
  alone0.fit(train, val, false);
  alone1.fit(train, val, false);
  VitTrainer side0(config(0)), side1(config(1));
  std::thread t0([&] { side0.fit(train, val, false); }), t1([&] { side1.fit(train, val, false); });
  t0.join();
  t1.join();
  EXPECT_TRUE(same_weights(side0.model(), alone0.model()));
  EXPECT_TRUE(same_weights(side1.model(), alone1.model()));
}

TEST(VitTrainer, DivergenceStopsCleanlyAndKeepsTheLastCheckpoint) {
  TempDir dir;
  auto config = tiny_config(dir.str());
  config.epochs = 1;
  VitTrainer good(config);
  good.fit(synthetic(64, 1), synthetic(32, 2), false);
  config.epochs = 3;
  config.lr = 1e30;  // injected: the weights blow up within a few steps
  config.clip_grad_norm = 0;
  VitTrainer bad(config);
  std::string message;
  try {
    bad.fit(synthetic(64, 1), synthetic(32, 2), true);
  } catch (const DivergenceError& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("non-finite"), std::string::npos) << message;
  EXPECT_NE(message.find("at step"), std::string::npos) << message;
  VitTrainer check(config);
  check.load_checkpoint(good.checkpoint_path());  // still the good, whole checkpoint
  EXPECT_TRUE(same_weights(good.model(), check.model()));
}

// A NaN activation inside attention on the default (fused) path: one query feature of layer 1,
// head 0 becomes NaN mid-run. The fused kernel propagates it, so the very next step stops with
// the layer and head named, the diagnostics of that step in the metrics, and the last epoch's
// checkpoint intact. (Were NaN queries hidden, training would go on until an epoch-end check.)
TEST(VitTrainer, NaNActivationOnTheFusedPathStopsAtTheNextStepWithDiagnostics) {
  TempDir dir;
  auto config = tiny_config(dir.str());
  config.model.backend(Backend::fused);
  config.epochs = 1;
  VitTrainer good(config);
  good.fit(synthetic(64, 1), synthetic(32, 2), false);
  config.epochs = 2;
  VitTrainer bad(config);
  const int64_t inject_after = 3;  // steps 0, 1 in epoch 0 (64 / 32), so this is in epoch 1
  std::string message;
  try {
    bad.fit(synthetic(64, 1), synthetic(32, 2), false, [&](const nlohmann::json& line) {
      if (line["step"] != inject_after - 1) return;
      torch::NoGradGuard no_grad;  // q of head 0 reads row 0 of layer 1's qkv projection
      bad.model()->blocks[1]->as<models::BlockImpl>()->attn->qkv->weight[0][0] = NAN;
    });
  } catch (const DivergenceError& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("non-finite loss"), std::string::npos) << message;
  EXPECT_NE(message.find("at step " + std::to_string(inject_after) + " (epoch 1)"), std::string::npos) << message;
  EXPECT_NE(message.find("first non-finite attention: layer 1 head 0"), std::string::npos) << message;
  const auto lines = runs::RunDir(dir.str()).read_metrics("diverged");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["step"], inject_after);
  EXPECT_TRUE(lines[0]["attention"][1]["logit_abs_max"][0].is_null());  // NaN in JSON
  EXPECT_TRUE(lines[0]["attention"][0]["logit_abs_max"][0].is_number());
  VitTrainer check(config);
  check.load_checkpoint(bad.checkpoint_path());  // epoch 0's whole checkpoint, as the 1-epoch run
  EXPECT_TRUE(same_weights(good.model(), check.model()));
}

TEST(VitTrainer, ConfigJsonRoundTrip) {
  auto c = tiny_config("runs/x", Kind::qknorm);
  c.model.stem(models::Stem::conv);
  const auto back = vit_config_from_json(to_json(c));
  EXPECT_EQ(to_json(back), to_json(c));
}

TEST(VitTrainer, PartialConfigKeepsDefaultsAndUnknownKeysAreErrors) {
  const auto c = vit_config_from_json(nlohmann::json::parse(R"({"epochs": 7, "model": {"dim": 32}})"));
  EXPECT_EQ(c.epochs, 7);
  EXPECT_EQ(c.model.dim(), 32);
  EXPECT_EQ(c.model.depth(), VitConfig{}.model.depth());
  EXPECT_EQ(c.lr, VitConfig{}.lr);
  EXPECT_NE(testing::error_message([] { vit_config_from_json(nlohmann::json::parse(R"({"epoch": 7})")); })
                .find("unknown config key 'epoch'"),
            std::string::npos);
  EXPECT_NE(testing::error_message([] { vit_config_from_json(nlohmann::json::parse(R"({"model": {"dims": 7}})")); })
                .find("unknown config key 'model.dims'"),
            std::string::npos);
  // A value of the wrong type names the key and the type expected.
  for (auto [text, expected] : {std::pair{R"({"lr": "fast"})", "config key 'lr' must be a number, got \"fast\""},
                                {R"({"epochs": 2.5})", "config key 'epochs' must be an integer, got 2.5"},
                                {R"({"seed": -1})", "config key 'seed' must be a non-negative integer, got -1"},
                                {R"({"augment": 1})", "config key 'augment' must be true or false, got 1"},
                                {R"({"model": {"stem": 3}})", "config key 'model.stem' must be a string, got 3"},
                                {R"({"autocast": "fp16"})", "config key 'autocast' must be \"off\" or \"bf16\", got \"fp16\""}})
    EXPECT_NE(testing::error_message([&] { vit_config_from_json(nlohmann::json::parse(text)); }).find(expected),
              std::string::npos)
        << text;
  EXPECT_EQ(vit_config_from_json(nlohmann::json::parse(R"({"lr": 1})")).lr, 1.0);  // an integer is a number
  EXPECT_EQ(VitConfig{}.autocast, "off");
  EXPECT_EQ(vit_config_from_json(nlohmann::json::parse(R"({"autocast": "bf16"})")).autocast, "bf16");
}

TEST(Vit, ConvStemKeepsTheTokenGrid) {
  models::VitOptions o;
  o.image_size(16).patch_size(4).dim(16).depth(1).heads(2).stem(models::Stem::conv);
  models::Vit vit(o);
  EXPECT_EQ(vit->forward(torch::randn({3, 1, 16, 16})).sizes(), (std::vector<int64_t>{3, 10}));
  EXPECT_EQ(vit->pos_embed.size(1), 4 * 4 + 1);
  models::Vit bn(o.stem(models::Stem::conv_bn));
  EXPECT_EQ(bn->forward(torch::randn({3, 1, 16, 16})).sizes(), (std::vector<int64_t>{3, 10}));
  EXPECT_TRUE(bn->named_buffers().contains("patch_embed.norm1.running_mean"));
  EXPECT_FALSE(applies_weight_decay("patch_embed.norm1.weight", bn->named_parameters()["patch_embed.norm1.weight"]));
  EXPECT_NE(testing::error_message([] { models::Vit(models::VitOptions().patch_size(7).stem(models::Stem::conv)); })
                .find("power-of-two patch_size"),
            std::string::npos);
  EXPECT_NE(testing::error_message([] { models::parse_stem("convolution"); })
                .find("unknown stem 'convolution' (patch, conv, conv_bn)"),
            std::string::npos);
}

}  // namespace
}  // namespace quest::training
