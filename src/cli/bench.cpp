// quest bench: flags -> bench::run_attention_bench -> table, JSON.
#include <algorithm>
#include <cstdio>
#include <fstream>

#include "commands.h"
#include "quest/lab/bench/attention_bench.h"
#include "quest/torch/runtime.h"

namespace quest::cli {

static void run_bench(const bench::AttentionBenchOptions& o, const std::string& json_path) {
  bench::validate(o);
  warn_if_slow_blas();
  configure_threads();
  const bench::AttentionBenchResult r = bench::run_attention_bench(o);
  std::printf("quest bench: fp32, %d threads, SIMD %s, BLAS %s\n\n", r.threads, r.simd.c_str(), r.blas.c_str());
  std::printf("%-16s %-9s %-10s %12s %12s %10s %10s %10s %10s\n", "B,H,N,D", "kind", "backend", "fwd GFLOP/s",
              "f+b GFLOP/s", "fwd/comp", "f+b/comp", "fwd/sgemm", "f+b/sgemm");
  for (const auto& row : r.rows) {
    if (row.skipped) {
      std::printf("%-16s %-9s %-10s   skipped: needs ~%.0f GB for N x N buffers\n", row.shape.c_str(),
                  row.kind.c_str(), row.backend.c_str(), row.skipped_gb);
      continue;
    }
    std::printf("%-16s %-9s %-10s %12.1f %12.1f %10.2f %10.2f %10.2f %10.2f\n", row.shape.c_str(), row.kind.c_str(),
                row.backend.c_str(), row.fwd_gflops, row.fwd_bwd_gflops, row.fwd_vs_composite,
                row.fwd_bwd_vs_composite, row.fwd_vs_sgemm, row.fwd_bwd_vs_sgemm);
  }
  std::printf("\nsgemm 1024^3: median %.1f GFLOP/s over %zu samples (min %.1f, max %.1f)\n", r.sgemm_gflops,
              r.sgemm_samples.size(), *std::min_element(r.sgemm_samples.begin(), r.sgemm_samples.end()),
              *std::max_element(r.sgemm_samples.begin(), r.sgemm_samples.end()));
  for (const auto& p : r.paired)
    std::printf("fused quest / standard time, median of %d alternating pairs, %s: forward %.3f, "
                "forward+backward %.3f\n",
                o.paired, p.shape.c_str(), p.forward, p.forward_backward);
  std::printf("peak RSS of this process: %.2f GiB; minor page faults: %ld (malloc: %s)\n", r.peak_rss_gib,
              r.minor_faults, o.keep_freed_memory ? "glibc, freed memory kept" : "default");
  if (!json_path.empty()) std::ofstream(json_path) << r.to_json(o).dump(2) << "\n";
}

void add_bench(CLI::App& app) {
  auto o = std::make_shared<bench::AttentionBenchOptions>();
  auto json_path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Attention GFLOP/s (fused, composite, reference) with ratios to composite and sgemm");
  cmd->add_option("--shapes", o->shapes, "Shapes B,H,N,D (repeatable)")->capture_default_str();
  cmd->add_option("--kinds", o->kinds, "Attention kinds")->capture_default_str();
  cmd->add_option("--backends", o->backends, "Backends: fused, composite, reference, sdpa")->capture_default_str();
  cmd->add_option("--repeats", o->repeats, "Timed repeats per measurement (median)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--composite-memory-limit", o->composite_memory_limit_gb,
                  "Skip composite/reference where N x N buffers exceed this many GB")
      ->capture_default_str();
  cmd->add_option("--paired", o->paired,
                  "Also time fused quest against fused standard in this many alternating pairs "
                  "per shape (median ratio)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--keep-freed-memory", o->keep_freed_memory,
               "glibc's malloc keeps freed memory for the whole run (no mmap per large block, no "
               "trimming): the composite without the page faults of its per-call N x N buffers");
  cmd->add_option("--json", *json_path, "Write the results as JSON here");
  cmd->callback([o, json_path] { run_bench(*o, *json_path); });
}

}  // namespace quest::cli
