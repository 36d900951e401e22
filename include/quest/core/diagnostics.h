// Per-head attention diagnostics (query/key norms, largest logit, entropy): what every path
// reports, how partial sums combine, and how they print. Torch-free.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "quest/core/problem.h"

namespace quest {

// Per-head statistics of one forward pass, reduced over batch and tokens. Norms are of the raw q
// and k rows (before any normalisation), over every query and every non-padded key; the entropy
// mean is over rows that see at least one key.
struct HeadDiagnostics {
  std::vector<double> q_norm_mean, q_norm_max;
  std::vector<double> k_norm_mean, k_norm_max;
  std::vector<double> logit_abs_max;  // max |s_ij| over visible pairs
  std::vector<double> logit_max;      // max s_ij over visible pairs (-inf: none); QK-clip's signal
  std::vector<double> entropy_mean;   // mean over rows of H_i = lse_i - sum_j p_ij s_ij

  void resize(int64_t heads);
};

// Partial sums of HeadDiagnostics for one (b, h) block; kernels fill these, `reduce_partials` combines.
struct HeadDiagnosticsPartial {
  double q_norm_sum = 0, q_norm_max = 0;
  int64_t q_count = 0;
  double k_norm_sum = 0, k_norm_max = 0;
  int64_t k_count = 0;
  double logit_abs_max = 0;
  double logit_max = -std::numeric_limits<double>::infinity();
  double entropy_sum = 0;
  int64_t entropy_rows = 0;
};

// The larger of a and b, NaN if either is: a non-finite head must show in its diagnostics
// (std::max keeps whichever argument comes first when one is NaN).
inline double nan_max(double a, double b) { return a != a || b != b ? a + b : std::max(a, b); }

// into += from (sums and counts add, maxima take the larger, NaN wins).
void merge_partials(HeadDiagnosticsPartial& into, const HeadDiagnosticsPartial& from);

// partials: B*H entries, index b*H + h.
HeadDiagnostics reduce_partials(const std::vector<HeadDiagnosticsPartial>& partials, int64_t heads);

// Adds the raw q and k row norms of every (b, h) block to partials[b*H + h] (queries: all rows;
// keys: the non-padded ones). The reference kernel uses it, and so does the LibTorch layer where
// the fused kernel saw already LayerNorm-ed rows.
template <typename T>
void add_norm_diagnostics(const AttentionArgs<T>& args, HeadDiagnosticsPartial* partials);

// Diagnostics as a printable table, one row per head.
std::string format_diagnostics(const HeadDiagnostics& diagnostics);

}  // namespace quest
