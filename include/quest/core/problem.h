// One attention problem over raw strided buffers: the contract between the LibTorch layer and the
// torch-free kernels (reference and fused). Layout is (B, H, N, D) with element strides, so views
// such as a head split of a fused qkv projection need no copy.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "quest/core/kind.h"

namespace quest {

// bfloat16 storage: the upper half of a float32 (torch's at::BFloat16 has this layout). The
// kernels compute in float32; to_float is exact, to_bfloat16 rounds to nearest even as torch does.
struct bfloat16 {
  uint16_t bits;
};
inline float to_float(bfloat16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline bfloat16 to_bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
}

template <typename T>
struct View4 {
  T* data = nullptr;
  int64_t stride[4] = {0, 0, 0, 0};  // elements, for (B, H, N, D)

  T& at(int64_t b, int64_t h, int64_t n, int64_t d) const {
    return data[b * stride[0] + h * stride[1] + n * stride[2] + d * stride[3]];
  }
};

// A contiguous (B, H, n, d) buffer as a View4.
template <typename T>
View4<T> contiguous_view(T* data, int64_t heads, int64_t n, int64_t d) {
  View4<T> v;
  v.data = data;
  v.stride[0] = heads * n * d;
  v.stride[1] = n * d;
  v.stride[2] = d;
  v.stride[3] = 1;
  return v;
}

struct AttentionDims {
  int64_t batch = 0, heads = 0;
  int64_t q_len = 0, k_len = 0;  // Nq, Nk
  int64_t qk_dim = 0, v_dim = 0;  // Dk, Dv
};

// Where the causal diagonal sits when Nq != Nk. top_left: query i sees keys j <= i (torch's
// is_causal). bottom_right: the last query sees the last key, j <= i + Nk - Nq (FlashAttention
// >= 2.1): what decoding new tokens against a cache of earlier keys needs. Equal for Nq = Nk.
enum class CausalAlignment { top_left, bottom_right };
std::string to_string(CausalAlignment alignment);
// "top_left" / "bottom_right" (as to_string prints them).
std::optional<CausalAlignment> parse_causal_alignment(std::string_view name);

// The scalar settings of one call: shared by the kernels' AttentionArgs and the LibTorch layer's
// call, which binds tensors where AttentionArgs holds pointers.
struct AttentionScalars {
  AttentionDims dims;
  Norm q_norm = Norm::none, k_norm = Norm::none;
  double scale = 1.0;              // logit scale, used where there is no per-head scale
  double l2_eps = 1e-6;            // x / max(|x|, l2_eps)
  double layernorm_eps = 1e-5;     // (x - mean) / sqrt(var + layernorm_eps)
  // Query i sees key j only if j <= i + causal_shift().
  bool causal = false;
  CausalAlignment causal_alignment = CausalAlignment::top_left;
  double dropout = 0.0;            // on the attention weights, after softmax
  uint64_t seed = 0;

  // 0 (top-left) or Nk - Nq (bottom-right; negative when Nq > Nk: the first rows see no key).
  int64_t causal_shift() const {
    return causal_alignment == CausalAlignment::bottom_right ? dims.k_len - dims.q_len : 0;
  }
};

template <typename T>
struct AttentionArgs : AttentionScalars {
  View4<const T> q, k, v;
  const T* head_scale = nullptr;   // (H): per-head logit scale, replaces `scale`
  // (Dk) affine of the per-head LayerNorm (Norm::layer); null means weight 1 / bias 0.
  const T *q_ln_weight = nullptr, *q_ln_bias = nullptr;
  const T *k_ln_weight = nullptr, *k_ln_bias = nullptr;
  // (B, Nk), true = padding: the key is ignored by every query of that batch entry.
  const bool* key_padding_mask = nullptr;
  int64_t key_padding_stride[2] = {0, 0};

