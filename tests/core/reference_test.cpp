// Torch-free tests of the reference kernel: finite-difference gradients in fp64, edge cases,
// invariances. Built with and without the sanitizers.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "quest/core/reference.h"

namespace quest {
namespace {

// One problem with contiguous (B, H, N, D) buffers and every optional parameter.
struct Problem {
  AttentionDims dims;
  Kind kind = Kind::quest;
  std::vector<double> q, k, v, head_scale, qw, qb, kw, kb;
  std::vector<char> pad;  // (B, Nk) as bytes, viewed as bool
  bool use_head_scale = false, use_pad = false, causal = false;
  double dropout = 0;
  uint64_t seed = 7;

  Problem(AttentionDims d, Kind kind_, uint64_t rng_seed = 1) : dims(d), kind(kind_) {
    std::mt19937_64 rng(rng_seed);
    std::normal_distribution<double> n01;
    auto fill = [&](std::vector<double>& x, size_t n, double mean = 0) {
      x.resize(n);
      for (auto& e : x) e = mean + n01(rng);
    };
    fill(q, d.batch * d.heads * d.q_len * d.qk_dim);
    fill(k, d.batch * d.heads * d.k_len * d.qk_dim);
    fill(v, d.batch * d.heads * d.k_len * d.v_dim);
    fill(head_scale, d.heads, 2.0);
    fill(qw, d.qk_dim, 1.0);
    fill(qb, d.qk_dim);
    fill(kw, d.qk_dim, 1.0);
    fill(kb, d.qk_dim);
    pad.assign(d.batch * d.k_len, 0);
  }

  template <typename T>
  static View4<T> view(T* data, int64_t /*b*/, int64_t h, int64_t n, int64_t d) {
    return contiguous_view(data, h, n, d);
  }

  AttentionArgs<double> args() const {
    AttentionArgs<double> a;
    a.dims = dims;
    const auto& d = dims;
    a.q = view<const double>(q.data(), d.batch, d.heads, d.q_len, d.qk_dim);
    a.k = view<const double>(k.data(), d.batch, d.heads, d.k_len, d.qk_dim);
    a.v = view<const double>(v.data(), d.batch, d.heads, d.k_len, d.v_dim);
    a.q_norm = kind_traits(kind).q_norm;
    a.k_norm = kind_traits(kind).k_norm;
    a.scale = default_scale(kind, d.qk_dim);
    if (use_head_scale) a.head_scale = head_scale.data();
    if (kind == Kind::qk_layernorm) {
      a.q_ln_weight = qw.data();
      a.q_ln_bias = qb.data();
      a.k_ln_weight = kw.data();
      a.k_ln_bias = kb.data();
    }
    a.causal = causal;
    if (use_pad) {
      a.key_padding_mask = reinterpret_cast<const bool*>(pad.data());
      a.key_padding_stride[0] = d.k_len;
      a.key_padding_stride[1] = 1;
    }
    a.dropout = dropout;
    a.seed = seed;
    return a;
  }

