// The one training engine: AdamW with one weight-decay rule, a learning-rate schedule, gradient
// clipping, a clean stop on non-finite state, JSON-lines metrics with per-layer attention
// diagnostics, atomic checkpoints and exact resume at epoch boundaries. What is trained is a Task
// (model, batches, loss, evaluation). Every random draw of a run comes from generators it owns and
// derives from its seed (init, data order, dropout); the engine draws nothing from torch's global
// generator, so runs can go side by side in threads or processes with the same results as one
// after another. (LibTorch's module constructors still draw their default initialisation from the
// global generator; Task::initialize replaces all of it.)
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "quest/core/diagnostics.h"
#include "quest/lab/distributed/process_group.h"
#include "quest/lab/runs/run_dir.h"
#include "quest/lab/training/config.h"
#include "quest/lab/training/monitor.h"

namespace quest::training {

// Thrown when the loss, the gradient norm or a parameter stops being finite.
struct DivergenceError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct EvalResult {
  double loss = 0, accuracy = 0;
  int64_t samples = 0;  // what loss and accuracy average over (0: not reported)
};

// Shard `rank` of `world` of n items: [n·rank/world, n·(rank+1)/world), contiguous, disjoint, and
// together every item once. Data parallelism splits each global batch (and evaluation set) so.
std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int world);
// The ranks' shard results as one: loss and accuracy weighted by samples (all-reduced).
EvalResult combine_shards(const EvalResult& mine, distributed::ProcessGroup& group, const std::string& what);

// One training step's forward pass.
struct StepOutput {
  // Scalar, differentiable. Undefined for an empty shard (a data-parallel rank with no sample of a
  // short last batch; samples 0): the rank then contributes only its place in the all-reduce.
  torch::Tensor loss;
  int64_t samples = 0;  // in this batch
  int64_t correct = -1; // correct predictions, -1 where the task has no accuracy
  // Log-partition log Σ exp(logit) of each output row (differentiable), where the task has a
  // classifier: its drift is Wortsman et al.'s second instability, and z-loss penalises its square.
  // Undefined: none.
  torch::Tensor log_partition;
  // The mean of log_partition (the engine fills it; data-parallel: over the global batch); NaN: none.
  double log_z = NAN;
};

// The loss the engine differentiates: the task's, plus z_loss * mean(log_partition^2) where
// z_loss > 0 and the task reports its log-partitions.
torch::Tensor training_objective(const StepOutput& out, double z_loss);

class Task {
 public:
  virtual ~Task() = default;
  virtual torch::nn::Module& model() = 0;
  // Draws the model's initial weights from `generator` (a fresh run; a resumed one loads them).
  virtual void initialize(at::Generator generator) = 0;
  virtual int64_t steps_per_epoch() const = 0;
  // Prepares an epoch (data order, augmentation) from the epoch's own data generator.
  virtual void begin_epoch(int64_t epoch, at::Generator data_generator) = 0;
  virtual StepOutput forward_step(int64_t index_in_epoch) = 0;
  // After each optimiser step; `step` counts steps done (1 after the first).
  virtual void after_step(int64_t step) {}
  // Held-out metrics at the end of an epoch (nullopt: none).
  virtual std::optional<EvalResult> validate() { return std::nullopt; }
  virtual void record_diagnostics(bool on) {}
  virtual std::vector<std::optional<HeadDiagnostics>> attention_diagnostics() const { return {}; }
  // What one sample is called in throughput keys ("images" -> images_per_second).
  virtual std::string sample_name() const { return "samples"; }
  // Data parallelism: from now on forward_step(b) trains only shard `rank` of `world` of global
  // batch b (shard_range), drawing every random number of the whole batch so that the ranks'
  // shards together are exactly the one-process batch; validate() scores only its shard of the
  // evaluation set and reports EvalResult::samples. false: this task cannot (the default).
  virtual bool set_shard(int rank, int world) { return world == 1; }
  // Extra state saved in and restored from the checkpoint (e.g. data normalisation statistics).
  virtual void save_extra(torch::serialize::OutputArchive&) const {}
  virtual void load_extra(torch::serialize::InputArchive&) {}
};