  double head_scale_at(int64_t h) const {
    return head_scale ? static_cast<double>(head_scale[h]) : scale;
  }
  bool key_padded(int64_t b, int64_t j) const {
    return key_padding_mask &&
           key_padding_mask[b * key_padding_stride[0] + j * key_padding_stride[1]];
  }
  bool key_visible(int64_t b, int64_t i, int64_t j) const {
    return !(causal && j > i + causal_shift()) && !key_padded(b, j);
  }
  // The first key of batch entry b that padding does not hide (Nk if every key is padded).
  int64_t first_unpadded_key(int64_t b) const {
    int64_t j = 0;
    while (j < dims.k_len && key_padded(b, j)) ++j;
    return j;
  }
  // Whether query i sees no key by the masks alone (first = first_unpadded_key(b)): such a row's
  // output and gradients are zero whatever the inputs hold. A row that sees keys but whose
  // logits are all -inf is not empty: its softmax is NaN, as in torch.
  bool sees_no_key(int64_t first, int64_t i) const {
    return first == dims.k_len || (causal && first > i + causal_shift());
  }
};

// Non-finite values (the contract of every path with check_finite off): a NaN or ±Inf input
// reaches exactly the outputs and gradients that the composite matmul -> masked softmax -> matmul
// makes non-finite. In particular a matmul multiplies masked entries by exactly 0 and 0 * NaN =
// 0 * Inf = NaN, so a non-finite value of a masked key still reaches every row that multiplies
// it; rows that see no key (sees_no_key) give zeros. The kernels skip masked products, so they
// add those sums back with accumulate_nonfinite.

// acc[c] += 0 * x[c * stride]: NaN exactly where x holds NaN or ±Inf, else unchanged.
template <typename T, typename A>
void accumulate_nonfinite(const T* x, int64_t n, int64_t stride, A* acc) {
  for (int64_t c = 0; c < n; ++c) acc[c] += A(0) * static_cast<A>(x[c * stride]);
}
// Whether any of acc[0, n) is non-finite: a sum of accumulate_nonfinite became NaN.
template <typename A>
bool any_nonfinite(const A* acc, int64_t n) {
  for (int64_t c = 0; c < n; ++c)
    if (acc[c] != acc[c]) return true;
  return false;
}

// Gradients written by a backward kernel (overwritten, not accumulated). Parameter gradients are
// written only where both the parameter and its gradient pointer are non-null.
template <typename T>
struct AttentionGrads {
  View4<T> dq, dk, dv;
  T* dhead_scale = nullptr;  // (H)
  T *dq_ln_weight = nullptr, *dq_ln_bias = nullptr;  // (Dk)
  T *dk_ln_weight = nullptr, *dk_ln_bias = nullptr;  // (Dk)
};

// Cheap checks at the core entry points (reference and fused forward/backward): positive
// dimensions, non-null buffers, epsilons > 0, dropout in [0, 1). Throws std::invalid_argument
// naming the problem. The LibTorch layer validates before it gets here; this guards direct callers.
template <typename T>
void check_args(const AttentionArgs<T>& args, const char* entry);

// Attention dropout decision for one (b, h, i, j): a counter-based hash of the seed, so every path
// (reference, composite, fused forward and backward) regenerates the same mask without storing it.
inline uint64_t mix64(uint64_t x) {  // splitmix64 finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
inline bool dropout_keep(uint64_t seed, double p, const AttentionDims& d, int64_t b, int64_t h,
                         int64_t i, int64_t j) {
  const uint64_t index =
      static_cast<uint64_t>(((b * d.heads + h) * d.q_len + i) * d.k_len + j);
  const double u = static_cast<double>(mix64(mix64(seed) ^ index) >> 11) * 0x1.0p-53;  // [0, 1)
  return u >= p;
}
// Fills keep[(b, h, i, j)] (contiguous B*H*Nq*Nk) with dropout_keep.
void dropout_keep_mask(uint64_t seed, double p, const AttentionDims& dims, bool* keep);

}  // namespace quest