  std::vector<double> forward(std::vector<double>* lse = nullptr) const {
    const auto& d = dims;
    std::vector<double> out(d.batch * d.heads * d.q_len * d.v_dim), l(d.batch * d.heads * d.q_len);
    reference::forward<double>(args(), view(out.data(), d.batch, d.heads, d.q_len, d.v_dim),
                               l.data());
    if (lse) *lse = l;
    return out;
  }
};

// Loss = sum(out * w) for fixed random w, so dout = w.
std::vector<double> loss_weights(size_t n) {
  std::mt19937_64 rng(99);
  std::normal_distribution<double> n01;
  std::vector<double> w(n);
  for (auto& e : w) e = n01(rng);
  return w;
}

double loss(const Problem& p, const std::vector<double>& w) {
  const auto out = p.forward();
  double s = 0;
  for (size_t i = 0; i < out.size(); ++i) s += out[i] * w[i];
  return s;
}

struct Grads {
  std::vector<double> dq, dk, dv, dscale, dqw, dqb, dkw, dkb;
};

Grads analytic(const Problem& p, const std::vector<double>& w) {
  const auto& d = p.dims;
  std::vector<double> lse;
  p.forward(&lse);
  Grads g;
  g.dq.assign(p.q.size(), 0);
  g.dk.assign(p.k.size(), 0);
  g.dv.assign(p.v.size(), 0);
  g.dscale.assign(d.heads, 0);
  for (auto* x : {&g.dqw, &g.dqb, &g.dkw, &g.dkb}) x->assign(d.qk_dim, 0);
  AttentionGrads<double> ag;
  ag.dq = Problem::view(g.dq.data(), d.batch, d.heads, d.q_len, d.qk_dim);
  ag.dk = Problem::view(g.dk.data(), d.batch, d.heads, d.k_len, d.qk_dim);
  ag.dv = Problem::view(g.dv.data(), d.batch, d.heads, d.k_len, d.v_dim);
  ag.dhead_scale = g.dscale.data();
  ag.dq_ln_weight = g.dqw.data();
  ag.dq_ln_bias = g.dqb.data();
  ag.dk_ln_weight = g.dkw.data();
  ag.dk_ln_bias = g.dkb.data();
  reference::backward<double>(
      p.args(), Problem::view<const double>(w.data(), d.batch, d.heads, d.q_len, d.v_dim),
      lse.data(), ag);
  return g;
}

// Central differences on every element of `x` (a member of p), compared with `grad`.
void expect_fd_matches(Problem& p, std::vector<double>& x, const std::vector<double>& grad,
                       const std::vector<double>& w, const char* name) {
  const double h = 1e-6;
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss(p, w);
    x[i] = saved - h;
    const double down = loss(p, w);
    x[i] = saved;
    const double fd = (up - down) / (2 * h);
    EXPECT_NEAR(grad[i], fd, 1e-6 * (1 + std::abs(fd))) << name << "[" << i << "]";
  }
}

struct Case {
  Kind kind;
  bool causal, pad, head_scale;
  double dropout;
  AttentionDims dims;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << to_string(c.kind) << " causal=" << c.causal << " pad=" << c.pad
      << " head_scale=" << c.head_scale << " dropout=" << c.dropout << " B,H,Nq,Nk,Dk,Dv="
      << c.dims.batch << "," << c.dims.heads << "," << c.dims.q_len << "," << c.dims.k_len << ","
      << c.dims.qk_dim << "," << c.dims.v_dim;
}

class FiniteDifference : public ::testing::TestWithParam<Case> {};

TEST_P(FiniteDifference, EveryGradientMatches) {
  const Case c = GetParam();
  Problem p(c.dims, c.kind);
  p.causal = c.causal;
  p.use_pad = c.pad;
  p.use_head_scale = c.head_scale;
  p.dropout = c.dropout;
  if (c.pad) p.pad[1] = 1;  // batch 0, key 1 is padding
  const auto w = loss_weights(c.dims.batch * c.dims.heads * c.dims.q_len * c.dims.v_dim);
  const Grads g = analytic(p, w);
  expect_fd_matches(p, p.q, g.dq, w, "dq");
  expect_fd_matches(p, p.k, g.dk, w, "dk");
  expect_fd_matches(p, p.v, g.dv, w, "dv");
  if (c.head_scale) expect_fd_matches(p, p.head_scale, g.dscale, w, "dhead_scale");
  if (c.kind == Kind::qk_layernorm) {
    expect_fd_matches(p, p.qw, g.dqw, w, "dq_ln_weight");
    expect_fd_matches(p, p.qb, g.dqb, w, "dq_ln_bias");
    expect_fd_matches(p, p.kw, g.dkw, w, "dk_ln_weight");
    expect_fd_matches(p, p.kb, g.dkb, w, "dk_ln_bias");
  }
}

std::vector<Case> fd_cases() {
  std::vector<Case> cases;
  const AttentionDims self{2, 2, 5, 5, 3, 4}, cross{1, 2, 4, 6, 5, 2}, tiny{1, 1, 1, 1, 1, 1};
  for (Kind kind : all_kinds()) {
    for (bool causal : {false, true})
      for (bool pad : {false, true}) cases.push_back({kind, causal, pad, false, 0.0, self});
    cases.push_back({kind, false, false, true, 0.0, self});
    cases.push_back({kind, false, false, false, 0.3, self});
    cases.push_back({kind, true, true, true, 0.2, cross});
    cases.push_back({kind, false, false, false, 0.0, tiny});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllKinds, FiniteDifference, ::testing::ValuesIn(fd_cases()),
                         [](const auto& info) {
                           const Case& c = info.param;
                           return to_string(c.kind) + (c.causal ? "_causal" : "") +
                                  (c.pad ? "_pad" : "") + (c.head_scale ? "_headscale" : "") +
                                  (c.dropout > 0 ? "_dropout" : "") + "_Nq" +
                                  std::to_string(c.dims.q_len) + "Nk" +
                                  std::to_string(c.dims.k_len) + "D" +
                                  std::to_string(c.dims.qk_dim) + "_" +
                                  std::to_string(info.index);
                         });

bool all_finite(const std::vector<double>& x) {
  for (double e : x)
    if (!std::isfinite(e)) return false;
  return true;
}

TEST(Reference, FullyMaskedRowGivesZerosAndZeroGradients) {
  for (Kind kind : all_kinds()) {
    Problem p({1, 2, 3, 3, 4, 4}, kind);
    p.use_pad = true;
    p.pad.assign(3, 1);  // every key is padding
    std::vector<double> lse;
    const auto out = p.forward(&lse);
    for (double o : out) EXPECT_EQ(o, 0.0) << to_string(kind);
    for (double l : lse) EXPECT_TRUE(std::isinf(l) && l < 0);
    const Grads g = analytic(p, loss_weights(out.size()));
    for (const auto* x : {&g.dq, &g.dk, &g.dv})
      for (double e : *x) EXPECT_EQ(e, 0.0) << to_string(kind);
  }
}

TEST(Reference, AllZeroKeyStaysFinite) {
  for (Kind kind : all_kinds()) {
    Problem p({1, 1, 4, 4, 3, 2}, kind);
    for (int c = 0; c < 3; ++c) p.k[2 * 3 + c] = 0.0;  // key 2 is the zero vector
    const auto out = p.forward();
    EXPECT_TRUE(all_finite(out)) << to_string(kind);
    const Grads g = analytic(p, loss_weights(out.size()));
    EXPECT_TRUE(all_finite(g.dq) && all_finite(g.dk) && all_finite(g.dv)) << to_string(kind);
  }
}

TEST(Reference, HugeQueryNormDoesNotOverflow) {
  for (Kind kind : all_kinds()) {
    Problem p({1, 1, 3, 5, 4, 2}, kind);
    for (auto& e : p.q) e *= 1e4 / 2.0;  // |q| ~ 1e4
    const auto out = p.forward();
    EXPECT_TRUE(all_finite(out)) << to_string(kind);
    const Grads g = analytic(p, loss_weights(out.size()));
    EXPECT_TRUE(all_finite(g.dq) && all_finite(g.dk) && all_finite(g.dv)) << to_string(kind);
  }
}

TEST(Reference, QuestIgnoresKeyScaleStandardDoesNot) {
  for (Kind kind : {Kind::quest, Kind::standard}) {
    Problem p({1, 2, 4, 6, 8, 3}, kind);
    const auto before = p.forward();
    const int64_t key = 3;  // scale key 3 of every head by 5
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t c = 0; c < 8; ++c) p.k[(h * 6 + key) * 8 + c] *= 5.0;
    const auto after = p.forward();
    double diff = 0;
    for (size_t i = 0; i < before.size(); ++i) diff = std::max(diff, std::abs(before[i] - after[i]));
    if (kind == Kind::quest)
      EXPECT_LT(diff, 1e-12);
    else
      EXPECT_GT(diff, 1e-3);
  }
}

TEST(Reference, QuestLogitsBoundedByQueryNorm) {
  Problem p({1, 1, 6, 9, 5, 2}, Kind::quest);
  std::vector<HeadDiagnosticsPartial> diag(1);
  std::vector<double> out(6 * 2), lse(6);
  reference::forward<double>(p.args(), Problem::view(out.data(), 1, 1, 6, 2), lse.data(),
                             diag.data());
  EXPECT_LE(diag[0].logit_abs_max, diag[0].q_norm_max + 1e-12);
  EXPECT_GT(diag[0].entropy_sum, 0);
  EXPECT_EQ(diag[0].q_count, 6);
  EXPECT_EQ(diag[0].k_count, 9);
}

TEST(Reference, FloatAgreesWithDouble) {
  Problem p({2, 2, 7, 5, 6, 3}, Kind::qk_layernorm);
  p.causal = true;
  const auto ref = p.forward();
  const AttentionArgs<double> ad = p.args();
  std::vector<float> qf(p.q.begin(), p.q.end()), kf(p.k.begin(), p.k.end()),
      vf(p.v.begin(), p.v.end()), qw(p.qw.begin(), p.qw.end()), qb(p.qb.begin(), p.qb.end()),
      kw(p.kw.begin(), p.kw.end()), kb(p.kb.begin(), p.kb.end());
  AttentionArgs<float> af;
  af.dims = ad.dims;
  af.q = Problem::view<const float>(qf.data(), 2, 2, 7, 6);
  af.k = Problem::view<const float>(kf.data(), 2, 2, 5, 6);
  af.v = Problem::view<const float>(vf.data(), 2, 2, 5, 3);
  af.q_norm = af.k_norm = Norm::layer;
  af.scale = ad.scale;
  af.q_ln_weight = qw.data();
  af.q_ln_bias = qb.data();
  af.k_ln_weight = kw.data();
  af.k_ln_bias = kb.data();
  af.causal = true;
  std::vector<float> out(ref.size());
  std::vector<double> lse(2 * 2 * 7);
  reference::forward<float>(af, Problem::view(out.data(), 2, 2, 7, 3), lse.data());
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(out[i], ref[i], 1e-5 * (1 + std::abs(ref[i])));
}

TEST(Diagnostics, EntropyRoundedBelowZeroIsZeroAndNaNStays) {
  std::vector<HeadDiagnosticsPartial> parts(3);
  parts[0].entropy_sum = -2e-7, parts[0].entropy_rows = 2;  // one-hot rows: lse - sum p s rounds below 0
  parts[1].entropy_sum = 1.5, parts[1].entropy_rows = 3;
  parts[2].entropy_sum = std::numeric_limits<double>::quiet_NaN(), parts[2].entropy_rows = 1;
  const HeadDiagnostics d = reduce_partials(parts, 3);
  EXPECT_EQ(d.entropy_mean[0], 0.0);
  EXPECT_FALSE(std::signbit(d.entropy_mean[0]));
  EXPECT_DOUBLE_EQ(d.entropy_mean[1], 0.5);
  EXPECT_TRUE(std::isnan(d.entropy_mean[2]));
}

TEST(Dropout, KeepFractionMatchesRateAndSeedDecides) {
  const AttentionDims d{2, 3, 40, 50, 1, 1};
  std::vector<char> a(d.batch * d.heads * d.q_len * d.k_len), b(a.size()), c(a.size());
  dropout_keep_mask(1, 0.3, d, reinterpret_cast<bool*>(a.data()));
  dropout_keep_mask(1, 0.3, d, reinterpret_cast<bool*>(b.data()));
  dropout_keep_mask(2, 0.3, d, reinterpret_cast<bool*>(c.data()));
  double kept = 0;
  for (char e : a) kept += e;
  EXPECT_NEAR(kept / a.size(), 0.7, 0.02);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(Kinds, NamesRoundTrip) {
  for (Kind kind : all_kinds()) EXPECT_EQ(parse_kind(to_string(kind)), kind);
  EXPECT_FALSE(parse_kind("flash").has_value());
  EXPECT_EQ(default_scale(Kind::standard, 64), 0.125);
  EXPECT_EQ(default_scale(Kind::quest, 64), 1.0);
  EXPECT_EQ(default_scale(Kind::qknorm, 64), 8.0);
}

}  // namespace
}  // namespace quest
