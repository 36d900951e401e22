// quest demo: every attention kind on one random batch — agreement of the paths, diagnostics,
// and a rough timing. quest info: BLAS and threads.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "commands.h"
#include "quest/core/fused.h"
#include "quest/lab/bench/timing.h"
#include "quest/quest.h"

namespace quest::cli {
namespace {

struct DemoConfig {
  int64_t batch = 8, heads = 4, tokens = 65, head_dim = 32;
  uint64_t seed = 0;
  int repeats = 5;
};

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

// Median milliseconds of forward+backward over `repeats` runs.
double time_forward_backward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const AttentionOptions& options, int repeats) {
  auto qq = q.detach().requires_grad_(), kk = k.detach().requires_grad_(), vv = v.detach().requires_grad_();
  return 1e3 * bench::median_seconds(repeats, [&] { attention(qq, kk, vv, options).sum().backward(); }, 0.0);
}

void run_demo(const DemoConfig& c) {
  warn_if_slow_blas();
  const int threads = configure_threads();
  torch::manual_seed(c.seed);
  const auto q = torch::randn({c.batch, c.heads, c.tokens, c.head_dim});
  const auto k = torch::randn({c.batch, c.heads, c.tokens, c.head_dim});
  const auto v = torch::randn({c.batch, c.heads, c.tokens, c.head_dim});
  std::printf("quest demo: B=%lld H=%lld N=%lld D=%lld, fp32, %d threads, BLAS %s\n\n",
              (long long)c.batch, (long long)c.heads, (long long)c.tokens, (long long)c.head_dim,
              threads, detect_blas().name.c_str());
  const double gflop = 3.5 * 4.0 * c.batch * c.heads * c.tokens * c.tokens * c.head_dim / 1e9;
  for (Kind kind : all_kinds()) {
    AttentionOptions o(kind);
    if (kind == Kind::qknorm) o.head_scale(torch::full({c.heads}, default_scale(kind, c.head_dim)));
    const auto fused = attention_forward(q, k, v, o.backend(Backend::fused), false, true);
    const auto composite = attention_forward(q, k, v, o.backend(Backend::composite), false, false);
    const auto reference = attention_forward(q, k, v, o.backend(Backend::reference), false, false);
    std::printf("== %s: |O| = %.4f, max |fused - reference| = %.2e, max |composite - reference| = "
                "%.2e\n",
                to_string(kind).c_str(), fused.output.norm().item<double>(),
                max_abs_diff(fused.output, reference.output),
                max_abs_diff(composite.output, reference.output));
    std::cout << format_diagnostics(*fused.diagnostics);
    const double t_fused = time_forward_backward(q, k, v, o.backend(Backend::fused), c.repeats);
    const double t_comp = time_forward_backward(q, k, v, o.backend(Backend::composite), c.repeats);
    const double t_ref = time_forward_backward(q, k, v, o.backend(Backend::reference), 1);
    std::printf("fwd+bwd: fused %.2f ms (%.1f GFLOP/s), composite %.2f ms (%.1f GFLOP/s), "
                "reference %.1f ms\n\n",
                t_fused, gflop / (t_fused / 1e3), t_comp, gflop / (t_comp / 1e3), t_ref);
  }
}

}  // namespace

void add_demo(CLI::App& app) {
  auto config = std::make_shared<DemoConfig>();
  CLI::App* cmd = app.add_subcommand(
      "demo", "Run every attention kind on a random batch: path agreement, diagnostics, timing");
  cmd->add_option("--batch", config->batch, "Batch size B")->check(CLI::PositiveNumber);
  cmd->add_option("--heads", config->heads, "Heads H")->check(CLI::PositiveNumber);
  cmd->add_option("--tokens", config->tokens, "Sequence length N")->check(CLI::PositiveNumber);
  cmd->add_option("--head-dim", config->head_dim, "Head dimension D")->check(CLI::PositiveNumber);
  cmd->add_option("--seed", config->seed, "Random seed");
  cmd->add_option("--repeats", config->repeats, "Timing repeats (median)")
      ->check(CLI::PositiveNumber);
  cmd->callback([config] { run_demo(*config); });
}

void add_info(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("info", "Show the BLAS and thread count torch will use");
  cmd->callback([] {
    warn_if_slow_blas();
    const BlasInfo blas = detect_blas();
    const int threads = configure_threads();
    const auto one = torch::zeros({1, 1, 1, 1});
    std::string pools;
    for (const std::string& path : openmp_runtimes()) pools += (pools.empty() ? "" : ", ") + path;
    const char* wait = std::getenv("OMP_WAIT_POLICY");
    pools += std::string("; wait policy ") + (wait ? wait : "libgomp's default");
    std::printf("torch: %s\nBLAS: %s (%s)\nthreads: %d\nOpenMP runtime: %s\nattention backend (automatic): float32 %s, float64 %s%s\n",
                torch_version().c_str(), blas.name.c_str(), blas.library.c_str(), threads, pools.c_str(),
                to_string(select_backend(one, one, one).backend).c_str(),
                to_string(select_backend(one.to(torch::kDouble), one.to(torch::kDouble), one.to(torch::kDouble)).backend).c_str(),
                backend_override() ? " (QUEST_ATTENTION_BACKEND)" : "");
    const std::string target = fused::simd_target();  // (first: applies QUEST_SIMD_TARGET)
    const char* forced = std::getenv("QUEST_SIMD_TARGET");
    std::string others;
    for (const std::string& t : fused::simd_targets()) others += " " + t;
    std::printf("fused kernel SIMD target: %s (%s:%s)\n", target.c_str(),
                forced && *forced ? "QUEST_SIMD_TARGET; it and the targets below it" : "QUEST_SIMD_TARGET picks one of",
                others.c_str());
  });
}

}  // namespace quest::cli
