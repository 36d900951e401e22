#include "quest/training/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <tuple>

#include "quest/data/idx.h"

namespace quest::training {

namespace fs = std::filesystem;

Dataset to_dataset(const torch::Tensor& images_u8, const torch::Tensor& labels, double mean,
                   double std) {
  TORCH_CHECK(images_u8.dim() == 3 && images_u8.scalar_type() == torch::kUInt8,
              "quest::training: expected uint8 images (N, H, W), got ", images_u8.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == images_u8.size(0),
              "quest::training: ", labels.numel(), " labels for ", images_u8.size(0), " images");
  return {(images_u8.unsqueeze(1).to(torch::kFloat) / 255.0 - mean) / std, labels};
}

MnistSplits load_mnist_splits(const std::string& dir, double val_fraction, uint64_t seed,
                              int64_t train_subset) {
  const data::ImageSet train = data::read_mnist_split(dir, "train");
  const data::ImageSet test = data::read_mnist_split(dir, "t10k");
  const auto pixels = train.images.to(torch::kFloat) / 255.0;
  MnistSplits out;
  out.mean = pixels.mean().item<double>();
  out.std = pixels.std().item<double>();
  Dataset all = to_dataset(train.images, train.labels, out.mean, out.std);
  if (train_subset > 0 && train_subset < all.size())
    all = {all.images.narrow(0, 0, train_subset), all.labels.narrow(0, 0, train_subset)};
  std::tie(out.train, out.validation) = split_validation(all, val_fraction, seed);
  out.test = to_dataset(test.images, test.labels, out.mean, out.std);
  return out;
}

std::unique_ptr<Trainer> load_run(const std::string& checkpoint) {
  TORCH_CHECK(fs::exists(checkpoint), "quest::training: checkpoint '", checkpoint, "' does not exist");
  const fs::path config_path = fs::path(checkpoint).parent_path() / "config.json";
  std::ifstream in(config_path);
  TORCH_CHECK(in, "quest::training: no config.json beside '", checkpoint, "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, "quest::training: '", config_path.string(), "': ", e.what());
  }
  auto trainer = std::make_unique<Trainer>(config_from_json(j));
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

torch::Tensor augment(const torch::Tensor& images, int64_t pad, bool flip, torch::Generator& gen) {
  const int64_t n = images.size(0), h = images.size(2), w = images.size(3);
  torch::Tensor out = images;
  if (pad > 0) {
    const auto padded = torch::constant_pad_nd(images, {pad, pad, pad, pad}, 0.0);
    const auto dy = torch::randint(0, 2 * pad + 1, {n}, gen, torch::kLong);
    const auto dx = torch::randint(0, 2 * pad + 1, {n}, gen, torch::kLong);
    out = torch::empty_like(images);
    const auto* oy = dy.data_ptr<int64_t>();
    const auto* ox = dx.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i)
      out[i] = padded[i].narrow(1, oy[i], h).narrow(2, ox[i], w);
  }
  if (flip) {
    const auto mask = torch::rand({n}, gen) < 0.5;
    out = torch::where(mask.view({n, 1, 1, 1}), out.flip({3}), out);
  }
  return out;
}

nlohmann::json to_json(const TrainConfig& c) {
  const auto& m = c.model;
  return {{"model",
           {{"image_size", m.image_size()}, {"channels", m.channels()}, {"patch_size", m.patch_size()},
            {"stem", m.stem()},
            {"num_classes", m.num_classes()}, {"dim", m.dim()}, {"depth", m.depth()},
            {"heads", m.heads()}, {"mlp_ratio", m.mlp_ratio()}, {"dropout", m.dropout()},
            {"attention_dropout", m.attention_dropout()}, {"drop_path", m.drop_path()},
            {"attention", to_string(m.attention())}, {"backend", to_string(m.backend())}}},
          {"epochs", c.epochs}, {"batch_size", c.batch_size}, {"train_subset", c.train_subset}, {"lr", c.lr}, {"min_lr", c.min_lr},
          {"weight_decay", c.weight_decay}, {"warmup_epochs", c.warmup_epochs},
          {"clip_grad_norm", c.clip_grad_norm}, {"label_smoothing", c.label_smoothing},
          {"augment", c.augment}, {"crop_padding", c.crop_padding}, {"flip", c.flip},
          {"seed", c.seed}, {"log_every", c.log_every}, {"run_dir", c.run_dir}};
}

// Keys absent from the file keep their defaults, so a config file can hold only what it changes;
// an unknown key is an error (a typo would otherwise be silently ignored).
TrainConfig config_from_json(const nlohmann::json& j) {
  TrainConfig c;
  const nlohmann::json defaults = to_json(c);
  TORCH_CHECK(j.is_object(), "quest::training: a config must be a JSON object");
  for (const auto& [key, value] : j.items()) {
    TORCH_CHECK(defaults.contains(key), "quest::training: unknown config key '", key, "'");
    if (key == "model") {
      TORCH_CHECK(value.is_object(), "quest::training: 'model' must be a JSON object");
      for (const auto& [mkey, mvalue] : value.items())
        TORCH_CHECK(defaults["model"].contains(mkey), "quest::training: unknown config key 'model.",
                    mkey, "'");
    }
  }
  nlohmann::json merged = defaults;
  merged.merge_patch(j);
  const auto& m = merged.at("model");
  const auto kind = parse_kind(m.at("attention").get<std::string>());
  TORCH_CHECK(kind, "quest::training: unknown attention kind '", m.at("attention").get<std::string>(), "'");
  const auto backend = parse_backend(m.at("backend").get<std::string>());
  TORCH_CHECK(backend, "quest::training: unknown backend '", m.at("backend").get<std::string>(), "'");
  c.model.image_size(m.at("image_size")).channels(m.at("channels")).patch_size(m.at("patch_size"))
      .stem(m.at("stem")).num_classes(m.at("num_classes")).dim(m.at("dim")).depth(m.at("depth"))
      .heads(m.at("heads")).mlp_ratio(m.at("mlp_ratio")).dropout(m.at("dropout"))
      .attention_dropout(m.at("attention_dropout")).drop_path(m.at("drop_path"))
      .attention(*kind).backend(*backend);
  c.epochs = merged.at("epochs");
  c.batch_size = merged.at("batch_size");
  c.train_subset = merged.at("train_subset");
  c.lr = merged.at("lr");
  c.min_lr = merged.at("min_lr");
  c.weight_decay = merged.at("weight_decay");
  c.warmup_epochs = merged.at("warmup_epochs");
  c.clip_grad_norm = merged.at("clip_grad_norm");
  c.label_smoothing = merged.at("label_smoothing");
  c.augment = merged.at("augment");
  c.crop_padding = merged.at("crop_padding");
  c.flip = merged.at("flip");
  c.seed = merged.at("seed");
  c.log_every = merged.at("log_every");
  c.run_dir = merged.at("run_dir");
  return c;
}

bool excluded_from_weight_decay(const std::string& name) {
  auto ends_with = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends_with("bias") || name.find("norm") != std::string::npos ||
         ends_with("pos_embed") || ends_with("cls_token") || ends_with("head_scale");
}

Trainer::Trainer(TrainConfig config) : config_(std::move(config)) {
  TORCH_CHECK(config_.epochs >= 1 && config_.batch_size >= 1 && config_.lr > 0,
              "quest::training: need epochs >= 1, batch_size >= 1 and lr > 0");
  torch::manual_seed(config_.seed);
  model_ = models::Vit(config_.model);
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : model_->named_parameters())
    (excluded_from_weight_decay(p.key()) ? no_decay : decay).push_back(p.value());
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(config_.lr).weight_decay(config_.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(config_.lr).weight_decay(0.0)));
  optimizer_ = std::make_unique<torch::optim::AdamW>(std::move(groups));
}

