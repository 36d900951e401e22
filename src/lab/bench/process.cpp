#include "quest/lab/bench/process.h"

#include <sys/resource.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <limits>

namespace quest::bench {

bool keep_freed_memory() {
#if defined(__GLIBC__)
  // M_MMAP_MAX = 0: every block from the heap (M_MMAP_THRESHOLD cannot exceed 32 MB, so raising
  // it would leave the large N x N buffers on mmap). The trim threshold: never give the top back.
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max()) == 1;
#else
  return false;
#endif
}

long minor_page_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

double peak_rss_gib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0 / 1024.0;  // KiB -> GiB
}

}  // namespace quest::bench
