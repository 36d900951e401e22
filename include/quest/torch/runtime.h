// Process-level facts the LibTorch layer depends on: which BLAS backs torch's matmul, and threads.
#pragma once

#include <string>

namespace quest {

struct BlasInfo {
  std::string name;       // "OpenBLAS ...", "reference", "unknown"
  std::string library;    // the shared object providing sgemm_
  bool reference = false; // netlib reference BLAS: ~30x slower matmul
};

BlasInfo detect_blas();

// Prints a loud warning to stderr (once per process) if torch's matmul runs on the reference BLAS.
// Returns true if it warned.
bool warn_if_reference_blas();

// OpenBLAS's own thread count (its pthread pool is separate from torch's intra-op threads).
// Several threads calling a multi-threaded OpenBLAS at once serialise on its pool: runs trained
// side by side must set it to 1. Returns the previous count, or -1 if the BLAS is not OpenBLAS.
int set_blas_threads(int threads);

// Intra-op threads: OMP_NUM_THREADS if set, else every hardware thread. Returns the count used.
int configure_threads();

}  // namespace quest
