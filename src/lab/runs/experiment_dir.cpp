#include "quest/lab/runs/experiment_dir.h"

#include <sstream>

#include "quest/lab/runs/run_dir.h"

namespace quest::runs {

std::string lr_dir_name(double lr) {
  std::ostringstream o;
  o << "lr-" << lr;
  return o.str();
}

ExperimentDir ExperimentDir::sweep_point(const std::string& size, double lr) const {
  return ExperimentDir(root_ / size / lr_dir_name(lr));
}

void ExperimentDir::create() const { std::filesystem::create_directories(root_); }

void ExperimentDir::write(const std::filesystem::path& file, const std::string& text) const {
  std::filesystem::create_directories(file.parent_path());
  write_file_atomic(file, text);
}

void ExperimentDir::write(const std::filesystem::path& file, const nlohmann::json& j) const {
  write(file, j.dump(2) + "\n");
}

void ExperimentDir::write_compare(const std::string& task, const report::Table& summary, const nlohmann::json& runs,
                                  int workers) const {
  write(summary_csv(), summary.csv());
  write(compare_json(), nlohmann::json({{"task", task}, {"summary", summary.json()}, {"runs", runs}, {"workers", workers}}));
}

}  // namespace quest::runs