std::string checkpoint_path(const std::string& run_dir) {
  return (fs::path(run_dir) / "checkpoint.pt").string();
}

std::string Trainer::checkpoint_path() const { return training::checkpoint_path(config_.run_dir); }

double Trainer::learning_rate(int64_t step, int64_t steps_per_epoch) const {
  const double warmup = config_.warmup_epochs * steps_per_epoch;
  const double total = static_cast<double>(config_.epochs * steps_per_epoch);
  if (step < warmup) return config_.lr * (step + 1) / warmup;  // linear warmup
  const double progress = total > warmup ? (step - warmup) / (total - warmup) : 1.0;
  return config_.min_lr + 0.5 * (config_.lr - config_.min_lr) * (1 + std::cos(M_PI * progress));
}

void Trainer::set_learning_rate(double lr) {
  for (auto& group : optimizer_->param_groups())
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
}

void Trainer::log(const nlohmann::json& line) {
  if (config_.run_dir.empty()) return;
  std::ofstream(fs::path(config_.run_dir) / "metrics.jsonl", std::ios::app) << line.dump() << "\n";
}

void Trainer::trim_metrics() {
  if (config_.run_dir.empty()) return;
  const fs::path path = fs::path(config_.run_dir) / "metrics.jsonl";
  if (!fs::exists(path)) return;
  // Lines of epochs the checkpoint does not hold (a fresh start: all of them; a run killed mid-epoch:
  // that epoch's step lines) would be written again, so they go.
  std::vector<std::string> kept;
  if (epoch_ > 0) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      try {
        const auto j = nlohmann::json::parse(line);
        if (j.value("epoch", epoch_) < epoch_) kept.push_back(line);
      } catch (const nlohmann::json::exception&) {  // a line cut short by the kill
      }
    }
  }
  const std::string tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& line : kept) out << line << "\n";
  }
  fs::rename(tmp, path);
}

