// Progress lines: rewritten in place on a terminal, plain lines otherwise.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
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

}  // namespace quest::cli
