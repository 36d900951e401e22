// Run-owned randomness: GeneratorScope routes quest's own draws (dropout, drop-path, attention
// dropout seeds) to a generator the caller owns; reset_parameters draws initial weights from one.
#include <gtest/gtest.h>

#include <thread>

#include "quest/torch/attention.h"
#include "quest/torch/nn/dropout.h"
#include "quest/torch/nn/init.h"
#include "quest/torch/nn/multihead_attention.h"
#include "quest/torch/random.h"

namespace quest {
namespace {

TEST(GeneratorScope, RoutesDrawsAndNests) {
  const auto x = torch::ones({64, 32});
  torch::Tensor a, b, c;
  {
    GeneratorScope scope(make_generator(5));
    a = nn::dropout(x, 0.5, true);
    {
      GeneratorScope inner(make_generator(6));
      c = nn::dropout(x, 0.5, true);
    }
    b = nn::dropout(x, 0.5, true);  // the outer generator again, one draw further on
  }
  GeneratorScope again(make_generator(5));
  EXPECT_TRUE(torch::equal(nn::dropout(x, 0.5, true), a));
  EXPECT_TRUE(torch::equal(nn::dropout(x, 0.5, true), b));
  EXPECT_FALSE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, c));
}

TEST(GeneratorScope, WithoutAScopeTorchsGlobalGeneratorDecides) {
  const auto x = torch::ones({64, 32});
  torch::manual_seed(3);
  const auto a = nn::dropout(x, 0.3, true);
  torch::manual_seed(3);
  EXPECT_TRUE(torch::equal(nn::dropout(x, 0.3, true), a));
}

TEST(Dropout, IdentityWhenOffAndUnbiasedWhenOn) {
  const auto x = torch::randn({200, 50});
  EXPECT_TRUE(torch::equal(nn::dropout(x, 0.5, false), x));
  EXPECT_TRUE(torch::equal(nn::dropout(x, 0.0, true), x));
  GeneratorScope scope(make_generator(1));
  const auto y = nn::dropout(torch::ones({200, 50}), 0.25, true);
  const double kept = y.ne(0).to(torch::kDouble).mean().item<double>();
  EXPECT_NEAR(kept, 0.75, 0.02);
  EXPECT_NEAR(y.masked_select(y.ne(0))[0].item<float>(), 1 / 0.75, 1e-6);
  const auto paths = nn::drop_path(torch::ones({400, 3, 5}), 0.5, true);
  // Whole samples are dropped or kept.
  EXPECT_TRUE(torch::equal(paths.amin({1, 2}), paths.amax({1, 2})));
  EXPECT_THROW(nn::dropout(x, 1.0, true), c10::Error);
}

TEST(ResetParameters, ReproducibleFromTheGeneratorAndInLibTorchsRange) {
  torch::nn::Sequential net(torch::nn::Linear(16, 8), torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3)),
                            torch::nn::Embedding(10, 6));
  torch::nn::Sequential other(torch::nn::Linear(16, 8), torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3)),
                              torch::nn::Embedding(10, 6));
  nn::reset_parameters(*net, make_generator(7));
  nn::reset_parameters(*other, make_generator(7));
  for (const auto& p : net->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), other->named_parameters()[p.key()])) << p.key();
  const double linear_bound = 1 / std::sqrt(16.0), conv_bound = 1 / std::sqrt(27.0);
  const auto params = net->named_parameters();
  EXPECT_LE(params["0.weight"].abs().max().item<double>(), linear_bound);
  EXPECT_GT(params["0.weight"].abs().max().item<double>(), 0.8 * linear_bound);
  EXPECT_LE(params["1.bias"].abs().max().item<double>(), conv_bound);
  EXPECT_NEAR(params["2.weight"].std().item<double>(), 1.0, 0.3);
  nn::reset_parameters(*other, make_generator(8));
  EXPECT_FALSE(torch::equal(params["0.weight"], other->named_parameters()["0.weight"]));
}

// Two threads, each with its own scope, draw what each would draw alone: the property that lets
// runs go side by side in one process.
TEST(GeneratorScope, ThreadsSideBySideEqualRunsOneAfterAnother) {
  auto run = [](uint64_t seed) {
    GeneratorScope scope(make_generator(seed));
    nn::MultiheadAttention mha(nn::MultiheadAttentionOptions(16, 2).dropout(0.3));
    nn::reset_parameters(*mha, make_generator(seed + 100));
    mha->train();
    torch::Tensor out;
    for (int i = 0; i < 20; ++i) out = mha(torch::ones({2, 9, 16}));
    return out;
  };
  const auto alone0 = run(0), alone1 = run(1);
  torch::Tensor side0, side1;
  std::thread t0([&] { side0 = run(0); }), t1([&] { side1 = run(1); });
  t0.join();
  t1.join();
  EXPECT_TRUE(torch::equal(side0, alone0));
  EXPECT_TRUE(torch::equal(side1, alone1));
  EXPECT_FALSE(torch::equal(alone0, alone1));
}

}  // namespace
}  // namespace quest
