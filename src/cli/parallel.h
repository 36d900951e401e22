// The data-parallel flags of `quest train` and `quest lm train` (torchrun's), and what they make
// of this process: the launcher of this node's ranks, one rank, or a plain one-process run.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "quest/lab/training/engine.h"

namespace quest::cli {

struct ParallelFlags {
  int nproc_per_node = 1, nnodes = 1, node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;
  int timeout_seconds = 300;
  int64_t check_sync_every = 0;
  std::string interface;  // --dist-interface: exported as GLOO_SOCKET_IFNAME to this node's ranks
  bool no_overlap = false;
  double bucket_mb = 1.0;
};
void add_parallel_flags(CLI::App* cmd, const std::shared_ptr<ParallelFlags>& flags);

struct ParallelRole {
  std::optional<int> launched;    // this process launched the ranks: their exit code
  training::DataParallel parallel;  // else how this process trains (no group: alone)
};
// With WORLD_SIZE in the environment this process is a rank (set by the launcher or torchrun) and
// joins the process group; with --nproc-per-node or --nnodes > 1 it launches this node's ranks and
// waits for them; else it trains alone.
ParallelRole start_parallel(const ParallelFlags& flags);

// This program's argv (main sets it): the launcher starts each rank with the same arguments.
std::vector<std::string>& program_args();

}  // namespace quest::cli
