// quest::nn::MultiheadAttention: shapes, parameters, gradients, use inside a pre-norm block.
#include <gtest/gtest.h>

#include "quest/quest.h"

namespace quest {
namespace {

using torch::Tensor;

TEST(MultiheadAttention, ShapesAndKindParameters) {
  for (Kind kind : all_kinds()) {
    nn::MultiheadAttention mha(nn::MultiheadAttentionOptions(32, 4).kind(kind));
    const auto y = mha(torch::randn({3, 10, 32}));
    EXPECT_EQ(y.sizes(), (std::vector<int64_t>{3, 10, 32}));
    const auto params = mha->named_parameters();
    EXPECT_EQ(params.contains("head_scale"), kind == Kind::qknorm);
    EXPECT_EQ(params.contains("q_norm_weight"), kind == Kind::qk_layernorm);
    if (kind == Kind::qknorm)
      EXPECT_TRUE(torch::allclose(mha->kind_parameters.head_scale, torch::full({4}, std::sqrt(8.0))));
  }
}

TEST(MultiheadAttention, GradientsReachEveryParameter) {
  for (Kind kind : all_kinds()) {
    nn::MultiheadAttention mha(nn::MultiheadAttentionOptions(16, 2).kind(kind));
    mha(torch::randn({2, 5, 16})).pow(2).sum().backward();
    for (const auto& p : mha->named_parameters()) {
      ASSERT_TRUE(p.value().grad().defined()) << to_string(kind) << " " << p.key();
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << to_string(kind) << " " << p.key();
    }
  }
}

TEST(MultiheadAttention, BackendsAgreeAndMatchManualProjection) {
  torch::manual_seed(1);
  for (Kind kind : all_kinds()) {
    nn::MultiheadAttention mha(nn::MultiheadAttentionOptions(12, 3).kind(kind).backend(Backend::reference));
    mha->to(torch::kDouble);
    const auto x = torch::randn({2, 7, 12}, torch::kDouble);
    const auto mask = torch::tensor({false, false, true, false, false, true, false}).repeat({2, 1});
    const auto a = mha(x, mask);
    mha->options.backend(Backend::composite);
    const auto b = mha(x, mask);
    EXPECT_TRUE(torch::allclose(a, b, 1e-10, 1e-10)) << to_string(kind);
    // Same maths by hand: project, split heads, functional attention, merge, project.
    const auto qkv = mha->qkv(x).view({2, 7, 3, 3, 4}).permute({2, 0, 3, 1, 4});
    const auto o = attention(qkv[0], qkv[1], qkv[2], mha->attention_options(mask));
    const auto manual = mha->out_proj(o.transpose(1, 2).reshape({2, 7, 12}));
    EXPECT_TRUE(torch::allclose(a, manual, 1e-10, 1e-10)) << to_string(kind);
  }
}

TEST(MultiheadAttention, CrossAttentionUsesContextForKeysAndValues) {
  nn::MultiheadAttention mha(nn::MultiheadAttentionOptions(8, 2));
  const auto q = torch::randn({2, 3, 8}), ctx = torch::randn({2, 11, 8});
  EXPECT_EQ(mha->forward_cross(q, ctx).sizes(), (std::vector<int64_t>{2, 3, 8}));
  // Self-attention is cross-attention of a sequence with itself.
  const auto x = torch::randn({2, 5, 8});
  EXPECT_TRUE(torch::allclose(mha(x), mha->forward_cross(x, x), 1e-5, 1e-6));
}

TEST(MultiheadAttention, RecordsDiagnostics) {
  nn::MultiheadAttention mha(nn::MultiheadAttentionOptions(8, 2));
  mha(torch::randn({2, 4, 8}));
  EXPECT_FALSE(mha->last_diagnostics().has_value());
  mha->set_record_diagnostics(true);
  mha(torch::randn({2, 4, 8}));
  ASSERT_TRUE(mha->last_diagnostics().has_value());
  EXPECT_EQ(mha->last_diagnostics()->entropy_mean.size(), 2u);
  // QUEST's bound: |logit| <= |q|.
  for (int h = 0; h < 2; ++h)
    EXPECT_LE(mha->last_diagnostics()->logit_abs_max[h], mha->last_diagnostics()->q_norm_max[h] + 1e-5);
}

// QK-clip rescales exactly the heads over the threshold, by sqrt(tau / S) on each of q and k (the
// whole factor on q with grouped-query attention), and the same input then peaks at tau.
TEST(MultiheadAttention, QkClipRescalesHeadsOverTheThresholdOnly) {
  for (int64_t kv : {2, 1}) {
    torch::manual_seed(5);
    nn::MultiheadAttention mha(nn::MultiheadAttentionOptions(8, 2).num_kv_heads(kv).kind(Kind::standard));
    const Tensor x = torch::randn({2, 5, 8}) * 4;
    mha->set_record_diagnostics(true);
    mha(x);
    const std::vector<double> before = mha->last_diagnostics()->logit_max;
    ASSERT_GT(before[0], 0);
    const double tau = before[0] / 4;            // head 0 over the threshold,
    const std::vector<double> maxima = {before[0], tau / 2};  // head 1 (said to be) under it
    const Tensor w = mha->qkv->weight.clone(), b = mha->qkv->bias.clone();
    EXPECT_EQ(mha->clip_qk(maxima, tau), 1);
    const double q_factor = kv == 2 ? 0.5 : 0.25, k_factor = kv == 2 ? 0.5 : 1.0;  // sqrt(1/4), or 1/4 on q
    Tensor expect_w = w.clone(), expect_b = b.clone();
    expect_w.narrow(0, 0, 4).mul_(q_factor), expect_b.narrow(0, 0, 4).mul_(q_factor);  // q rows of head 0
    expect_w.narrow(0, 8, 4).mul_(k_factor), expect_b.narrow(0, 8, 4).mul_(k_factor);  // k rows of its key head
    EXPECT_TRUE(torch::allclose(mha->qkv->weight, expect_w, 1e-6, 0)) << kv;
    EXPECT_TRUE(torch::allclose(mha->qkv->bias, expect_b, 1e-6, 0)) << kv;
    mha(x);
    EXPECT_NEAR(mha->last_diagnostics()->logit_max[0], tau, 1e-4 * tau) << kv;
    EXPECT_NEAR(mha->last_diagnostics()->logit_max[1], before[1], 1e-6 * std::abs(before[1]) + 1e-6) << kv;
    EXPECT_EQ(mha->clip_qk({NAN, 0.0}, tau), 0);  // non-finite and low maxima: nothing
    EXPECT_THROW(mha->clip_qk({1.0}, tau), c10::Error);
  }
}

TEST(MultiheadAttention, BadConstructionAndInput) {
  EXPECT_THROW(nn::MultiheadAttention(nn::MultiheadAttentionOptions(10, 3)), c10::Error);
  nn::MultiheadAttention mha(nn::MultiheadAttentionOptions(8, 2));
  EXPECT_THROW(mha(torch::randn({2, 4, 9})), c10::Error);
  EXPECT_THROW(mha(torch::randn({4, 8})), c10::Error);
}

// A pre-norm transformer block with the module as a drop-in; a few steps lower the loss.
struct BlockImpl : torch::nn::Module {
  BlockImpl(int64_t dim, Kind kind)
      : norm1(register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))),
        attn(register_module("attn", nn::MultiheadAttention(nn::MultiheadAttentionOptions(dim, 2).kind(kind)))),
        norm2(register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))),
        fc1(register_module("fc1", torch::nn::Linear(dim, 2 * dim))),
        fc2(register_module("fc2", torch::nn::Linear(2 * dim, dim))) {}
  Tensor forward(Tensor x) {
    x = x + attn(norm1(x));
    return x + fc2(torch::gelu(fc1(norm2(x))));
  }
  torch::nn::LayerNorm norm1;
  nn::MultiheadAttention attn;
  torch::nn::LayerNorm norm2;
  torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(Block);

