// A GPT-style byte-level decoder: token embedding, learned or rotary positions, pre-norm blocks of
// causal multi-head attention (any kind of the family) and MLP, final LayerNorm, output head tied
// to the embedding or not. Incremental decoding with a per-layer KV cache, and sampling.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

#include "quest/lab/models/option_names.h"
#include "quest/torch/nn/dropout.h"
#include "quest/torch/nn/multihead_attention.h"

namespace quest::models {

// Where token positions enter (GptOptions::positions): learned, a position table added to the token
// embedding; rotary, RoPE on q and k.
enum class Positions { learned, rotary };
inline constexpr OptionNames<Positions, 2> kPositionsNames{{{Positions::learned, "learned"}, {Positions::rotary, "rotary"}}};
inline std::string to_string(Positions p) { return name_of(kPositionsNames, p); }
inline Positions parse_positions(const std::string& s) { return parse_option(kPositionsNames, s, "positions"); }

struct GptOptions {
  TORCH_ARG(int64_t, vocab_size) = 256;  // bytes
  TORCH_ARG(int64_t, context) = 256;     // longest sequence (learned positions: the table size)
  TORCH_ARG(int64_t, dim) = 192;
  TORCH_ARG(int64_t, depth) = 4;
  TORCH_ARG(int64_t, heads) = 6;
  TORCH_ARG(int64_t, kv_heads) = 0;  // key/value heads (grouped-query attention); 0: as many as heads
  TORCH_ARG(double, mlp_ratio) = 4.0;
  TORCH_ARG(double, dropout) = 0.0;  // after the embedding, the attention projection and the MLP
  TORCH_ARG(Kind, attention) = Kind::quest;
  TORCH_ARG(Backend, backend) = Backend::automatic;
  TORCH_ARG(Positions, positions) = Positions::learned;
  TORCH_ARG(bool, tied_embeddings) = true;  // the output head reuses the token embedding
};

class GptBlockImpl : public torch::nn::Module {
 public:
  explicit GptBlockImpl(const GptOptions& options);
  torch::Tensor forward(torch::Tensor x);
  torch::Tensor forward_cached(torch::Tensor x, nn::KVCache& cache);

  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  nn::MultiheadAttention attn{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  nn::Dropout dropout{nullptr};
};
TORCH_MODULE(GptBlock);

// Per-layer keys and values of the tokens decoded so far.
struct GptCache {
  std::vector<nn::KVCache> layers;
  int64_t length() const { return layers.empty() ? 0 : layers[0].length(); }
};

class GptImpl : public torch::nn::Module {
 public:
  explicit GptImpl(const GptOptions& options);
  // tokens: (B, T) int64 in [0, vocab_size), T <= context -> logits (B, T, vocab_size).
  torch::Tensor forward(const torch::Tensor& tokens);
  // The logits of new tokens (B, T) given the cached ones (positions continue from
  // cache.length(); total <= context); appends them to `cache`. Equals forward() on the whole
  // sequence up to fp32 rounding.
  torch::Tensor forward_cached(const torch::Tensor& tokens, GptCache& cache);
  // Draws every random initial weight from `generator`: linear layers as LibTorch's defaults,
  // embeddings and the position table ~ N(0, 0.02^2).
  void initialize(at::Generator generator);

  void set_record_diagnostics(bool on);
  std::vector<std::optional<HeadDiagnostics>> attention_diagnostics() const;

  GptOptions options;
  torch::nn::Embedding token_embed{nullptr};
  torch::Tensor pos_embed;  // (context, dim), learned positions only
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear head{nullptr};  // untied only
  nn::Dropout embed_dropout{nullptr};

 private:
  torch::Tensor embed(const torch::Tensor& tokens, int64_t offset);
  torch::Tensor logits(const torch::Tensor& x);
};
TORCH_MODULE(Gpt);

struct SamplingOptions {
  int64_t tokens = 200;       // how many to generate
  double temperature = 1.0;   // 0: greedy
  int64_t top_k = 0;          // sample among the k most likely (0: all)
  bool use_cache = true;      // false: recompute the whole window for every token (a baseline)
};

// Continues `prompt` (B, T0) by options.tokens tokens, decoding with the KV cache (the prompt in
// one pass, then a token at a time; when the context is full, the cache is rebuilt from the last
// context/2 tokens). Returns (B, options.tokens); every draw comes from `generator`. Without the
// cache each token costs a forward over the last `context` tokens; the draws are the same.
torch::Tensor generate(Gpt& model, const torch::Tensor& prompt, const SamplingOptions& options,
                       at::Generator generator);

}  // namespace quest::models
