#include "quest/lab/tasks/vit.h"

#include <cstdio>
#include <mutex>

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <tuple>

#include "builtin.h"
#include "quest/lab/runs/run_dir.h"

#include "quest/lab/data/idx.h"

namespace quest::training {


Dataset to_dataset(const torch::Tensor& images_u8, const torch::Tensor& labels, double mean,
                   double std) {
  TORCH_CHECK(images_u8.dim() == 3 && images_u8.scalar_type() == torch::kUInt8,
              "quest::training: expected uint8 images (N, H, W), got ", images_u8.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == images_u8.size(0),
              "quest::training: ", labels.numel(), " labels for ", images_u8.size(0), " images");
  return {(images_u8.unsqueeze(1).to(torch::kFloat) / 255.0 - mean) / std, labels};
}

static Normalization pixel_statistics(const torch::Tensor& images_u8) {
  const auto pixels = images_u8.to(torch::kFloat) / 255.0;
  return {pixels.mean().item<double>(), pixels.std().item<double>()};
}

Normalization mnist_normalization(const std::string& dir) {
  return pixel_statistics(data::read_mnist_split(dir, "train").images);
}

Dataset load_mnist_test(const std::string& dir, Normalization n) {
  const data::ImageSet test = data::read_mnist_split(dir, "t10k");
  return to_dataset(test.images, test.labels, n.mean, n.std);
}

MnistSplits load_mnist_splits(const std::string& dir, double val_fraction, uint64_t seed,
                              int64_t train_subset) {
  const data::ImageSet train = data::read_mnist_split(dir, "train");
  const data::ImageSet test = data::read_mnist_split(dir, "t10k");
  const Normalization n = pixel_statistics(train.images);
  MnistSplits out;
  out.mean = n.mean;
  out.std = n.std;
  Dataset all = to_dataset(train.images, train.labels, out.mean, out.std);
  if (train_subset > 0 && train_subset < all.size())
    all = {all.images.narrow(0, 0, train_subset), all.labels.narrow(0, 0, train_subset)};
  std::tie(out.train, out.validation) = split_validation(all, val_fraction, seed);
  out.test = to_dataset(test.images, test.labels, out.mean, out.std);
  return out;
}

std::unique_ptr<VitTrainer> load_vit_run(const std::string& checkpoint) {
  const nlohmann::json config = run_config_of(checkpoint);
  TORCH_CHECK(!config.contains("corpus") && !(config.contains("model") && config["model"].contains("vocab_size")),
              "quest: ", checkpoint, " is the checkpoint of a language-model run, not of an image "
              "classifier: `quest lm eval` and `quest lm generate` take it");
  auto trainer = std::make_unique<VitTrainer>(vit_config_from_json(config));
  trainer->load_checkpoint(checkpoint);
  return trainer;
}

std::pair<Dataset, Dataset> split_validation(const Dataset& all, double fraction, uint64_t seed) {
  TORCH_CHECK(fraction >= 0 && fraction < 1, "quest::training: validation fraction must be in [0, 1)");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto order = torch::randperm(all.size(), gen);
  const int64_t n_val = static_cast<int64_t>(std::round(all.size() * fraction));
  const auto train_idx = order.slice(0, 0, all.size() - n_val);
  const auto val_idx = order.slice(0, all.size() - n_val);
  return {{all.images.index_select(0, train_idx), all.labels.index_select(0, train_idx)},
          {all.images.index_select(0, val_idx), all.labels.index_select(0, val_idx)}};
}

AugmentDraw AugmentDraw::slice(int64_t begin, int64_t end) const {
  auto cut = [&](const torch::Tensor& t) { return t.defined() ? t.slice(0, begin, end) : t; };
  return {cut(dy), cut(dx), cut(flip)};
}

AugmentDraw draw_augmentation(int64_t n, int64_t pad, bool flip, torch::Generator& gen) {
  AugmentDraw d;
  if (pad > 0) {
    d.dy = torch::randint(0, 2 * pad + 1, {n}, gen, torch::kLong);
    d.dx = torch::randint(0, 2 * pad + 1, {n}, gen, torch::kLong);
  }
  if (flip) d.flip = torch::rand({n}, gen) < 0.5;
  return d;
}

torch::Tensor apply_augmentation(const torch::Tensor& images, const AugmentDraw& d, int64_t pad) {
  TORCH_CHECK(images.dim() == 4, "quest::training: images must be (N, C, H, W), got ", images.sizes());
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  if (pad <= 0 && !d.flip.defined()) return images;
  TORCH_CHECK(pad <= 0 || (d.dy.defined() && d.dy.size(0) == n && d.dx.defined() && d.dx.size(0) == n),
              "quest::training: crop offsets for ", n, " images needed");
  TORCH_CHECK(!d.flip.defined() || d.flip.size(0) == n, "quest::training: flips for ", n, " images needed");
  // Zero-pad by `pad`, crop h x w at (dy, dx), mirror where flip: one pass per image,
  // out[y][x] = in[y + dy - pad][x' + dx - pad] (0 outside), x' = w - 1 - x if flipped. (Per-image
  // narrow/copy tensor ops cost ~3 % of a ViT step.)
  const torch::Tensor in = images.contiguous();
  torch::Tensor out = torch::empty_like(in);
  const torch::Tensor dy = pad > 0 ? d.dy.to(torch::kLong).contiguous() : torch::Tensor();
  const torch::Tensor dx = pad > 0 ? d.dx.to(torch::kLong).contiguous() : torch::Tensor();
  const torch::Tensor flip = d.flip.defined() ? d.flip.to(torch::kBool).contiguous() : torch::Tensor();
  const int64_t* oy = pad > 0 ? dy.data_ptr<int64_t>() : nullptr;
  const int64_t* ox = pad > 0 ? dx.data_ptr<int64_t>() : nullptr;
  const bool* mirror = flip.defined() ? flip.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "quest_apply_augmentation", [&] {
    const scalar_t* src = in.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t sy = oy ? oy[i] - pad : 0, sx = ox ? ox[i] - pad : 0;
        const bool m = mirror && mirror[i];
        for (int64_t p = i * c; p < (i + 1) * c; ++p)
          for (int64_t y = 0; y < h; ++y) {
            const int64_t yy = y + sy;
            scalar_t* row = dst + (p * h + y) * w;
            if (yy < 0 || yy >= h) {
              std::fill(row, row + w, scalar_t(0));
              continue;
            }
            const scalar_t* from = src + (p * h + yy) * w;
            for (int64_t x = 0; x < w; ++x) {
              const int64_t xx = (m ? w - 1 - x : x) + sx;
              row[x] = xx >= 0 && xx < w ? from[xx] : scalar_t(0);
            }
          }
      }
    });
  });
  return out;
}

