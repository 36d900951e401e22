#include "subprocess.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace quest::cli {

namespace {

pid_t spawn(const std::string& exe, const ChildJob& job) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string entry(*e);
    if (!job.env.count(entry.substr(0, entry.find('=')))) env.push_back(entry);
  }
  for (const auto& [key, value] : job.env) env.push_back(key + "=" + value);
  std::vector<std::string> args = {exe};
  args.insert(args.end(), job.args.begin(), job.args.end());
  auto pointers = [](std::vector<std::string>& strings) {
    std::vector<char*> p;
    for (auto& s : strings) p.push_back(s.data());
    p.push_back(nullptr);
    return p;
  };
  auto argv = pointers(args), envp = pointers(env);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, job.log_path.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0)
    throw std::runtime_error("cannot start '" + exe + "' (log " + job.log_path + "): " + std::strerror(rc));
  return pid;
}

}  // namespace

std::vector<int> run_children(const std::vector<ChildJob>& jobs, int workers,
                              const std::function<void(size_t)>& on_start,
                              const std::function<void()>& poll,
                              const std::function<void(size_t, int)>& on_exit) {
  const std::string exe = "/proc/self/exe";  // as main.cpp's re-execution: this very binary
  std::vector<int> codes(jobs.size(), -1);
  std::map<pid_t, size_t> running;
  size_t next = 0;
  workers = std::max(1, workers);
  while (next < jobs.size() || !running.empty()) {
    while (next < jobs.size() && static_cast<int>(running.size()) < workers) {
      running[spawn(exe, jobs[next])] = next;
      if (on_start) on_start(next);
      ++next;
    }
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0 && running.count(pid)) {
      const size_t job = running[pid];
      running.erase(pid);
      codes[job] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      if (on_exit) on_exit(job, codes[job]);
      continue;
    }
    if (pid < 0 && errno != EINTR && errno != ECHILD) throw std::runtime_error(std::strerror(errno));
    if (poll) poll();
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  return codes;
}

}  // namespace quest::cli
