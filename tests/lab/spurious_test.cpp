// The spurious-pattern retrieval task: generator statistics (bias fraction, Sigma, b, splits),
// determinism by seed, the toy model, and short experiment runs.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "error_message.h"
#include "quest/lab/data/retrieval.h"
#include "quest/lab/experiments/spurious.h"
#include "quest/lab/models/retrieval.h"

namespace quest {
namespace {

using data::RetrievalSplit;
using data::RetrievalTaskOptions;
using testing::error_message;

data::RetrievalBatch draw(RetrievalSplit split, int64_t batch, uint64_t seed,
                          const RetrievalTaskOptions& o = {}) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return data::generate_retrieval(o, split, batch, gen);
}

torch::Tensor answer_keys(const data::RetrievalBatch& b) {  // (B, d)
  return b.keys.index({torch::arange(b.keys.size(0)), b.answer}).to(torch::kDouble);
}

TEST(RetrievalTask, TrainingSampleMatchesTheStatedDistribution) {
  const RetrievalTaskOptions o;  // N 16, d 16, C 8, p 0.5, Sigma diag(9 x 8, 1/9 x 8), b = ones
  const int64_t B = 40000;
  const auto b = draw(RetrievalSplit::training, B, 1, o);
  ASSERT_EQ(b.keys.sizes(), (std::vector<int64_t>{B, 16, 16}));
  ASSERT_EQ(b.codes.sizes(), (std::vector<int64_t>{B, 16, 8}));
  // Bias fraction: p = 0.5 within 4 standard errors.
  const double fraction = b.biased.to(torch::kDouble).mean().item<double>();
  EXPECT_NEAR(fraction, 0.5, 4 * std::sqrt(0.25 / B));
  // The label is the answer token's code, and codes are one-hot.
  const auto answer_codes = b.codes.index({torch::arange(B), b.answer}).argmax(1);
  EXPECT_TRUE(torch::equal(answer_codes, b.labels));
  EXPECT_TRUE(torch::allclose(b.codes.sum(-1), torch::ones({B, 16})));
  EXPECT_TRUE((b.decoy == -1).all().item<bool>());

  const auto keys = answer_keys(b);
  // Unbiased answers: zero mean, covariance Sigma (diagonal 9 / 1/9, off-diagonal ~0).
  const auto unbiased = keys.index({b.biased.logical_not()});
  const int64_t n = unbiased.size(0);
  const auto mean = unbiased.mean(0);
  const auto cov = (unbiased - mean).t().mm(unbiased - mean) / (n - 1);
  const auto sigma = data::answer_covariance(o).to(torch::kDouble);
  EXPECT_LT(mean.abs().max().item<double>(), 4 * 3 / std::sqrt(double(n)));
  for (int64_t i = 0; i < 16; ++i)
    EXPECT_NEAR(cov[i][i].item<double>(), sigma[i][i].item<double>(), 0.06 * sigma[i][i].item<double>()) << i;
  EXPECT_LT((cov - torch::diag(cov.diag())).abs().max().item<double>(), 0.2);
  // Biased answers: mean b, variance 0.1 per coordinate.
  const auto biased = keys.index({b.biased});
  EXPECT_TRUE(torch::allclose(biased.mean(0), data::spurious_bias(o).to(torch::kDouble), 0, 0.02));
  EXPECT_NEAR(biased.var(0).mean().item<double>(), 0.1, 0.005);
  // Ordinary tokens: N(0, I).
  auto ordinary_mask = torch::ones({B, 16}, torch::kBool);
  ordinary_mask.index_put_({torch::arange(B), b.answer}, false);
  const auto ordinary = b.keys.index({ordinary_mask}).to(torch::kDouble);
  EXPECT_NEAR(ordinary.mean().item<double>(), 0.0, 0.005);
  EXPECT_NEAR(ordinary.var().item<double>(), 1.0, 0.01);
  // Answer positions and labels uniform: every value occurs.
  EXPECT_EQ(std::get<0>(at::_unique(b.answer)).numel(), 16);
  EXPECT_EQ(std::get<0>(at::_unique(b.labels)).numel(), 8);
}

TEST(RetrievalTask, EvaluationSplitsPlantWhatTheyName) {
  const RetrievalTaskOptions o;
  EXPECT_TRUE(draw(RetrievalSplit::biased, 500, 2).biased.all().item<bool>());
  EXPECT_FALSE(draw(RetrievalSplit::unbiased, 500, 2).biased.any().item<bool>());
  const auto c = draw(RetrievalSplit::conflicting, 4000, 3);
  EXPECT_FALSE(c.biased.any().item<bool>());
  EXPECT_TRUE((c.decoy >= 0).all().item<bool>());
  EXPECT_TRUE((c.decoy != c.answer).all().item<bool>());
  EXPECT_TRUE((c.decoy < o.tokens).all().item<bool>());
  const auto decoy_keys = c.keys.index({torch::arange(4000), c.decoy}).to(torch::kDouble);
  EXPECT_TRUE(torch::allclose(decoy_keys.mean(0), data::spurious_bias(o).to(torch::kDouble), 0, 0.03));
  EXPECT_NEAR(decoy_keys.var(0).mean().item<double>(), 0.1, 0.01);
  // The answer of a conflicting sample still carries Sigma (first half wide, second half narrow).
  const auto keys = answer_keys(c);
  EXPECT_GT(keys.narrow(1, 0, 8).var(0).mean().item<double>(), 8.0);
  EXPECT_LT(keys.narrow(1, 8, 8).var(0).mean().item<double>(), 0.15);
}

TEST(RetrievalTask, BayesOracleFindsTheAnswerAndPrefersTheStrongerCue) {
  RetrievalTaskOptions o;
  auto accuracy = [&](RetrievalSplit split) {
    const auto b = draw(split, 4000, 21, o);
    return data::oracle_predictions(o, b).eq(b.labels).to(torch::kDouble).mean().item<double>();
  };
  // Defaults: the Sigma cue (log-likelihood ratio ~ 28 nats on average) usually outweighs b's
  // (~ 19): the oracle reads the real answer in most samples where b is planted elsewhere.
  EXPECT_GT(accuracy(RetrievalSplit::biased), 0.999);
  EXPECT_GT(accuracy(RetrievalSplit::unbiased), 0.99);
  const double conflicting = accuracy(RetrievalSplit::conflicting);
  EXPECT_GT(conflicting, 0.6);
  EXPECT_LT(conflicting, 0.85);
  // A weak Sigma (4, 1/4: ~ 9 nats) loses to b in conflicts: the training data then favours b.
  o.high_variance = 4;
  o.low_variance = 0.25;
  EXPECT_GT(accuracy(RetrievalSplit::unbiased), 0.9);
  EXPECT_LT(accuracy(RetrievalSplit::conflicting), 0.5);
}

TEST(RetrievalTask, DeterministicBySeed) {
  for (auto split : {RetrievalSplit::training, RetrievalSplit::conflicting}) {
    const auto a = draw(split, 64, 11), b = draw(split, 64, 11), c = draw(split, 64, 12);
    EXPECT_TRUE(torch::equal(a.keys, b.keys) && torch::equal(a.codes, b.codes) && torch::equal(a.labels, b.labels) &&
                torch::equal(a.answer, b.answer) && torch::equal(a.biased, b.biased) && torch::equal(a.decoy, b.decoy));
    EXPECT_FALSE(torch::equal(a.keys, c.keys));
  }
}

TEST(RetrievalTask, BadOptionsNameTheField) {
  RetrievalTaskOptions o;
  o.tokens = 1;
  EXPECT_NE(error_message([&] { draw(RetrievalSplit::training, 4, 0, o); }).find("tokens must be >= 2"), std::string::npos);
  o = {};
  o.bias_probability = 1.5;
  EXPECT_NE(error_message([&] { draw(RetrievalSplit::training, 4, 0, o); }).find("bias_probability"), std::string::npos);
  o = {};
  o.low_variance = 0;
  EXPECT_NE(error_message([&] { data::answer_covariance(o); }).find("low_variance"), std::string::npos);
  EXPECT_NE(error_message([&] { draw(RetrievalSplit::training, 0, 0); }).find("batch must be >= 1"), std::string::npos);
}

TEST(RetrievalModel, ShapesGradientsAndBadInputForEveryKind) {
  const auto b = draw(RetrievalSplit::training, 8, 5);
  for (const std::string queries : {"learned", "tokens"})
  for (bool projections : {true, false})
    for (Kind kind : all_kinds()) {
      SCOPED_TRACE(to_string(kind) + (projections ? " projections on" : " projections off") + " queries " + queries);
      models::RetrievalModel model(
          models::RetrievalModelOptions().attention(kind).projections(projections).heads(2).queries(models::parse_queries(queries)));
      EXPECT_EQ(model->named_parameters().contains("query_token"), queries == "learned");
      const auto logits = model->forward(b.keys, b.codes);
      ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{8, 8}));
      torch::cross_entropy_loss(logits, b.labels).backward();
      for (const auto& p : model->named_parameters()) {
        ASSERT_TRUE(p.value().grad().defined()) << p.key();
        EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
      }
      EXPECT_EQ(model->named_parameters().contains("head_scale"), kind == Kind::qknorm);
      model->eval();
      torch::NoGradGuard no_grad;
      const auto probe = model->probe(b.keys, b.codes);
      EXPECT_EQ(probe.key_norms.sizes(), (std::vector<int64_t>{8, 16}));
      EXPECT_EQ(probe.query_norm.sizes(), (std::vector<int64_t>{8}));
      EXPECT_GT(probe.entropy, 0.0);
      EXPECT_LE(probe.entropy, std::log(16.0) + 1e-6);
      if (!projections)  // raw keys: the probe's key norms are |x^k|
        EXPECT_TRUE(torch::allclose(probe.key_norms, b.keys.norm(2, -1), 1e-5, 1e-5));
    }
  EXPECT_NE(error_message([] { models::parse_queries("all"); })
                .find("unknown queries 'all' (learned, tokens)"),
            std::string::npos);
  models::RetrievalModel model(models::RetrievalModelOptions{});
  EXPECT_NE(error_message([&] { model->forward(b.keys.narrow(2, 0, 5), b.codes); }).find("keys must be (B, N, 16)"),
            std::string::npos);
  EXPECT_NE(error_message([&] { model->forward(b.keys, b.codes.narrow(1, 0, 3)); }).find("codes must be"),
            std::string::npos);
}

