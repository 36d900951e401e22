// Process-level facts: which BLAS backs torch's matmul and whether its kernels fit the CPU.
#include <gtest/gtest.h>

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

TEST(Runtime, DetectsTheBlasBehindTorch) {
  const BlasInfo info = detect_blas();
  EXPECT_FALSE(info.name.empty());
  if (info.name.rfind("OpenBLAS", 0) == 0) EXPECT_FALSE(info.core.empty());
}

}  // namespace
}  // namespace quest
