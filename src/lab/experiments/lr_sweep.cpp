#include "quest/lab/experiments/lr_sweep.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>

#include "quest/core/kind.h"
#include "quest/lab/report/plots.h"
#include "quest/lab/runs/experiment_dir.h"
#include "quest/lab/tasks/task_kind.h"

namespace quest::experiments {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("lr-sweep: " + what); }

// A number from metrics JSON; NaN for null (nlohmann writes NaN and Inf as null).
double number(const nlohmann::json& v) { return v.is_number() ? v.get<double>() : NAN; }

void fold_max(double& into, double x) {
  if (std::isfinite(x)) into = std::isnan(into) ? x : std::max(into, x);
}
void fold_min(double& into, double x) {
  if (std::isfinite(x)) into = std::isnan(into) ? x : std::min(into, x);
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The task config of one size and learning rate: the sweep's config with the size's model keys
// and the rate laid over it.
nlohmann::json run_config(const LrSweep& sweep, const SweepSize& size, double lr) {
  nlohmann::json c = sweep.config;
  if (!c.contains("model")) c["model"] = nlohmann::json::object();
  for (const auto& [key, value] : size.model.items()) c["model"][key] = value;
  c["lr"] = lr;
  return c;
}

// The sweep reads L0 (step 0's loss) and the attention diagnostics from the logged steps.
void check_logged(int64_t log_every) {
  if (log_every <= 0) bad("the task config's log_every must be > 0 (L0 and the diagnostics come from logged steps)");
}

}  // namespace

bool SweepVariant::at(const std::string& size) const {
  return sizes.empty() || std::find(sizes.begin(), sizes.end(), size) != sizes.end();
}

std::vector<std::string> LrSweep::labels(const SweepSize& size) const {
  std::vector<std::string> out = kinds;
  for (const auto& v : variants)
    if (v.at(size.name)) out.push_back(v.name);
  return out;
}

LrSweep sweep_from_json(const nlohmann::json& j) {
  if (!j.is_object()) bad("a sweep file must be a JSON object");
  static const std::set<std::string> keys = {"task", "config", "sizes", "kinds", "variants", "lrs", "seeds"};
  for (const auto& [key, value] : j.items()) {
    if (key == "data_dir" || key == "val_fraction")
      bad("'" + key + "' is a key of the task config now: \"config\": {\"data\": {\"dir\": ..., \"val_fraction\": ...}}");
    if (!keys.count(key)) bad("unknown key '" + key + "'");
  }
  LrSweep s;
  try {
    s.task = j.value("task", s.task);
    try {
      tasks::task_kind(s.task);
    } catch (const c10::Error& e) {
      bad(e.what_without_backtrace());
    }
    if (j.contains("config")) {
      if (!j["config"].is_object()) bad("'config' must be a JSON object");
      s.config = j["config"];
    }
    if (j.contains("sizes")) {
      s.sizes.clear();
      for (const auto& size : j.at("sizes")) {
        for (const auto& [key, value] : size.items())
          if (key != "name" && key != "model" && key != "seeds") bad("unknown key '" + key + "' in a size");
        SweepSize z{size.at("name").get<std::string>(), size.value("model", nlohmann::json::object()),
                    size.value("seeds", std::vector<uint64_t>{})};
        if (size.contains("seeds") && z.seeds.empty()) bad("size '" + z.name + "': 'seeds' is empty");
        if (z.name.empty() || z.name.find('/') != std::string::npos) bad("a size name must be a plain non-empty name");
        if (!z.model.is_object()) bad("size '" + z.name + "': 'model' must be a JSON object");
        for (const auto& other : s.sizes)
          if (other.name == z.name) bad("size '" + z.name + "' is listed twice");
        s.sizes.push_back(std::move(z));
      }
      if (s.sizes.empty()) bad("'sizes' is empty");
    }
    if (j.contains("kinds")) s.kinds = j["kinds"].get<std::vector<std::string>>();
    for (const auto& v : j.value("variants", nlohmann::json::array())) {
      for (const auto& [key, value] : v.items())
        if (key != "name" && key != "kind" && key != "config" && key != "sizes") bad("unknown key '" + key + "' in a variant");
      SweepVariant x{v.at("name").get<std::string>(), v.at("kind").get<std::string>(),
                     v.value("config", nlohmann::json::object()), v.value("sizes", std::vector<std::string>{})};
      if (x.name.empty() || x.name.find('/') != std::string::npos) bad("a variant name must be a plain non-empty name");
      if (parse_kind(x.name)) bad("variant '" + x.name + "' is named like a kind");
      if (!parse_kind(x.kind)) bad("variant '" + x.name + "': unknown kind '" + x.kind + "'");
      if (!x.config.is_object()) bad("variant '" + x.name + "': 'config' must be a JSON object");
      for (const auto& other : s.variants)
        if (other.name == x.name) bad("variant '" + x.name + "' is listed twice");
      for (const auto& name : x.sizes)
        if (std::none_of(s.sizes.begin(), s.sizes.end(), [&](const SweepSize& z) { return z.name == name; }))
          bad("variant '" + x.name + "': size '" + name + "' is not swept");
      s.variants.push_back(std::move(x));
    }
    if (j.contains("lrs")) s.lrs = j["lrs"].get<std::vector<double>>();
    if (j.contains("seeds")) s.seeds = j["seeds"].get<std::vector<uint64_t>>();
  } catch (const nlohmann::json::exception& e) {
    bad(std::string("malformed sweep file: ") + e.what());
  }
  if (s.lrs.empty()) bad("no learning rate ('lrs')");
  for (size_t i = 0; i < s.lrs.size(); ++i) {
    if (!(s.lrs[i] > 0) || !std::isfinite(s.lrs[i])) bad("learning rate " + std::to_string(s.lrs[i]) + " is not positive");
    for (size_t k = 0; k < i; ++k)  // by directory name: two rates must not share a run directory
      if (runs::lr_dir_name(s.lrs[k]) == runs::lr_dir_name(s.lrs[i]))
        bad("learning rate " + runs::lr_dir_name(s.lrs[i]).substr(3) + " is listed twice");
  }
  if (s.seeds.empty()) bad("no seed");
  if (s.kinds.empty()) bad("no kind");
  return s;
}

