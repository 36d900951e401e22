// The fused kernel against the reference, torch-free, so that it also runs under the sanitizers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>
#include <random>
#include <type_traits>
#include <vector>

#include "quest/core/fused.h"
#include "quest/core/reference.h"
#include "../simd_targets.h"

namespace quest {
namespace {

template <typename T>
View4<T> contiguous(T* data, const AttentionDims& d, int64_t n, int64_t dim) {
  return contiguous_view(data, d.heads, n, dim);
}

struct Case {
  AttentionDims dims;
  Kind kind;
  bool causal, pad, head_scale;
  double dropout;
  int threads = 2;
};

// A case's scalars, head scale and padding mask (every third key padded where c.pad); q, k, v
// are the caller's.
AttentionArgs<float> args_of(const Case& c, const std::vector<float>& scale, const std::vector<char>& pad,
                             uint64_t seed) {
  AttentionArgs<float> a;
  a.dims = c.dims;
  a.q_norm = kind_traits(c.kind).q_norm;
  a.k_norm = kind_traits(c.kind).k_norm;
  a.scale = default_scale(c.kind, c.dims.qk_dim);
  if (c.head_scale) a.head_scale = scale.data();
  a.causal = c.causal;
  if (c.pad) {
    a.key_padding_mask = reinterpret_cast<const bool*>(pad.data());
    a.key_padding_stride[0] = c.dims.k_len;
    a.key_padding_stride[1] = 1;
  }
  a.dropout = c.dropout;
  a.seed = seed;
  return a;
}

// Runs forward and backward on both kernels; returns max relative differences.
void check(const Case& c) {
  const AttentionDims& d = c.dims;
  std::mt19937 rng(42);
  std::normal_distribution<float> n01;
  auto fill = [&](std::vector<float>& x, int64_t n) {
    x.resize(n);
    for (auto& e : x) e = n01(rng);
  };
  std::vector<float> q, k, v, dout, scale = {1.5f, 0.5f, 2.0f, 1.0f};
  fill(q, d.batch * d.heads * d.q_len * d.qk_dim);
  fill(k, d.batch * d.heads * d.k_len * d.qk_dim);
  fill(v, d.batch * d.heads * d.k_len * d.v_dim);
  fill(dout, d.batch * d.heads * d.q_len * d.v_dim);
  std::vector<char> pad(d.batch * d.k_len, 0);
  for (size_t j = 0; j < pad.size(); j += 3) pad[j] = c.pad;
  AttentionArgs<float> a = args_of(c, scale, pad, 5);
  a.q = contiguous<const float>(q.data(), d, d.q_len, d.qk_dim);
  a.k = contiguous<const float>(k.data(), d, d.k_len, d.qk_dim);
  a.v = contiguous<const float>(v.data(), d, d.k_len, d.v_dim);
  ASSERT_TRUE(fused::supports(a));

  const int64_t nout = d.batch * d.heads * d.q_len * d.v_dim, rows = d.batch * d.heads * d.q_len;
  std::vector<float> out_f(nout), out_r(nout), shift(rows), log_sum(rows);
  std::vector<double> lse(rows);
  fused::forward(a, contiguous(out_f.data(), d, d.q_len, d.v_dim), {shift.data(), log_sum.data()},
                 nullptr, c.threads);
  reference::forward(a, contiguous(out_r.data(), d, d.q_len, d.v_dim), lse.data());

  struct Grads {
    std::vector<float> dq, dk, dv, ds;
  } gf, gref;
  for (Grads* g : {&gf, &gref}) {
    g->dq.assign(q.size(), 0);
    g->dk.assign(k.size(), 0);
    g->dv.assign(v.size(), 0);
    g->ds.assign(4, 0);
  }
  auto grads = [&](Grads& g) {
    AttentionGrads<float> ag;
    ag.dq = contiguous(g.dq.data(), d, d.q_len, d.qk_dim);
    ag.dk = contiguous(g.dk.data(), d, d.k_len, d.qk_dim);
    ag.dv = contiguous(g.dv.data(), d, d.k_len, d.v_dim);
    ag.dhead_scale = g.ds.data();
    return ag;
  };
  const View4<const float> dout_view = contiguous<const float>(dout.data(), d, d.q_len, d.v_dim);
  fused::backward(a, contiguous<const float>(out_f.data(), d, d.q_len, d.v_dim), dout_view,
                  {shift.data(), log_sum.data()}, grads(gf), c.threads);
  reference::backward(a, dout_view, lse.data(), grads(gref));

  auto expect_close = [&](const std::vector<float>& x, const std::vector<float>& y,
                          const char* name, double rel = 1e-5) {
    double err = 0, scale_y = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_TRUE(std::isfinite(x[i])) << name;
      err = std::max(err, std::abs(double(x[i]) - y[i]));
      scale_y = std::max(scale_y, std::abs(double(y[i])));
    }
    EXPECT_LE(err, rel * scale_y + 1e-6) << to_string(c.kind) << " " << name;
  };
  expect_close(out_f, out_r, "out");
  expect_close(gf.dq, gref.dq, "dq");
  expect_close(gf.dk, gref.dk, "dk");
  expect_close(gf.dv, gref.dv, "dv");
  // A sum over every (b, i, j) of fp32 products: 1e5 pairs of logits ~30 need a looser bound.
  if (c.head_scale) expect_close(gf.ds, gref.ds, "dhead_scale", 5e-5);
}

TEST(FusedCore, MatchesReferenceOnEverySimdTarget) {
  const AttentionDims small{2, 3, 70, 40, 16, 8}, wide{1, 2, 300, 260, 64, 64}, tiny{1, 1, 1, 1, 1, 1},
      single{1, 1, 300, 420, 32, 16}, late_keys{2, 2, 200, 300, 16, 16};
  std::string targets;
  testing::for_each_simd_target([&](const std::string& target) {
    SCOPED_TRACE(target);
    EXPECT_EQ(fused::simd_target(), target);
    targets += " " + target;
    for (Kind kind : {Kind::standard, Kind::quest, Kind::qnorm, Kind::qknorm}) {
      check({small, kind, false, false, false, 0.0});
      check({small, kind, true, true, true, 0.2});
      check({wide, kind, true, false, false, 0.0});
      check({wide, kind, false, true, true, 0.1});
      check({tiny, kind, false, false, false, 0.0});
      // One head, several threads: the backward splits the key tiles into chunks.
      check({single, kind, true, true, true, 0.1, 2});
      check({single, kind, false, false, false, 0.0, 3});
      // Causal with keys past the last query: no query block sees the last key tile, which must
      // get zero dK, dV rather than the previous tile's (the dV, dK products overwrite their
      // buffers, so such a tile is zeroed by hand).
      check({late_keys, kind, true, false, false, 0.0});
    }
  });
  EXPECT_FALSE(targets.empty());
  std::printf("fused kernel checked on SIMD targets:%s\n", targets.c_str());
}

// bfloat16 storage runs the float32 kernel on each head's converted rows: its results must be
// exactly the float32 kernel's on the same (bf16-representable) inputs — the output and statistics
// equal, dQ, dK, dV rounded to bfloat16 bit for bit — on every target, whatever the layout (q and
// dQ here in (B, N, H, D) memory). With dot, the forward takes bf16 products where the target
// and CPU have them (fused::bf16_dot_runs(), even D), and is then held to the bf16 bound below;
// elsewhere it must still be the float32 kernel bit for bit.
// The bf16 products against the float32 kernel: S differs by float32 rounding only (the same bf16
// inputs, exact products, float32 sums), so the statistics agree to ~1e-6; P rounded to bf16 moves
// each P_ij by at most 2^-8 of itself (bf16's unit roundoff), so |dO_i| <= 2^-8 sum_j P_ij |v_j|
// <= 2^-8 max |v| (plus
// float32 noise). Dropout's kept P is scaled by up to 1 / (1 - p) first.
void check_bf16_products(const Case& c, const std::vector<float>& v, const std::vector<float>& out_b,
                         const std::vector<float>& out_f, const std::vector<float>& shift_b,
                         const std::vector<float>& shift_f, const std::vector<float>& log_sum_b,
                         const std::vector<float>& log_sum_f) {
  float vmax = 0, worst = 0;
  for (float x : v) vmax = std::max(vmax, std::abs(x));
  for (size_t i = 0; i < out_f.size(); ++i) {
    ASSERT_EQ(std::isnan(out_b[i]), std::isnan(out_f[i])) << to_string(c.kind) << " out " << i;
    if (!std::isnan(out_f[i])) worst = std::max(worst, std::abs(out_b[i] - out_f[i]));
  }
  const float bound = (0x1p-8f / (1.0f - static_cast<float>(c.dropout)) + 1e-5f) * vmax;
  EXPECT_LE(worst, bound) << to_string(c.kind) << ": the output's largest error";
  EXPECT_GT(worst, 0.0f) << to_string(c.kind) << ": bf16 products ran, yet the output is float32's bit for bit";
  for (size_t i = 0; i < shift_f.size(); ++i) {
    const float s_tol = 1e-5f * std::max(1.0f, std::abs(shift_f[i]));
    if (std::isfinite(shift_f[i]))
      ASSERT_NEAR(shift_b[i], shift_f[i], s_tol) << to_string(c.kind) << " shift " << i;
    else
      ASSERT_TRUE(shift_b[i] == shift_f[i] || (std::isnan(shift_b[i]) && std::isnan(shift_f[i])))
          << to_string(c.kind) << " shift " << i;
    // logsumexp = shift + log_sum is what the backward reads: compare it
    const float lse_b = shift_b[i] + log_sum_b[i], lse_f = shift_f[i] + log_sum_f[i];
    if (std::isfinite(lse_f)) ASSERT_NEAR(lse_b, lse_f, 1e-5f * std::max(1.0f, std::abs(lse_f))) << to_string(c.kind) << " lse " << i;
  }
}

void check_bf16(const Case& c, bool dot = false) {
  const AttentionDims& d = c.dims;
  std::mt19937 rng(7);
  std::normal_distribution<float> n01;
  auto fill = [&](std::vector<bfloat16>& x, std::vector<float>& f, int64_t n) {
    x.resize(n);
    f.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      x[i] = to_bfloat16(n01(rng));
      f[i] = to_float(x[i]);
    }
  };
  const int64_t nq = d.batch * d.heads * d.q_len * d.qk_dim, nk = d.batch * d.heads * d.k_len * d.qk_dim,
                nv = d.batch * d.heads * d.k_len * d.v_dim, nout = d.batch * d.heads * d.q_len * d.v_dim,
                rows = d.batch * d.heads * d.q_len;
  std::vector<bfloat16> q, k, v, dout;
  std::vector<float> qf, kf, vf, doutf, scale = {1.5f, 0.5f, 2.0f, 1.0f};
  fill(q, qf, nq);
  fill(k, kf, nk);
  fill(v, vf, nv);
  fill(dout, doutf, nout);  // (dO is float32 in the kernel's contract; bf16 values are as good)
  std::vector<char> pad(d.batch * d.k_len, 0);
  for (size_t j = 0; j < pad.size(); j += 3) pad[j] = c.pad;
  auto token_major = [&](auto* data) {  // (B, N, H, D) memory seen as (B, H, N, D)
    View4<std::remove_pointer_t<decltype(data)>> x;
    x.data = data;
    x.stride[0] = d.q_len * d.heads * d.qk_dim;
    x.stride[1] = d.qk_dim;
    x.stride[2] = d.heads * d.qk_dim;
    x.stride[3] = 1;
    return x;
  };
  AttentionArgs<float> a = args_of(c, scale, pad, 9);
  a.q = token_major(static_cast<const float*>(qf.data()));
  a.k = contiguous<const float>(kf.data(), d, d.k_len, d.qk_dim);
  a.v = contiguous<const float>(vf.data(), d, d.k_len, d.v_dim);

