// The "lm" task: byte-level language modelling on the training engine — the GPT (models/gpt.h) on a
// text corpus (data/text.h), its run config, and LmTrainer — registered as a task kind
// (tasks/task_kind.h) in lm.cpp. Losses in nats per byte; bits per byte = nats/ln 2.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "quest/lab/data/text.h"
#include "quest/lab/models/gpt.h"
#include "quest/lab/training/engine.h"

namespace quest::training {

struct LmConfig : RunSettings {
  LmConfig() {
    epochs = 4;
    batch_size = 32;
    weight_decay = 0.1;
    warmup_epochs = 0.5;
  }
  models::GptOptions model;  // model.context: the training window
  int64_t steps_per_epoch = 200;
  std::string corpus = data::linux_doc_dir();
  int64_t corpus_bytes = 0;          // > 0: read only that many bytes of the corpus
  int64_t eval_bytes = 1 << 18;      // validation after each epoch: that many bytes of the split
};
nlohmann::json to_json(const LmConfig& config);
LmConfig lm_config_from_json(const nlohmann::json& j);

struct LmEval {
  double nats_per_byte = 0, bits_per_byte = 0, accuracy = 0;  // accuracy: next byte
  int64_t bytes = 0;                                          // predicted
  double nats = 0;                                            // summed (what the ranks add up)
  int64_t correct = 0;
};

// The corpus of a config as byte splits (read_text_corpus + byte_splits).
data::ByteSplits load_lm_data(const LmConfig& config);

class LmTrainer;
// A trained run from its checkpoint: the run's config.json beside it, then the checkpoint's state.
std::unique_ptr<LmTrainer> load_lm_run(const std::string& checkpoint);

class LmTrainer {
 public:
  // `parallel`: train data-parallel as one rank of its process group (engine.h); evaluate() then
  // scores this rank's shard of the windows and all-reduces (every rank must call it).
  explicit LmTrainer(LmConfig config, DataParallel parallel = {});
  ~LmTrainer();

  // Trains on random windows of data.train (each epoch steps_per_epoch batches drawn from the
  // epoch's own generator, so resume replays exactly), validating on data.valid after each epoch.
  void fit(const data::ByteSplits& data, bool resume,
           const std::function<void(const nlohmann::json&)>& on_step = {});
  // Every byte of stream[0, max_bytes) after the first of each window, predicted from the bytes
  // before it in its window (non-overlapping windows of context + 1). max_bytes <= 0: all.
  LmEval evaluate(const torch::Tensor& stream, int64_t max_bytes = 0);

  void save_checkpoint(const std::string& path);
  void load_checkpoint(const std::string& path);
  models::Gpt& model();
  const LmConfig& config() const { return config_; }
  int64_t epoch() const;
  int64_t step() const;
  double train_seconds() const;

 private:
  class LmTask;
  LmConfig config_;
  DataParallel parallel_;
  std::unique_ptr<LmTask> task_;
  std::unique_ptr<Engine> engine_;
};

}  // namespace quest::training
