// The learnable parameters an attention kind adds, for any module that calls quest::attention:
// qknorm's per-head scale g_h (initialised at sqrt(head_dim) unless given) and qk_layernorm's
// LayerNorm weight and bias for q and for k. Other kinds add none.
#pragma once

#include <torch/torch.h>

#include <optional>

#include "quest/torch/attention.h"

namespace quest::nn {

struct KindParameters {
  // Registers what `kind` needs on `owner` as head_scale, q_norm_weight, q_norm_bias,
  // k_norm_weight, k_norm_bias.
  void register_on(torch::nn::Module& owner, Kind kind, int64_t heads, int64_t head_dim,
                   std::optional<double> qknorm_init_scale = std::nullopt);
  // AttentionOptions for `kind` carrying these parameters (undefined ones are ignored).
  AttentionOptions options(Kind kind) const;

  torch::Tensor head_scale;                  // qknorm: (H)
  torch::Tensor q_norm_weight, q_norm_bias;  // qk_layernorm: (head_dim)
  torch::Tensor k_norm_weight, k_norm_bias;
};

}  // namespace quest::nn
