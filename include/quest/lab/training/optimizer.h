// The training engine's optimizer step in one pass per parameter. LibTorch's AdamW runs ~8
// tensor ops per parameter tensor and clip_grad_norm_ 2 more; on the models quest trains (~60
// small tensors) that per-op overhead cost more than the arithmetic (~7 % of a ViT step).
#pragma once

#include <torch/torch.h>

#include <vector>

namespace quest::training {

// torch::optim::AdamW (decoupled weight decay, bias-corrected moments) with one fused loop per
// parameter: the same state (AdamWParamState: step, exp_avg, exp_avg_sq), so checkpoints and
// save/load are torch's, and the same update up to float rounding. Falls back to AdamW::step for
// what the loop does not cover (amsgrad, non-float32, non-contiguous or sparse tensors).
class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
  // torch's load, and also state that LibTorch 1.13 saved: it keyed each parameter's state by
  // the hex text of its TensorImpl ("0x55d0..."), which LibTorch 2.x's loader reads as the number
  // 0 for every parameter and then maps to garbage (a heap corruption, seen resuming a 1.13 run).
  // Such state is matched to the parameters by their order in the groups, as torch's loader does.
  void load(torch::serialize::InputArchive& archive) override;

 private:
  bool fusable() const;
};

// The total L2 norm of the parameters' gradients (accumulated in double), and, where it exceeds
// max_norm, the gradients scaled by max_norm / (norm + 1e-6) as torch::nn::utils::clip_grad_norm_
// does. max_norm = +inf only measures. A non-finite norm scales nothing.
double clip_grad_norm(const std::vector<torch::Tensor>& parameters, double max_norm);

}  // namespace quest::training
