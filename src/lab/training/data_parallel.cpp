#include "data_parallel.h"

#include <cmath>
#include <string>

namespace quest::training {

std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int world) {
  TORCH_CHECK(world >= 1 && rank >= 0 && rank < world, "quest::training: shard ", rank, " of ", world);
  return {n * rank / world, n * (rank + 1) / world};
}

void DataParallel::check_batch(int64_t batch_size) const {
  TORCH_CHECK(!active() || batch_size >= group->world_size(), "quest::training: batch_size ", batch_size,
              " is the global batch: it must be at least the ", group->world_size(), " ranks");
}

EvalResult combine_shards(const EvalResult& mine, distributed::ProcessGroup& group, const std::string& what) {
  const double n = static_cast<double>(mine.samples);
  const auto s = group.sum({n > 0 ? mine.loss * n : 0.0, n > 0 ? mine.accuracy * n : 0.0, n}, what);
  return {s[2] > 0 ? s[0] / s[2] : NAN, s[2] > 0 ? s[1] / s[2] : NAN, static_cast<int64_t>(s[2])};
}

double all_reduce_step(distributed::ProcessGroup& group, torch::nn::Module& model, StepOutput& out,
                       double loss_value, const DataParallel& parallel) {
  const double n = static_cast<double>(out.samples);
  std::vector<torch::Tensor> grads;
  if (parallel.overlap) {
    if (!group.watching()) group.watch_gradients(model.parameters(), parallel.bucket_bytes);
    group.arm_gradients();
    // The shard's summed loss: gradients summed over the ranks, then / N, are the global mean's.
    if (out.samples > 0) (out.loss * n).backward();
    group.finish_gradients("the gradient all-reduce");
    for (auto& p : model.parameters())
      if (p.requires_grad()) grads.push_back(p.grad());
  } else {
    if (out.samples > 0) (out.loss * n).backward();
    for (auto& p : model.parameters()) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);  // every rank sends every tensor
      grads.push_back(p.grad());
    }
    group.allreduce_sum(grads, "the gradient all-reduce");
  }
  const auto s = group.sum({out.samples > 0 ? loss_value * n : 0.0, n, out.correct < 0 ? 0.0 : double(out.correct),
                            out.correct < 0 ? 1.0 : 0.0, std::isfinite(out.log_z) ? out.log_z * n : 0.0,
                            std::isfinite(out.log_z) || out.samples == 0 ? 0.0 : 1.0},
                           "the step's loss all-reduce");
  TORCH_CHECK(s[1] > 0, "quest::training: a global batch without samples");
  torch::NoGradGuard no_grad;
  for (auto& g : grads) g.div_(s[1]);
  out.samples = static_cast<int64_t>(s[1]);
  out.correct = s[3] > 0 ? -1 : static_cast<int64_t>(s[2]);
  out.log_z = s[5] > 0 ? NAN : s[4] / s[1];
  return s[0] / s[1];
}

void all_reduce_diagnostics(std::vector<std::optional<HeadDiagnostics>>& layers,
                            distributed::ProcessGroup& group) {
  // Every rank has the same layers and heads: pack maxima and means, one all-reduce each.
  std::vector<double> maxima, sums;
  for (const auto& d : layers)
    if (d)
      for (size_t h = 0; h < d->q_norm_max.size(); ++h) {
        maxima.insert(maxima.end(), {d->q_norm_max[h], d->k_norm_max[h], d->logit_abs_max[h], d->logit_max[h]});
        sums.insert(sums.end(), {d->q_norm_mean[h], d->k_norm_mean[h], d->entropy_mean[h]});
      }
  maxima = group.max(maxima, "the attention diagnostics' all-reduce");
  sums = group.sum(sums, "the attention diagnostics' all-reduce");
  const double world = group.world_size();
  size_t i = 0;
  for (auto& d : layers)
    if (d)
      for (size_t h = 0; h < d->q_norm_max.size(); ++h, ++i) {
        d->q_norm_max[h] = maxima[4 * i], d->k_norm_max[h] = maxima[4 * i + 1];
        d->logit_abs_max[h] = maxima[4 * i + 2], d->logit_max[h] = maxima[4 * i + 3];
        d->q_norm_mean[h] = sums[3 * i] / world, d->k_norm_mean[h] = sums[3 * i + 1] / world,
        d->entropy_mean[h] = sums[3 * i + 2] / world;
      }
}

}  // namespace quest::training
