#include "quest/lab/data/retrieval.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace quest::data {

void validate(const RetrievalTaskOptions& o) {
  TORCH_CHECK(o.tokens >= 2, "retrieval task: tokens must be >= 2, got ", o.tokens);
  TORCH_CHECK(o.key_dim >= 2, "retrieval task: key_dim must be >= 2, got ", o.key_dim);
  TORCH_CHECK(o.classes >= 2, "retrieval task: classes must be >= 2, got ", o.classes);
  TORCH_CHECK(o.bias_probability >= 0 && o.bias_probability <= 1,
              "retrieval task: bias_probability must be in [0, 1], got ", o.bias_probability);
  TORCH_CHECK(o.high_variance > 0 && o.low_variance > 0 && o.bias_noise > 0,
              "retrieval task: high_variance, low_variance and bias_noise must be > 0");
  TORCH_CHECK(std::isfinite(o.bias_scale), "retrieval task: bias_scale must be finite");
}

std::string to_string(RetrievalSplit split) {
  switch (split) {
    case RetrievalSplit::training: return "training";
    case RetrievalSplit::biased: return "biased";
    case RetrievalSplit::unbiased: return "unbiased";
    case RetrievalSplit::conflicting: return "conflicting";
  }
  return "?";
}

static torch::Tensor answer_variances(const RetrievalTaskOptions& o) {
  auto v = torch::full({o.key_dim}, o.low_variance, torch::kDouble);
  v.slice(0, 0, (o.key_dim + 1) / 2).fill_(o.high_variance);
  return v;
}

torch::Tensor answer_covariance(const RetrievalTaskOptions& o) {
  validate(o);
  return torch::diag(answer_variances(o)).to(torch::kFloat);
}

torch::Tensor spurious_bias(const RetrievalTaskOptions& o) {
  validate(o);
  return torch::full({o.key_dim}, o.bias_scale);
}

RetrievalBatch generate_retrieval(const RetrievalTaskOptions& o, RetrievalSplit split, int64_t batch,
                                  torch::Generator& gen) {
  validate(o);
  TORCH_CHECK(batch >= 1, "retrieval task: batch must be >= 1, got ", batch);
  const int64_t B = batch, N = o.tokens, d = o.key_dim;
  // Every draw is made for every split, so the RNG stream advances the same way whatever is asked.
  auto keys = torch::randn({B, N, d}, gen);
  auto answer = torch::randint(N, {B}, gen);
  auto labels = torch::randint(o.classes, {B}, gen);
  auto code_index = torch::randint(o.classes, {B, N}, gen);
  const auto robust = torch::randn({B, d}, gen) * answer_variances(o).sqrt().to(torch::kFloat);
  const auto around_b = spurious_bias(o) + std::sqrt(o.bias_noise) * torch::randn({B, d}, gen);
  const auto coin = torch::rand({B}, gen);
  const auto decoy_offset = torch::randint(1, N, {B}, gen);  // decoy = L + offset (mod N) != L
  const auto decoy_key = spurious_bias(o) + std::sqrt(o.bias_noise) * torch::randn({B, d}, gen);

  torch::Tensor biased;
  switch (split) {
    case RetrievalSplit::training: biased = coin < o.bias_probability; break;
    case RetrievalSplit::biased: biased = torch::ones({B}, torch::kBool); break;
    default: biased = torch::zeros({B}, torch::kBool); break;
  }
  const auto rows = torch::arange(B);
  keys.index_put_({rows, answer}, torch::where(biased.unsqueeze(1), around_b, robust));
  auto decoy = torch::full({B}, -1, torch::kLong);
  if (split == RetrievalSplit::conflicting) {
    decoy = (answer + decoy_offset).remainder(N);
    keys.index_put_({rows, decoy}, decoy_key);
  }
  code_index.index_put_({rows, answer}, labels);
  auto codes = torch::one_hot(code_index, o.classes).to(torch::kFloat);
  return {keys, codes, labels, answer, biased, decoy};
}

torch::Tensor oracle_predictions(const RetrievalTaskOptions& o, const RetrievalBatch& batch) {
  validate(o);
  const auto x = batch.keys.to(torch::kDouble);  // (B, N, d)
  const auto var = answer_variances(o);
  const double half_log_2pi = 0.5 * std::log(2 * M_PI);
  auto gaussian = [&](const torch::Tensor& centred, const torch::Tensor& variances) {  // log N, diagonal
    return (-0.5 * centred.square() / variances - 0.5 * variances.log() - half_log_2pi).sum(-1);
  };
  const auto ordinary = gaussian(x, torch::ones_like(var));
  const auto robust = gaussian(x, var) + std::log(std::max(1 - o.bias_probability, 1e-300));
  const auto shortcut = gaussian(x - spurious_bias(o).to(torch::kDouble), torch::full_like(var, o.bias_noise)) +
                        std::log(std::max(o.bias_probability, 1e-300));
  const auto llr = torch::logaddexp(robust, shortcut) - ordinary;  // (B, N)
  const auto chosen = llr.argmax(1);
  return batch.codes.index({torch::arange(x.size(0)), chosen}).argmax(1);
}

}  // namespace quest::data
