// Supervised image-classification training: AdamW with weight-decay exclusions, warmup + cosine
// schedule, gradient clipping, label smoothing, JSON-lines metrics, atomic checkpoints with exact
// resume at epoch boundaries, and a clean stop on non-finite loss or gradients.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "quest/models/vit.h"

namespace quest::training {

struct Dataset {
  torch::Tensor images;  // (N, C, H, W) float, normalised
  torch::Tensor labels;  // (N) int64
  int64_t size() const { return labels.size(0); }
};

// uint8 (N, H, W) images -> float (N, 1, H, W), (x/255 - mean) / std.
Dataset to_dataset(const torch::Tensor& images_u8, const torch::Tensor& labels, double mean,
                   double std);
// A seeded split: the last `fraction` of a seeded permutation becomes the validation set.
std::pair<Dataset, Dataset> split_validation(const Dataset& all, double fraction, uint64_t seed);
// Random crop after zero padding by `pad` pixels, and horizontal flip with probability 1/2.
torch::Tensor augment(const torch::Tensor& images, int64_t pad, bool flip, torch::Generator& gen);

// An MNIST-format directory (Fashion-MNIST by default) as train / validation / test sets,
// normalised by the training images' mean and standard deviation (returned, for re-use on raw
// [0, 1] images). train_subset > 0 keeps only the first that many training images.
struct MnistSplits {
  Dataset train, validation, test;
  double mean = 0, std = 1;
};
MnistSplits load_mnist_splits(const std::string& dir, double val_fraction, uint64_t seed,
                              int64_t train_subset = 0);

struct TrainConfig {
  models::VitOptions model;
  int64_t epochs = 10, batch_size = 128;
  int64_t train_subset = 0;  // > 0: train on the first that many training images only
  double lr = 1e-3, min_lr = 1e-5, weight_decay = 0.05, warmup_epochs = 1;
  double clip_grad_norm = 1.0;  // <= 0: off
  double label_smoothing = 0.1;
  bool augment = true;
  int64_t crop_padding = 2;
  bool flip = true;
  uint64_t seed = 0;
  int64_t log_every = 50;  // steps between metric lines (and diagnostics)
  std::string run_dir;     // metrics.jsonl, checkpoint.pt, config.json
};
nlohmann::json to_json(const TrainConfig& config);
TrainConfig config_from_json(const nlohmann::json& j);

// Thrown when the loss or the gradient norm stops being finite.
struct DivergenceError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct EvalResult {
  double loss = 0, accuracy = 0;
};

class Trainer;
// A trained run: its config.json (beside the checkpoint), then the checkpoint's state.
std::unique_ptr<Trainer> load_run(const std::string& checkpoint);
// Where a run directory keeps its checkpoint (written each epoch, read by --resume).
std::string checkpoint_path(const std::string& run_dir);

class Trainer {
 public:
  explicit Trainer(TrainConfig config);

  // Trains up to config.epochs, resuming from run_dir/checkpoint.pt when `resume` and it exists.
  // Writes the checkpoint atomically after each epoch. `on_step` (optional) sees progress.
  // run_dir/metrics.jsonl keeps the lines of the epochs the checkpoint holds (none on a fresh start),
  // so a resumed or restarted run never logs a step twice.
  void fit(const Dataset& train, const Dataset& validation, bool resume,
           const std::function<void(const nlohmann::json&)>& on_step = {});
  EvalResult evaluate(const Dataset& data, int64_t batch_size = 512);

  void save_checkpoint(const std::string& path);
  void load_checkpoint(const std::string& path);
  std::string checkpoint_path() const;

  models::Vit& model() { return model_; }
  int64_t epoch() const { return epoch_; }
  const TrainConfig& config() const { return config_; }
  int64_t step() const { return step_; }
  // Seconds spent in training epochs (validation excluded), summed over resumed segments; NaN
  // for a checkpoint written before quest recorded it.
  double train_seconds() const { return train_seconds_; }
  double learning_rate(int64_t step, int64_t steps_per_epoch) const;

 private:
  void set_learning_rate(double lr);
  void log(const nlohmann::json& line);
  // metrics.jsonl keeps only the epochs before epoch_ (called once fit has loaded any checkpoint).
  void trim_metrics();

  TrainConfig config_;
  models::Vit model_{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  int64_t epoch_ = 0, step_ = 0;
  double train_seconds_ = 0;
};

// Parameters that get no weight decay: biases, norm parameters, position/class embeddings,
// learnable attention scales.
bool excluded_from_weight_decay(const std::string& name);

}  // namespace quest::training
