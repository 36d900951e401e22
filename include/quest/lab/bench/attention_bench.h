// The attention benchmark: GFLOP/s by the FlashAttention convention (forward 4*B*H*N^2*D FLOPs,
// forward+backward 3.5x that), with ratios measured in the same run against the LibTorch composite
// path of the same kind and against OpenBLAS sgemm at 1024^3. Medians over repeats; the machine is
// shared and noisy, so sgemm is sampled before every kind of every shape and the ratios use the
// median of all samples.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace quest::bench {

struct AttentionBenchOptions {
  // The ViT quest trains (128,4,50,16), its language model (16,4,128,32), then larger N.
  std::vector<std::string> shapes = {"128,4,50,16", "64,4,65,32", "16,4,128,32", "32,12,197,64",
                                     "4,8,1024,64", "1,8,4096,64"};
  std::vector<std::string> kinds = {"standard", "quest"};
  std::vector<std::string> backends = {"fused", "composite"};
  int repeats = 5;
  int paired = 0;  // alternating quest/standard pairs per shape through the fused kernel (0: off)
  double composite_memory_limit_gb = 8.0;  // skip composite/reference where N x N buffers exceed it
  // glibc's malloc keeps freed memory for the whole run (keep_freed_memory in runtime.h): every
  // backend without the page faults of buffers mapped afresh per call.
  bool keep_freed_memory = false;
};

struct BenchRow {
  std::string shape, kind, backend;
  bool skipped = false;
  double skipped_gb = 0;  // what the N x N buffers would need
  double fwd_gflops = 0, fwd_bwd_gflops = 0;
  double fwd_vs_composite = 0, fwd_bwd_vs_composite = 0;  // NaN without a composite row
  double fwd_vs_sgemm = 0, fwd_bwd_vs_sgemm = 0;
};

struct PairedRatio {
  std::string shape;
  double forward = 0, forward_backward = 0;  // median over pairs of time(quest) / time(standard)
};

struct AttentionBenchResult {
  int threads = 0;
  std::string simd, blas;
  std::vector<double> sgemm_samples;
  double sgemm_gflops = 0;  // median of the samples
  std::vector<BenchRow> rows;
  std::vector<PairedRatio> paired;
  double peak_rss_gib = 0;
  long minor_faults = 0;  // minor page faults during the run
  nlohmann::json to_json(const AttentionBenchOptions& options) const;
};

// Parses "B,H,N,D"; throws std::invalid_argument naming a malformed shape.
std::vector<int64_t> parse_shape(const std::string& text);
// Throws std::invalid_argument naming a malformed shape, an unknown kind or backend.
void validate(const AttentionBenchOptions& options);

AttentionBenchResult run_attention_bench(const AttentionBenchOptions& options);

}  // namespace quest::bench
