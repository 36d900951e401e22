#include "quest/torch/nn/rotary.h"

namespace quest::nn {

torch::Tensor apply_rotary(const torch::Tensor& x, int64_t offset, double base) {
  TORCH_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, "quest::nn::apply_rotary: x must be (B, H, N, D) "
              "with D even, got ", x.sizes());
  TORCH_CHECK(offset >= 0 && base > 1, "quest::nn::apply_rotary: offset must be >= 0 and base > 1");
  const int64_t n = x.size(2), half = x.size(3) / 2;
  // Angles in double, so long positions keep their precision; then the input's dtype.
  const auto f64 = torch::TensorOptions().dtype(torch::kDouble);
  const torch::Tensor inv_freq =
      torch::pow(base, -torch::arange(0, half, f64) * (2.0 / static_cast<double>(x.size(3))));
  const torch::Tensor angles = torch::arange(offset, offset + n, f64).unsqueeze(1) * inv_freq;
  const torch::Tensor cos = angles.cos().to(x.scalar_type()), sin = angles.sin().to(x.scalar_type());
  const torch::Tensor x1 = x.narrow(3, 0, half), x2 = x.narrow(3, half, half);
  return torch::cat({x1 * cos - x2 * sin, x1 * sin + x2 * cos}, 3);
}

}  // namespace quest::nn
