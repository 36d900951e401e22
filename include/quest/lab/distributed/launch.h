// The launcher of a data-parallel run on one machine, as torchrun's: starts this node's ranks as
// child processes of the same command with torchrun's variables set, and watches them: when one
// fails, the others (which notice through their collectives) get the process-group timeout and a
// grace period to exit with their own error, then are killed. The failing rank is named.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace quest::distributed {

struct LaunchOptions {
  int nproc_per_node = 1, nnodes = 1, node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0: a free port of this machine (one node only)
  int timeout_seconds = 300;
};

// A TCP port nobody listens on right now (bind to port 0, read it back, close).
int free_port();

// Runs ranks node_rank·nproc_per_node … of nnodes·nproc_per_node, each `exe args` with RANK,
// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, QUEST_DIST_TIMEOUT and its share of this
// machine's threads (OMP_NUM_THREADS, unless set: cores / nproc_per_node). Returns 0 when every
// rank exits 0, else the first failing rank's exit code (128 + signal when killed). `note` hears
// what the launcher does ("rank 1 (pid 123) was killed by signal 9 (Killed)").
int launch(const std::string& exe, const std::vector<std::string>& args, const LaunchOptions& options,
           const std::function<void(const std::string&)>& note);

}  // namespace quest::distributed
