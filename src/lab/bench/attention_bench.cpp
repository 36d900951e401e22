#include "quest/lab/bench/attention_bench.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>
#include <stdexcept>

#include "quest/core/fused.h"
#include "quest/lab/bench/process.h"
#include "quest/lab/bench/timing.h"
#include "quest/torch/attention.h"
#include "quest/torch/runtime.h"

namespace quest::bench {

namespace {

double sgemm_gflops(int repeats) {
  torch::NoGradGuard no_grad;
  const auto a = torch::randn({1024, 1024}), b = torch::randn({1024, 1024});
  const double s = median_seconds(repeats * 2, [&] { (void)torch::mm(a, b); });
  return 2.0 * 1024 * 1024 * 1024 / s / 1e9;
}

// Median seconds of attention forward (and backward, when asked) on fixed inputs.
double time_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& dout,
                      const AttentionOptions& options, bool backward, int repeats) {
  return median_seconds(repeats, [&] {
    if (!backward) {
      torch::NoGradGuard no_grad;
      (void)attention(q, k, v, options);
      return;
    }
    auto qq = q.detach().requires_grad_(), kk = k.detach().requires_grad_(), vv = v.detach().requires_grad_();
    attention(qq, kk, vv, options).backward(dout);
  });
}

}  // namespace

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> v;
  std::stringstream ss(text);
  std::string item;
  try {
    while (std::getline(ss, item, ',')) v.push_back(std::stoll(item));
  } catch (const std::exception&) {
    v.clear();
  }
  if (v.size() != 4 || *std::min_element(v.begin(), v.end()) < 1)
    throw std::invalid_argument("--shapes: '" + text + "' is not B,H,N,D with positive sizes");
  return v;
}

void validate(const AttentionBenchOptions& o) {
  for (const auto& s : o.shapes) parse_shape(s);
  for (const auto& k : o.kinds)
    if (!parse_kind(k)) throw std::invalid_argument("--kinds: unknown kind '" + k + "'");
  for (const auto& b : o.backends)
    if (!parse_backend(b)) throw std::invalid_argument("--backends: unknown backend '" + b + "'");
  if (o.repeats < 1) throw std::invalid_argument("--repeats must be >= 1");
}