  std::vector<float> out_f(nout), out_b(nout), shift_f(rows), log_sum_f(rows), shift_b(rows), log_sum_b(rows);
  fused::forward(a, contiguous(out_f.data(), d, d.q_len, d.v_dim), {shift_f.data(), log_sum_f.data()},
                 nullptr, c.threads);
  fused::Bf16Forward fio{token_major(static_cast<const bfloat16*>(q.data())),
                         contiguous<const bfloat16>(k.data(), d, d.k_len, d.qk_dim),
                         contiguous<const bfloat16>(v.data(), d, d.k_len, d.v_dim),
                         contiguous(out_b.data(), d, d.q_len, d.v_dim)};
  fio.bf16_dot = dot;
  fused::forward(a, fio, {shift_b.data(), log_sum_b.data()}, nullptr, c.threads);
  const bool products = dot && fused::bf16_dot_runs() && d.qk_dim % 2 == 0;
  if (products) check_bf16_products(c, vf, out_b, out_f, shift_b, shift_f, log_sum_b, log_sum_f);

  std::vector<float> dq(nq), dk(nk), dv(nv), ds(4, 0), ds_b(4, 0);
  AttentionGrads<float> g;
  g.dq = token_major(dq.data());
  g.dk = contiguous(dk.data(), d, d.k_len, d.qk_dim);
  g.dv = contiguous(dv.data(), d, d.k_len, d.v_dim);
  g.dhead_scale = ds.data();
  const View4<const float> dout_view = contiguous<const float>(doutf.data(), d, d.q_len, d.v_dim);
  fused::backward(a, contiguous<const float>(out_f.data(), d, d.q_len, d.v_dim), dout_view,
                  {shift_f.data(), log_sum_f.data()}, g, c.threads);
  std::vector<bfloat16> dq_b(nq), dk_b(nk), dv_b(nv);
  fused::Bf16Backward bio{fio.q, fio.k, fio.v, contiguous<const float>(out_b.data(), d, d.q_len, d.v_dim),
                          dout_view, token_major(dq_b.data()), contiguous(dk_b.data(), d, d.k_len, d.qk_dim),
                          contiguous(dv_b.data(), d, d.k_len, d.v_dim)};
  bio.bf16_dot = dot;
  fused::backward(a, bio, {shift_b.data(), log_sum_b.data()}, ds_b.data(), c.threads);