torch::Tensor augment(const torch::Tensor& images, int64_t pad, bool flip, torch::Generator& gen) {
  return apply_augmentation(images, draw_augmentation(images.size(0), pad, flip, gen), pad);
}

nlohmann::json to_json(const VitConfig& c) {
  const auto& m = c.model;
  nlohmann::json j = {{"task", "vit"},
          {"data", {{"dir", c.data.dir}, {"val_fraction", c.data.val_fraction}}},
          {"model",
           {{"image_size", m.image_size()}, {"channels", m.channels()}, {"patch_size", m.patch_size()},
            {"stem", to_string(m.stem())},
            {"num_classes", m.num_classes()}, {"dim", m.dim()}, {"depth", m.depth()},
            {"heads", m.heads()}, {"mlp_ratio", m.mlp_ratio()}, {"dropout", m.dropout()},
            {"attention_dropout", m.attention_dropout()}, {"drop_path", m.drop_path()},
            {"attention", to_string(m.attention())}, {"backend", to_string(m.backend())}}},
          {"train_subset", c.train_subset}, {"label_smoothing", c.label_smoothing},
          {"augment", c.augment}, {"crop_padding", c.crop_padding}, {"flip", c.flip}};
  j.update(to_json(static_cast<const RunSettings&>(c)));
  return j;
}

