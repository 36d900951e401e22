#include "quest/lab/training/engine.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <functional>
#include <csignal>
#include <thread>

#include "quest/lab/training/optimizer.h"
#include "quest/torch/random.h"
#include "quest/torch/runtime.h"

namespace quest::training {

namespace fs = std::filesystem;

bool applies_weight_decay(const std::string& name, const torch::Tensor& parameter) {
  auto ends_with = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return parameter.dim() >= 2 && !ends_with("pos_embed") && !ends_with("cls_token") &&
         !ends_with("query_token");
}

std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int world) {
  TORCH_CHECK(world >= 1 && rank >= 0 && rank < world, "quest::training: shard ", rank, " of ", world);
  return {n * rank / world, n * (rank + 1) / world};
}

void DataParallel::check_batch(int64_t batch_size) const {
  TORCH_CHECK(!active() || batch_size >= group->world_size(), "quest::training: batch_size ", batch_size,
              " is the global batch: it must be at least the ", group->world_size(), " ranks");
}

EvalResult combine_shards(const EvalResult& mine, distributed::ProcessGroup& group, const std::string& what) {
  const double n = static_cast<double>(mine.samples);
  const auto s = group.sum({n > 0 ? mine.loss * n : 0.0, n > 0 ? mine.accuracy * n : 0.0, n}, what);
  return {s[2] > 0 ? s[0] / s[2] : NAN, s[2] > 0 ? s[1] / s[2] : NAN, static_cast<int64_t>(s[2])};
}

at::Generator init_generator(uint64_t seed) { return make_generator(seed); }
at::Generator data_generator(uint64_t seed, int64_t epoch) { return make_generator(seed * 1000003 + epoch); }
at::Generator model_generator(uint64_t seed, int64_t epoch) { return make_generator(seed * 7919 + epoch); }