nlohmann::json to_json(const LrSweep& s) {
  nlohmann::json sizes = nlohmann::json::array(), variants = nlohmann::json::array();
  for (const auto& z : s.sizes) {
    sizes.push_back({{"name", z.name}, {"model", z.model}});
    if (!z.seeds.empty()) sizes.back()["seeds"] = z.seeds;
  }
  for (const auto& v : s.variants) {
    variants.push_back({{"name", v.name}, {"kind", v.kind}, {"config", v.config}});
    if (!v.sizes.empty()) variants.back()["sizes"] = v.sizes;
  }
  nlohmann::json j = {{"task", s.task}, {"config", s.config}, {"sizes", sizes}, {"kinds", s.kinds},
                      {"lrs", s.lrs},   {"seeds", s.seeds}};
  if (!s.variants.empty()) j["variants"] = variants;
  return j;
}

// One size and rate of the sweep: the task's compare plan for the kinds, then each variant's
// (its config keys laid over, its runs under its own name), trained without the test evaluation.
// The task checks its config (unknown keys, types) and names what is wrong.
// `requests` gets, per run, what the sweep file asked for it (its record fingerprint).
static std::vector<runs::RunSpec> plan_point(const LrSweep& sweep, const SweepSize& size, nlohmann::json c,
                                             const std::string& dir, std::vector<nlohmann::json>& requests) {
  c["task"] = sweep.task;
  const tasks::TaskKind& task = tasks::task_kind(sweep.task);
  const nlohmann::json config = task.resolve(c);
  check_logged(config.at("log_every").get<int64_t>());
  std::vector<runs::RunSpec> plan = runs::plan_runs(config, sweep.kinds, sweep.seeds_of(size), dir);
  for (const auto& run : plan) requests.push_back({{"config", c}, {"kind", run.kind}, {"seed", run.seed}});
  for (const auto& v : sweep.variants) {
    if (!v.at(size.name)) continue;
    nlohmann::json vc = c;
    for (const auto& [key, value] : v.config.items()) vc[key] = value;
    std::vector<runs::RunSpec> runs;
    try {
      runs = runs::plan_runs(task.resolve(vc), {v.kind}, sweep.seeds_of(size), dir);
    } catch (const c10::Error& e) {
      bad("variant '" + v.name + "': " + e.what_without_backtrace());
    }
    for (auto& run : runs) {
      run.kind = v.name;
      run.run_dir = runs::ExperimentDir(dir).run_dir(v.name, run.seed).string();
      run.config["run_dir"] = run.run_dir;
      requests.push_back({{"config", vc}, {"kind", v.kind}, {"variant", v.name}, {"seed", run.seed}});
      plan.push_back(std::move(run));
    }
  }
  for (auto& run : plan) run.evaluate_test = false;
  return plan;
}

