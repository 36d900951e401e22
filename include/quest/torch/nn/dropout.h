// Dropout and drop-path (stochastic depth) that draw their masks from quest::current_generator()
// (quest/torch/random.h) instead of torch's global generator: inside a training run's
// GeneratorScope they are reproducible per run, also when runs share a process.
#pragma once

#include <torch/torch.h>

namespace quest::nn {

// Zeroes each element with probability p and rescales the rest by 1 / (1 - p); identity when not
// training or p == 0.
torch::Tensor dropout(const torch::Tensor& x, double p, bool training);

// Drops the whole residual branch of a sample (dim 0) with probability p, rescaling kept ones.
torch::Tensor drop_path(const torch::Tensor& branch, double p, bool training);

class DropoutImpl : public torch::nn::Cloneable<DropoutImpl> {
 public:
  explicit DropoutImpl(double p = 0.5);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  double p;
};
TORCH_MODULE(Dropout);

}  // namespace quest::nn