namespace {

// Fault injection for the tests: QUEST_TEST_CRASH_CHECKPOINT=<when>:<epoch> kills the process
// while it writes the checkpoint that records <epoch> epochs, either after the temp file is
// whole but before the rename ("after-write") or with the temp file cut in half ("mid-write"),
// as a kill -9 or a power cut at those moments would.
void crash_for_test(const std::string& tmp, int64_t epoch) {
  static const char* spec = std::getenv("QUEST_TEST_CRASH_CHECKPOINT");
  if (!spec) return;
  const std::string s(spec), when = s.substr(0, s.find(':'));
  char* end = nullptr;
  const long long at = s.find(':') == std::string::npos ? -1 : std::strtoll(s.c_str() + s.find(':') + 1, &end, 10);
  if ((when != "after-write" && when != "mid-write") || at < 0 || *end != '\0')
    throw std::invalid_argument("QUEST_TEST_CRASH_CHECKPOINT='" + s +
                                "' is not after-write:<epoch> or mid-write:<epoch>");
  if (at != epoch) return;
  if (when == "mid-write") fs::resize_file(tmp, fs::file_size(tmp) / 2);
  std::fprintf(stderr, "QUEST_TEST_CRASH_CHECKPOINT: killing the process while writing '%s'\n", tmp.c_str());
  std::_Exit(137);  // no unwinding, no flushing: as abrupt as a kill
}

// Fault injection for the data-parallel tests: QUEST_TEST_RANK_FAULT=<kill|hang|throw>:<rank>:<step>
// makes that rank die by SIGKILL, stop answering, or fail with an error when it reaches that step.
void rank_fault_for_test(int rank, int64_t step) {
  static const char* spec = std::getenv("QUEST_TEST_RANK_FAULT");
  if (!spec) return;
  const std::string s(spec);
  const size_t a = s.find(':'), b = s.find(':', a == std::string::npos ? a : a + 1);
  const std::string what = s.substr(0, a);
  if (a == std::string::npos || b == std::string::npos || (what != "kill" && what != "hang" && what != "throw"))
    throw std::invalid_argument("QUEST_TEST_RANK_FAULT='" + s + "' is not <kill|hang|throw>:<rank>:<step>");
  if (std::stoi(s.substr(a + 1, b - a - 1)) != rank || std::stoll(s.substr(b + 1)) != step) return;
  std::fprintf(stderr, "QUEST_TEST_RANK_FAULT: rank %d %s at step %lld\n", rank, what.c_str(), (long long)step);
  if (what == "kill") raise(SIGKILL);
  if (what == "hang") for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  throw std::runtime_error("QUEST_TEST_RANK_FAULT: injected failure");
}

}  // namespace

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
  torch::serialize::OutputArchive archive;
  task_.model().save(archive);
  torch::serialize::OutputArchive optim;
  optimizer_->save(optim);
  archive.write("optimizer", optim);
  archive.write("epoch", torch::tensor(epoch_));
  archive.write("step", torch::tensor(step_));
  archive.write("train_seconds", torch::tensor(train_seconds_, torch::kDouble));
  task_.save_extra(archive);
  const std::string tmp = path + ".tmp";
  try {
    runs::save_archive(tmp, archive);
  } catch (const std::exception& e) {  // a full disk, a read-only directory: the old checkpoint stays
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw std::runtime_error("quest::training: cannot write checkpoint '" + tmp + "' (" +
                             error_message(e) + "); the previous checkpoint '" +
                             path + "' is unchanged");
  }
  crash_for_test(tmp, epoch_);
  fs::rename(tmp, path);  // atomic on POSIX: the old checkpoint stays until the new one is whole
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
  struct CheckpointError : std::runtime_error {
    using std::runtime_error::runtime_error;
  };
  auto fail = [&](const std::string& why) {
    throw CheckpointError("quest::training: checkpoint '" + path + "' cannot be loaded: " + why);
  };
  torch::serialize::InputArchive archive, optim;
  torch::Tensor epoch, step, seconds;  // read() needs a fresh tensor for each entry
  bool complete = false;
  try {  // LibTorch's archive reader throws c10::Error, torch::jit errors and std::runtime_error
    runs::load_archive_bytes(bytes, path, archive);
    complete = archive.try_read("epoch", epoch) && archive.try_read("step", step) &&
               archive.try_read("optimizer", optim);
  } catch (const std::exception& e) {
    fail("corrupt or truncated (" + error_message(e) + ")");
  }
  if (!complete) fail("it has no epoch, step or optimizer state (not a quest checkpoint?)");
  // Nothing is half-loaded: every tensor is read and checked before the first is copied, and the
  // optimiser state goes into a fresh optimiser that replaces the live one only at the end.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> model_tensors;  // (model's, checkpoint's)
  std::function<void(torch::serialize::InputArchive&, torch::nn::Module&, const std::string&)> read =
      [&](torch::serialize::InputArchive& in, torch::nn::Module& module, const std::string& prefix) {
        auto take = [&](const std::string& name, const torch::Tensor& mine, bool is_buffer) {
          torch::Tensor theirs;
          if (!in.try_read(name, theirs, is_buffer)) fail("it has no '" + prefix + name + "'");
          if (theirs.sizes() != mine.sizes())
            fail("'" + prefix + name + "' has shape " + c10::str(theirs.sizes()) + " there, " +
                 c10::str(mine.sizes()) + " in this model");
          model_tensors.emplace_back(mine, theirs);
        };
        for (const auto& p : module.named_parameters(/*recurse=*/false)) take(p.key(), p.value(), false);
        for (const auto& b : module.named_buffers(/*recurse=*/false)) take(b.key(), b.value(), true);
        for (const auto& child : module.named_children()) {
          torch::serialize::InputArchive sub;
          if (!in.try_read(child.key(), sub)) {
            // LibTorch's archive drops a child without state (a ReLU in a Sequential stem).
            if (child.value()->parameters().empty() && child.value()->buffers().empty()) continue;
            fail("it has no '" + prefix + child.key() + "'");
          }
          read(sub, *child.value(), prefix + child.key() + ".");
        }
      };
  auto optimizer = make_optimizer();
  std::string misfit;
  try {
    read(archive, task_.model(), "");
    optimizer->load(optim);
    task_.load_extra(archive);
  } catch (const c10::Error& e) {
    misfit = e.what_without_backtrace();
  } catch (const CheckpointError&) {  // ours, from read(): already names the file
    throw;
  } catch (const std::exception& e) {
    misfit = e.what();
  }
  if (!misfit.empty()) fail("it does not fit this model (" + misfit + ")");
  torch::NoGradGuard no_grad;
  for (auto& [mine, theirs] : model_tensors) mine.copy_(theirs);
  optimizer_ = std::move(optimizer);
  epoch_ = epoch.item<int64_t>();
  step_ = step.item<int64_t>();
  train_seconds_ = archive.try_read("train_seconds", seconds) ? seconds.item<double>() : NAN;
}