std::vector<SweepPoint> plan_sweep(const LrSweep& sweep, const std::string& out_dir) {
  const runs::ExperimentDir experiment(out_dir);
  std::vector<SweepPoint> points;
  for (const SweepSize& size : sweep.sizes)
    for (double lr : sweep.lrs) {
      std::vector<runs::RunSpec> plan;
      std::vector<nlohmann::json> requests;
      try {
        plan = plan_point(sweep, size, run_config(sweep, size, lr), experiment.sweep_point(size.name, lr).root().string(),
                          requests);
      } catch (const c10::Error& e) {  // the task's config error, with the size it came from
        bad("size '" + size.name + "': " + e.what_without_backtrace());
      }
      for (size_t i = 0; i < plan.size(); ++i) points.push_back({size.name, lr, std::move(plan[i]), requests[i]});
    }
  return points;
}

nlohmann::json SweepRunResult::to_json() const {
  auto opt = [](const std::optional<int64_t>& v) { return v ? nlohmann::json(*v) : nlohmann::json(); };
  return {{"size", size},
          {"kind", kind},
          {"lr", lr},
          {"seed", seed},
          {"status", runs::to_string(outcome.status)},
          {"message", outcome.message},
          {"diverged_step", opt(diverged_step)},
          {"warned_step", opt(warned_step)},
          {"init_loss", init_loss},
          {"final_val_loss", final_loss},
          {"logit_abs_max", logit_abs_max},
          {"q_norm_max", q_norm_max},
          {"k_norm_max", k_norm_max},
          {"entropy_min", entropy_min},
          {"log_z_abs_max", log_z_abs_max},
          {"parameters", parameters},
          {"simd_target", simd_target},
          {"threads", threads}};
}

SweepRunResult read_sweep_run(const SweepPoint& point, const runs::RunOutcome& outcome) {
  SweepRunResult r;
  r.size = point.size;
  r.kind = point.run.kind;
  r.lr = point.lr;
  r.seed = point.run.seed;
  r.outcome = outcome;
  const runs::RunDir dir = point.run.dir();
  int64_t last_step = -1;
  for (const auto& line : dir.read_metrics()) {
    const std::string type = line.value("type", "");
    if (type == "step") {
      const int64_t step = line.value("step", int64_t{-1});
      last_step = std::max(last_step, step);
      if (step == 0) r.init_loss = number(line.value("loss", nlohmann::json()));
      if (line.contains("log_z")) fold_max(r.log_z_abs_max, std::fabs(number(line["log_z"])));
      for (const auto& layer : line.value("attention", nlohmann::json::array())) {
        for (const auto& x : layer.value("logit_abs_max", nlohmann::json::array())) fold_max(r.logit_abs_max, number(x));
        for (const auto& x : layer.value("q_norm_max", nlohmann::json::array())) fold_max(r.q_norm_max, number(x));
        for (const auto& x : layer.value("k_norm_max", nlohmann::json::array())) fold_max(r.k_norm_max, number(x));
        for (const auto& x : layer.value("entropy", nlohmann::json::array())) fold_min(r.entropy_min, number(x));
      }
    } else if (type == "warning" && !r.warned_step) {
      r.warned_step = line.value("step", int64_t{-1});
    } else if (type == "diverged") {
      r.diverged_step = line.value("step", int64_t{-1});
    } else if (type == "epoch" && outcome.status == runs::RunStatus::ok) {
      r.final_loss = number(line.value("val_loss", nlohmann::json()));
    }
  }
  for (const auto& line : dir.read_segments()) {  // a resumed run: every segment's machine, once each
    r.parameters = line.value("parameters", int64_t{0});
    auto join = [](std::string& into, const std::string& x) {
      if (into.empty()) into = x;
      else if (("," + into + ",").find("," + x + ",") == std::string::npos) into += "," + x;
    };
    join(r.simd_target, line.value("simd_target", std::string("?")));
    join(r.threads, std::to_string(line.value("threads", 0)));
  }
  if (outcome.status == runs::RunStatus::diverged) {
    if (!r.diverged_step) r.diverged_step = last_step;  // stopped at an epoch end or by the monitor
  } else {
    r.diverged_step.reset();
  }
  if (outcome.status != runs::RunStatus::ok) r.final_loss = NAN;
  return r;
}

