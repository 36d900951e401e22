#include "quest/lab/robustness/attacks.h"

namespace quest::robustness {

using torch::Tensor;

std::string to_string(AttackKind kind) {
  switch (kind) {
    case AttackKind::fgsm: return "fgsm";
    case AttackKind::pgd_linf: return "pgd_linf";
    case AttackKind::pgd_l2: return "pgd_l2";
  }
  return "?";
}

std::optional<AttackKind> parse_attack(const std::string& name) {
  for (AttackKind k : {AttackKind::fgsm, AttackKind::pgd_linf, AttackKind::pgd_l2})
    if (to_string(k) == name) return k;
  return std::nullopt;
}

namespace {

Tensor per_sample_l2(const Tensor& x) {  // (B, ...) -> (B, 1, 1, 1)
  return x.flatten(1).norm(2, 1).view({-1, 1, 1, 1});
}

// d loss / d x, summed cross-entropy so each sample's gradient is its own.
Tensor input_gradient(const Classifier& model, const Tensor& x, const Tensor& labels) {
  const Tensor xg = x.detach().requires_grad_(true);
  const Tensor loss = torch::nn::functional::cross_entropy(
      model(xg), labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  return torch::autograd::grad({loss}, {xg})[0];
}

// Back into the ball around x0 and into [0, 1]. Clamping to [0, 1] only moves a coordinate
// towards x0 (which is in [0, 1]), so the result stays in the ball.
Tensor project(AttackKind kind, const Tensor& x, const Tensor& x0, double eps) {
  Tensor delta = x - x0;
  if (kind == AttackKind::pgd_l2) {
    const Tensor norm = per_sample_l2(delta);
    delta = delta * torch::clamp_max(eps / norm.clamp_min(1e-12), 1.0);
  } else {
    delta = delta.clamp(-eps, eps);
  }
  return (x0 + delta).clamp(0, 1);
}

}  // namespace

Tensor attack(const Classifier& model, const Tensor& images, const Tensor& labels,
              const AttackOptions& o, torch::Generator& gen) {
  TORCH_CHECK(images.dim() == 4 && images.numel() > 0, "quest::robustness::attack: expected images (B, C, H, W), got ",
              images.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == images.size(0),
              "quest::robustness::attack: need one label per image");
  TORCH_CHECK(o.eps >= 0 && std::isfinite(o.eps), "quest::robustness::attack: eps must be finite and >= 0, got ", o.eps);
  TORCH_CHECK(o.steps >= 1, "quest::robustness::attack: steps must be >= 1, got ", o.steps);
  TORCH_CHECK(o.step_ratio > 0, "quest::robustness::attack: step_ratio must be > 0, got ", o.step_ratio);
  const Tensor x0 = images.detach();
  if (o.eps == 0) return x0.clone();
  if (o.kind == AttackKind::fgsm)  // x + eps sign(grad)
    return (x0 + o.eps * input_gradient(model, x0, labels).sign()).clamp(0, 1);

  const double alpha = o.step_ratio * o.eps;
  Tensor x = x0;
  if (o.random_start) {
    if (o.kind == AttackKind::pgd_linf) {
      x = x0 + (torch::rand(x0.sizes(), gen) * 2 - 1) * o.eps;
    } else {  // uniform in the L2 ball: direction ~ N(0, I), radius eps u^(1/d)
      const Tensor dir = torch::randn(x0.sizes(), gen);
      const double d = static_cast<double>(x0[0].numel());
      const Tensor radius = o.eps * torch::rand({x0.size(0), 1, 1, 1}, gen).pow(1.0 / d);
      x = x0 + dir / per_sample_l2(dir).clamp_min(1e-12) * radius;
    }
    x = project(o.kind, x, x0, o.eps);
  }
  for (int64_t step = 0; step < o.steps; ++step) {
    const Tensor g = input_gradient(model, x, labels);
    const Tensor move = o.kind == AttackKind::pgd_linf ? g.sign() : g / per_sample_l2(g).clamp_min(1e-12);
    x = project(o.kind, x + alpha * move, x0, o.eps);
  }
  return x.detach();
}

double max_perturbation(AttackKind kind, const Tensor& adversarial, const Tensor& images) {
  const Tensor d = (adversarial - images).flatten(1);
  if (d.numel() == 0) return 0;
  return (kind == AttackKind::pgd_l2 ? d.norm(2, 1) : d.abs().amax(1)).max().item<double>();
}

}  // namespace quest::robustness