enum class Schedule { warmup_cosine, constant };

// Data-parallel training (no group, or a world of 1: one process). Every rank trains its shard of
// each global batch; gradients are summed over the ranks (bucketed all-reduce) and divided by the
// global batch, so each optimiser step applies the one-process gradient; losses, accuracy,
// validation and attention diagnostics are all-reduced; rank 0 alone writes the run directory.
// The parameters' checksums are compared at the start and after every epoch.
struct DataParallel {
  std::shared_ptr<distributed::ProcessGroup> group;
  int64_t check_sync_every = 0;  // > 0 (debugging): also every that many steps
  // Gradient all-reduce overlapped with the backward in buckets of bucket_bytes (DDP's 25 MB suits
  // its models; quest's are a few MB, so smaller buckets start sending sooner); off: one all-reduce
  // after the backward.
  bool overlap = true;
  int64_t bucket_bytes = 1 << 20;
  bool active() const { return group && group->world_size() > 1; }
  bool writes() const { return !group || group->rank() == 0; }  // the run directory, reports
  // A global batch smaller than the world would leave ranks idle every step: an error.
  void check_batch(int64_t batch_size) const;
};

struct EngineConfig {
  int64_t epochs = 1;
  double lr = 1e-3, min_lr = 1e-5, weight_decay = 0.0;
  Schedule schedule = Schedule::warmup_cosine;
  double warmup_epochs = 0;     // warmup_cosine: linear warmup, then cosine down to min_lr
  double clip_grad_norm = 0;    // <= 0: off
  // z-loss (Wortsman et al. 2023): z_loss * mean(log Z^2) over the output rows joins the loss that
  // is differentiated (the logged loss stays the task's). 0: off.
  double z_loss = 0;
  // QK-clip (Kimi K2's MuonClip): after each optimiser step, every head of every
  // quest::nn::MultiheadAttention whose max logit S of the step exceeded qk_clip has its query and
  // key projections rescaled so that S would have been qk_clip (MultiheadAttentionImpl::clip_qk).
  // Diagnostics are then recorded on every step. 0: off.
  double qk_clip = 0;
  // The training forward under torch's CPU autocast to this dtype (RunSettings::autocast); the
  // backward, the optimiser and validation stay float32. nullopt: off.
  std::optional<c10::ScalarType> autocast;
  uint64_t seed = 0;
  int64_t log_every = 50;       // steps between metric lines with diagnostics; 0: none
  runs::RunDir run_dir;         // empty: nothing written
  // Watches the diagnostics of logged steps; its alert goes to the metrics as a "warning" line and
  // to on_warning (default: stderr), and with policy stop ends the run as diverged.
  LogitMonitorOptions logit_monitor;
  std::function<void(const std::string&)> on_warning;
  DataParallel parallel;
};

// The engine's config for a task's run settings (warmup + cosine schedule) on `parallel`.
EngineConfig engine_config(const RunSettings& settings, const DataParallel& parallel = {});

// Parameters that get weight decay: matrices and convolution kernels (dim >= 2) except
// embeddings and learned tokens (names ending in pos_embed, cls_token, query_token). Biases,
// normalisation parameters and learnable attention scales (all dim 1) get none.
bool applies_weight_decay(const std::string& name, const torch::Tensor& parameter);

// The run-owned generators, all derived from the seed, so a resumed run replays an epoch exactly.
at::Generator init_generator(uint64_t seed);
at::Generator data_generator(uint64_t seed, int64_t epoch);   // data order, augmentation
at::Generator model_generator(uint64_t seed, int64_t epoch);  // dropout, drop-path, attention dropout

class Engine {
 public:
  // Initialises the task's model from init_generator(seed) and builds the optimiser.
  Engine(EngineConfig config, Task& task);

