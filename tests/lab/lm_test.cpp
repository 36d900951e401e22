// Byte-level language modelling on the engine: config files, evaluation arithmetic, a tiny run
// that learns, and exact resume.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "error_message.h"
#include "quest/lab/runs/compare.h"
#include "quest/lab/tasks/lm.h"

namespace quest::training {
namespace {

namespace fs = std::filesystem;

LmConfig tiny(const std::string& corpus, const std::string& run_dir) {
  LmConfig c;
  c.model.context(16).dim(32).depth(2).heads(4).attention(Kind::quest);
  c.epochs = 2;
  c.steps_per_epoch = 15;
  c.batch_size = 8;
  c.lr = 3e-3;
  c.warmup_epochs = 0;
  c.corpus = corpus;
  c.eval_bytes = 2000;
  c.log_every = 5;
  c.run_dir = run_dir;
  return c;
}

struct Corpus {
  explicit Corpus(int documents = 40) : dir(fs::temp_directory_path() / ("quest_lm_test_" + std::to_string(::getpid()))) {
    fs::create_directories(dir);
    for (int d = 0; d < documents; ++d) {  // a regular language: learnable in a few steps
      std::ofstream f(dir / ("doc" + std::to_string(d) + ".rst"));
      for (int line = 0; line < 20; ++line) f << "the cat sat on the mat " << (line % 3) << ".\n";
    }
  }
  ~Corpus() { fs::remove_all(dir); }
  fs::path dir;
};

TEST(Lm, ConfigRoundTripsAndRejectsUnknownKeys) {
  LmConfig c = tiny("/x", "/y");
  const LmConfig back = lm_config_from_json(to_json(c));
  EXPECT_EQ(to_json(back), to_json(c));
  EXPECT_EQ(lm_config_from_json({{"model", {{"positions", "rotary"}}}}).model.positions(), models::Positions::rotary);
  const std::string m = testing::error_message([] { lm_config_from_json({{"modle", {}}}); });
  EXPECT_NE(m.find("unknown config key 'modle'"), std::string::npos) << m;
  const std::string t = testing::error_message([] { lm_config_from_json({{"epochs", "two"}}); });
  EXPECT_NE(t.find("'epochs' must be"), std::string::npos) << t;
  EXPECT_EQ(lm_config_from_json({{"model", {{"kv_heads", 2}}}}).model.kv_heads(), 2);  // of 6 heads
  const std::string g = testing::error_message([] { lm_config_from_json({{"model", {{"kv_heads", 4}}}}); });
  EXPECT_NE(g.find("model.kv_heads must be 0"), std::string::npos) << g;
}

TEST(Lm, LearnsAndResumesExactly) {
  Corpus corpus;
  const fs::path run = corpus.dir / "run";
  LmConfig config = tiny(corpus.dir.string(), run.string());
  const data::ByteSplits data = load_lm_data(config);
  LmTrainer trainer(config);
  const LmEval before = trainer.evaluate(data.valid);
  EXPECT_NEAR(before.bits_per_byte, 8.0, 1.0);  // near uniform over 256 bytes at initialisation
  EXPECT_EQ(before.bytes, data.valid.numel() - 1);  // every byte but the first is predicted
  trainer.fit(data, false);
  const LmEval after = trainer.evaluate(data.valid);
  EXPECT_LT(after.bits_per_byte, 5.5) << "before " << before.bits_per_byte;
  EXPECT_TRUE(fs::exists(runs::RunDir(run).checkpoint()));

  // The same run stopped in its second epoch, then resumed from the epoch-1 checkpoint: the
  // same weights as straight through.
  const LmConfig again = tiny(corpus.dir.string(), (corpus.dir / "run2").string());
  EXPECT_THROW(LmTrainer(again).fit(data, false,
                                    [](const nlohmann::json& line) {
                                      if (line["step"] == 20) throw std::runtime_error("stop");
                                    }),
               std::runtime_error);
  LmTrainer resumed(again);
  resumed.fit(data, true);
  EXPECT_EQ(resumed.step(), trainer.step());
  EXPECT_EQ(resumed.evaluate(data.valid).nats_per_byte, after.nats_per_byte);
}

// The logit monitor in the engine, on a real run: with a threshold the run passes, one warning line
// naming layer and head, the run goes on; after a resume no second warning; policy stop ends the
// run as diverged.
TEST(Lm, LogitMonitorWarnsOnceAndCanStopTheRun) {
  Corpus corpus;
  LmConfig config = tiny(corpus.dir.string(), (corpus.dir / "warn").string());
  config.logit_monitor.threshold = 0.01;  // every head passes it at the first logged step
  const data::ByteSplits data = load_lm_data(config);
  EXPECT_THROW(LmTrainer(config).fit(data, false,
                                     [](const nlohmann::json& line) {
                                       if (line["step"] == 20) throw std::runtime_error("stop");
                                     }),
               std::runtime_error);
  LmTrainer resumed(config);
  resumed.fit(data, true);
  EXPECT_EQ(resumed.step(), 30);
  const auto warnings = runs::RunDir(config.run_dir).read_metrics("warning");
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_EQ(warnings[0]["warning"], "logit_growth");
  EXPECT_EQ(warnings[0]["step"], 0);
  EXPECT_EQ(warnings[0]["epoch"], 0);
  EXPECT_GE(warnings[0]["layer"].get<int64_t>(), 0);
  EXPECT_NE(warnings[0]["message"].get<std::string>().find("attention logits growing: layer "), std::string::npos);

  config.run_dir = (corpus.dir / "stop").string();
  config.logit_monitor.policy = MonitorPolicy::stop;
  const std::string m = testing::error_message([&] { LmTrainer(config).fit(data, false); });
  EXPECT_NE(m.find("stopped by the logit monitor: layer "), std::string::npos) << m;
  EXPECT_NE(m.find("at step 0 (epoch 0)"), std::string::npos) << m;
}

// The monitor on a run made unstable by its learning rate alone (Wortsman et al.'s attention-logit
// growth), on the real corpus (linux-doc's text, as `quest lm train`): at lr 0.1 standard
// attention's logits grow past the threshold within 60 steps and the monitor names a layer and
// head, or stops the run; QUEST at the same rate stays below half of it (|logit| <= |q|).
// Measured on this config: standard passes 200 by step 20 and reaches ~600, quest stays < 60.
TEST(Lm, LogitMonitorFiresOnAHighLearningRateRunAndNotOnQuest) {
  const fs::path root = fs::temp_directory_path() / ("quest_lm_monitor_test_" + std::to_string(::getpid()));
  fs::remove_all(root);
  LmConfig config;  // the default corpus
  config.model.context(32).dim(32).depth(1).heads(2).positions(models::Positions::rotary);
  config.epochs = 1;
  config.steps_per_epoch = 60;
  config.batch_size = 8;
  config.corpus_bytes = 200000;
  config.eval_bytes = 4096;
  config.warmup_epochs = 0.2;
  config.log_every = 5;
  config.lr = 0.1;
  const data::ByteSplits data = load_lm_data(config);
  auto max_logit = [](const runs::RunDir& dir) {
    double m = 0;
    for (const auto& line : dir.read_metrics("step"))
      for (const auto& layer : line["attention"])
        for (const auto& x : layer["logit_abs_max"]) m = std::max(m, x.get<double>());
    return m;
  };
  config.model.attention(Kind::standard);
  config.run_dir = (root / "standard").string();
  LmTrainer standard(config);
  standard.fit(data, false);
  const runs::RunDir standard_dir(config.run_dir);
  const auto warnings = standard_dir.read_metrics("warning");
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_LT(warnings[0]["step"].get<int64_t>(), 60);
  EXPECT_GE(warnings[0]["logit_abs_max"].get<double>(), config.logit_monitor.threshold / 2);
  EXPECT_GT(max_logit(standard_dir), config.logit_monitor.threshold);

  config.logit_monitor.policy = MonitorPolicy::stop;
  config.run_dir = (root / "standard-stop").string();
  const std::string m = testing::error_message([&] { LmTrainer(config).fit(data, false); });
  EXPECT_NE(m.find("stopped by the logit monitor: layer 0 head "), std::string::npos) << m;
  EXPECT_NE(m.find("at step " + std::to_string(warnings[0]["step"].get<int64_t>()) + " "), std::string::npos) << m;

  config.model.attention(Kind::quest);
  config.run_dir = (root / "quest").string();
  LmTrainer quest(config);
  quest.fit(data, false);  // with policy stop: a warning would throw
  const runs::RunDir quest_dir(config.run_dir);
  EXPECT_TRUE(quest_dir.read_metrics("warning").empty());
  EXPECT_LT(max_logit(quest_dir), config.logit_monitor.threshold / 2);
  fs::remove_all(root);
}

// quest lm compare's library half: a plan trained in this process, scored on the test split, and
// a resume that trains nothing and takes each run's own result.json — which must equal a fresh
// evaluation of the checkpoint (checked by invalidating one result file).
TEST(LmCompare, TrainsScoresAndResumeOnlyEvaluates) {
  Corpus corpus(200);  // enough documents for a test split (5 % by name hash)
  LmConfig base = tiny(corpus.dir.string(), "");
  base.epochs = 1;
  const std::string out = (corpus.dir / "cmp").string();
  const auto plan = runs::plan_runs(to_json(base), {"standard", "quest"}, {0, 1}, out);
  ASSERT_EQ(plan.size(), 4u);
  EXPECT_EQ(plan[3].label(), "quest seed 1");
  EXPECT_EQ(plan[3].config["model"]["attention"], "quest");
  EXPECT_EQ(plan[3].config["seed"], 1u);
  EXPECT_EQ(plan[3].config["task"], "lm");
  auto executor = runs::in_process_executor();
  const runs::CompareResult first = runs::compare(plan, false, *executor);
  ASSERT_TRUE(first.failed.empty()) << first.failed[0];
  ASSERT_EQ(first.runs.size(), 4u);
  for (const auto& r : first.runs) {
    EXPECT_EQ(r.outcome.status, runs::RunStatus::ok);
    EXPECT_TRUE(std::isfinite(r.metrics["test_bits_per_byte"].get<double>()));
    EXPECT_LT(r.metrics["test_bits_per_byte"].get<double>(), 8.0);  // better than uniform over 256 bytes
    EXPECT_GT(r.metrics["tokens_per_second"].get<double>(), 0);
    EXPECT_GT(r.diagnostics.q_norm_max, 0);
  }
  // quest's keys are unit vectors in the attention; its logits are bounded by ‖q‖.
  EXPECT_LE(first.runs[2].diagnostics.logit_abs_max, first.runs[2].diagnostics.q_norm_max * (1 + 1e-5));
  const auto table = runs::summarize(first).json();
  ASSERT_EQ(table.size(), 2u);
  EXPECT_NEAR(table[1]["test_bits_per_byte"]["mean"].get<double>(),
              (first.runs[2].metrics["test_bits_per_byte"].get<double>() +
               first.runs[3].metrics["test_bits_per_byte"].get<double>()) / 2,
              1e-12);
  EXPECT_EQ(table[1]["seeds"], 2);

  // Run 0's result no longer matches its checkpoint's step: it is evaluated afresh.
  nlohmann::json stale = nlohmann::json::parse(std::ifstream(plan[0].dir().result()));
  stale["step"] = -1;
  stale["test_bits_per_byte"] = 99.0;
  std::ofstream(plan[0].dir().result()) << stale.dump();
  std::vector<std::string> notes;
  const runs::CompareResult again =
      runs::compare(plan, true, *executor, {}, [&](const std::string& n) { notes.push_back(n); });
  EXPECT_EQ(notes[0], "standard seed 0: finished, evaluating only");
  EXPECT_EQ(notes[4], "0 runs to train, one after another in this process");
  ASSERT_EQ(again.runs.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_NEAR(again.runs[i].metrics["test_bits_per_byte"].get<double>(),
                first.runs[i].metrics["test_bits_per_byte"].get<double>(), 1e-9)
        << i;
    EXPECT_EQ(again.runs[i].train_seconds, first.runs[i].train_seconds) << i;
  }
}

}  // namespace
}  // namespace quest::training
