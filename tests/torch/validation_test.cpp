// Bad input gets an error that names the problem.
#include <array>

#include <gtest/gtest.h>

#include "error_message.h"
#include "quest/torch/attention.h"

namespace quest {
namespace {

using torch::Tensor;

using testing::error_message;

#define EXPECT_ERROR_MENTIONS(call, text)                                         \
  do {                                                                            \
    const std::string msg = error_message([&] { (void)(call); });                      \
    EXPECT_NE(msg.find(text), std::string::npos) << "message was: '" << msg << "'"; \
  } while (0)

struct Inputs {
  Tensor q = torch::randn({2, 3, 5, 4});
  Tensor k = torch::randn({2, 3, 6, 4});
  Tensor v = torch::randn({2, 3, 6, 7});
};

TEST(Validation, WrongRank) {
  Inputs in;
  EXPECT_ERROR_MENTIONS(attention(in.q[0], in.k, in.v), "q must have rank 4");
  EXPECT_ERROR_MENTIONS(attention(in.q, in.k.unsqueeze(0), in.v), "k must have rank 4");
}

TEST(Validation, MismatchedDims) {
  Inputs in;
  EXPECT_ERROR_MENTIONS(attention(in.q, torch::randn({3, 3, 6, 4}), in.v), "batch sizes differ");
  EXPECT_ERROR_MENTIONS(attention(in.q, torch::randn({2, 2, 6, 4}), in.v), "head counts differ");
  EXPECT_ERROR_MENTIONS(attention(in.q, torch::randn({2, 3, 6, 5}), in.v), "head dims differ");
  EXPECT_ERROR_MENTIONS(attention(in.q, in.k, torch::randn({2, 3, 5, 7})), "key counts differ");
}

TEST(Validation, Dtypes) {
  Inputs in;
  EXPECT_ERROR_MENTIONS(attention(in.q.to(torch::kInt), in.k, in.v), "q has dtype Int");
  EXPECT_ERROR_MENTIONS(attention(in.q.to(torch::kInt), in.k.to(torch::kInt), in.v.to(torch::kInt)),
                        "expected float32, float64, bfloat16 or float16");
  EXPECT_ERROR_MENTIONS(attention(in.q.to(torch::kHalf), in.k, in.v), "must share a dtype, got Half, Float, Float");
  EXPECT_ERROR_MENTIONS(attention_packed(torch::randn({2, 3, 12}).to(torch::kInt), 2), "dtype Int");
  EXPECT_ERROR_MENTIONS(attention(in.q, in.k.to(torch::kDouble), in.v), "must share a dtype");
  EXPECT_ERROR_MENTIONS(
      attention(in.q, in.k, in.v, AttentionOptions(Kind::qknorm).head_scale(torch::ones({3}, torch::kDouble))),
      "head_scale has dtype Double");
}

TEST(Validation, EmptyTensors) {
  Inputs in;
  EXPECT_ERROR_MENTIONS(attention(torch::randn({0, 3, 5, 4}), in.k, in.v), "q is empty");
  EXPECT_ERROR_MENTIONS(attention(in.q, torch::randn({2, 3, 0, 4}), torch::randn({2, 3, 0, 7})),
                        "k is empty");
}

TEST(Validation, Masks) {
  Inputs in;
  EXPECT_ERROR_MENTIONS(
      attention(in.q, in.k, in.v, AttentionOptions().key_padding_mask(torch::zeros({2, 5}, torch::kBool))),
      "key_padding_mask must have shape [B, Nk] = [2, 6]");
  EXPECT_ERROR_MENTIONS(
      attention(in.q, in.k, in.v, AttentionOptions().key_padding_mask(torch::zeros({2, 6}))),
      "key_padding_mask has dtype Float; expected bool");
}

TEST(Validation, OptionRanges) {
  Inputs in;
  EXPECT_ERROR_MENTIONS(attention(in.q, in.k, in.v, AttentionOptions().dropout(1.0)),
                        "dropout must be in [0, 1)");
  EXPECT_ERROR_MENTIONS(attention(in.q, in.k, in.v, AttentionOptions().dropout(-0.1)),
                        "dropout must be in [0, 1)");
  EXPECT_ERROR_MENTIONS(attention(in.q, in.k, in.v, AttentionOptions().l2_eps(0)),
                        "l2_eps must be > 0");
  EXPECT_ERROR_MENTIONS(attention(in.q, in.k, in.v, AttentionOptions().scale(INFINITY)),
                        "scale must be finite");
  EXPECT_ERROR_MENTIONS(
      attention(in.q, in.k, in.v, AttentionOptions(Kind::qknorm).head_scale(torch::ones({2}))),
      "head_scale must have shape [3]");
  EXPECT_ERROR_MENTIONS(
      attention(in.q, in.k, in.v, AttentionOptions(Kind::qk_layernorm).k_norm_bias(torch::ones({5}))),
      "k_norm_bias must have shape [4]");
}

TEST(Validation, NonFiniteInputsAreRejectedUnlessUnchecked) {
  Inputs in;
  in.k[1][2][3][0] = NAN;
  EXPECT_ERROR_MENTIONS(attention(in.q, in.k, in.v), "k contains NaN or Inf");
  in.k[1][2][3][0] = 0;
  in.v[0][0][0][0] = INFINITY;
  EXPECT_ERROR_MENTIONS(attention(in.q, in.k, in.v), "v contains NaN or Inf");
  // Unchecked, NaN propagates (as in torch) instead of being hidden: into exactly the outputs
  // that read it (every query of batch 0, head 0, value channel 0).
  in.v[0][0][0][0] = NAN;
  for (Backend backend : {Backend::reference, Backend::composite}) {
    const auto out =
        attention(in.q, in.k, in.v, AttentionOptions().check_finite(false).backend(backend));
    EXPECT_TRUE(torch::isnan(out[0][0].select(-1, 0)).all().item<bool>());
    EXPECT_EQ(torch::isnan(out).sum().item<int64_t>(), out.size(2));
  }
}

// On the CPU the fused kernel finds a NaN or infinity in q, k, v as it reads them (no pass of its
// own); every other backend checks before it runs. Each backend, each tensor, autograd or not,
// bf16, grouped-query heads, QK-LayerNorm (normalised before the kernel) and packed projections
// (read in place, or split where the layout needs it) name the tensor; finite rows whose squared
// norm overflows float32 (the kernel cannot tell those apart) run unrefused.
TEST(Validation, EveryBackendNamesTheNonFiniteTensor) {
  const std::pair<Backend, Kind> runs[] = {{Backend::fused, Kind::quest},      {Backend::fused, Kind::qk_layernorm},
                                           {Backend::composite, Kind::quest},  {Backend::reference, Kind::quest},
                                           {Backend::sdpa, Kind::quest}};
  for (auto [backend, kind] : runs)
    for (bool grad : {false, true})
      for (int t = 0; t < 3; ++t) {
        SCOPED_TRACE(to_string(backend) + " " + to_string(kind) + (grad ? " autograd " : " ") + std::to_string(t));
        Inputs in;
        Tensor* x[] = {&in.q, &in.k, &in.v};
        (*x[t])[1][2][3][t + 1] = t == 1 ? -INFINITY : NAN;
        for (Tensor* y : x) y->requires_grad_(grad);
        const AttentionOptions o = AttentionOptions(kind).backend(backend);
        EXPECT_ERROR_MENTIONS(attention(in.q, in.k, in.v, o), std::string(1, "qkv"[t]) + " contains NaN or Inf");
        EXPECT_NO_THROW(attention(in.q, in.k, in.v, AttentionOptions(o).check_finite(false)));
      }
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    SCOPED_TRACE(dtype);
    Tensor q = torch::randn({2, 4, 5, 4}).to(dtype), k = torch::randn({2, 2, 6, 4}).to(dtype),
           v = torch::randn({2, 2, 6, 4}).to(dtype);
    const AttentionOptions gqa = AttentionOptions().enable_gqa(true);
    EXPECT_NO_THROW(attention(q, k, v, gqa));
    v[1][1][5][3] = NAN;  // seen by query heads 2 and 3 only
    EXPECT_ERROR_MENTIONS(attention(q, k, v, gqa), "v contains NaN or Inf");
    v[1][1][5][3] = 0;
    q[0][3][0][0] = INFINITY;
    EXPECT_ERROR_MENTIONS(attention(q, k, v, gqa), "q contains NaN or Inf");
    q[0][3][0][0] = 1e30;  // finite: |q|^2 overflows, the kernel reports it, the check clears it
    EXPECT_NO_THROW(attention(q, k, v, gqa));
  }
}

// Packed self-attention names the part of the projection that holds a non-finite element: every
// element position of a (B, N, 3 x H x D) projection, float32 and bf16, and a projection that is
// itself a strided view (split into heads, not read in place); unchecked, the call runs.
TEST(Validation, PackedProjectionNamesItsNonFinitePart) {
  const int64_t B = 2, N = 3, H = 2, D = 4;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const Tensor qkv = torch::randn({B, N, 3 * H * D}).to(dtype);
    EXPECT_NO_THROW(attention_packed(qkv, H));
    for (int64_t at = 0; at < qkv.numel(); ++at) {
      Tensor s = qkv.clone();
      s.view({-1})[at] = at % 2 ? NAN : INFINITY;
      const char* part = std::array{"q contains", "k contains", "v contains"}[at % (3 * H * D) / (H * D)];
      EXPECT_ERROR_MENTIONS(attention_packed(s, H), part);
      EXPECT_NO_THROW(attention_packed(s, H, AttentionOptions().check_finite(false)));
    }
    Tensor wide = torch::randn({B, N, 2 * 3 * H * D}).to(dtype);  // every other column: a strided view
    const Tensor view = wide.unflatten(2, {3 * H * D, 2}).select(3, 0);
    EXPECT_NO_THROW(attention_packed(view, H));
    wide[1][2][2 * (2 * H * D + 1)] = NAN;  // v, head 0, channel 1 of the last token
    EXPECT_ERROR_MENTIONS(attention_packed(view, H), "v contains NaN or Inf");
  }
}

