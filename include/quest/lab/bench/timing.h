// Timing for what measures (the attention benchmark, quest demo): medians, after an optional
// warm-up.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

namespace quest::bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Median seconds of `repeats` calls of f, after calling it for at least `warmup_seconds` (thread
// pools, first-touch pages and clocks settle).
template <typename F>
double median_seconds(int repeats, F&& f, double warmup_seconds = 0.2) {
  const auto warm = std::chrono::steady_clock::now();
  if (warmup_seconds > 0) {
    do f();
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - warm).count() < warmup_seconds);
  }
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(t);
}

}  // namespace quest::bench
