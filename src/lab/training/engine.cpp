#include "quest/lab/training/engine.h"

#include <chrono>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <functional>

#include <ATen/autocast_mode.h>

#include "checkpoint.h"
#include "quest/core/fused.h"
#include "data_parallel.h"
#include "fault_points.h"
#include "quest/lab/training/optimizer.h"
#include "quest/torch/nn/multihead_attention.h"
#include "quest/torch/random.h"
#include "quest/torch/runtime.h"

namespace quest::training {

namespace fs = std::filesystem;

namespace {

// torch.autocast("cpu", dtype) for one scope, as Python's context manager does it: on entry the
// state is saved and set; on leaving the outermost one the cache of low-precision weight copies is
// cleared (stale after the optimiser's step) and the state restored.
class CpuAutocast {
 public:
  explicit CpuAutocast(std::optional<c10::ScalarType> dtype) : on_(dtype.has_value()) {
    if (!on_) return;
    enabled_ = at::autocast::is_autocast_enabled(at::kCPU);
    dtype_ = at::autocast::get_autocast_dtype(at::kCPU);
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, *dtype);
    at::autocast::increment_nesting();
  }
  ~CpuAutocast() {
    if (!on_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(at::kCPU, enabled_);
    at::autocast::set_autocast_dtype(at::kCPU, dtype_);
  }
  CpuAutocast(const CpuAutocast&) = delete;
  CpuAutocast& operator=(const CpuAutocast&) = delete;

 private:
  bool on_, enabled_ = false;
  c10::ScalarType dtype_ = c10::ScalarType::BFloat16;
};

}  // namespace

EngineConfig engine_config(const RunSettings& s, const DataParallel& parallel) {
  EngineConfig e;
  e.epochs = s.epochs;
  e.lr = s.lr;
  e.min_lr = s.min_lr;
  e.weight_decay = s.weight_decay;
  e.schedule = Schedule::warmup_cosine;
  e.warmup_epochs = s.warmup_epochs;
  e.clip_grad_norm = s.clip_grad_norm;
  e.z_loss = s.z_loss;
  e.qk_clip = s.qk_clip;
  e.autocast = autocast_dtype(s.autocast);
  e.seed = s.seed;
  e.log_every = s.log_every;
  e.logit_monitor = s.logit_monitor;
  e.run_dir = runs::RunDir(s.run_dir);
  e.parallel = parallel;
  return e;
}

torch::Tensor training_objective(const StepOutput& out, double z_loss) {
  if (!(z_loss > 0) || !out.log_partition.defined()) return out.loss;
  // At least float32: under autocast the classifier's log-partitions may be bfloat16.
  const auto dtype = c10::promoteTypes(out.log_partition.scalar_type(), torch::kFloat);
  return out.loss + z_loss * out.log_partition.to(dtype).square().mean();
}

bool applies_weight_decay(const std::string& name, const torch::Tensor& parameter) {
  auto ends_with = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return parameter.dim() >= 2 && !ends_with("pos_embed") && !ends_with("cls_token") &&
         !ends_with("query_token");
}

at::Generator init_generator(uint64_t seed) { return make_generator(seed); }
// Distinct odd multipliers keep the (seed, epoch) streams of data order and model randomness apart
// from each other and from the init stream (seed itself); their values are fixed by the runs
// already published, whose resume must replay them.
constexpr uint64_t kDataSeedStride = 1000003, kModelSeedStride = 7919;
// Data-parallel rank r draws its model randomness from seed + r * kRankSeedStride (rank 0: seed).
constexpr uint64_t kRankSeedStride = 1000003;
at::Generator data_generator(uint64_t seed, int64_t epoch) { return make_generator(seed * kDataSeedStride + epoch); }
at::Generator model_generator(uint64_t seed, int64_t epoch) { return make_generator(seed * kModelSeedStride + epoch); }

Engine::Engine(EngineConfig config, Task& task) : config_(std::move(config)), task_(task) {
  TORCH_CHECK(config_.epochs >= 1 && config_.lr > 0 && std::isfinite(config_.lr),
              "quest::training: need epochs >= 1 and a finite lr > 0");
  TORCH_CHECK(config_.weight_decay >= 0, "quest::training: weight_decay must be >= 0");
  if (const auto* g = group()) {
    TORCH_CHECK(task_.set_shard(g->rank(), g->world_size()),
                "quest::training: this task cannot train data-parallel (it does not shard its batches)");
    if (g->rank() != 0) config_.run_dir = runs::RunDir();  // rank 0 alone writes the run directory
  }
  task_.initialize(init_generator(config_.seed));
  optimizer_ = make_optimizer();
}

std::unique_ptr<torch::optim::AdamW> Engine::make_optimizer() const {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : task_.model().named_parameters())
    (applies_weight_decay(p.key(), p.value()) ? decay : no_decay).push_back(p.value());
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(config_.lr).weight_decay(config_.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(config_.lr).weight_decay(0.0)));
  return std::make_unique<FusedAdamW>(std::move(groups));
}

