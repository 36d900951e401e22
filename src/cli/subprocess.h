// Child processes side by side: `quest compare --workers N` trains each run in its own `quest train`
// process. Processes, not threads, because LibTorch's default generator (init, dropout) and
// OpenBLAS's thread pool are process-wide: runs in threads would neither be reproducible nor fast.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace quest::cli {

struct ChildJob {
  std::vector<std::string> args;             // argv[1..] for this executable (/proc/self/exe)
  std::map<std::string, std::string> env;    // overrides on top of this process's environment
  std::string log_path;                      // stdout and stderr, appended
};

// Runs every job as a child of this executable, at most `workers` at a time: `on_start(job)` as
// each starts, `poll` about once a second while any runs, `on_exit(job, exit_code)` as each ends
// (exit code 128 + signal for a killed child). Returns the exit codes in job order.
std::vector<int> run_children(const std::vector<ChildJob>& jobs, int workers,
                              const std::function<void(size_t)>& on_start,
                              const std::function<void()>& poll,
                              const std::function<void(size_t, int)>& on_exit);

}  // namespace quest::cli
