#include "quest/lab/training/optimizer.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <sstream>
#include <type_traits>

namespace quest::training {

namespace {
// torch's own key for a parameter's state: its TensorImpl (before torch 2.x's void*, a string of
// the pointer), so that state_dict()/load_state_dict() and the unfused step see the same slots.
template <typename Key>
Key state_key(c10::TensorImpl* impl) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;
    text << impl;
    return text.str();
  } else {
    return impl;
  }
}

bool dense_float(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.layout() == torch::kStrided &&
         t.scalar_type() == torch::kFloat && t.is_contiguous();
}

constexpr int64_t kGrain = 1 << 15;  // elements per parallel chunk: small tensors stay serial

}  // namespace

void FusedAdamW::load(torch::serialize::InputArchive& archive) {
  // torch's layout: "state" (one archive per parameter, under its key) and "param_groups"
  // ("param_groups/size", "param_groups/<g>" with "params/size", "params/<i>" = a key). The keys
  // of the first group's parameters say which format this is.
  torch::serialize::InputArchive groups, first, states;
  c10::IValue key;
  const bool legacy = archive.try_read("param_groups", groups) &&
                      groups.try_read("param_groups/0", first) && first.try_read("params/0", key) &&
                      key.isString() && key.toStringRef().rfind("0x", 0) == 0;
  if (!legacy) return torch::optim::AdamW::load(archive);
  archive.read("state", states);
  torch::Tensor size;
  groups.read("param_groups/size", size);
  TORCH_CHECK(size.item<int64_t>() == static_cast<int64_t>(param_groups_.size()),
              "quest::training: the checkpoint's optimizer has ", size.item<int64_t>(),
              " parameter groups, this model's ", param_groups_.size());
  decltype(state_) loaded;
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    torch::serialize::InputArchive group;
    groups.read("param_groups/" + std::to_string(g), group);
    torch::Tensor count;
    group.read("params/size", count);
    auto& params = param_groups_[g].params();
    TORCH_CHECK(count.item<int64_t>() == static_cast<int64_t>(params.size()),
                "quest::training: the checkpoint's optimizer group ", g, " has ", count.item<int64_t>(),
                " parameters, this model's ", params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      c10::IValue old_key;
      group.read("params/" + std::to_string(i), old_key);
      torch::serialize::InputArchive saved;
      if (!states.try_read(old_key.toStringRef(), saved)) continue;  // no step taken for it yet
      auto state = std::make_unique<torch::optim::AdamWParamState>();
      state->serialize(saved);
      TORCH_CHECK(state->exp_avg().sizes() == params[i].sizes() &&
                      state->exp_avg_sq().sizes() == params[i].sizes(),
                  "quest::training: the checkpoint's optimizer state for parameter ", i, " of group ",
                  g, " has shape ", state->exp_avg().sizes(), ", the parameter ", params[i].sizes());
      loaded[state_key<typename decltype(state_)::key_type>(params[i].unsafeGetTensorImpl())] =
          std::move(state);
    }
  }
  state_ = std::move(loaded);
}

bool FusedAdamW::fusable() const {
  for (const auto& group : param_groups_) {
    if (static_cast<const torch::optim::AdamWOptions&>(group.options()).amsgrad()) return false;
    for (const auto& p : group.params())
      if (p.grad().defined() && !(dense_float(p) && dense_float(p.grad()))) return false;
  }
  return true;
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  if (!fusable()) return torch::optim::AdamW::step(closure);
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto& slot = state_[state_key<typename decltype(state_)::key_type>(p.unsafeGetTensorImpl())];
      if (!slot) {  // as AdamW: zero moments at the first step
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        slot = std::move(fresh);
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*slot);
      TORCH_CHECK(s.exp_avg().numel() == p.numel() && s.exp_avg_sq().numel() == p.numel(),
                  "quest::training: optimizer state of ", s.exp_avg().numel(),
                  " elements for a parameter of ", p.numel(), " (a checkpoint of another model?)");
      s.step(s.step() + 1);
      const double bias1 = 1 - std::pow(beta1, s.step()), bias2 = 1 - std::pow(beta2, s.step());
      // The factors in float as torch's kernels cast their scalars; the order of AdamW's ops:
      // p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
      // p += -(lr / bias1) m / (sqrt(v) / sqrt(bias2) + eps).
      const bool decay = o.weight_decay() != 0;
      const float keep = static_cast<float>(1 - o.lr() * o.weight_decay());
      const float b1 = static_cast<float>(beta1), c1 = static_cast<float>(1 - beta1);
      const float b2 = static_cast<float>(beta2), c2 = static_cast<float>(1 - beta2);
      const float root_bias2 = static_cast<float>(std::sqrt(bias2));
      const float eps = static_cast<float>(o.eps());
      const float step_size = static_cast<float>(-o.lr() / bias1);
      float* w = p.data_ptr<float>();
      const float* g = p.grad().data_ptr<float>();
      float* m = s.exp_avg().data_ptr<float>();
      float* v = s.exp_avg_sq().data_ptr<float>();
      at::parallel_for(0, p.numel(), kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const float x = decay ? w[i] * keep : w[i];
          m[i] = m[i] * b1 + c1 * g[i];
          v[i] = v[i] * b2 + c2 * g[i] * g[i];
          w[i] = x + step_size * m[i] / (std::sqrt(v[i]) / root_bias2 + eps);
        }
      });
    }
  }
  return loss;
}

double clip_grad_norm(const std::vector<torch::Tensor>& parameters, double max_norm) {
  double sum = 0;
  std::vector<torch::Tensor> grads;
  for (const auto& p : parameters) {
    if (!p.grad().defined()) continue;
    grads.push_back(p.grad());
    const torch::Tensor& g = grads.back();
    if (!dense_float(g)) {
      sum += g.detach().to(torch::kDouble).pow(2).sum().item<double>();
      continue;
    }
    const float* x = g.data_ptr<float>();
    sum += at::parallel_reduce(0, g.numel(), kGrain, 0.0, [&](int64_t begin, int64_t end, double acc) {
      for (int64_t i = begin; i < end; ++i) acc += static_cast<double>(x[i]) * x[i];
      return acc;
    }, std::plus<double>());
  }
  const double norm = std::sqrt(sum);
  const double coef = max_norm / (norm + 1e-6);
  if (std::isfinite(norm) && coef < 1) {
    torch::NoGradGuard no_grad;
    for (auto& g : grads) g.mul_(coef);
  }
  return norm;
}

}  // namespace quest::training