TEST(MultiheadAttention, TrainsInsideAPreNormBlock) {
  for (Kind kind : all_kinds()) {
    torch::manual_seed(0);
    Block block(16, kind);
    torch::optim::AdamW opt(block->parameters(), torch::optim::AdamWOptions(3e-3));
    const auto x = torch::randn({8, 6, 16});
    const auto target = x.flip({1});  // needs attention across tokens
    double first = 0, last = 0;
    for (int step = 0; step < 60; ++step) {
      opt.zero_grad();
      const auto loss = torch::mse_loss(block(x), target);
      loss.backward();
      opt.step();
      (step == 0 ? first : last) = loss.item<double>();
    }
    EXPECT_LT(last, 0.7 * first) << to_string(kind);
  }
}

const std::vector<Kind> kAllKinds = {Kind::standard, Kind::quest, Kind::qnorm, Kind::qknorm,
                                     Kind::qk_layernorm};

TEST(Rotary, KeepsNormsCommutesWithKeyNormalisationAndIsRelative) {
  torch::manual_seed(0);
  const Tensor k = torch::randn({2, 3, 9, 8}), q = torch::randn({2, 3, 9, 8});
  const Tensor rk = nn::apply_rotary(k, 5);
  EXPECT_TRUE(torch::allclose(rk.norm(2, -1), k.norm(2, -1), 1e-5, 1e-6));
  for (Kind kind : {Kind::quest, Kind::qknorm}) {
    const AttentionOptions o(kind);
    EXPECT_TRUE(torch::allclose(normalize_keys(rk, o), nn::apply_rotary(normalize_keys(k, o), 5),
                                1e-5, 1e-6)) << to_string(kind);
  }
  // q_m . k_n depends on m - n only: shifting both positions by 7 keeps every logit.
  const Tensor s0 = torch::matmul(nn::apply_rotary(q, 0), nn::apply_rotary(k, 0).transpose(-1, -2));
  const Tensor s7 = torch::matmul(nn::apply_rotary(q, 7), nn::apply_rotary(k, 7).transpose(-1, -2));
  EXPECT_TRUE(torch::allclose(s0, s7, 1e-4, 1e-5));
  EXPECT_FALSE(torch::allclose(s0, torch::matmul(q, k.transpose(-1, -2)), 1e-2, 1e-2));
  EXPECT_THROW(nn::apply_rotary(torch::randn({1, 1, 2, 3})), c10::Error);  // odd D
}

