#include "quest/lab/experiments/spurious.h"

#include "quest/lab/training/engine.h"
#include "quest/torch/runtime.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <mutex>
#include <thread>

namespace quest::experiments {

namespace {

models::RetrievalModelOptions model_options(const SpuriousRunConfig& c) {
  auto o = c.model;
  o.key_dim(c.task.key_dim).classes(c.task.classes);
  return o;
}

double accuracy(models::RetrievalModel& model, const data::RetrievalBatch& set) {
  return model->forward(set.keys, set.codes).argmax(1).eq(set.labels).to(torch::kDouble).mean().item<double>();
}

// Key-norm statistics of one probe split: (answer mean, ordinary mean, accuracy, loss, probe).
struct ProbeStats {
  double answer_norm, ordinary_norm, accuracy, loss;
  models::RetrievalProbe probe;
};

ProbeStats probe_split(models::RetrievalModel& model, const data::RetrievalBatch& set) {
  auto p = model->probe(set.keys, set.codes);
  const int64_t B = set.keys.size(0), N = set.keys.size(1);
  const auto answer = p.key_norms.gather(1, set.answer.unsqueeze(1)).squeeze(1);
  const double answer_sum = answer.sum().item<double>();
  const double total = p.key_norms.sum().item<double>();
  return {answer_sum / B, (total - answer_sum) / (B * (N - 1)),
          p.logits.argmax(1).eq(set.labels).to(torch::kDouble).mean().item<double>(),
          torch::cross_entropy_loss(p.logits, set.labels).item<double>(), p};
}

SpuriousPoint measure(models::RetrievalModel& model, const SpuriousEvalSets& eval, int64_t step) {
  torch::NoGradGuard no_grad;
  model->eval();
  const auto b = probe_split(model, eval.probe_biased);
  const auto u = probe_split(model, eval.probe_unbiased);
  model->train();
  SpuriousPoint p;
  p.step = step;
  p.loss = 0.5 * (b.loss + u.loss);
  p.key_norm_biased = b.answer_norm;
  p.key_norm_unbiased = u.answer_norm;
  p.key_norm_ordinary = 0.5 * (b.ordinary_norm + u.ordinary_norm);
  p.query_norm = 0.5 * (b.probe.query_norm.mean().item<double>() + u.probe.query_norm.mean().item<double>());
  p.max_logit = std::max(b.probe.max_logit, u.probe.max_logit);
  p.entropy = 0.5 * (b.probe.entropy + u.probe.entropy);
  p.accuracy_biased = b.accuracy;
  p.accuracy_unbiased = u.accuracy;
  return p;
}

bool same_task(const data::RetrievalTaskOptions& a, const data::RetrievalTaskOptions& b) {
  return a.tokens == b.tokens && a.key_dim == b.key_dim && a.classes == b.classes &&
         a.bias_probability == b.bias_probability && a.high_variance == b.high_variance &&
         a.low_variance == b.low_variance && a.bias_scale == b.bias_scale && a.bias_noise == b.bias_noise;
}

}  // namespace

SpuriousEvalSets make_eval_sets(const data::RetrievalTaskOptions& task, int64_t eval_size, int64_t probe_size) {
  TORCH_CHECK(eval_size >= 1 && probe_size >= 1, "spurious experiment: eval_size and probe_size must be >= 1");
  // One fixed stream, independent of every run's seed, so all runs are scored on the same samples.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(20260331);
  using data::RetrievalSplit;
  SpuriousEvalSets s;
  s.biased = data::generate_retrieval(task, RetrievalSplit::biased, eval_size, gen);
  s.unbiased = data::generate_retrieval(task, RetrievalSplit::unbiased, eval_size, gen);
  s.conflicting = data::generate_retrieval(task, RetrievalSplit::conflicting, eval_size, gen);
  s.probe_biased = data::generate_retrieval(task, RetrievalSplit::biased, probe_size, gen);
  s.probe_unbiased = data::generate_retrieval(task, RetrievalSplit::unbiased, probe_size, gen);
  auto oracle = [&](const data::RetrievalBatch& b) {
    return data::oracle_predictions(task, b).eq(b.labels).to(torch::kDouble).mean().item<double>();
  };
  s.oracle_biased = oracle(s.biased);
  s.oracle_unbiased = oracle(s.unbiased);
  s.oracle_conflicting = oracle(s.conflicting);
  return s;
}

// The retrieval toy on the training engine: fresh samples every step, a trajectory point every
// log_every steps.
class SpuriousTask : public training::Task {
 public:
  SpuriousTask(const SpuriousRunConfig& c, const SpuriousEvalSets& e, SpuriousRunResult& r)
      : config(c), eval(e), result(r), net(model_options(c)) {}
  torch::nn::Module& model() override { return *net; }
  void initialize(at::Generator generator) override { net->initialize(generator); }
  int64_t steps_per_epoch() const override { return config.steps; }
  void begin_epoch(int64_t, at::Generator data_generator) override { gen = data_generator; }
  training::StepOutput forward_step(int64_t) override {
    const auto batch = data::generate_retrieval(config.task, data::RetrievalSplit::training, config.batch_size, gen);
    return {torch::cross_entropy_loss(net->forward(batch.keys, batch.codes), batch.labels), config.batch_size, -1, {}};
  }
  void after_step(int64_t step) override {
    result.steps_done = step;
    if (step % config.log_every == 0 || step == config.steps) result.trajectory.push_back(measure(net, eval, step));
  }

