// An experiment's directory: the one place that names the files of a comparison or a sweep, as
// RunDir (run_dir.h) names a run's.
//   <kind>/seed-<s>/    a comparison's run directories
//   <size>/lr-<lr>/     a sweep's comparisons at one model size and learning rate
//   summary.csv         a comparison's per-kind table; compare.json: {task, summary, runs, workers}
//   sweep.json          a sweep's file, sensitivity table and runs; sensitivity.csv, runs.csv
//   results.json        the spurious-pattern grid's runs and summary; success.csv, runs.csv
//   plots/              figures (report/plots.h)
// Files are written atomically (temp file + rename): a killed experiment leaves the old or the new.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "quest/lab/report/table.h"

namespace quest::runs {

class ExperimentDir {
 public:
  explicit ExperimentDir(std::filesystem::path root) : root_(std::move(root)) {}

  const std::filesystem::path& root() const { return root_; }
  std::filesystem::path run_dir(const std::string& kind, uint64_t seed) const {
    return root_ / kind / ("seed-" + std::to_string(seed));
  }
  // A sweep's point: the comparison of one model size at one learning rate.
  ExperimentDir sweep_point(const std::string& size, double lr) const;
  std::filesystem::path summary_csv() const { return root_ / "summary.csv"; }
  std::filesystem::path compare_json() const { return root_ / "compare.json"; }
  std::filesystem::path sweep_json() const { return root_ / "sweep.json"; }
  std::filesystem::path sensitivity_csv() const { return root_ / "sensitivity.csv"; }
  std::filesystem::path runs_csv() const { return root_ / "runs.csv"; }
  std::filesystem::path results_json() const { return root_ / "results.json"; }
  std::filesystem::path success_csv() const { return root_ / "success.csv"; }
  std::filesystem::path plots() const { return root_ / "plots"; }

  void create() const;
  // A comparison's results: summary.csv and compare.json.
  void write_compare(const std::string& task, const report::Table& summary, const nlohmann::json& runs,
                     int workers) const;
  // `file` (one of the paths above) with `text`, or `j` indented.
  void write(const std::filesystem::path& file, const std::string& text) const;
  void write(const std::filesystem::path& file, const nlohmann::json& j) const;

 private:
  std::filesystem::path root_;
};

// "lr-0.003": a learning rate's directory name (shortest round-trip-ish form: 0.003, 1e-05).
std::string lr_dir_name(double lr);

}  // namespace quest::runs
