#include "quest/lab/distributed/process_group.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <thread>

#include "quest/torch/runtime.h"

namespace quest::distributed {

namespace {

int64_t env_int(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v, &end, 10);
  if (errno || *end || x < lo || x > hi)
    throw std::invalid_argument(std::string("environment variable ") + name + "='" + v +
                                "' is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return x;
}

std::string key_failed(int rank) { return "quest/failed/" + std::to_string(rank); }
std::string key_alive(int rank) { return "quest/roll-call/" + std::to_string(rank); }

// Runs `body` on a thread of its own and waits for it at most `limit`. A store request over a link
// that went down blocks in recv until TCP gives up (a quarter of an hour), so what a failing rank
// asks the store must not wait on it. An overrunning thread is left behind, holding what it uses
// (body captures the store by reference count, never the ProcessGroup); the process exits past it.
template <class T>
std::optional<T> within(std::chrono::milliseconds limit, std::function<T()> body) {
  auto task = std::make_shared<std::packaged_task<T()>>(std::move(body));
  auto result = task->get_future();
  std::thread([task] { (*task)(); }).detach();
  if (result.wait_for(limit) != std::future_status::ready) return std::nullopt;
  return result.get();  // body's exception, if it threw
}

}  // namespace

std::optional<Rendezvous> rendezvous_from_env() {
  if (!std::getenv("WORLD_SIZE") || !*std::getenv("WORLD_SIZE")) return std::nullopt;
  Rendezvous r;
  r.world_size = static_cast<int>(env_int("WORLD_SIZE", 1, 1, 1 << 20));
  r.rank = static_cast<int>(env_int("RANK", -1, 0, r.world_size - 1));
  if (r.rank < 0) throw std::invalid_argument("environment variable WORLD_SIZE is set but RANK is not");
  r.local_rank = static_cast<int>(env_int("LOCAL_RANK", r.rank, 0, 1 << 20));
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) r.master_addr = a;
  r.master_port = static_cast<int>(env_int("MASTER_PORT", r.master_port, 1, 65535));
  r.timeout = std::chrono::seconds(env_int("QUEST_DIST_TIMEOUT", r.timeout.count() / 1000, 1, 86400));
  if (const char* i = std::getenv("GLOO_SOCKET_IFNAME"); i && *i) r.interface = i;
  return r;
}

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;  // released once this rank reported a failure
};

c10d::ProcessGroupGloo* gloo_of(ProcessGroup::Impl& impl, int rank) {
  if (!impl.gloo)
    throw DistributedError("data-parallel rank " + std::to_string(rank) + ": the process group is closed (this "
                           "rank reported a failure)");
  return impl.gloo.get();
}

ProcessGroup::ProcessGroup(const Rendezvous& r) : rendezvous_(r), impl_(std::make_unique<Impl>()) {
  if (r.world_size < 1 || r.rank < 0 || r.rank >= r.world_size)
    throw DistributedError("data-parallel: rank " + std::to_string(r.rank) + " is outside a world of " +
                           std::to_string(r.world_size));
  const std::string where = r.master_addr + ":" + std::to_string(r.master_port);
  const std::string me = "data-parallel rank " + std::to_string(r.rank) + " of " + std::to_string(r.world_size);
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(r.master_port);
  options.isServer = r.rank == 0;
  options.numWorkers = r.world_size;
  options.waitWorkers = true;  // rank 0 returns once every rank has connected
  options.timeout = r.timeout;
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(r.master_addr, options);
  } catch (const std::exception& e) {
    const std::string why = error_message(e);
    if (r.rank == 0)
      throw DistributedError(me + ": cannot host the rendezvous on " + where +
                             (why.find("in use") != std::string::npos
                                  ? " (the port is in use: another run? pick another --master-port)"
                                  : " (waited " + std::to_string(r.timeout.count() / 1000) + " s for " +
                                        std::to_string(r.world_size - 1) + " other rank(s) to connect)") +
                             ": " + why);
    throw DistributedError(me + ": cannot reach the rendezvous on " + where + " within " +
                           std::to_string(r.timeout.count() / 1000) + " s (is rank 0 running there?): " + why);
  }
  // Every rank must share rank 0's idea of the world; a mismatch would otherwise hang in Gloo.
  try {
    const std::string theirs = std::to_string(r.world_size);
    if (r.rank == 0) {
      impl_->store->set("quest/world_size", std::vector<uint8_t>(theirs.begin(), theirs.end()));
    } else {
      const auto v = impl_->store->get("quest/world_size");  // waits for rank 0 (up to the timeout)
      const std::string zeros(v.begin(), v.end());
      if (zeros != theirs) {
        const std::string what = "WORLD_SIZE is " + theirs + " here but " + zeros + " on rank 0";
        report_failure(what);
        throw DistributedError(me + ": " + what);
      }
    }
  } catch (const DistributedError&) {
    throw;
  } catch (const std::exception& e) {
    throw DistributedError(me + ": the rendezvous on " + where + " failed: " + error_message(e));
  }
  try {
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(r.timeout);
    // The address the others connect to: the named interface's, else loopback for a one-machine
    // run, else this host's name's.
    if (!r.interface.empty()) {
      try {
        gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(r.interface));
      } catch (const std::exception& e) {
        throw std::runtime_error("cannot bind network interface '" + r.interface +
                                 "' (GLOO_SOCKET_IFNAME / --dist-interface): " + error_message(e));
      }
    } else {
      gloo_options->devices.push_back(r.master_addr == "127.0.0.1" || r.master_addr == "localhost"
                                          ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                          : c10d::ProcessGroupGloo::createDefaultDevice());
    }
    gloo_options->threads = 1;
    impl_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, r.rank, r.world_size, gloo_options);
  } catch (const std::exception& e) {
    fail("joining the Gloo process group", error_message(e));
  }
}

