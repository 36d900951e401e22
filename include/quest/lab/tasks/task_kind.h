// The task registry. A run's config.json names what it trains in its "task" key ("vit", "lm",
// ...); the TaskKind of that name makes the run from JSON, scores it, and says how its scores read
// and which go into a comparison's summary. The run stack (runs/compare.h: one train_run, plan,
// compare and summary) and the CLI know tasks only through this interface: a new domain is one
// TaskKind, registered once (as tiny-cuda-nn's "otype" picks an implementation from JSON).
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "quest/core/diagnostics.h"
#include "quest/lab/training/engine.h"

namespace quest::tasks {

// One run of a task in this process: its data, its model on the training engine.
class TaskRun {
 public:
  virtual ~TaskRun() = default;
  // Trains up to the config's epochs, resuming from the run's checkpoint when `resume` and one
  // exists; throws training::DivergenceError when the run diverges. Writes config.json, metrics and
  // checkpoints to the config's run_dir.
  virtual void fit(bool resume, const std::function<void(const nlohmann::json&)>& on_step) = 0;
  // Held-out scores of the model as it is, keyed as result.json and the summary read them
  // ("test_accuracy", "test_bits_per_byte", ...). Data-parallel: every rank calls it.
  virtual nlohmann::json test_metrics() = 0;
  // Attention diagnostics of the model on the first samples of the test split, per layer.
  virtual std::vector<std::optional<HeadDiagnostics>> test_diagnostics() = 0;
  // As recorded at the last logged step (a diverged run's state at its stop).
  virtual std::vector<std::optional<HeadDiagnostics>> attention_diagnostics() = 0;
  // Measurements of training itself ("tokens_per_second"), saved beside the test metrics.
  virtual nlohmann::json training_metrics() const { return nlohmann::json::object(); }
  // The data in one line: "train 54000 / validation 6000 / test 10000 images".
  virtual std::string describe_data() const = 0;
  virtual int64_t epoch() const = 0;
  virtual int64_t step() const = 0;
  virtual double train_seconds() const = 0;
};

// A column of the comparison's summary: a metric key, its decimals, a display scale (100: %).
struct MetricColumn {
  std::string key;
  int precision = 4;
  double scale = 1;
};

class TaskKind {
 public:
  virtual ~TaskKind() = default;
  virtual std::string name() const = 0;
  // Every key a config may set, with its default ("task" holds the name). A config names the
  // attention kind in model.attention, its seed in "seed", its directory in "run_dir" and its
  // length in "epochs" (what a plan sets and reads).
  virtual nlohmann::json defaults() const = 0;
  // A config checked and completed: an unknown key, a wrong type or a bad value raises an error
  // naming it; the result holds every key.
  virtual nlohmann::json resolve(const nlohmann::json& config) const = 0;
  // Loads the data and builds the model on the engine; `parallel`: one rank of a data-parallel run.
  virtual std::unique_ptr<TaskRun> start(const nlohmann::json& config,
                                         const training::DataParallel& parallel) const = 0;
  // A trained run from its checkpoint (its run's config.json beside it); data loads when scored.
  virtual std::unique_ptr<TaskRun> load(const std::string& checkpoint) const = 0;

  // The summary: the headline test metric (mean ± std over seeds), then more means.
  virtual MetricColumn headline() const = 0;
  virtual std::vector<MetricColumn> more_columns() const { return {}; }
  // What the summary's table says under it.
  virtual std::string legend() const = 0;
  // Reports: a finished run's scores (lines), the same as one short phrase ("test accuracy 0.8512"),
  // an epoch's metrics line ("train loss 0.51  val accuracy 0.84  1200 img/s").
  virtual std::string describe_scores(const nlohmann::json& metrics) const = 0;
  virtual std::string describe_headline(const nlohmann::json& metrics) const = 0;
  virtual std::string describe_epoch(const nlohmann::json& epoch_line) const = 0;
  // Progress display: what one step trains and its unit ("img", "tok").
  struct StepSize {
    int64_t per_step = 1;
    std::string unit;
  };
  virtual StepSize step_size(const nlohmann::json& config) const = 0;
};

// Adds a kind; an empty name or one already registered is an error. The built-in kinds (vit, lm)
// are there before the first lookup.
void register_task_kind(std::shared_ptr<const TaskKind> kind);
// The kind of that name; an unknown name is an error listing the registered ones.
const TaskKind& task_kind(const std::string& name);
std::vector<std::string> task_kind_names();
// The name a config gives in "task". A config written before runs named their task has none: it is
// the language model's when it names a corpus, else the ViT's.
std::string task_name_of(const nlohmann::json& config);
const TaskKind& task_kind_of(const nlohmann::json& config);

}  // namespace quest::tasks