std::vector<std::optional<HeadDiagnostics>> Engine::diagnostics() const {
  auto layers = task_.attention_diagnostics();
  distributed::ProcessGroup* g = group();
  if (!g) return layers;
  // Every rank has the same layers and heads: pack maxima and means, one all-reduce each.
  std::vector<double> maxima, sums;
  for (const auto& d : layers)
    if (d)
      for (size_t h = 0; h < d->q_norm_max.size(); ++h) {
        maxima.insert(maxima.end(), {d->q_norm_max[h], d->k_norm_max[h], d->logit_abs_max[h]});
        sums.insert(sums.end(), {d->q_norm_mean[h], d->k_norm_mean[h], d->entropy_mean[h]});
      }
  maxima = g->max(maxima, "the attention diagnostics' all-reduce");
  sums = g->sum(sums, "the attention diagnostics' all-reduce");
  const double world = g->world_size();
  size_t i = 0;
  for (auto& d : layers)
    if (d)
      for (size_t h = 0; h < d->q_norm_max.size(); ++h, i += 3) {
        d->q_norm_max[h] = maxima[i], d->k_norm_max[h] = maxima[i + 1], d->logit_abs_max[h] = maxima[i + 2];
        d->q_norm_mean[h] = sums[i] / world, d->k_norm_mean[h] = sums[i + 1] / world,
        d->entropy_mean[h] = sums[i + 2] / world;
      }
  return layers;
}

nlohmann::json Engine::diagnostics_json(const std::vector<std::optional<HeadDiagnostics>>& layers) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& d : layers)
    if (d)
      out.push_back({{"q_norm_mean", d->q_norm_mean}, {"q_norm_max", d->q_norm_max},
                     {"k_norm_mean", d->k_norm_mean}, {"k_norm_max", d->k_norm_max},
                     {"logit_abs_max", d->logit_abs_max}, {"entropy", d->entropy_mean}});
  return out;
}

double Engine::all_reduce_step(StepOutput& out, double loss_value) {
  distributed::ProcessGroup& group = *this->group();
  const double n = static_cast<double>(out.samples);
  // The shard's summed loss: gradients summed over the ranks, then / N, are the global mean's.
  if (out.samples > 0) (out.loss * n).backward();
  std::vector<torch::Tensor> grads;
  for (auto& p : task_.model().parameters()) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);  // every rank sends every tensor
    grads.push_back(p.grad());
  }
  group.allreduce_sum(grads, "the gradient all-reduce");
  const auto s = group.sum({out.samples > 0 ? loss_value * n : 0.0, n, out.correct < 0 ? 0.0 : double(out.correct),
                            out.correct < 0 ? 1.0 : 0.0, std::isfinite(out.log_z) ? out.log_z * n : 0.0,
                            std::isfinite(out.log_z) || out.samples == 0 ? 0.0 : 1.0},
                           "the step's loss all-reduce");
  TORCH_CHECK(s[1] > 0, "quest::training: a global batch without samples");
  torch::NoGradGuard no_grad;
  for (auto& g : grads) g.div_(s[1]);
  out.samples = static_cast<int64_t>(s[1]);
  out.correct = s[3] > 0 ? -1 : static_cast<int64_t>(s[2]);
  out.log_z = s[5] > 0 ? NAN : s[4] / s[1];
  return s[0] / s[1];
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
    task_.forward_step(batch);
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

