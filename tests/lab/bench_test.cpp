// The attention benchmark as a library call: rows, ratios measured in the same run, skips, errors.
#include <gtest/gtest.h>

#include <cmath>

#include "quest/lab/bench/attention_bench.h"

namespace quest::bench {
namespace {

TEST(AttentionBench, RowsAndRatiosOfOneRun) {
  AttentionBenchOptions o;
  o.shapes = {"2,2,17,8"};
  o.kinds = {"quest"};
  o.repeats = 1;
  o.paired = 1;
  const AttentionBenchResult r = run_attention_bench(o);
  ASSERT_EQ(r.rows.size(), 2u);  // fused, composite
  EXPECT_EQ(r.rows[0].backend, "fused");
  for (const auto& row : r.rows) {
    EXPECT_GT(row.fwd_gflops, 0);
    EXPECT_GT(row.fwd_bwd_gflops, 0);
    EXPECT_NEAR(row.fwd_vs_sgemm, row.fwd_gflops / r.sgemm_gflops, 1e-12);
  }
  EXPECT_NEAR(r.rows[0].fwd_vs_composite, r.rows[0].fwd_gflops / r.rows[1].fwd_gflops, 1e-12);
  EXPECT_DOUBLE_EQ(r.rows[1].fwd_vs_composite, 1.0);
  EXPECT_EQ(r.sgemm_samples.size(), 3u);  // before the shape's kind, and at the end
  ASSERT_EQ(r.paired.size(), 1u);
  EXPECT_GT(r.paired[0].forward, 0);
  EXPECT_EQ(r.to_json(o)["rows"].size(), 2u);
}

TEST(AttentionBench, CompositeOverTheMemoryLimitIsSkippedNotRun) {
  AttentionBenchOptions o;
  o.shapes = {"1,1,64,8"};
  o.kinds = {"standard"};
  o.repeats = 1;
  o.composite_memory_limit_gb = 0;
  const AttentionBenchResult r = run_attention_bench(o);
  ASSERT_EQ(r.rows.size(), 2u);
  EXPECT_FALSE(r.rows[0].skipped);
  EXPECT_TRUE(r.rows[1].skipped);
  EXPECT_TRUE(std::isnan(r.rows[0].fwd_vs_composite));
  EXPECT_EQ(r.to_json(o)["rows"].size(), 1u);
}

TEST(AttentionBench, BadOptionsAreNamed) {
  auto message = [](AttentionBenchOptions o) {
    try {
      validate(o);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  AttentionBenchOptions o;
  o.shapes = {"2,2,17"};
  EXPECT_EQ(message(o), "--shapes: '2,2,17' is not B,H,N,D with positive sizes");
  o.shapes = {"2,x,17,8"};
  EXPECT_EQ(message(o), "--shapes: '2,x,17,8' is not B,H,N,D with positive sizes");
  o = {};
  o.kinds = {"flash"};
  EXPECT_EQ(message(o), "--kinds: unknown kind 'flash'");
  o = {};
  o.backends = {"cuda"};
  EXPECT_EQ(message(o), "--backends: unknown backend 'cuda'");
}

}  // namespace
}  // namespace quest::bench
