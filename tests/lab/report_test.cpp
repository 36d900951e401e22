// The reporting module: one table, three renderings; training plots of run directories.
#include <gtest/gtest.h>

#include <filesystem>

#include "quest/lab/report/plots.h"
#include "quest/lab/report/table.h"
#include "quest/lab/runs/run_dir.h"

namespace quest::report {
namespace {

namespace fs = std::filesystem;

TEST(Table, ConsoleCsvAndJsonFromTheSameRows) {
  Table t({{"kind"}, {"accuracy", 2, 100}, {"runs"}, {"note"}});
  t.add_row({"quest", mean_std({0.5, 0.7}), 2, "a, \"b\""});
  t.add_row({"standard", 0.25, 1, nullptr});
  const std::string console = t.console();
  EXPECT_NE(console.find("quest     60.00 ± 14.14     2  a, \"b\""), std::string::npos) << console;
  EXPECT_NE(console.find("standard          25.00     1       -"), std::string::npos) << console;
  EXPECT_EQ(t.csv(),
            "kind,accuracy_mean,accuracy_std,runs,note\n"
            "quest,0.6,0.141421,2,\"a, \"\"b\"\"\"\n"
            "standard,0.25,,1,\n");
  EXPECT_EQ(t.json()[0]["runs"], 2);
  EXPECT_DOUBLE_EQ(t.json()[0]["accuracy"]["mean"].get<double>(), 0.6);
  EXPECT_THROW(t.add_row({"too few"}), std::invalid_argument);
}

TEST(Table, MeanAndSampleStd) {
  EXPECT_DOUBLE_EQ(mean_of({1, 2, 3}), 2);
  EXPECT_DOUBLE_EQ(std_of({1, 2, 3}), 1);
  EXPECT_EQ(std_of({5}), 0);
  EXPECT_TRUE(std::isnan(mean_of({})));
}

TEST(Plots, TrainingCurvesOfEveryRunBelowARoot) {
  const fs::path root = fs::temp_directory_path() / ("quest_report_test_" + std::to_string(::getpid()));
  fs::remove_all(root);
  for (const char* run : {"quest/seed-0", "standard/seed-0"}) {
    const runs::RunDir dir(root / run);
    dir.create();
    for (int e = 0; e < 2; ++e) {
      nlohmann::json step = {{"type", "step"}, {"epoch", e}, {"step", e * 4},
                             {"attention", {{{"q_norm_max", {1.0, 2.0}}, {"k_norm_max", {1.0, 3.0}},
                                             {"logit_abs_max", {2.0, 4.0}}, {"entropy", {1.0, 1.5}}}}}};
      if (std::string(run) == "quest/seed-0") step["loss"] = 2.0 - e, step["log_z"] = 2.3 + e;  // older runs lack them
      dir.append_metrics(step);
      dir.append_metrics({{"type", "epoch"}, {"epoch", e}, {"train_loss", 1.0 / (e + 1)}, {"val_loss", 1.2},
                          {"train_accuracy", 0.5}, {"val_accuracy", 0.6}});
    }
  }
  const TrainingPlots plots = write_training_plots(root);
  EXPECT_EQ(plots.runs, 2u);
  EXPECT_EQ(plots.layers, 1u);
  for (const char* png : {"loss.png", "accuracy.png", "k_norm_max.png", "entropy.png", "steps.png"})
    EXPECT_GT(fs::file_size(root / "plots" / png), 1000u) << png;
  // Only runs without step losses (metrics written before quest logged them): no steps.png, no error.
  fs::remove_all(root / "quest");
  fs::remove_all(root / "plots");
  EXPECT_EQ(write_training_plots(root).runs, 1u);
  EXPECT_FALSE(fs::exists(root / "plots" / "steps.png"));
  EXPECT_THROW(write_training_plots(root / "plots" / "data"), std::invalid_argument);  // no run there
  EXPECT_THROW(write_training_plots(root / "missing"), std::invalid_argument);
  fs::remove_all(root);
}

}  // namespace
}  // namespace quest::report