// The finiteness check reads rows in place: every element position, in a layout whose leading
// dimensions are permuted (the packed projections' (B, N, H, D) seen as (B, H, N, D)) and one whose
// last dimension is strided, float and double, NaN and both infinities — and no false alarm.
TEST(Validation, EveryNonFiniteElementIsFoundInAnyLayout) {
  for (auto dtype : {torch::kFloat, torch::kDouble}) {
    const Tensor q = torch::randn({2, 3, 5, 4}, dtype), v = torch::randn({2, 3, 6, 7}, dtype);
    const Tensor storage = torch::randn({2, 6, 3, 4}, dtype);  // (B, Nk, H, D)
    auto permuted = [](const Tensor& s) { return s.transpose(1, 2); };                  // D contiguous
    auto strided = [](const Tensor& s) { return s.transpose(1, 2).contiguous().transpose(3, 2).contiguous().transpose(3, 2); };
    EXPECT_NO_THROW(attention(q, permuted(storage), v));
    ASSERT_NE(strided(storage).stride(3), 1);
    EXPECT_NO_THROW(attention(q, strided(storage), v));
    for (double bad : {double(NAN), double(INFINITY), -double(INFINITY)})
      for (int64_t at = 0; at < storage.numel(); ++at) {
        Tensor s = storage.clone();
        s.view({-1})[at] = bad;
        EXPECT_ERROR_MENTIONS(attention(q, permuted(s), v), "k contains NaN or Inf");
        EXPECT_ERROR_MENTIONS(attention(q, strided(s), v), "k contains NaN or Inf");
      }
    EXPECT_ERROR_MENTIONS(attention(q, permuted(storage), v, AttentionOptions(Kind::qknorm).head_scale(
                                                              torch::tensor({1.0, double(NAN), 1.0}).to(dtype))),
                          "head_scale contains NaN or Inf");
  }
}

TEST(Validation, UndefinedInput) {
  Inputs in;
  EXPECT_ERROR_MENTIONS(attention(Tensor(), in.k, in.v), "q is undefined");
}

}  // namespace
}  // namespace quest