experiments::SpuriousRunConfig tiny_run(Kind kind, uint64_t seed) {
  experiments::SpuriousRunConfig c;
  c.task.tokens = 8;
  c.model.attention(kind).dim(16).hidden(32);
  c.steps = 300;
  c.batch_size = 64;
  c.log_every = 100;
  c.eval_size = 500;
  c.probe_size = 64;
  c.lr = 3e-3;
  c.seed = seed;
  return c;
}

TEST(SpuriousExperiment, ShortRunLearnsTheShortcutAndIsDeterministic) {
  const auto c = tiny_run(Kind::standard, 0);
  const auto eval = experiments::make_eval_sets(c.task, c.eval_size, c.probe_size);
  const auto a = experiments::run_spurious(c, eval), b = experiments::run_spurious(c, eval);
  ASSERT_EQ(a.trajectory.size(), 4u);  // steps 0, 100, 200, 300
  EXPECT_EQ(a.trajectory.back().step, 300);
  EXPECT_FALSE(a.diverged);
  // The shortcut (b, a linear cue) is learned within a few hundred steps; chance is 1/8 + repeats.
  EXPECT_GT(a.accuracy_biased, 0.9);
  EXPECT_LT(a.trajectory.front().accuracy_biased, 0.5);
  EXPECT_LT(a.trajectory.back().loss, a.trajectory.front().loss);
  EXPECT_EQ(a.accuracy_biased, b.accuracy_biased);
  EXPECT_EQ(a.accuracy_conflicting, b.accuracy_conflicting);
  EXPECT_EQ(a.trajectory.back().key_norm_biased, b.trajectory.back().key_norm_biased);
  EXPECT_EQ(a.success, a.accuracy_unbiased >= 0.9 && a.accuracy_conflicting >= 0.5);
  const auto j = experiments::to_json(a);
  EXPECT_EQ(j["trajectory"].size(), 4u);
  EXPECT_EQ(j["config"]["model"]["attention"], "standard");
}

