// Torch-free driver of one fused forward (and optionally backward), for profilers:
//   valgrind --tool=callgrind build/bench/profile_fused 1 4 1024 64 quest
//   perf record build/bench/profile_fused 64 4 65 32 quest backward 2000
// Arguments: B H N D kind [backward [repeats]]; prints the seconds and GFLOP/s of the repeated
// calls (after one warm-up call) and a hash of the outputs' bits. One thread unless OMP_NUM_THREADS
// says otherwise.
// PROFILE_TARGET=AVX2 (any Highway target this CPU has; fused::set_simd_target, as the library's
// QUEST_SIMD_TARGET) runs that target's code, e.g. the AVX2 code on an AVX-512 machine, as an
// AVX2-only machine would.
// PROFILE_CACHED=inputs (or all) gives every batch entry the first one's inputs (q, k, v; O and
// dO in the backward; with all, also the outputs and gradients), so that they stay in cache: what
// the kernel would do without waiting on memory. The results are then meaningless; all: one
// thread only (the outputs alias).
// PROFILE_DTYPE=bf16 runs the bfloat16 entry points (q, k, v and dQ, dK, dV in bf16; bf16 products
// where the CPU has AVX512_BF16; PROFILE_BF16_DOT=0: float32 arithmetic on the bf16 values).
// PROFILE_LAYOUT=packed lays q, k, v (and dQ, dK, dV) out as one (B, N, 3, H, D) projection and O,
// dO as (B, N, H, D), as quest's MultiheadAttention hands them to the kernel (default: contiguous
// (B, H, N, D) tensors).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "quest/core/fused.h"

