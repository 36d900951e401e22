#include "quest/core/problem.h"

#include <cmath>

namespace quest {

std::string to_string(CausalAlignment alignment) {
  return alignment == CausalAlignment::bottom_right ? "bottom_right" : "top_left";
}

std::optional<CausalAlignment> parse_causal_alignment(std::string_view name) {
  for (CausalAlignment a : {CausalAlignment::top_left, CausalAlignment::bottom_right})
    if (name == to_string(a)) return a;
  return std::nullopt;
}

template <typename T>
void check_args(const AttentionArgs<T>& a, const char* entry) {
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument(std::string("quest::") + entry + ": " + what);
  };
  const AttentionDims& d = a.dims;
  if (d.batch < 1 || d.heads < 1 || d.q_len < 1 || d.k_len < 1 || d.qk_dim < 1 || d.v_dim < 1)
    fail("every dimension must be >= 1, got B=" + std::to_string(d.batch) + " H=" +
         std::to_string(d.heads) + " Nq=" + std::to_string(d.q_len) + " Nk=" +
         std::to_string(d.k_len) + " Dk=" + std::to_string(d.qk_dim) + " Dv=" +
         std::to_string(d.v_dim));
  if (!a.q.data || !a.k.data || !a.v.data) fail("q, k and v must not be null");
  if (!(a.l2_eps > 0) || !(a.layernorm_eps > 0)) fail("l2_eps and layernorm_eps must be > 0");
  if (!(a.dropout >= 0 && a.dropout < 1))
    fail("dropout must be in [0, 1), got " + std::to_string(a.dropout));
  if (!a.head_scale && !std::isfinite(a.scale)) fail("scale must be finite");
}

template void check_args<float>(const AttentionArgs<float>&, const char*);
template void check_args<double>(const AttentionArgs<double>&, const char*);

void dropout_keep_mask(uint64_t seed, double p, const AttentionDims& d, bool* keep) {
  int64_t idx = 0;
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.heads; ++h)
      for (int64_t i = 0; i < d.q_len; ++i)
        for (int64_t j = 0; j < d.k_len; ++j) keep[idx++] = dropout_keep(seed, p, d, b, h, i, j);
}

}  // namespace quest
