#include "quest/torch/nn/kind_parameters.h"

#include <cmath>

namespace quest::nn {

void KindParameters::register_on(torch::nn::Module& owner, Kind kind, int64_t heads, int64_t head_dim,
                                 std::optional<double> qknorm_init_scale) {
  if (kind == Kind::qknorm) {
    // g_h = sqrt(D) gives unit vectors the logit range standard attention has for unit-variance q, k.
    const double init = qknorm_init_scale.value_or(std::sqrt(static_cast<double>(head_dim)));
    head_scale = owner.register_parameter("head_scale", torch::full({heads}, init));
  }
  if (kind == Kind::qk_layernorm) {
    q_norm_weight = owner.register_parameter("q_norm_weight", torch::ones({head_dim}));
    q_norm_bias = owner.register_parameter("q_norm_bias", torch::zeros({head_dim}));
    k_norm_weight = owner.register_parameter("k_norm_weight", torch::ones({head_dim}));
    k_norm_bias = owner.register_parameter("k_norm_bias", torch::zeros({head_dim}));
  }
}

AttentionOptions KindParameters::options(Kind kind) const {
  return AttentionOptions(kind)
      .head_scale(head_scale)
      .q_norm_weight(q_norm_weight)
      .q_norm_bias(q_norm_bias)
      .k_norm_weight(k_norm_weight)
      .k_norm_bias(k_norm_bias);
}

}  // namespace quest::nn
