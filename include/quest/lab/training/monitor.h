// Early warning of attention-logit growth (Wortsman et al. 2023: the max attention logit grows
// without bound before a high-learning-rate run's attention entropy collapses and its loss
// diverges). Fed the per-layer, per-head diagnostics the engine records on logged steps; raises
// one alert per run, naming the layer and head, before the loss goes non-finite.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "quest/core/diagnostics.h"

namespace quest::training {

enum class MonitorPolicy { warn, stop };
std::string to_string(MonitorPolicy policy);
std::optional<MonitorPolicy> parse_monitor_policy(const std::string& name);

struct LogitMonitorOptions {
  // Alert when a head's max |attention logit| passes this (<= 0: the monitor is off). Softmax is
  // already one-hot for a logit gap of ~20; the default sits well above what stable runs here reach
  // (ViT: <= 15; byte-level GPT with standard attention: up to ~85, results/lm).
  double threshold = 200;
  // Also alert when a head's logit, at >= threshold / 2, grows fast enough (exponential fit over
  // its last `window` logged values) to pass the threshold within `horizon` steps (0: off).
  int64_t horizon = 1000;
  int64_t window = 4;
  MonitorPolicy policy = MonitorPolicy::warn;  // stop: the run ends as diverged, checkpoint kept
};
nlohmann::json to_json(const LogitMonitorOptions& options);
// Missing keys keep their defaults; a bad value raises a c10::Error naming it.
LogitMonitorOptions logit_monitor_from_json(const nlohmann::json& j);

struct LogitAlert {
  int64_t step = 0, layer = 0, head = 0;
  double logit = 0;           // max |logit| of that head at `step`
  double steps_to_threshold;  // 0 once passed; else the extrapolated steps left
  std::string message() const;
  nlohmann::json to_json() const;  // a {"type": "warning", "warning": "logit_growth", ...} metrics line
};

class LogitMonitor {
 public:
  explicit LogitMonitor(LogitMonitorOptions options = {}) : options_(options) {}
  // One logged step's diagnostics (per layer; nullopt for a layer without). Returns the alert the
  // first time one is raised, nullopt otherwise (and always after the first).
  std::optional<LogitAlert> observe(int64_t step, const std::vector<std::optional<HeadDiagnostics>>& layers);
  // A resumed run that already alerted (its metrics hold the warning) stays quiet.
  void mark_alerted() { alerted_ = true; }
  bool alerted() const { return alerted_; }
  const LogitMonitorOptions& options() const { return options_; }

 private:
  LogitMonitorOptions options_;
  bool alerted_ = false;
  std::map<std::pair<int64_t, int64_t>, std::deque<std::pair<int64_t, double>>> history_;  // (layer, head)
};

}  // namespace quest::training
