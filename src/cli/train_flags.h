// What the training commands share: the ViT's flags (quest train, quest compare), the comparison
// flags (quest compare, quest lm compare), a task config resolved from --config and flags, and the
// two bodies every task runs through — one run (quest run / train / lm train) and a comparison.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "config_flags.h"
#include "parallel.h"
#include "quest/lab/report/table.h"
#include "quest/lab/runs/compare.h"

namespace quest::cli {

struct TrainFlags {
  std::unique_ptr<ConfigFlags> config;  // --config and the flags over the ViT config's keys
  bool resume = false;
};

void add_training_flags(CLI::App* cmd, const std::shared_ptr<TrainFlags>& flags);

// The task's config: the --config file (or the defaults) with the given flags on top, checked by
// the task; run_dir `default_run_dir` where neither names one. Throws std::invalid_argument naming
// the flag or the config file.
nlohmann::json resolve_task_config(const ConfigFlags& flags, const tasks::TaskKind& task,
                                   const std::string& default_run_dir = "");

// One run of any task from its config, trained in this process (or as one rank of a data-parallel
// run): progress, then the task's scores or the divergence. Returns the exit code.
int train_one(const nlohmann::json& config, bool resume, bool no_test, const ParallelFlags& parallel);

// What `quest compare` and `quest lm compare` add: the kinds x seeds grid, where, how many at once.
struct CompareFlags {
  std::vector<std::string> kinds = {"standard", "quest", "qknorm"};
  std::vector<uint64_t> seeds = {0, 1, 2};
  std::string out_dir = "runs/compare";
  int workers = 1;
};
void add_compare_flags(CLI::App* cmd, const std::shared_ptr<CompareFlags>& compare);
// The executor for `workers` runs side by side (at most one per run), each child with its share of
// `threads`; one worker trains in this process.
std::unique_ptr<runs::Executor> compare_executor(int workers, int threads);
// A comparison of any task: the plan of `base`, trained and scored, the table, summary.csv and
// compare.json in out_dir, the plots; failed runs make it throw (`command`: runs failed: ...).
void compare_kinds(const std::string& command, const nlohmann::json& base, bool resume, const CompareFlags& compare);

// Where a run goes that neither --run-dir nor its config names.
inline constexpr const char* kDefaultTrainRunDir = "runs/train";

}  // namespace quest::cli
