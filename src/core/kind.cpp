#include "quest/core/kind.h"

#include <cmath>

namespace quest {

KindTraits kind_traits(Kind kind) {
  switch (kind) {
    case Kind::standard: return {Norm::none, Norm::none};
    case Kind::quest: return {Norm::none, Norm::l2};
    case Kind::qnorm: return {Norm::l2, Norm::none};
    case Kind::qknorm: return {Norm::l2, Norm::l2};
    case Kind::qk_layernorm: return {Norm::layer, Norm::layer};
  }
  return {Norm::none, Norm::none};
}

double default_scale(Kind kind, int64_t head_dim) {
  const double d = static_cast<double>(head_dim);
  switch (kind) {
    case Kind::standard:
    case Kind::qk_layernorm: return 1.0 / std::sqrt(d);
    case Kind::quest:
    case Kind::qnorm: return 1.0;
    case Kind::qknorm: return std::sqrt(d);
  }
  return 1.0;
}

std::string to_string(Kind kind) {
  switch (kind) {
    case Kind::standard: return "standard";
    case Kind::quest: return "quest";
    case Kind::qnorm: return "qnorm";
    case Kind::qknorm: return "qknorm";
    case Kind::qk_layernorm: return "qk_layernorm";
  }
  return "?";
}

std::string to_string(Norm norm) {
  switch (norm) {
    case Norm::none: return "none";
    case Norm::l2: return "l2";
    case Norm::layer: return "layer";
  }
  return "?";
}

std::optional<Kind> parse_kind(std::string_view name) {
  for (Kind k : all_kinds())
    if (name == to_string(k)) return k;
  if (name == "sdpa") return Kind::standard;
  if (name == "qk-layernorm") return Kind::qk_layernorm;
  return std::nullopt;
}

const std::vector<Kind>& all_kinds() {
  static const std::vector<Kind> kinds = {Kind::standard, Kind::quest, Kind::qnorm, Kind::qknorm,
                                          Kind::qk_layernorm};
  return kinds;
}

}  // namespace quest