void Trainer::save_checkpoint(const std::string& path) {
  torch::serialize::OutputArchive archive;
  model_->save(archive);
  torch::serialize::OutputArchive optim;
  optimizer_->save(optim);
  archive.write("optimizer", optim);
  archive.write("epoch", torch::tensor(epoch_));
  archive.write("step", torch::tensor(step_));
  archive.write("rng", at::detail::getDefaultCPUGenerator().get_state());
  archive.write("train_seconds", torch::tensor(train_seconds_, torch::kDouble));
  const std::string tmp = path + ".tmp";
  archive.save_to(tmp);
  fs::rename(tmp, path);  // atomic on POSIX: the old checkpoint stays until the new one is whole
}

void Trainer::load_checkpoint(const std::string& path) {
  torch::serialize::InputArchive archive;
  archive.load_from(path);
  model_->load(archive);
  torch::serialize::InputArchive optim;
  archive.read("optimizer", optim);
  optimizer_->load(optim);
  torch::Tensor epoch, step, rng;  // read() needs a fresh tensor for each entry
  archive.read("epoch", epoch);
  archive.read("step", step);
  archive.read("rng", rng);
  epoch_ = epoch.item<int64_t>();
  step_ = step.item<int64_t>();
  torch::Tensor seconds;  // absent from checkpoints written before it was recorded
  train_seconds_ = archive.try_read("train_seconds", seconds) ? seconds.item<double>() : NAN;
  at::Generator global = at::detail::getDefaultCPUGenerator();  // a handle to the global one
  global.set_state(rng);
}