// The overlapped all-reduce's state. The hooks hold it by reference count and do nothing unless
// armed, so a model that outlives its process group can still run backward.
struct ProcessGroup::Buckets {
  struct Bucket {
    std::vector<size_t> members;  // parameter indices
    std::vector<int64_t> offsets;
    torch::Tensor flat;
    size_t pending = 0;
    c10::intrusive_ptr<c10d::Work> work;
  };
  std::vector<torch::Tensor> params;
  std::vector<size_t> bucket_of, slot_of;
  std::vector<Bucket> buckets;
  std::vector<bool> arrived;
  size_t next = 0;  // the next bucket to send
  bool armed = false;
  c10d::ProcessGroupGloo* gloo = nullptr;  // set while armed
  int64_t bytes = 0;
  std::string error;  // a send that failed inside a hook, reported by finish_gradients

  void send_ready() {
    while (next < buckets.size() && buckets[next].pending == 0) {
      Bucket& b = buckets[next++];
      std::vector<torch::Tensor> flat{b.flat};
      bytes += b.flat.numel() * 4;
      b.work = gloo->allreduce(flat);
    }
  }
  void arrive(size_t i, const torch::Tensor& grad) {
    if (!armed || arrived[i] || !error.empty()) return;
    try {
      torch::NoGradGuard no_grad;
      Bucket& b = buckets[bucket_of[i]];
      b.flat.narrow(0, b.offsets[slot_of[i]], params[i].numel()).copy_(grad.reshape(-1));
      arrived[i] = true;
      --b.pending;
      send_ready();
    } catch (const std::exception& e) {
      error = error_message(e);
    }
  }
};

ProcessGroup::~ProcessGroup() {
  if (buckets_) buckets_->armed = false, buckets_->gloo = nullptr;
}

void ProcessGroup::watch_gradients(const std::vector<torch::Tensor>& params, int64_t bucket_bytes) {
  TORCH_CHECK(!buckets_, "quest::distributed: watch_gradients is called once per process group");
  TORCH_CHECK(bucket_bytes > 0, "quest::distributed: bucket_bytes must be positive, got ", bucket_bytes);
  auto state = std::make_shared<Buckets>();
  int64_t bytes = 0;
  for (size_t r = params.size(); r-- > 0;) {
    const torch::Tensor& p = params[r];
    TORCH_CHECK(p.scalar_type() == torch::kFloat, "quest::distributed: gradient all-reduce takes float32 parameters");
    if (!p.requires_grad()) continue;
    const int64_t b = p.numel() * 4;
    if (state->buckets.empty() || (bytes + b > bucket_bytes && !state->buckets.back().members.empty())) {
      state->buckets.emplace_back();
      bytes = 0;
    }
    auto& bucket = state->buckets.back();
    const size_t i = state->params.size();
    state->params.push_back(p);
    state->bucket_of.push_back(state->buckets.size() - 1);
    state->slot_of.push_back(bucket.members.size());
    bucket.offsets.push_back(bytes / 4);
    bucket.members.push_back(i);
    bytes += b;
  }
  for (auto& bucket : state->buckets) {
    int64_t n = 0;
    for (size_t i : bucket.members) n += state->params[i].numel();
    bucket.flat = torch::zeros({n});
  }
  state->arrived.assign(state->params.size(), false);
  for (size_t i = 0; i < state->params.size(); ++i) {
    std::weak_ptr<Buckets> weak = state;  // the parameter must not keep a dead group's buffers alive
    state->params[i].register_hook([weak, i](const torch::Tensor& grad) {
      if (auto s = weak.lock()) s->arrive(i, grad);
    });
  }
  buckets_ = std::move(state);
}

bool ProcessGroup::watching() const { return buckets_ != nullptr; }

