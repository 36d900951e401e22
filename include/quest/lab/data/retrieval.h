// The spurious-pattern retrieval task of the QUEST paper (claim 1), generated from a seed.
// A sample is N tokens x_i = [x_i^k ; x_i^v]: x^k real (keys are computed from it), x^v a one-hot
// code. One token, at a uniformly random position L, is the answer: the label is its code.
//   ordinary tokens:            x^k ~ N(0, I)
//   answer token (robust cue):  x^k ~ N(0, Sigma), Sigma = diag(high,...,high, low,...,low)
//                               (first ceil(d/2) coordinates `high`, the rest `low`)
//   biased samples (prob. p):   the answer's x^k ~ N(b, bias_noise I) instead, b = bias_scale*(1,...,1)
// With the defaults (d = 16, high 9, low 1/9, b = ones) det Sigma = 1 and |b|^2 = d: an answer is
// marked by the shape of its distribution, b only by its direction, so neither is a plain norm
// outlier of the kind a single linear threshold could pick. The Bayes-optimal detector of the
// Sigma cue (a quadratic form in x^k) finds the answer in 99.9 % of unbiased samples at N = 16;
// b is found by a linear one. Evaluation splits expose a shortcut learner:
//   biased       every sample biased                      (the shortcut suffices)
//   unbiased     no sample biased                         (only Sigma identifies the answer)
//   conflicting  unbiased, plus b planted on a random non-answer token (the shortcut misleads)
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>

namespace quest::data {

struct RetrievalTaskOptions {
  int64_t tokens = 16;    // N
  int64_t key_dim = 16;   // d, the width of x^k
  int64_t classes = 8;    // C, the width of the one-hot code x^v
  double bias_probability = 0.5;
  double high_variance = 9.0, low_variance = 1.0 / 9.0;
  double bias_scale = 1.0;
  double bias_noise = 0.1;  // variance of the biased answer around b
};

// Throws (naming the field) unless N >= 2, d >= 2, C >= 2, 0 <= p <= 1 and variances > 0.
void validate(const RetrievalTaskOptions& options);

enum class RetrievalSplit { training, biased, unbiased, conflicting };
std::string to_string(RetrievalSplit split);

torch::Tensor answer_covariance(const RetrievalTaskOptions& options);  // (d, d) Sigma
torch::Tensor spurious_bias(const RetrievalTaskOptions& options);      // (d) b

struct RetrievalBatch {
  torch::Tensor keys;     // (B, N, d) float, x^k
  torch::Tensor codes;    // (B, N, C) float one-hot, x^v
  torch::Tensor labels;   // (B) int64, the answer token's code
  torch::Tensor answer;   // (B) int64, the answer's position L
  torch::Tensor biased;   // (B) bool, the answer was drawn around b
  torch::Tensor decoy;    // (B) int64, position of the planted b (conflicting split), else -1
};

// `batch` samples of `split`; the same generator state gives the same batch.
RetrievalBatch generate_retrieval(const RetrievalTaskOptions& options, RetrievalSplit split,
                                  int64_t batch, torch::Generator& gen);

// The Bayes-optimal reader of the training distribution: for every token, the log-likelihood ratio
// of "this token is the answer" (its x^k from the answer mixture (1-p) N(0, Sigma) + p N(b, noise I))
// against "ordinary" (N(0, I)); picks the largest and reads its code. Its accuracy on a split is
// the ceiling for that split; on `conflicting` it says which cue the training data itself favours.
torch::Tensor oracle_predictions(const RetrievalTaskOptions& options, const RetrievalBatch& batch);  // (B)

}  // namespace quest::data