double Engine::learning_rate(int64_t step) const {
  if (config_.schedule == Schedule::constant) return config_.lr;
  const int64_t steps_per_epoch = task_.steps_per_epoch();
  const double warmup = config_.warmup_epochs * steps_per_epoch;
  const double total = static_cast<double>(config_.epochs * steps_per_epoch);
  if (step < warmup) return config_.lr * (step + 1) / warmup;  // linear warmup
  const double progress = total > warmup ? (step - warmup) / (total - warmup) : 1.0;
  return config_.min_lr + 0.5 * (config_.lr - config_.min_lr) * (1 + std::cos(M_PI * progress));
}

void Engine::set_learning_rate(double lr) {
  for (auto& group : optimizer_->param_groups())
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
}

void Engine::save_checkpoint(const std::string& path) const {
  write_checkpoint(path, task_, *optimizer_, {epoch_, step_, train_seconds_});
}

void Engine::load_checkpoint(const std::string& path) {
  std::string bytes;
  try {
    bytes = runs::read_archive_file(path);
  } catch (const std::exception& e) {
    throw std::runtime_error("quest::training: checkpoint '" + path + "' cannot be loaded: " + e.what());
  }
  load_checkpoint_bytes(bytes, path);
}

void Engine::load_checkpoint_bytes(const std::string& bytes, const std::string& path) {
  auto optimizer = make_optimizer();
  const CheckpointProgress progress = read_checkpoint(bytes, path, task_, *optimizer);
  optimizer_ = std::move(optimizer);
  epoch_ = progress.epoch;
  step_ = progress.step;
  train_seconds_ = progress.train_seconds;
}

std::vector<std::optional<HeadDiagnostics>> Engine::diagnostics() const {
  auto layers = task_.attention_diagnostics();
  if (distributed::ProcessGroup* g = group()) all_reduce_diagnostics(layers, *g);
  return layers;
}

nlohmann::json Engine::diagnostics_json(const std::vector<std::optional<HeadDiagnostics>>& layers) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& d : layers)
    if (d)
      out.push_back({{"q_norm_mean", d->q_norm_mean}, {"q_norm_max", d->q_norm_max},
                     {"k_norm_mean", d->k_norm_mean}, {"k_norm_max", d->k_norm_max},
                     {"logit_abs_max", d->logit_abs_max}, {"logit_max", d->logit_max},
                     {"entropy", d->entropy_mean}});
  return out;
}

void Engine::diverged(const std::string& what) const {
  throw DivergenceError(what + " at step " + std::to_string(step_) + " (epoch " +
                        std::to_string(epoch_) + ")");
}