void ProcessGroup::arm_gradients() {
  TORCH_CHECK(buckets_, "quest::distributed: arm_gradients before watch_gradients");
  Buckets& s = *buckets_;
  s.gloo = gloo_of(*impl_, rank());
  s.error.clear();
  s.next = 0;
  std::fill(s.arrived.begin(), s.arrived.end(), false);
  for (auto& b : s.buckets) b.pending = b.members.size(), b.work.reset();
  s.armed = true;
}

void ProcessGroup::finish_gradients(const std::string& what) {
  TORCH_CHECK(buckets_ && buckets_->armed, "quest::distributed: finish_gradients without arm_gradients");
  Buckets& s = *buckets_;
  s.armed = false;
  const auto start = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  try {
    if (!s.error.empty()) throw std::runtime_error(s.error);
    for (size_t i = 0; i < s.params.size(); ++i)  // what this rank's backward did not reach: zeros
      if (!s.arrived[i]) {
        auto& b = s.buckets[s.bucket_of[i]];
        b.flat.narrow(0, b.offsets[s.slot_of[i]], s.params[i].numel()).zero_();
        b.pending = 0;
      }
    s.send_ready();
    for (auto& b : s.buckets) b.work->wait();
  } catch (const std::exception& e) {
    s.gloo = nullptr;
    fail(what, error_message(e));
  }
  s.gloo = nullptr;
  stats_.bytes += s.bytes;
  s.bytes = 0;
  for (size_t i = 0; i < s.params.size(); ++i) {
    torch::Tensor& p = s.params[i];
    const auto& b = s.buckets[s.bucket_of[i]];
    const torch::Tensor sum = b.flat.narrow(0, b.offsets[s.slot_of[i]], p.numel()).view(p.sizes());
    if (p.grad().defined()) p.mutable_grad().copy_(sum);
    else p.mutable_grad() = sum.clone();
  }
  stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string ProcessGroup::roll_call() {
  // Who is still there: every surviving rank answers within a couple of seconds of its own failure.
  const int world = world_size(), me = rank();
  const auto store = impl_->store;
  std::optional<std::string> answer;
  try {
    answer = within<std::string>(std::chrono::seconds(6), [store, world, me]() -> std::string {
      std::string lost, failed;
      store->setTimeout(std::chrono::seconds(3));
      store->set(key_alive(me), std::vector<uint8_t>{1});
      std::vector<bool> present(world, false);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
      for (;;) {
        bool all = true;
        for (int k = 0; k < world; ++k)
          if (!present[k]) all &= (present[k] = store->check({key_alive(k)}) || store->check({key_failed(k)}));
        if (all || std::chrono::steady_clock::now() > deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      for (int k = 0; k < world; ++k) {
        if (k == me) continue;
        if (store->check({key_failed(k)})) {
          const auto v = store->get(key_failed(k));
          failed += "; rank " + std::to_string(k) + " reported: " + std::string(v.begin(), v.end());
        } else if (!present[k]) {
          lost += (lost.empty() ? "" : ", ") + std::to_string(k);
        }
      }
      if (!lost.empty()) failed += "; rank(s) " + lost + " did not answer the roll call: died or hung";
      return failed;
    });
  } catch (const std::exception&) {
    return me == 0 ? "" : "; the rendezvous store on rank 0 is gone: rank 0 has died or exited";
  }
  if (!answer)
    return me == 0 ? "; the roll call did not finish within 6 s"
                   : "; the rendezvous store on rank 0 did not answer within 6 s: the network to rank 0's host "
                     "is down, or rank 0 hung";
  return *answer;
}

void ProcessGroup::fail(const std::string& what, const std::string& cause) {
  const std::string step = step_ >= 0 ? " at step " + std::to_string(step_) : "";
  const std::string others = world_size() > 1 ? roll_call() : "";
  throw DistributedError("data-parallel rank " + std::to_string(rank()) + step + ": " + what + " failed (" +
                         cause + ")" + others);
}

void ProcessGroup::report_failure(const std::string& what) noexcept {
  try {
    const auto store = impl_->store;
    const std::string text = (step_ >= 0 ? "at step " + std::to_string(step_) + ": " : "") + what;
    const int me = rank();
    within<bool>(std::chrono::seconds(4), [store, text, me] {
      store->setTimeout(std::chrono::seconds(3));
      store->set(key_failed(me), std::vector<uint8_t>(text.begin(), text.end()));
      return true;
    });
    impl_->gloo.reset();  // closes this rank's connections: the others' collectives fail at once
    if (me != 0) return;
    // Rank 0 hosts the store: it stays (a few seconds at most) until the others, who notice the
    // failure through their collectives, have answered the roll call and can read why.
    const int world = world_size();
    within<bool>(std::chrono::seconds(6), [store, world] {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      for (int k = 1; k < world && std::chrono::steady_clock::now() < deadline;)
        if (store->check({key_alive(k)}) || store->check({key_failed(k)})) ++k;
        else std::this_thread::sleep_for(std::chrono::milliseconds(50));
      return true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  } catch (...) {  // the store may be gone with rank 0: nothing more to tell
  }
}

void ProcessGroup::allreduce_sum(const std::vector<torch::Tensor>& tensors, const std::string& what,
                                 int64_t bucket_bytes) {
  if (world_size() == 1 || tensors.empty()) return;
  const auto start = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  // Buckets of consecutive tensors; each is one flat buffer (one message per bucket, not per tensor).
  std::vector<std::pair<size_t, size_t>> ranges;  // [first, last) tensor indices
  int64_t bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].scalar_type() == torch::kFloat && tensors[i].is_contiguous(),
                "quest::distributed: all-reduce takes contiguous float32 tensors");
    const int64_t b = tensors[i].numel() * 4;
    if (ranges.empty() || bytes + b > bucket_bytes) {
      ranges.emplace_back(i, i);
      bytes = 0;
    }
    ranges.back().second = i + 1;
    bytes += b;
  }
  std::vector<torch::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> work;
  try {
    for (const auto& [first, last] : ranges) {
      std::vector<torch::Tensor> views;
      for (size_t i = first; i < last; ++i) views.push_back(tensors[i].view(-1));
      std::vector<torch::Tensor> flat{torch::cat(views)};
      stats_.bytes += flat[0].numel() * 4;
      work.push_back(gloo_of(*impl_, rank())->allreduce(flat));
      flats.push_back(flat[0]);
    }
    for (auto& w : work) w->wait();
  } catch (const std::exception& e) {
    fail(what, error_message(e));
  }
  for (size_t r = 0; r < ranges.size(); ++r) {
    int64_t offset = 0;
    for (size_t i = ranges[r].first; i < ranges[r].second; ++i) {
      const int64_t n = tensors[i].numel();
      tensors[i].view(-1).copy_(flats[r].narrow(0, offset, n));
      offset += n;
    }
  }
  stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::vector<double> ProcessGroup::reduce(std::vector<double> values, bool maximum, const std::string& what) {
  if (world_size() == 1 || values.empty()) return values;
  std::vector<torch::Tensor> t{torch::from_blob(values.data(), {static_cast<int64_t>(values.size())}, torch::kDouble)};
  c10d::AllreduceOptions options;
  options.reduceOp = maximum ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
  try {
    gloo_of(*impl_, rank())->allreduce(t, options)->wait();
  } catch (const std::exception& e) {
    fail(what, error_message(e));
  }
  return values;  // from_blob wrote through to values
}

std::vector<double> ProcessGroup::sum(std::vector<double> values, const std::string& what) {
  return reduce(std::move(values), false, what);
}
std::vector<double> ProcessGroup::max(std::vector<double> values, const std::string& what) {
  return reduce(std::move(values), true, what);
}

std::string ProcessGroup::broadcast(const std::string& bytes, const std::string& what) {
  if (world_size() == 1) return bytes;
  try {
    std::vector<torch::Tensor> size{torch::tensor({static_cast<int64_t>(bytes.size())}, torch::kLong)};
    gloo_of(*impl_, rank())->broadcast(size)->wait();
    const int64_t n = size[0].item<int64_t>();
    std::vector<torch::Tensor> body{torch::empty({n}, torch::kUInt8)};
    if (rank() == 0) std::memcpy(body[0].data_ptr(), bytes.data(), n);
    if (n > 0) gloo_of(*impl_, rank())->broadcast(body)->wait();
    return std::string(static_cast<const char*>(body[0].data_ptr()), n);
  } catch (const std::exception& e) {
    fail(what, error_message(e));
  }
}

void ProcessGroup::check_identical(const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  if (world_size() == 1) return;
  // max over ranks of (s, -s) gives (max s, -min s): equal on every rank iff max == min.
  std::vector<double> v;
  for (const auto& [name, t] : tensors) {
    const auto d = t.detach().to(torch::kDouble);
    v.push_back(d.sum().item<double>());
    v.push_back(d.square().sum().item<double>());
  }
  const size_t n = v.size();
  for (size_t i = 0; i < n; ++i) v.push_back(-v[i]);
  const std::vector<double> m = max(v, "the parameter checksum");
  for (size_t i = 0; i < n; ++i)
    if (m[i] != -m[n + i] && !(std::isnan(m[i]) && std::isnan(m[n + i])))
      throw DistributedError("data-parallel rank " + std::to_string(rank()) + " at step " + std::to_string(step_) +
                             ": the ranks' parameters differ: '" + tensors[i / 2].first + "' has " +
                             (i % 2 ? "sum of squares" : "sum") + " between " + std::to_string(-m[n + i]) + " and " +
                             std::to_string(m[i]));
}

}  // namespace quest::distributed
