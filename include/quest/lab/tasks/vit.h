// The "vit" task: ViT image classification on the training engine — datasets, the run config
// (VitConfig), VitTrainer — registered as a task kind (tasks/task_kind.h) in vit.cpp.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <optional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "quest/lab/data/idx.h"
#include "quest/lab/models/vit.h"
#include "quest/lab/runs/run_dir.h"
#include "quest/lab/training/engine.h"

namespace quest::training {

// Data normalisation of a run: (x/255 - mean) / std with the training images' statistics.
struct Normalization {
  double mean = 0, std = 1;
};

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
// The same in two halves, so that a data-parallel rank draws for the whole global batch (the
// generator advancing as in one process) and applies its shard's part: crop offsets and flips.
struct AugmentDraw {
  torch::Tensor dy, dx, flip;  // (n) each; undefined where off
  AugmentDraw slice(int64_t begin, int64_t end) const;
};
AugmentDraw draw_augmentation(int64_t n, int64_t pad, bool flip, torch::Generator& gen);
torch::Tensor apply_augmentation(const torch::Tensor& images, const AugmentDraw& draw, int64_t pad);

// An MNIST-format directory (Fashion-MNIST by default) as train / validation / test sets,
// normalised by the training images' mean and standard deviation (returned, for re-use on raw
// [0, 1] images). train_subset > 0 keeps only the first that many training images.
struct MnistSplits {
  Dataset train, validation, test;
  double mean = 0, std = 1;
};
MnistSplits load_mnist_splits(const std::string& dir, double val_fraction, uint64_t seed,
                              int64_t train_subset = 0);
// The statistics load_mnist_splits normalises with (all training images of `dir`).
Normalization mnist_normalization(const std::string& dir);
// The test split of `dir` normalised with `n` (a run's saved normalisation): reads t10k only.
Dataset load_mnist_test(const std::string& dir, Normalization n);

// Where a run's images come from.
struct ImageData {
  std::string dir = data::kFashionMnistDir;  // MNIST-format directory
  double val_fraction = 0.1;                 // held-out share of the training split
};

// JSON: {"task": "vit", "data": {...}, "model": {...}, the run settings and the keys below}.
struct VitConfig : RunSettings {
  VitConfig() {
    epochs = 10;
    batch_size = 128;
    weight_decay = 0.05;
    warmup_epochs = 1;
  }
  ImageData data;
  models::VitOptions model;
  int64_t train_subset = 0;  // > 0: train on the first that many training images only
  double label_smoothing = 0.1;
  bool augment = true;
  int64_t crop_padding = 2;
  bool flip = true;
};
nlohmann::json to_json(const VitConfig& config);
VitConfig vit_config_from_json(const nlohmann::json& j);

class VitTrainer;
// A trained run from its checkpoint: the run's config.json beside it, then the checkpoint's state.
std::unique_ptr<VitTrainer> load_vit_run(const std::string& checkpoint);

// The ViT image-classification task on the training engine (engine.h): AdamW, warmup + cosine,
// clipping, label smoothing, random crop / flip; metrics, checkpoints and resume in the run
// directory (config.run_dir).
class VitTrainer {
 public:
  // `parallel`: train data-parallel as one rank of its process group (engine.h).
  explicit VitTrainer(VitConfig config, DataParallel parallel = {});
  ~VitTrainer();

  // Trains up to config.epochs, resuming from the run's checkpoint when `resume` and it exists.
  // Writes config.json, then the checkpoint atomically after each epoch. `on_step` sees progress.
  void fit(const Dataset& train, const Dataset& validation, bool resume,
           const std::function<void(const nlohmann::json&)>& on_step = {});
  // Data-parallel: every rank must call it; each scores its shard, the result is all-reduced.
  EvalResult evaluate(const Dataset& data, int64_t batch_size = 512);

  void save_checkpoint(const std::string& path);
  void load_checkpoint(const std::string& path);
  std::string checkpoint_path() const;
  runs::RunDir run_dir() const { return runs::RunDir(config_.run_dir); }

  models::Vit& model();
  int64_t epoch() const;
  int64_t step() const;
  double train_seconds() const;
  const VitConfig& config() const { return config_; }
  double learning_rate(int64_t step) const;

  // The normalisation the run's data used; saved in the checkpoint. nullopt for a checkpoint
  // written before quest saved it (robustness then recomputes it from the training images).
  std::optional<Normalization> normalization() const;
  void set_normalization(Normalization n);
  // normalization(), or for an old checkpoint the statistics of `data_dir`'s training images.
  Normalization normalization_or_recomputed(const std::string& data_dir) const;

 private:
  class VitTask;
  VitConfig config_;
  DataParallel parallel_;
  std::unique_ptr<VitTask> task_;
  std::unique_ptr<Engine> engine_;
};

}  // namespace quest::training