  auto same_bits = [&](const std::vector<bfloat16>& got, const std::vector<float>& want, const char* name) {
    int64_t wrong = 0, first = -1;
    for (size_t i = 0; i < got.size(); ++i) {
      const bool equal = got[i].bits == to_bfloat16(want[i]).bits ||
                         (std::isnan(to_float(got[i])) && std::isnan(want[i]));
      if (!equal && wrong++ == 0) first = static_cast<int64_t>(i);
    }
    EXPECT_EQ(wrong, 0) << to_string(c.kind) << " " << name << ": first at " << first << " of " << got.size();
  };
  if (products) {  // the backward's bf16 products (or float32, for odd Dv) from the forward's
    auto near = [&](const std::vector<bfloat16>& got, const std::vector<float>& want, const char* name) {
      float scale = 0, worst = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(std::isnan(to_float(got[i])), std::isnan(want[i])) << to_string(c.kind) << " " << name << " " << i;
        if (std::isnan(want[i])) continue;
        scale = std::max(scale, std::abs(want[i]));
        worst = std::max(worst, std::abs(to_float(got[i]) - want[i]));
      }
      // bf16 rounding of the gradient (2^-8) plus the output's error carried through D_i
      EXPECT_LE(worst, 0x1p-6f * scale) << to_string(c.kind) << " " << name << ": largest error against max |grad| " << scale;
    };
    near(dq_b, dq, "dq");
    near(dk_b, dk, "dk");
    near(dv_b, dv, "dv");
    return;
  }
  EXPECT_EQ(out_b, out_f) << to_string(c.kind);
  EXPECT_EQ(shift_b, shift_f) << to_string(c.kind);
  EXPECT_EQ(log_sum_b, log_sum_f) << to_string(c.kind);
  same_bits(dq_b, dq, "dq");
  same_bits(dk_b, dk, "dk");
  same_bits(dv_b, dv, "dv");
  if (c.head_scale) EXPECT_EQ(ds_b, ds) << to_string(c.kind);

  // dk_sum / dv_sum: dK and dV added in float32 to what the sums hold (one query-head group's share).
  std::vector<float> dk_sum(nk, 0.5f), dv_sum(nv, -0.25f);
  fused::Bf16Backward sums = bio;
  sums.dk = {};
  sums.dv = {};
  sums.dk_sum = contiguous(dk_sum.data(), d, d.k_len, d.qk_dim);
  sums.dv_sum = contiguous(dv_sum.data(), d, d.k_len, d.v_dim);
  fused::backward(a, sums, {shift_b.data(), log_sum_b.data()}, nullptr, c.threads);
  for (int64_t i = 0; i < nk; ++i) ASSERT_EQ(dk_sum[i], 0.5f + dk[i]) << to_string(c.kind) << " dk_sum " << i;
  for (int64_t i = 0; i < nv; ++i) ASSERT_EQ(dv_sum[i], -0.25f + dv[i]) << to_string(c.kind) << " dv_sum " << i;
}

