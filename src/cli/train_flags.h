// The training flags `quest train` and `quest compare` share (and the comparison flags of both
// compare commands), and the config they resolve to: a JSON config file (a run's config.json is
// one) with the flags given on the command line on top (config_flags.h).
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "config_flags.h"
#include "quest/lab/report/table.h"
#include "quest/lab/runs/compare.h"

namespace quest::cli {

struct TrainFlags {
  std::unique_ptr<ConfigFlags> config;  // --config and the flags over TrainConfig's keys
  runs::DataSource data;
  bool resume = false;
};

void add_training_flags(CLI::App* cmd, const std::shared_ptr<TrainFlags>& flags);

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
// The end of both compare commands: prints the table and `legend`, writes summary.csv and
// compare.json to out_dir, throws naming the failed runs (`command`: runs failed: ...), then plots.
void finish_compare(const std::string& command, const std::string& out_dir, const report::Table& table,
                    const nlohmann::json& runs, int workers, const std::vector<std::string>& failed,
                    const std::string& legend);
// Throws std::invalid_argument naming the flag or the config file.
training::TrainConfig resolve_config(const TrainFlags& flags);
// Where a run goes that neither --run-dir nor its config names.
inline constexpr const char* kDefaultTrainRunDir = "runs/train";

}  // namespace quest::cli
