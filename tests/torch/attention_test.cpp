// Reference vs composite vs an independent torch oracle: outputs and every gradient, every kind
// and option, fp64 and fp32.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <tuple>

#include "error_message.h"
#include "oracle.h"
#include "quest/torch/attention.h"

namespace quest {
namespace {

using testing::OracleInputs;
using torch::Tensor;

enum OptionBits { kCausal = 1, kPad = 2, kDropout = 4, kHeadScale = 8 };

struct Shape {
  int64_t b, h, nq, nk, dk, dv;
};
const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {
      {1, 1, 1, 1, 1, 1},   {2, 3, 5, 5, 4, 4},     {2, 2, 7, 3, 5, 6}, {1, 2, 3, 9, 8, 2},
      {3, 4, 17, 17, 16, 16}, {16, 12, 6, 6, 4, 4},  // large B*H
  };
  return s;
}

OracleInputs make_inputs(const Shape& s, Kind kind, int bits, torch::Dtype dtype, uint64_t seed) {
  torch::manual_seed(seed);
  auto opts = torch::TensorOptions().dtype(dtype);
  OracleInputs in;
  in.q = torch::randn({s.b, s.h, s.nq, s.dk}, opts);
  in.k = torch::randn({s.b, s.h, s.nk, s.dk}, opts);
  in.v = torch::randn({s.b, s.h, s.nk, s.dv}, opts);
  if (bits & kHeadScale) in.head_scale = torch::rand({s.h}, opts) + 0.5;
  if (kind == Kind::qk_layernorm) {
    in.qw = torch::randn({s.dk}, opts) * 0.2 + 1;
    in.qb = torch::randn({s.dk}, opts) * 0.2;
    in.kw = torch::randn({s.dk}, opts) * 0.2 + 1;
    in.kb = torch::randn({s.dk}, opts) * 0.2;
  }
  if (bits & kPad) {
    in.key_padding_mask = torch::rand({s.b, s.nk}) < 0.3;
    in.key_padding_mask.index_put_({0}, true);  // batch 0 sees no key at all
  }
  return in;
}

// Differentiable inputs by name, in a fixed order.
std::vector<std::pair<std::string, Tensor>> leaves(const OracleInputs& in) {
  std::vector<std::pair<std::string, Tensor>> out;
  const std::pair<const char*, const Tensor*> all[] = {
      {"q", &in.q},       {"k", &in.k},   {"v", &in.v},   {"head_scale", &in.head_scale},
      {"q_weight", &in.qw}, {"q_bias", &in.qb}, {"k_weight", &in.kw}, {"k_bias", &in.kb}};
  for (const auto& [name, t] : all)
    if (t->defined()) out.emplace_back(name, *t);
  return out;
}

OracleInputs with_grad(const OracleInputs& in) {
  OracleInputs c = in;
  for (Tensor* t : {&c.q, &c.k, &c.v, &c.head_scale, &c.qw, &c.qb, &c.kw, &c.kb})
    if (t->defined()) *t = t->detach().clone().requires_grad_();
  return c;
}

AttentionOptions options_for(Kind kind, int bits, const OracleInputs& in) {
  return AttentionOptions(kind)
      .causal(bits & kCausal)
      .key_padding_mask(in.key_padding_mask)
      .dropout((bits & kDropout) ? 0.25 : 0.0)
      .training(true)
      .seed(1234)
      .head_scale(in.head_scale)
      .q_norm_weight(in.qw)
      .q_norm_bias(in.qb)
      .k_norm_weight(in.kw)
      .k_norm_bias(in.kb);
}

// "out" and the gradient of sum(out * w) with respect to every leaf, by name.
std::map<std::string, Tensor> run(const std::function<Tensor(const OracleInputs&)>& f,
                                  const OracleInputs& in0, const Tensor& w) {
  const OracleInputs in = with_grad(in0);
  const Tensor out = f(in);
  const auto named = leaves(in);
  std::vector<Tensor> ls;
  for (const auto& nt : named) ls.push_back(nt.second);
  auto grads = torch::autograd::grad({(out * w).sum()}, ls, {}, false, false, true);
  std::map<std::string, Tensor> r{{"out", out.detach()}};
  for (size_t i = 0; i < grads.size(); ++i)
    r["d" + named[i].first] = grads[i].defined() ? grads[i] : torch::zeros_like(ls[i]);
  return r;
}

// max |a - b| <= atol + rtol * scale, with scale = max |b|: relative to the tensor's size, since
// gradients that sum many terms carry absolute, not per-element, rounding error. A LayerNorm bias
// gradient sums the same terms as its weight's (and the key bias's is exactly zero, as a shared
// shift of all logits leaves softmax unchanged), so it is measured on the weight's scale.
void expect_close(const std::map<std::string, Tensor>& a, const std::map<std::string, Tensor>& b,
                  double rtol, double atol, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (const auto& [name, got] : a) {
    ASSERT_TRUE(b.count(name)) << what << " " << name;
    const Tensor x = got.to(torch::kDouble), y = b.at(name).to(torch::kDouble);
    ASSERT_EQ(x.sizes(), y.sizes()) << what << " " << name;
    ASSERT_TRUE(torch::isfinite(x).all().item<bool>()) << what << " " << name << " not finite";
    double scale = y.abs().max().item<double>();
    if (const auto pos = name.find("_bias"); pos != std::string::npos)
      scale = std::max(scale, b.at(name.substr(0, pos) + "_weight").abs().max().item<double>());
    const double err = (x - y).abs().max().item<double>();
    EXPECT_LE(err, atol + rtol * scale) << what << " " << name;
  }
}

using Param = std::tuple<Kind, int, torch::Dtype>;
class ThreePaths : public ::testing::TestWithParam<Param> {};

TEST_P(ThreePaths, OutputsAndEveryGradientAgree) {
  const auto [kind, bits, dtype] = GetParam();
  const bool fp64 = dtype == torch::kDouble;
  const double rtol = fp64 ? 1e-10 : 1e-5, atol = fp64 ? 1e-12 : 1e-6;
  for (const Shape& s : shapes()) {
    const OracleInputs in = make_inputs(s, kind, bits, dtype, 17 + s.nq);
    const Tensor w = torch::randn({s.b, s.h, s.nq, s.dv}, torch::TensorOptions().dtype(dtype));
    const std::string what = to_string(kind) + " shape (" + std::to_string(s.b) + "," +
                             std::to_string(s.h) + "," + std::to_string(s.nq) + "," +
                             std::to_string(s.nk) + "," + std::to_string(s.dk) + "," +
                             std::to_string(s.dv) + ") bits " + std::to_string(bits);
    // The oracle in fp64 from the same inputs is the ground truth for both dtypes.
    OracleInputs in64 = in;
    for (Tensor* t : {&in64.q, &in64.k, &in64.v, &in64.head_scale, &in64.qw, &in64.qb, &in64.kw,
                      &in64.kb})
      if (t->defined()) *t = t->to(torch::kDouble);
    const auto truth = run(
        [&](const OracleInputs& x) {
          return testing::oracle_attention(x, kind, bits & kCausal, (bits & kDropout) ? 0.25 : 0,
                                           1234);
        },
        in64, w.to(torch::kDouble));
    std::vector<Backend> backends = {Backend::reference, Backend::composite};
    if (!fp64) backends.push_back(Backend::fused);
    if (!(bits & kDropout)) backends.push_back(Backend::sdpa);  // torch's dropout mask is not quest's
    for (Backend backend : backends) {
      const auto got = run(
          [&](const OracleInputs& x) {
            return attention(x.q, x.k, x.v, options_for(kind, bits, x).backend(backend));
          },
          in, w);
      expect_close(got, truth, rtol, atol, what + " " + to_string(backend));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllKindsAllOptions, ThreePaths,
    ::testing::Combine(::testing::ValuesIn(all_kinds()), ::testing::Range(0, 16),
                       ::testing::Values(torch::kDouble, torch::kFloat)),
    [](const auto& info) {
      const Kind kind = std::get<0>(info.param);
      const int bits = std::get<1>(info.param);
      const torch::Dtype dtype = std::get<2>(info.param);
      return to_string(kind) + ((bits & kCausal) ? "_causal" : "") + ((bits & kPad) ? "_pad" : "") +
             ((bits & kDropout) ? "_dropout" : "") + ((bits & kHeadScale) ? "_headscale" : "") +
             (dtype == torch::kDouble ? "_f64" : "_f32");
    });

TEST(Attention, StridedInputsNeedNoCopy) {
  torch::manual_seed(3);
  const auto qkv = torch::randn({2, 9, 3, 4, 8}, torch::kDouble);  // (B, N, 3, H, D)
  const auto heads = qkv.permute({2, 0, 3, 1, 4});                  // (3, B, H, N, D) view
  ASSERT_FALSE(heads[0].is_contiguous());
  for (Kind kind : all_kinds()) {
    const auto a = attention(heads[0], heads[1], heads[2],
                             AttentionOptions(kind).backend(Backend::reference));
    const auto b = attention(heads[0].contiguous(), heads[1].contiguous(), heads[2].contiguous(),
                             AttentionOptions(kind).backend(Backend::composite));
    EXPECT_TRUE(torch::allclose(a, b, 1e-12, 1e-12)) << to_string(kind);
  }
}

// Grouped-query attention against its definition: the same call with each key/value head repeated
// for its group (no GQA), dK and dV summed over the group. Every backend, every kind, causal and
// padded, head scales per query head.
TEST(Attention, GroupedQueryIsAttentionOnRepeatedHeads) {
  const int64_t b = 2, hq = 6, hk = 2, group = hq / hk, n = 9, d = 8;
  for (auto [backend, dtype, tol] : {std::tuple{Backend::fused, torch::kFloat, 2e-5},
                                     {Backend::reference, torch::kDouble, 1e-12},
                                     {Backend::composite, torch::kDouble, 1e-12}}) {
    for (Kind kind : all_kinds()) {
      torch::manual_seed(11);
      const auto opts = torch::TensorOptions().dtype(dtype);
      const Tensor q = torch::randn({b, hq, n, d}, opts), k = torch::randn({b, hk, n, d}, opts),
                   v = torch::randn({b, hk, n, d}, opts), dout = torch::randn({b, hq, n, d}, opts);
      Tensor pad = torch::zeros({b, n}, torch::kBool);
      pad[1].slice(0, 6).fill_(true);
      AttentionOptions o(kind);
      o.causal(true).key_padding_mask(pad).backend(backend);
      if (kind == Kind::qknorm) o.head_scale(torch::linspace(1, 3, hq, opts));

      auto run = [&](const Tensor& kk, const Tensor& vv, bool gqa) {
        const Tensor ql = q.clone().requires_grad_(), kl = kk.clone().requires_grad_(),
                     vl = vv.clone().requires_grad_();
        const Tensor out = attention(ql, kl, vl, AttentionOptions(o).enable_gqa(gqa));
        out.backward(dout);
        return std::vector<Tensor>{out, ql.grad(), kl.grad(), vl.grad()};
      };
      const auto grouped = run(k, v, true);
      const auto repeated = run(k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), false);
      const std::vector<Tensor> expected = {repeated[0], repeated[1],
                                            repeated[2].view({b, hk, group, n, d}).sum(2),
                                            repeated[3].view({b, hk, group, n, d}).sum(2)};
      for (size_t i = 0; i < expected.size(); ++i)
        EXPECT_TRUE(torch::allclose(grouped[i], expected[i], tol, tol))
            << to_string(backend) << " " << to_string(kind) << " output/grad " << i << ": max error "
            << (grouped[i] - expected[i]).abs().max().item<double>();
    }
  }
}

// The SDPA contract against LibTorch's own scaled_dot_product_attention (kind standard): leading
// batch dims, a padding mask (fused), a bool mask over queries and a float bias (composite),
// is_causal, scale and grouped-query attention.
TEST(Attention, ScaledDotProductAttentionIsTorchs) {
  torch::manual_seed(5);
  const Tensor q = torch::randn({2, 3, 4, 5, 8}), k = torch::randn({2, 3, 2, 7, 8}), v = torch::randn({2, 3, 2, 7, 6});
  Tensor padding = torch::rand({2, 3, 1, 1, 7}) < 0.6;
  padding.select(-1, 0).fill_(true);
  Tensor rows = torch::rand({5, 7}) < 0.5;
  rows.select(-1, 0).fill_(true);
  const Tensor bias = torch::randn({2, 1, 1, 5, 7});
  for (const Tensor& mask : {Tensor(), padding, rows, bias}) {
    for (bool causal : {false, true}) {
      if (causal && mask.defined()) continue;
      for (std::optional<double> scale : {std::optional<double>(), std::optional<double>(0.3)}) {
        const Tensor ours = quest::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, scale, true,
                                                         AttentionOptions(Kind::standard));
        const Tensor theirs = at::scaled_dot_product_attention(
            q, k, v, mask.defined() ? std::optional<Tensor>(mask) : std::nullopt, 0.0, causal, scale, true);
        EXPECT_TRUE(torch::allclose(ours, theirs, 1e-5, 2e-6))
            << "mask " << (mask.defined() ? mask.sizes() : c10::IntArrayRef{}) << " causal " << causal
            << ": max error " << (ours - theirs).abs().max().item<double>();
      }
    }
  }
  EXPECT_NE(testing::error_message([&] { quest::scaled_dot_product_attention(q, k, v, padding, 0.0, true); })
                .find("not both"), std::string::npos);
  EXPECT_NE(testing::error_message([&] { quest::scaled_dot_product_attention(q, k, v); }).find("head counts differ"),
            std::string::npos);
}

TEST(Attention, DiagnosticsMatchTheirDefinitionOnEveryPath) {
  for (Kind kind : all_kinds()) {
    const OracleInputs in = make_inputs({3, 2, 6, 8, 5, 3}, kind, kCausal | kPad, torch::kDouble, 5);
    const auto o = options_for(kind, kCausal | kPad, in).training(false);
    const HeadDiagnostics expected = oracle_diagnostics(in, kind, true);
    for (Backend backend : {Backend::reference, Backend::composite}) {
      const auto r = attention_forward(in.q, in.k, in.v, AttentionOptions(o).backend(backend), false, true);
      ASSERT_TRUE(r.diagnostics);
      const HeadDiagnostics& x = *r.diagnostics;
      for (int h = 0; h < 2; ++h) {
        EXPECT_NEAR(x.q_norm_mean[h], expected.q_norm_mean[h], 1e-10) << to_string(backend);
        EXPECT_NEAR(x.q_norm_max[h], expected.q_norm_max[h], 1e-10) << to_string(backend);
        EXPECT_NEAR(x.k_norm_mean[h], expected.k_norm_mean[h], 1e-10) << to_string(backend);
        EXPECT_NEAR(x.k_norm_max[h], expected.k_norm_max[h], 1e-10) << to_string(backend);
        EXPECT_NEAR(x.logit_abs_max[h], expected.logit_abs_max[h], 1e-10) << to_string(backend);
        EXPECT_NEAR(x.logit_max[h], expected.logit_max[h], 1e-10) << to_string(backend);
        EXPECT_NEAR(x.entropy_mean[h], expected.entropy_mean[h], 1e-10) << to_string(backend);
        EXPECT_GT(x.entropy_mean[h], 0);
      }
    }
    // Entropy of uniform attention over N keys is log N: a check against the definition.
    const auto uniform = attention_forward(torch::zeros({1, 1, 4, 3}, torch::kDouble),
                                           torch::randn({1, 1, 7, 3}, torch::kDouble),
                                           torch::randn({1, 1, 7, 2}, torch::kDouble),
                                           AttentionOptions(kind).backend(Backend::reference), false,
                                           true);
    if (kind != Kind::qk_layernorm && kind != Kind::qnorm && kind != Kind::qknorm)
      EXPECT_NEAR(uniform.diagnostics->entropy_mean[0], std::log(7.0), 1e-12) << to_string(kind);
  }
}

TEST(Attention, WeightsAreTheOraclesAndSumToOne) {
  const OracleInputs in = make_inputs({2, 3, 5, 6, 4, 2}, Kind::quest, kCausal, torch::kDouble, 9);
  Tensor expected;
  testing::oracle_attention(in, Kind::quest, true, 0, 0, &expected);
  for (Backend backend : {Backend::reference, Backend::composite}) {
    const auto r = attention_forward(in.q, in.k, in.v,
                                     AttentionOptions(Kind::quest).causal(true).backend(backend),
                                     true, false);
    ASSERT_TRUE(r.weights.defined());
    EXPECT_FALSE(r.weights.requires_grad());
    EXPECT_TRUE(torch::allclose(r.weights, expected, 1e-12, 1e-12));
    EXPECT_TRUE(torch::allclose(r.weights.sum(-1), torch::ones({2, 3, 5}, torch::kDouble)));
  }
}

TEST(Attention, DropoutOnlyInTrainingAndSeeded) {
  const OracleInputs in = make_inputs({2, 2, 8, 8, 4, 4}, Kind::quest, 0, torch::kDouble, 2);
  for (Backend backend : {Backend::reference, Backend::composite}) {
    const auto base = AttentionOptions(Kind::quest).dropout(0.5).backend(backend);
    const auto eval = attention(in.q, in.k, in.v, AttentionOptions(base).training(false));
    const auto none = attention(in.q, in.k, in.v, AttentionOptions(Kind::quest).backend(backend));
    EXPECT_TRUE(torch::equal(eval, none));
    const auto a = attention(in.q, in.k, in.v, AttentionOptions(base).training(true).seed(1));
    const auto b = attention(in.q, in.k, in.v, AttentionOptions(base).training(true).seed(1));
    const auto c = attention(in.q, in.k, in.v, AttentionOptions(base).training(true).seed(2));
    EXPECT_TRUE(torch::equal(a, b));
    EXPECT_FALSE(torch::allclose(a, c));
    torch::manual_seed(11);  // without a seed, torch's global generator decides
    const auto d = attention(in.q, in.k, in.v, AttentionOptions(base).training(true));
    torch::manual_seed(11);
    const auto e = attention(in.q, in.k, in.v, AttentionOptions(base).training(true));
    EXPECT_TRUE(torch::equal(d, e));
  }
}

TEST(Attention, BackendSelectionSaysWhy) {
  const auto f = torch::randn({1, 2, 5, 4}), d = f.to(torch::kDouble);
  EXPECT_EQ(select_backend(f, f, f).backend, Backend::fused);
  EXPECT_TRUE(select_backend(f, f, f).rejected.empty());
  // float64: fused is not eligible, and the selection says why.
  const BackendSelection s = select_backend(d, d, d);
  EXPECT_EQ(s.backend, Backend::composite);
  ASSERT_EQ(s.rejected.size(), 1u);
  EXPECT_NE(s.rejected[0].find("fused: computes in float32 only, got Double"), std::string::npos) << s.rejected[0];
  // An explicit choice is honoured, or refused with the reason.
  EXPECT_EQ(select_backend(f, f, f, AttentionOptions().backend(Backend::reference)).backend, Backend::reference);
  EXPECT_EQ(select_backend(d, d, d, AttentionOptions().backend(Backend::reference)).backend, Backend::reference);
  EXPECT_NE(testing::error_message([&] { select_backend(d, d, d, AttentionOptions().backend(Backend::fused)); })
                .find("the fused backend cannot run this call: fused: computes in float32 only"),
            std::string::npos);
  // LayerNorm kinds and strided inputs still take the fused path (normalised / copied first).
  const auto strided = torch::randn({1, 2, 4, 5}).transpose(2, 3);
  EXPECT_EQ(select_backend(strided, strided, strided, AttentionOptions(Kind::qk_layernorm)).backend, Backend::fused);
}

// An additive logit bias (torch's float attn_mask) runs on the composite backend: the kind's
// logits plus the bias, -inf blocking a pair and a row it blocks entirely giving zeros; the
// composite's weights are in the autograd graph, so a loss on them reaches q.
TEST(Attention, AttnBiasRunsOnTheCompositeAndWeightsCarryGradients) {
  torch::manual_seed(0);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const Tensor q = torch::randn({2, 3, 4, 8}, opts).requires_grad_(), k = torch::randn({2, 3, 5, 8}, opts),
               v = torch::randn({2, 3, 5, 6}, opts);
  Tensor bias = torch::randn({4, 5}, opts);
  bias.index_put_({1, torch::indexing::Slice(2)}, -INFINITY);
  bias.index_put_({3}, -INFINITY);  // row 3 sees nothing
  const AttentionOptions o = AttentionOptions(Kind::quest).attn_bias(bias);
  const BackendSelection s = select_backend(q.to(torch::kFloat), k.to(torch::kFloat), v.to(torch::kFloat),
                                            AttentionOptions(o).attn_bias(bias.to(torch::kFloat)));
  EXPECT_EQ(s.backend, Backend::composite);
  ASSERT_EQ(s.rejected.size(), 1u);
  EXPECT_NE(s.rejected[0].find("not an attn_bias"), std::string::npos) << s.rejected[0];
  const AttentionOutput r = attention_forward(q, k, v, o, /*need_weights=*/true, false);
  const Tensor kn = k / k.norm(2, -1, true);
  Tensor want = torch::softmax(torch::matmul(q, kn.transpose(-2, -1)) + bias, -1).matmul(v);
  want.index_put_({torch::indexing::Slice(), torch::indexing::Slice(), 3}, 0.0);
  EXPECT_TRUE(torch::allclose(r.output, want, 1e-10, 1e-12));
  EXPECT_EQ(r.weights.index({0, 0, 1, 3}).item<double>(), 0.0);
  ASSERT_TRUE(r.weights.requires_grad());
  const Tensor g = torch::autograd::grad({r.weights.square().sum()}, {q})[0];
  EXPECT_GT(g.abs().max().item<double>(), 0.0);
  EXPECT_THROW(attention(q, k, v, AttentionOptions(o).backend(Backend::reference)), c10::Error);
  EXPECT_NE(testing::error_message([&] { attention(q, k, v, AttentionOptions().attn_bias(torch::zeros({3, 5}, opts))); })
                .find("does not broadcast"), std::string::npos);
}

TEST(Attention, EnvironmentOverrideIsParsedOnce) {
  // The process-wide value is read at the first call (this test binary never sets it).
  EXPECT_FALSE(backend_override().has_value());
  EXPECT_EQ(parse_backend_override("reference"), Backend::reference);
  EXPECT_EQ(parse_backend_override("fused"), Backend::fused);
  EXPECT_FALSE(parse_backend_override("automatic").has_value());
  EXPECT_FALSE(parse_backend_override("").has_value());
  EXPECT_FALSE(parse_backend_override(nullptr).has_value());
  EXPECT_NE(testing::error_message([] { parse_backend_override("turbo"); })
                .find("QUEST_ATTENTION_BACKEND='turbo' is not one of"),
            std::string::npos);
  ::setenv("QUEST_ATTENTION_BACKEND", "reference", 1);  // too late: read once already
  EXPECT_FALSE(backend_override().has_value());
  ::unsetenv("QUEST_ATTENTION_BACKEND");
}

TEST(Attention, HugeQueryNormAndZeroKeyStayFinite) {
  for (Kind kind : all_kinds())
    for (Backend backend : {Backend::reference, Backend::composite})
      for (auto dtype : {torch::kFloat, torch::kDouble}) {
        torch::manual_seed(4);
        auto q = (torch::nn::functional::normalize(torch::randn({1, 2, 5, 8}, dtype)) * 1e4)
                     .requires_grad_();
        auto k = torch::randn({1, 2, 6, 8}, dtype);
        k.index_put_({0, 0, 2}, 0.0);
        k.requires_grad_();
        auto v = torch::randn({1, 2, 6, 3}, dtype).requires_grad_();
        const auto o = attention(q, k, v, AttentionOptions(kind).backend(backend));
        o.sum().backward();
        if (backend == Backend::composite && dtype == torch::kFloat) {
          auto q2 = q.detach().requires_grad_(), k2 = k.detach().requires_grad_(),
               v2 = v.detach().requires_grad_();
          const auto of = attention(q2, k2, v2, AttentionOptions(kind).backend(Backend::fused));
          of.sum().backward();
          for (const Tensor& t : {of, q2.grad(), k2.grad(), v2.grad()})
            EXPECT_TRUE(torch::isfinite(t).all().item<bool>()) << to_string(kind) << " fused";
          EXPECT_TRUE(torch::allclose(of, o, 1e-4, 1e-4)) << to_string(kind) << " fused";
        }
        for (const Tensor& t : {o, q.grad(), k.grad(), v.grad()})
          EXPECT_TRUE(torch::isfinite(t).all().item<bool>())
              << to_string(kind) << " " << to_string(backend);
      }
}

TEST(Attention, QuestInvariantToKeyScaleStandardIsNot) {
  torch::manual_seed(8);
  const auto q = torch::randn({2, 2, 5, 6}, torch::kDouble) * 3;
  const auto k = torch::randn({2, 2, 7, 6}, torch::kDouble);
  const auto v = torch::randn({2, 2, 7, 4}, torch::kDouble);
  auto scaled = k.clone();
  scaled.select(2, 3).mul_(7.5);  // key 3, every batch and head
  for (Backend backend : {Backend::reference, Backend::composite}) {
    const auto o = AttentionOptions(Kind::quest).backend(backend);
    EXPECT_TRUE(torch::allclose(attention(q, k, v, o), attention(q, scaled, v, o), 1e-12, 1e-12));
    const auto s = AttentionOptions(Kind::standard).backend(backend);
    EXPECT_GT((attention(q, k, v, s) - attention(q, scaled, v, s)).abs().max().item<double>(), 1e-3);
  }
}

}  // namespace
}  // namespace quest