VitConfig vit_config_from_json(const nlohmann::json& j) {
  VitConfig c;
  const nlohmann::json merged = read_task_config("vit", to_json(c), j, c);
  const auto& m = merged.at("model");
  const auto [kind, backend] = attention_choice(m);
  c.data.dir = merged.at("data").at("dir");
  c.data.val_fraction = merged.at("data").at("val_fraction");
  TORCH_CHECK(c.data.val_fraction >= 0 && c.data.val_fraction < 1,
              "quest::training: data.val_fraction must be in [0, 1), got ", c.data.val_fraction);
  c.model.image_size(m.at("image_size")).channels(m.at("channels")).patch_size(m.at("patch_size"))
      .stem(models::parse_stem(m.at("stem"))).num_classes(m.at("num_classes")).dim(m.at("dim")).depth(m.at("depth"))
      .heads(m.at("heads")).mlp_ratio(m.at("mlp_ratio")).dropout(m.at("dropout"))
      .attention_dropout(m.at("attention_dropout")).drop_path(m.at("drop_path"))
      .attention(kind).backend(backend);
  c.train_subset = merged.at("train_subset");
  c.label_smoothing = merged.at("label_smoothing");
  c.augment = merged.at("augment");
  c.crop_padding = merged.at("crop_padding");
  c.flip = merged.at("flip");
  return c;
}

// The ViT on (augmented) image batches: cross-entropy with label smoothing.
class VitTrainer::VitTask : public Task {
 public:
  explicit VitTask(const VitConfig& c) : config(c), vit(c.model) {}

  torch::nn::Module& model() override { return *vit; }
  void initialize(at::Generator generator) override { vit->initialize(generator); }
  int64_t steps_per_epoch() const override {
    TORCH_CHECK(train, "quest::training: no training data (fit sets it)");
    return (train->size() + config.batch_size - 1) / config.batch_size;
  }
  void begin_epoch(int64_t, at::Generator data_generator) override {
    gen = data_generator;
    order = torch::randperm(train->size(), gen);
  }
  bool set_shard(int r, int w) override {
    rank = r, world = w;
    return true;
  }
  StepOutput forward_step(int64_t b) override {
    const auto global = order.slice(0, b * config.batch_size, std::min(train->size(), (b + 1) * config.batch_size));
    const auto [lo, hi] = shard_range(global.size(0), rank, world);
    // The whole batch's draws: the generator advances as in one process, whatever the shard.
    const AugmentDraw draw = config.augment ? draw_augmentation(global.size(0), config.crop_padding, config.flip, gen)
                                            : AugmentDraw{};
    if (hi == lo) return {torch::Tensor(), 0, 0, {}};
    const auto idx = global.slice(0, lo, hi);
    auto images = train->images.index_select(0, idx);
    const auto labels = train->labels.index_select(0, idx);
    if (config.augment) images = apply_augmentation(images, draw.slice(lo, hi), config.crop_padding);
    const auto logits = vit->forward(images);
    const auto ce = torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(config.label_smoothing);
    return {torch::nn::functional::cross_entropy(logits, labels, ce), idx.size(0),
            logits.argmax(1).eq(labels).sum().item<int64_t>(), logits.logsumexp(1)};
  }
  std::optional<EvalResult> validate() override {
    return validation && validation->size() > 0 ? evaluate_shard(*validation, 512) : EvalResult{};
  }
  void record_diagnostics(bool on) override { vit->set_record_diagnostics(on); }
  std::vector<std::optional<HeadDiagnostics>> attention_diagnostics() const override {
    return vit->attention_diagnostics();
  }
  std::string sample_name() const override { return "images"; }
  void save_extra(torch::serialize::OutputArchive& archive) const override {
    if (!normalization) return;
    archive.write("data_mean", torch::tensor(normalization->mean, torch::kDouble));
    archive.write("data_std", torch::tensor(normalization->std, torch::kDouble));
  }
  void load_extra(torch::serialize::InputArchive& archive) override {
    torch::Tensor mean, std;
    if (archive.try_read("data_mean", mean) && archive.try_read("data_std", std))
      normalization = Normalization{mean.item<double>(), std.item<double>()};
  }