SweepRunResult sweep_run_from_json(const nlohmann::json& j) {
  SweepRunResult r;
  r.size = j.at("size").get<std::string>();
  r.kind = j.at("kind").get<std::string>();
  r.lr = j.at("lr").get<double>();
  r.seed = j.at("seed").get<uint64_t>();
  const std::string status = j.at("status").get<std::string>();
  const std::optional<runs::RunStatus> known = runs::status_from_string(status);
  if (!known) throw std::invalid_argument("unknown status '" + status + "'");
  r.outcome.status = *known;
  r.outcome.message = j.value("message", "");
  auto step = [&](const char* key) -> std::optional<int64_t> {
    if (j.contains(key) && j[key].is_number()) return j[key].get<int64_t>();
    return std::nullopt;
  };
  r.diverged_step = step("diverged_step");
  r.warned_step = step("warned_step");
  auto num = [&](const char* key) { return number(j.value(key, nlohmann::json())); };
  r.init_loss = num("init_loss");
  r.final_loss = num("final_val_loss");
  r.logit_abs_max = num("logit_abs_max");
  r.q_norm_max = num("q_norm_max");
  r.k_norm_max = num("k_norm_max");
  r.entropy_min = num("entropy_min");
  r.log_z_abs_max = num("log_z_abs_max");
  r.parameters = j.value("parameters", int64_t{0});
  r.simd_target = j.value("simd_target", "");
  r.threads = j.value("threads", "");
  return r;
}

namespace {

// A run's identity in the record, and a fingerprint of what the sweep file asked for it (its config
// before the task's defaults fill it in, kind, variant, seed): a recorded run is reused only while
// both match. Not of the resolved config: a config key added to the code later (at its default)
// must not make a half-finished sweep retrain what it has.
std::string record_key(const std::string& size, const std::string& kind, double lr, uint64_t seed) {
  return size + " " + runs::lr_dir_name(lr) + " " + kind + " seed-" + std::to_string(seed);
}
std::string fingerprint(const nlohmann::json& j) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the sorted-key dump: the same on every machine
  for (unsigned char c : j.dump()) h = (h ^ c) * 0x100000001b3ull;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}
std::string request_fingerprint(const SweepPoint& p) { return fingerprint(p.request); }
// The first records (2026-12-04) fingerprinted the resolved config but for run_dir; such a line is
// still recognised while that config is unchanged, and written again with the request's.
std::string legacy_fingerprint(const SweepPoint& p) {
  nlohmann::json config = p.run.config;
  config.erase("run_dir");
  return fingerprint(config);
}

struct Recorded {
  SweepRunResult result;
  std::string config;
};

// Reads a record; a torn last line (a process killed mid-write) is dropped, anything else malformed
// is an error that names the line.
std::map<std::string, Recorded> read_record(const std::string& path, const std::function<void(const std::string&)>& note) {
  std::map<std::string, Recorded> recorded;
  std::ifstream in(path);
  if (!in) return recorded;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    try {
      const auto j = nlohmann::json::parse(line);
      Recorded r{sweep_run_from_json(j), j.at("config").get<std::string>()};
      recorded[record_key(r.result.size, r.result.kind, r.result.lr, r.result.seed)] = std::move(r);
    } catch (const std::exception& e) {
      if (in.eof()) {  // cut off, so that the next run's line starts on a line of its own
        if (note) note("record " + path + ": its last line is incomplete (a run killed while writing it), dropped");
        in.close();
        fs::resize_file(path, fs::file_size(path) - line.size());
        break;
      }
      throw std::runtime_error("lr-sweep: record " + path + " line " + std::to_string(n) + " is not a sweep run: " + e.what());
    }
  }
  return recorded;
}

}  // namespace

