// The LibTorch functional API: quest::attention(q, k, v, options) over (B, H, N, D) tensors.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "quest/core/diagnostics.h"
#include "quest/core/kind.h"
#include "quest/core/problem.h"

namespace quest {

// Which implementation computes attention:
//   fused     — the tiled SIMD kernel (float32 only; src/core/fused.cpp)
//   composite — matmul -> softmax -> matmul with torch ops
//   reference — the plain-loop math reference (slow; the test oracle)
//   sdpa      — torch's scaled_dot_product_attention on the kind's normalised q and k (any device)
// `automatic` takes the first eligible backend of {fused, composite} on the CPU (fused needs
// float32) and of {sdpa, composite} on other devices; QUEST_ATTENTION_BACKEND=reference|composite|
// fused|sdpa overrides what `automatic` picks for a whole process (read once, at the first call).
enum class Backend { automatic, reference, composite, fused, sdpa };
std::string to_string(Backend backend);
// The names to_string prints, and "auto" for automatic (Python's spelling).
std::optional<Backend> parse_backend(std::string_view name);

struct AttentionOptions {
  AttentionOptions(Kind kind = Kind::quest) : kind_(kind) {}
  TORCH_ARG(Kind, kind);
  // Logit scale; default: default_scale(kind, Dk). Ignored where head_scale is given.
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;
  // (H) learnable per-head logit scale (qknorm). Gradients flow to it.
  TORCH_ARG(torch::Tensor, head_scale) = {};
  // (Dk) affine of the per-head LayerNorm (qk_layernorm); undefined = weight 1 / bias 0.
  TORCH_ARG(torch::Tensor, q_norm_weight) = {};
  TORCH_ARG(torch::Tensor, q_norm_bias) = {};
  TORCH_ARG(torch::Tensor, k_norm_weight) = {};
  TORCH_ARG(torch::Tensor, k_norm_bias) = {};
  TORCH_ARG(double, l2_eps) = 1e-6;         // x / max(|x|, l2_eps)
  TORCH_ARG(double, layernorm_eps) = 1e-5;
  // Query i sees key j only if j <= i (top-left aligned, as torch's is_causal), or with
  // causal_alignment bottom_right only if j <= i + Nk - Nq (the last query sees the last key:
  // decoding against a KV cache). See CausalAlignment (quest/core/problem.h).
  TORCH_ARG(bool, causal) = false;
  TORCH_ARG(CausalAlignment, causal_alignment) = CausalAlignment::top_left;
  // (B, Nk) bool, true = padding, ignored by every query (torch::nn::MultiheadAttention's convention).
  TORCH_ARG(torch::Tensor, key_padding_mask) = {};
  // An additive logit bias broadcastable to (B, H, Nq, Nk), in q's dtype: what torch's float
  // attn_mask is (−inf blocks a pair; a row that it blocks entirely gives zeros, as the other
  // masks). Arbitrary biases run on the composite backend (the fused and reference kernels take
  // masks as flags: causal, key_padding_mask); one that requires grad gets its gradient there.
  TORCH_ARG(torch::Tensor, attn_bias) = {};
  // Dropout on the attention weights; applied only when training is true.
  TORCH_ARG(double, dropout) = 0.0;
  TORCH_ARG(bool, training) = false;
  // Dropout seed; default: drawn from quest::current_generator() (quest/torch/random.h: the
  // thread's GeneratorScope, else torch's global generator, so torch::manual_seed fixes it).
  TORCH_ARG(std::optional<uint64_t>, seed) = std::nullopt;
  TORCH_ARG(Backend, backend) = Backend::automatic;
  // Reject NaN/Inf in q, k, v and the parameters with an error naming the tensor (one O(N*D) pass).
  TORCH_ARG(bool, check_finite) = true;
  // k holds keys already normalised as the kind does it (normalize_keys): the kernels skip the
  // key normalisation (a KV cache stores keys so; a cached QUEST step then costs what a standard
  // one does). Gradients flow to those normalised keys; diagnostics report their norms.
  TORCH_ARG(bool, keys_normalized) = false;
  // Grouped- and multi-query attention (torch's SDPA enable_gqa): k and v have Hk heads, q a
  // multiple Hq of them, and query head h attends with key/value head h / (Hq / Hk). The kernels
  // read K and V in place (no copy per group); head_scale is per query head.
  TORCH_ARG(bool, enable_gqa) = false;
};

struct AttentionOutput {
  torch::Tensor output;   // (B, H, Nq, Dv)
  // (B, H, Nq, Nk), before dropout; only if asked for. From the composite backend they are part
  // of the autograd graph (a loss on them gets its gradients); the fused and reference backends
  // materialise them apart from the output, detached.
  torch::Tensor weights;
  std::optional<HeadDiagnostics> diagnostics;  // only if asked for, in eager mode
  // Asked for under torch.compile (fake tensors: no data to reduce on the host) from the fused or
  // reference backend: instead of `diagnostics`, the graph's (7, H) float64 tensor, rows
  // q_norm_mean, q_norm_max, k_norm_mean, k_norm_max, logit_abs_max, entropy_mean, logit_max.
  torch::Tensor traced_diagnostics;
  // Per-row log-sum-exp of the visible logits (B, H, Nq) float32, detached: of the whole softmax
  // (before dropout), -inf for a row that sees no key. Only if asked for. The fused and reference
  // kernels return their own row statistics; the composite and sdpa backends compute it from the logits.
  torch::Tensor logsumexp;
};

// What attention_forward computes beside the output.
struct AttentionRequest {
  bool weights = false, diagnostics = false, logsumexp = false;
};

// O = softmax(S) V with S from the kind's formula. Differentiable in q, k, v and the parameters.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const AttentionOptions& options = {});

// The keys as the kernels see them for options' kind: L2-normalised (quest, qknorm: k / max(|k|,
// l2_eps)), LayerNorm-ed with the k affine (qk_layernorm), else k itself. Differentiable.
torch::Tensor normalize_keys(const torch::Tensor& k, const AttentionOptions& options);

// As attention(), optionally also returning the attention weights (materialised: for inspection
// only) and per-head diagnostics (computed in the same pass, no extra N x N buffer).
AttentionOutput attention_forward(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const AttentionOptions& options,
                                  bool need_weights, bool need_diagnostics);
AttentionOutput attention_forward(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const AttentionOptions& options,
                                  const AttentionRequest& request);

// Self-attention from a packed projection, as FlashAttention's qkvpacked functions: qkv is
// (B, N, 3 x H x D) with its last dimension laid out (3, H, D) -- q, k, v; heads; head dim -- as a
// Linear(E, 3E) produces it; the output is (B, N, H x D), ready for the output projection. Same
// options, backends and results as attention() on the split heads; on the fused backend the
// heads are read in place and the gradient is written into one buffer of qkv's shape, so the head
// split and merge cost no copies.
torch::Tensor attention_packed(const torch::Tensor& qkv, int64_t heads,
                               const AttentionOptions& options = {});
AttentionOutput attention_packed_forward(const torch::Tensor& qkv, int64_t heads,
                                         const AttentionOptions& options, bool need_weights,
                                         bool need_diagnostics);
AttentionOutput attention_packed_forward(const torch::Tensor& qkv, int64_t heads,
                                         const AttentionOptions& options, const AttentionRequest& request);
// torch.nn.functional.scaled_dot_product_attention's contract over quest's kinds: query
// (..., Hq, L, E), key (..., Hk, S, E), value (..., Hk, S, Ev) with the same leading batch dims
// (any number, none included); attn_mask bool (true takes part) or float (added to the logits),
// broadcastable to (..., Hq, L, S); is_causal top-left aligned (exclusive with attn_mask);
// dropout_p applied whenever > 0; scale default: the kind's (1/sqrt(E) for standard, 1 for quest);
// enable_gqa: Hq a multiple of Hk. A bool mask that varies along keys only (e.g. (N, 1, 1, S))
// runs fused as a key padding mask; any other mask runs on the composite as a logit bias. A query
// row that sees no key outputs zeros (torch: NaN). `options` gives the kind and quest's own
// settings (head_scale, LayerNorm affine, backend, check_finite, eps, seed); its masks, dropout,
// scale and enable_gqa are set from the SDPA arguments. Returns (..., Hq, L, Ev).
torch::Tensor scaled_dot_product_attention(const torch::Tensor& query, const torch::Tensor& key,
                                           const torch::Tensor& value, const torch::Tensor& attn_mask = {},
                                           double dropout_p = 0.0, bool is_causal = false,
                                           std::optional<double> scale = std::nullopt, bool enable_gqa = false,
                                           AttentionOptions options = {});
// As scaled_dot_product_attention, with what `request` asks for beside the output: the weights
// (..., Hq, L, S), per-head diagnostics (HeadDiagnostics::logit_max is the per-head max logit that
// QK-clip reads) and the per-row logsumexp (..., Hq, L).
AttentionOutput scaled_dot_product_attention_forward(const torch::Tensor& query, const torch::Tensor& key,
                                                    const torch::Tensor& value, const torch::Tensor& attn_mask,
                                                    double dropout_p, bool is_causal, std::optional<double> scale,
                                                    bool enable_gqa, AttentionOptions options,
                                                    const AttentionRequest& request);

// Which backend a call runs on, and why the backends before it in the order were not taken, as
// ATen's SDPA constraint checks do ("fused: computes in float32 only, got Double").
struct BackendSelection {
  Backend backend = Backend::automatic;
  std::vector<std::string> rejected;
};
// Validates the call as attention() does, then selects. An explicitly requested (or overridden)
// backend that is not eligible raises c10::Error carrying its reason.
BackendSelection select_backend(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const AttentionOptions& options = {});

// The value of QUEST_ATTENTION_BACKEND as read once per process (nullopt: unset, empty or
// "automatic"), and the parser it uses (c10::Error for an unknown name).
std::optional<Backend> backend_override();
std::optional<Backend> parse_backend_override(const char* value);

}  // namespace quest
