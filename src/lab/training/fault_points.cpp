#include "fault_points.h"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <thread>

namespace quest::training {

namespace {

void checkpoint_written(const FaultSite& site) {
  static const char* spec = std::getenv("QUEST_TEST_CRASH_CHECKPOINT");
  if (!spec) return;
  const std::string s(spec), when = s.substr(0, s.find(':'));
  char* end = nullptr;
  const long long at = s.find(':') == std::string::npos ? -1 : std::strtoll(s.c_str() + s.find(':') + 1, &end, 10);
  if ((when != "after-write" && when != "mid-write") || at < 0 || *end != '\0')
    throw std::invalid_argument("QUEST_TEST_CRASH_CHECKPOINT='" + s +
                                "' is not after-write:<epoch> or mid-write:<epoch>");
  if (at != site.epoch) return;
  namespace fs = std::filesystem;
  if (when == "mid-write") fs::resize_file(site.file, fs::file_size(site.file) / 2);
  std::fprintf(stderr, "QUEST_TEST_CRASH_CHECKPOINT: killing the process while writing '%s'\n",
               site.file.c_str());
  std::_Exit(137);  // no unwinding, no flushing: as abrupt as a kill
}

void step_started(const FaultSite& site) {
  static const char* spec = std::getenv("QUEST_TEST_RANK_FAULT");
  if (!spec) return;
  const std::string s(spec);
  const size_t a = s.find(':'), b = s.find(':', a == std::string::npos ? a : a + 1);
  const std::string what = s.substr(0, a);
  if (a == std::string::npos || b == std::string::npos || (what != "kill" && what != "hang" && what != "throw"))
    throw std::invalid_argument("QUEST_TEST_RANK_FAULT='" + s + "' is not <kill|hang|throw>:<rank>:<step>");
  if (std::stoi(s.substr(a + 1, b - a - 1)) != site.rank || std::stoll(s.substr(b + 1)) != site.step) return;
  std::fprintf(stderr, "QUEST_TEST_RANK_FAULT: rank %d %s at step %lld\n", site.rank, what.c_str(),
               static_cast<long long>(site.step));
  if (what == "kill") raise(SIGKILL);
  if (what == "hang") for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  throw std::runtime_error("QUEST_TEST_RANK_FAULT: injected failure");
}

}  // namespace

void fault_point(FaultPoint point, const FaultSite& site) {
  switch (point) {
    case FaultPoint::checkpoint_written: return checkpoint_written(site);
    case FaultPoint::step_started: return step_started(site);
  }
}

}  // namespace quest::training