int main(int argc, char** argv) {
  using namespace quest;
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s B H N D kind [forward|backward [repeats]]\n", argv[0]);
    return 2;
  }
  const int64_t B = std::atoll(argv[1]), H = std::atoll(argv[2]), N = std::atoll(argv[3]),
                D = std::atoll(argv[4]);
  const auto kind = parse_kind(argv[5]);
  if (B < 1 || H < 1 || N < 1 || D < 1 || !kind || *kind == Kind::qk_layernorm) {
    std::fprintf(stderr, "need positive sizes and a kind other than qk_layernorm\n");
    return 2;
  }
  const std::string mode = argc > 6 ? argv[6] : "forward";
  const int repeats = argc > 7 ? std::atoi(argv[7]) : 1;
  if ((mode != "forward" && mode != "backward") || repeats < 1) {
    std::fprintf(stderr, "the mode is forward or backward, and repeats a positive integer\n");
    return 2;
  }
  const bool backward = mode == "backward";
  const AttentionDims dims{B, H, N, N, D, D};
  const size_t n = static_cast<size_t>(B * H * N * D);
  // qkv and dqkv hold q, k, v (dq, dk, dv) one after the other, or interleaved when packed.
  std::vector<float> qkv(3 * n), o(n), dout(n), dqkv(3 * n), shift(B * H * N), log_sum(B * H * N);
  std::mt19937 rng(1);
  std::normal_distribution<float> n01;
  for (auto* x : {&qkv, &dout})
    for (auto& e : *x) e = n01(rng);
  const std::string layout = std::getenv("PROFILE_LAYOUT") ? std::getenv("PROFILE_LAYOUT") : "contiguous";
  if (layout != "contiguous" && layout != "packed") {
    std::fprintf(stderr, "PROFILE_LAYOUT is contiguous or packed\n");
    return 2;
  }
  const bool packed = layout == "packed";
  const std::string cached = std::getenv("PROFILE_CACHED") ? std::getenv("PROFILE_CACHED") : "";
  if (!cached.empty() && cached != "inputs" && cached != "all") {
    std::fprintf(stderr, "PROFILE_CACHED is inputs or all\n");
    return 2;
  }
  if (cached == "all" && std::getenv("OMP_NUM_THREADS")) {
    std::fprintf(stderr, "PROFILE_CACHED=all aliases the outputs: one thread only\n");
    return 2;
  }
  // part: 0, 1, 2 for q, k, v in a qkv buffer; -1 for O and dO.
  auto view = [&](auto* data, int part = -1) {
    auto vw = contiguous_view(data + std::max(part, 0) * static_cast<int64_t>(packed ? H * D : n), H, N, D);
    if (packed) {
      const int64_t row = (part < 0 ? 1 : 3) * H * D;
      vw.stride[0] = N * row;
      vw.stride[1] = D;
      vw.stride[2] = row;
    }
    if (cached == "all" || (cached == "inputs" && std::is_const_v<std::remove_pointer_t<decltype(data)>>))
      vw.stride[0] = 0;  // every batch entry reads (writes) the first one's rows
    return vw;
  };
  AttentionArgs<float> a;
  a.dims = dims;
  a.q = view(static_cast<const float*>(qkv.data()), 0);
  a.k = view(static_cast<const float*>(qkv.data()), 1);
  a.v = view(static_cast<const float*>(qkv.data()), 2);
  a.q_norm = kind_traits(*kind).q_norm;
  a.k_norm = kind_traits(*kind).k_norm;
  a.scale = default_scale(*kind, D);
  const int threads = std::getenv("OMP_NUM_THREADS") ? 0 : 1;
  if (const char* want = std::getenv("PROFILE_TARGET")) {  // a Highway target name, e.g. AVX2
    try {
      fused::set_simd_target(want);
    } catch (const std::invalid_argument& e) {
      std::fprintf(stderr, "PROFILE_TARGET: %s\n", e.what());
      return 2;
    }
  }
  const std::string dtype = std::getenv("PROFILE_DTYPE") ? std::getenv("PROFILE_DTYPE") : "fp32";
  if (dtype != "fp32" && dtype != "bf16") {
    std::fprintf(stderr, "PROFILE_DTYPE is fp32 or bf16\n");
    return 2;
  }
  const bool dot = !(std::getenv("PROFILE_BF16_DOT") && std::string(std::getenv("PROFILE_BF16_DOT")) == "0");
  std::vector<bfloat16> qkv16(3 * n), dqkv16(3 * n);
  for (size_t i = 0; i < 3 * n; ++i) qkv16[i] = to_bfloat16(qkv[i]);
  auto run_bf16 = [&] {
    const auto* in16 = static_cast<const bfloat16*>(qkv16.data());
    fused::Bf16Forward f{view(in16, 0), view(in16, 1), view(in16, 2), view(o.data())};
    f.bf16_dot = dot;
    fused::forward(a, f, {shift.data(), log_sum.data()}, nullptr, threads);
    if (!backward) return;
    fused::Bf16Backward g{f.q, f.k, f.v, view(static_cast<const float*>(o.data())),
                          view(static_cast<const float*>(dout.data())), view(dqkv16.data(), 0),
                          view(dqkv16.data(), 1), view(dqkv16.data(), 2)};
    g.bf16_dot = dot;
    fused::backward(a, g, {shift.data(), log_sum.data()}, nullptr, threads);
  };
  auto run_once = [&] {
    if (dtype == "bf16") return run_bf16();
    fused::forward(a, view(o.data()), {shift.data(), log_sum.data()}, nullptr, threads);
    if (!backward) return;
    AttentionGrads<float> g;
    g.dq = view(dqkv.data(), 0);
    g.dk = view(dqkv.data(), 1);
    g.dv = view(dqkv.data(), 2);
    fused::backward(a, view(static_cast<const float*>(o.data())),
                    view(static_cast<const float*>(dout.data())), {shift.data(), log_sum.data()}, g,
                    threads);
  };
  run_once();  // warm-up: scratch buffers, pages, thread pool
  const auto t0 = std::chrono::steady_clock::now();
  for (int rep = 0; rep < repeats; ++rep) run_once();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const size_t dk0 = packed ? H * D : n;  // dk's first element
  const double flop = 4.0 * B * H * N * N * D * (backward ? 3.5 : 1.0) * repeats;
  // A hash of every output bit (O, and dQ, dK, dV with backward): two builds that should compute
  // the same thing bit for bit print the same hash.
  uint64_t hash = 1469598103934665603ull;  // FNV-1a
  auto mix = [&](const void* p, size_t bytes) {
    for (size_t i = 0; i < bytes; ++i) hash = (hash ^ static_cast<const unsigned char*>(p)[i]) * 1099511628211ull;
  };
  mix(o.data(), o.size() * sizeof(float));
  if (backward && dtype == "bf16") mix(dqkv16.data(), dqkv16.size() * sizeof(bfloat16));
  if (backward && dtype != "bf16") mix(dqkv.data(), dqkv.size() * sizeof(float));
  std::printf("%s %s%s: o[0] = %f%s seconds=%.6f gflops=%.2f outputs=%016llx\n", fused::simd_target().c_str(),
              dtype.c_str(), dtype == "bf16" && dot && fused::bf16_dot_runs() ? " (bf16 products)" : "", o[0],
              backward ? (", dk[0] = " + std::to_string(dtype == "bf16" ? to_float(dqkv16[dk0]) : dqkv[dk0])).c_str() : "", seconds,
              flop / seconds / 1e9, static_cast<unsigned long long>(hash));
  return 0;
}
