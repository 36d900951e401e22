#include "quest/torch/nn/dropout.h"

#include "quest/torch/random.h"

namespace quest::nn {

torch::Tensor dropout(const torch::Tensor& x, double p, bool training) {
  TORCH_CHECK(p >= 0 && p < 1, "quest::nn::dropout: p must be in [0, 1), got ", p);
  if (!training || p == 0) return x;
  const torch::Tensor keep = torch::empty_like(x).bernoulli_(1.0 - p, current_generator());
  return x * keep / (1.0 - p);
}

torch::Tensor drop_path(const torch::Tensor& branch, double p, bool training) {
  TORCH_CHECK(p >= 0 && p < 1, "quest::nn::drop_path: p must be in [0, 1), got ", p);
  if (!training || p == 0) return branch;
  std::vector<int64_t> shape(branch.dim(), 1);
  shape[0] = branch.size(0);
  const torch::Tensor keep =
      torch::empty(shape, branch.options()).bernoulli_(1.0 - p, current_generator());
  return branch * keep / (1.0 - p);
}

DropoutImpl::DropoutImpl(double p_) : p(p_) { reset(); }

void DropoutImpl::reset() {
  TORCH_CHECK(p >= 0 && p < 1, "quest::nn::Dropout: p must be in [0, 1), got ", p);
}

torch::Tensor DropoutImpl::forward(const torch::Tensor& x) { return nn::dropout(x, p, is_training()); }

}  // namespace quest::nn