  // This rank's shard of `data` (all of it in one process).
  EvalResult evaluate_shard(const Dataset& data, int64_t batch_size) {
    torch::NoGradGuard no_grad;
    vit->eval();
    double loss = 0;
    int64_t correct = 0;
    const auto [lo, hi] = shard_range(data.size(), rank, world);
    if (hi == lo) return {NAN, NAN, 0};
    for (int64_t i = lo; i < hi; i += batch_size) {
      const int64_t n = std::min(batch_size, hi - i);
      const auto logits = vit->forward(data.images.narrow(0, i, n));
      const auto labels = data.labels.narrow(0, i, n);
      loss += torch::nn::functional::cross_entropy(
                  logits, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                  .item<double>();
      correct += logits.argmax(1).eq(labels).sum().item<int64_t>();
    }
    return {loss / (hi - lo), static_cast<double>(correct) / (hi - lo), hi - lo};
  }

  VitConfig config;
  models::Vit vit;
  const Dataset* train = nullptr;
  const Dataset* validation = nullptr;
  at::Generator gen;
  torch::Tensor order;
  int rank = 0, world = 1;
  std::optional<Normalization> normalization;
};


VitTrainer::VitTrainer(VitConfig config, DataParallel parallel)
    : config_(std::move(config)), parallel_(std::move(parallel)) {
  TORCH_CHECK(config_.epochs >= 1 && config_.batch_size >= 1 && config_.lr > 0,
              "quest::training: need epochs >= 1, batch_size >= 1 and lr > 0");
  parallel_.check_batch(config_.batch_size);
  task_ = std::make_unique<VitTask>(config_);
  engine_ = std::make_unique<Engine>(engine_config(config_, parallel_), *task_);
}

VitTrainer::~VitTrainer() = default;

void VitTrainer::fit(const Dataset& train, const Dataset& validation, bool resume,
                  const std::function<void(const nlohmann::json&)>& on_step) {
  TORCH_CHECK(train.size() > 0, "quest::training: the training set is empty");
  if (!config_.run_dir.empty() && parallel_.writes()) run_dir().write_config(to_json(config_));
  task_->train = &train;
  task_->validation = &validation;
  engine_->fit(resume, on_step);
}

EvalResult VitTrainer::evaluate(const Dataset& data, int64_t batch_size) {
  const EvalResult mine = task_->evaluate_shard(data, batch_size);
  return parallel_.active() ? combine_shards(mine, *parallel_.group, "the evaluation all-reduce") : mine;
}
void VitTrainer::save_checkpoint(const std::string& path) { engine_->save_checkpoint(path); }
void VitTrainer::load_checkpoint(const std::string& path) { engine_->load_checkpoint(path); }
std::string VitTrainer::checkpoint_path() const { return run_dir().checkpoint().string(); }
models::Vit& VitTrainer::model() { return task_->vit; }
int64_t VitTrainer::epoch() const { return engine_->epoch(); }
int64_t VitTrainer::step() const { return engine_->step(); }
double VitTrainer::train_seconds() const { return engine_->train_seconds(); }
double VitTrainer::learning_rate(int64_t step) const { return engine_->learning_rate(step); }
std::optional<Normalization> VitTrainer::normalization() const { return task_->normalization; }
void VitTrainer::set_normalization(Normalization n) { task_->normalization = n; }
Normalization VitTrainer::normalization_or_recomputed(const std::string& data_dir) const {
  return task_->normalization ? *task_->normalization : mnist_normalization(data_dir);
}

}  // namespace quest::training

// The task kind "vit" (tasks/task_kind.h) over VitTrainer.
namespace quest::tasks {

namespace {

using training::Dataset;
using training::Normalization;
using training::VitTrainer;

// The test split a trained run is scored on, read once for every run normalised alike.
const Dataset& test_split(const std::string& dir, Normalization n) {
  static std::mutex mutex;
  static std::optional<std::tuple<std::string, double, double, Dataset>> cached;
  std::lock_guard<std::mutex> lock(mutex);
  if (!cached || std::get<0>(*cached) != dir || std::get<1>(*cached) != n.mean || std::get<2>(*cached) != n.std)
    cached.emplace(dir, n.mean, n.std, training::load_mnist_test(dir, n));
  return std::get<3>(*cached);
}

class VitRun : public TaskRun {
 public:
  // A run to train: the splits of its data directory.
  VitRun(const training::VitConfig& config, const training::DataParallel& parallel)
      : splits_(training::load_mnist_splits(config.data.dir, config.data.val_fraction, config.seed,
                                            config.train_subset)),
        trainer_(std::make_unique<VitTrainer>(config, parallel)) {
    trainer_->set_normalization({splits_->mean, splits_->std});
  }
  // A trained run: its test split when it is scored.
  explicit VitRun(std::unique_ptr<VitTrainer> trainer) : trainer_(std::move(trainer)) {}

