#include "quest/torch/nn/linear.h"

namespace quest::nn {

torch::Tensor linear(const torch::nn::Linear& layer, const torch::Tensor& x) {
  const torch::Tensor& w = layer->weight;
  const torch::Tensor& b = layer->bias;
  if (x.dim() <= 2 || !b.defined()) return torch::nn::functional::linear(x, w, b);  // one op already
  TORCH_CHECK(x.size(-1) == w.size(1), "quest::nn::linear: input has ", x.size(-1),
              " features, the layer takes ", w.size(1), " (input shape ", x.sizes(), ")");
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = w.size(0);
  return torch::addmm(b, x.reshape({-1, x.size(-1)}), w.t()).view(shape);
}

}  // namespace quest::nn
