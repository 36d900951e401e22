// The fused kernel against the reference oracle on shapes that cross tile boundaries, every head
// dimension the issue names, both softmax paths (fixed shift and online), every kind.
#include <gtest/gtest.h>

#include "quest/torch/attention.h"
#include "quest/core/fused.h"

namespace quest {
namespace {

using torch::Tensor;

struct FusedCase {
  int64_t nq, nk, d;
};

// max |a - b| <= 1e-5 * max |b| + 1e-6 (fp32; b from the reference, which accumulates in double).
void expect_close(const Tensor& a, const Tensor& b, const std::string& what) {
  const double err = (a - b).abs().max().item<double>();
  const double scale = b.abs().max().item<double>();
  EXPECT_LE(err, 1e-5 * scale + 1e-6) << what << " (max |b| = " << scale << ")";
}

// Output and gradients of sum(O * w) for q, k, v on one backend.
std::vector<Tensor> run(Backend backend, Kind kind, const Tensor& q0, const Tensor& k0,
                        const Tensor& v0, const AttentionOptions& base, const Tensor& w) {
  auto q = q0.detach().requires_grad_(), k = k0.detach().requires_grad_(),
       v = v0.detach().requires_grad_();
  const auto o = attention(q, k, v, AttentionOptions(base).kind(kind).backend(backend));
  (o * w).sum().backward();
  return {o.detach(), q.grad(), k.grad(), v.grad()};
}

const char* kNames[] = {"out", "dq", "dk", "dv"};

void compare(Kind kind, const Tensor& q, const Tensor& k, const Tensor& v,
             const AttentionOptions& base, const std::string& what) {
  const Tensor w = torch::randn({q.size(0), q.size(1), q.size(2), v.size(3)});
  const auto fused = run(Backend::fused, kind, q, k, v, base, w);
  const auto ref = run(Backend::reference, kind, q, k, v, base, w);
  for (int i = 0; i < 4; ++i) expect_close(fused[i], ref[i], what + " " + kNames[i]);
}

TEST(Fused, MatchesReferenceAcrossTilesAndHeadDims) {
  torch::manual_seed(0);
  const std::vector<FusedCase> cases = {{1, 1, 1},    {63, 65, 3},   {65, 63, 16}, {130, 129, 32},
                                        {257, 200, 64}, {70, 140, 80}, {65, 65, 128}};
  for (const FusedCase& c : cases)
    for (Kind kind : all_kinds())
      for (bool causal : {false, true}) {
        const auto q = torch::randn({1, 2, c.nq, c.d}), k = torch::randn({1, 2, c.nk, c.d}),
                   v = torch::randn({1, 2, c.nk, c.d});
        auto mask = torch::rand({1, c.nk}) < 0.2;
        compare(kind, q, k, v, AttentionOptions().causal(causal).key_padding_mask(mask),
                to_string(kind) + " Nq=" + std::to_string(c.nq) + " Nk=" + std::to_string(c.nk) +
                    " D=" + std::to_string(c.d) + (causal ? " causal" : ""));
      }
}

TEST(Fused, BottomRightCausalMatchesReferenceAndComposite) {
  // Nq < Nk (decoding against a cache) and Nq > Nk (the first Nq - Nk rows see no key), across
  // tile boundaries, with padding; fused and composite against the reference.
  torch::manual_seed(3);
  const std::vector<FusedCase> cases = {{1, 70, 16}, {5, 130, 32}, {63, 200, 16}, {130, 65, 32},
                                        {200, 63, 8}, {65, 65, 16}};
  for (const FusedCase& c : cases)
    for (Kind kind : all_kinds()) {
      const auto q = torch::randn({2, 2, c.nq, c.d}), k = torch::randn({2, 2, c.nk, c.d}),
                 v = torch::randn({2, 2, c.nk, c.d});
      const auto mask = torch::rand({2, c.nk}) < 0.2;
      const auto o = AttentionOptions().causal(true).causal_alignment(CausalAlignment::bottom_right)
                         .key_padding_mask(mask);
      const std::string what = to_string(kind) + " Nq=" + std::to_string(c.nq) +
                               " Nk=" + std::to_string(c.nk) + " bottom_right";
      compare(kind, q, k, v, o, what);
      const Tensor w = torch::randn({2, 2, c.nq, c.d});
      const auto composite = run(Backend::composite, kind, q, k, v, o, w);
      const auto ref = run(Backend::reference, kind, q, k, v, o, w);
      for (int i = 0; i < 4; ++i) expect_close(composite[i], ref[i], what + " composite " + kNames[i]);
    }
}

TEST(Fused, BottomRightQueriesAreTheLastRowsOfFullCausalAttention) {
  // What a KV cache relies on: the last Nq queries of a sequence of Nk tokens, attending with
  // bottom-right alignment to all Nk keys, get exactly those rows of full causal attention.
  torch::manual_seed(4);
  for (Kind kind : all_kinds())
    for (int64_t nq : {1, 7, 70}) {
      const int64_t n = 150;
      const auto q = torch::randn({1, 3, n, 32}), k = torch::randn({1, 3, n, 32}),
                 v = torch::randn({1, 3, n, 32});
      for (Backend backend : {Backend::fused, Backend::composite, Backend::reference}) {
        const auto full = attention(q, k, v, AttentionOptions(kind).causal(true).backend(backend));
        const auto last = attention(q.slice(2, n - nq), k, v,
                                    AttentionOptions(kind).causal(true).backend(backend)
                                        .causal_alignment(CausalAlignment::bottom_right));
        expect_close(last, full.slice(2, n - nq),
                     to_string(kind) + " " + to_string(backend) + " Nq=" + std::to_string(nq));
      }
      // Equal lengths: the alignments coincide.
      EXPECT_TRUE(torch::equal(
          attention(q, k, v, AttentionOptions(kind).causal(true)),
          attention(q, k, v, AttentionOptions(kind).causal(true)
                                 .causal_alignment(CausalAlignment::bottom_right))));
    }
}

TEST(Fused, HugeQueryRowsTakeTheOnlinePath) {
  // Row 5 has |q| = 1e4: its block's logit bound is far past the fixed-shift limit, so the block
  // runs the online softmax; other blocks keep the fixed shift. O and dV must be as close to the
  // double reference as torch's fp32 composite path (within 2x). dQ and dK get 1e-3: the
  // FlashAttention-2 backward's D_i = rowsum(dO o O) carries fp32 rounding of O (~1e-7) into
  // dS, and dK = dS^T Q multiplies it by |q| = 1e4 (the composite path's softmax backward sums
  // P dP exactly for a one-hot row; recomputing that here would cost two more GEMMs per tile).
  torch::manual_seed(1);
  for (Kind kind : {Kind::quest, Kind::standard, Kind::qknorm}) {
    auto q = torch::randn({2, 2, 150, 32});
    q.select(2, 5).mul_(1e4 / std::sqrt(32.0));
    const auto k = torch::randn({2, 2, 150, 32}), v = torch::randn({2, 2, 150, 16});
    const auto base = AttentionOptions().causal(true);
    const Tensor w = torch::randn({2, 2, 150, 16});
    const auto fused = run(Backend::fused, kind, q, k, v, base, w);
    const auto composite = run(Backend::composite, kind, q, k, v, base, w);
    const auto ref = run(Backend::reference, kind, q, k, v, base, w);
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(torch::isfinite(fused[i]).all().item<bool>()) << kNames[i];
      const double ef = (fused[i] - ref[i]).abs().max().item<double>();
      const double ec = (composite[i] - ref[i]).abs().max().item<double>();
      const double scale = ref[i].abs().max().item<double>();
      const double bound = (i == 1 || i == 2) ? 1e-3 * scale : 2 * ec + 1e-5 * scale + 1e-6;
      EXPECT_LE(ef, bound) << to_string(kind) << " " << kNames[i] << " composite error " << ec;
    }
    // Rows of the other query blocks (fixed shift) keep the tight tolerance.
    const auto far = torch::indexing::Slice(64, torch::indexing::None);
    expect_close(fused[0].index({"...", far, torch::indexing::Slice()}),
                 ref[0].index({"...", far, torch::indexing::Slice()}), to_string(kind) + " out");
  }
}

TEST(Fused, DiagnosticsMatchReference) {
  torch::manual_seed(2);
  const auto q = torch::randn({2, 3, 70, 16}) * 2, k = torch::randn({2, 3, 90, 16}),
             v = torch::randn({2, 3, 90, 8});
  const auto mask = torch::rand({2, 90}) < 0.1;
  for (Kind kind : all_kinds()) {
    const auto o = AttentionOptions(kind).causal(true).key_padding_mask(mask);
    const auto f = attention_forward(q, k, v, AttentionOptions(o).backend(Backend::fused), false, true);
    const auto r = attention_forward(q, k, v, AttentionOptions(o).backend(Backend::reference), false, true);
    for (int h = 0; h < 3; ++h) {
      const auto &a = *f.diagnostics, &b = *r.diagnostics;
      EXPECT_NEAR(a.q_norm_mean[h], b.q_norm_mean[h], 1e-4) << to_string(kind);
      EXPECT_NEAR(a.q_norm_max[h], b.q_norm_max[h], 1e-4) << to_string(kind);
      EXPECT_NEAR(a.k_norm_mean[h], b.k_norm_mean[h], 1e-4) << to_string(kind);
      EXPECT_NEAR(a.k_norm_max[h], b.k_norm_max[h], 1e-4) << to_string(kind);
      EXPECT_NEAR(a.logit_abs_max[h], b.logit_abs_max[h], 1e-4) << to_string(kind);
      EXPECT_NEAR(a.logit_max[h], b.logit_max[h], 1e-4) << to_string(kind);
      EXPECT_NEAR(a.entropy_mean[h], b.entropy_mean[h], 1e-4) << to_string(kind);
    }
  }
}

TEST(Fused, ThreadCountDoesNotChangeResults) {
  torch::manual_seed(3);
  const auto q = torch::randn({2, 3, 100, 16}), k = torch::randn({2, 3, 100, 16}),
             v = torch::randn({2, 3, 100, 16});
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = attention(q, k, v, AttentionOptions(Kind::quest).backend(Backend::fused));
  at::set_num_threads(2);
  const auto two = attention(q, k, v, AttentionOptions(Kind::quest).backend(Backend::fused));
  at::set_num_threads(before);
  EXPECT_TRUE(torch::equal(one, two));
}

// attention_packed on a (B, N, 3E) projection = attention on its split heads, merged: output,
// the projection's gradient and the head scale's, on every backend (the fused one reads the heads
// in place), with masks, causality, dropout and diagnostics.
TEST(Fused, PackedProjectionEqualsSplitHeads) {
  torch::manual_seed(4);
  const int64_t b = 3, n = 37, h = 4, d = 16;
  for (Kind kind : all_kinds())
    for (Backend backend : {Backend::fused, Backend::composite, Backend::reference, Backend::automatic})
      for (int variant = 0; variant < 3; ++variant) {
        const std::string what = to_string(kind) + " " + to_string(backend) + " variant " + std::to_string(variant);
        const Tensor qkv0 = torch::randn({b, n, 3 * h * d});
        const Tensor head_scale0 = torch::rand({h}) + 0.5;
        Tensor mask = torch::rand({b, n}) < 0.2;
        mask.index_put_({1, 0}, false);
        AttentionOptions o = AttentionOptions(kind).backend(backend).causal(variant == 1)
                                 .key_padding_mask(variant == 2 ? mask : Tensor())
                                 .dropout(variant == 2 ? 0.3 : 0.0).training(true).seed(77);
        if (kind == Kind::qk_layernorm)
          o.q_norm_weight(torch::rand({d}) + 0.5).q_norm_bias(torch::randn({d}) * 0.1)
              .k_norm_weight(torch::rand({d}) + 0.5).k_norm_bias(torch::randn({d}) * 0.1);
        const Tensor w = torch::randn({b, n, h * d});
        auto go = [&](bool packed) {
          const Tensor qkv = qkv0.clone().requires_grad_();
          const Tensor hs = head_scale0.clone().requires_grad_();
          const AttentionOptions oo = AttentionOptions(o).head_scale(kind == Kind::qknorm ? hs : Tensor());
          AttentionOutput r;
          if (packed) {
            r = attention_packed_forward(qkv, h, oo, false, true);
          } else {
            const auto parts = qkv.view({b, n, 3, h, d}).permute({2, 0, 3, 1, 4});
            r = attention_forward(parts[0].contiguous(), parts[1].contiguous(), parts[2].contiguous(), oo,
                                  false, true);
            r.output = r.output.transpose(1, 2).reshape({b, n, h * d});
          }
          (r.output * w).sum().backward();
          return std::tuple{r.output.detach(), qkv.grad(), hs.grad(), *r.diagnostics};
        };
        const auto [out_p, dqkv_p, dhs_p, diag_p] = go(true);
        const auto [out_s, dqkv_s, dhs_s, diag_s] = go(false);
        ASSERT_EQ(out_p.sizes(), (std::vector<int64_t>{b, n, h * d})) << what;
        expect_close(out_p, out_s, what + " out");
        expect_close(dqkv_p, dqkv_s, what + " dqkv");
        EXPECT_GT(dqkv_p.abs().sum().item<double>(), 0) << what;
        if (kind == Kind::qknorm) expect_close(dhs_p, dhs_s, what + " dhead_scale");
        for (int64_t i = 0; i < h; ++i) {
          EXPECT_NEAR(diag_p.entropy_mean[i], diag_s.entropy_mean[i], 1e-4) << what;
          EXPECT_NEAR(diag_p.k_norm_max[i], diag_s.k_norm_max[i], 1e-4) << what;
          EXPECT_NEAR(diag_p.logit_abs_max[i], diag_s.logit_abs_max[i], 1e-4) << what;
        }
      }
}

TEST(Fused, PackedProjectionRejectsBadShapes) {
  const auto expect_error = [](const Tensor& qkv, int64_t heads, const std::string& needle) {
    try {
      attention_packed(qkv, heads);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what_without_backtrace()).find(needle), std::string::npos)
          << e.what_without_backtrace();
    }
  };
  expect_error(torch::randn({2, 5, 4, 12}), 2, "qkv must have shape (B, N, 3 x heads x head_dim)");
  expect_error(torch::randn({2, 5, 20}), 2, "is not 3 x heads (2) x head_dim");
  expect_error(torch::randn({2, 5, 12}), 0, "is not 3 x heads (0) x head_dim");
  expect_error(torch::randn({2, 0, 12}), 2, "is empty");
  expect_error(torch::zeros({2, 5, 12}, torch::kInt), 2, "dtype");
}

TEST(Fused, ReportsItsSimdTarget) { EXPECT_FALSE(fused::simd_target().empty()); }

}  // namespace
}  // namespace quest
