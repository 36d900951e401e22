// Process-level measurements and tuning for benchmarks: glibc's malloc policy, page faults, peak
// memory. (Not the attention library's business: quest::torch never calls them.)
#pragma once

namespace quest::bench {

// Makes glibc's malloc keep what is freed for reuse, process-wide: no block gets its own mmap and
// the heap is never trimmed back to the OS. LibTorch allocates the composite attention's N x N
// buffers afresh on every call; by default each is mapped, faulted in page by page and unmapped
// again (composite runs measured here spent almost half their CPU time on page faults:
// results/bench/README.md). For benchmarks that want the composite's cost without that; memory
// once used stays with the process. Returns false (and changes nothing) where malloc is not glibc's.
bool keep_freed_memory();

// Minor page faults of this process so far (getrusage).
long minor_page_faults();

// This process's peak resident memory so far, in GiB (getrusage).
double peak_rss_gib();

}  // namespace quest::bench