void Engine::fit_epochs(const std::function<void(const nlohmann::json&)>& on_step) {
  const runs::RunDir& dir = config_.run_dir;
  distributed::ProcessGroup* group = this->group();
  dir.trim_metrics(epoch_);
  LogitMonitor monitor(config_.logit_monitor);
  bool alerted = false;  // before the resume: once is enough
  for (const auto& line : dir.read_metrics("warning")) alerted |= line.value("warning", "") == "logit_growth";
  // Rank 0 holds the metrics: every rank's monitor must decide alike (policy stop ends them all).
  if (group) alerted = group->max({alerted ? 1.0 : 0.0}, "sharing the logit monitor's state")[0] > 0;
  if (alerted) monitor.mark_alerted();
  const int64_t steps_per_epoch = task_.steps_per_epoch();
  while (epoch_ < config_.epochs) {
    const auto epoch_start = std::chrono::steady_clock::now();
    const distributed::CommStats comm_before = group ? group->stats() : distributed::CommStats{};
    task_.model().train();
    task_.begin_epoch(epoch_, data_generator(config_.seed, epoch_));
    // Dropout and friends draw from the epoch's own generator: a resumed run repeats it exactly.
    // Data-parallel ranks draw their own (rank 0's is the one-process stream): shards get
    // independent masks.
    GeneratorScope randomness(model_generator(config_.seed + (group ? 1000003ULL * group->rank() : 0), epoch_));
    double loss_sum = 0;
    int64_t samples = 0, correct = 0;
    bool has_accuracy = true;
    for (int64_t b = 0; b < steps_per_epoch; ++b, ++step_) {
      const double lr = learning_rate(step_);
      set_learning_rate(lr);
      const bool record = config_.log_every > 0 && step_ % config_.log_every == 0;
      task_.record_diagnostics(record);
      optimizer_->zero_grad();
      if (group) {
        group->set_step(step_);
        rank_fault_for_test(group->rank(), step_);
      }
      StepOutput out = task_.forward_step(b);
      double loss_value = out.samples > 0 || !group ? out.loss.item<double>() : 0.0;
      if (group) loss_value = all_reduce_step(out, loss_value);  // every rank sees the same global loss
      if (!std::isfinite(loss_value)) diverged_in_step("non-finite loss " + std::to_string(loss_value), b);
      if (!group) out.loss.backward();
      // With clipping off, an infinite bound still returns the total norm and scales nothing.
      const double grad_norm = clip_grad_norm(task_.model().parameters(),
                                              config_.clip_grad_norm > 0 ? config_.clip_grad_norm : INFINITY);
      if (!std::isfinite(grad_norm)) diverged_in_step("non-finite gradient norm", b);
      optimizer_->step();
      task_.after_step(step_ + 1);
      if (group && config_.parallel.check_sync_every > 0 && (step_ + 1) % config_.parallel.check_sync_every == 0)
        group->check_identical(task_.model().named_parameters().pairs());
      loss_sum += loss_value * out.samples;
      samples += out.samples;
      if (out.correct < 0) has_accuracy = false;
      else correct += out.correct;
      const auto layers = record ? diagnostics() : std::vector<std::optional<HeadDiagnostics>>{};
      if (record || on_step) {
        nlohmann::json line = {{"type", "step"}, {"epoch", epoch_}, {"step", step_},
                               {"total_steps", config_.epochs * steps_per_epoch},
                               {"loss", loss_value}, {"lr", lr}, {"grad_norm", grad_norm}};
        if (std::isfinite(out.log_z)) line["log_z"] = out.log_z;
        if (record) {
          line["attention"] = diagnostics_json(layers);
          dir.append_metrics(line);
        }
        if (on_step) on_step(line);
      }
      if (record)
        if (const auto alert = monitor.observe(step_, layers)) {
          nlohmann::json warning = alert->to_json();
          warning["epoch"] = epoch_;
          warning["policy"] = to_string(config_.logit_monitor.policy);
          dir.append_metrics(warning);
          const std::string what = alert->message() + " (logit_monitor threshold " +
                                   std::to_string(static_cast<int64_t>(config_.logit_monitor.threshold)) + ")";
          if (config_.on_warning) config_.on_warning(what);
          else if (!group || group->rank() == 0) std::fprintf(stderr, "warning: %s\n", what.c_str());
          if (config_.logit_monitor.policy == MonitorPolicy::stop)
            diverged("stopped by the logit monitor: layer " + std::to_string(alert->layer) + " head " +
                     std::to_string(alert->head) + " max |logit| " + std::to_string(alert->logit));
        }
    }
    task_.record_diagnostics(false);
    // A finite loss and gradient can still leave non-finite weights (an overflowing update).
    for (const auto& p : task_.model().parameters())
      if (!torch::isfinite(p).all().item<bool>()) diverged("non-finite parameters after the epoch");
    if (group) group->check_identical(task_.model().named_parameters().pairs());
    const double epoch_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start).count();
    train_seconds_ += epoch_seconds;
    nlohmann::json line = {{"type", "epoch"}, {"epoch", epoch_}, {"step", step_},
                           {"train_loss", samples ? loss_sum / samples : NAN},
                           {"epoch_seconds", epoch_seconds},
                           {task_.sample_name() + "_per_second", samples / epoch_seconds},
                           {"train_seconds", train_seconds_}};
    if (has_accuracy) line["train_accuracy"] = samples ? static_cast<double>(correct) / samples : NAN;
    if (group) {  // what a reader needs to extrapolate to more ranks
      const distributed::CommStats& c = group->stats();
      line["world_size"] = group->world_size();
      line["allreduce_bytes_per_step"] = steps_per_epoch ? (c.bytes - comm_before.bytes) / steps_per_epoch : 0;
      line["allreduce_seconds"] = c.seconds - comm_before.seconds;
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
}

// The type a config value must have: that of its default (an integer where the default is one).
static void check_type(const std::string& key, const nlohmann::json& value, const nlohmann::json& like) {
  const char* expected = like.is_boolean()           ? "true or false"
                         : like.is_number_unsigned() ? "a non-negative integer"
                         : like.is_number_integer()  ? "an integer"
                         : like.is_number()         ? "a number"
                         : like.is_string()         ? "a string"
                                                    : nullptr;
  const bool ok = like.is_boolean()          ? value.is_boolean()
                  : like.is_number_integer() ? value.is_number_integer() && (!like.is_number_unsigned() || value >= 0)
                  : like.is_number()         ? value.is_number()
                  : like.is_string()         ? value.is_string()
                                             : true;
  TORCH_CHECK(ok, "quest::training: config key '", key, "' must be ", expected, ", got ", value.dump());
}

nlohmann::json merged_config(const nlohmann::json& defaults, const nlohmann::json& j) {
  TORCH_CHECK(j.is_object(), "quest::training: a config must be a JSON object");
  for (const auto& [key, value] : j.items()) {
    TORCH_CHECK(defaults.contains(key), "quest::training: unknown config key '", key, "'");
    if (defaults[key].is_object()) {
      TORCH_CHECK(value.is_object(), "quest::training: '", key, "' must be a JSON object");
      for (const auto& [sub, subvalue] : value.items()) {
        TORCH_CHECK(defaults[key].contains(sub), "quest::training: unknown config key '", key, ".",
                    sub, "'");
        check_type(key + "." + sub, subvalue, defaults[key][sub]);
      }
    } else {
      check_type(key, value, defaults[key]);
    }
  }
  nlohmann::json merged = defaults;
  merged.merge_patch(j);
  return merged;
}

nlohmann::json run_config_of(const std::string& checkpoint) {
  TORCH_CHECK(std::filesystem::exists(checkpoint), "quest::training: checkpoint '", checkpoint,
              "' does not exist");
  try {
    return runs::RunDir(std::filesystem::path(checkpoint).parent_path()).read_config();
  } catch (const std::runtime_error& e) {
    TORCH_CHECK(false, "quest::training: checkpoint '", checkpoint, "': ", e.what());
  }
}

}  // namespace quest::training