EvalResult Trainer::evaluate(const Dataset& data, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model_->eval();
  double loss = 0;
  int64_t correct = 0;
  for (int64_t i = 0; i < data.size(); i += batch_size) {
    const int64_t n = std::min(batch_size, data.size() - i);
    const auto logits = model_->forward(data.images.narrow(0, i, n));
    const auto labels = data.labels.narrow(0, i, n);
    loss += torch::nn::functional::cross_entropy(
                logits, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
    correct += logits.argmax(1).eq(labels).sum().item<int64_t>();
  }
  return {loss / data.size(), static_cast<double>(correct) / data.size()};
}

void Trainer::fit(const Dataset& train, const Dataset& validation, bool resume,
                  const std::function<void(const nlohmann::json&)>& on_step) {
  if (!config_.run_dir.empty()) {
    fs::create_directories(config_.run_dir);
    std::ofstream(fs::path(config_.run_dir) / "config.json") << to_json(config_).dump(2) << "\n";
  }
  if (resume && fs::exists(checkpoint_path())) load_checkpoint(checkpoint_path());
  trim_metrics();
  const int64_t steps_per_epoch = (train.size() + config_.batch_size - 1) / config_.batch_size;
  const auto ce = torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(config_.label_smoothing);
  while (epoch_ < config_.epochs) {
    const auto epoch_start = std::chrono::steady_clock::now();
    model_->train();
    // Everything random in an epoch derives from (seed, epoch): a resumed run repeats it exactly.
    auto gen = at::make_generator<at::CPUGeneratorImpl>(config_.seed * 1000003 + epoch_);
    torch::manual_seed(config_.seed * 7919 + epoch_);
    const auto order = torch::randperm(train.size(), gen);
    double loss_sum = 0;
    int64_t correct = 0;
    for (int64_t b = 0; b < steps_per_epoch; ++b, ++step_) {
      const auto idx = order.slice(0, b * config_.batch_size,
                                   std::min(train.size(), (b + 1) * config_.batch_size));
      auto images = train.images.index_select(0, idx);
      const auto labels = train.labels.index_select(0, idx);
      if (config_.augment) images = augment(images, config_.crop_padding, config_.flip, gen);
      const double lr = learning_rate(step_, steps_per_epoch);
      set_learning_rate(lr);
      const bool record = config_.log_every > 0 && step_ % config_.log_every == 0;
      model_->set_record_diagnostics(record);
      optimizer_->zero_grad();
      const auto logits = model_->forward(images);
      const auto loss = torch::nn::functional::cross_entropy(logits, labels, ce);
      const double loss_value = loss.item<double>();
      if (!std::isfinite(loss_value))
        throw DivergenceError("non-finite loss " + std::to_string(loss_value) + " at step " +
                              std::to_string(step_) + " (epoch " + std::to_string(epoch_) + ")");
      loss.backward();
      // With clipping off, an infinite bound still returns the total norm and scales nothing.
      const double grad_norm = torch::nn::utils::clip_grad_norm_(
          model_->parameters(), config_.clip_grad_norm > 0 ? config_.clip_grad_norm : INFINITY);
      if (!std::isfinite(grad_norm))
        throw DivergenceError("non-finite gradient norm at step " + std::to_string(step_) +
                              " (epoch " + std::to_string(epoch_) + ")");
      optimizer_->step();
      loss_sum += loss_value * idx.size(0);
      correct += logits.argmax(1).eq(labels).sum().item<int64_t>();
      if (record || on_step) {
        nlohmann::json line = {{"type", "step"}, {"epoch", epoch_}, {"step", step_},
                               {"loss", loss_value}, {"lr", lr}, {"grad_norm", grad_norm}};
        if (record) {
          nlohmann::json layers = nlohmann::json::array();
          for (const auto& d : model_->attention_diagnostics())
            if (d)
              layers.push_back({{"q_norm_mean", d->q_norm_mean}, {"q_norm_max", d->q_norm_max},
                                {"k_norm_mean", d->k_norm_mean}, {"k_norm_max", d->k_norm_max},
                                {"logit_abs_max", d->logit_abs_max}, {"entropy", d->entropy_mean}});
          line["attention"] = layers;
          log(line);
        }
        if (on_step) on_step(line);
      }
    }
    model_->set_record_diagnostics(false);
    const double epoch_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start).count();
    train_seconds_ += epoch_seconds;
    const EvalResult val = validation.size() > 0 ? evaluate(validation) : EvalResult{};
    log({{"type", "epoch"}, {"epoch", epoch_}, {"step", step_},
         {"train_loss", loss_sum / train.size()},
         {"train_accuracy", static_cast<double>(correct) / train.size()},
         {"val_loss", val.loss}, {"val_accuracy", val.accuracy},
         {"epoch_seconds", epoch_seconds}, {"images_per_second", train.size() / epoch_seconds},
         {"train_seconds", train_seconds_}});
    ++epoch_;  // the checkpoint records the next epoch to run
    if (!config_.run_dir.empty()) save_checkpoint(checkpoint_path());
  }
}

}  // namespace quest::training