  void fit(bool resume, const std::function<void(const nlohmann::json&)>& on_step) override {
    trainer_->fit(splits_->train, splits_->validation, resume, on_step);
  }
  nlohmann::json test_metrics() override {
    const training::EvalResult scores = trainer_->evaluate(test());
    return {{"test_accuracy", scores.accuracy}, {"test_loss", scores.loss}};
  }
  std::vector<std::optional<HeadDiagnostics>> test_diagnostics() override {
    const Dataset& data = test();
    auto& vit = trainer_->model();
    torch::NoGradGuard no_grad;
    vit->eval();
    vit->set_record_diagnostics(true);
    vit->forward(data.images.narrow(0, 0, std::min<int64_t>(256, data.size())));
    vit->set_record_diagnostics(false);
    return vit->attention_diagnostics();
  }
  std::vector<std::optional<HeadDiagnostics>> attention_diagnostics() override {
    return trainer_->model()->attention_diagnostics();
  }
  std::string describe_data() const override {
    if (!splits_) return "";
    char line[160];
    std::snprintf(line, sizeof line, "train %lld / validation %lld / test %lld images", (long long)splits_->train.size(),
                  (long long)splits_->validation.size(), (long long)splits_->test.size());
    return line;
  }
  int64_t epoch() const override { return trainer_->epoch(); }
  int64_t step() const override { return trainer_->step(); }
  double train_seconds() const override { return trainer_->train_seconds(); }

 private:
  // Normalised as the run was trained (the statistics of all training images, saved with the run).
  const Dataset& test() {
    if (splits_) return splits_->test;
    const std::string& dir = trainer_->config().data.dir;
    return test_split(dir, trainer_->normalization_or_recomputed(dir));
  }

  std::optional<training::MnistSplits> splits_;
  std::unique_ptr<VitTrainer> trainer_;
};

class VitKind : public TaskKind {
 public:
  std::string name() const override { return "vit"; }
  nlohmann::json defaults() const override { return training::to_json(training::VitConfig{}); }
  nlohmann::json resolve(const nlohmann::json& config) const override {
    return training::to_json(training::vit_config_from_json(config));
  }
  std::unique_ptr<TaskRun> start(const nlohmann::json& config, const training::DataParallel& parallel) const override {
    return std::make_unique<VitRun>(training::vit_config_from_json(config), parallel);
  }
  std::unique_ptr<TaskRun> load(const std::string& checkpoint) const override {
    return std::make_unique<VitRun>(training::load_vit_run(checkpoint));
  }
  MetricColumn headline() const override { return {"test_accuracy", 2, 100}; }
  std::string legend() const override {
    return "test_accuracy in %; diagnostics: final model on 256 test images, last seed";
  }
  std::string describe_scores(const nlohmann::json& m) const override {
    if (!m.contains("test_accuracy")) return "";
    char line[128];
    std::snprintf(line, sizeof line, "test accuracy %.4f, test loss %.4f", m.value("test_accuracy", NAN),
                  m.value("test_loss", NAN));
    return line;
  }
  std::string describe_headline(const nlohmann::json& m) const override {
    char line[64];
    std::snprintf(line, sizeof line, "test accuracy %.4f", m.value("test_accuracy", NAN));
    return line;
  }
  std::string describe_epoch(const nlohmann::json& e) const override {
    char line[128];
    std::snprintf(line, sizeof line, "train loss %.4f  val accuracy %.4f  %.0f img/s", e.value("train_loss", 0.0),
                  e.value("val_accuracy", 0.0), e.value("images_per_second", 0.0));
    return line;
  }
  StepSize step_size(const nlohmann::json& config) const override {
    return {config.at("batch_size").get<int64_t>(), "img"};
  }
};

}  // namespace

std::shared_ptr<const TaskKind> vit_task_kind() { return std::make_shared<VitKind>(); }

}  // namespace quest::tasks
