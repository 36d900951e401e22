// The toy model of the spurious-pattern experiment: one attention read-out over the N tokens of a
// retrieval sample (quest/data/retrieval.h), with any attention kind of the family.
//
// projections on (default):
//   h_j = W2 GELU(W1 x_j^k + c1) + c2          token encoder, hidden width `hidden`, output `dim`
//   q   = W_q e + c_q                          e: a learned query token (dim)
//   k_j = W_k h_j + c_k,  v_j = W_v x_j^v + c_v
//   o   = attention_kind(q, K, V)              H heads of dim/H, one query row
//   logits = W_out o + c_out                   (classes)
//   The encoder matters: the answer's cue is a zero-mean N(0, Sigma), so with keys linear in x^k
//   a query that does not depend on the token sees the same mean logit for answer and ordinary
//   tokens; a non-linear key can carry a quadratic statistic of x^k.
// projections off (--projections off):
//   q = e (a learned vector of width d), k_j = x_j^k, v_j = x_j^v (raw), one head,
//   logits = W_out o + c_out. The only thing the attention can learn is where q points, so it can
//   find b (a direction) but not Sigma: the robust solution is out of reach by construction.
// queries "tokens" (self-attention) instead of "learned": every token queries with its own
// q_i = W_q h_i + c_q (projections off: q_i = x_i^k), and the N output rows are averaged before
// W_out. Each token then sets its own sharpness through |q_i| (what QUEST keeps), and a query can
// be quadratic in x^k even without the encoder (q_i . k_j with i = j).
#pragma once

#include <torch/torch.h>

#include "quest/lab/models/option_names.h"
#include "quest/torch/attention.h"
#include "quest/torch/nn/kind_parameters.h"

namespace quest::models {

// Who queries (RetrievalModelOptions::queries): learned, one learned query token reads the sequence;
// tokens, every token queries (self-attention), rows averaged.
enum class Queries { learned, tokens };
inline constexpr OptionNames<Queries, 2> kQueriesNames{{{Queries::learned, "learned"}, {Queries::tokens, "tokens"}}};
inline std::string to_string(Queries q) { return name_of(kQueriesNames, q); }
inline Queries parse_queries(const std::string& s) { return parse_option(kQueriesNames, s, "queries"); }

struct RetrievalModelOptions {
  TORCH_ARG(int64_t, key_dim) = 16;
  TORCH_ARG(int64_t, classes) = 8;
  TORCH_ARG(int64_t, dim) = 32;     // attention width (all heads together)
  TORCH_ARG(int64_t, heads) = 1;
  TORCH_ARG(int64_t, hidden) = 64;  // token encoder width
  TORCH_ARG(bool, projections) = true;
  TORCH_ARG(Queries, queries) = Queries::learned;
  TORCH_ARG(Kind, attention) = Kind::quest;
  TORCH_ARG(Backend, backend) = Backend::automatic;
};

// What one forward saw, for the experiment's trajectories.
struct RetrievalProbe {
  torch::Tensor logits;      // (B, classes)
  torch::Tensor key_norms;   // (B, N) |k_j| before any normalisation, mean over heads
  torch::Tensor query_norm;  // (B) |q| before any normalisation, mean over heads and query rows
  double max_logit = 0;      // max |s_j| over the batch and heads
  double entropy = 0;        // mean entropy of the attention row
};

class RetrievalModelImpl : public torch::nn::Module {
 public:
  explicit RetrievalModelImpl(const RetrievalModelOptions& options);
  // keys (B, N, key_dim), codes (B, N, classes) -> logits (B, classes).
  torch::Tensor forward(const torch::Tensor& keys, const torch::Tensor& codes);
  RetrievalProbe probe(const torch::Tensor& keys, const torch::Tensor& codes);
  // Draws every random initial weight from `generator` (layers as LibTorch's defaults, the query
  // token as in the constructor).
  void initialize(at::Generator generator);

  RetrievalModelOptions options;
  torch::Tensor query_token;
  torch::nn::Sequential encoder{nullptr};
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out{nullptr};
  nn::KindParameters kind_parameters;

 private:
  struct Heads {
    torch::Tensor q, k, v;  // (B, H, Nq, Dq), (B, H, N, Dq), (B, H, N, Dv); Nq = 1 or N
  };
  Heads split_heads(const torch::Tensor& keys, const torch::Tensor& codes);
  int64_t heads() const { return options.projections() ? options.heads() : 1; }
  bool self_attention() const { return options.queries() == Queries::tokens; }
};
TORCH_MODULE(RetrievalModel);

}  // namespace quest::models
