#include "quest/lab/runs/compare.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <stdexcept>

namespace quest::runs {

namespace fs = std::filesystem;

std::vector<RunSpec> plan_runs(const std::vector<std::string>& kinds, const std::vector<uint64_t>& seeds,
                               const std::string& out_dir, const std::function<void(RunSpec&)>& fill) {
  for (size_t i = 0; i < kinds.size(); ++i) {
    if (!parse_kind(kinds[i])) throw std::invalid_argument("--kinds: unknown kind '" + kinds[i] + "'");
    for (size_t j = 0; j < i; ++j)
      if (kinds[j] == kinds[i]) throw std::invalid_argument("--kinds: '" + kinds[i] + "' is listed twice");
  }
  for (size_t i = 0; i < seeds.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (seeds[j] == seeds[i])
        throw std::invalid_argument("--seeds: " + std::to_string(seeds[i]) + " is listed twice");
  std::vector<RunSpec> plan;
  for (const std::string& kind : kinds)
    for (uint64_t seed : seeds) {
      RunSpec run;
      run.kind = kind;
      run.seed = seed;
      run.run_dir = (fs::path(out_dir) / kind / ("seed-" + std::to_string(seed))).string();
      fill(run);
      plan.push_back(std::move(run));
    }
  return plan;
}

std::vector<RunSpec> plan_compare(const training::TrainConfig& base, const std::vector<std::string>& kinds,
                                  const std::vector<uint64_t>& seeds, const std::string& out_dir,
                                  const DataSource& data) {
  return plan_runs(kinds, seeds, out_dir, [&](RunSpec& run) {
    training::TrainConfig config = base;
    config.model.attention(*parse_kind(run.kind));
    config.seed = run.seed;
    config.run_dir = run.run_dir;
    run.epochs = config.epochs;
    run.config = training::to_json(config);
    run.command = {"train", "--data-dir", data.dir, "--val-fraction", nlohmann::json(data.val_fraction).dump()};
    run.train = [config, data](bool resume, const std::function<void(const nlohmann::json&)>& on_step) {
      TrainCallbacks callbacks;
      callbacks.on_step = on_step;
      return train_run(config, data, resume, callbacks).outcome;
    };
  });
}

TrainReport train_run(const training::TrainConfig& config, const DataSource& data, bool resume,
                      const TrainCallbacks& callbacks, const training::DataParallel& parallel) {
  const RunDir dir(parallel.writes() ? config.run_dir : "");
  TrainReport report;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    const training::MnistSplits splits =
        training::load_mnist_splits(data.dir, data.val_fraction, config.seed, config.train_subset);
    if (callbacks.on_data) callbacks.on_data(splits);
    training::Trainer trainer(config, parallel);
    trainer.set_normalization({splits.mean, splits.std});
    try {
      trainer.fit(splits.train, splits.validation, resume, callbacks.on_step);
    } catch (const training::DivergenceError& e) {
      report.outcome = {RunStatus::diverged, e.what()};
      report.diagnostics = trainer.model()->attention_diagnostics();
    }
    report.epoch = trainer.epoch();
    report.checkpoint_kept = RunDir(config.run_dir).has_checkpoint();
    report.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (report.outcome.status == RunStatus::ok && callbacks.evaluate_test) {
      report.test = trainer.evaluate(splits.test);
      if (!dir.empty())
        dir.write_result({{"test_accuracy", report.test.accuracy}, {"test_loss", report.test.loss},
                          {"wall_seconds", report.wall_seconds}, {"config", training::to_json(config)}});
    }
  } catch (const c10::Error& e) {
    dir.write_outcome({RunStatus::failed, e.what_without_backtrace()});
    throw;
  } catch (const std::exception& e) {
    dir.write_outcome({RunStatus::failed, e.what()});
    throw;
  }
  dir.write_outcome(report.outcome);
  return report;
}

nlohmann::json to_json(const FinalDiagnostics& d) {
  return {{"k_norm_max", d.k_norm_max}, {"q_norm_max", d.q_norm_max}, {"logit_abs_max", d.logit_abs_max},
          {"entropy_mean", d.entropy_mean}};
}

nlohmann::json RunResult::to_json() const {
  return {{"kind", spec.kind},
          {"seed", spec.seed},
          {"test_accuracy", test_accuracy},
          {"test_loss", test_loss},
          {"train_seconds", train_seconds},
          {"status", runs::to_string(outcome.status)},
          {"message", outcome.message},
          {"diagnostics", runs::to_json(diagnostics)},
          {"run_dir", spec.run_dir}};
}

FinalDiagnostics final_diagnostics_of(const std::vector<std::optional<HeadDiagnostics>>& layers) {
  FinalDiagnostics f;
  double entropy = 0;
  int64_t n = 0;
  for (const auto& d : layers) {
    if (!d) continue;
    for (size_t h = 0; h < d->entropy_mean.size(); ++h, ++n) {
      f.k_norm_max = std::max(f.k_norm_max, d->k_norm_max[h]);
      f.q_norm_max = std::max(f.q_norm_max, d->q_norm_max[h]);
      f.logit_abs_max = std::max(f.logit_abs_max, d->logit_abs_max[h]);
      entropy += d->entropy_mean[h];
    }
  }
  f.entropy_mean = n ? entropy / n : 0.0;
  return f;
}

namespace {

FinalDiagnostics final_diagnostics(training::Trainer& trainer, const training::Dataset& test) {
  torch::NoGradGuard no_grad;
  trainer.model()->eval();
  trainer.model()->set_record_diagnostics(true);
  trainer.model()->forward(test.images.narrow(0, 0, std::min<int64_t>(256, test.size())));
  trainer.model()->set_record_diagnostics(false);
  return final_diagnostics_of(trainer.model()->attention_diagnostics());
}

}  // namespace

std::vector<std::string> kinds_of(const std::vector<RunSpec>& plan) {
  std::vector<std::string> kinds;
  for (const RunSpec& run : plan)
    if (std::find(kinds.begin(), kinds.end(), run.kind) == kinds.end()) kinds.push_back(run.kind);
  return kinds;
}

std::vector<RunOutcome> train_plan(const std::vector<RunSpec>& plan, bool resume, Executor& executor,
                                   const ExecutorEvents& events,
                                   const std::function<void(const std::string&)>& on_note) {
  auto note = [&](const std::string& line) {
    if (on_note) on_note(line);
  };
  // A resumed run whose checkpoint holds every epoch needs no training: evaluating it is all that is left.
  std::vector<RunSpec> to_train;
  std::vector<RunOutcome> outcomes(plan.size());
  std::vector<int> trained_index(plan.size(), -1);
  for (size_t i = 0; i < plan.size(); ++i) {
    const auto done = resume ? plan[i].dir().checkpoint_epoch() : std::nullopt;
    if (done && *done >= plan[i].epochs) {
      note(plan[i].label() + ": finished, evaluating only");
      continue;
    }
    trained_index[i] = static_cast<int>(to_train.size());
    to_train.push_back(plan[i]);
  }
  note(std::to_string(to_train.size()) + " runs to train, " + executor.describe());
  const std::vector<RunOutcome> trained = executor.execute(to_train, resume, events);
  for (size_t i = 0; i < plan.size(); ++i)
    if (trained_index[i] >= 0) outcomes[i] = trained[trained_index[i]];
  return outcomes;
}

std::optional<std::string> not_evaluable(const RunSpec& run, const RunOutcome& outcome) {
  if (outcome.status == RunStatus::failed) return run.label() + ": " + outcome.message;
  if (!run.dir().has_checkpoint())
    return run.label() + ": diverged before its first checkpoint, log " + run.dir().log().string() +
           (outcome.message.empty() ? "" : "\n    " + outcome.message);
  return std::nullopt;
}

CompareResult compare(const std::vector<RunSpec>& plan, const DataSource& data, bool resume, Executor& executor,
                      const ExecutorEvents& events, const std::function<void(const std::string&)>& on_note) {
  auto note = [&](const std::string& line) {
    if (on_note) on_note(line);
  };
  CompareResult result;
  result.kinds = kinds_of(plan);
  const std::vector<RunOutcome> outcomes = train_plan(plan, resume, executor, events, on_note);

  // Every evaluation on the same test images, normalised as the run was trained (the statistics
  // of all training images, whatever its seed or subset, saved with the run).
  std::optional<training::Dataset> test;
  std::optional<training::Normalization> test_normalization;
  for (size_t i = 0; i < plan.size(); ++i) {
    const RunSpec& run = plan[i];
    const RunOutcome& outcome = outcomes[i];
    if (const auto why = not_evaluable(run, outcome)) {
      result.failed.push_back(*why);
      continue;
    }
    auto trainer = training::load_run(run.dir().checkpoint().string());
    const training::Normalization n = trainer->normalization_or_recomputed(data.dir);
    if (!test || test_normalization->mean != n.mean || test_normalization->std != n.std) {
      test = training::load_mnist_test(data.dir, n);
      test_normalization = n;
    }
    RunResult r;
    r.spec = run;
    r.outcome = outcome;
    const training::EvalResult eval = trainer->evaluate(*test);
    r.test_accuracy = eval.accuracy;
    r.test_loss = eval.loss;
    r.train_seconds = trainer->train_seconds();
    r.diagnostics = final_diagnostics(*trainer, *test);
    char line[256];
    std::snprintf(line, sizeof line, "%-12s seed %llu: test accuracy %.4f  (%s, training %.0f s)", run.kind.c_str(),
                  (unsigned long long)run.seed, r.test_accuracy,
                  outcome.status == RunStatus::ok ? "ok" : ("diverged: " + outcome.message).c_str(), r.train_seconds);
    note(line);
    result.runs.push_back(std::move(r));
  }
  return result;
}

report::Table summarize(const CompareResult& result) {
  report::Table table({{"kind"}, {"test_accuracy", 2, 100}, {"seeds"}, {"k_norm_max", 2}, {"logit_abs_max", 2},
                       {"entropy_mean", 3}, {"train_seconds", 0}});
  for (const std::string& kind : result.kinds) {
    std::vector<double> accuracy, seconds;
    const RunResult* last = nullptr;
    for (const RunResult& r : result.runs)
      if (r.spec.kind == kind) {
        accuracy.push_back(r.test_accuracy);
        seconds.push_back(r.train_seconds);
        last = &r;
      }
    if (!last) continue;
    table.add_row({kind, report::mean_std(accuracy), static_cast<int64_t>(accuracy.size()),
                   last->diagnostics.k_norm_max, last->diagnostics.logit_abs_max,
                   last->diagnostics.entropy_mean, report::mean_of(seconds)});
  }
  return table;
}

}  // namespace quest::runs
