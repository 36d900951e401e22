// Process-level facts the LibTorch layer depends on: which BLAS backs torch's matmul, and threads.
#pragma once

#include <exception>
#include <string>
#include <vector>

namespace quest {

struct BlasInfo {
  std::string name;       // "MKL (linked into LibTorch)", "OpenBLAS ...", "reference", "unknown"
  std::string library;    // the shared object providing sgemm_
  bool reference = false; // netlib reference BLAS: ~30x slower matmul
  bool openblas = false;
  std::string core;       // OpenBLAS: the kernel set it chose (e.g. "SkylakeX", "Haswell")
};

// torch's pip wheels link MKL into libtorch_cpu and run it on torch's own libgomp; a LibTorch
// built from source may use another BLAS. (The OpenBLAS workarounds quest needed on Debian's
// LibTorch 1.13 -- core-type warning, OpenMP-build re-exec, two-pool warning -- are gone:
// results/torch2/README.md has the measurements that retired them.)
BlasInfo detect_blas();

// The LibTorch quest was compiled against, "2.13.0".
std::string torch_version();

// Prints a loud warning to stderr (once per process) if torch's matmul runs on the reference BLAS.
// Returns true if it warned.
bool warn_if_slow_blas();

// The OpenMP runtimes mapped into this process (file paths of libgomp, libiomp5, libomp), one
// entry each. quest links torch's own libgomp, so a process with torch and quest should have one:
// two runtimes would keep two thread pools that steal each other's cores.
std::vector<std::string> openmp_runtimes();

// OpenBLAS's own thread count (its pthread pool is separate from torch's intra-op threads).
// Several threads calling a multi-threaded OpenBLAS at once serialise on its pool: runs trained
// side by side must set it to 1. Returns the previous count, or -1 if the BLAS is not OpenBLAS.
int set_blas_threads(int threads);

// Intra-op threads: OMP_NUM_THREADS if set, else every hardware thread. Returns the count used.
int configure_threads();

// Whether the fused kernel's bfloat16 path takes bf16 products (vdpbf16ps, P and dS rounded to
// bf16: docs/kernels.md) where the CPU has AVX512_BF16; true by default. false: float32 arithmetic
// on the bf16 values, i.e. the float32 kernel's results on them, the same on every machine.
// Process-wide, read by each call. set_ returns the previous setting.
bool set_bf16_products(bool enabled);
bool bf16_products_enabled();
// The fused kernel's SIMD target from now on (quest::fused::set_simd_target: e.g. "AVX2" runs an
// AVX2 machine's code and rounding here; "" the best this CPU has). Process-wide; returns the
// previous target; an unknown name is a std::invalid_argument listing the ones there are.
std::string set_simd_target(const std::string& name);

// An exception's message for a user: c10::Error's without LibTorch's C++ backtrace, else what().
std::string error_message(const std::exception& e);

}  // namespace quest
