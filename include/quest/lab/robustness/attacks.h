// White-box attacks on an image classifier over inputs in [0, 1], cross-entropy loss:
// FGSM, PGD-Linf with a random start, PGD-L2 with a random start (Madry et al. 2018).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <optional>
#include <string>

namespace quest::robustness {

// images (B, C, H, W) in [0, 1] -> logits (B, classes). Called in eval mode by the user.
using Classifier = std::function<torch::Tensor(const torch::Tensor&)>;

enum class AttackKind { fgsm, pgd_linf, pgd_l2 };
std::string to_string(AttackKind kind);
std::optional<AttackKind> parse_attack(const std::string& name);

struct AttackOptions {
  AttackKind kind = AttackKind::pgd_linf;
  double eps = 8.0 / 255;     // radius of the L-inf or L2 ball
  int64_t steps = 10;         // PGD iterations (FGSM: one step of size eps)
  double step_ratio = 0.25;   // PGD step size = step_ratio * eps
  bool random_start = true;   // PGD: start at a uniform point of the ball
};

// Adversarial versions of `images` for `labels`: every result lies in the eps-ball of its image
// and in [0, 1]. eps = 0 returns the images unchanged.
torch::Tensor attack(const Classifier& model, const torch::Tensor& images,
                     const torch::Tensor& labels, const AttackOptions& options,
                     torch::Generator& gen);

// Largest distance of any adversarial image from its clean image, in the attack's norm.
double max_perturbation(AttackKind kind, const torch::Tensor& adversarial, const torch::Tensor& images);

}  // namespace quest::robustness