AttentionBenchResult run_attention_bench(const AttentionBenchOptions& o) {
  validate(o);  // before any timing
  AttentionBenchResult r;
  if (o.keep_freed_memory && !keep_freed_memory())
    throw std::runtime_error("quest bench: keep_freed_memory needs glibc's malloc");
  const long faults_at_start = minor_page_faults();
  r.threads = at::get_num_threads();
  r.simd = fused::simd_target();
  const BlasInfo blas = detect_blas();
  // The sgemm divisor depends on the kernel set OpenBLAS runs (OPENBLAS_CORETYPE can pin it).
  r.blas = blas.name + (blas.core.empty() ? "" : ", sgemm kernels " + blas.core);
  r.sgemm_samples.push_back(sgemm_gflops(o.repeats));
  for (const std::string& shape : o.shapes) {
    const auto s = parse_shape(shape);
    const int64_t B = s[0], H = s[1], N = s[2], D = s[3];
    const double fwd_flop = 4.0 * B * H * N * N * D, fb_flop = 3.5 * fwd_flop;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
    const auto q = torch::randn({B, H, N, D}, gen), k = torch::randn({B, H, N, D}, gen),
               v = torch::randn({B, H, N, D}, gen), dout = torch::randn({B, H, N, D}, gen);
    for (const std::string& kind : o.kinds) {
      r.sgemm_samples.push_back(sgemm_gflops(o.repeats));
      std::vector<BenchRow> rows;
      const BenchRow* composite = nullptr;
      for (const std::string& backend_name : o.backends) {
        const Backend backend = *parse_backend(backend_name);
        BenchRow row{shape, kind, backend_name};
        const double composite_gb = 3.0 * B * H * N * N * 4 / 1e9;  // S, P and a gradient
        if (backend != Backend::fused && composite_gb > o.composite_memory_limit_gb) {
          row.skipped = true;
          row.skipped_gb = composite_gb;
        } else {
          const auto options = AttentionOptions(*parse_kind(kind)).backend(backend).check_finite(false);
          row.fwd_gflops = fwd_flop / time_attention(q, k, v, dout, options, false, o.repeats) / 1e9;
          row.fwd_bwd_gflops = fb_flop / time_attention(q, k, v, dout, options, true, o.repeats) / 1e9;
        }
        rows.push_back(row);
      }
      for (const auto& row : rows)
        if (row.backend == "composite" && !row.skipped) composite = &row;
      for (auto& row : rows) {
        row.fwd_vs_composite = composite ? row.fwd_gflops / composite->fwd_gflops : NAN;
        row.fwd_bwd_vs_composite = composite ? row.fwd_bwd_gflops / composite->fwd_bwd_gflops : NAN;
        r.rows.push_back(row);
      }
    }
  }
  r.sgemm_samples.push_back(sgemm_gflops(o.repeats));
  r.sgemm_gflops = median(r.sgemm_samples);
  for (auto& row : r.rows) {
    row.fwd_vs_sgemm = row.fwd_gflops / r.sgemm_gflops;
    row.fwd_bwd_vs_sgemm = row.fwd_bwd_gflops / r.sgemm_gflops;
  }
  // quest vs standard through the fused kernel: alternate the two, median of per-pair ratios, so
  // that machine noise common to a pair cancels.
  for (int i = 0; o.paired > 0 && i < static_cast<int>(o.shapes.size()); ++i) {
    const auto s = parse_shape(o.shapes[i]);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
    const auto q = torch::randn({s[0], s[1], s[2], s[3]}, gen), k = torch::randn({s[0], s[1], s[2], s[3]}, gen),
               v = torch::randn({s[0], s[1], s[2], s[3]}, gen), dout = torch::randn({s[0], s[1], s[2], s[3]}, gen);
    auto time_kind = [&](Kind kind, bool backward) {
      return time_attention(q, k, v, dout, AttentionOptions(kind).backend(Backend::fused).check_finite(false),
                            backward, 1);
    };
    std::vector<double> fwd, fb;
    for (int p = 0; p < o.paired; ++p) {
      fwd.push_back(time_kind(Kind::quest, false) / time_kind(Kind::standard, false));
      fb.push_back(time_kind(Kind::quest, true) / time_kind(Kind::standard, true));
    }
    r.paired.push_back({o.shapes[i], median(fwd), median(fb)});
  }
  r.peak_rss_gib = peak_rss_gib();
  r.minor_faults = minor_page_faults() - faults_at_start;
  return r;
}

nlohmann::json AttentionBenchResult::to_json(const AttentionBenchOptions& o) const {
  nlohmann::json out_rows = nlohmann::json::array(), out_paired = nlohmann::json::array();
  for (const auto& row : rows) {
    if (row.skipped) continue;
    out_rows.push_back({{"shape", row.shape}, {"kind", row.kind}, {"backend", row.backend},
                        {"fwd_gflops", row.fwd_gflops}, {"fwd_bwd_gflops", row.fwd_bwd_gflops},
                        {"fwd_vs_composite", row.fwd_vs_composite}, {"fwd_bwd_vs_composite", row.fwd_bwd_vs_composite},
                        {"fwd_vs_sgemm", row.fwd_vs_sgemm}, {"fwd_bwd_vs_sgemm", row.fwd_bwd_vs_sgemm}});
  }
  for (const auto& p : paired)
    out_paired.push_back({{"shape", p.shape}, {"quest_over_standard_time_fwd", p.forward},
                          {"quest_over_standard_time_fwd_bwd", p.forward_backward}});
  return {{"threads", threads}, {"simd", simd}, {"blas", blas}, {"sgemm_gflops_median", sgemm_gflops},
          {"sgemm_gflops_samples", sgemm_samples}, {"peak_rss_gib", peak_rss_gib}, {"repeats", o.repeats},
          {"keep_freed_memory", o.keep_freed_memory}, {"minor_faults", minor_faults},
          {"paired", out_paired}, {"rows", out_rows}};
}

}  // namespace quest::bench
