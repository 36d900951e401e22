// Process-level facts: which BLAS backs torch's matmul and whether its kernels fit the CPU.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "quest/torch/runtime.h"

namespace quest {
namespace {

TEST(Runtime, SuggestsOpenBlasKernelsTheCpuCanRun) {
  // OpenBLAS 0.3.21 falls back to Prescott on AVX-512 Xeons it does not know.
  EXPECT_EQ(better_openblas_core("Prescott", true, true), "SkylakeX");
  EXPECT_EQ(better_openblas_core("Prescott", false, true), "Haswell");
  EXPECT_EQ(better_openblas_core("Sandybridge", false, true), "Haswell");
  EXPECT_EQ(better_openblas_core("Prescott", false, false), "");  // the best it can do
  EXPECT_EQ(better_openblas_core("SkylakeX", true, true), "");
  EXPECT_EQ(better_openblas_core("cooperlake", true, true), "");
  EXPECT_EQ(better_openblas_core("Haswell", false, true), "");
  EXPECT_EQ(better_openblas_core("Haswell", true, true), "SkylakeX");
  EXPECT_EQ(better_openblas_core("", true, true), "");  // not OpenBLAS
}

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

TEST(Runtime, DetectsTheBlasBehindTorch) {
  const BlasInfo info = detect_blas();
  EXPECT_FALSE(info.name.empty());
  if (info.name.rfind("OpenBLAS", 0) == 0) EXPECT_FALSE(info.core.empty());
}

}  // namespace
}  // namespace quest
