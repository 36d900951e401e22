// The NaN/Inf contract (quest/core/problem.h): with check_finite off, a non-finite input reaches
// exactly the outputs and gradients that the composite (torch's matmul -> softmax -> matmul) makes
// non-finite, on every backend, forward and backward, for every kind, mask and dropout; rows that
// see no key stay zero. One element at a time: NaN, +inf and -inf in q, k, v (a visible and a
// masked position), the head scale and the LayerNorm affine.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "quest/torch/attention.h"
#include "quest/torch/nn/multihead_attention.h"
#include "../simd_targets.h"

namespace quest {
namespace {

using torch::Tensor;

enum class Mask { none, causal, padding, causal_padding, batch_padded };
const char* name(Mask m) {
  switch (m) {
    case Mask::none: return "none";
    case Mask::causal: return "causal";
    case Mask::padding: return "padding";
    case Mask::causal_padding: return "causal+padding";
    case Mask::batch_padded: return "batch-1-all-padded";
  }
  return "?";
}

constexpr int64_t B = 2, H = 2, Nq = 6, Nk = 7, D = 8, Dv = 5;

// Leaf tensors of one call; poke() sets one element before the call.
struct Leaves {
  Tensor q, k, v, head_scale, qw, qb, kw, kb;
  std::vector<std::pair<std::string, Tensor*>> all() {
    return {{"q", &q}, {"k", &k}, {"v", &v}, {"head_scale", &head_scale}, {"q_norm_weight", &qw},
            {"q_norm_bias", &qb}, {"k_norm_weight", &kw}, {"k_norm_bias", &kb}};
  }
};

Leaves make_leaves(Kind kind) {
  torch::manual_seed(7);
  Leaves l;
  l.q = torch::randn({B, H, Nq, D});
  l.k = torch::randn({B, H, Nk, D});
  l.v = torch::randn({B, H, Nk, Dv});
  if (kind == Kind::qknorm) l.head_scale = torch::rand({H}) + 1;
  if (kind == Kind::qk_layernorm) {
    l.qw = torch::rand({D}) + 0.5;
    l.qb = torch::randn({D}) * 0.1;
    l.kw = torch::rand({D}) + 0.5;
    l.kb = torch::randn({D}) * 0.1;
  }
  return l;
}

Tensor padding_mask(Mask m) {
  Tensor pad = torch::zeros({B, Nk}, torch::kBool);
  if (m == Mask::padding || m == Mask::causal_padding) {
    pad[0][1] = pad[0][4] = true;
    pad[1][0] = pad[1][1] = true;  // causal: rows 0 and 1 of batch 1 see no key
  }
  if (m == Mask::batch_padded) pad[1] = true;
  return m == Mask::none || m == Mask::causal ? Tensor() : pad;
}

struct Result {
  Tensor out;
  std::vector<std::pair<std::string, Tensor>> grads;
};

Result run(const Leaves& base, Kind kind, Mask mask, bool dropout, Backend backend) {
  Leaves l;
  auto src = const_cast<Leaves&>(base).all();
  auto dst = l.all();
  for (size_t i = 0; i < src.size(); ++i)
    if (src[i].second->defined()) *dst[i].second = src[i].second->clone().requires_grad_(true);
  AttentionOptions o(kind);
  o.check_finite(false).backend(backend).causal(mask == Mask::causal || mask == Mask::causal_padding);
  o.key_padding_mask(padding_mask(mask));
  if (l.head_scale.defined()) o.head_scale(l.head_scale);
  if (l.qw.defined()) o.q_norm_weight(l.qw).q_norm_bias(l.qb).k_norm_weight(l.kw).k_norm_bias(l.kb);
  if (dropout) o.dropout(0.3).training(true).seed(11);
  Result r;
  r.out = attention(l.q, l.k, l.v, o);
  torch::manual_seed(3);
  r.out.backward(torch::randn_like(r.out));
  for (auto& [n, t] : l.all())
    if (t->defined()) r.grads.emplace_back(n, t->grad());
  return r;
}

// Same non-finite pattern, and the entries finite in both agree.
void expect_same(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_TRUE(got.defined()) << what;
  const Tensor fg = torch::isfinite(got), fw = torch::isfinite(want);
  const int64_t differ = fg.ne(fw).sum().item<int64_t>();
  EXPECT_EQ(differ, 0) << what << ": non-finite in " << (~fg).sum().item<int64_t>()
                       << " entries, composite " << (~fw).sum().item<int64_t>();
  if (differ) return;
  const Tensor both = fg.logical_and(fw);
  const Tensor g = got.masked_select(both), w = want.masked_select(both);
  EXPECT_TRUE(torch::allclose(g, w, 2e-3, 2e-4))
      << what << ": finite entries differ by " << (g - w).abs().max().item<double>();
}

struct Poke {
  std::string tensor;
  std::vector<int64_t> index;
};

std::vector<Poke> pokes(Kind kind) {
  // Batch 0 key 4 is padded under the padding masks, and hidden from rows < 4 when causal.
  std::vector<Poke> p = {{"q", {1, 0, 2, 3}}, {"k", {1, 1, 5, 0}}, {"k", {0, 1, 4, 6}},
                         {"v", {1, 0, 3, 2}}, {"v", {0, 1, 4, 1}}};
  if (kind == Kind::qknorm) p.push_back({"head_scale", {1}});
  if (kind == Kind::qk_layernorm)
    for (const char* n : {"q_norm_weight", "q_norm_bias", "k_norm_weight", "k_norm_bias"})
      p.push_back({n, {2}});
  return p;
}

class NonFinite : public ::testing::TestWithParam<Kind> {};

TEST_P(NonFinite, EveryBackendMatchesTheCompositePattern) {
  const Kind kind = GetParam();
  testing::for_each_simd_target([&](const std::string& target) {
  SCOPED_TRACE(target);
  for (Mask mask : {Mask::none, Mask::causal, Mask::padding, Mask::causal_padding,
                    Mask::batch_padded})
    for (bool dropout : {false, true})
      for (const Poke& poke : pokes(kind))
        for (float value : {NAN, INFINITY, -INFINITY}) {
          Leaves l = make_leaves(kind);
          for (auto& [n, t] : l.all())
            if (n == poke.tensor) {
              Tensor e = *t;
              for (int64_t ix : poke.index) e = e[ix];
              e.fill_(value);
            }
          const Result want = run(l, kind, mask, dropout, Backend::composite);
          ASSERT_FALSE(torch::isfinite(want.out).all().item<bool>() &&
                       poke.tensor == "q" && mask == Mask::none)
              << "a NaN query must reach its output row";
          for (Backend backend : {Backend::fused, Backend::reference}) {
            const Result got = run(l, kind, mask, dropout, backend);
            const std::string what = std::string(to_string(kind)) + " " + to_string(backend) +
                                     " mask " + name(mask) + (dropout ? " dropout" : "") + " " +
                                     poke.tensor + "=" + std::to_string(value);
            expect_same(got.out, want.out, what + " output");
            ASSERT_EQ(got.grads.size(), want.grads.size());
            for (size_t i = 0; i < got.grads.size(); ++i)
              expect_same(got.grads[i].second, want.grads[i].second,
                          what + " d" + got.grads[i].first);
          }
        }
  });
}

INSTANTIATE_TEST_SUITE_P(Kinds, NonFinite,
                         ::testing::Values(Kind::standard, Kind::quest, Kind::qnorm, Kind::qknorm,
                                           Kind::qk_layernorm),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// One long head with more threads than heads: the fused backward deals the key tiles to several
// work items and sums their dQ shares; the contract holds there too.
TEST(NonFiniteChunked, SplitKeyTilesKeepTheContract) {
  const int saved = at::get_num_threads();
  at::set_num_threads(4);
  Tensor pad = torch::zeros({1, 300}, torch::kBool);
  pad[0][5] = pad[0][200] = true;
  const std::vector<Poke> where = {{"q", {0, 0, 3, 1}}, {"k", {0, 0, 200, 2}}, {"k", {0, 0, 130, 0}},
                                   {"v", {0, 0, 250, 1}}, {"v", {0, 0, 140, 3}}};
  for (Kind kind : {Kind::quest, Kind::standard})
    for (bool causal : {false, true})
      for (const Poke& poke : where)
        for (float value : {NAN, INFINITY}) {
          std::vector<Tensor> outs, grads;
          for (Backend backend : {Backend::composite, Backend::fused}) {
            torch::manual_seed(5);
            Tensor q = torch::randn({1, 1, 150, 16}), k = torch::randn({1, 1, 300, 16}),
                   v = torch::randn({1, 1, 300, 8});
            Tensor& t = poke.tensor == "q" ? q : poke.tensor == "k" ? k : v;
            t[poke.index[0]][poke.index[1]][poke.index[2]][poke.index[3]] = value;
            for (Tensor* x : {&q, &k, &v}) x->requires_grad_(true);
            const Tensor out = attention(q, k, v, AttentionOptions(kind).check_finite(false).backend(backend)
                                                      .causal(causal).key_padding_mask(pad));
            out.backward(torch::ones_like(out));
            outs.push_back(out);
            grads.insert(grads.end(), {q.grad(), k.grad(), v.grad()});
          }
          const std::string what = std::string(to_string(kind)) + (causal ? " causal " : " ") +
                                   poke.tensor + "=" + std::to_string(value);
          expect_same(outs[1], outs[0], what + " output");
          for (int g = 0; g < 3; ++g) expect_same(grads[3 + g], grads[g], what + " grad " + std::to_string(g));
        }
  at::set_num_threads(saved);
}

// A head that met a non-finite value shows NaN in its diagnostics on every path (the trainer
// reports them when it stops); the other heads stay finite.
TEST(NonFiniteDiagnostics, TheAffectedHeadShowsNaN) {
  for (Backend backend : {Backend::fused, Backend::reference, Backend::composite}) {
    Leaves l = make_leaves(Kind::quest);
    l.q[1][1][2][0] = NAN;
    const auto r = attention_forward(l.q, l.k, l.v,
                                     AttentionOptions(Kind::quest).check_finite(false).backend(backend),
                                     false, true);
    const HeadDiagnostics& d = *r.diagnostics;
    for (const auto* field : {&d.q_norm_max, &d.logit_abs_max, &d.entropy_mean}) {
      EXPECT_TRUE(std::isnan((*field)[1])) << to_string(backend);
      EXPECT_TRUE(std::isfinite((*field)[0])) << to_string(backend);
    }
  }
}

// The reproduction: one NaN input row of the module (fused by default, check_finite off)
// must reach the output as it does on the composite path.
TEST(NonFiniteModule, NaNInputRowPropagatesAsOnTheComposite) {
  for (Kind kind : {Kind::standard, Kind::quest, Kind::qknorm}) {
    torch::manual_seed(1);
    nn::MultiheadAttention fused(nn::MultiheadAttentionOptions(16, 2).kind(kind));
    auto composite = std::dynamic_pointer_cast<nn::MultiheadAttentionImpl>(fused->clone());
    composite->options.backend(Backend::composite);
    Tensor x = torch::randn({2, 8, 16});
    x[0][3][2] = NAN;
    const Tensor a = fused->forward(x), b = composite->forward(x);
    EXPECT_GT((~torch::isfinite(a)).sum().item<int64_t>(), 0) << to_string(kind);
    EXPECT_TRUE(torch::isfinite(a).eq(torch::isfinite(b)).all().item<bool>()) << to_string(kind);
  }
}

}  // namespace
}  // namespace quest
