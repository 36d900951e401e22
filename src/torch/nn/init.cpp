#include "quest/torch/nn/init.h"

#include <cmath>

namespace quest::nn {

namespace {

// weight, bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in = weight.numel() / out_features.
void reset_affine(torch::Tensor& weight, torch::Tensor& bias, at::Generator& gen) {
  torch::NoGradGuard no_grad;
  const double fan_in = static_cast<double>(weight.numel() / weight.size(0));
  const double bound = 1.0 / std::sqrt(fan_in);
  weight.uniform_(-bound, bound, gen);
  if (bias.defined()) bias.uniform_(-bound, bound, gen);
}

}  // namespace

void reset_parameters(torch::nn::Module& module, at::Generator generator) {
  auto visit = [&](torch::nn::Module& m) {
    if (auto* l = dynamic_cast<torch::nn::LinearImpl*>(&m)) {
      reset_affine(l->weight, l->bias, generator);
    } else if (auto* c1 = dynamic_cast<torch::nn::Conv1dImpl*>(&m)) {
      reset_affine(c1->weight, c1->bias, generator);
    } else if (auto* c2 = dynamic_cast<torch::nn::Conv2dImpl*>(&m)) {
      reset_affine(c2->weight, c2->bias, generator);
    } else if (auto* c3 = dynamic_cast<torch::nn::Conv3dImpl*>(&m)) {
      reset_affine(c3->weight, c3->bias, generator);
    } else if (auto* e = dynamic_cast<torch::nn::EmbeddingImpl*>(&m)) {
      torch::NoGradGuard no_grad;
      e->weight.normal_(0.0, 1.0, generator);
    }
  };
  visit(module);
  for (const auto& child : module.modules(/*include_self=*/false)) visit(*child);
}

}  // namespace quest::nn
