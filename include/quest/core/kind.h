// The attention family: which normalisation each kind applies to queries and keys, and its scale.
// Torch-free: shared by the core kernels and the LibTorch layer.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace quest {

// standard:     s = (1/sqrt(D)) q.k
// quest:        s = q.k/|k|                      (keys on the unit sphere, scale 1)
// qnorm:        s = q/|q|.k                      (queries only, scale 1)
// qknorm:       s = g_h q/|q|.k/|k|              (g_h learnable per head, initial sqrt(D))
// qk_layernorm: s = (1/sqrt(D)) LN(q).LN(k)      (per-head LayerNorm with affine)
enum class Kind { standard, quest, qnorm, qknorm, qk_layernorm };

// What is done to a query or key row (along the head dimension) before the dot product.
enum class Norm { none, l2, layer };

struct KindTraits {
  Norm q_norm;
  Norm k_norm;
};

KindTraits kind_traits(Kind kind);

// Logit scale a kind uses when none is given: 1/sqrt(D) for standard and qk_layernorm,
// 1 for quest and qnorm, sqrt(D) for qknorm (its learnable per-head scale starts there, so that
// unit vectors get the logit range standard attention has for unit-variance q and k).
double default_scale(Kind kind, int64_t head_dim);

std::string to_string(Kind kind);
std::string to_string(Norm norm);
// Accepts the names printed by to_string (and "qk-layernorm" / "sdpa" as aliases).
std::optional<Kind> parse_kind(std::string_view name);
const std::vector<Kind>& all_kinds();

}  // namespace quest
