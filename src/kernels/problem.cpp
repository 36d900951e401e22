#include "quest/problem.h"

#include <algorithm>

namespace quest {

void HeadDiagnostics::resize(int64_t heads) {
  for (auto* v : {&q_norm_mean, &q_norm_max, &k_norm_mean, &k_norm_max, &logit_abs_max,
                  &entropy_mean})
    v->assign(heads, 0.0);
}

void merge(HeadDiagnosticsPartial& s, const HeadDiagnosticsPartial& p) {
  s.q_norm_sum += p.q_norm_sum;
  s.q_norm_max = std::max(s.q_norm_max, p.q_norm_max);
  s.q_count += p.q_count;
  s.k_norm_sum += p.k_norm_sum;
  s.k_norm_max = std::max(s.k_norm_max, p.k_norm_max);
  s.k_count += p.k_count;
  s.logit_abs_max = std::max(s.logit_abs_max, p.logit_abs_max);
  s.entropy_sum += p.entropy_sum;
  s.entropy_rows += p.entropy_rows;
}

HeadDiagnostics reduce(const std::vector<HeadDiagnosticsPartial>& partials, int64_t heads) {
  HeadDiagnostics out;
  out.resize(heads);
  std::vector<HeadDiagnosticsPartial> sum(heads);
  for (size_t idx = 0; idx < partials.size(); ++idx) merge(sum[idx % heads], partials[idx]);
  auto mean = [](double total, int64_t n) { return n > 0 ? total / n : 0.0; };
  for (int64_t h = 0; h < heads; ++h) {
    out.q_norm_mean[h] = mean(sum[h].q_norm_sum, sum[h].q_count);
    out.q_norm_max[h] = sum[h].q_norm_max;
    out.k_norm_mean[h] = mean(sum[h].k_norm_sum, sum[h].k_count);
    out.k_norm_max[h] = sum[h].k_norm_max;
    out.logit_abs_max[h] = sum[h].logit_abs_max;
    out.entropy_mean[h] = mean(sum[h].entropy_sum, sum[h].entropy_rows);
  }
  return out;
}

void dropout_keep_mask(uint64_t seed, double p, const AttentionDims& d, bool* keep) {
  int64_t idx = 0;
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.heads; ++h)
      for (int64_t i = 0; i < d.q_len; ++i)
        for (int64_t j = 0; j < d.k_len; ++j) keep[idx++] = dropout_keep(seed, p, d, b, h, i, j);
}

}  // namespace quest