  const SpuriousRunConfig& config;
  const SpuriousEvalSets& eval;
  SpuriousRunResult& result;
  models::RetrievalModel net;
  at::Generator gen;
};

SpuriousRunResult run_spurious(const SpuriousRunConfig& c, const SpuriousEvalSets& eval) {
  data::validate(c.task);
  TORCH_CHECK(c.lr > 0 && std::isfinite(c.lr), "spurious experiment: lr must be > 0, got ", c.lr);
  TORCH_CHECK(c.weight_decay >= 0, "spurious experiment: weight_decay must be >= 0, got ", c.weight_decay);
  TORCH_CHECK(c.steps >= 1 && c.batch_size >= 1 && c.log_every >= 1,
              "spurious experiment: steps, batch_size and log_every must be >= 1");
  const auto start = std::chrono::steady_clock::now();
  SpuriousRunResult r;
  r.config = c;
  SpuriousTask task(c, eval, r);
  training::EngineConfig e;
  e.epochs = 1;  // one pass of `steps` steps over fresh samples
  e.lr = c.lr;
  e.weight_decay = c.weight_decay;
  e.schedule = training::Schedule::constant;
  e.seed = c.seed;
  e.log_every = 0;
  training::Engine engine(e, task);
  r.trajectory.push_back(measure(task.net, eval, 0));
  try {
    engine.fit(false);
  } catch (const training::DivergenceError&) {
    r.diverged = true;
  }
  {
    torch::NoGradGuard no_grad;
    task.net->eval();
    r.accuracy_biased = accuracy(task.net, eval.biased);
    r.accuracy_unbiased = accuracy(task.net, eval.unbiased);
    r.accuracy_conflicting = accuracy(task.net, eval.conflicting);
  }
  r.success = !r.diverged && r.accuracy_unbiased >= c.unbiased_threshold &&
              r.accuracy_conflicting >= c.conflicting_threshold;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

std::vector<SpuriousRunResult> run_spurious_grid(const std::vector<SpuriousRunConfig>& grid,
                                                 const SpuriousEvalSets& eval, int workers,
                                                 const std::function<void(size_t, const SpuriousRunResult&)>& on_done) {
  std::vector<SpuriousRunResult> results(grid.size());
  if (grid.empty()) return results;
  for (const auto& c : grid)
    TORCH_CHECK(same_task(c.task, grid[0].task) && c.eval_size == grid[0].eval_size &&
                    c.probe_size == grid[0].probe_size,
                "spurious experiment: every run of a grid must share the task and the evaluation sizes");
  TORCH_CHECK(eval.biased.keys.size(0) == grid[0].eval_size && eval.probe_biased.keys.size(0) == grid[0].probe_size &&
                  eval.biased.keys.size(1) == grid[0].task.tokens && eval.biased.keys.size(2) == grid[0].task.key_dim &&
                  eval.biased.codes.size(2) == grid[0].task.classes,
              "spurious experiment: the evaluation sets were made for another task or size");
  workers = std::max(1, std::min<int>(workers, static_cast<int>(grid.size())));
  std::atomic<size_t> next{0};
  std::mutex done_mutex;
  std::exception_ptr error;
  auto work = [&] {
    at::set_num_threads(1);  // tiny tensors: one thread per run, runs side by side
    for (size_t i; (i = next++) < grid.size();) {
      try {
        results[i] = run_spurious(grid[i], eval);
      } catch (...) {
        std::lock_guard<std::mutex> lock(done_mutex);
        if (!error) error = std::current_exception();
        next = grid.size();
        return;
      }
      std::lock_guard<std::mutex> lock(done_mutex);
      if (on_done) on_done(i, results[i]);
    }
  };
  const int previous_threads = at::get_num_threads();
  // Concurrent callers of a multi-threaded OpenBLAS queue on its pool (measured on Debian's
  // OpenBLAS: two workers were then slower than one); a no-op on other BLAS.
  const int previous_blas_threads = workers > 1 ? set_blas_threads(1) : -1;
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) threads.emplace_back(work);
  for (auto& t : threads) t.join();
  at::set_num_threads(previous_threads);
  if (previous_blas_threads > 0) set_blas_threads(previous_blas_threads);
  if (error) std::rethrow_exception(error);
  return results;
}

nlohmann::json to_json(const SpuriousRunConfig& c) {
  const auto& t = c.task;
  const auto& m = c.model;
  return {{"task",
           {{"tokens", t.tokens}, {"key_dim", t.key_dim}, {"classes", t.classes},
            {"bias_probability", t.bias_probability}, {"high_variance", t.high_variance},
            {"low_variance", t.low_variance}, {"bias_scale", t.bias_scale}, {"bias_noise", t.bias_noise}}},
          {"model",
           {{"attention", to_string(m.attention())}, {"projections", m.projections()}, {"queries", to_string(m.queries())}, {"dim", m.dim()},
            {"heads", m.heads()}, {"hidden", m.hidden()}, {"backend", to_string(m.backend())}}},
          {"lr", c.lr}, {"weight_decay", c.weight_decay}, {"steps", c.steps}, {"batch_size", c.batch_size},
          {"log_every", c.log_every}, {"eval_size", c.eval_size}, {"probe_size", c.probe_size},
          {"seed", c.seed}, {"unbiased_threshold", c.unbiased_threshold},
          {"conflicting_threshold", c.conflicting_threshold}};
}

nlohmann::json to_json(const SpuriousRunResult& r) {
  nlohmann::json trajectory = nlohmann::json::array();
  for (const auto& p : r.trajectory)
    trajectory.push_back({{"step", p.step}, {"loss", p.loss}, {"key_norm_biased", p.key_norm_biased},
                          {"key_norm_unbiased", p.key_norm_unbiased}, {"key_norm_ordinary", p.key_norm_ordinary},
                          {"query_norm", p.query_norm}, {"max_logit", p.max_logit}, {"entropy", p.entropy},
                          {"accuracy_biased", p.accuracy_biased}, {"accuracy_unbiased", p.accuracy_unbiased}});
  return {{"config", to_json(r.config)},
          {"accuracy_biased", r.accuracy_biased},
          {"accuracy_unbiased", r.accuracy_unbiased},
          {"accuracy_conflicting", r.accuracy_conflicting},
          {"success", r.success},
          {"diverged", r.diverged},
          {"steps_done", r.steps_done},
          {"seconds", r.seconds},
          {"trajectory", trajectory}};
}

}  // namespace quest::experiments
