#include "parallel.h"

#include <cstdio>
#include <cstdlib>

#include "quest/lab/distributed/launch.h"
#include "quest/lab/distributed/process_group.h"

namespace quest::cli {

std::vector<std::string>& program_args() {
  static std::vector<std::string> args;
  return args;
}

void add_parallel_flags(CLI::App* cmd, const std::shared_ptr<ParallelFlags>& f) {
  const char* group = "Data-parallel (c10d / Gloo; torchrun's flags)";
  cmd->add_option("--nproc-per-node", f->nproc_per_node, "Ranks on this machine (each its share of the cores)")
      ->check(CLI::Range(1, 1024))->group(group);
  cmd->add_option("--nnodes", f->nnodes, "Machines in the run")->check(CLI::Range(1, 65536))->group(group);
  cmd->add_option("--node-rank", f->node_rank, "This machine's index in [0, --nnodes)")->check(CLI::NonNegativeNumber)
      ->group(group);
  cmd->add_option("--master-addr", f->master_addr, "Rank 0's machine (hosts the rendezvous)")->capture_default_str()
      ->group(group);
  cmd->add_option("--master-port", f->master_port, "Rendezvous port (default on one machine: a free one)")
      ->check(CLI::Range(0, 65535))->group(group);
  cmd->add_option("--dist-timeout", f->timeout_seconds,
                  "Seconds any rank waits for the others (rendezvous, each collective) before failing")
      ->check(CLI::Range(1, 86400))->capture_default_str()->group(group);
  cmd->add_option("--dist-interface", f->interface,
                  "Network interface Gloo binds on this machine (sets GLOO_SOCKET_IFNAME for its ranks; "
                  "default: loopback on one machine, else the address the host name resolves to)")
      ->group(group);
  cmd->add_option("--dist-bucket-mb", f->bucket_mb,
                  "Gradient all-reduce bucket size in MB: each bucket is sent while the backward goes on")
      ->check(CLI::Range(0.001, 1024.0))->capture_default_str()->group(group);
  cmd->add_flag("--dist-no-overlap", f->no_overlap,
                "One gradient all-reduce after the backward instead of buckets sent during it (to measure the overlap)")
      ->group(group);
  cmd->add_option("--check-sync-every", f->check_sync_every,
                  "Debugging: compare the ranks' parameter checksums every N steps (always: each epoch)")
      ->check(CLI::NonNegativeNumber)->group(group);
}

ParallelRole start_parallel(const ParallelFlags& f) {
  ParallelRole role;
  // One way in: the variable torch's Gloo users know, read by the rendezvous (set here before this
  // process joins or launches its ranks, who inherit it).
  if (!f.interface.empty()) ::setenv("GLOO_SOCKET_IFNAME", f.interface.c_str(), 1);
  role.parallel.check_sync_every = f.check_sync_every;
  role.parallel.overlap = !f.no_overlap;
  role.parallel.bucket_bytes = static_cast<int64_t>(f.bucket_mb * (1 << 20));
  if (const auto r = distributed::rendezvous_from_env()) {
    if ((f.nproc_per_node > 1 || f.nnodes > 1) && !std::getenv("QUEST_LAUNCHED"))
      throw std::invalid_argument("WORLD_SIZE is set (this process is a rank, as torchrun starts them) and "
                                  "--nproc-per-node/--nnodes ask to launch ranks: use one or the other");
    role.parallel.group = std::make_shared<distributed::ProcessGroup>(*r);
    return role;
  }
  if (f.nproc_per_node == 1 && f.nnodes == 1) return role;
  distributed::LaunchOptions o;
  o.nproc_per_node = f.nproc_per_node;
  o.nnodes = f.nnodes;
  o.node_rank = f.node_rank;
  o.master_addr = f.master_addr;
  o.master_port = f.master_port;
  o.timeout_seconds = f.timeout_seconds;
  const std::vector<std::string>& argv = program_args();
  role.launched = distributed::launch("/proc/self/exe", std::vector<std::string>(argv.begin() + 1, argv.end()), o,
                                      [](const std::string& line) {
                                        std::fprintf(stderr, "launcher: %s\n", line.c_str());
                                        std::fflush(stderr);
                                      });
  return role;
}

}  // namespace quest::cli
