// Parameter initialisation from an explicit generator. LibTorch's modules initialise from torch's
// global generator when constructed; these re-draw the same distributions from `generator`, so a
// model's initial weights depend on its run's seed alone (not on what else the process drew).
#pragma once

#include <torch/torch.h>

namespace quest::nn {

// Re-draws every Linear, Conv1d/2d/3d and Embedding inside `module` (itself included) with
// LibTorch's default distributions: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (what
// kaiming_uniform_(a = sqrt(5)) gives), embeddings ~ N(0, 1). Normalisation layers and quest's
// kind parameters are deterministic and left as they are; a model's own tensors are its own job.
void reset_parameters(torch::nn::Module& module, at::Generator generator);

}  // namespace quest::nn