TEST(Attention, NormalisedKeysGiveTheSameAttention) {
  torch::manual_seed(1);
  const Tensor q = torch::randn({2, 2, 6, 8}), k = torch::randn({2, 2, 9, 8}), v = torch::randn({2, 2, 9, 4});
  for (Kind kind : kAllKinds) {
    AttentionOptions o(kind);
    if (kind == Kind::qknorm) o.head_scale(torch::tensor({2.0f, 3.0f}));
    if (kind == Kind::qk_layernorm) o.k_norm_weight(torch::rand({8}) + 0.5).k_norm_bias(torch::randn({8}));
    const Tensor expected = attention(q, k, v, o);
    const Tensor got = attention(q, normalize_keys(k, o), v, AttentionOptions(o).keys_normalized(true));
    EXPECT_TRUE(torch::allclose(got, expected, 1e-5, 1e-6)) << to_string(kind);
  }
}

TEST(MultiheadAttention, CachedDecodingMatchesFullRecomputation) {
  for (Kind kind : kAllKinds)
    for (bool rotary : {false, true})
    for (int64_t kv_heads : {4, 2, 1}) {  // multi-head, grouped-query, multi-query
      torch::manual_seed(2);
      nn::MultiheadAttention mha(
          nn::MultiheadAttentionOptions(32, 4).num_kv_heads(kv_heads).kind(kind).causal(true).rotary(rotary));
      mha->eval();
      const Tensor x = torch::randn({2, 12, 32});
      const Tensor full = mha(x);
      nn::KVCache cache;
      std::vector<Tensor> parts;
      int64_t at = 0;
      for (int64_t step : {5, 1, 1, 3, 2}) {  // a prompt, then single tokens, then a chunk
        parts.push_back(mha->forward_cached(x.slice(1, at, at + step), cache));
        at += step;
      }
      ASSERT_EQ(at, 12);
      EXPECT_EQ(cache.length(), 12);
      const std::string what = to_string(kind) + (rotary ? " rotary" : "") + " kv_heads " + std::to_string(kv_heads);
      EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), full, 1e-4, 1e-5)) << what;
      EXPECT_EQ(cache.keys.size(1), kv_heads) << what;  // the cache holds the key/value heads only
      if (kind == Kind::quest)  // stored normalised: unit rows
        EXPECT_TRUE(torch::allclose(cache.keys.norm(2, -1), torch::ones({2, kv_heads, 12}), 1e-5, 1e-5)) << what;
    }
  EXPECT_THROW(nn::MultiheadAttention(nn::MultiheadAttentionOptions(32, 4).num_kv_heads(3)), c10::Error);
  // head_dim 3 cannot be rotated pairwise; rotary positions need a shared sequence.
  EXPECT_THROW(nn::MultiheadAttention(nn::MultiheadAttentionOptions(6, 2).rotary(true)), c10::Error);
  nn::MultiheadAttention rotary(nn::MultiheadAttentionOptions(8, 2).rotary(true));
  EXPECT_THROW(rotary->forward_cross(torch::randn({1, 2, 8}), torch::randn({1, 3, 8})), c10::Error);
  nn::MultiheadAttention not_causal(nn::MultiheadAttentionOptions(8, 2));
  nn::KVCache cache;
  EXPECT_THROW(not_causal->forward_cached(torch::randn({1, 2, 8}), cache), c10::Error);
}

