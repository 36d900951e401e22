// quest bench: attention throughput by the FlashAttention convention (forward 4*B*H*N^2*D FLOPs,
// backward 2.5x that), with ratios measured in the same run against the LibTorch composite path
// of the same kind and against OpenBLAS sgemm at 1024^3. Medians over repeats.
#include <sys/resource.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "timing.h"
#include "quest/core/fused.h"
#include "quest/quest.h"

namespace quest::cli {
namespace {

struct BenchConfig {
  std::vector<std::string> shapes = {"64,4,65,32", "32,12,197,64", "4,8,1024,64", "1,8,4096,64"};
  std::vector<std::string> kinds = {"standard", "quest"};
  std::vector<std::string> backends = {"fused", "composite"};
  int repeats = 5;
  int paired = 0;  // alternating quest/standard pairs per shape (0: off)
  double composite_memory_limit_gb = 8.0;
  std::string json_path;
};

double sgemm_gflops(int repeats) {
  torch::NoGradGuard no_grad;
  const auto a = torch::randn({1024, 1024}), b = torch::randn({1024, 1024});
  const double s = median_seconds(repeats * 2, [&] { (void)torch::mm(a, b); });
  return 2.0 * 1024 * 1024 * 1024 / s / 1e9;
}

double peak_rss_gb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0 / 1024.0;  // KiB -> GiB
}

std::vector<int64_t> parse_shape(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::stoll(item));
  if (v.size() != 4 || *std::min_element(v.begin(), v.end()) < 1)
    throw std::invalid_argument("--shapes: '" + s + "' is not B,H,N,D with positive sizes");
  return v;
}