void Engine::diverged_in_step(const std::string& what, int64_t batch) {
  nlohmann::json line = {{"type", "diverged"}, {"epoch", epoch_}, {"step", step_}, {"reason", what}};
  std::string where;
  try {
    torch::NoGradGuard no_grad;
    task_.record_diagnostics(true);
    {
      CpuAutocast autocast(config_.autocast);  // the step's forward as it ran
      task_.forward_step(batch);
    }
    const auto layers = task_.attention_diagnostics();  // this rank's: no collective on the way out
    line["attention"] = diagnostics_json(layers);
    for (size_t l = 0; l < layers.size() && where.empty(); ++l) {
      if (!layers[l]) continue;
      const HeadDiagnostics& d = *layers[l];
      for (size_t h = 0; h < d.logit_abs_max.size() && where.empty(); ++h)
        if (!std::isfinite(d.q_norm_max[h]) || !std::isfinite(d.k_norm_max[h]) ||
            !std::isfinite(d.logit_abs_max[h]) || !std::isfinite(d.entropy_mean[h]))
          where = "; first non-finite attention: layer " + std::to_string(l) + " head " +
                  std::to_string(h);
    }
  } catch (const std::exception& e) {  // the report must not hide the divergence itself
    line["diagnostics_error"] = e.what();
  }
  task_.record_diagnostics(false);
  try {
    config_.run_dir.append_metrics(line);
  } catch (const std::exception&) {  // a full disk must not turn the divergence into another error
  }
  diverged(what + where);
}

void Engine::fit(bool resume, const std::function<void(const nlohmann::json&)>& on_step) {
  const runs::RunDir& dir = config_.run_dir;
  distributed::ProcessGroup* group = this->group();
  try {
    dir.create();
    if (group) {  // rank 0 decides and shares its checkpoint: ranks need no shared file system
      std::string bytes = "0";
      if (group->rank() == 0 && resume && dir.has_checkpoint())
        bytes = "1" + runs::read_archive_file(dir.checkpoint());
      bytes = group->broadcast(bytes, "sharing rank 0's checkpoint");
      if (bytes[0] == '1') load_checkpoint_bytes(bytes.substr(1), "rank 0's " + dir.checkpoint().string());
      group->set_step(step_);
      group->check_identical(task_.model().named_parameters().pairs());
    } else if (resume && dir.has_checkpoint()) {
      load_checkpoint(dir.checkpoint().string());
    }
    fit_epochs(on_step);
  } catch (const distributed::DistributedError&) {
    throw;  // a peer's failure: already names the rank and the step
  } catch (const DivergenceError&) {
    throw;  // every rank sees the same global loss, gradient and parameters: all stop together
  } catch (const std::exception& e) {
    if (group) group->report_failure(e.what());  // the others' error messages will quote it
    throw;
  }
}

// --- the loop: one epoch is begin, steps, end; one step is train, check, update, log -----------

void Engine::fit_epochs(const std::function<void(const nlohmann::json&)>& on_step) {
  const runs::RunDir& dir = config_.run_dir;
  distributed::ProcessGroup* group = this->group();
  dir.trim_metrics(epoch_);
  if (config_.parallel.writes()) {  // what this segment of the run ran on: results carry their machine
    int64_t parameters = 0;
    for (const auto& p : task_.model().parameters()) parameters += p.numel();
    dir.append_segment({{"epoch", epoch_}, {"step", step_}, {"parameters", parameters},
                        {"simd_target", fused::simd_target()}, {"threads", at::get_num_threads()},
                        {"world", group ? group->world_size() : 1}, {"torch", torch_version()}},
                       /*fresh=*/epoch_ == 0);
  }
  LogitMonitor monitor(config_.logit_monitor);
  bool alerted = false;  // before the resume: once is enough
  for (const auto& line : dir.read_metrics("warning")) alerted |= line.value("warning", "") == "logit_growth";
  // Rank 0 holds the metrics: every rank's monitor must decide alike (policy stop ends them all).
  if (group) alerted = group->max({alerted ? 1.0 : 0.0}, "sharing the logit monitor's state")[0] > 0;
  if (alerted) monitor.mark_alerted();
  const int64_t steps_per_epoch = task_.steps_per_epoch();
  while (epoch_ < config_.epochs) {
    EpochTotals totals;
    totals.start = std::chrono::steady_clock::now();
    totals.comm_before = group ? group->stats() : distributed::CommStats{};
    task_.model().train();
    task_.begin_epoch(epoch_, data_generator(config_.seed, epoch_));
    // Dropout and friends draw from the epoch's own generator: a resumed run repeats it exactly.
    // Data-parallel ranks draw their own (rank 0's is the one-process stream): shards get
    // independent masks.
    GeneratorScope randomness(model_generator(config_.seed + kRankSeedStride * (group ? group->rank() : 0), epoch_));
    for (int64_t b = 0; b < steps_per_epoch; ++b, ++step_) {
      StepResult r = train_step(b);
      check_finite(r, b);
      r.qk_clipped = update();
      log_step(r, monitor, on_step);
      totals.add(r);
    }
    end_epoch(totals);
  }
}

