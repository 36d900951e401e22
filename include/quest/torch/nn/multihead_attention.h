// quest::nn::MultiheadAttention: qkv projection, head split, any attention kind, output projection.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <vector>

#include "quest/torch/attention.h"
#include "quest/torch/nn/kind_parameters.h"

namespace quest::nn {

struct MultiheadAttentionOptions {
  MultiheadAttentionOptions(int64_t embed_dim, int64_t num_heads)
      : embed_dim_(embed_dim), num_heads_(num_heads) {}
  TORCH_ARG(int64_t, embed_dim);
  TORCH_ARG(int64_t, num_heads);
  // Key/value heads (grouped- and multi-query attention: num_heads a multiple of it); default
  // num_heads. The projection then makes E + 2 * num_kv_heads * head_dim features.
  TORCH_ARG(std::optional<int64_t>, num_kv_heads) = std::nullopt;
  TORCH_ARG(Kind, kind) = Kind::quest;
  TORCH_ARG(bool, bias) = true;          // on the qkv and output projections
  TORCH_ARG(double, dropout) = 0.0;      // on the attention weights, in training mode only
  TORCH_ARG(bool, causal) = false;
  // Rotary position embedding on q and k (nn/rotary.h; head_dim must be even). Self-attention
  // only: token n of forward()'s input sits at position n.
  TORCH_ARG(bool, rotary) = false;
  TORCH_ARG(double, rotary_base) = 10000.0;
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;  // default: default_scale(kind, head_dim)
  // Initial value of qknorm's learnable per-head scale; default sqrt(head_dim).
  TORCH_ARG(std::optional<double>, qknorm_init_scale) = std::nullopt;
  TORCH_ARG(Backend, backend) = Backend::automatic;
  // Off by default inside a model: a non-finite activation should surface as a non-finite loss,
  // which the trainer reports with diagnostics, rather than as an exception mid-forward.
  TORCH_ARG(bool, check_finite) = false;
};

// Keys and values of the tokens seen so far, for incremental decoding with forward_cached. Keys
// are stored as the kernel uses them — rotated (rotary) and normalised where the kind normalises
// keys — so a cached step does no per-key work; (B, Hkv, length, head_dim) each (Hkv: the key/value
// heads, fewer than the query heads with grouped-query attention), undefined when empty.
struct KVCache {
  torch::Tensor keys, values;
  int64_t length() const { return keys.defined() ? keys.size(2) : 0; }
};

class MultiheadAttentionImpl : public torch::nn::Cloneable<MultiheadAttentionImpl> {
 public:
  explicit MultiheadAttentionImpl(const MultiheadAttentionOptions& options);
  MultiheadAttentionImpl(int64_t embed_dim, int64_t num_heads)
      : MultiheadAttentionImpl(MultiheadAttentionOptions(embed_dim, num_heads)) {}

  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  // Self-attention. x: (B, N, E), batch first. key_padding_mask: (B, N) bool, true = padding.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& key_padding_mask = {});
  // Causal self-attention of new tokens x (B, T, E) to the cached ones and themselves (bottom-right
  // aligned): appends their keys and values to `cache`. Needs options.causal. The same outputs as
  // forward() on the whole sequence, up to fp32 rounding, for every kind.
  torch::Tensor forward_cached(const torch::Tensor& x, KVCache& cache);
  // Cross-attention: queries from `query` (B, Nq, E), keys and values from `context` (B, Nk, E).
  torch::Tensor forward_cross(const torch::Tensor& query, const torch::Tensor& context,
                              const torch::Tensor& key_padding_mask = {});

  // When on, each forward keeps per-head diagnostics of its attention (see HeadDiagnostics).
  void set_record_diagnostics(bool on) { record_diagnostics_ = on; }
  const std::optional<HeadDiagnostics>& last_diagnostics() const { return last_diagnostics_; }

  // QK-clip (Kimi K2's MuonClip; call after an optimiser step): each head h whose max logit
  // max_logits[h] exceeds `threshold` has its query projection (weight rows and bias) scaled by
  // sqrt(threshold / max_logits[h]) and its key projection likewise, so that, for the standard kind,
  // the same inputs would reach exactly `threshold`. With grouped-query attention a key head serves
  // several query heads: the keys are left alone and the query head takes the whole factor. Kinds
  // that normalise a side ignore its factor. Non-finite maxima are skipped. Returns the heads rescaled.
  int64_t clip_qk(const std::vector<double>& max_logits, double threshold);

  int64_t head_dim() const { return options.embed_dim() / options.num_heads(); }
  int64_t kv_heads() const { return options.num_kv_heads().value_or(options.num_heads()); }
  // The functional options this module passes to quest::attention (parameters included).
  AttentionOptions attention_options(const torch::Tensor& key_padding_mask) const;

  MultiheadAttentionOptions options;
  torch::nn::Linear qkv{nullptr}, out_proj{nullptr};
  KindParameters kind_parameters;  // qknorm's head scale, qk_layernorm's affine

 private:
  torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& key_padding_mask);
  // (B, N, heads * Dh) -> (B, heads, N, Dh) view
  torch::Tensor split_heads(const torch::Tensor& x, int64_t heads) const;
  // q, k, v as (B, H or Hkv, N, Dh) views of one projection's output (B, N, E + 2 Hkv Dh).
  std::vector<torch::Tensor> split_qkv(const torch::Tensor& projected) const;
  bool record_diagnostics_ = false;
  std::optional<HeadDiagnostics> last_diagnostics_;
};
TORCH_MODULE(MultiheadAttention);

}  // namespace quest::nn