void run_bench(const BenchConfig& c) {
  for (const std::string& shape : c.shapes) parse_shape(shape);  // reject bad input before timing
  warn_if_reference_blas();
  const int threads = configure_threads();
  // The machine is shared and noisy: sgemm is sampled before every kind of every shape and the
  // ratios use the median of all samples.
  std::vector<double> sgemm_samples = {sgemm_gflops(c.repeats)};
  std::printf("quest bench: fp32, %d threads, SIMD %s, BLAS %s\n\n", threads,
              fused::simd_target().c_str(), detect_blas().name.c_str());
  std::printf("%-16s %-9s %-10s %12s %12s %10s %10s %10s %10s\n", "B,H,N,D", "kind", "backend",
              "fwd GFLOP/s", "f+b GFLOP/s", "fwd/comp", "f+b/comp", "fwd/sgemm", "f+b/sgemm");
  nlohmann::json rows = nlohmann::json::array();
  for (const std::string& shape_text : c.shapes) {
    const auto s = parse_shape(shape_text);
    const int64_t B = s[0], H = s[1], N = s[2], D = s[3];
    const double fwd_flop = 4.0 * B * H * N * N * D, fb_flop = 3.5 * fwd_flop;
    torch::manual_seed(0);
    const auto q = torch::randn({B, H, N, D}), k = torch::randn({B, H, N, D}),
               v = torch::randn({B, H, N, D}), dout = torch::randn({B, H, N, D});
    for (const std::string& kind_name : c.kinds) {
      sgemm_samples.push_back(sgemm_gflops(c.repeats));
      const auto kind = parse_kind(kind_name);
      if (!kind) throw std::invalid_argument("--kinds: unknown kind '" + kind_name + "'");
      std::map<std::string, std::pair<double, double>> gflops;  // backend -> (fwd, fwd+bwd)
      for (const std::string& backend_name : c.backends) {
        const auto backend = parse_backend(backend_name);
        if (!backend) throw std::invalid_argument("--backends: unknown backend '" + backend_name + "'");
        const double composite_gb = 3.0 * B * H * N * N * 4 / 1e9;  // S, P and a gradient
        if (*backend != Backend::fused && composite_gb > c.composite_memory_limit_gb) {
          std::printf("%-16s %-9s %-10s   skipped: needs ~%.0f GB for N x N buffers\n",
                      shape_text.c_str(), kind_name.c_str(), backend_name.c_str(), composite_gb);
          continue;
        }
        const auto opts = AttentionOptions(*kind).backend(*backend).check_finite(false);
        const double t_fwd = median_seconds(c.repeats, [&] {
          torch::NoGradGuard no_grad;
          (void)attention(q, k, v, opts);
        });
        const double t_fb = median_seconds(c.repeats, [&] {
          auto qq = q.detach().requires_grad_(), kk = k.detach().requires_grad_(),
               vv = v.detach().requires_grad_();
          attention(qq, kk, vv, opts).backward(dout);
        });
        gflops[backend_name] = {fwd_flop / t_fwd / 1e9, fb_flop / t_fb / 1e9};
      }
      for (const auto& [backend_name, g] : gflops) {
        const auto comp = gflops.find("composite");
        const double rf = comp != gflops.end() ? g.first / comp->second.first : NAN;
        const double rb = comp != gflops.end() ? g.second / comp->second.second : NAN;
        rows.push_back({{"shape", shape_text}, {"kind", kind_name}, {"backend", backend_name},
                        {"fwd_gflops", g.first}, {"fwd_bwd_gflops", g.second},
                        {"fwd_vs_composite", rf}, {"fwd_bwd_vs_composite", rb}});
      }
    }
  }
  sgemm_samples.push_back(sgemm_gflops(c.repeats));
  const double sgemm = median(sgemm_samples);
  // quest vs standard through the fused kernel: alternate the two, median of per-pair ratios,
  // so that machine noise common to a pair cancels.
  nlohmann::json paired = nlohmann::json::array();
  if (c.paired > 0) {
    for (const std::string& shape_text : c.shapes) {
      const auto s = parse_shape(shape_text);
      torch::manual_seed(0);
      const auto q = torch::randn({s[0], s[1], s[2], s[3]}), k = torch::randn_like(q),
                 v = torch::randn_like(q), dout = torch::randn_like(q);
      auto time_kind = [&](Kind kind, bool backward) {
        const auto opts = AttentionOptions(kind).backend(Backend::fused).check_finite(false);
        return median_seconds(1, [&] {
          if (!backward) {
            torch::NoGradGuard no_grad;
            (void)attention(q, k, v, opts);
            return;
          }
          auto qq = q.detach().requires_grad_(), kk = k.detach().requires_grad_(),
               vv = v.detach().requires_grad_();
          attention(qq, kk, vv, opts).backward(dout);
        });
      };
      std::vector<double> fwd, fb;
      for (int r = 0; r < c.paired; ++r) {
        fwd.push_back(time_kind(Kind::quest, false) / time_kind(Kind::standard, false));
        fb.push_back(time_kind(Kind::quest, true) / time_kind(Kind::standard, true));
      }
      paired.push_back({{"shape", shape_text}, {"quest_over_standard_time_fwd", median(fwd)},
                        {"quest_over_standard_time_fwd_bwd", median(fb)}});
    }
  }
  for (auto& row : rows) {
    const double f = row["fwd_gflops"], b = row["fwd_bwd_gflops"];
    row["fwd_vs_sgemm"] = f / sgemm;
    row["fwd_bwd_vs_sgemm"] = b / sgemm;
    std::printf("%-16s %-9s %-10s %12.1f %12.1f %10.2f %10.2f %10.2f %10.2f\n",
                row["shape"].get<std::string>().c_str(), row["kind"].get<std::string>().c_str(),
                row["backend"].get<std::string>().c_str(), f, b,
                row["fwd_vs_composite"].get<double>(), row["fwd_bwd_vs_composite"].get<double>(),
                f / sgemm, b / sgemm);
  }
  std::printf("\nsgemm 1024^3: median %.1f GFLOP/s over %zu samples (min %.1f, max %.1f)\n",
              sgemm, sgemm_samples.size(),
              *std::min_element(sgemm_samples.begin(), sgemm_samples.end()),
              *std::max_element(sgemm_samples.begin(), sgemm_samples.end()));
  for (const auto& p : paired)
    std::printf("fused quest / standard time, median of %d alternating pairs, %s: forward %.3f, "
                "forward+backward %.3f\n",
                c.paired, p["shape"].get<std::string>().c_str(),
                p["quest_over_standard_time_fwd"].get<double>(),
                p["quest_over_standard_time_fwd_bwd"].get<double>());
  std::printf("peak RSS of this process: %.2f GiB\n", peak_rss_gb());
  if (!c.json_path.empty()) {
    nlohmann::json out = {{"threads", threads},
                          {"simd", fused::simd_target()},
                          {"sgemm_gflops_median", sgemm},
                          {"sgemm_gflops_samples", sgemm_samples},
                          {"peak_rss_gib", peak_rss_gb()},
                          {"repeats", c.repeats},
                          {"paired", paired},
                          {"rows", rows}};
    std::ofstream(c.json_path) << out.dump(2) << "\n";
  }
}

}  // namespace

void add_bench(CLI::App& app) {
  auto config = std::make_shared<BenchConfig>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Attention GFLOP/s (fused, composite, reference) with ratios to composite and sgemm");
  cmd->add_option("--shapes", config->shapes, "Shapes B,H,N,D (repeatable)")->capture_default_str();
  cmd->add_option("--kinds", config->kinds, "Attention kinds")->capture_default_str();
  cmd->add_option("--backends", config->backends, "Backends: fused, composite, reference")
      ->capture_default_str();
  cmd->add_option("--repeats", config->repeats, "Timed repeats per measurement (median)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--composite-memory-limit", config->composite_memory_limit_gb,
                  "Skip composite/reference where N x N buffers exceed this many GB")
      ->capture_default_str();
  cmd->add_option("--paired", config->paired,
                  "Also time fused quest against fused standard in this many alternating pairs "
                  "per shape (median ratio)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--json", config->json_path, "Write the results as JSON here");
  cmd->callback([config] { run_bench(*config); });
}

}  // namespace quest::cli
