#include "quest/core/diagnostics.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

namespace quest {

void HeadDiagnostics::resize(int64_t heads) {
  for (auto* v : {&q_norm_mean, &q_norm_max, &k_norm_mean, &k_norm_max, &logit_abs_max,
                  &entropy_mean})
    v->assign(heads, 0.0);
  logit_max.assign(heads, -std::numeric_limits<double>::infinity());
}

void merge_partials(HeadDiagnosticsPartial& s, const HeadDiagnosticsPartial& p) {
  s.q_norm_sum += p.q_norm_sum;
  s.q_norm_max = nan_max(s.q_norm_max, p.q_norm_max);
  s.q_count += p.q_count;
  s.k_norm_sum += p.k_norm_sum;
  s.k_norm_max = nan_max(s.k_norm_max, p.k_norm_max);
  s.k_count += p.k_count;
  s.logit_abs_max = nan_max(s.logit_abs_max, p.logit_abs_max);
  s.logit_max = nan_max(s.logit_max, p.logit_max);
  s.entropy_sum += p.entropy_sum;
  s.entropy_rows += p.entropy_rows;
}

HeadDiagnostics reduce_partials(const std::vector<HeadDiagnosticsPartial>& partials, int64_t heads) {
  HeadDiagnostics out;
  out.resize(heads);
  std::vector<HeadDiagnosticsPartial> sum(heads);
  for (size_t idx = 0; idx < partials.size(); ++idx) merge_partials(sum[idx % heads], partials[idx]);
  auto mean = [](double total, int64_t n) { return n > 0 ? total / n : 0.0; };
  for (int64_t h = 0; h < heads; ++h) {
    out.q_norm_mean[h] = mean(sum[h].q_norm_sum, sum[h].q_count);
    out.q_norm_max[h] = sum[h].q_norm_max;
    out.k_norm_mean[h] = mean(sum[h].k_norm_sum, sum[h].k_count);
    out.k_norm_max[h] = sum[h].k_norm_max;
    out.logit_abs_max[h] = sum[h].logit_abs_max;
    out.logit_max[h] = sum[h].logit_max;
    // H >= 0, but lse - sum p s of a one-hot row rounds to ~-1e-7: 0 then (NaN stays NaN).
    const double entropy = mean(sum[h].entropy_sum, sum[h].entropy_rows);
    out.entropy_mean[h] = entropy <= 0 ? 0.0 : entropy;
  }
  return out;
}

namespace {
template <typename T>
double row_norm(View4<const T> x, int64_t b, int64_t h, int64_t n, int64_t d) {
  double ss = 0;
  for (int64_t c = 0; c < d; ++c) {
    const double v = static_cast<double>(x.at(b, h, n, c));
    ss += v * v;
  }
  return std::sqrt(ss);
}
}  // namespace

template <typename T>
void add_norm_diagnostics(const AttentionArgs<T>& a, HeadDiagnosticsPartial* partials) {
  const AttentionDims& d = a.dims;
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.heads; ++h) {
      HeadDiagnosticsPartial& part = partials[b * d.heads + h];
      for (int64_t i = 0; i < d.q_len; ++i) {
        const double n = row_norm(a.q, b, h, i, d.qk_dim);
        part.q_norm_sum += n;
        part.q_norm_max = nan_max(part.q_norm_max, n);
        ++part.q_count;
      }
      for (int64_t j = 0; j < d.k_len; ++j) {
        if (a.key_padded(b, j)) continue;
        const double n = row_norm(a.k, b, h, j, d.qk_dim);
        part.k_norm_sum += n;
        part.k_norm_max = nan_max(part.k_norm_max, n);
        ++part.k_count;
      }
    }
}

template void add_norm_diagnostics<float>(const AttentionArgs<float>&, HeadDiagnosticsPartial*);
template void add_norm_diagnostics<double>(const AttentionArgs<double>&, HeadDiagnosticsPartial*);

std::string format_diagnostics(const HeadDiagnostics& d) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(3);
  os << "head   |q| mean   |q| max   |k| mean   |k| max   max|logit|   max logit   entropy\n";
  for (size_t h = 0; h < d.q_norm_mean.size(); ++h)
    os << std::setw(4) << h << std::setw(11) << d.q_norm_mean[h] << std::setw(10)
       << d.q_norm_max[h] << std::setw(11) << d.k_norm_mean[h] << std::setw(10) << d.k_norm_max[h]
       << std::setw(13) << d.logit_abs_max[h] << std::setw(12) << d.logit_max[h] << std::setw(10)
       << d.entropy_mean[h] << "\n";
  return os.str();
}

}  // namespace quest
