// Mean and sample standard deviation over seeds, for the CLI's results tables.
#pragma once

#include <cmath>
#include <vector>

namespace quest::cli {

inline double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? NAN : s / v.size();
}

inline double std_of(const std::vector<double>& v) {  // sample standard deviation; 0 for one value
  if (v.size() < 2) return 0;
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / (v.size() - 1));
}

}  // namespace quest::cli