void Engine::EpochTotals::add(const StepResult& r) {
  loss_sum += r.loss * r.samples;
  samples += r.samples;
  if (r.correct < 0) has_accuracy = false;
  else correct += r.correct;
}

Engine::StepResult Engine::train_step(int64_t batch) {
  distributed::ProcessGroup* group = this->group();
  StepResult r;
  r.lr = learning_rate(step_);
  set_learning_rate(r.lr);
  r.record = config_.log_every > 0 && step_ % config_.log_every == 0;
  task_.record_diagnostics(r.record || config_.qk_clip > 0);  // QK-clip reads every step's
  optimizer_->zero_grad();
  if (group) {
    group->set_step(step_);
    FaultSite site;
    site.rank = group->rank();
    site.step = step_;
    fault_point(FaultPoint::step_started, site);
  }
  StepOutput out;
  {
    CpuAutocast autocast(config_.autocast);
    out = task_.forward_step(batch);
  }
  r.loss = out.samples > 0 || !group ? out.loss.item<double>() : 0.0;
  if (out.log_partition.defined() && out.samples > 0) {
    out.log_z = out.log_partition.detach().mean().item<double>();
    out.loss = training_objective(out, config_.z_loss);
  }
  if (group) {
    r.loss = all_reduce_step(*group, task_.model(), out, r.loss, config_.parallel);  // every rank: the global loss
  } else if (std::isfinite(r.loss)) {
    out.loss.backward();
  }
  r.samples = out.samples;
  r.correct = out.correct;
  r.log_z = out.log_z;
  if (!std::isfinite(r.loss)) return r;  // check_finite stops here
  // With clipping off, an infinite bound still returns the total norm and scales nothing.
  r.grad_norm = clip_grad_norm(task_.model().parameters(),
                               config_.clip_grad_norm > 0 ? config_.clip_grad_norm : INFINITY);
  return r;
}

void Engine::check_finite(const StepResult& r, int64_t batch) {
  if (!std::isfinite(r.loss)) diverged_in_step("non-finite loss " + std::to_string(r.loss), batch);
  if (!std::isfinite(r.grad_norm)) diverged_in_step("non-finite gradient norm", batch);
}

int64_t Engine::update() {
  optimizer_->step();
  const int64_t clipped = config_.qk_clip > 0 ? clip_qk() : -1;
  task_.after_step(step_ + 1);
  distributed::ProcessGroup* group = this->group();
  if (group && config_.parallel.check_sync_every > 0 && (step_ + 1) % config_.parallel.check_sync_every == 0)
    group->check_identical(task_.model().named_parameters().pairs());
  return clipped;
}

int64_t Engine::clip_qk() {
  std::vector<nn::MultiheadAttentionImpl*> layers;
  std::vector<double> maxima;
  for (const auto& m : task_.model().modules(/*include_self=*/true))
    if (auto* a = dynamic_cast<nn::MultiheadAttentionImpl*>(m.get())) {
      TORCH_CHECK(a->last_diagnostics(), "quest::training: qk_clip needs the attention's diagnostics of every step");
      layers.push_back(a);
      const auto& s = a->last_diagnostics()->logit_max;
      maxima.insert(maxima.end(), s.begin(), s.end());
    }
  if (distributed::ProcessGroup* group = this->group()) maxima = group->max(maxima, "QK-clip's max logits");
  int64_t clipped = 0;
  size_t i = 0;
  for (auto* a : layers) {
    const size_t heads = a->last_diagnostics()->logit_max.size();
    clipped += a->clip_qk(std::vector<double>(maxima.begin() + i, maxima.begin() + i + heads), config_.qk_clip);
    i += heads;
  }
  return clipped;
}

