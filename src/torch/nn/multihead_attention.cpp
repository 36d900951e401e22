#include "quest/torch/nn/multihead_attention.h"

#include <cmath>

#include "quest/torch/nn/linear.h"
#include "quest/torch/nn/rotary.h"

namespace quest::nn {

MultiheadAttentionImpl::MultiheadAttentionImpl(const MultiheadAttentionOptions& options_)
    : options(options_) {
  reset();
}

void MultiheadAttentionImpl::reset() {
  const int64_t e = options.embed_dim(), h = options.num_heads();
  TORCH_CHECK(e > 0 && h > 0, "quest::nn::MultiheadAttention: embed_dim (", e,
              ") and num_heads (", h, ") must be positive");
  TORCH_CHECK(e % h == 0, "quest::nn::MultiheadAttention: embed_dim ", e,
              " is not divisible by num_heads ", h);
  TORCH_CHECK(!options.rotary() || (e / h) % 2 == 0,
              "quest::nn::MultiheadAttention: rotary needs an even head_dim, got ", e / h);
  TORCH_CHECK(options.dropout() >= 0 && options.dropout() < 1,
              "quest::nn::MultiheadAttention: dropout must be in [0, 1), got ", options.dropout());
  const int64_t hkv = kv_heads();
  TORCH_CHECK(hkv > 0 && h % hkv == 0, "quest::nn::MultiheadAttention: num_heads ", h,
              " is not a multiple of num_kv_heads ", hkv);
  qkv = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(e, e + 2 * hkv * (e / h))
                                                     .bias(options.bias())));
  out_proj = register_module("out_proj", torch::nn::Linear(torch::nn::LinearOptions(e, e)
                                                               .bias(options.bias())));
  kind_parameters = KindParameters{};
  kind_parameters.register_on(*this, options.kind(), h, e / h, options.qknorm_init_scale());
}

void MultiheadAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "quest::nn::MultiheadAttention(embed_dim=" << options.embed_dim()
         << ", num_heads=" << options.num_heads();
  if (kv_heads() != options.num_heads()) stream << ", num_kv_heads=" << kv_heads();
  stream << ", kind=" << to_string(options.kind())
         << ", dropout=" << options.dropout() << ", causal=" << options.causal()
         << (options.rotary() ? ", rotary" : "") << ")";
}

AttentionOptions MultiheadAttentionImpl::attention_options(const torch::Tensor& mask) const {
  return kind_parameters.options(options.kind())
      .scale(options.scale())
      .causal(options.causal())
      .key_padding_mask(mask)
      .dropout(options.dropout())
      .training(is_training())
      .backend(options.backend())
      .check_finite(options.check_finite())
      .enable_gqa(kv_heads() != options.num_heads());
}

int64_t MultiheadAttentionImpl::clip_qk(const std::vector<double>& max_logits, double threshold) {
  const int64_t h = options.num_heads(), dh = head_dim(), e = options.embed_dim();
  TORCH_CHECK(static_cast<int64_t>(max_logits.size()) == h, "quest::nn::MultiheadAttention::clip_qk: ",
              max_logits.size(), " max logits for ", h, " heads");
  TORCH_CHECK(threshold > 0, "quest::nn::MultiheadAttention::clip_qk: threshold must be positive, got ", threshold);
  torch::NoGradGuard no_grad;
  const bool grouped = kv_heads() != h;
  int64_t clipped = 0;
  for (int64_t head = 0; head < h; ++head) {
    const double s = max_logits[head];
    if (!std::isfinite(s) || s <= threshold) continue;
    const double gamma = threshold / s;
    std::vector<std::pair<int64_t, double>> rows = {{head * dh, grouped ? gamma : std::sqrt(gamma)}};  // q
    if (!grouped) rows.push_back({e + head * dh, std::sqrt(gamma)});                                      // k
    for (const auto& [first, factor] : rows) {
      qkv->weight.narrow(0, first, dh).mul_(factor);
      if (qkv->bias.defined()) qkv->bias.narrow(0, first, dh).mul_(factor);
    }
    ++clipped;
  }
  return clipped;
}

torch::Tensor MultiheadAttentionImpl::split_heads(const torch::Tensor& x, int64_t heads) const {
  return x.view({x.size(0), x.size(1), heads, head_dim()}).transpose(1, 2);
}

std::vector<torch::Tensor> MultiheadAttentionImpl::split_qkv(const torch::Tensor& projected) const {
  const int64_t e = options.embed_dim(), kv = kv_heads() * head_dim();
  return {split_heads(projected.slice(2, 0, e), options.num_heads()),
          split_heads(projected.slice(2, e, e + kv), kv_heads()),
          split_heads(projected.slice(2, e + kv, e + 2 * kv), kv_heads())};
}

