#include "quest/lab/runs/lm_compare.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

namespace quest::runs {

namespace fs = std::filesystem;

namespace {

double tokens_per_second(training::LmTrainer& trainer) {
  const auto& c = trainer.config();
  return trainer.train_seconds() > 0
             ? static_cast<double>(trainer.step()) * c.batch_size * c.model.context() / trainer.train_seconds()
             : 0.0;
}

}  // namespace

LmTrainReport train_lm_run(const training::LmConfig& config, bool resume, const LmTrainCallbacks& callbacks,
                           const training::DataParallel& parallel) {
  const RunDir dir(parallel.writes() ? config.run_dir : "");
  LmTrainReport report;
  try {
    if (!dir.empty()) fs::remove(dir.result());  // a result is for the checkpoint this call ends with
    const data::ByteSplits data = training::load_lm_data(config);
    if (callbacks.on_data) callbacks.on_data(data);
    training::LmTrainer trainer(config, parallel);
    try {
      trainer.fit(data, resume, callbacks.on_step);
    } catch (const training::DivergenceError& e) {
      report.outcome = {RunStatus::diverged, e.what()};
      report.diagnostics = trainer.model()->attention_diagnostics();
    }
    report.checkpoint_kept = RunDir(config.run_dir).has_checkpoint();
    report.train_seconds = trainer.train_seconds();
    report.tokens_per_second = tokens_per_second(trainer);
    if (report.outcome.status == RunStatus::ok && callbacks.evaluate_test) {
      report.valid = trainer.evaluate(data.valid, config.eval_bytes);
      report.test = trainer.evaluate(data.test);
      if (!dir.empty())
        dir.write_result({{"test_bits_per_byte", report.test.bits_per_byte},
                          {"test_accuracy", report.test.accuracy},
                          {"test_bytes", report.test.bytes},
                          {"step", trainer.step()},
                          {"train_seconds", report.train_seconds},
                          {"tokens_per_second", report.tokens_per_second},
                          {"config", training::to_json(config)}});
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

std::vector<RunSpec> plan_lm_compare(const training::LmConfig& base, const std::vector<std::string>& kinds,
                                     const std::vector<uint64_t>& seeds, const std::string& out_dir) {
  return plan_runs(kinds, seeds, out_dir, [&](RunSpec& run) {
    training::LmConfig config = base;
    config.model.attention(*parse_kind(run.kind));
    config.seed = run.seed;
    config.run_dir = run.run_dir;
    run.epochs = config.epochs;
    run.config = training::to_json(config);
    run.command = {"lm", "train"};
    run.train = [config](bool resume, const std::function<void(const nlohmann::json&)>& on_step) {
      LmTrainCallbacks callbacks;
      callbacks.on_step = on_step;
      return train_lm_run(config, resume, callbacks).outcome;
    };
  });
}

nlohmann::json LmRunResult::to_json() const {
  return {{"kind", spec.kind},
          {"seed", spec.seed},
          {"test_bits_per_byte", test_bits_per_byte},
          {"test_accuracy", test_accuracy},
          {"train_seconds", train_seconds},
          {"tokens_per_second", tokens_per_second},
          {"status", runs::to_string(outcome.status)},
          {"message", outcome.message},
          {"diagnostics", runs::to_json(diagnostics)},
          {"run_dir", spec.run_dir}};
}

LmCompareResult compare_lm(const std::vector<RunSpec>& plan, bool resume, Executor& executor,
                           const ExecutorEvents& events, const std::function<void(const std::string&)>& on_note) {
  auto note = [&](const std::string& line) {
    if (on_note) on_note(line);
  };
  LmCompareResult result;
  result.kinds = kinds_of(plan);
  const std::vector<RunOutcome> outcomes = train_plan(plan, resume, executor, events, on_note);
  std::map<std::string, data::ByteSplits> corpora;  // read once per (corpus, corpus_bytes)
  for (size_t i = 0; i < plan.size(); ++i) {
    const RunSpec& run = plan[i];
    if (const auto why = not_evaluable(run, outcomes[i])) {
      result.failed.push_back(*why);
      continue;
    }
    auto trainer = training::load_lm_run(run.dir().checkpoint().string());
    const training::LmConfig& c = trainer->config();
    const std::string corpus_key = c.corpus + "#" + std::to_string(c.corpus_bytes);
    if (!corpora.count(corpus_key)) corpora.emplace(corpus_key, training::load_lm_data(c));
    const data::ByteSplits& data = corpora.at(corpus_key);
    LmRunResult r;
    r.spec = run;
    r.outcome = outcomes[i];
    r.train_seconds = trainer->train_seconds();
    r.tokens_per_second = tokens_per_second(*trainer);
    // The run's own score when it was made for this checkpoint (same step): the test split is
    // minutes of evaluation per run.
    std::optional<nlohmann::json> saved;
    if (fs::exists(run.dir().result())) {
      std::ifstream in(run.dir().result());
      const auto j = nlohmann::json::parse(in, nullptr, false);
      if (!j.is_discarded() && j.value("step", int64_t{-1}) == trainer->step()) saved = j;
    }
    if (saved) {
      r.test_bits_per_byte = saved->at("test_bits_per_byte").get<double>();
      r.test_accuracy = saved->at("test_accuracy").get<double>();
    } else {
      const training::LmEval test = trainer->evaluate(data.test);
      r.test_bits_per_byte = test.bits_per_byte;
      r.test_accuracy = test.accuracy;
    }
    {  // diagnostics on the test split's first 8 windows
      torch::NoGradGuard no_grad;
      auto& gpt = trainer->model();
      gpt->eval();
      gpt->set_record_diagnostics(true);
      const int64_t context = c.model.context();
      const int64_t windows = std::max<int64_t>(1, std::min<int64_t>(8, data.test.numel() / context));
      const int64_t length = std::min<int64_t>(context, data.test.numel());
      gpt->forward(data.test.narrow(0, 0, windows * length).to(torch::kLong).view({windows, length}));
      gpt->set_record_diagnostics(false);
      r.diagnostics = final_diagnostics_of(gpt->attention_diagnostics());
    }
    char line[256];
    std::snprintf(line, sizeof line, "%-12s seed %llu: test %.4f bits per byte  (%s, training %.0f s, %.0f tokens/s)",
                  run.kind.c_str(), (unsigned long long)run.seed, r.test_bits_per_byte,
                  r.outcome.status == RunStatus::ok ? "ok" : ("diverged: " + r.outcome.message).c_str(),
                  r.train_seconds, r.tokens_per_second);
    note(line);
    result.runs.push_back(std::move(r));
  }
  return result;
}

report::Table summarize(const LmCompareResult& result) {
  report::Table table({{"kind"}, {"test_bits_per_byte", 4}, {"seeds"}, {"k_norm_max", 2}, {"q_norm_max", 2},
                       {"logit_abs_max", 2}, {"entropy_mean", 3}, {"tokens_per_second", 0}, {"train_seconds", 0}});
  for (const std::string& kind : result.kinds) {
    std::vector<double> bpb, tps, seconds;
    const LmRunResult* last = nullptr;
    for (const LmRunResult& r : result.runs)
      if (r.spec.kind == kind) {
        bpb.push_back(r.test_bits_per_byte);
        tps.push_back(r.tokens_per_second);
        seconds.push_back(r.train_seconds);
        last = &r;
      }
    if (!last) continue;
    table.add_row({kind, report::mean_std(bpb), static_cast<int64_t>(bpb.size()), last->diagnostics.k_norm_max,
                   last->diagnostics.q_norm_max, last->diagnostics.logit_abs_max, last->diagnostics.entropy_mean,
                   report::mean_of(tps), report::mean_of(seconds)});
  }
  return table;
}

}  // namespace quest::runs
