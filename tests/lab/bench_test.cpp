// The attention benchmark as a library call: rows, ratios measured in the same run, skips, errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "quest/lab/bench/attention_bench.h"
#include "quest/lab/bench/process.h"

namespace quest::bench {
namespace {

// Minor page faults of allocating, filling and freeing a 64 MB block (through a volatile pointer,
// so that the compiler cannot drop the pair).
long faults_of_a_large_block() {
  void* (*volatile allocate)(size_t) = std::malloc;
  const size_t bytes = size_t{64} << 20;
  const long before = minor_page_faults();
  char* p = static_cast<char*>(allocate(bytes));
  std::memset(p, 1, bytes);
  const long faults = minor_page_faults() - before;
  std::free(p);
  return faults;
}

// By default glibc maps a 64 MB block afresh and faults in all its pages every time (16 384 of
// 4 KB; fewer with transparent huge pages always on); kept (process-wide from here on, which the
// other tests do not mind), the second block reuses the first's pages.
TEST(Process, KeptFreedMemoryIsNotFaultedInAgain) {
  faults_of_a_large_block();
  const long fresh = faults_of_a_large_block();
  ASSERT_GT(fresh, 0);
#if defined(__GLIBC__)
  ASSERT_TRUE(keep_freed_memory());
  faults_of_a_large_block();
  EXPECT_LT(faults_of_a_large_block(), fresh / 10 + 1) << fresh << " faults before";
#else
  EXPECT_FALSE(keep_freed_memory());
#endif
}

TEST(Process, PeakResidentMemoryCountsATouchedBlock) {
  const double before = peak_rss_gib();
  ASSERT_GT(before, 0.0);
  void* (*volatile allocate)(size_t) = std::malloc;
  const size_t bytes = size_t{512} << 20;
  char* p = static_cast<char*>(allocate(bytes));
  std::memset(p, 1, bytes);
  const double after = peak_rss_gib();
  std::free(p);
  EXPECT_GT(after, before + 0.2) << before << " GiB before";
}


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