TEST(SpuriousExperiment, GridWithTwoWorkersMatchesRunsOneByOne) {
  std::vector<experiments::SpuriousRunConfig> grid;
  for (Kind kind : {Kind::quest, Kind::qknorm})
    for (uint64_t seed : {0, 1}) {
      auto c = tiny_run(kind, seed);
      c.steps = 60;
      c.log_every = 30;
      grid.push_back(c);
    }
  const auto eval = experiments::make_eval_sets(grid[0].task, grid[0].eval_size, grid[0].probe_size);
  int calls = 0;
  const auto parallel = experiments::run_spurious_grid(grid, eval, 2, [&](size_t, const auto&) { ++calls; });
  EXPECT_EQ(calls, 4);
  for (size_t i = 0; i < grid.size(); ++i) {
    const auto one = experiments::run_spurious(grid[i], eval);
    EXPECT_EQ(parallel[i].accuracy_unbiased, one.accuracy_unbiased) << i;
    EXPECT_EQ(parallel[i].trajectory.back().query_norm, one.trajectory.back().query_norm) << i;
  }
  auto mixed = grid;
  mixed[1].task.tokens = 9;
  EXPECT_NE(error_message([&] { experiments::run_spurious_grid(mixed, eval, 1); }).find("share the task"), std::string::npos);
}

}  // namespace
}  // namespace quest