TEST(FusedCore, Bf16StorageIsTheFloat32KernelRoundedOnEverySimdTarget) {
  const AttentionDims small{2, 3, 70, 40, 16, 8}, wide{1, 2, 300, 260, 64, 64}, tiny{1, 1, 1, 1, 1, 1},
      single{1, 1, 300, 420, 32, 16};
  testing::for_each_simd_target([&](const std::string& target) {
    SCOPED_TRACE(target);
    for (Kind kind : {Kind::standard, Kind::quest, Kind::qknorm}) {
      check_bf16({small, kind, false, false, false, 0.0});
      check_bf16({small, kind, true, true, true, 0.2});
      check_bf16({wide, kind, true, false, false, 0.0});
      check_bf16({wide, kind, false, true, true, 0.1, 3});
      check_bf16({tiny, kind, false, false, false, 0.0});
      check_bf16({single, kind, true, true, true, 0.1, 2});  // one head, split key tiles
    }
  });
}

// The forward's bf16 products (vdpbf16ps, where the CPU has AVX512_BF16) on every target: held to
// the bf16 bound where they run, the float32 kernel bit for bit where they do not (other targets,
// odd D). Odd key counts leave a half-filled pair in the last tile; 300 queries make two query
// blocks, whose packed keys are then shared across work items.
TEST(FusedCore, Bf16ProductsHoldTheirBoundOnEverySimdTarget) {
  // odd D: no products; even D, odd Dv: products in the forward only (the backward's need pairs
  // along Dv too)
  const AttentionDims small{2, 3, 70, 41, 16, 8}, wide{1, 2, 300, 261, 64, 64}, odd{1, 2, 33, 17, 5, 3},
      odd_v{1, 2, 33, 17, 6, 3}, single{1, 1, 300, 421, 32, 16}, late_keys{2, 2, 200, 300, 16, 16};
  std::string ran;
  testing::for_each_simd_target([&](const std::string& target) {
    SCOPED_TRACE(target);
    if (fused::bf16_dot_runs()) ran += " " + target;
    for (Kind kind : {Kind::standard, Kind::quest, Kind::qknorm}) {
      check_bf16({small, kind, false, false, false, 0.0}, true);
      check_bf16({small, kind, true, true, true, 0.2}, true);
      check_bf16({wide, kind, true, false, false, 0.0}, true);
      check_bf16({wide, kind, false, true, true, 0.1, 3}, true);
      check_bf16({odd, kind, true, false, true, 0.0}, true);
      check_bf16({odd_v, kind, false, true, false, 0.0}, true);
      check_bf16({single, kind, true, true, true, 0.1, 2}, true);
      check_bf16({late_keys, kind, true, false, false, 0.0}, true);
    }
  });
  std::printf("bf16 products ran on SIMD targets:%s\n", ran.empty() ? " none (no AVX512_BF16)" : ran.c_str());
}

