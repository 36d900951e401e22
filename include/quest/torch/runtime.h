// Process-level facts the LibTorch layer depends on: which BLAS backs torch's matmul, and threads.
#pragma once

#include <exception>
#include <string>

namespace quest {

struct BlasInfo {
  std::string name;       // "OpenBLAS ...", "reference", "unknown"
  std::string library;    // the shared object providing sgemm_
  bool reference = false; // netlib reference BLAS: ~30x slower matmul
  bool openblas = false;
  bool openmp = false;     // OpenBLAS built with USE_OPENMP: its threads are libgomp's
  std::string core;       // OpenBLAS: the kernel set it chose (e.g. "SkylakeX", "Prescott")
  // OpenBLAS picked kernels older than the CPU's (it did not recognise the CPU) and
  // OPENBLAS_CORETYPE is unset: the kernel set to ask for, else "".
  std::string better_core;
};

BlasInfo detect_blas();

// The OpenBLAS kernel set worth asking for instead of `core` on a CPU with these features, or ""
// when `core` already uses them. (OpenBLAS 0.3.21 does not recognise some AVX-512 Xeons and falls
// back to Prescott's SSE3 kernels: sgemm 42 instead of 207 GFLOP/s on the
// machine of results/blas-coretype.)
std::string better_openblas_core(const std::string& core, bool avx512, bool avx2);

// Prints a loud warning to stderr (once per process) if torch's matmul runs on the reference BLAS
// or on OpenBLAS kernels older than the CPU (saying what to set). Returns true if it warned.
bool warn_if_slow_blas();

// OpenBLAS's own thread count (its pthread pool is separate from torch's intra-op threads).
// Several threads calling a multi-threaded OpenBLAS at once serialise on its pool: runs trained
// side by side must set it to 1. Returns the previous count, or -1 if the BLAS is not OpenBLAS.
int set_blas_threads(int threads);

// Intra-op threads: OMP_NUM_THREADS if set, else every hardware thread. Returns the count used.
int configure_threads();

// Makes glibc's malloc keep what is freed for reuse, process-wide: no block gets its own mmap and
// the heap is never trimmed back to the OS. LibTorch allocates the composite attention's N x N
// buffers afresh on every call; by default each is mapped, faulted in page by page and unmapped
// again (issue #18 found composite runs spending almost half their CPU time on page faults).
// For benchmarks that want the composite's cost without that; memory once used stays with the
// process. Returns false (and changes nothing) where malloc is not glibc's.
bool keep_freed_memory();

// Minor page faults of this process so far (getrusage).
long minor_page_faults();

// An exception's message for a user: c10::Error's without LibTorch's C++ backtrace, else what().
std::string error_message(const std::exception& e);

}  // namespace quest
