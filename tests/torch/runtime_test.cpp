// Process-level facts: which BLAS backs torch's matmul and whether its kernels fit the CPU.
#include <gtest/gtest.h>

#include <ATen/Parallel.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

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
  if (info.name.rfind("OpenBLAS", 0) == 0) EXPECT_FALSE(info.core.empty());
}

TEST(Runtime, FindsOpenBlasOpenMpBuildBesideThePthreadOne) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / ("quest-blas-" + std::to_string(::getpid()));
  fs::create_directories(root / "openblas-pthread");
  BlasInfo pthread_build;
  pthread_build.openblas = true;
  pthread_build.library = (root / "openblas-pthread" / "libblas.so.3").string();
  EXPECT_EQ(openmp_openblas_dir(pthread_build), "");  // no OpenMP build installed
  fs::create_directories(root / "openblas-openmp");
  for (const char* name : {"libopenblas.so.0", "libblas.so.3"})
    std::ofstream(root / "openblas-openmp" / name) << "";
  EXPECT_EQ(openmp_openblas_dir(pthread_build), (root / "openblas-openmp").string());
  BlasInfo openmp_build = pthread_build;
  openmp_build.openmp = true;  // already one pool
  EXPECT_EQ(openmp_openblas_dir(openmp_build), "");
  BlasInfo other;
  other.library = pthread_build.library;  // not OpenBLAS
  EXPECT_EQ(openmp_openblas_dir(other), "");
  fs::remove_all(root);
}

// The two-pool warning: only with several torch threads, OpenBLAS's pthread build and libgomp's
// spinning default; claimed once per process. (Each test runs in its own process under CTest.)
TEST(Runtime, WarnsOnceAboutTwoThreadPools) {
  const BlasInfo blas = detect_blas();
  const bool two_pools = blas.openblas && !blas.openmp;
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  if (policy && *policy) GTEST_SKIP() << "OMP_WAIT_POLICY is set: the user chose";
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  EXPECT_EQ(two_thread_pools_warning(false), "");  // one thread: one pool does the work
  at::set_num_threads(2);
  const std::string message = two_thread_pools_warning(false);
  if (!two_pools) {
    EXPECT_EQ(message, "") << blas.name;
  } else {
    EXPECT_NE(message.find("second pool"), std::string::npos) << message;
    const std::string dir = openmp_openblas_dir(blas);
    EXPECT_NE(message.find(dir.empty() ? "OMP_WAIT_POLICY=passive" : "LD_LIBRARY_PATH=" + dir),
              std::string::npos) << message;
    EXPECT_EQ(two_thread_pools_warning(false), message);  // not claimed yet
    EXPECT_TRUE(warn_if_two_thread_pools());               // claims it
    EXPECT_EQ(two_thread_pools_warning(true), "");
    EXPECT_FALSE(warn_if_two_thread_pools());
  }
  at::set_num_threads(threads);
}

}  // namespace
}  // namespace quest
