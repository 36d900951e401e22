// Rotary position embedding (RoPE, Su et al. 2021, "RoFormer"): each head vector's two halves
// (x1, x2) are rotated pairwise by angles position * base^(-2i/D), so q·k depends on positions
// only through their difference. A rotation keeps a vector's norm, so RoPE commutes with
// quest's key normalisation: normalise(R k) = R normalise(k).
#pragma once

#include <torch/torch.h>

namespace quest::nn {

// x: (B, H, N, D), D even; token n sits at position offset + n. Differentiable.
torch::Tensor apply_rotary(const torch::Tensor& x, int64_t offset = 0, double base = 10000.0);

}  // namespace quest::nn