// The forward reports a NaN or infinity in any q, k or v element (its callers' finiteness check
// rests on it): every element position of a small case (one query block per head), sampled ones
// of a case with several query blocks, float32 and bf16 storage (with and without bf16 products),
// hidden keys (padded, or causally later than every query) included; finite inputs report true.
TEST(FusedCore, ForwardReportsEveryNonFiniteInputOnEverySimdTarget) {
  const AttentionDims small{2, 2, 5, 7, 4, 6}, blocks{1, 2, 300, 40, 8, 4};
  const std::vector<float> scale = {1.5f, 0.5f};
  testing::for_each_simd_target([&](const std::string& target) {
    SCOPED_TRACE(target);
    for (const AttentionDims& d : {small, blocks}) {
      const Case c{d, Kind::quest, true, true, false, 0.0};
      std::vector<char> pad(d.batch * d.k_len, 0);
      for (size_t j = 0; j < pad.size(); j += 3) pad[j] = 1;
      std::mt19937 rng(3);
      std::normal_distribution<float> n01;
      std::vector<float> qkv[3] = {std::vector<float>(d.batch * d.heads * d.q_len * d.qk_dim),
                                   std::vector<float>(d.batch * d.heads * d.k_len * d.qk_dim),
                                   std::vector<float>(d.batch * d.heads * d.k_len * d.v_dim)};
      for (auto& x : qkv)
        for (auto& e : x) e = n01(rng);
      const int64_t rows = d.batch * d.heads * d.q_len;
      std::vector<float> out(rows * d.v_dim), shift(rows), log_sum(rows);
      // 0: float32, 1: bf16 storage, 2: bf16 storage with bf16 products
      auto finite = [&](int mode) {
        AttentionArgs<float> a = args_of(c, scale, pad, 1);
        a.q = contiguous<const float>(qkv[0].data(), d, d.q_len, d.qk_dim);
        a.k = contiguous<const float>(qkv[1].data(), d, d.k_len, d.qk_dim);
        a.v = contiguous<const float>(qkv[2].data(), d, d.k_len, d.v_dim);
        const View4<float> o = contiguous(out.data(), d, d.q_len, d.v_dim);
        if (mode == 0) return fused::forward(a, o, {shift.data(), log_sum.data()}, nullptr, 2);
        std::vector<bfloat16> x16[3];
        for (int t = 0; t < 3; ++t)
          for (float e : qkv[t]) x16[t].push_back(to_bfloat16(e));
        fused::Bf16Forward io{contiguous<const bfloat16>(x16[0].data(), d, d.q_len, d.qk_dim),
                              contiguous<const bfloat16>(x16[1].data(), d, d.k_len, d.qk_dim),
                              contiguous<const bfloat16>(x16[2].data(), d, d.k_len, d.v_dim), o};
        io.bf16_dot = mode == 2;
        return fused::forward(a, io, {shift.data(), log_sum.data()}, nullptr, 2);
      };
      for (int mode = 0; mode < 3; ++mode) {
        EXPECT_TRUE(finite(mode)) << "mode " << mode;
        for (int t = 0; t < 3; ++t) {
          const size_t n = qkv[t].size(), step = n < 200 ? 1 : n / 23;
          for (size_t at = 0; at < n; at += step) {
            const float kept = qkv[t][at];
            for (float bad : {NAN, INFINITY, -INFINITY}) {
              qkv[t][at] = bad;
              EXPECT_FALSE(finite(mode)) << "mode " << mode << ", tensor " << t << ", element " << at << " = " << bad;
            }
            qkv[t][at] = kept;
          }
        }
      }
    }
  });
}