std::vector<SweepRunResult> run_sweep(const std::vector<SweepPoint>& points, bool resume, runs::Executor& executor,
                                      const runs::ExecutorEvents& events,
                                      const std::function<void(const std::string&)>& on_note, const std::string& record) {
  auto note = [&](const std::string& line) {
    if (on_note) on_note(line);
  };
  std::map<std::string, Recorded> recorded;
  if (!record.empty()) {
    if (resume) recorded = read_record(record, on_note);
    if (const auto parent = fs::path(record).parent_path(); !parent.empty()) fs::create_directories(parent);
    std::ofstream start(record, resume ? std::ios::app : std::ios::trunc);
    if (!start) throw std::runtime_error("lr-sweep: cannot write the record " + record);
  }
  auto key_of = [&](const SweepPoint& p) { return record_key(p.size, p.run.kind, p.lr, p.run.seed); };
  auto write_record = [&](const SweepPoint& p, const SweepRunResult& r) {
    if (record.empty() || r.outcome.status == runs::RunStatus::failed) return;
    const std::string config = request_fingerprint(p);
    const auto it = recorded.find(key_of(p));
    if (it != recorded.end() && it->second.config == config) return;
    nlohmann::json j = r.to_json();
    j["config"] = config;
    // Opened per line, not held for the whole sweep: a record replaced meanwhile (git checkout or
    // stash of a committed record) gets the line, not the replaced file's orphaned inode.
    std::ofstream out(record, std::ios::app);
    out << j.dump() << "\n" << std::flush;  // one whole line per run: a kill tears at most the last
    if (!out)  // the run stays in its directory: the next --resume records it when it plans
      note("lr-sweep: could not write " + key_of(p) + " to the record " + record);
    recorded[key_of(p)] = {r, config};
  };

  std::vector<runs::RunSpec> to_train;
  std::vector<int> index(points.size(), -1);
  std::vector<std::optional<SweepRunResult>> from_record(points.size());
  std::vector<runs::RunOutcome> outcomes(points.size());
  std::map<std::string, size_t> by_dir;
  size_t reused = 0;
  for (size_t i = 0; i < points.size(); ++i) {
    by_dir[points[i].run.run_dir] = i;
    if (const auto it = recorded.find(key_of(points[i])); it != recorded.end()) {
      const bool legacy = it->second.config == legacy_fingerprint(points[i]);
      if (legacy || it->second.config == request_fingerprint(points[i])) {
        from_record[i] = it->second.result;
        if (legacy) write_record(points[i], *from_record[i]);  // the line again, with today's fingerprint
        ++reused;
        continue;
      }
      note(key_of(points[i]) + ": recorded with another config, trained again");
    }
    const auto before = resume ? points[i].run.dir().read_outcome() : std::nullopt;
    if (before && before->status == runs::RunStatus::diverged) {
      outcomes[i] = *before;
      note(points[i].size + " " + runs::lr_dir_name(points[i].lr) + " " + points[i].run.label() + ": diverged before, not retrained");
      continue;
    }
    // Finished in its directory but not in the record (lines lost, e.g. to a replaced record file):
    // read and recorded now, as a recorded run, instead of evaluated again when the sweep ends.
    if (before && points[i].run.dir().checkpoint_epoch().value_or(-1) >= points[i].run.epochs) {
      from_record[i] = read_sweep_run(points[i], *before);
      write_record(points[i], *from_record[i]);
      continue;
    }
    index[i] = static_cast<int>(to_train.size());
    to_train.push_back(points[i].run);
  }
  if (reused > 0) note(std::to_string(reused) + " runs taken from the record " + record);
  runs::ExecutorEvents recording = events;
  recording.on_end = [&](const runs::RunSpec& run, const runs::RunOutcome& outcome) {
    if (events.on_end) events.on_end(run, outcome);
    const auto it = by_dir.find(run.run_dir);
    if (it != by_dir.end()) write_record(points[it->second], read_sweep_run(points[it->second], outcome));
  };
  const auto trained = runs::train_plan(to_train, resume, executor, recording, on_note);
  std::vector<SweepRunResult> results;
  for (size_t i = 0; i < points.size(); ++i) {
    if (from_record[i]) {
      results.push_back(*from_record[i]);
      continue;
    }
    if (index[i] >= 0) {
      outcomes[i] = trained[index[i]];
      // A finished run train_plan skipped: its own record says how it ended.
      const auto& run = points[i].run;
      const auto recorded_outcome = run.dir().read_outcome();
      if (resume && recorded_outcome && run.dir().checkpoint_epoch().value_or(-1) >= run.epochs) outcomes[i] = *recorded_outcome;
    }
    results.push_back(read_sweep_run(points[i], outcomes[i]));
    write_record(points[i], results.back());
  }
  return results;
}

Sensitivity lr_sensitivity(const std::vector<double>& lrs, const std::vector<std::vector<double>>& capped, int resamples) {
  if (lrs.size() != capped.size() || lrs.empty())
    throw std::invalid_argument("lr_sensitivity: one vector of losses per learning rate, at least one rate");
  Sensitivity s;
  auto sensitivity_of = [](const std::vector<double>& means) {
    double sum = 0, best = INFINITY;
    for (double m : means) sum += m, best = std::min(best, m);
    return sum / means.size() - best;
  };
  std::vector<double> means;
  for (size_t i = 0; i < lrs.size(); ++i) {
    if (capped[i].empty()) throw std::invalid_argument("lr_sensitivity: no loss at learning rate " + std::to_string(lrs[i]));
    means.push_back(report::mean_of(capped[i]));
    if (!(means.back() >= s.best_loss)) s.best_loss = means.back(), s.best_lr = lrs[i];
  }
  s.value = sensitivity_of(means);
  // Bootstrap: at every rate, draw its seeds with replacement; the interval of S over the draws.
  std::mt19937_64 rng(0x5eed);
  std::vector<double> draws;
  for (int b = 0; b < resamples; ++b) {
    std::vector<double> m;
    for (const auto& seeds : capped) {
      std::uniform_int_distribution<size_t> pick(0, seeds.size() - 1);
      double sum = 0;
      for (size_t k = 0; k < seeds.size(); ++k) sum += seeds[pick(rng)];
      m.push_back(sum / seeds.size());
    }
    draws.push_back(sensitivity_of(m));
  }
  if (!draws.empty()) {
    std::sort(draws.begin(), draws.end());
    s.low = draws[static_cast<size_t>(0.025 * (draws.size() - 1))];
    s.high = draws[static_cast<size_t>(std::ceil(0.975 * (draws.size() - 1)))];
  }
  return s;
}

