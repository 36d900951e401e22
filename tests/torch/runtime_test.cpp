// Process-level facts: which BLAS backs torch's matmul, which OpenMP runtime runs the threads.
#include <gtest/gtest.h>

#include <ATen/Parallel.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "quest/torch/attention.h"
#include "quest/torch/runtime.h"

namespace quest {
namespace {

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
