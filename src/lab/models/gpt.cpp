#include "quest/lab/models/gpt.h"

#include "quest/torch/nn/init.h"
#include "quest/torch/nn/linear.h"

namespace quest::models {

GptBlockImpl::GptBlockImpl(const GptOptions& o) {
  const int64_t hidden = static_cast<int64_t>(o.dim() * o.mlp_ratio());
  norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim()})));
  attn = register_module("attn", nn::MultiheadAttention(nn::MultiheadAttentionOptions(o.dim(), o.heads())
                                                            .num_kv_heads(o.kv_heads() > 0 ? std::optional<int64_t>(o.kv_heads())
                                                                                           : std::nullopt)
                                                            .kind(o.attention())
                                                            .causal(true)
                                                            .rotary(o.positions() == Positions::rotary)
                                                            .backend(o.backend())));
  norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim()})));
  fc1 = register_module("fc1", torch::nn::Linear(o.dim(), hidden));
  fc2 = register_module("fc2", torch::nn::Linear(hidden, o.dim()));
  dropout = register_module("dropout", nn::Dropout(o.dropout()));
}

torch::Tensor GptBlockImpl::forward(torch::Tensor x) {
  x = x + dropout(attn(norm1(x)));
  return x + dropout(nn::linear(fc2, torch::gelu(nn::linear(fc1, norm2(x)))));
}

torch::Tensor GptBlockImpl::forward_cached(torch::Tensor x, nn::KVCache& cache) {
  x = x + dropout(attn->forward_cached(norm1(x), cache));
  return x + dropout(nn::linear(fc2, torch::gelu(nn::linear(fc1, norm2(x)))));
}

GptImpl::GptImpl(const GptOptions& o) : options(o) {
  TORCH_CHECK(o.vocab_size() >= 2 && o.context() >= 1 && o.depth() >= 1 && o.mlp_ratio() > 0,
              "quest::models::Gpt: need vocab_size >= 2, context >= 1, depth >= 1, mlp_ratio > 0");
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, "quest::models::Gpt: dropout must be in [0, 1)");
  token_embed = register_module("token_embed", torch::nn::Embedding(o.vocab_size(), o.dim()));
  if (o.positions() == Positions::learned)
    pos_embed = register_parameter("pos_embed", torch::randn({o.context(), o.dim()}) * 0.02);
  embed_dropout = register_module("embed_dropout", nn::Dropout(o.dropout()));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.depth(); ++i) blocks->push_back(GptBlock(o));
  norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim()})));
  if (!o.tied_embeddings())
    head = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(o.dim(), o.vocab_size())
                                                         .bias(false)));
}

torch::Tensor GptImpl::embed(const torch::Tensor& tokens, int64_t offset) {
  TORCH_CHECK(tokens.dim() == 2 && tokens.scalar_type() == torch::kLong && tokens.size(1) >= 1,
              "quest::models::Gpt: tokens must be (B, T) int64 with T >= 1, got ", tokens.sizes(),
              " ", tokens.scalar_type());
  TORCH_CHECK(offset + tokens.size(1) <= options.context(), "quest::models::Gpt: ",
              offset + tokens.size(1), " positions exceed the context of ", options.context());
  TORCH_CHECK(tokens.min().item<int64_t>() >= 0 && tokens.max().item<int64_t>() < options.vocab_size(),
              "quest::models::Gpt: tokens must be in [0, ", options.vocab_size(), ")");
  torch::Tensor x = token_embed(tokens);
  if (pos_embed.defined()) x = x + pos_embed.narrow(0, offset, tokens.size(1));
  return embed_dropout(x);
}

torch::Tensor GptImpl::logits(const torch::Tensor& x) {
  const torch::Tensor h = norm(x);
  return options.tied_embeddings() ? torch::matmul(h, token_embed->weight.t()) : head(h);
}

torch::Tensor GptImpl::forward(const torch::Tensor& tokens) {
  torch::Tensor x = embed(tokens, 0);
  for (const auto& block : *blocks) x = block->as<GptBlock>()->forward(x);
  return logits(x);
}

torch::Tensor GptImpl::forward_cached(const torch::Tensor& tokens, GptCache& cache) {
  torch::Tensor x = embed(tokens, cache.length());
  cache.layers.resize(blocks->size());
  for (size_t i = 0; i < blocks->size(); ++i)
    x = blocks[i]->as<GptBlock>()->forward_cached(x, cache.layers[i]);
  return logits(x);
}

void GptImpl::initialize(at::Generator generator) {
  nn::reset_parameters(*this, generator);
  torch::NoGradGuard no_grad;
  token_embed->weight.normal_(0.0, 0.02, generator);
  if (pos_embed.defined()) pos_embed.normal_(0.0, 0.02, generator);
}

void GptImpl::set_record_diagnostics(bool on) {
  for (const auto& block : *blocks) block->as<GptBlock>()->attn->set_record_diagnostics(on);
}

std::vector<std::optional<HeadDiagnostics>> GptImpl::attention_diagnostics() const {
  std::vector<std::optional<HeadDiagnostics>> out;
  for (const auto& block : *blocks) out.push_back(block->as<GptBlock>()->attn->last_diagnostics());
  return out;
}

torch::Tensor generate(Gpt& model, const torch::Tensor& prompt, const SamplingOptions& o,
                       at::Generator generator) {
  TORCH_CHECK(o.tokens >= 0 && o.temperature >= 0 && o.top_k >= 0,
              "quest::models::generate: tokens, temperature and top_k must be >= 0");
  const int64_t context = model->options.context();
  TORCH_CHECK(prompt.dim() == 2 && prompt.size(1) >= 1, "quest::models::generate: the prompt "
              "must be (B, T) with T >= 1, got ", prompt.sizes());
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  // The prompt's tail that fits; the rest is context the model cannot see anyway.
  torch::Tensor seen = prompt.narrow(1, std::max<int64_t>(0, prompt.size(1) - context),
                                     std::min(prompt.size(1), context));
  GptCache cache;
  torch::Tensor logits = model->forward_cached(seen, cache).select(1, -1);
  std::vector<torch::Tensor> out;
  for (int64_t t = 0; t < o.tokens; ++t) {
    torch::Tensor next;
    if (o.temperature == 0) {
      next = logits.argmax(-1, /*keepdim=*/true);
    } else {
      torch::Tensor scaled = logits / o.temperature;
      if (o.top_k > 0 && o.top_k < scaled.size(-1)) {
        const torch::Tensor kth = std::get<0>(scaled.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);
        scaled = scaled.masked_fill(scaled < kth, -INFINITY);
      }
      next = torch::multinomial(torch::softmax(scaled, -1), 1, false, generator);
    }
    out.push_back(next);
    seen = torch::cat({seen, next}, 1);
    if (t + 1 == o.tokens) break;
    if (!o.use_cache) {
      const int64_t window = std::min(seen.size(1), context);
      logits = model->forward(seen.narrow(1, seen.size(1) - window, window)).select(1, -1);
    } else if (cache.length() + 1 > context) {  // full: re-encode the last context/2 tokens
      cache = GptCache{};
      const int64_t keep = std::max<int64_t>(1, context / 2);
      logits = model->forward_cached(seen.narrow(1, seen.size(1) - keep, keep), cache).select(1, -1);
    } else {
      logits = model->forward_cached(next, cache).select(1, -1);
    }
  }
  model->train(was_training);
  return out.empty() ? torch::empty({prompt.size(0), 0}, torch::kLong) : torch::cat(out, 1);
}

}  // namespace quest::models