// Grouped-query self- and cross-attention against the same module's projections run through
// quest::attention with each key/value head repeated for its group.
TEST(MultiheadAttention, GroupedQueryIsAttentionOnRepeatedHeads) {
  for (Kind kind : kAllKinds) {
    torch::manual_seed(4);
    nn::MultiheadAttention mha(nn::MultiheadAttentionOptions(24, 6).num_kv_heads(2).kind(kind));
    mha->eval();
    EXPECT_EQ(mha->qkv->weight.size(0), 24 + 2 * 2 * 4);  // q: 6 heads; k, v: 2 heads of 4
    const Tensor x = torch::randn({2, 7, 24}), context = torch::randn({2, 5, 24});
    auto expected = [&](const Tensor& queries, const Tensor& keys_from) {
      const Tensor w = mha->qkv->weight, b = mha->qkv->bias;
      const Tensor q = torch::nn::functional::linear(queries, w.slice(0, 0, 24), b.slice(0, 0, 24));
      const Tensor kv = torch::nn::functional::linear(keys_from, w.slice(0, 24), b.slice(0, 24));
      auto heads = [](const Tensor& t, int64_t h) { return t.view({t.size(0), t.size(1), h, 4}).transpose(1, 2); };
      const Tensor k = heads(kv.slice(2, 0, 8), 2).repeat_interleave(3, 1);
      const Tensor v = heads(kv.slice(2, 8, 16), 2).repeat_interleave(3, 1);
      const Tensor o = attention(heads(q, 6), k, v, mha->attention_options({}).enable_gqa(false));
      return torch::nn::functional::linear(o.transpose(1, 2).reshape({2, queries.size(1), 24}),
                                           mha->out_proj->weight, mha->out_proj->bias);
    };
    EXPECT_TRUE(torch::allclose(mha(x), expected(x, x), 1e-5, 1e-6)) << to_string(kind);
    EXPECT_TRUE(torch::allclose(mha->forward_cross(x, context), expected(x, context), 1e-5, 1e-6))
        << to_string(kind);
  }
}

}  // namespace
}  // namespace quest
