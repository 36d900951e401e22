// A torch::nn::Linear applied to (..., in) inputs as one matrix product with the bias folded in.
#pragma once

#include <torch/torch.h>

namespace quest::nn {

// layer(x) for x of rank >= 2, as a single addmm over the flattened leading dimensions. LibTorch
// 1.13's linear takes addmm only for 2-D inputs; for (B, N, in) it runs matmul and then a separate
// bias add_ over the whole output (~25 % on top of the product at the ViT's shapes).
torch::Tensor linear(const torch::nn::Linear& layer, const torch::Tensor& x);

}  // namespace quest::nn
