// Executors of a comparison plan: in this process, or as child processes side by side.
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <stdexcept>
#include <thread>

#include "quest/lab/runs/compare.h"
#include "quest/lab/runs/spawn.h"
#include "quest/torch/runtime.h"

namespace quest::runs {

namespace {

class InProcess : public Executor {
 public:
  std::vector<RunOutcome> execute(const std::vector<RunSpec>& runs, bool resume,
                                  const ExecutorEvents& events) override {
    std::vector<RunOutcome> outcomes;
    for (const RunSpec& run : runs) {
      if (events.on_start) events.on_start(run);
      // An epoch's line is in metrics.jsonl once the next epoch's first step runs (and at the end).
      int64_t epoch = -1;
      auto report_epoch = [&] {
        const auto last = run.dir().last_epoch_metrics();
        if (events.on_epoch && last && last->value("epoch", int64_t{-1}) == epoch) events.on_epoch(run, *last);
      };
      auto on_step = [&](const nlohmann::json& line) {
        if (line["epoch"].get<int64_t>() != epoch) {
          report_epoch();
          epoch = line["epoch"].get<int64_t>();
        }
        if (events.on_step) events.on_step(run, line);
      };
      RunOutcome outcome;
      try {
        TrainCallbacks callbacks;
        callbacks.on_step = on_step;
        callbacks.evaluate_test = run.evaluate_test;
        outcome = train_run(run.config, resume, callbacks).outcome;
      } catch (const c10::Error& e) {
        outcome = {RunStatus::failed, e.what_without_backtrace()};
      } catch (const std::exception& e) {
        outcome = {RunStatus::failed, e.what()};
      }
      report_epoch();
      if (events.on_end) events.on_end(run, outcome);
      outcomes.push_back(outcome);
    }
    return outcomes;
  }
  std::string describe() const override { return "one after another in this process"; }
};

// Processes, not threads: OpenBLAS's thread pool is process-wide, and several threads
// calling a multi-threaded OpenBLAS at once serialise on it. (Randomness is run-owned either way.)
class ChildProcesses : public Executor {
 public:
  ChildProcesses(int workers, int threads, std::string exe)
      : workers_(std::max(1, workers)), threads_(std::max(1, threads)), exe_(std::move(exe)) {}

  std::string describe() const override {
    return std::to_string(workers_) + " side by side with " + std::to_string(threads_) +
           " thread(s) each; logs in " + RunDir("<run-dir>").log().string();
  }

  std::vector<RunOutcome> execute(const std::vector<RunSpec>& runs, bool resume,
                                  const ExecutorEvents& events) override {
    std::vector<RunOutcome> outcomes(runs.size());
    std::vector<int64_t> epoch_reported(runs.size(), -1);
    std::map<pid_t, size_t> running;
    size_t next = 0;
    // Each running run's newest epoch line, once per epoch.
    auto report_epochs = [&](size_t i) {
      const auto last = runs[i].dir().last_epoch_metrics();
      if (!last || last->value("epoch", int64_t{-1}) <= epoch_reported[i]) return;
      epoch_reported[i] = (*last)["epoch"].get<int64_t>();
      if (events.on_epoch) events.on_epoch(runs[i], *last);
    };
    while (next < runs.size() || !running.empty()) {
      while (next < runs.size() && static_cast<int>(running.size()) < workers_) {
        const RunSpec& run = runs[next];
        const RunDir dir = run.dir();
        dir.write_config(run.config);
        std::filesystem::remove(dir.outcome());  // an earlier invocation's; this child writes its own
        if (!resume) dir.trim_metrics(0);         // old epoch lines are not news
        if (const auto last = dir.last_epoch_metrics()) epoch_reported[next] = last->value("epoch", int64_t{-1});
        ChildJob job;
        job.args = {"run", dir.root().string()};  // the run directory describes the run
        if (resume) job.args.push_back("--resume");
        if (!run.evaluate_test) job.args.push_back("--no-test");
        job.env = {{"OMP_NUM_THREADS", std::to_string(threads_)}, {"OPENBLAS_NUM_THREADS", std::to_string(threads_)}};
        job.log_path = dir.log().string();
        running[spawn(exe_, job)] = next;
        if (events.on_start) events.on_start(run);
        ++next;
      }
      int status = 0;
      const pid_t pid = waitpid(-1, &status, WNOHANG);
      if (pid > 0 && running.count(pid)) {
        const size_t i = running[pid];
        running.erase(pid);
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        report_epochs(i);
        const RunDir dir = runs[i].dir();
        const std::optional<RunOutcome> written = dir.read_outcome();
        if (written && written->status != RunStatus::failed && (code == 0 || written->status == RunStatus::diverged)) {
          outcomes[i] = *written;
        } else {
          const std::string why = written && !written->message.empty() ? written->message : dir.log_tail();
          outcomes[i] = {RunStatus::failed,
                         "exit code " + std::to_string(code) + ", log " + dir.log().string() + "\n    " + why};
        }
        if (events.on_end) events.on_end(runs[i], outcomes[i]);
        continue;
      }
      if (pid < 0 && errno != EINTR && errno != ECHILD) throw std::runtime_error(std::strerror(errno));
      for (const auto& [child, i] : running) report_epochs(i);
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    return outcomes;
  }

 private:
  int workers_, threads_;
  std::string exe_;
};

}  // namespace

std::unique_ptr<Executor> in_process_executor() { return std::make_unique<InProcess>(); }

std::unique_ptr<Executor> child_process_executor(int workers, int threads, std::string executable) {
  return std::make_unique<ChildProcesses>(workers, threads, std::move(executable));
}

}  // namespace quest::runs