std::vector<Sensitivity> sensitivities(const LrSweep& sweep, const std::vector<SweepRunResult>& runs) {
  std::vector<double> lrs = sweep.lrs;
  std::sort(lrs.begin(), lrs.end());
  std::vector<Sensitivity> rows;
  for (const auto& size : sweep.sizes)
    for (const auto& kind : sweep.labels(size)) {
      std::vector<const SweepRunResult*> mine;
      std::vector<double> inits;
      for (const auto& r : runs)
        if (r.size == size.name && r.kind == kind && r.outcome.status != runs::RunStatus::failed) {
          mine.push_back(&r);
          if (std::isfinite(r.init_loss)) inits.push_back(r.init_loss);
        }
      if (mine.empty()) continue;
      const double l0 = median(inits);
      std::vector<double> rates;
      std::vector<std::vector<double>> capped;
      int diverged = 0;
      for (double lr : lrs) {
        std::vector<double> seeds;
        for (const auto* r : mine)
          if (r->lr == lr) {
            const bool ok = r->outcome.status == runs::RunStatus::ok && std::isfinite(r->final_loss);
            seeds.push_back(ok ? std::min(r->final_loss, l0) : l0);
            diverged += r->outcome.status == runs::RunStatus::diverged;
          }
        if (!seeds.empty()) rates.push_back(lr), capped.push_back(std::move(seeds));
      }
      Sensitivity s = lr_sensitivity(rates, capped);
      s.size = size.name;
      s.kind = kind;
      s.init_loss = l0;
      s.diverged = diverged;
      s.runs = static_cast<int>(mine.size());
      for (const auto* r : mine) s.parameters = std::max(s.parameters, r->parameters);
      for (double lr : lrs) {  // ascending: the last rate without a divergence wins
        std::vector<double> logit, entropy;
        bool any = false, div = false;
        for (const auto* r : mine)
          if (r->lr == lr) {
            any = true;
            div |= r->outcome.status == runs::RunStatus::diverged;
            if (std::isfinite(r->logit_abs_max)) logit.push_back(r->logit_abs_max);
            if (std::isfinite(r->entropy_min)) entropy.push_back(std::max(0.0, r->entropy_min));  // (records before the clamp of reduce_partials)
          }
        if (!any || div) continue;
        s.stable_lr = lr;
        s.stable_logit_abs_max = logit.empty() ? NAN : report::mean_of(logit);
        s.stable_entropy_min = entropy.empty() ? NAN : report::mean_of(entropy);
      }
      rows.push_back(s);
    }
  return rows;
}

report::Table sensitivity_table(const std::vector<Sensitivity>& rows) {
  report::Table t({{"size", 0}, {"kind", 0}, {"lr_sensitivity", 4}, {"ci_low", 4}, {"ci_high", 4},
                   {"best_val_loss", 4}, {"best_lr", 5}, {"init_loss", 3}, {"diverged", 0}, {"runs", 0},
                   {"parameters", 0}, {"stable_lr", 5}, {"stable_logit_abs_max", 1}, {"stable_entropy_min", 3}});
  for (const auto& s : rows)
    t.add_row({s.size, s.kind, s.value, s.low, s.high, s.best_loss, s.best_lr, s.init_loss, s.diverged, s.runs,
               s.parameters, s.stable_lr, s.stable_logit_abs_max, s.stable_entropy_min});
  return t;
}

report::Table runs_table(const std::vector<SweepRunResult>& runs) {
  report::Table t({{"size", 0}, {"kind", 0}, {"lr", 5}, {"seed", 0}, {"status", 0}, {"diverged_step", 0},
                   {"warned_step", 0}, {"init_loss", 3}, {"final_val_loss", 4}, {"logit_abs_max", 1},
                   {"q_norm_max", 1}, {"k_norm_max", 1}, {"entropy_min", 3}, {"log_z_abs_max", 2},
                   {"parameters", 0}, {"simd_target", 0}, {"threads", 0}});
  for (const auto& r : runs) {
    const nlohmann::json j = r.to_json();
    t.add_row({r.size, r.kind, r.lr, r.seed, j["status"], j["diverged_step"], j["warned_step"], r.init_loss,
               r.final_loss, r.logit_abs_max, r.q_norm_max, r.k_norm_max, r.entropy_min, r.log_z_abs_max,
               r.parameters, r.simd_target, r.threads});
  }
  return t;
}

