// Starting this program's child processes: a comparison's runs side by side, a data-parallel
// run's ranks.
#pragma once

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

namespace quest::runs {

struct ChildJob {
  std::vector<std::string> args;           // argv[1..]
  std::map<std::string, std::string> env;  // overrides on top of this process's environment
  std::string log_path;                    // stdout and stderr, appended; empty: this process's
};

// Starts `exe` with the job's arguments and environment; throws std::runtime_error naming it.
pid_t spawn(const std::string& exe, const ChildJob& job);

}  // namespace quest::runs
