#include "quest/lab/distributed/launch.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <thread>

#include "quest/lab/runs/spawn.h"

namespace quest::distributed {

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(std::string("cannot open a socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string why = std::strerror(errno);
    close(fd);
    throw std::runtime_error("cannot find a free port: " + why);
  }
  close(fd);
  return ntohs(addr.sin_port);
}

int launch(const std::string& exe, const std::vector<std::string>& args, const LaunchOptions& o,
           const std::function<void(const std::string&)>& note) {
  if (o.nproc_per_node < 1 || o.nnodes < 1 || o.node_rank < 0 || o.node_rank >= o.nnodes)
    throw std::invalid_argument("--nproc-per-node and --nnodes must be >= 1 and --node-rank in [0, --nnodes)");
  if (o.nnodes > 1 && o.master_port == 0)
    throw std::invalid_argument("a multi-machine run needs --master-port (and --master-addr: rank 0's machine)");
  const int world = o.nnodes * o.nproc_per_node;
  const int port = o.master_port ? o.master_port : free_port();
  int threads = static_cast<int>(std::thread::hardware_concurrency()) / o.nproc_per_node;
  if (const char* env = std::getenv("OMP_NUM_THREADS"); env && std::atoi(env) > 0) threads = std::atoi(env);
  threads = std::max(1, threads);
  std::map<pid_t, int> running;  // pid -> rank
  for (int local = 0; local < o.nproc_per_node; ++local) {
    const int rank = o.node_rank * o.nproc_per_node + local;
    runs::ChildJob job;
    job.args = args;
    job.env = {{"RANK", std::to_string(rank)},
               {"WORLD_SIZE", std::to_string(world)},
               {"LOCAL_RANK", std::to_string(local)},
               {"MASTER_ADDR", o.master_addr},
               {"MASTER_PORT", std::to_string(port)},
               {"QUEST_DIST_TIMEOUT", std::to_string(o.timeout_seconds)},
               {"QUEST_LAUNCHED", "1"},
               {"OMP_NUM_THREADS", std::to_string(threads)},
               {"OPENBLAS_NUM_THREADS", std::to_string(threads)}};
    running[runs::spawn(exe, job)] = rank;
  }
  note("data-parallel: " + std::to_string(o.nproc_per_node) + " rank(s) on this node of " + std::to_string(world) +
       ", " + std::to_string(threads) + " thread(s) each, rendezvous " + o.master_addr + ":" + std::to_string(port));
  int exit_code = 0;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  while (!running.empty()) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0 && running.count(pid)) {
      const int rank = running[pid];
      running.erase(pid);
      const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      if (code == 0) continue;
      if (WIFSIGNALED(status))
        note("rank " + std::to_string(rank) + " (pid " + std::to_string(pid) + ") was killed by signal " +
             std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")");
      else
        note("rank " + std::to_string(rank) + " (pid " + std::to_string(pid) + ") exited with code " +
             std::to_string(code));
      if (exit_code == 0) {
        exit_code = code;
        // The others notice through their collectives within the timeout; then they must go.
        deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o.timeout_seconds + 15);
      }
      continue;
    }
    if (pid < 0 && errno != EINTR && errno != ECHILD) throw std::runtime_error(std::strerror(errno));
    if (std::chrono::steady_clock::now() > deadline) {
      for (const auto& [child, rank] : running) {
        note("rank " + std::to_string(rank) + " (pid " + std::to_string(child) + ") did not exit within " +
             std::to_string(o.timeout_seconds + 15) + " s of the failure: killing it (hung?)");
        kill(child, SIGKILL);
      }
      deadline = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return exit_code;
}

}  // namespace quest::distributed
