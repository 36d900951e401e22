// The learning-rate sweep: the sweep file, the plan, what a run's metrics say, LR sensitivity
// arithmetic (Wortsman et al.'s definition, the cap at the initial loss, the bootstrap interval),
// and the choice of the training-curves directory.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <tuple>

#include "error_message.h"
#include "quest/lab/experiments/lr_sweep.h"

namespace quest::experiments {
namespace {

namespace fs = std::filesystem;

nlohmann::json vit_sweep() {
  return {{"task", "vit"},
          {"config", {{"model", {{"patch_size", 7}}}, {"epochs", 2}, {"log_every", 5}}},
          {"sizes", {{{"name", "s"}, {"model", {{"dim", 16}, {"depth", 1}}}},
                     {{"name", "m"}, {"model", {{"dim", 32}, {"depth", 2}}}}}},
          {"kinds", {"standard", "quest"}},
          {"lrs", {0.01, 0.001}},
          {"seeds", {0, 1}}};
}

TEST(LrSweep, FileIsCheckedAndNamesTheProblem) {
  const LrSweep s = sweep_from_json(vit_sweep());
  EXPECT_EQ(s.sizes.size(), 2u);
  EXPECT_EQ(to_json(sweep_from_json(to_json(s))), to_json(s));
  auto error = [](nlohmann::json j) { return testing::error_message([&] { sweep_from_json(j); }); };
  nlohmann::json j = vit_sweep();
  j["lrz"] = 1;
  EXPECT_NE(error(j).find("unknown key 'lrz'"), std::string::npos);
  j = vit_sweep();
  j["task"] = "rnn";
  EXPECT_NE(error(j).find("unknown task 'rnn' (lm, retrieval, vit)"), std::string::npos) << error(j);
  j = vit_sweep();
  j["lrs"] = nlohmann::json::array();
  EXPECT_NE(error(j).find("no learning rate"), std::string::npos);
  j["lrs"] = {0.1, -1.0};
  EXPECT_NE(error(j).find("is not positive"), std::string::npos);
  j["lrs"] = {0.1, 0.1};
  EXPECT_NE(error(j).find("listed twice"), std::string::npos);
  j["lrs"] = {0.1, 0.1000000001};  // distinct values, one run directory name
  EXPECT_NE(error(j).find("learning rate 0.1 is listed twice"), std::string::npos) << error(j);
  j = vit_sweep();
  j["sizes"][1]["name"] = "s";
  EXPECT_NE(error(j).find("size 's' is listed twice"), std::string::npos);
  j = vit_sweep();
  j["lrs"] = "fast";
  EXPECT_NE(error(j).find("malformed sweep file"), std::string::npos);
}

TEST(LrSweep, PlanLaysSizeAndRateOverTheConfig) {
  const auto points = plan_sweep(sweep_from_json(vit_sweep()), "/tmp/out");
  ASSERT_EQ(points.size(), 2u * 2u * 2u * 2u);  // sizes x rates x kinds x seeds
  const SweepPoint& p = points[7];  // size s, second rate, quest, seed 1
  EXPECT_EQ(p.size, "s");
  EXPECT_EQ(p.lr, 0.001);
  EXPECT_EQ(p.run.kind, "quest");
  EXPECT_EQ(p.run.seed, 1u);
  EXPECT_EQ(p.run.run_dir, "/tmp/out/s/lr-0.001/quest/seed-1");
  EXPECT_EQ(p.run.config["lr"], 0.001);
  EXPECT_EQ(p.run.config["model"]["dim"], 16);
  EXPECT_EQ(p.run.config["model"]["patch_size"], 7);
  EXPECT_EQ(p.run.config["model"]["attention"], "quest");
  EXPECT_EQ(points.back().run.config["model"]["depth"], 2);
  EXPECT_FALSE(p.run.evaluate_test);  // the sweep scores validation only
  EXPECT_EQ(p.run.config["task"], "vit");

  nlohmann::json lm = vit_sweep();
  lm["task"] = "lm";
  lm["config"] = {{"model", {{"context", 16}}}, {"steps_per_epoch", 4}};
  lm["sizes"] = {{{"name", "s"}, {"model", {{"dim", 16}, {"heads", 2}}}}};
  const auto lm_points = plan_sweep(sweep_from_json(lm), "/tmp/out");
  ASSERT_EQ(lm_points.size(), 8u);
  EXPECT_FALSE(lm_points[0].run.evaluate_test);
  EXPECT_EQ(lm_points[0].run.config["task"], "lm");
  EXPECT_EQ(lm_points[0].run.config["model"]["context"], 16);

  nlohmann::json silent = vit_sweep();
  silent["config"]["log_every"] = 0;
  const std::string e = testing::error_message([&] { plan_sweep(sweep_from_json(silent), "/tmp/out"); });
  EXPECT_NE(e.find("log_every must be > 0"), std::string::npos) << e;

  nlohmann::json typo = vit_sweep();
  typo["sizes"][0]["model"]["dimm"] = 8;  // the task's own config check names it
  const std::string m = testing::error_message([&] { plan_sweep(sweep_from_json(typo), "/tmp/out"); });
  EXPECT_NE(m.find("size 's': "), std::string::npos) << m;
  EXPECT_NE(m.find("model.dimm"), std::string::npos) << m;
}

// A scale sweep: per-size seeds and variants (a kind with config keys of its own, at some sizes).
TEST(LrSweep, SizesCarrySeedsAndVariantsRunBesideTheKinds) {
  nlohmann::json j = vit_sweep();
  j["sizes"][1]["seeds"] = {0, 1, 2};
  j["variants"] = {{{"name", "standard+qk-clip"}, {"kind", "standard"}, {"config", {{"qk_clip", 50.0}}}, {"sizes", {"m"}}},
                   {{"name", "quest+z-loss"}, {"kind", "quest"}, {"config", {{"z_loss", 1e-4}}}}};
  const LrSweep sweep = sweep_from_json(j);
  EXPECT_EQ(to_json(sweep_from_json(to_json(sweep))), to_json(sweep));
  EXPECT_EQ(sweep.labels(sweep.sizes[0]), (std::vector<std::string>{"standard", "quest", "quest+z-loss"}));
  EXPECT_EQ(sweep.labels(sweep.sizes[1]),
            (std::vector<std::string>{"standard", "quest", "standard+qk-clip", "quest+z-loss"}));
  const auto points = plan_sweep(sweep, "/tmp/out");
  // s: 2 rates x 3 labels x 2 seeds; m: 2 rates x 4 labels x 3 seeds
  ASSERT_EQ(points.size(), 2u * 3u * 2u + 2u * 4u * 3u);
  const SweepPoint* clip = nullptr;
  for (const auto& p : points)
    if (p.size == "m" && p.run.kind == "standard+qk-clip" && p.run.seed == 2 && p.lr == 0.001) clip = &p;
  ASSERT_TRUE(clip);
  EXPECT_EQ(clip->run.run_dir, "/tmp/out/m/lr-0.001/standard+qk-clip/seed-2");
  EXPECT_EQ(clip->run.config["run_dir"], clip->run.run_dir);
  EXPECT_EQ(clip->run.config["qk_clip"], 50.0);
  EXPECT_EQ(clip->run.config["z_loss"], 0.0);
  EXPECT_EQ(clip->run.config["model"]["attention"], "standard");
  EXPECT_EQ(clip->run.config["seed"], 2);
  for (const auto& p : points)
    if (p.run.kind == "standard") EXPECT_EQ(p.run.config["qk_clip"], 0.0);

  auto error = [](nlohmann::json x) { return testing::error_message([&] { plan_sweep(sweep_from_json(x), "/tmp/out"); }); };
  nlohmann::json bad = j;
  bad["variants"][0]["name"] = "quest";
  EXPECT_NE(error(bad).find("variant 'quest' is named like a kind"), std::string::npos) << error(bad);
  bad = j;
  bad["variants"][0]["kind"] = "flash";
  EXPECT_NE(error(bad).find("unknown kind 'flash'"), std::string::npos) << error(bad);
  bad = j;
  bad["variants"][0]["sizes"] = {"xl"};
  EXPECT_NE(error(bad).find("size 'xl' is not swept"), std::string::npos) << error(bad);
  bad = j;
  bad["variants"][1]["name"] = "standard+qk-clip";
  EXPECT_NE(error(bad).find("listed twice"), std::string::npos) << error(bad);
  bad = j;
  bad["variants"][0]["config"] = {{"qk_clip", -1.0}};  // the task's own check, with the variant named
  EXPECT_NE(error(bad).find("variant 'standard+qk-clip'"), std::string::npos) << error(bad);
  EXPECT_NE(error(bad).find("qk_clip"), std::string::npos) << error(bad);
  bad = j;
  bad["variants"][0]["config"] = {{"z_loss", "high"}};
  EXPECT_NE(error(bad).find("'z_loss' must be a number"), std::string::npos) << error(bad);
  bad = j;
  bad["variants"][0]["seeds"] = {1};
  EXPECT_NE(error(bad).find("unknown key 'seeds' in a variant"), std::string::npos) << error(bad);
  bad = j;
  bad["sizes"][0]["seeds"] = nlohmann::json::array();
  EXPECT_NE(error(bad).find("size 's': 'seeds' is empty"), std::string::npos) << error(bad);
  bad = j;
  bad["sizes"][0]["epochs"] = 3;
  EXPECT_NE(error(bad).find("unknown key 'epochs' in a size"), std::string::npos) << error(bad);
}

TEST(LrSweep, SensitivityIsTheMeanCappedLossAboveTheBest) {
  // Three rates, one seed: mean 1.166..., best 0.5.
  Sensitivity s = lr_sensitivity({1e-3, 1e-2, 1e-1}, {{1.0}, {0.5}, {2.0}});
  EXPECT_NEAR(s.value, (1.0 + 0.5 + 2.0) / 3 - 0.5, 1e-12);
  EXPECT_EQ(s.best_loss, 0.5);
  EXPECT_EQ(s.best_lr, 1e-2);
  EXPECT_NEAR(s.low, s.value, 1e-12);  // one seed: nothing to resample
  EXPECT_NEAR(s.high, s.value, 1e-12);
  // Two seeds: seed means, and an interval around them that is not a point.
  s = lr_sensitivity({1e-3, 1e-2}, {{1.0, 1.2}, {0.4, 0.6}});
  EXPECT_NEAR(s.value, (1.1 + 0.5) / 2 - 0.5, 1e-12);
  EXPECT_LE(s.low, s.value);
  EXPECT_GE(s.high, s.value);
  EXPECT_LT(s.low, s.high);
  EXPECT_GE(s.low, (1.0 + 0.4) / 2 - 0.6 - 1e-12);  // no draw can go below the extreme seeds'
  EXPECT_THROW(lr_sensitivity({1e-3}, {{}}), std::invalid_argument);
}

// Writes a run's metrics and outcome as the engine and train_run would.
SweepPoint fake_run(const fs::path& root, const std::string& kind, double lr, uint64_t seed, runs::RunStatus status,
                    double final_loss, double logit) {
  SweepPoint p;
  p.size = "s";
  p.lr = lr;
  p.run.kind = kind;
  p.run.seed = seed;
  p.run.run_dir = (root / kind / (std::to_string(lr) + "-" + std::to_string(seed))).string();
  const runs::RunDir dir = p.run.dir();
  dir.create();
  auto step = [&](int64_t s, double loss, double logit_max, double entropy) {
    dir.append_metrics({{"type", "step"}, {"step", s}, {"loss", loss}, {"log_z", -3.0 * (s + 1)},
                        {"attention",
                         {{{"q_norm_max", {1.0, 2.0}}, {"k_norm_max", {3.0, 1.0}},
                           {"logit_abs_max", {logit_max, 1.0}}, {"entropy", {entropy, 2.0}}}}}});
  };
  step(0, 2.5, 1.0, 1.5);
  step(5, 1.5, logit, 0.25);
  if (status == runs::RunStatus::diverged) {
    dir.append_metrics({{"type", "warning"}, {"warning", "logit_growth"}, {"step", 5}});
    dir.append_metrics({{"type", "step"}, {"step", 10}, {"loss", NAN}, {"attention", {{{"logit_abs_max", {NAN}}}}}});
    dir.append_metrics({{"type", "diverged"}, {"step", 10}});
  } else {
    dir.append_metrics({{"type", "epoch"}, {"epoch", 0}, {"val_loss", final_loss + 1}});
    dir.append_metrics({{"type", "epoch"}, {"epoch", 1}, {"val_loss", final_loss}});
  }
  dir.write_outcome({status, status == runs::RunStatus::ok ? "" : "non-finite loss"});
  return p;
}

TEST(LrSweep, RunMetricsAreReadAndDivergedRunsCountAsTheInitialLoss) {
  const fs::path root = fs::temp_directory_path() / ("quest_lr_sweep_test_" + std::to_string(::getpid()));
  fs::remove_all(root);
  std::vector<SweepRunResult> results;
  for (const auto& [kind, lr, status, loss, logit] :
       std::vector<std::tuple<std::string, double, runs::RunStatus, double, double>>{
           {"standard", 0.001, runs::RunStatus::ok, 0.8, 10.0},
           {"standard", 0.1, runs::RunStatus::diverged, 0, 900.0},
           {"quest", 0.001, runs::RunStatus::ok, 0.9, 5.0},
           {"quest", 0.1, runs::RunStatus::ok, 3.0, 40.0}}) {  // worse than at init: capped
    const SweepPoint p = fake_run(root, kind, lr, 0, status, loss, logit);
    results.push_back(read_sweep_run(p, *p.run.dir().read_outcome()));
  }
  const SweepRunResult& d = results[1];
  EXPECT_EQ(d.init_loss, 2.5);
  EXPECT_TRUE(std::isnan(d.final_loss));
  EXPECT_EQ(d.diverged_step, 10);
  EXPECT_EQ(d.warned_step, 5);
  EXPECT_EQ(d.logit_abs_max, 900.0);  // the NaN (null) of the diverging step is skipped
  EXPECT_EQ(d.q_norm_max, 2.0);
  EXPECT_EQ(d.k_norm_max, 3.0);
  EXPECT_EQ(d.entropy_min, 0.25);
  EXPECT_EQ(d.log_z_abs_max, 18.0);  // |log Z| of step 5
  EXPECT_EQ(results[0].final_loss, 0.8);  // the last epoch's validation loss
  EXPECT_FALSE(results[0].diverged_step);
  EXPECT_FALSE(results[0].warned_step);

  LrSweep sweep;
  sweep.sizes = {{"s", nlohmann::json::object()}};
  sweep.kinds = {"standard", "quest"};
  sweep.lrs = {0.1, 0.001};
  const auto rows = sensitivities(sweep, results);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].kind, "standard");
  EXPECT_EQ(rows[0].diverged, 1);
  EXPECT_NEAR(rows[0].value, (0.8 + 2.5) / 2 - 0.8, 1e-12);  // diverged -> L0 = 2.5
  EXPECT_NEAR(rows[1].value, (0.9 + 2.5) / 2 - 0.9, 1e-12);  // 3.0 capped at 2.5
  EXPECT_EQ(rows[1].best_lr, 0.001);
  EXPECT_EQ(sensitivity_table(rows).rows(), 2u);
  EXPECT_EQ(runs_table(results).rows(), 4u);

  // Standard diverged at 0.1 where quest did not: that rate's curves show the contrast.
  EXPECT_EQ(contrast_lr(results, "s"), 0.1);
  results[1] = results[0];
  results[1].lr = 0.1;
  results[1].logit_abs_max = 400;  // no divergence: the largest standard / quest logit ratio (10 vs 2)
  EXPECT_EQ(contrast_lr(results, "s"), 0.1);
  EXPECT_FALSE(contrast_lr(results, "m"));
  fs::remove_all(root);
}

}  // namespace
}  // namespace quest::experiments
