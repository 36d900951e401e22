// Corruptions (shape, range, determinism, severity ordering) on real Fashion-MNIST test images, and
// attacks (budget, range, eps = 0, effect) on a small model trained here.
#include <gtest/gtest.h>

#include "error_message.h"
#include "quest/lab/data/idx.h"
#include "quest/lab/robustness/attacks.h"
#include "quest/lab/robustness/corruptions.h"
#include "quest/lab/tasks/vit.h"

namespace quest::robustness {
namespace {

torch::Tensor test_images(int64_t n) {
  const auto set = data::read_mnist_split(data::kFashionMnistDir, "t10k");
  return set.images.narrow(0, 0, n).unsqueeze(1).to(torch::kFloat) / 255.0;
}

TEST(Corruptions, EveryCorruptionAndSeverityKeepsShapeRangeAndIsDeterministic) {
  const torch::Tensor x = test_images(16);
  EXPECT_GE(corruption_names().size(), 15u);
  for (const auto& name : corruption_names())
    for (int s = 1; s <= 5; ++s) {
      SCOPED_TRACE(name + " severity " + std::to_string(s));
      const torch::Tensor a = corrupt(x, name, s, 7), b = corrupt(x, name, s, 7);
      EXPECT_EQ(a.sizes(), x.sizes());
      EXPECT_EQ(a.scalar_type(), torch::kFloat);
      EXPECT_GE(a.min().item<float>(), 0.0f);
      EXPECT_LE(a.max().item<float>(), 1.0f);
      EXPECT_TRUE(torch::equal(a, b));
      EXPECT_FALSE(torch::equal(a, x)) << "the corruption changed nothing";
    }
}

TEST(Corruptions, HigherSeverityMovesFurtherFromTheCleanImage) {
  const torch::Tensor x = test_images(64);
  for (const auto& name : corruption_names()) {
    std::vector<double> distance;
    for (int s = 1; s <= 5; ++s) distance.push_back((corrupt(x, name, s, 3) - x).norm().item<double>());
    std::string trace = name + ":";
    for (double d : distance) trace += " " + std::to_string(d);
    SCOPED_TRACE(trace);
    for (int s = 1; s < 5; ++s) EXPECT_GT(distance[s], distance[s - 1]);
  }
}

TEST(Corruptions, BadInputIsNamed) {
  const torch::Tensor x = test_images(2);
  EXPECT_NE(testing::error_message([&] { corrupt(x, "rain", 1, 0); }).find("unknown corruption 'rain'"), std::string::npos);
  EXPECT_NE(testing::error_message([&] { corrupt(x, "fog", 6, 0); }).find("severity must be 1..5"), std::string::npos);
  EXPECT_NE(testing::error_message([&] { corrupt(x * 2, "fog", 1, 0); }).find("[0, 1]"), std::string::npos);
  EXPECT_NE(testing::error_message([&] { corrupt(x.squeeze(1), "fog", 1, 0); }).find("(B, 1, H, W)"), std::string::npos);
}

// A small ViT trained for a few hundred steps on 2000 Fashion-MNIST images (~70 % test accuracy).
struct TrainedModel {
  TrainedModel() {
    training::VitConfig c;
    c.model.dim(32).depth(1).heads(2).patch_size(7);
    c.epochs = 4;
    c.batch_size = 64;
    c.lr = 3e-3;
    c.augment = false;
    splits = training::load_mnist_splits(data::kFashionMnistDir, 0.0, 0, 2000);
    trainer = std::make_unique<training::VitTrainer>(c);
    trainer->fit(splits.train, splits.validation, false);
    trainer->model()->eval();
    models::Vit net = trainer->model();
    const double mean = splits.mean, std = splits.std;
    classify = [net, mean, std](const torch::Tensor& x) mutable { return net->forward((x - mean) / std); };
    images = test_images(200);
    labels = data::read_mnist_split(data::kFashionMnistDir, "t10k").labels.narrow(0, 0, 200);
  }
  double accuracy(const torch::Tensor& x) {
    torch::NoGradGuard no_grad;
    return classify(x).argmax(1).eq(labels).to(torch::kDouble).mean().item<double>();
  }
  training::MnistSplits splits;
  std::unique_ptr<training::VitTrainer> trainer;
  Classifier classify;
  torch::Tensor images, labels;
};

TrainedModel& trained() {
  static TrainedModel model;
  return model;
}

TEST(Attacks, StayInsideTheirBallAndInTheUnitRange) {
  auto& m = trained();
  for (AttackKind kind : {AttackKind::fgsm, AttackKind::pgd_linf, AttackKind::pgd_l2})
    for (double eps : {2.0 / 255, 0.1, 0.5}) {
      SCOPED_TRACE(to_string(kind) + " eps " + std::to_string(eps));
      AttackOptions o;
      o.kind = kind;
      o.eps = eps;
      o.steps = 3;
      auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
      const torch::Tensor adv = attack(m.classify, m.images, m.labels, o, gen);
      EXPECT_EQ(adv.sizes(), m.images.sizes());
      EXPECT_LE(max_perturbation(kind, adv, m.images), eps * (1 + 1e-5) + 1e-6);
      EXPECT_GT(max_perturbation(kind, adv, m.images), eps * 0.5) << "the attack hardly moved";
      EXPECT_GE(adv.min().item<float>(), 0.0f);
      EXPECT_LE(adv.max().item<float>(), 1.0f);
    }
}

TEST(Attacks, EpsZeroIsTheCleanImageAndPgdLowersAccuracy) {
  auto& m = trained();
  const double clean = m.accuracy(m.images);
  EXPECT_GT(clean, 0.5);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
  AttackOptions o;
  o.eps = 0;
  EXPECT_TRUE(torch::equal(attack(m.classify, m.images, m.labels, o, gen), m.images));
  o.eps = 0.1;
  o.kind = AttackKind::pgd_linf;
  const double pgd = m.accuracy(attack(m.classify, m.images, m.labels, o, gen));
  o.kind = AttackKind::fgsm;
  const double fgsm = m.accuracy(attack(m.classify, m.images, m.labels, o, gen));
  o.kind = AttackKind::pgd_l2;
  o.eps = 2.0;
  const double l2 = m.accuracy(attack(m.classify, m.images, m.labels, o, gen));
  EXPECT_LT(pgd, clean - 0.2);
  EXPECT_LT(fgsm, clean - 0.1);
  EXPECT_LT(l2, clean - 0.2);
  EXPECT_LE(pgd, fgsm + 0.02);  // ten projected steps do at least as well as one
}

TEST(Attacks, BadOptionsAreNamed) {
  auto& m = trained();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  AttackOptions o;
  o.eps = -1;
  EXPECT_NE(testing::error_message([&] { attack(m.classify, m.images, m.labels, o, gen); }).find("eps must be"),
            std::string::npos);
  o.eps = 0.1;
  o.steps = 0;
  EXPECT_NE(testing::error_message([&] { attack(m.classify, m.images, m.labels, o, gen); }).find("steps must be"),
            std::string::npos);
  EXPECT_FALSE(parse_attack("cw").has_value());
  EXPECT_EQ(parse_attack("pgd_l2"), AttackKind::pgd_l2);
}

}  // namespace
}  // namespace quest::robustness
