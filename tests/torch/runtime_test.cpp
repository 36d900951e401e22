// Process-level facts: which BLAS backs torch's matmul, which OpenMP runtime runs the threads.
#include <gtest/gtest.h>

#include <ATen/Parallel.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "quest/torch/attention.h"
#include "quest/torch/runtime.h"

namespace quest {
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
TEST(Runtime, KeptFreedMemoryIsNotFaultedInAgain) {
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

TEST(Runtime, PeakResidentMemoryCountsATouchedBlock) {
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

TEST(Runtime, DetectsTheBlasBehindTorch) {
  const BlasInfo info = detect_blas();
  EXPECT_FALSE(info.name.empty());
  EXPECT_FALSE(info.reference) << info.library;
  if (info.openblas) EXPECT_FALSE(info.core.empty());
  if (at::hasMKL()) EXPECT_EQ(info.name.rfind("MKL", 0), 0u) << info.name;
}

TEST(Runtime, NamesTheLibTorchItWasBuiltAgainst) {
  EXPECT_EQ(torch_version().rfind(std::to_string(TORCH_VERSION_MAJOR) + ".", 0), 0u) << torch_version();
}

// quest's kernels link torch's libgomp: after torch has run a parallel op and quest's fused
// kernel has run on several threads, one OpenMP runtime is mapped (two would keep two pools).
TEST(Runtime, OneOpenMpRuntimeWithTorchAndQuest) {
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  const auto x = torch::randn({4, 2, 64, 16});
  const auto out = attention(x, x, x, AttentionOptions(Kind::quest).backend(Backend::fused));
  (void)torch::matmul(x, x.transpose(-1, -2)).sum().item<float>();
  at::set_num_threads(threads);
  ASSERT_TRUE(out.isfinite().all().item<bool>());
  const std::vector<std::string> runtimes = openmp_runtimes();
  ASSERT_EQ(runtimes.size(), 1u) << (runtimes.empty() ? "none" : runtimes[0] + ", " + runtimes.back());
  EXPECT_NE(runtimes[0].find("libgomp"), std::string::npos) << runtimes[0];
}

}  // namespace
}  // namespace quest
