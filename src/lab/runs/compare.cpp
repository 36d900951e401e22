#include "quest/lab/runs/compare.h"

#include "quest/lab/runs/experiment_dir.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>

namespace quest::runs {

namespace fs = std::filesystem;

std::vector<RunSpec> plan_runs(const nlohmann::json& base, const std::vector<std::string>& kinds,
                               const std::vector<uint64_t>& seeds, const std::string& out_dir) {
  for (size_t i = 0; i < kinds.size(); ++i) {
    if (!parse_kind(kinds[i])) throw std::invalid_argument("--kinds: unknown kind '" + kinds[i] + "'");
    for (size_t j = 0; j < i; ++j)
      if (kinds[j] == kinds[i]) throw std::invalid_argument("--kinds: '" + kinds[i] + "' is listed twice");
  }
  for (size_t i = 0; i < seeds.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (seeds[j] == seeds[i])
        throw std::invalid_argument("--seeds: " + std::to_string(seeds[i]) + " is listed twice");
  const tasks::TaskKind& task = tasks::task_kind_of(base);
  const ExperimentDir experiment(out_dir);
  std::vector<RunSpec> plan;
  for (const std::string& kind : kinds)
    for (uint64_t seed : seeds) {
      RunSpec run;
      run.kind = kind;
      run.seed = seed;
      run.run_dir = experiment.run_dir(kind, seed).string();
      nlohmann::json config = base;
      config["task"] = task.name();
      config["model"]["attention"] = kind;
      config["seed"] = seed;
      config["run_dir"] = run.run_dir;
      run.config = task.resolve(config);
      run.epochs = run.config.at("epochs").get<int64_t>();
      plan.push_back(std::move(run));
    }
  return plan;
}

TrainReport train_run(const nlohmann::json& given, bool resume, const TrainCallbacks& callbacks,
                      const training::DataParallel& parallel) {
  const tasks::TaskKind& task = tasks::task_kind_of(given);
  const nlohmann::json config = task.resolve(given);
  const std::string run_dir = config.at("run_dir").get<std::string>();
  const RunDir dir(parallel.writes() ? run_dir : "");
  TrainReport report;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    if (!dir.empty()) fs::remove(dir.result());  // a result is for the checkpoint this call ends with
    const std::unique_ptr<tasks::TaskRun> run = task.start(config, parallel);
    if (callbacks.on_start) callbacks.on_start(*run);
    try {
      run->fit(resume, callbacks.on_step);
    } catch (const training::DivergenceError& e) {
      report.outcome = {RunStatus::diverged, e.what()};
      report.diagnostics = run->attention_diagnostics();
    }
    report.epoch = run->epoch();
    report.step = run->step();
    report.train_seconds = run->train_seconds();
    report.checkpoint_kept = RunDir(run_dir).has_checkpoint();
    report.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    report.metrics = run->training_metrics();
    if (report.outcome.status == RunStatus::ok && callbacks.evaluate_test) {
      report.metrics.update(run->test_metrics());
      if (!dir.empty()) {
        nlohmann::json result = report.metrics;
        result["step"] = report.step;
        result["train_seconds"] = report.train_seconds;
        result["wall_seconds"] = report.wall_seconds;
        result["config"] = config;
        dir.write_result(result);
      }
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
  nlohmann::json j = {{"kind", spec.kind}, {"seed", spec.seed}};
  j.update(metrics);
  j.update({{"train_seconds", train_seconds},
            {"status", runs::to_string(outcome.status)},
            {"message", outcome.message},
            {"diagnostics", runs::to_json(diagnostics)},
            {"run_dir", spec.run_dir}});
  return j;
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

RunResult evaluate_run(const RunSpec& run, const RunOutcome& outcome) {
  const tasks::TaskKind& task = tasks::task_kind_of(run.config);
  const std::unique_ptr<tasks::TaskRun> trained = task.load(run.dir().checkpoint().string());
  RunResult r;
  r.spec = run;
  r.outcome = outcome;
  r.train_seconds = trained->train_seconds();
  r.metrics = trained->training_metrics();
  std::optional<nlohmann::json> saved;
  if (fs::exists(run.dir().result())) {
    std::ifstream in(run.dir().result());
    const auto j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_object() && j.value("step", int64_t{-1}) == trained->step()) saved = j;
  }
  if (saved) {
    for (const char* key : {"step", "train_seconds", "wall_seconds", "config"}) saved->erase(key);
    r.metrics.update(*saved);
  } else {
    r.metrics.update(trained->test_metrics());
  }
  r.diagnostics = final_diagnostics_of(trained->test_diagnostics());
  return r;
}

CompareResult compare(const std::vector<RunSpec>& plan, bool resume, Executor& executor,
                      const ExecutorEvents& events, const std::function<void(const std::string&)>& on_note) {
  auto note = [&](const std::string& line) {
    if (on_note) on_note(line);
  };
  CompareResult result;
  result.kinds = kinds_of(plan);
  if (!plan.empty()) result.task = tasks::task_name_of(plan.front().config);
  const std::vector<RunOutcome> outcomes = train_plan(plan, resume, executor, events, on_note);
  for (size_t i = 0; i < plan.size(); ++i) {
    const RunSpec& run = plan[i];
    if (const auto why = not_evaluable(run, outcomes[i])) {
      result.failed.push_back(*why);
      continue;
    }
    RunResult r = evaluate_run(run, outcomes[i]);
    char line[320];
    std::snprintf(line, sizeof line, "%-12s seed %llu: %s  (%s, training %.0f s)", run.kind.c_str(),
                  (unsigned long long)run.seed, tasks::task_kind(result.task).describe_headline(r.metrics).c_str(),
                  outcomes[i].status == RunStatus::ok ? "ok" : ("diverged: " + outcomes[i].message).c_str(),
                  r.train_seconds);
    note(line);
    result.runs.push_back(std::move(r));
  }
  return result;
}

// A metric of a run's scores; NaN where it has none (nlohmann writes NaN as null).
static double metric(const RunResult& r, const std::string& key) {
  const auto it = r.metrics.find(key);
  return it != r.metrics.end() && it->is_number() ? it->get<double>() : NAN;
}

report::Table summarize(const CompareResult& result) {
  if (result.runs.empty()) return report::Table({{"kind"}});
  const tasks::TaskKind& task = tasks::task_kind(result.task);
  const tasks::MetricColumn headline = task.headline();
  const std::vector<tasks::MetricColumn> more = task.more_columns();
  std::vector<report::Column> columns = {{"kind"}, {headline.key, headline.precision, headline.scale}, {"seeds"},
                                         {"k_norm_max", 2}, {"q_norm_max", 2}, {"logit_abs_max", 2},
                                         {"entropy_mean", 3}};
  for (const auto& c : more) columns.push_back({c.key, c.precision, c.scale});
  columns.push_back({"train_seconds", 0});
  report::Table table(columns);
  for (const std::string& kind : result.kinds) {
    std::vector<double> values, seconds;
    std::vector<std::vector<double>> extra(more.size());
    const RunResult* last = nullptr;
    for (const RunResult& r : result.runs)
      if (r.spec.kind == kind) {
        values.push_back(metric(r, headline.key));
        for (size_t c = 0; c < more.size(); ++c) extra[c].push_back(metric(r, more[c].key));
        seconds.push_back(r.train_seconds);
        last = &r;
      }
    if (!last) continue;
    std::vector<nlohmann::json> row = {kind, report::mean_std(values), static_cast<int64_t>(values.size()),
                                     last->diagnostics.k_norm_max, last->diagnostics.q_norm_max,
                                     last->diagnostics.logit_abs_max, last->diagnostics.entropy_mean};
    for (const auto& e : extra) row.push_back(report::mean_of(e));
    row.push_back(report::mean_of(seconds));
    table.add_row(row);
  }
  return table;
}

}  // namespace quest::runs
