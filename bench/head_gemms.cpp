// What OpenBLAS makes of the matrix products of attention alone, head by head: the seven GEMMs of
// one head's forward and backward (S = Q K^T and O = P V; again S, dP = dO V^T, dV = P^T dO,
// dK = dS^T Q, dQ = dS K), each N x N x D, with no softmax, no normalisation and nothing else —
// a ceiling for any kernel that computes attention as GEMMs on tiles, against the sgemm 1024^3
// that `quest bench` divides by, in the same run.
//   OMP_NUM_THREADS=2 build/bench/head_gemms 64 4 65 32 [rounds]
// Heads are dealt to OpenMP threads, each calling single-threaded sgemm (OpenBLAS's OpenMP build
// runs one thread inside a parallel region); the 1024^3 product runs on all threads. Inputs are
// (B, H, N, D) contiguous as in bench/profile_fused, so each head streams from memory. Prints the
// median GFLOP/s of both (FlashAttention convention: 14 B H N^2 D for the seven) and their ratio;
// the rounds alternate the two. HEAD_GEMMS_CACHED=1: every head reuses the first head's operands
// and outputs, which then stay in cache (the products without waiting on memory).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

extern "C" void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b,
                       const int* ldb, const float* beta, float* c, const int* ldc);

namespace {

// Row-major C (M x N) = op(A) op(B): BLAS is column-major, so it computes C^T = op(B)^T op(A)^T.
void gemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
          float* C, int ldc) {
  const float one = 1, zero = 0;
  sgemm_(tb ? "T" : "N", ta ? "T" : "N", &N, &M, &K, &one, B, &ldb, A, &lda, &zero, C, &ldc);
}

