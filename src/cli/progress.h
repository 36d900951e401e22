// Progress lines: rewritten in place on a terminal, plain lines otherwise.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace quest::cli {

inline bool stdout_is_tty() {
  static const bool tty = isatty(fileno(stdout));
  return tty;
}

// Prints one line of progress; `last` ends a rewritten line.
inline void progress_line(const std::string& text, bool last = false) {
  if (stdout_is_tty()) std::printf("\r%-100s%s", text.c_str(), last ? "\n" : "");
  else std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

// Seconds since construction, and an ETA for `done` of `total` units.
class Stopwatch {
 public:
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  double eta(double done, double total) const { return done > 0 ? seconds() / done * (total - done) : 0.0; }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// Training progress: steps, loss, learning rate, images/s and ETA, every log_every steps (or
// rewritten in place on a terminal).
class StepProgress {
 public:
  // batch: samples per step; unit: what a sample is called in the rate ("img" -> img/s).
  StepProgress(int64_t batch, int64_t every, std::string unit = "img")
      : batch_(batch), every_(std::max<int64_t>(every, 1)), unit_(std::move(unit)) {}
  void update(const nlohmann::json& line) {
    const int64_t step = line["step"].get<int64_t>() + 1;
    total_ = line["total_steps"].get<int64_t>();
    if (first_ < 0) first_ = step - 1;
    if (!stdout_is_tty() && step % every_ != 0 && step != total_) return;
    const double ips = (step - first_) * batch_ / std::max(clock_.seconds(), 1e-9);
    char text[200];
    std::snprintf(text, sizeof text, "epoch %lld  step %lld/%lld  loss %.4f  lr %.2e  %.0f %s/s  ETA %.0fs",
                  (long long)line["epoch"].get<int64_t>(), (long long)step, (long long)total_,
                  line["loss"].get<double>(), line["lr"].get<double>(), ips, unit_.c_str(),
                  (total_ - step) * batch_ / std::max(ips, 1e-9));
    progress_line(text);
  }
  void finish() {
    if (stdout_is_tty() && first_ >= 0) std::printf("\n");
  }

 private:
  int64_t total_ = 0, batch_, every_, first_ = -1;
  std::string unit_;
  Stopwatch clock_;
};

}  // namespace quest::cli
