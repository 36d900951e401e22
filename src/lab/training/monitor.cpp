#include "quest/lab/training/monitor.h"

#include <cmath>
#include <cstdio>
#include <c10/util/Exception.h>

namespace quest::training {

std::string to_string(MonitorPolicy policy) { return policy == MonitorPolicy::stop ? "stop" : "warn"; }

std::optional<MonitorPolicy> parse_monitor_policy(const std::string& name) {
  if (name == "warn") return MonitorPolicy::warn;
  if (name == "stop") return MonitorPolicy::stop;
  return std::nullopt;
}

nlohmann::json to_json(const LogitMonitorOptions& o) {
  return {{"threshold", o.threshold}, {"horizon", o.horizon}, {"window", o.window}, {"policy", to_string(o.policy)}};
}

LogitMonitorOptions logit_monitor_from_json(const nlohmann::json& j) {
  LogitMonitorOptions o;
  o.threshold = j.value("threshold", o.threshold);
  o.horizon = j.value("horizon", o.horizon);
  o.window = j.value("window", o.window);
  const std::string policy = j.value("policy", to_string(o.policy));
  const auto p = parse_monitor_policy(policy);
  TORCH_CHECK(p, "quest::training: logit_monitor.policy: 'warn' or 'stop', got '", policy, "'");
  o.policy = *p;
  TORCH_CHECK(o.horizon >= 0, "quest::training: logit_monitor.horizon must be >= 0");
  TORCH_CHECK(o.window >= 2, "quest::training: logit_monitor.window must be >= 2 (a growth rate needs two points)");
  return o;
}

std::string LogitAlert::message() const {
  char buf[256];
  if (steps_to_threshold <= 0)
    std::snprintf(buf, sizeof buf, "attention logits growing: layer %lld head %lld has max |logit| %.1f at step %lld",
                  (long long)layer, (long long)head, logit, (long long)step);
  else
    std::snprintf(buf, sizeof buf,
                  "attention logits growing: layer %lld head %lld has max |logit| %.1f at step %lld, on course to "
                  "pass the threshold in ~%.0f steps",
                  (long long)layer, (long long)head, logit, (long long)step, steps_to_threshold);
  return buf;
}

nlohmann::json LogitAlert::to_json() const {
  return {{"type", "warning"}, {"warning", "logit_growth"}, {"step", step}, {"layer", layer}, {"head", head},
          {"logit_abs_max", logit}, {"steps_to_threshold", steps_to_threshold}, {"message", message()}};
}

std::optional<LogitAlert> LogitMonitor::observe(int64_t step,
                                                const std::vector<std::optional<HeadDiagnostics>>& layers) {
  if (alerted_ || options_.threshold <= 0) return std::nullopt;
  std::optional<LogitAlert> best;  // passed first, then the soonest to pass
  auto better = [](const LogitAlert& a, const std::optional<LogitAlert>& b) {
    return !b || a.steps_to_threshold < b->steps_to_threshold ||
           (a.steps_to_threshold == b->steps_to_threshold && a.logit > b->logit);
  };
  for (size_t l = 0; l < layers.size(); ++l) {
    if (!layers[l]) continue;
    for (size_t h = 0; h < layers[l]->logit_abs_max.size(); ++h) {
      const double logit = layers[l]->logit_abs_max[h];
      if (!std::isfinite(logit)) continue;  // non-finite state is the engine's divergence check
      auto& history = history_[{static_cast<int64_t>(l), static_cast<int64_t>(h)}];
      history.emplace_back(step, logit);
      while (static_cast<int64_t>(history.size()) > options_.window) history.pop_front();
      LogitAlert a{step, static_cast<int64_t>(l), static_cast<int64_t>(h), logit, 0.0};
      if (logit >= options_.threshold) {
        if (better(a, best)) best = a;
        continue;
      }
      // Exponential growth fitted through the window's first and last points.
      if (options_.horizon <= 0 || logit < options_.threshold / 2 ||
          static_cast<int64_t>(history.size()) < options_.window)
        continue;
      const auto [s0, v0] = history.front();
      if (step <= s0 || v0 <= 0 || logit <= v0) continue;
      const double rate = std::log(logit / v0) / static_cast<double>(step - s0);  // per step
      a.steps_to_threshold = std::log(options_.threshold / logit) / rate;
      if (a.steps_to_threshold <= options_.horizon && better(a, best)) best = a;
    }
  }
  if (best) alerted_ = true;
  return best;
}

}  // namespace quest::training
