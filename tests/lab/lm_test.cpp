// Byte-level language modelling on the engine: config files, evaluation arithmetic, a tiny run
// that learns, and exact resume.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "error_message.h"
#include "quest/lab/training/lm.h"

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
  Corpus() : dir(fs::temp_directory_path() / ("quest_lm_test_" + std::to_string(::getpid()))) {
    fs::create_directories(dir);
    for (int d = 0; d < 40; ++d) {  // a regular language: learnable in a few steps
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
  EXPECT_EQ(lm_config_from_json({{"model", {{"positions", "rotary"}}}}).model.positions(), "rotary");
  const std::string m = testing::error_message([] { lm_config_from_json({{"modle", {}}}); });
  EXPECT_NE(m.find("unknown config key 'modle'"), std::string::npos) << m;
  const std::string t = testing::error_message([] { lm_config_from_json({{"epochs", "two"}}); });
  EXPECT_NE(t.find("'epochs' must be"), std::string::npos) << t;
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
  EXPECT_TRUE(fs::exists(run / "checkpoint.pt"));

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

}  // namespace
}  // namespace quest::training