  // Trains up to config.epochs, resuming from the run's checkpoint when `resume` and one exists.
  // `on_step` (optional) sees every step's line (loss, lr, grad_norm; diagnostics on logged steps).
  void fit(bool resume, const std::function<void(const nlohmann::json&)>& on_step = {});

  // Atomic: a temp file, then a rename. A failed write (full disk) throws std::runtime_error and
  // leaves the previous checkpoint as it was.
  void save_checkpoint(const std::string& path) const;
  // A corrupt, truncated or foreign checkpoint throws std::runtime_error naming the file, and
  // leaves the model and optimiser as they were.
  void load_checkpoint(const std::string& path);
  // The same from a checkpoint file's bytes (`name` names it in errors).
  void load_checkpoint_bytes(const std::string& bytes, const std::string& name);

  double learning_rate(int64_t step) const;
  int64_t epoch() const { return epoch_; }
  int64_t step() const { return step_; }
  // Seconds in training epochs (validation excluded), summed over resumed segments; NaN for a
  // checkpoint written before quest recorded it.
  double train_seconds() const { return train_seconds_; }
  const EngineConfig& config() const { return config_; }

 private:
  std::unique_ptr<torch::optim::AdamW> make_optimizer() const;
  void fit_epochs(const std::function<void(const nlohmann::json&)>& on_step);
  void set_learning_rate(double lr);
  // The task's attention diagnostics; data-parallel: over every rank's shard (max of maxima, mean of means).
  std::vector<std::optional<HeadDiagnostics>> diagnostics() const;
  static nlohmann::json diagnostics_json(const std::vector<std::optional<HeadDiagnostics>>& layers);
  // The process group of a data-parallel run; null in one process.
  distributed::ProcessGroup* group() const {
    return config_.parallel.active() ? config_.parallel.group.get() : nullptr;
  }
  // One step, as fit_epochs reads it: train_step, check_finite, update, log_step.
  struct StepResult {
    double lr = 0, loss = 0, grad_norm = 0;
    int64_t samples = 0, correct = -1;
    double log_z = NAN;
    bool record = false;  // a logged step: diagnostics were recorded
    int64_t qk_clipped = -1;  // heads QK-clip rescaled after this step; -1: QK-clip off
  };
  struct EpochTotals {
    double loss_sum = 0;
    int64_t samples = 0, correct = 0;
    bool has_accuracy = true;
    std::chrono::steady_clock::time_point start;
    distributed::CommStats comm_before;
    void add(const StepResult& r);
  };
  // Learning rate, forward, backward (data-parallel: the all-reduced global step) and clipping;
  // stops before backward where the loss is not finite.
  StepResult train_step(int64_t batch);
  // A non-finite loss or gradient norm ends the run as diverged (diverged_in_step).
  void check_finite(const StepResult& r, int64_t batch);
  // The optimiser step, QK-clip, the task's after_step and the optional parameter sync check;
  // returns the heads QK-clip rescaled (-1: off).
  int64_t update();
  // QK-clip on every quest::nn::MultiheadAttention of the model, from this step's max logits
  // (data-parallel: the maximum over the ranks, so every rank rescales alike); heads rescaled.
  int64_t clip_qk();
  // The step's metrics line (diagnostics on logged steps), on_step, and the logit monitor.
  void log_step(const StepResult& r, LogitMonitor& monitor,
                const std::function<void(const nlohmann::json&)>& on_step);
  // Finite parameters, the epoch's metrics line with validation, the checkpoint.
  void end_epoch(const EpochTotals& totals);
  [[noreturn]] void diverged(const std::string& what) const;
  // Re-runs batch `batch`'s forward with attention diagnostics on, appends them to the metrics as
  // a {"type": "diverged"} line, names the first layer and head that went non-finite, and throws.
  [[noreturn]] void diverged_in_step(const std::string& what, int64_t batch);

  EngineConfig config_;
  Task& task_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  int64_t epoch_ = 0, step_ = 0;
  double train_seconds_ = 0;
};

}  // namespace quest::training