torch::Tensor MultiheadAttentionImpl::attend(const torch::Tensor& q, const torch::Tensor& k,
                                             const torch::Tensor& v, const torch::Tensor& mask) {
  AttentionOutput r = attention_forward(q, k, v, attention_options(mask), false,
                                        record_diagnostics_);
  last_diagnostics_ = std::move(r.diagnostics);
  // (B, H, N, Dh) -> (B, N, E)
  const torch::Tensor o = r.output.transpose(1, 2).reshape({q.size(0), q.size(2), -1});
  return linear(out_proj, o);
}

static void check_sequence(const torch::Tensor& x, const char* name, int64_t embed_dim) {
  TORCH_CHECK(x.defined() && x.dim() == 3 && x.size(2) == embed_dim,
              "quest::nn::MultiheadAttention: ", name, " must have shape (B, N, ", embed_dim,
              "), got ", x.defined() ? x.sizes() : c10::IntArrayRef{});
}

torch::Tensor MultiheadAttentionImpl::forward(const torch::Tensor& x,
                                              const torch::Tensor& key_padding_mask) {
  check_sequence(x, "x", options.embed_dim());
  if (!options.rotary() && kv_heads() == options.num_heads()) {
    // The heads straight from the projection, no split or merge copies.
    AttentionOutput r = attention_packed_forward(linear(qkv, x), options.num_heads(),
                                                 attention_options(key_padding_mask), false, record_diagnostics_);
    last_diagnostics_ = std::move(r.diagnostics);
    return linear(out_proj, r.output);
  }
  // Views of the projection; rotary writes new q and k.
  const std::vector<torch::Tensor> parts = split_qkv(linear(qkv, x));
  if (!options.rotary()) return attend(parts[0], parts[1], parts[2], key_padding_mask);
  return attend(apply_rotary(parts[0], 0, options.rotary_base()),
                apply_rotary(parts[1], 0, options.rotary_base()), parts[2], key_padding_mask);
}

torch::Tensor MultiheadAttentionImpl::forward_cached(const torch::Tensor& x, KVCache& cache) {
  check_sequence(x, "x", options.embed_dim());
  TORCH_CHECK(options.causal(), "quest::nn::MultiheadAttention::forward_cached needs a causal module");
  const int64_t b = x.size(0), n = x.size(1);
  TORCH_CHECK(!cache.keys.defined() || (cache.keys.size(0) == b && cache.keys.size(1) == kv_heads()),
              "quest::nn::MultiheadAttention::forward_cached: the cache holds batch ",
              cache.keys.size(0), ", heads ", cache.keys.size(1), "; x has batch ", b, " and the module ",
              kv_heads(), " key/value heads");
  const std::vector<torch::Tensor> qkv_heads = split_qkv(linear(qkv, x));
  torch::Tensor q = qkv_heads[0], k = qkv_heads[1];
  if (options.rotary()) {
    q = apply_rotary(q, cache.length(), options.rotary_base());
    k = apply_rotary(k, cache.length(), options.rotary_base());
  }
  const AttentionOptions o = attention_options({})
                                 .causal_alignment(CausalAlignment::bottom_right)
                                 .keys_normalized(true);
  k = normalize_keys(k, o);
  cache.keys = cache.keys.defined() ? torch::cat({cache.keys, k}, 2) : k.contiguous();
  cache.values = cache.values.defined() ? torch::cat({cache.values, qkv_heads[2]}, 2)
                                        : qkv_heads[2].contiguous();
  AttentionOutput r = attention_forward(q, cache.keys, cache.values, o, false, record_diagnostics_);
  last_diagnostics_ = std::move(r.diagnostics);
  return linear(out_proj, r.output.transpose(1, 2).reshape({b, n, -1}));
}

torch::Tensor MultiheadAttentionImpl::forward_cross(const torch::Tensor& query,
                                                    const torch::Tensor& context,
                                                    const torch::Tensor& key_padding_mask) {
  check_sequence(query, "query", options.embed_dim());
  check_sequence(context, "context", options.embed_dim());
  TORCH_CHECK(!options.rotary(), "quest::nn::MultiheadAttention: rotary positions are for "
              "self-attention; forward_cross has no shared positions");
  TORCH_CHECK(query.size(0) == context.size(0), "quest::nn::MultiheadAttention: query batch ",
              query.size(0), " differs from context batch ", context.size(0));
  const int64_t e = options.embed_dim(), kv = kv_heads() * head_dim();
  const torch::Tensor w = qkv->weight, bias = qkv->bias;
  auto project = [&](const torch::Tensor& x, int64_t from, int64_t to) {
    return torch::nn::functional::linear(x, w.slice(0, from, to),
                                         bias.defined() ? bias.slice(0, from, to) : bias);
  };
  const torch::Tensor q = split_heads(project(query, 0, e), options.num_heads());
  const torch::Tensor kv_proj = project(context, e, e + 2 * kv);
  const torch::Tensor k = split_heads(kv_proj.slice(2, 0, kv), kv_heads());
  const torch::Tensor v = split_heads(kv_proj.slice(2, kv, 2 * kv), kv_heads());
  return attend(q, k, v, key_padding_mask);
}

}  // namespace quest::nn
