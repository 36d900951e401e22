#include "quest/lab/models/retrieval.h"

#include "quest/torch/nn/init.h"

namespace quest::models {

RetrievalModelImpl::RetrievalModelImpl(const RetrievalModelOptions& o) : options(o) {
  TORCH_CHECK(o.key_dim() >= 1 && o.classes() >= 2 && o.dim() >= 1 && o.heads() >= 1 && o.hidden() >= 1,
              "quest::models::RetrievalModel: key_dim, dim, heads, hidden must be >= 1 and classes >= 2");
  TORCH_CHECK(!o.projections() || o.dim() % o.heads() == 0, "quest::models::RetrievalModel: dim ",
              o.dim(), " is not divisible by heads ", o.heads());
  if (o.projections()) {
    if (!self_attention()) query_token = register_parameter("query_token", torch::randn({o.dim()}));
    encoder = register_module(
        "encoder", torch::nn::Sequential(torch::nn::Linear(o.key_dim(), o.hidden()), torch::nn::GELU(),
                                         torch::nn::Linear(o.hidden(), o.dim())));
    q_proj = register_module("q_proj", torch::nn::Linear(o.dim(), o.dim()));
    k_proj = register_module("k_proj", torch::nn::Linear(o.dim(), o.dim()));
    v_proj = register_module("v_proj", torch::nn::Linear(o.classes(), o.dim()));
    out = register_module("out", torch::nn::Linear(o.dim(), o.classes()));
    kind_parameters.register_on(*this, o.attention(), o.heads(), o.dim() / o.heads());
  } else {
    // A unit-variance query like the keys it meets, so every kind starts near uniform attention.
    if (!self_attention())
      query_token = register_parameter("query_token", torch::randn({o.key_dim()}) / std::sqrt(double(o.key_dim())));
    out = register_module("out", torch::nn::Linear(o.classes(), o.classes()));
    kind_parameters.register_on(*this, o.attention(), 1, o.key_dim());
  }
}

void RetrievalModelImpl::initialize(at::Generator generator) {
  nn::reset_parameters(*this, generator);
  if (!query_token.defined()) return;
  torch::NoGradGuard no_grad;
  query_token.normal_(0.0, options.projections() ? 1.0 : 1.0 / std::sqrt(double(options.key_dim())), generator);
}

RetrievalModelImpl::Heads RetrievalModelImpl::split_heads(const torch::Tensor& keys, const torch::Tensor& codes) {
  const auto& o = options;
  TORCH_CHECK(keys.dim() == 3 && keys.size(2) == o.key_dim(), "quest::models::RetrievalModel: keys must be (B, N, ",
              o.key_dim(), "), got ", keys.sizes());
  TORCH_CHECK(codes.dim() == 3 && codes.size(0) == keys.size(0) && codes.size(1) == keys.size(1) &&
                  codes.size(2) == o.classes(),
              "quest::models::RetrievalModel: codes must be (B, N, ", o.classes(), ") matching keys ",
              keys.sizes(), ", got ", codes.sizes());
  const int64_t B = keys.size(0), N = keys.size(1);
  if (!o.projections())
    return {self_attention() ? keys.unsqueeze(1) : query_token.view({1, 1, 1, -1}).expand({B, 1, 1, o.key_dim()}),
            keys.unsqueeze(1), codes.unsqueeze(1)};
  const int64_t H = o.heads(), Dh = o.dim() / H;
  auto to_heads = [&](const torch::Tensor& x, int64_t n) {  // (B, n, dim) -> (B, H, n, Dh)
    return x.view({B, n, H, Dh}).transpose(1, 2).contiguous();
  };
  const auto h = encoder->forward(keys);
  if (self_attention()) return {to_heads(q_proj(h), N), to_heads(k_proj(h), N), to_heads(v_proj(codes), N)};
  const auto q = q_proj(query_token).view({1, 1, o.dim()}).expand({B, 1, o.dim()});
  return {to_heads(q, 1), to_heads(k_proj(h), N), to_heads(v_proj(codes), N)};
}

torch::Tensor RetrievalModelImpl::forward(const torch::Tensor& keys, const torch::Tensor& codes) {
  return probe(keys, codes).logits;
}

RetrievalProbe RetrievalModelImpl::probe(const torch::Tensor& keys, const torch::Tensor& codes) {
  const auto heads_ = split_heads(keys, codes);
  const auto attention_options = kind_parameters.options(options.attention()).backend(options.backend());
  const bool diagnose = !is_training();  // probes run in eval mode; training skips the statistics
  auto result = attention_forward(heads_.q, heads_.k, heads_.v, attention_options, false, diagnose);
  const int64_t B = keys.size(0);
  RetrievalProbe probe;
  probe.logits = out(result.output.mean(2).reshape({B, -1}));  // mean over query rows -> (B, H*Dv)
  if (result.diagnostics) {
    const auto& d = *result.diagnostics;
    for (size_t h = 0; h < d.logit_abs_max.size(); ++h) {
      probe.max_logit = std::max(probe.max_logit, d.logit_abs_max[h]);
      probe.entropy += d.entropy_mean[h] / d.logit_abs_max.size();
    }
    torch::NoGradGuard no_grad;
    probe.key_norms = heads_.k.norm(2, -1).mean(1);           // (B, N)
    probe.query_norm = heads_.q.norm(2, -1).mean({1, 2});  // (B)
  }
  return probe;
}

}  // namespace quest::models
