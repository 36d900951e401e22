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

// The directory of OpenBLAS's OpenMP build (Debian's libopenblas0-openmp) when torch runs the
// pthread build and the OpenMP one is installed beside it, else "". Loading it instead
// (LD_LIBRARY_PATH, before the process starts) leaves one thread pool, libgomp's, for torch,
// quest's kernels and the matrix products; the `quest` CLI does so itself (src/cli/main.cpp).
std::string openmp_openblas_dir(const BlasInfo& blas);

// What to tell a user when torch runs more than one intra-op thread on libgomp's pool while
// OpenBLAS's pthread build keeps a second pool and libgomp spins by default (OMP_WAIT_POLICY
// unset): on few cores the pools steal each other's time (quest.MultiheadAttention training
// steps ran 1.4-1.9x slower at 2 threads than at 1, results/python-bench). "" when that is not
// the case or the warning was already claimed; `claim` marks it given (once per process).
std::string two_thread_pools_warning(bool claim);

// TORCH_WARN of two_thread_pools_warning(true), if any (on stderr; the Python package gives it as
// a UserWarning when a module is built). The attention entry points call it; true if it warned.
bool warn_if_two_thread_pools();

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

// This process's peak resident memory so far, in GiB (getrusage).
double peak_rss_gib();

// An exception's message for a user: c10::Error's without LibTorch's C++ backtrace, else what().
std::string error_message(const std::exception& e);

}  // namespace quest