template <class F>
double seconds(const F& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s B H N D [rounds]\n", argv[0]);
    return 2;
  }
  const int B = std::atoi(argv[1]), H = std::atoi(argv[2]), N = std::atoi(argv[3]),
            D = std::atoi(argv[4]), rounds = argc > 5 ? std::atoi(argv[5]) : 7;
  if (B < 1 || H < 1 || N < 1 || D < 1 || rounds < 1) {
    std::fprintf(stderr, "need positive sizes and rounds\n");
    return 2;
  }
  const int heads = B * H;
  const size_t hd = static_cast<size_t>(N) * D, total = hd * heads;
  // Cached: every head reads the first head's inputs (they stay in cache) but writes its products
  // to its thread's own slice — BLAS accumulates into C over K-blocks, so two threads writing one
  // slice at once would corrupt it (the products came out wrong in 4-5 of 20 runs).
  const size_t outputs = hd * std::max(heads, omp_get_max_threads());
  std::vector<float> q(total), k(total), v(total), dout(total), o(outputs), dq(outputs),
      dk(outputs), dv(outputs);
  for (size_t x = 0; x < total; ++x) {  // fixed values in [-1, 1], different per tensor
    q[x] = std::sin(0.37f * x);
    k[x] = std::cos(0.23f * x);
    v[x] = std::sin(0.11f * x + 1);
    dout[x] = std::cos(0.07f * x + 2);
  }
  const std::string cached_env = std::getenv("HEAD_GEMMS_CACHED") ? std::getenv("HEAD_GEMMS_CACHED") : "";
  if (!cached_env.empty() && cached_env != "0" && cached_env != "1") {
    std::fprintf(stderr, "HEAD_GEMMS_CACHED is 0 or 1\n");
    return 2;
  }
  const bool cached = cached_env == "1";
  const double flop = 14.0 * heads * N * N * D;
  // ~1 GFLOP per timing of the heads (repeats of all of them), one call of the 1024^3 product.
  const int repeats = std::max(1, static_cast<int>(1e9 / flop));
  // Each thread's S and dP, allocated once (fresh ones per timing would be faulted in again).
  std::vector<std::vector<float>> s_of(omp_get_max_threads()), dp_of(omp_get_max_threads());
  for (auto* x : {&s_of, &dp_of})
    for (auto& buf : *x) buf.assign(static_cast<size_t>(N) * N, 0.0f);
  size_t last_head_output = 0;  // where the last head's products went (its thread's slice, cached)
  auto run_heads = [&] {
#pragma omp parallel
    {
      std::vector<float>& s = s_of[omp_get_thread_num()];
      std::vector<float>& dp = dp_of[omp_get_thread_num()];
      const size_t own = static_cast<size_t>(omp_get_thread_num()) * hd;
      for (int rep = 0; rep < repeats; ++rep) {
#pragma omp for schedule(dynamic)
        for (int h = 0; h < heads; ++h) {
          const size_t x = cached ? 0 : h * hd, y = cached ? own : h * hd;
          if (h == heads - 1) last_head_output = y;
          gemm(false, true, N, N, D, &q[x], D, &k[x], D, s.data(), N);         // S = Q K^T
          gemm(false, false, N, D, N, s.data(), N, &v[x], D, &o[y], D);        // O = P V
          gemm(false, true, N, N, D, &q[x], D, &k[x], D, s.data(), N);         // S again
          gemm(false, true, N, N, D, &dout[x], D, &v[x], D, dp.data(), N);     // dP = dO V^T
          gemm(true, false, N, D, N, s.data(), N, &dout[x], D, &dv[y], D);     // dV = P^T dO
          gemm(true, false, N, D, N, dp.data(), N, &q[x], D, &dk[y], D);       // dK = dS^T Q
          gemm(false, false, N, D, N, dp.data(), N, &k[x], D, &dq[y], D);      // dQ = dS K
        }
      }
    }
  };
  const int big = 1024;
  std::vector<float> a(big * big, 0.5f), b(big * big, 0.25f), c(big * big);
  auto run_big = [&] { gemm(false, false, big, big, big, a.data(), big, b.data(), big, c.data(), big); };
  run_heads();  // warm-up: pages, thread pool
  // The transpose flags are easy to get wrong: check the last head's first and last rows of O,
  // dV, dK and dQ against sums in double (here dP stands where the backward's dS would).
  const size_t x0 = cached ? 0 : (heads - 1) * hd, y0 = last_head_output;
  auto at = [&](const std::vector<float>& t, int row, int col) { return double(t[x0 + row * D + col]); };
  auto out = [&](const std::vector<float>& t, int row, int col) { return double(t[y0 + row * D + col]); };
  auto s_ij = [&](int i, int j) {  // (Q K^T)_ij
    double acc = 0;
    for (int e = 0; e < D; ++e) acc += at(q, i, e) * at(k, j, e);
    return acc;
  };
  auto dp_ij = [&](int i, int j) {  // (dO V^T)_ij
    double acc = 0;
    for (int e = 0; e < D; ++e) acc += at(dout, i, e) * at(v, j, e);
    return acc;
  };
  double worst = 0, scale = 0;
  for (const int r : {0, N - 1})
    for (int e = 0; e < D; ++e) {
      double eo = 0, edv = 0, edk = 0, edq = 0;
      for (int j = 0; j < N; ++j) {
        eo += s_ij(r, j) * at(v, j, e);       // O = S V
        edv += s_ij(j, r) * at(dout, j, e);   // dV = S^T dO
        edk += dp_ij(j, r) * at(q, j, e);     // dK = dP^T Q
        edq += dp_ij(r, j) * at(k, j, e);     // dQ = dP K
      }
      for (const auto& [want, got] : {std::pair{eo, out(o, r, e)}, {edv, out(dv, r, e)},
                                      {edk, out(dk, r, e)}, {edq, out(dq, r, e)}}) {
        worst = std::max(worst, std::abs(want - got));
        scale = std::max(scale, std::abs(want));
      }
    }
  if (!(worst <= 1e-4 * std::max(1.0, scale))) {
    std::fprintf(stderr, "head_gemms: wrong products (max error %g, largest entry %g)\n", worst, scale);
    return 1;
  }
  run_big();
  std::vector<double> head_rates, big_rates;
  for (int r = 0; r < rounds; ++r) {
    head_rates.push_back(flop * repeats / seconds(run_heads) / 1e9);
    big_rates.push_back(2.0 * big * big * big / seconds(run_big) / 1e9);
  }
  const double hm = median(head_rates), bm = median(big_rates);
  std::printf("threads=%d B,H,N,D=%d,%d,%d,%d%s head_gemms_gflops=%.2f sgemm1024_gflops=%.2f ratio=%.3f\n",
              omp_get_max_threads(), B, H, N, D, cached ? " cached" : "", hm, bm, hm / bm);
  return 0;
}
