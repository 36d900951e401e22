// Data-parallel training's communication: a c10d process group (LibTorch's TCPStore rendezvous and
// Gloo collectives over TCP, the engine behind PyTorch's DistributedDataParallel on CPU) with what
// the training engine needs from it: bucketed gradient all-reduce, small sums and maxima, the
// checkpoint shared from rank 0, a parameter checksum, and failures that name the rank and step.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace quest::distributed {

// Where a rank finds the others: torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT). Rank 0 hosts the TCPStore on master_addr:master_port.
struct Rendezvous {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // Bounds every wait: joining the rendezvous, and each collective (a dead or hung peer is reported
  // within it rather than waited for forever).
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
  // The network interface Gloo binds (GLOO_SOCKET_IFNAME, as torch reads it; the CLI's
  // --dist-interface sets it). Empty: loopback for a one-machine run, else the address this host's
  // name resolves to.
  std::string interface;
};

// The rendezvous the environment describes, or nullopt when WORLD_SIZE is unset (one process).
// QUEST_DIST_TIMEOUT (seconds) overrides the timeout; GLOO_SOCKET_IFNAME names the interface.
// Malformed values raise std::invalid_argument naming the variable.
std::optional<Rendezvous> rendezvous_from_env();

// A collective failed: a peer died, hung past the timeout, or reported an error. The message names
// this rank, the step, the collective, and what the roll call learnt about the others.
struct DistributedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Bytes sent in gradient all-reduce, and the seconds a step waited for it (including waiting for the
// slowest rank; overlapped with the backward, only what the backward did not hide).
struct CommStats {
  int64_t bytes = 0;
  double seconds = 0;
};

class ProcessGroup {
 public:
  // Joins the rendezvous (rank 0 listens, the others connect) and checks that every rank agrees on
  // the world size. A port in use, an unreachable master, a rank that never arrives within the
  // timeout or a world-size mismatch raise DistributedError saying which.
  explicit ProcessGroup(const Rendezvous& rendezvous);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rendezvous_.rank; }
  int world_size() const { return rendezvous_.world_size; }
  const Rendezvous& rendezvous() const { return rendezvous_; }

  // Named in failure messages: the step being trained (-1: not training).
  void set_step(int64_t step) { step_ = step; }

  // Sums float tensors over the ranks, in place: packed into flat buckets of at most bucket_bytes,
  // every bucket in flight at once, then unpacked. Counted in stats().
  void allreduce_sum(const std::vector<torch::Tensor>& tensors, const std::string& what,
                     int64_t bucket_bytes = 25 << 20);
  // The gradient all-reduce overlapped with the backward, as DDP's Reducer does it. watch_gradients
  // (once) cuts the parameters into buckets of at most bucket_bytes in reverse order (the order the
  // backward produces their gradients) and hooks each. Between arm_gradients() and
  // finish_gradients() a bucket is sent the moment its last gradient arrives, buckets in the same
  // order on every rank; finish_gradients sends what the backward did not produce (as zeros), waits,
  // and leaves the sums in the parameters' .grad. Outside that window the hooks do nothing.
  void watch_gradients(const std::vector<torch::Tensor>& params, int64_t bucket_bytes);
  bool watching() const;
  void arm_gradients();
  void finish_gradients(const std::string& what);

  // Element-wise sum / maximum of small vectors (metrics, diagnostics), in double.
  std::vector<double> sum(std::vector<double> values, const std::string& what);
  std::vector<double> max(std::vector<double> values, const std::string& what);
  // Rank 0's `bytes` on every rank (a Gloo broadcast: the checkpoint a resumed run starts from).
  std::string broadcast(const std::string& bytes, const std::string& what);

  // Throws DistributedError naming the first tensor whose sum or sum of squares differs between
  // ranks: the ranks' parameters must stay bitwise identical.
  void check_identical(const std::vector<std::pair<std::string, torch::Tensor>>& tensors);

  // Leaves this rank's error in the store, where the others' failure messages find it, and closes
  // this rank's connections so that they notice now rather than at their timeout.
  void report_failure(const std::string& what) noexcept;

  const CommStats& stats() const { return stats_; }

 public:
  struct Impl;  // the c10d objects: their headers (and Gloo's) stay out of this one
  struct Buckets;  // watch_gradients' state, shared with the parameters' hooks

 private:
  [[noreturn]] void fail(const std::string& what, const std::string& cause);
  std::string roll_call();
  std::vector<double> reduce(std::vector<double> values, bool maximum, const std::string& what);

  Rendezvous rendezvous_;
  std::unique_ptr<Impl> impl_;
  std::shared_ptr<Buckets> buckets_;
  int64_t step_ = -1;
  CommStats stats_;
};

}  // namespace quest::distributed
