// The logit-growth monitor: alerts on a passed threshold or an exponential course towards it,
// once, naming the layer and head; its config; and its place in the engine (warning line, stop
// policy, quiet after a resume).
#include <gtest/gtest.h>

#include <cmath>

#include "error_message.h"
#include "quest/lab/training/monitor.h"

namespace quest::training {
namespace {

// Two layers of three heads, every logit `base`, with (layer, head) set to `value`.
std::vector<std::optional<HeadDiagnostics>> layers_with(double base, int64_t layer, int64_t head, double value) {
  std::vector<std::optional<HeadDiagnostics>> layers(2);
  for (auto& l : layers) {
    l.emplace();
    l->resize(3);
    for (auto& v : l->logit_abs_max) v = base;
  }
  layers[layer]->logit_abs_max[head] = value;
  return layers;
}

TEST(LogitMonitor, AlertsOnceWhenAHeadPassesTheThreshold) {
  LogitMonitorOptions o;
  o.threshold = 100;
  o.horizon = 0;
  LogitMonitor m(o);
  EXPECT_FALSE(m.observe(0, layers_with(5, 1, 2, 99)));
  const auto alert = m.observe(10, layers_with(5, 1, 2, 150));
  ASSERT_TRUE(alert);
  EXPECT_EQ(alert->layer, 1);
  EXPECT_EQ(alert->head, 2);
  EXPECT_EQ(alert->step, 10);
  EXPECT_EQ(alert->logit, 150);
  EXPECT_EQ(alert->steps_to_threshold, 0);
  EXPECT_NE(alert->message().find("layer 1 head 2 has max |logit| 150.0 at step 10"), std::string::npos);
  EXPECT_EQ(alert->to_json()["type"], "warning");
  EXPECT_FALSE(m.observe(20, layers_with(5, 0, 0, 1000)));  // once per run
  EXPECT_TRUE(m.alerted());
}

TEST(LogitMonitor, PredictsTheCrossingFromExponentialGrowth) {
  LogitMonitorOptions o;
  o.threshold = 200;
  o.horizon = 100;
  o.window = 4;
  LogitMonitor m(o);
  // Layer 0 head 1 grows x1.5 every 10 steps from 60: 60, 90, 135 -> next ~202.5 at step 30.
  const double values[] = {60, 90, 135};
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(m.observe(10 * i, layers_with(3, 0, 1, values[i]))) << i;  // window not full
  // Fourth point 150 (slower; >= threshold / 2): fitted rate ln(150/60)/30 per step; 200 is ln(200/150)/rate ~ 9.4 steps away.
  const auto alert = m.observe(30, layers_with(3, 0, 1, 150));
  ASSERT_TRUE(alert);
  EXPECT_EQ(alert->layer, 0);
  EXPECT_EQ(alert->head, 1);
  EXPECT_NEAR(alert->steps_to_threshold, std::log(200.0 / 150) / (std::log(150.0 / 60) / 30), 1e-9);
  EXPECT_NE(alert->message().find("on course to pass the threshold in ~9 steps"), std::string::npos)
      << alert->message();
}

TEST(LogitMonitor, QuietForFlatSlowOrSmallLogitsAndWhenOff) {
  LogitMonitorOptions o;
  o.threshold = 200;
  o.horizon = 100;
  o.window = 3;
  {  // fast relative growth (3 -> 96), but below threshold / 2: early training, not a warning
    LogitMonitor m(o);
    for (int i = 0; i < 6; ++i) EXPECT_FALSE(m.observe(10 * i, layers_with(1, 0, 0, 3 * std::pow(2, i))));
  }
  {  // high and flat
    LogitMonitor m(o);
    for (int i = 0; i < 6; ++i) EXPECT_FALSE(m.observe(10 * i, layers_with(1, 0, 0, 190)));
  }
  {  // growing, but the crossing is further than the horizon: 100 -> 101 -> 102 per 10 steps
    LogitMonitor m(o);
    for (int i = 0; i < 6; ++i) EXPECT_FALSE(m.observe(10 * i, layers_with(1, 0, 0, 100 + i)));
  }
  {  // off
    o.threshold = 0;
    LogitMonitor m(o);
    EXPECT_FALSE(m.observe(0, layers_with(1, 0, 0, 1e6)));
  }
  {  // non-finite logits are the engine's divergence check, not a growth warning
    o.threshold = 200;
    LogitMonitor m(o);
    EXPECT_FALSE(m.observe(0, layers_with(1, 0, 0, NAN)));
  }
}

TEST(LogitMonitor, ConfigRoundTripsAndNamesBadValues) {
  LogitMonitorOptions o;
  o.threshold = 50;
  o.horizon = 7;
  o.window = 5;
  o.policy = MonitorPolicy::stop;
  const LogitMonitorOptions back = logit_monitor_from_json(to_json(o));
  EXPECT_EQ(to_json(back), to_json(o));
  EXPECT_EQ(logit_monitor_from_json(nlohmann::json::object()).threshold, LogitMonitorOptions{}.threshold);
  auto message = [](const nlohmann::json& j) {
    return testing::error_message([&] { logit_monitor_from_json(j); });
  };
  EXPECT_NE(message({{"policy", "panic"}}).find("logit_monitor.policy: 'warn' or 'stop', got 'panic'"),
            std::string::npos);
  EXPECT_NE(message({{"window", 1}}).find("logit_monitor.window must be >= 2"), std::string::npos);
  EXPECT_NE(message({{"horizon", -1}}).find("logit_monitor.horizon must be >= 0"), std::string::npos);
}

}  // namespace
}  // namespace quest::training
