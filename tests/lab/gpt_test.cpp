// The byte-level GPT: shapes, causality, the KV cache against full recomputation for every kind
// (learned and rotary positions), sampling.
#include <gtest/gtest.h>

#include "quest/lab/models/gpt.h"

namespace quest::models {
namespace {

using torch::Tensor;

const std::vector<Kind> kKinds = {Kind::standard, Kind::quest, Kind::qnorm, Kind::qknorm,
                                  Kind::qk_layernorm};

Gpt small(Kind kind, const std::string& positions, bool tied = true, int64_t kv_heads = 0) {
  Gpt m(GptOptions().context(24).dim(32).depth(2).heads(4).kv_heads(kv_heads).attention(kind)
            .positions(parse_positions(positions)).tied_embeddings(tied));
  m->initialize(at::detail::createCPUGenerator(7));
  m->eval();
  return m;
}

TEST(Gpt, ShapesTiedAndUntied) {
  const Tensor tokens = torch::randint(0, 256, {3, 10}, torch::kLong);
  for (bool tied : {true, false}) {
    Gpt m = small(Kind::quest, "learned", tied);
    EXPECT_EQ(m(tokens).sizes(), (std::vector<int64_t>{3, 10, 256}));
    EXPECT_EQ(m->head.is_empty(), tied);
  }
  Gpt m = small(Kind::quest, "learned");
  EXPECT_THROW(m(torch::randint(0, 256, {1, 25}, torch::kLong)), c10::Error);  // > context
  EXPECT_THROW(m(torch::full({1, 3}, 256, torch::kLong)), c10::Error);        // not a byte
  EXPECT_THROW(parse_positions("sinusoid"), c10::Error);
}

TEST(Gpt, ChangingTokenTNeverChangesEarlierLogits) {
  for (Kind kind : kKinds)
    for (const char* positions : {"learned", "rotary"}) {
      Gpt m = small(kind, positions);
      torch::manual_seed(1);
      const Tensor a = torch::randint(0, 256, {2, 16}, torch::kLong);
      Tensor b = a.clone();
      b.select(1, 9).fill_(42);
      const Tensor la = m(a), lb = m(b);
      const std::string what = to_string(kind) + " " + positions;
      EXPECT_TRUE(torch::equal(la.narrow(1, 0, 9), lb.narrow(1, 0, 9))) << what;
      EXPECT_FALSE(torch::allclose(la.narrow(1, 9, 7), lb.narrow(1, 9, 7))) << what;
    }
}

TEST(Gpt, CachedDecodingGivesTheLogitsOfFullRecomputation) {
  for (Kind kind : kKinds)
    for (const char* positions : {"learned", "rotary"})
    for (int64_t kv_heads : {0, 2, 1}) {  // multi-head, grouped-query, multi-query
      Gpt m = small(kind, positions, true, kv_heads);
      torch::manual_seed(2);
      const Tensor tokens = torch::randint(0, 256, {2, 20}, torch::kLong);
      const Tensor full = m(tokens);
      GptCache cache;
      std::vector<Tensor> parts;
      int64_t at = 0;
      for (int64_t step : {8, 1, 1, 1, 4, 5}) {
        parts.push_back(m->forward_cached(tokens.narrow(1, at, step), cache));
        at += step;
      }
      EXPECT_EQ(cache.length(), 20);
      EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), full, 1e-4, 1e-4))
          << to_string(kind) << " " << positions << " kv_heads " << kv_heads << ": max diff "
          << (torch::cat(parts, 1) - full).abs().max().item<double>();
    }
}

TEST(Gpt, GenerationIsSeededAndGreedyFollowsTheArgmax) {
  Gpt m = small(Kind::quest, "rotary");
  const Tensor prompt = torch::randint(0, 256, {1, 5}, torch::kLong);
  SamplingOptions o;
  o.tokens = 30;  // past the context of 24: the cache is rebuilt on the way
  o.temperature = 0.8;
  o.top_k = 20;
  const Tensor a = generate(m, prompt, o, at::detail::createCPUGenerator(3));
  const Tensor b = generate(m, prompt, o, at::detail::createCPUGenerator(3));
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{1, 30}));
  EXPECT_TRUE(torch::equal(a, b));
  o.use_cache = false;  // the same draws from full recomputation (up to a near-tie in rounding)
  EXPECT_TRUE(torch::equal(generate(m, prompt, o, at::detail::createCPUGenerator(3)).narrow(1, 0, 20),
                           a.narrow(1, 0, 20)));
  o.use_cache = true;
  // Greedy: each token is the argmax of a full forward over the sequence so far.
  o.temperature = 0;
  o.tokens = 6;
  const Tensor g = generate(m, prompt, o, at::detail::createCPUGenerator(0));
  Tensor seq = prompt;
  for (int64_t t = 0; t < 6; ++t) {
    const int64_t next = m(seq).select(1, -1).argmax(-1).item<int64_t>();
    EXPECT_EQ(g[0][t].item<int64_t>(), next) << "token " << t;
    seq = torch::cat({seq, torch::full({1, 1}, next, torch::kLong)}, 1);
  }
}

}  // namespace
}  // namespace quest::models
