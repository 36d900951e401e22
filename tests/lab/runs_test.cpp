// Run orchestration: the run directory, the comparison plan, the executors' outcomes, resume and
// failure handling, the summary table.
#include <gtest/gtest.h>

#include <filesystem>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

#include <cstdlib>
#include <fstream>

#include "fixtures.h"
#include "quest/lab/runs/compare.h"
#include "quest/lab/tasks/vit.h"

namespace quest::runs {
namespace {

namespace fs = std::filesystem;

struct TempDir : testing::TempDir {
  TempDir() : testing::TempDir("quest_runs_test") {}
};

training::VitConfig tiny() {
  training::VitConfig c;
  c.model.dim(16).depth(1).heads(2).patch_size(7);
  c.epochs = 1;
  c.train_subset = 200;
  c.log_every = 2;
  return c;
}

TEST(RunDir, OwnsTheFileNames) {
  const RunDir dir("runs/x");
  EXPECT_EQ(dir.config(), fs::path("runs/x/config.json"));
  EXPECT_EQ(dir.metrics(), fs::path("runs/x/metrics.jsonl"));
  EXPECT_EQ(dir.checkpoint(), fs::path("runs/x/checkpoint.pt"));
  EXPECT_EQ(dir.result(), fs::path("runs/x/result.json"));
  EXPECT_EQ(dir.outcome(), fs::path("runs/x/outcome.json"));
  EXPECT_EQ(dir.log(), fs::path("runs/x/train.log"));
  EXPECT_TRUE(RunDir().empty());
}

TEST(RunDir, MetricsSkipCutLinesAndTrimToTheCheckpoint) {
  TempDir t;
  const RunDir dir(t.path);
  for (int epoch = 0; epoch < 3; ++epoch) {
    dir.append_metrics({{"type", "step"}, {"epoch", epoch}, {"step", epoch * 10}});
    dir.append_metrics({{"type", "epoch"}, {"epoch", epoch}, {"val_accuracy", 0.5 + epoch / 10.0}});
  }
  std::ofstream(dir.metrics(), std::ios::app) << "{\"type\": \"step\", \"epo";  // killed mid-write
  EXPECT_EQ(dir.read_metrics().size(), 6u);
  EXPECT_EQ(dir.read_metrics("epoch").size(), 3u);
  EXPECT_DOUBLE_EQ((*dir.last_epoch_metrics())["val_accuracy"].get<double>(), 0.7);
  dir.trim_metrics(2);  // the checkpoint holds epochs 0 and 1
  EXPECT_EQ(dir.read_metrics().size(), 4u);
  EXPECT_EQ((*dir.last_epoch_metrics())["epoch"], 1);
  EXPECT_FALSE(fs::exists(dir.metrics().string() + ".tmp"));
  dir.trim_metrics(0);
  EXPECT_TRUE(dir.read_metrics().empty());
  EXPECT_FALSE(dir.last_epoch_metrics().has_value());
}

TEST(RunDir, OutcomeLogAndConfig) {
  TempDir t;
  const RunDir dir(t.path / "run");
  EXPECT_FALSE(dir.read_outcome().has_value());
  dir.write_outcome({RunStatus::diverged, "non-finite loss at step 3"});
  const auto o = dir.read_outcome();
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->status, RunStatus::diverged);
  EXPECT_EQ(o->message, "non-finite loss at step 3");
  for (RunStatus s : {RunStatus::ok, RunStatus::diverged, RunStatus::failed})
    EXPECT_EQ(status_from_string(to_string(s)), s);
  EXPECT_FALSE(status_from_string("OK").has_value());
  std::ofstream(dir.outcome()) << R"({"status": "finished", "message": ""})";
  EXPECT_FALSE(dir.read_outcome().has_value()) << "a status this code never writes is unreadable, not 'failed'";
  std::ofstream(dir.log()) << "first\nlast line\n\n";
  EXPECT_EQ(dir.log_tail(), "last line");
  EXPECT_THROW(dir.read_config(), std::runtime_error);
  dir.write_config({{"epochs", 2}});
  EXPECT_EQ(dir.read_config()["epochs"], 2);
  EXPECT_FALSE(dir.checkpoint_epoch().has_value());
}

TEST(RunDir, CheckpointsAreCheckedBeforeLibTorchParsesThem) {
  TempDir t;
  const RunDir dir(t.path);
  torch::serialize::OutputArchive out;
  out.write("epoch", torch::tensor(int64_t{4}));
  save_archive(dir.checkpoint(), out);
  EXPECT_EQ(dir.checkpoint_epoch(), 4);
  // One flipped byte in the archive: the CRC catches it.
  std::string bytes;
  {
    std::ifstream in(dir.checkpoint(), std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  bytes[bytes.size() / 2] ^= 0x20;
  std::ofstream(dir.checkpoint(), std::ios::binary | std::ios::trunc) << bytes;
  try {
    dir.checkpoint_epoch();
    FAIL() << "a corrupt checkpoint was read";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("is corrupt: its CRC-32 does not match"), std::string::npos) << e.what();
  }
  // A checkpoint written before the checked format (a bare LibTorch archive) still loads.
  out.save_to(dir.checkpoint().string());
  EXPECT_EQ(dir.checkpoint_epoch(), 4);
}

TEST(Plan, KindsTimesSeedsInTableOrderAndDuplicatesAreErrors) {
  const auto plan = plan_runs(training::to_json(tiny()), {"standard", "quest"}, {3, 1}, "out");
  ASSERT_EQ(plan.size(), 4u);
  EXPECT_EQ(plan[0].label(), "standard seed 3");
  EXPECT_EQ(plan[3].label(), "quest seed 1");
  EXPECT_EQ(plan[3].config["model"]["attention"], "quest");
  EXPECT_EQ(plan[3].config["seed"], 1u);
  EXPECT_EQ(plan[3].config["run_dir"], "out/quest/seed-1");
  EXPECT_EQ(plan[3].epochs, tiny().epochs);
  // Its config names its task (a child process trains it as `quest run <run_dir>`).
  EXPECT_EQ(plan[3].config["task"], "vit");
  EXPECT_TRUE(plan[3].evaluate_test);
  EXPECT_EQ(plan[3].dir().root(), fs::path("out/quest/seed-1"));
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(message([] { plan_runs(training::to_json(tiny()), {"quest", "standard", "quest"}, {0}, "o"); }),
            "--kinds: 'quest' is listed twice");
  EXPECT_EQ(message([] { plan_runs(training::to_json(tiny()), {"quest"}, {0, 1, 0}, "o"); }), "--seeds: 0 is listed twice");
  EXPECT_EQ(message([] { plan_runs(training::to_json(tiny()), {"flash"}, {0}, "o"); }), "--kinds: unknown kind 'flash'");
}

// An executor that trains nothing: it reports what it was given and the outcomes it was told to.
class ScriptedExecutor : public Executor {
 public:
  std::vector<RunOutcome> execute(const std::vector<RunSpec>& runs, bool, const ExecutorEvents&) override {
    given = runs;
    std::vector<RunOutcome> out;
    for (const auto& r : runs) out.push_back(outcomes.count(r.label()) ? outcomes[r.label()] : RunOutcome{});
    return out;
  }
  std::string describe() const override { return "scripted"; }
  std::vector<RunSpec> given;
  std::map<std::string, RunOutcome> outcomes;
};

TEST(Compare, FailuresAndRunsWithoutACheckpointAreReportedNotEvaluated) {
  TempDir t;
  const auto plan = plan_runs(training::to_json(tiny()), {"standard", "quest"}, {0}, t.path.string());
  ScriptedExecutor executor;
  executor.outcomes["standard seed 0"] = {RunStatus::failed, "exit code 1, log x/train.log\n    no data"};
  executor.outcomes["quest seed 0"] = {RunStatus::diverged, "non-finite loss at step 2 (epoch 0)"};
  std::vector<std::string> notes;
  const CompareResult r = compare(plan, false, executor, {}, [&](const std::string& n) { notes.push_back(n); });
  EXPECT_EQ(executor.given.size(), 2u);
  EXPECT_TRUE(r.runs.empty());
  ASSERT_EQ(r.failed.size(), 2u);
  EXPECT_EQ(r.failed[0], "standard seed 0: exit code 1, log x/train.log\n    no data");
  EXPECT_NE(r.failed[1].find("quest seed 0: diverged before its first checkpoint"), std::string::npos);
  EXPECT_NE(r.failed[1].find("non-finite loss at step 2"), std::string::npos);
  ASSERT_FALSE(notes.empty());
  EXPECT_EQ(notes[0], "2 runs to train, scripted");
  EXPECT_EQ(summarize(r).rows(), 0u);
}

TEST(Compare, SummaryIsMeanAndSampleStdOverSeeds) {
  CompareResult r;
  r.task = "vit";
  r.kinds = {"quest", "standard"};
  for (auto [kind, accuracy] : {std::pair{"quest", 0.80}, {"quest", 0.90}, {"standard", 0.70}}) {
    RunResult run;
    run.spec.kind = kind;
    run.metrics["test_accuracy"] = accuracy;
    run.train_seconds = 10;
    r.runs.push_back(run);
  }
  const auto table = summarize(r);
  const auto json = table.json();
  ASSERT_EQ(json.size(), 2u);
  EXPECT_NEAR(json[0]["test_accuracy"]["mean"].get<double>(), 0.85, 1e-12);
  EXPECT_NEAR(json[0]["test_accuracy"]["std"].get<double>(), std::sqrt(0.005), 1e-12);
  EXPECT_EQ(json[0]["seeds"], 2);
  EXPECT_EQ(json[1]["test_accuracy"]["std"].get<double>(), 0.0);
  EXPECT_NE(table.console().find("85.00 ± 7.07"), std::string::npos) << table.console();
  EXPECT_NE(table.csv().find("kind,test_accuracy_mean,test_accuracy_std,seeds"), std::string::npos);
}

// The real thing, in this process: train, evaluate from the checkpoint, then a resume that finds
// the run finished and only evaluates it, to the same numbers.
TEST(Compare, InProcessTrainsThenResumeOnlyEvaluates) {
  TempDir t;
  const auto plan = plan_runs(training::to_json(tiny()), {"quest"}, {0}, t.path.string());
  auto executor = in_process_executor();
  const CompareResult first = compare(plan, false, *executor);
  ASSERT_EQ(first.runs.size(), 1u);
  EXPECT_EQ(first.runs[0].outcome.status, RunStatus::ok);
  EXPECT_EQ(plan[0].dir().checkpoint_epoch(), 1);
  EXPECT_EQ(plan[0].dir().read_outcome()->status, RunStatus::ok);
  EXPECT_TRUE(fs::exists(plan[0].dir().result()));
  // The data normalisation is saved with the run: evaluation needs no pass over the training images.
  const auto saved = training::load_vit_run(plan[0].dir().checkpoint().string())->normalization();
  ASSERT_TRUE(saved.has_value());
  const auto recomputed = training::mnist_normalization(data::kFashionMnistDir);
  EXPECT_DOUBLE_EQ(saved->mean, recomputed.mean);
  EXPECT_DOUBLE_EQ(saved->std, recomputed.std);
  ScriptedExecutor scripted;
  std::vector<std::string> notes;
  const CompareResult again = compare(plan, true, scripted, {}, [&](const std::string& n) { notes.push_back(n); });
  EXPECT_TRUE(scripted.given.empty());
  EXPECT_EQ(notes[0], "quest seed 0: finished, evaluating only");
  ASSERT_EQ(again.runs.size(), 1u);
  EXPECT_EQ(again.runs[0].metrics["test_accuracy"], first.runs[0].metrics["test_accuracy"]);
  EXPECT_EQ(again.runs[0].metrics["test_loss"], first.runs[0].metrics["test_loss"]);
}

// Child processes: a run whose child fails is named with its exit code, log and the reason.
TEST(Compare, ChildProcessFailureCarriesTheReason) {
  TempDir t;
  training::VitConfig config = tiny();
  config.data.dir = (t.path / "no_such_data").string();
  const auto plan = plan_runs(training::to_json(config), {"standard"}, {0}, t.path.string());
  auto executor = child_process_executor(2, 1, QUEST_EXECUTABLE);
  const CompareResult r = compare(plan, false, *executor);
  ASSERT_EQ(r.failed.size(), 1u);
  EXPECT_NE(r.failed[0].find("standard seed 0: exit code 1, log "), std::string::npos) << r.failed[0];
  EXPECT_NE(r.failed[0].find("no_such_data/train-images-idx3-ubyte"), std::string::npos) << r.failed[0];
  EXPECT_EQ(plan[0].dir().read_outcome()->status, RunStatus::failed);
}

// A run killed while it writes a checkpoint — after the temp file is whole but before the rename,
// or with the temp file half written — resumes from the previous checkpoint and ends exactly where
// an uninterrupted run ends (process-level: `quest train` is killed by the test hook).
TEST(Faults, KilledWhileWritingACheckpointResumesBitExactly) {
  TempDir t;
  const std::string train = std::string(QUEST_EXECUTABLE) +
                            " train --train-subset 300 --dim 16 --depth 1 --heads 2 --patch-size 7 "
                            "--log-every 2 --epochs 3 --dropout 0.1 --run-dir ";
  auto run = [&](const std::string& env, const fs::path& dir, const std::string& extra = "") {
    const std::string cmd = env + " " + train + dir.string() + extra + " > " + (dir.string() + ".log") + " 2>&1";
    const int status = std::system(cmd.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  auto lines = [](const fs::path& dir) {  // metrics without the wall-clock fields
    auto all = RunDir(dir).read_metrics();
    for (auto& j : all)
      for (const char* k : {"epoch_seconds", "images_per_second", "train_seconds"}) j.erase(k);
    return all;
  };
  ASSERT_EQ(run("", t.path / "whole"), 0);
  const auto whole = nlohmann::json::parse(std::ifstream(RunDir(t.path / "whole").result()));
  for (const char* mode : {"after-write", "mid-write"}) {
    const fs::path dir = t.path / mode;
    ASSERT_EQ(run(std::string("QUEST_TEST_CRASH_CHECKPOINT=") + mode + ":2", dir), 137) << mode;
    const RunDir killed(dir);
    EXPECT_EQ(killed.checkpoint_epoch(), 1) << mode;  // the previous checkpoint, whole
    EXPECT_TRUE(fs::exists(killed.checkpoint().string() + ".tmp")) << mode;
    EXPECT_FALSE(fs::exists(killed.result())) << mode;
    ASSERT_EQ(run("", dir, " --resume"), 0) << mode;
    const auto resumed = nlohmann::json::parse(std::ifstream(killed.result()));
    EXPECT_EQ(resumed["test_accuracy"], whole["test_accuracy"]) << mode;
    EXPECT_EQ(resumed["test_loss"], whole["test_loss"]) << mode;
    EXPECT_EQ(lines(dir), lines(t.path / "whole")) << mode;
    EXPECT_EQ(killed.checkpoint_epoch(), 3) << mode;
  }
  // A malformed hook is an error that names it, not a silent no-op.
  const fs::path bad = t.path / "bad-hook";
  EXPECT_EQ(run("QUEST_TEST_CRASH_CHECKPOINT=after:2", bad), 1);
  std::ifstream log(bad.string() + ".log");
  const std::string text((std::istreambuf_iterator<char>(log)), {});
  EXPECT_NE(text.find("QUEST_TEST_CRASH_CHECKPOINT='after:2' is not after-write:<epoch> or mid-write:<epoch>"),
            std::string::npos)
      << text;
}

// kill -9 at seeded random moments — loading data, training, writing metrics or a checkpoint —
// then resume, until the run completes: every kill leaves a whole checkpoint (or none yet), and the
// run ends exactly where an uninterrupted one does.
TEST(Faults, KilledAtRandomMomentsResumesBitExactly) {
  TempDir t;
  auto spawn = [&](const fs::path& dir) {
    std::vector<std::string> args = {QUEST_EXECUTABLE, "train", "--train-subset", "1500", "--dim", "16",
                                     "--depth", "1", "--heads", "2", "--patch-size", "7",
                                     "--log-every", "2", "--epochs", "4", "--dropout", "0.1",
                                     "--run-dir", dir.string(), "--resume"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t io;
    posix_spawn_file_actions_init(&io);
    const std::string log = dir.string() + ".log";
    posix_spawn_file_actions_addopen(&io, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&io, 1, 2);
    pid_t pid = -1;
    const int err = posix_spawn(&pid, argv[0], &io, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&io);
    EXPECT_EQ(err, 0);
    return pid;
  };
  auto wait_exit = [](pid_t pid) {  // exit code, or -signal
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  };
  auto lines = [](const fs::path& dir) {  // metrics without the wall-clock fields
    auto all = RunDir(dir).read_metrics();
    for (auto& j : all)
      for (const char* k : {"epoch_seconds", "images_per_second", "train_seconds"}) j.erase(k);
    return all;
  };
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(wait_exit(spawn(t.path / "whole")), 0);
  const double whole_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

  const fs::path dir = t.path / "killed";
  std::mt19937 rng(2026);
  std::uniform_real_distribution<double> moment(0.0, 0.95 * whole_ms);
  int kills = 0, code = -1;
  double sooner = 1.0;
  std::vector<int64_t> epochs_seen;
  for (int attempt = 0; attempt < 10 && (code != 0 || kills == 0); ++attempt) {
    if (code == 0) {  // it finished before any kill (the reference run was slowed by other load):
      fs::remove_all(dir);  // start over, killing sooner
      epochs_seen.clear();
      sooner *= 0.5;
    }
    const pid_t pid = spawn(dir);
    // A resumed run has fewer epochs left (loading and the final evaluation, ~1/3, stay).
    const double left = std::max(0.35, 1.0 - (epochs_seen.empty() ? 0.0 : epochs_seen.back() / 4.0));
    std::this_thread::sleep_for(
        std::chrono::microseconds(static_cast<int64_t>(1000 * sooner * left * moment(rng))));
    ::kill(pid, SIGKILL);  // no effect if it already finished
    code = wait_exit(pid);
    if (code == -SIGKILL) ++kills;
    else EXPECT_EQ(code, 0) << "attempt " << attempt;
    const RunDir killed(dir);  // whatever checkpoint is there loads whole
    if (killed.has_checkpoint()) EXPECT_NO_THROW(epochs_seen.push_back(*killed.checkpoint_epoch()));
  }
  if (code != 0) ASSERT_EQ(wait_exit(spawn(dir)), 0);  // the last resume runs to the end
  EXPECT_GE(kills, 1);
  const auto whole = nlohmann::json::parse(std::ifstream(RunDir(t.path / "whole").result()));
  const auto resumed = nlohmann::json::parse(std::ifstream(RunDir(dir).result()));
  EXPECT_EQ(resumed["test_accuracy"], whole["test_accuracy"]);
  EXPECT_EQ(resumed["test_loss"], whole["test_loss"]);
  EXPECT_EQ(lines(dir), lines(t.path / "whole"));
  EXPECT_TRUE(std::is_sorted(epochs_seen.begin(), epochs_seen.end()));  // never went back
  std::printf("%d kills, checkpoints seen at epochs:", kills);
  for (int64_t e : epochs_seen) std::printf(" %lld", static_cast<long long>(e));
  std::printf("\n");
}

}  // namespace
}  // namespace quest::runs