// set_simd_target (and QUEST_SIMD_TARGET through it) runs the named target's code, still
// correct; "" goes back to the best; an unknown name is refused with the names there are.
TEST(FusedCore, SetSimdTargetRunsThatTargetsCode) {
  fused::set_simd_target("");
  const std::vector<std::string> all = fused::simd_targets();
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(fused::simd_target(), all.front());
  for (const std::string& t : all) {
    SCOPED_TRACE(t);
    fused::set_simd_target(t);
    EXPECT_EQ(fused::simd_target(), t);
    EXPECT_EQ(fused::simd_targets().front(), t);  // the better ones are off
    check({{2, 3, 70, 40, 16, 8}, Kind::quest, true, true, false, 0.0});
  }
  fused::set_simd_target("");
  EXPECT_EQ(fused::simd_target(), all.front());
  try {
    fused::set_simd_target("AVX9");
    ADD_FAILURE() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("\"AVX9\" is not a SIMD target"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(all.back()), std::string::npos) << e.what();
  }
  EXPECT_EQ(fused::simd_target(), all.front());
}

TEST(CoreTypes, Bfloat16RoundsToNearestEven) {
  EXPECT_EQ(to_bfloat16(1.0f).bits, 0x3f80);
  EXPECT_EQ(to_float(to_bfloat16(1.0f + 0x1p-8f)), 1.0f);                  // a tie: to even (down)
  EXPECT_EQ(to_float(to_bfloat16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);    // a tie: to even (up)
  EXPECT_EQ(to_float(to_bfloat16(1.0f + 0x1p-8f + 0x1p-12f)), 1.0f + 0x1p-7f);  // above the tie
  EXPECT_EQ(to_float(to_bfloat16(-2.5f)), -2.5f);                          // exact stays exact
  EXPECT_TRUE(std::isnan(to_float(to_bfloat16(std::nanf("")))));
  EXPECT_TRUE(std::isinf(to_float(to_bfloat16(3.4e38f))));                 // rounds up past max
  EXPECT_EQ(to_float(to_bfloat16(-INFINITY)), -INFINITY);
}

// The kernel keeps each thread's buffers from call to call. A call with NaN in every input, at a
// larger shape with more threads, leaves NaN in all of them; calls after it must still match the
// reference (check() also requires finite results), as they would in a fresh process.
TEST(FusedCore, CallsShareNoStateThroughTheirBuffers) {
  const AttentionDims big{2, 2, 300, 290, 64, 40};
  const float nan = std::nanf("");
  std::vector<float> q(2 * 2 * 300 * 64, nan), k(2 * 2 * 290 * 64, nan), v(2 * 2 * 290 * 40, nan),
      dout(2 * 2 * 300 * 40, nan), out(dout.size()), dq(q.size()), dk(k.size()), dv(v.size()),
      shift(2 * 2 * 300), log_sum(shift.size());
  AttentionArgs<float> a;
  a.dims = big;
  a.q = contiguous<const float>(q.data(), big, big.q_len, big.qk_dim);
  a.k = contiguous<const float>(k.data(), big, big.k_len, big.qk_dim);
  a.v = contiguous<const float>(v.data(), big, big.k_len, big.v_dim);
  a.q_norm = a.k_norm = Norm::l2;
  a.scale = 1.0;
  for (int threads : {1, 2, 3}) {
    fused::forward(a, contiguous(out.data(), big, big.q_len, big.v_dim), {shift.data(), log_sum.data()},
                   nullptr, threads);
    AttentionGrads<float> g;
    g.dq = contiguous(dq.data(), big, big.q_len, big.qk_dim);
    g.dk = contiguous(dk.data(), big, big.k_len, big.qk_dim);
    g.dv = contiguous(dv.data(), big, big.k_len, big.v_dim);
    fused::backward(a, contiguous<const float>(out.data(), big, big.q_len, big.v_dim),
                    contiguous<const float>(dout.data(), big, big.q_len, big.v_dim),
                    {shift.data(), log_sum.data()}, g, threads);
    ASSERT_TRUE(std::isnan(out[0]) && std::isnan(dq[0]));
  }
  for (Kind kind : {Kind::standard, Kind::quest}) {
    check({{2, 3, 70, 40, 16, 8}, kind, false, false, false, 0.0});
    check({{1, 2, 130, 150, 32, 24}, kind, true, true, true, 0.1});
    check({{1, 1, 300, 420, 32, 16}, kind, false, false, false, 0.0, 3});
  }
}

// The installed entry points check their arguments: a caller without the LibTorch layer's
// validation gets an exception naming the problem, not a crash.
TEST(CoreEntryPoints, RejectBadArgumentsWithAReason) {
  const AttentionDims d{1, 1, 4, 4, 8, 8};
  std::vector<float> q(32, 0.5f), out(32), shift(4), log_sum(4), dq(32), dk(32), dv(32);
  std::vector<double> lse(4);
  AttentionArgs<float> a;
  a.dims = d;
  a.q = a.k = a.v = contiguous_view<const float>(q.data(), 1, 4, 8);
  const auto o = contiguous_view(out.data(), 1, 4, 8);
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  auto fused_forward = [&](const AttentionArgs<float>& args) {
    return message([&] { fused::forward(args, o, {shift.data(), log_sum.data()}, nullptr, 1); });
  };
  EXPECT_EQ(fused_forward(a), "no exception");
  auto bad = a;
  bad.dims.k_len = 0;
  EXPECT_NE(fused_forward(bad).find("quest::fused::forward: every dimension must be >= 1"), std::string::npos);
  bad = a;
  bad.k.data = nullptr;
  EXPECT_NE(fused_forward(bad).find("q, k and v must not be null"), std::string::npos);
  bad = a;
  bad.dropout = 1.0;
  EXPECT_NE(fused_forward(bad).find("dropout must be in [0, 1)"), std::string::npos);
  bad = a;
  bad.l2_eps = 0;
  EXPECT_NE(fused_forward(bad).find("l2_eps and layernorm_eps must be > 0"), std::string::npos);
  bad = a;
  bad.v.stride[3] = 2;
  EXPECT_NE(fused_forward(bad).find("unit stride along D"), std::string::npos);
  EXPECT_FALSE(fused::supports(bad));
  bad = a;
  bad.q_norm = Norm::layer;
  EXPECT_NE(fused_forward(bad).find("LayerNorm is not fused"), std::string::npos);
  EXPECT_NE(message([&] { fused::forward(a, o, {nullptr, log_sum.data()}, nullptr, 1); }).find("stats must not be null"),
            std::string::npos);
  AttentionGrads<float> g{contiguous_view(dq.data(), 1, 4, 8), contiguous_view(dk.data(), 1, 4, 8), {}};
  EXPECT_NE(message([&] {
              const auto co = contiguous_view<const float>(out.data(), 1, 4, 8);
              fused::backward(a, co, co, {shift.data(), log_sum.data()}, g, 1);
            }).find("quest::fused::backward: out, dout, stats and dq/dk/dv must not be null"),
            std::string::npos);
  // The bfloat16 entry points check the same, with their own tensors.
  std::vector<bfloat16> qb(32, to_bfloat16(0.5f)), gb(32);
  const auto vb = contiguous_view<const bfloat16>(qb.data(), 1, 4, 8);
  fused::Bf16Forward fio{vb, vb, vb, o};
  EXPECT_EQ(message([&] { fused::forward(a, fio, {shift.data(), log_sum.data()}, nullptr, 1); }), "no exception");
  fio.k.data = nullptr;
  EXPECT_NE(message([&] { fused::forward(a, fio, {shift.data(), log_sum.data()}, nullptr, 1); })
                .find("quest::fused::forward: q, k and v must not be null"),
            std::string::npos);
  const auto co = contiguous_view<const float>(out.data(), 1, 4, 8);
  fused::Bf16Backward bio{vb, vb, vb, co, co, contiguous_view(gb.data(), 1, 4, 8), {}, {}};
  EXPECT_NE(message([&] { fused::backward(a, bio, {shift.data(), log_sum.data()}, nullptr, 1); })
                .find("quest::fused::backward: out, dout, stats and dq/dk/dv must not be null"),
            std::string::npos);
  bio.dk = bio.dv = contiguous_view(gb.data(), 1, 4, 8);
  bio.dq.stride[3] = 2;
  EXPECT_NE(message([&] { fused::backward(a, bio, {shift.data(), log_sum.data()}, nullptr, 1); })
                .find("unit stride along D"),
            std::string::npos);
  bad = a;
  bad.scale = NAN;
  EXPECT_NE(message([&] { reference::forward(bad, o, lse.data()); }).find("quest::reference::forward: scale must be finite"),
            std::string::npos);
  EXPECT_NE(message([&] { reference::forward(a, o, nullptr); }).find("out and lse must not be null"), std::string::npos);
  EXPECT_NE(message([&] {
              reference::backward(a, View4<const float>{}, lse.data(), AttentionGrads<float>{});
            }).find("quest::reference::backward"),
            std::string::npos);
}

}  // namespace
}  // namespace quest