void write_sweep_plots(const LrSweep& sweep, const std::vector<SweepRunResult>& runs, const std::string& out_dir) {
  const fs::path out = runs::ExperimentDir(out_dir).plots(), data = out / "data";
  fs::create_directories(data);
  std::vector<double> lrs = sweep.lrs;
  std::sort(lrs.begin(), lrs.end());
  const auto rows = sensitivities(sweep, runs);
  std::ostringstream gp;
  gp << report::kGnuplotHeader << "set logscale x\nset xlabel 'peak learning rate'\n";
  for (const auto& size : sweep.sizes) {
    // Per kind: lr, seed-mean capped loss, min, max, seed-mean max |logit|, diverged runs.
    std::vector<std::pair<std::string, fs::path>> files;
    for (const auto& kind : sweep.labels(size)) {
      double l0 = NAN;
      for (const auto& s : rows)
        if (s.size == size.name && s.kind == kind) l0 = s.init_loss;
      const fs::path file = data / (size.name + "_" + kind + ".dat");
      std::ofstream f(file);
      f << "# lr capped_val_loss_mean min max logit_abs_max_mean diverged\n";
      bool any = false;
      for (double lr : lrs) {
        std::vector<double> loss, logit;
        int diverged = 0;
        for (const auto& r : runs)
          if (r.size == size.name && r.kind == kind && r.lr == lr && r.outcome.status != runs::RunStatus::failed) {
            const bool ok = r.outcome.status == runs::RunStatus::ok && std::isfinite(r.final_loss);
            loss.push_back(ok ? std::min(r.final_loss, l0) : l0);
            if (std::isfinite(r.logit_abs_max)) logit.push_back(r.logit_abs_max);
            diverged += r.outcome.status == runs::RunStatus::diverged;
          }
        if (loss.empty()) continue;
        any = true;
        f << lr << " " << report::mean_of(loss) << " " << *std::min_element(loss.begin(), loss.end()) << " "
          << *std::max_element(loss.begin(), loss.end()) << " " << (logit.empty() ? NAN : report::mean_of(logit))
          << " " << diverged << "\n";
      }
      if (any) files.emplace_back(kind, file);
    }
    if (files.empty()) continue;
    auto curves = [&](const std::string& using_cols, const std::string& style, bool titled) {
      std::string s;
      for (size_t i = 0; i < files.size(); ++i)
        s += (s.empty() ? "" : ", ") + report::gnuplot_quote(files[i].second.string()) + " using " + using_cols +
             " with " + style + " lc " + std::to_string(i + 1) +
             (titled ? " title " + report::gnuplot_quote(files[i].first) : " notitle");
      return s;
    };
    gp << "set output " << report::gnuplot_quote((out / ("loss-vs-lr-" + size.name + ".png")).string()) << "\n"
       << "set title " << report::gnuplot_quote("final validation loss vs learning rate, size " + size.name +
                                                " (seed mean, bars: min-max; diverged runs count as the initial loss)")
       << "\nset ylabel 'validation loss (capped at init)'\nunset logscale y\n"
       << "plot " << curves("1:2:3:4", "yerrorlines", true) << ", "
       << curves("1:($6>0?$2:1/0)", "points pt 6 ps 2", false) << "\n";
    gp << "set output " << report::gnuplot_quote((out / ("logit-vs-lr-" + size.name + ".png")).string()) << "\n"
       << "set title " << report::gnuplot_quote("max attention |logit| over training vs learning rate, size " +
                                                size.name + " (seed mean; circled: a run diverged)")
       << "\nset ylabel 'max |logit|'\nset logscale y\n"
       << "plot " << curves("1:5", "linespoints", true) << ", " << curves("1:($6>0?$5:1/0)", "points pt 6 ps 2", false)
       << "\nunset logscale y\n";
  }
  if (sweep.sizes.size() >= 2) {  // against model size: one file per kind or variant, sizes ascending
    std::vector<std::pair<std::string, fs::path>> files;
    std::vector<std::string> labels;
    for (const auto& size : sweep.sizes)
      for (const auto& l : sweep.labels(size))
        if (std::find(labels.begin(), labels.end(), l) == labels.end()) labels.push_back(l);
    for (const auto& label : labels) {
      std::vector<const Sensitivity*> mine;
      for (const auto& s : rows)
        if (s.kind == label && s.parameters > 0) mine.push_back(&s);
      if (mine.empty()) continue;
      std::sort(mine.begin(), mine.end(), [](auto* a, auto* b) { return a->parameters < b->parameters; });
      const fs::path file = data / ("scale_" + label + ".dat");
      std::ofstream f(file);
      f << "# parameters lr_sensitivity ci_low ci_high stable_lr stable_logit_abs_max stable_entropy_min size\n";
      for (const auto* s : mine)
        f << s->parameters << " " << s->value << " " << s->low << " " << s->high << " " << s->stable_lr << " "
          << s->stable_logit_abs_max << " " << s->stable_entropy_min << " " << s->size << "\n";
      files.emplace_back(label, file);
    }
    auto curves = [&](const std::string& using_cols, const std::string& style) {
      std::string s;
      for (size_t i = 0; i < files.size(); ++i)
        s += (s.empty() ? "" : ", ") + report::gnuplot_quote(files[i].second.string()) + " using " + using_cols +
             " with " + style + " lc " + std::to_string(i + 1) + " title " + report::gnuplot_quote(files[i].first);
      return s;
    };
    if (!files.empty()) {
      gp << "set xlabel 'parameters'\nunset logscale y\n"
         << "set output " << report::gnuplot_quote((out / "sensitivity-vs-size.png").string()) << "\n"
         << "set title 'LR sensitivity vs model size (bars: 95 % bootstrap interval over seeds)'\n"
         << "set ylabel 'LR sensitivity (lower is better)'\n"
         << "plot " << curves("1:2:3:4", "yerrorlines") << "\n"
         << "set output " << report::gnuplot_quote((out / "stable-logit-vs-size.png").string()) << "\n"
         << "set title 'max |logit| over training at the highest learning rate without a divergence'\n"
         << "set ylabel 'max |logit|'\nset logscale y\n"
         << "plot " << curves("1:6", "linespoints") << "\nunset logscale y\n"
         << "set output " << report::gnuplot_quote((out / "stable-entropy-vs-size.png").string()) << "\n"
         << "set title 'min attention entropy at the highest learning rate without a divergence'\n"
         << "set ylabel 'min entropy (nats)'\n"
         << "plot " << curves("1:7", "linespoints") << "\n";
      // The three side by side (issue #36's figure), one key for all, right of the panels.
      gp << "set terminal pngcairo size 2400,760 font ',11' noenhanced\n"
         << "set output " << report::gnuplot_quote((out / "scale-vs-size.png").string()) << "\n"
         << "set multiplot layout 1,3 margins 0.04,0.87,0.1,0.9 spacing 0.05,0.1\n"
         << "set key at screen 0.88,0.9 left top\n"
         << "set title 'LR sensitivity (bars: 95 % bootstrap interval over seeds)'\n"
         << "set ylabel 'LR sensitivity (lower is better)'\n"
         << "plot " << curves("1:2:3:4", "yerrorlines") << "\nunset key\n"
         << "set title 'max |logit| at the highest rate without a divergence'\n"
         << "set ylabel 'max |logit|'\nset logscale y\n"
         << "plot " << curves("1:6", "linespoints") << "\nunset logscale y\n"
         << "set title 'min attention entropy at that rate'\nset ylabel 'min entropy (nats)'\n"
         << "plot " << curves("1:7", "linespoints") << "\nunset multiplot\n";
    }
  }
  report::run_gnuplot(out / "sweep.gp", gp.str());
}

std::optional<double> contrast_lr(const std::vector<SweepRunResult>& runs, const std::string& size) {
  std::map<double, std::pair<bool, bool>> diverged;  // lr -> (a standard run diverged, a quest run did)
  std::map<double, std::pair<double, double>> logit;  // lr -> (standard max, quest max)
  for (const auto& r : runs) {
    if (r.size != size || (r.kind != "standard" && r.kind != "quest")) continue;
    auto& d = diverged[r.lr];
    auto& l = logit.try_emplace(r.lr, NAN, NAN).first->second;
    const bool div = r.outcome.status == runs::RunStatus::diverged;
    if (r.kind == "standard") d.first |= div, fold_max(l.first, r.logit_abs_max);
    else d.second |= div, fold_max(l.second, r.logit_abs_max);
  }
  for (const auto& [lr, d] : diverged)
    if (d.first && !d.second) return lr;
  std::optional<double> best;
  double best_ratio = 0;
  for (const auto& [lr, l] : logit)
    if (std::isfinite(l.first) && std::isfinite(l.second) && l.second > 0 && l.first / l.second > best_ratio)
      best_ratio = l.first / l.second, best = lr;
  return best;
}

}  // namespace quest::experiments