void Engine::log_step(const StepResult& r, LogitMonitor& monitor,
                      const std::function<void(const nlohmann::json&)>& on_step) {
  const runs::RunDir& dir = config_.run_dir;
  const auto layers = r.record ? diagnostics() : std::vector<std::optional<HeadDiagnostics>>{};
  if (r.record || on_step) {
    nlohmann::json line = {{"type", "step"}, {"epoch", epoch_}, {"step", step_},
                           {"total_steps", config_.epochs * task_.steps_per_epoch()},
                           {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm}};
    if (std::isfinite(r.log_z)) line["log_z"] = r.log_z;
    if (r.qk_clipped >= 0) line["qk_clipped"] = r.qk_clipped;
    if (r.record) {
      line["attention"] = diagnostics_json(layers);
      dir.append_metrics(line);
    }
    if (on_step) on_step(line);
  }
  if (!r.record) return;
  const auto alert = monitor.observe(step_, layers);
  if (!alert) return;
  nlohmann::json warning = alert->to_json();
  warning["epoch"] = epoch_;
  warning["policy"] = to_string(config_.logit_monitor.policy);
  dir.append_metrics(warning);
  const std::string what = alert->message() + " (logit_monitor threshold " +
                           std::to_string(static_cast<int64_t>(config_.logit_monitor.threshold)) + ")";
  distributed::ProcessGroup* group = this->group();
  if (config_.on_warning) config_.on_warning(what);
  else if (!group || group->rank() == 0) std::fprintf(stderr, "warning: %s\n", what.c_str());
  if (config_.logit_monitor.policy == MonitorPolicy::stop)
    diverged("stopped by the logit monitor: layer " + std::to_string(alert->layer) + " head " +
             std::to_string(alert->head) + " max |logit| " + std::to_string(alert->logit));
}

void Engine::end_epoch(const EpochTotals& totals) {
  const runs::RunDir& dir = config_.run_dir;
  distributed::ProcessGroup* group = this->group();
  const int64_t steps_per_epoch = task_.steps_per_epoch();
  task_.record_diagnostics(false);
  // A finite loss and gradient can still leave non-finite weights (an overflowing update).
  for (const auto& p : task_.model().parameters())
    if (!torch::isfinite(p).all().item<bool>()) diverged("non-finite parameters after the epoch");
  if (group) group->check_identical(task_.model().named_parameters().pairs());
  const double epoch_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - totals.start).count();
  train_seconds_ += epoch_seconds;
  const int64_t samples = totals.samples;
  nlohmann::json line = {{"type", "epoch"}, {"epoch", epoch_}, {"step", step_},
                         {"train_loss", samples ? totals.loss_sum / samples : NAN},
                         {"epoch_seconds", epoch_seconds},
                         {task_.sample_name() + "_per_second", samples / epoch_seconds},
                         {"train_seconds", train_seconds_}};
  if (totals.has_accuracy)
    line["train_accuracy"] = samples ? static_cast<double>(totals.correct) / samples : NAN;
  if (group) {  // what a reader needs to extrapolate to more ranks
    const distributed::CommStats& c = group->stats();
    line["world_size"] = group->world_size();
    line["allreduce_bytes_per_step"] =
        steps_per_epoch ? (c.bytes - totals.comm_before.bytes) / steps_per_epoch : 0;
    line["allreduce_seconds"] = c.seconds - totals.comm_before.seconds;
  }
  if (auto val = task_.validate()) {
    if (group) *val = combine_shards(*val, *group, "the validation all-reduce");
    line["val_loss"] = val->loss;
    line["val_accuracy"] = val->accuracy;
  }
  dir.append_metrics(line);
  ++epoch_;  // the checkpoint records the next epoch to run
  if (!dir.empty()) save_checkpoint(dir.checkpoint().string());
}

}  // namespace quest::training
