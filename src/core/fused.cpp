// Fused fp32 attention, FlashAttention-2 style, compiled once per SIMD target by Highway.
//
// Forward, per (b, h, block of kBlockQ queries), over tiles of kBlockK keys:
//   S = (g q/|q|) (k/|k|)^T      keys normalised while packed into the tile (K^T, zero-padded)
//   m' = max(m, rowmax S);  P = exp(S - m');  l = l*exp(m - m') + rowsum P;  O = O*exp(m - m') + P V
// and, when every row of the block has a moderate logit bound |s_ij| <= |g| |q_i| max_j |k_j|
// (always |g| |q_i| for unit keys), a fixed shift m = bound: no running max, no rescaling.
// Backward, per (b, h): for each key tile, for each query block, recompute the forward's logits
//   bit for bit (same packed operands, same GEMM order) and P = exp((S - shift) - log_sum),
//   dP = dO V^T, dS = P o (dP - D_i) with D_i = rowsum(dO o O), dV += P^T dO, dK += dS^T Q,
//   dQ += dS K. A work item owns a head's key tiles (all, or every chunks-th when there are fewer
//   heads than threads), so dK, dV need no synchronisation and dQ shares are summed at the end.
// Non-finite inputs follow the contract in problem.h: a row with a NaN or +inf logit (or only
// -inf ones) is NaN, and the masked products the tiles skip are added back as 0 * operand sums.
#include "quest/core/fused.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/core/fused.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace quest::fused {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

constexpr int64_t kBlockQ = 256;
constexpr int64_t kBlockK = 128;
// exp(s - shift) >= exp(-2 * 40) stays a normal float, so a fixed shift loses no row.
constexpr float kFixedShiftMax = 40.0f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Rows per micro-tile: R x 2 vector accumulators plus 2 B vectors and a broadcast must fit the
// register file (16 vectors on AVX2 and older, 32 on AVX-512).
#if HWY_TARGET <= HWY_AVX3
constexpr int kRows = 8;
#else
constexpr int kRows = 6;
#endif

HWY_INLINE int64_t RoundUp(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
HWY_INLINE int64_t LanesF() { return static_cast<int64_t>(hn::Lanes(DF())); }

// C[r][0 : V lanes] (+)= sum_k A[r*ars + k*aks] * B[k*ldb + 0 : V lanes], r < R.
template <int R, int V>
HWY_INLINE void Micro(const float* HWY_RESTRICT A, int64_t ars, int64_t aks,
                      const float* HWY_RESTRICT B, int64_t ldb, float* HWY_RESTRICT C,
                      int64_t ldc, int64_t K, bool accumulate) {
  const DF d;
  const int64_t L = LanesF();
  VF c[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v)
      c[r][v] = accumulate ? hn::LoadU(d, C + r * ldc + v * L) : hn::Zero(d);
  for (int64_t k = 0; k < K; ++k) {
    VF b[V];
    for (int v = 0; v < V; ++v) b[v] = hn::LoadU(d, B + k * ldb + v * L);
    const float* a = A + k * aks;
    for (int r = 0; r < R; ++r) {
      const VF ar = hn::Set(d, a[r * ars]);
      for (int v = 0; v < V; ++v) c[r][v] = hn::MulAdd(ar, b[v], c[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) hn::StoreU(c[r][v], d, C + r * ldc + v * L);
}

template <int V>
HWY_INLINE void MicroRows(int64_t rows, const float* A, int64_t ars, int64_t aks, const float* B,
                          int64_t ldb, float* C, int64_t ldc, int64_t K, bool accumulate) {
  switch (rows) {
    case 1: return Micro<1, V>(A, ars, aks, B, ldb, C, ldc, K, accumulate);
    case 2: return Micro<2, V>(A, ars, aks, B, ldb, C, ldc, K, accumulate);
    case 3: return Micro<3, V>(A, ars, aks, B, ldb, C, ldc, K, accumulate);
    case 4: return Micro<4, V>(A, ars, aks, B, ldb, C, ldc, K, accumulate);
    case 5: return Micro<5, V>(A, ars, aks, B, ldb, C, ldc, K, accumulate);
    case 6: return Micro<6, V>(A, ars, aks, B, ldb, C, ldc, K, accumulate);
    case 7: return Micro<7, V>(A, ars, aks, B, ldb, C, ldc, K, accumulate);
    default: return Micro<kRows, V>(A, ars, aks, B, ldb, C, ldc, K, accumulate);
  }
}

// C (M x N, ldc) (+)= A (M x K, element (r, k) at r*ars + k*aks) * B (K x N, ldb).
// N must be a multiple of the vector length (callers zero-pad).
void Gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks,
          const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  const int64_t L = LanesF();
  for (int64_t c0 = 0; c0 < N;) {
    const bool two = N - c0 >= 2 * L;
    for (int64_t r0 = 0; r0 < M; r0 += kRows) {
      const int64_t rows = std::min<int64_t>(kRows, M - r0);
      if (two)
        MicroRows<2>(rows, A + r0 * ars, ars, aks, B + c0, ldb, C + r0 * ldc + c0, ldc, K,
                     accumulate);
      else
        MicroRows<1>(rows, A + r0 * ars, ars, aks, B + c0, ldb, C + r0 * ldc + c0, ldc, K,
                     accumulate);
    }
    c0 += two ? 2 * L : L;
  }
}

// Accumulates in double (the backward's D_i = rowsum(dO o O) is multiplied by |q|), vectorised:
// at the ViT's N ~ 50 these per-row dots cost as much as the tiles' GEMMs when done in scalar.
HWY_INLINE float Dot(const float* a, const float* b, int64_t n) {
  const hn::ScalableTag<double> dd;
  const hn::Rebind<float, decltype(dd)> dh;
  const int64_t N = static_cast<int64_t>(hn::Lanes(dd));
  auto acc0 = hn::Zero(dd), acc1 = hn::Zero(dd);
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    acc0 = hn::MulAdd(hn::PromoteTo(dd, hn::LoadU(dh, a + i)), hn::PromoteTo(dd, hn::LoadU(dh, b + i)), acc0);
    acc1 = hn::MulAdd(hn::PromoteTo(dd, hn::LoadU(dh, a + i + N)),
                      hn::PromoteTo(dd, hn::LoadU(dh, b + i + N)), acc1);
  }
  double s = hn::GetLane(hn::SumOfLanes(dd, hn::Add(acc0, acc1)));
  for (; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return static_cast<float>(s);
}

// |x| in float. Every query norm goes through here (key norms are PackKeys' column sums), so the
// forward and the backward normalise bit for bit alike.
HWY_INLINE float RowNorm(const float* x, int64_t n) {
  const DF d;
  const int64_t L = LanesF();
  VF acc = hn::Zero(d);
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const VF v = hn::LoadU(d, x + i);
    acc = hn::MulAdd(v, v, acc);
  }
  float s = hn::GetLane(hn::SumOfLanes(d, acc));
  for (; i < n; ++i) s += x[i] * x[i];
  return std::sqrt(s);
}

// 1 / max(|x|, eps) for Norm::l2, 1 for Norm::none.
HWY_INLINE VF InverseOf(VF raw, Norm norm, double eps) {
  const DF d;
  if (norm != Norm::l2) return hn::Set(d, 1.0f);
  const VF veps = hn::Set(d, static_cast<float>(eps));
  return hn::Div(hn::Set(d, 1.0f), hn::IfThenElse(hn::Lt(raw, veps), veps, raw));  // NaN stays NaN
}
HWY_INLINE float InverseOf(float raw, Norm norm, double eps) {
  return hn::GetLane(InverseOf(hn::Set(DF(), raw), norm, eps));
}

// 1 / max(|x|, eps) (or 1), |x| into *raw_norm.
HWY_INLINE float InverseNorm(const float* x, int64_t n, Norm norm, double eps, float* raw_norm) {
  *raw_norm = RowNorm(x, n);
  return InverseOf(*raw_norm, norm, eps);
}

// y[0, n) = x[0, n) * f (y may be x).
HWY_INLINE void ScaleRow(const float* x, float f, int64_t n, float* y) {
  const DF d;
  const int64_t L = LanesF();
  const VF vf = hn::Set(d, f);
  int64_t i = 0;
  for (; i + L <= n; i += L) hn::StoreU(hn::Mul(hn::LoadU(d, x + i), vf), d, y + i);
  for (; i < n; ++i) y[i] = x[i] * f;
}

// acc[0, n) += 0 * x[0, n) (problem.h's accumulate_nonfinite, vectorised).
HWY_INLINE void AccumulateNonfinite(const float* x, int64_t n, float* acc) {
  const DF d;
  const int64_t L = LanesF();
  const VF zero = hn::Zero(d);
  int64_t i = 0;
  for (; i + L <= n; i += L)
    hn::StoreU(hn::Add(hn::LoadU(d, acc + i), hn::Mul(zero, hn::LoadU(d, x + i))), d, acc + i);
  for (; i < n; ++i) acc[i] += 0.0f * x[i];
}

#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
// Rows r[0, 16) become columns: r[k] = (old r[0][k], ..., old r[15][k]). Lane pairs, then 64-bit
// pairs within each 128-bit block, then the blocks themselves (two rounds of shuffle_f32x4).
HWY_INLINE void Transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // block b of r[4i + k]: column 4b + k of rows 4i .. 4i + 3
    const __m512d a0 = _mm512_castps_pd(t[4 * i]), a1 = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d b0 = _mm512_castps_pd(t[4 * i + 2]), b1 = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
  }
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 4; ++k) {  // blocks 0, 2 / 1, 3 of rows 8h + 0..3 and 8h + 4..7
      t[8 * h + k] = _mm512_shuffle_f32x4(r[8 * h + k], r[8 * h + 4 + k], 0x88);
      t[8 * h + 4 + k] = _mm512_shuffle_f32x4(r[8 * h + k], r[8 * h + 4 + k], 0xdd);
    }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
    r[4 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);
    r[12 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xdd);
  }
}
#elif HWY_ARCH_X86 && HWY_TARGET == HWY_AVX2
// Rows r[0, 8) become columns (the classic unpack / shuffle / permute2f128 8 x 8 transpose).
HWY_INLINE void Transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {  // 128-bit lane l of u[4i + k]: column 4l + k of rows 4i .. 4i + 3
    u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
    r[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
  }
}
#endif

// e^x for the softmax, where x = logit - shift <= 0 up to rounding: n = round(x log2 e),
// r = x - n ln 2 (ln 2 in two parts), Cephes' expf polynomial for e^r (~1 ulp), 2^n through the
// exponent bits. x < -87 (and -inf, NaN) gives 0, as hn::Exp does below its range; x is clamped
// first so that every lane converts to an integer safely. ~18 vector ops against hn::Exp's ~25.
HWY_INLINE VF SoftmaxExp(DF d, VF x) {
  const hn::RebindToSigned<DF> di;
  const auto in_range = hn::Ge(x, hn::Set(d, -87.0f));  // false for NaN
  const VF xc = hn::IfThenElse(in_range, hn::Min(x, hn::Set(d, 88.0f)), hn::Set(d, -87.0f));
  const VF n = hn::Round(hn::Mul(xc, hn::Set(d, 1.44269504088896341f)));
  VF r = hn::MulAdd(n, hn::Set(d, -0.693359375f), xc);
  r = hn::MulAdd(n, hn::Set(d, 2.12194440e-4f), r);
  VF p = hn::Set(d, 1.9875691500e-4f);
  p = hn::MulAdd(p, r, hn::Set(d, 1.3981999507e-3f));
  p = hn::MulAdd(p, r, hn::Set(d, 8.3334519073e-3f));
  p = hn::MulAdd(p, r, hn::Set(d, 4.1665795894e-2f));
  p = hn::MulAdd(p, r, hn::Set(d, 1.6666665459e-1f));
  p = hn::MulAdd(p, r, hn::Set(d, 5.0000001201e-1f));
  p = hn::Add(hn::MulAdd(p, hn::Mul(r, r), r), hn::Set(d, 1.0f));
  const VF two_n = hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, n), hn::Set(di, 127))));
  return hn::IfThenElseZero(in_range, hn::Mul(p, two_n));
}

// Whether x * f, for a row x of norm raw, can hold a NaN or inf, so that its poison sum is needed:
// a finite norm bounds every entry, so only a factor that overflows the product can make one.
HWY_INLINE bool MayBeNonfinite(float raw, float f) {
  return !(std::isfinite(raw) && std::abs(raw * f) < 1e30f);
}

// dst[e * ldd + c] = src[c * stride + e] for c < n, e < cols, and 0 for n <= c < width (a multiple
// of the vector length). Packing K^T and V^T for the tiles: on AVX-512 (AVX2) a 16 x 16 (8 x 8)
// block at a time in registers (gathers are slow where the Downfall microcode mitigation is on),
// else scalar.
void TransposeRows(const float* src, int64_t stride, int64_t n, int64_t cols, float* dst,
                   int64_t ldd, int64_t width) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  for (int64_t c0 = 0; c0 < width; c0 += 16) {
    const int64_t rows = std::clamp<int64_t>(n - c0, 0, 16);
    for (int64_t e0 = 0; e0 < cols; e0 += 16) {
      const int64_t ec = std::min<int64_t>(16, cols - e0);
      const __mmask16 m = static_cast<__mmask16>((1u << ec) - 1);
      __m512 r[16];
      for (int64_t i = 0; i < 16; ++i)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(m, src + (c0 + i) * stride + e0) : _mm512_setzero_ps();
      Transpose16(r);
      for (int64_t k = 0; k < ec; ++k) _mm512_storeu_ps(dst + (e0 + k) * ldd + c0, r[k]);
    }
  }
#elif HWY_ARCH_X86 && HWY_TARGET == HWY_AVX2
  alignas(32) static constexpr int32_t kLanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t c0 = 0; c0 < width; c0 += 8) {
    const int64_t rows = std::clamp<int64_t>(n - c0, 0, 8);
    for (int64_t e0 = 0; e0 < cols; e0 += 8) {
      const int64_t ec = std::min<int64_t>(8, cols - e0);  // the first ec lanes are loaded
      const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLanes + 8 - ec));
      __m256 r[8];
      for (int64_t i = 0; i < 8; ++i)
        r[i] = i < rows ? _mm256_maskload_ps(src + (c0 + i) * stride + e0, m) : _mm256_setzero_ps();
      Transpose8(r);
      for (int64_t k = 0; k < ec; ++k) _mm256_storeu_ps(dst + (e0 + k) * ldd + c0, r[k]);
    }
  }
#else
  for (int64_t c0 = 0; c0 < width; c0 += 8) {  // 8 rows at a time: 8 contiguous stores per e
    const int64_t rows = std::clamp<int64_t>(n - c0, 0, 8);
    for (int64_t e = 0; e < cols; ++e) {
      float* out = dst + e * ldd + c0;
      for (int64_t i = 0; i < rows; ++i) out[i] = src[(c0 + i) * stride + e];
      for (int64_t i = rows; i < 8 && c0 + i < width; ++i) out[i] = 0.0f;
    }
  }
#endif
}

// Number of leading keys of the tile [j0, j0 + jn) that query i may see under the causal mask.
HWY_INLINE int64_t CausalLimit(const AttentionArgs<float>& a, int64_t i, int64_t j0, int64_t jn) {
  if (!a.causal) return jn;
  return std::clamp<int64_t>(i + a.causal_shift() - j0 + 1, 0, jn);
}

// Hidden entries of one logit row of a tile become -inf.
HWY_INLINE void MaskRow(const AttentionArgs<float>& a, int64_t b, int64_t i, int64_t j0, int64_t jn,
             int64_t padded_width, float* s) {
  const DF d;
  const int64_t L = LanesF();
  const int64_t limit = CausalLimit(a, i, j0, jn);
  for (int64_t c = limit / L * L; c < padded_width; c += L)  // keeps the first limit - c lanes
    hn::StoreU(hn::IfThenElse(hn::FirstN(d, static_cast<size_t>(std::max<int64_t>(limit - c, 0))),
                              hn::LoadU(d, s + c), hn::Set(d, kNegInf)),
               d, s + c);
  if (a.key_padding_mask)
    for (int64_t c = 0; c < limit; ++c)
      if (a.key_padded(b, j0 + c)) s[c] = kNegInf;
}

// Per-thread buffers, grown on demand.
struct Scratch {
  std::vector<float> qs, kt, kbar, kpack, vp, vt, s, p, dp, o, dk, dv, dout, dsum;
  std::vector<float> m, l, t, bound, qnorm, knorm, vpoison, qpoison;
  std::vector<char> bad;
  static float* Get(std::vector<float>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(n);
    return v.data();
  }
};

// This thread's buffers (the caller's or an OpenMP worker's), kept from call to call: OpenMP
// reuses its threads. Fresh ones per call came from mmap (they are over glibc's 128 KB threshold)
// and were faulted in page by page every time: ~150 us a call, three heads' work at 64,4,65,32.
Scratch& ThreadScratch() {
  static thread_local Scratch w;
  return w;
}

// Packs keys [j0, j0 + jn) of (b, h), normalised: kt as D x width (transposed), optionally kbar
// as width x ldk rows; pad entries are zero. Per key c < jn: raw |k| into knorm and
// 1/max(|k|, eps) (1 without normalisation) into rk, if given. A key's norm is a sum down its
// column of kt, so it does not depend on the tile it was packed in.
void PackKeys(const AttentionArgs<float>& a, int64_t b, int64_t h, int64_t j0, int64_t jn,
              int64_t width, float* kt, float* kbar, int64_t ldk, float* knorm, float* rk) {
  const DF d;
  const int64_t L = LanesF();
  const int64_t D = a.dims.qk_dim;
  const float* k0 = &a.k.at(b, h, j0, 0);
  const int64_t ks = a.k.stride[2];
  TransposeRows(k0, ks, jn, D, kt, width, width);
  HWY_ALIGN float lane_r[hn::MaxLanes(DF())], lane_raw[hn::MaxLanes(DF())];
  for (int64_t c = 0; c < width; c += L) {
    VF acc = hn::Zero(d);
    for (int64_t e = 0; e < D; ++e) {
      const VF x = hn::LoadU(d, kt + e * width + c);
      acc = hn::MulAdd(x, x, acc);
    }
    const VF raw = hn::Sqrt(acc), r = InverseOf(raw, a.k_norm, a.l2_eps);
    if (a.k_norm == Norm::l2)  // normalise in the pack (pad columns stay 0)
      for (int64_t e = 0; e < D; ++e)
        hn::StoreU(hn::Mul(hn::LoadU(d, kt + e * width + c), r), d, kt + e * width + c);
    hn::Store(raw, d, lane_raw);
    hn::Store(r, d, lane_r);
    for (int64_t x = 0; x < L && c + x < jn; ++x) {
      if (knorm) knorm[c + x] = lane_raw[x];
      if (rk) rk[c + x] = lane_r[x];
      if (kbar) {  // the same products as kt's, row-major
        ScaleRow(k0 + (c + x) * ks, lane_r[x], D, kbar + (c + x) * ldk);
        std::fill(kbar + (c + x) * ldk + D, kbar + (c + x + 1) * ldk, 0.0f);
      }
    }
  }
  if (kbar) std::fill(kbar + jn * ldk, kbar + width * ldk, 0.0f);
}

// Values [j0, j0 + jn) of (b, h) as jn x ldv rows, zero-padded from Dv to ldv.
void PackValues(const AttentionArgs<float>& a, int64_t b, int64_t h, int64_t j0, int64_t jn,
                int64_t ldv, float* vp) {
  const int64_t Dv = a.dims.v_dim;
  for (int64_t c = 0; c < jn; ++c) {
    std::copy_n(&a.v.at(b, h, j0 + c, 0), Dv, vp + c * ldv);
    std::fill(vp + c * ldv + Dv, vp + (c + 1) * ldv, 0.0f);
  }
}

float DropoutFactor(const AttentionArgs<float>& a, int64_t b, int64_t h, int64_t i, int64_t j) {
  return dropout_keep(a.seed, a.dropout, a.dims, b, h, i, j)
             ? static_cast<float>(1.0 / (1.0 - a.dropout))
             : 0.0f;
}

// The forward's packed keys of one head: tile t (keys [t kBlockK, ...)) at t * D * kBlockK, as
// wide as its keys rounded up to vectors (so the head needs D * RoundUp(Nk, L) floats).
HWY_INLINE int64_t PackedTileOffset(int64_t D, int64_t j0) { return j0 / kBlockK * D * kBlockK; }
HWY_INLINE int64_t PackedTileWidth(int64_t Nk, int64_t j0) {
  return RoundUp(std::min(kBlockK, Nk - j0), LanesF());
}

// Whether a head is one query block, so that one work item scans and runs it while its packed
// keys are in cache (else every head is scanned first, and blocks read the keys from far away).
HWY_INLINE bool OneBlockPerHead(const AttentionDims& dm) { return dm.q_len <= kBlockQ; }

// What the forward needs to know about all keys and values of one (b, h), found in one pass.
struct HeadKeys {
  float kmax = 1;                   // largest normalised key norm; +inf if any key is non-finite
  // Per key j: kmax over keys [0, j]. A causal row bounds its logits by the keys it can see only,
  // so a later token does not change an earlier row's shift (nor, through rounding, its output).
  // (It still can where it pushes a later row of the same query block past kFixedShiftMax: the
  // block then takes the online softmax, equal up to rounding.)
  const float* kmax_upto = nullptr;
  const float* vpoison = nullptr;   // Dv: sum_j 0 * v_j, NaN where a value is; null if all finite
  int64_t first_key = 0;            // first unpadded key (sees_no_key)
  const float* packed = nullptr;   // the keys, packed and normalised once (PackedTileOffset)
};

// Packs the keys of (b, h) into packed (D * RoundUp(Nk, L) floats, PackedTileOffset) and fills
// kmax_upto (Nk) and vpoison (Dv); key diagnostics into part if given.
HeadKeys ScanHead(const AttentionArgs<float>& a, int64_t b, int64_t h, float* packed,
                  float* kmax_upto, float* vpoison, HeadDiagnosticsPartial* part, Scratch& w) {
  const AttentionDims& dm = a.dims;
  float* raw = Scratch::Get(w.knorm, kBlockK);
  float* rk = Scratch::Get(w.t, kBlockK);
  HeadKeys hk;
  float largest = 0;
  bool finite = true;
  std::fill(vpoison, vpoison + dm.v_dim, 0.0f);
  for (int64_t j0 = 0; j0 < dm.k_len; j0 += kBlockK) {
    const int64_t jn = std::min(kBlockK, dm.k_len - j0);
    PackKeys(a, b, h, j0, jn, PackedTileWidth(dm.k_len, j0), packed + PackedTileOffset(dm.qk_dim, j0),
             nullptr, 0, raw, rk);
    for (int64_t c = 0; c < jn; ++c) {
      const int64_t j = j0 + c;
      const float knorm = raw[c] * rk[c];
      finite = finite && std::isfinite(knorm);
      largest = std::max(largest, knorm);
      kmax_upto[j] = finite ? largest : std::numeric_limits<float>::infinity();
      AccumulateNonfinite(&a.v.at(b, h, j, 0), dm.v_dim, vpoison);
      if (part && !a.key_padded(b, j)) {
        part->k_norm_sum += raw[c];
        part->k_norm_max = nan_max(part->k_norm_max, raw[c]);
        ++part->k_count;
      }
    }
  }
  hk.kmax = finite ? largest : std::numeric_limits<float>::infinity();  // no fixed shift then
  hk.kmax_upto = kmax_upto;
  hk.vpoison = any_nonfinite(vpoison, dm.v_dim) ? vpoison : nullptr;
  hk.first_key = a.first_unpadded_key(b);
  hk.packed = packed;
  return hk;
}

// Queries [i0, i1) of (b, h). stats point at the head's first row.
void ForwardBlock(const AttentionArgs<float>& a, int64_t b, int64_t h, int64_t i0, int64_t i1,
                  const HeadKeys& hk, View4<float> out, RowStats stats,
                  HeadDiagnosticsPartial* part, Scratch& w) {
  const DF d;
  const int64_t L = LanesF();
  const AttentionDims& dm = a.dims;
  const int64_t D = dm.qk_dim, Dv = dm.v_dim, Dvp = RoundUp(Dv, L), Br = i1 - i0;
  const float g = static_cast<float>(a.head_scale_at(h));
  float* qs = Scratch::Get(w.qs, Br * D);
  float* bound = Scratch::Get(w.bound, Br);
  float* m = Scratch::Get(w.m, Br);
  float* l = Scratch::Get(w.l, Br);
  float* t = Scratch::Get(w.t, Br);
  float* o = Scratch::Get(w.o, Br * Dvp);
  float* vp = Scratch::Get(w.vp, kBlockK * Dvp);
  float* s = Scratch::Get(w.s, Br * kBlockK);
  if (static_cast<int64_t>(w.bad.size()) < Br) w.bad.resize(Br);
  char* bad = w.bad.data();  // the row met a NaN or +inf logit: its output is NaN
  bool fixed = true;
  // Later tiles are hidden from every row of the block.
  const int64_t k_end = a.causal ? std::clamp<int64_t>(i1 + a.causal_shift(), 0, dm.k_len) : dm.k_len;
  for (int64_t r = 0; r < Br; ++r) {  // qs = g q / |q|
    const float* q = &a.q.at(b, h, i0 + r, 0);
    float raw = 0;
    const float rq = InverseNorm(q, D, a.q_norm, a.l2_eps, &raw);
    ScaleRow(q, rq * g, D, qs + r * D);
    const int64_t last_key = std::min(i0 + r + a.causal_shift(), dm.k_len - 1);
    const float kmax = !a.causal ? hk.kmax : last_key >= 0 ? hk.kmax_upto[last_key] : 0.0f;
    bound[r] = std::abs(g) * raw * rq * kmax;
    fixed = fixed && bound[r] <= kFixedShiftMax;  // false for a NaN bound: non-finite inputs
    if (part) {
      part->q_norm_sum += raw;
      part->q_norm_max = nan_max(part->q_norm_max, raw);
      ++part->q_count;
    }
  }
  for (int64_t r = 0; r < Br; ++r) {
    m[r] = fixed ? bound[r] : kNegInf;
    l[r] = 0;
    t[r] = 0;
    bad[r] = 0;
  }
  std::fill(o, o + Br * Dvp, 0.0f);
  float logit_max = 0;
  const VF vinf = hn::Set(d, std::numeric_limits<float>::infinity());
  for (int64_t j0 = 0; j0 < k_end; j0 += kBlockK) {
    const int64_t jn = std::min(kBlockK, k_end - j0), width = RoundUp(jn, L);
    const float* kt = hk.packed + PackedTileOffset(D, j0);
    const int64_t ldk = PackedTileWidth(dm.k_len, j0);  // as packed (k_end may be less)
    if (!OneBlockPerHead(dm)) {  // the packed keys of every head are far in memory: copy in order
      float* ktc = Scratch::Get(w.kt, D * kBlockK);
      std::copy_n(kt, D * ldk, ktc);
      kt = ktc;
    }
    // V feeds the GEMM in place when its rows are whole vectors; only jn rows are read.
    const bool v_in_place = Dv == Dvp;
    const float* vb = v_in_place ? &a.v.at(b, h, j0, 0) : vp;
    const int64_t ldv = v_in_place ? a.v.stride[2] : Dvp;
    if (!v_in_place) PackValues(a, b, h, j0, jn, Dvp, vp);
    Gemm(Br, width, D, qs, D, 1, kt, ldk, s, width, false);  // S = Qs K^T
    for (int64_t r = 0; r < Br; ++r) {
      float* sr = s + r * width;
      MaskRow(a, b, i0 + r, j0, jn, width, sr);
      if (!fixed) {  // (a fixed shift implies finite inputs, so finite logits)
        VF vmax = hn::Set(d, kNegInf);
        auto ok = hn::Lt(vmax, vinf);
        for (int64_t c = 0; c < width; c += L) {
          const VF x = hn::LoadU(d, sr + c);
          vmax = hn::Max(vmax, x);
          ok = hn::And(ok, hn::Lt(x, vinf));  // false for NaN and +inf
        }
        bad[r] = bad[r] || !hn::AllTrue(d, ok);
        const float m_new = std::max(m[r], hn::GetLane(hn::MaxOfLanes(d, vmax)));
        if (bad[r] || m_new == kNegInf) {  // NaN row, or nothing visible yet: P = 0 here
          std::fill(sr, sr + width, 0.0f);
          continue;
        }
        if (m_new > m[r]) {  // O = O * exp(m_old - m_new)
          const float alpha = m[r] == kNegInf ? 0.0f : std::exp(m[r] - m_new);
          const VF va = hn::Set(d, alpha);
          for (int64_t e = 0; e < Dvp; e += L)
            hn::StoreU(hn::Mul(va, hn::LoadU(d, o + r * Dvp + e)), d, o + r * Dvp + e);
          l[r] *= alpha;
          t[r] *= alpha;
          m[r] = m_new;
        }
      }
      const VF vm = hn::Set(d, m[r]);
      VF vsum = hn::Zero(d), vt = hn::Zero(d), vabs = hn::Zero(d);
      for (int64_t c = 0; c < width; c += L) {
        const VF x = hn::LoadU(d, sr + c);
        const VF p = SoftmaxExp(d, hn::Sub(x, vm));  // exp(-inf) = 0
        hn::StoreU(p, d, sr + c);
        vsum = hn::Add(vsum, p);
        if (part) {
          const auto visible = hn::Gt(x, hn::Set(d, kNegInf));
          vt = hn::Add(vt, hn::IfThenElseZero(visible, hn::Mul(p, x)));
          vabs = hn::Max(vabs, hn::IfThenElseZero(visible, hn::Abs(x)));
        }
      }
      l[r] += hn::GetLane(hn::SumOfLanes(d, vsum));
      if (part) {
        t[r] += hn::GetLane(hn::SumOfLanes(d, vt));
        logit_max = std::max(logit_max, hn::GetLane(hn::MaxOfLanes(d, vabs)));
      }
      if (a.dropout > 0)  // P' = P * keep / (1 - p_drop) feeds O only; l keeps the full P
        for (int64_t c = 0; c < jn; ++c) sr[c] *= DropoutFactor(a, b, h, i0 + r, j0 + c);
    }
    Gemm(Br, Dvp, jn, s, width, 1, vb, ldv, o, Dvp, true);  // O += P V
  }
  for (int64_t r = 0; r < Br; ++r) {
    const int64_t i = i0 + r;
    float* dst = &out.at(b, h, i, 0);
    if (a.sees_no_key(hk.first_key, i)) {
      std::fill(dst, dst + Dv, 0.0f);
      stats.shift[i] = stats.log_sum[i] = kNegInf;
      continue;
    }
    if (bad[r] || l[r] == 0) {  // a NaN or +inf logit, or only -inf ones: torch's softmax is NaN
      std::fill(dst, dst + Dv, kNaN);
      stats.shift[i] = stats.log_sum[i] = kNaN;
      if (part) {
        part->entropy_sum = part->logit_abs_max = kNaN;
        ++part->entropy_rows;
      }
      continue;
    }
    const float inv = 1.0f / l[r];
    ScaleRow(o + r * Dvp, inv, Dv, dst);
    if (hk.vpoison)  // the values this row's tiles skipped still reach it as 0 * v
      for (int64_t e = 0; e < Dv; ++e) dst[e] += hk.vpoison[e];
    stats.shift[i] = m[r];
    stats.log_sum[i] = std::log(l[r]);
    if (part) {  // H = lse - sum p s
      part->entropy_sum += static_cast<double>(m[r]) + std::log(l[r]) - t[r] * inv;
      ++part->entropy_rows;
    }
  }
  if (part) part->logit_abs_max = nan_max(part->logit_abs_max, logit_max);
}

RowStats HeadRows(RowStats stats, const AttentionDims& dm, int64_t bh) {
  return {stats.shift + bh * dm.q_len, stats.log_sum + bh * dm.q_len};
}

void ForwardF32(const AttentionArgs<float>& a, View4<float> out, RowStats stats,
                HeadDiagnosticsPartial* diagnostics, int threads) {
  const AttentionDims& dm = a.dims;
  const int64_t heads = dm.batch * dm.heads;
  const int64_t q_blocks = (dm.q_len + kBlockQ - 1) / kBlockQ;
  // O(B*H*(Nk + Dv)) per-head key and value facts first, then the query blocks in parallel.
  std::vector<float> kmax_upto(heads * dm.k_len), vpoison(heads * dm.v_dim);
  std::vector<HeadKeys> keys(heads);
  std::vector<HeadDiagnosticsPartial> parts(diagnostics ? heads * q_blocks : 0);
  // Packed keys (every tile is written before it is read, so no buffer is zeroed).
  const int64_t packed_size = dm.qk_dim * RoundUp(dm.k_len, LanesF());
  auto scan = [&](int64_t bh, float* packed, Scratch& w) {
    HeadDiagnosticsPartial* part = diagnostics ? &diagnostics[bh] : nullptr;
    if (part) *part = HeadDiagnosticsPartial{};
    keys[bh] = ScanHead(a, bh / dm.heads, bh % dm.heads, packed, &kmax_upto[bh * dm.k_len],
                        &vpoison[bh * dm.v_dim], part, w);
  };
  auto block = [&](int64_t item, Scratch& w) {
    const int64_t bh = item / q_blocks, qb = item % q_blocks;
    const int64_t i0 = qb * kBlockQ, i1 = std::min(dm.q_len, i0 + kBlockQ);
    ForwardBlock(a, bh / dm.heads, bh % dm.heads, i0, i1, keys[bh], out, HeadRows(stats, dm, bh),
                 diagnostics ? &parts[item] : nullptr, w);
  };
  if (OneBlockPerHead(dm)) {
#pragma omp parallel num_threads(threads)
    {
      Scratch& w = ThreadScratch();
#pragma omp for schedule(dynamic)
      for (int64_t bh = 0; bh < heads; ++bh) {
        scan(bh, Scratch::Get(w.kpack, packed_size), w);
        block(bh, w);
      }
    }
  } else {  // all heads' keys first, then the query blocks of every head in parallel
    std::unique_ptr<float[]> packed(new float[heads * packed_size]);
#pragma omp parallel num_threads(threads)
    {
      Scratch& w = ThreadScratch();
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < heads; ++bh) scan(bh, &packed[bh * packed_size], w);
#pragma omp for schedule(dynamic)
      for (int64_t item = 0; item < heads * q_blocks; ++item) block(item, w);
    }
  }
  if (diagnostics)
    for (int64_t item = 0; item < heads * q_blocks; ++item)
      merge(diagnostics[item / q_blocks], parts[item]);
}

// dx from dy through x/max(|x|, eps) given y = x/max(|x|, eps) and raw |x|.
HWY_INLINE void L2Backward(const float* y, const float* dy, float raw, double eps, int64_t n, float* dx) {
  if (!(raw <= eps)) {  // dx = (dy - y (y.dy)) / |x|; a NaN norm takes this branch too
    const float ydy = Dot(y, dy, n);
    const DF d;
    const int64_t L = LanesF();
    const float inv = 1.0f / raw;  // one division per row (a vector division costs ~16 FMAs)
    const VF vydy = hn::Set(d, ydy), vinv = hn::Set(d, inv);
    int64_t e = 0;
    for (; e + L <= n; e += L)
      hn::StoreU(hn::Mul(hn::Sub(hn::LoadU(d, dy + e), hn::Mul(hn::LoadU(d, y + e), vydy)), vinv),
                 d, dx + e);
    for (; e < n; ++e) dx[e] = (dy[e] - y[e] * ydy) * inv;
  } else {
    for (int64_t e = 0; e < n; ++e) dx[e] = dy[e] / static_cast<float>(eps);
  }
}

// The key tiles t of (b, h) with t % chunks == chunk: writes their dK and dV, and accumulates
// their share of dQ (before the factor g and the query normalisation; Nq x Dp, zeroed here), of
// the key poison (D) and of the head-scale gradient. FinishQueries completes dQ.
void BackwardTiles(const AttentionArgs<float>& a, int64_t b, int64_t h, int64_t chunk,
                   int64_t chunks, View4<const float> out, View4<const float> dout, RowStats stats,
                   const AttentionGrads<float>& gr, float* dq, float* kpoison, double* dscale_out,
                   Scratch& w) {
  const DF d;
  const int64_t L = LanesF();
  const AttentionDims& dm = a.dims;
  const int64_t D = dm.qk_dim, Dp = RoundUp(D, L), Dv = dm.v_dim, Dvp = RoundUp(Dv, L);
  const int64_t Nq = dm.q_len, Nk = dm.k_len;
  const float g = static_cast<float>(a.head_scale_at(h));
  // The forward's query operand is g q/|q|; with g = 0 its logits are all 0, so the unscaled
  // q/|q| serves (for the head-scale gradient) and the logits are multiplied by 0.
  const float gq = g != 0 ? g : 1.0f, post = g != 0 ? 1.0f : 0.0f;
  const int64_t row0 = (b * dm.heads + h) * Nq;
  const float* shift = stats.shift + row0;
  const float* log_sum = stats.log_sum + row0;
  float* qn = Scratch::Get(w.qs, Nq * Dp);
  float* qnorm = Scratch::Get(w.qnorm, Nq);
  // dO feeds the GEMMs in place when its rows are whole vectors, else as a zero-padded copy.
  const bool do_in_place = Dv == Dvp;
  float* dop = do_in_place ? nullptr : Scratch::Get(w.dout, Nq * Dvp);
  const float* dob = do_in_place ? &dout.at(b, h, 0, 0) : dop;
  const int64_t ldo = do_in_place ? dout.stride[2] : Dvp;
  float* dsum = Scratch::Get(w.dsum, Nq);
  float* kt = Scratch::Get(w.kt, D * kBlockK);
  float* kbar = Scratch::Get(w.kbar, kBlockK * Dp);
  float* knorm = Scratch::Get(w.knorm, kBlockK);
  float* rk = Scratch::Get(w.t, kBlockK);
  float* vt = Scratch::Get(w.vt, Dv * kBlockK);
  float* dk = Scratch::Get(w.dk, kBlockK * Dp);
  float* dv = Scratch::Get(w.dv, kBlockK * Dvp);
  float* s = Scratch::Get(w.s, kBlockQ * kBlockK);
  float* p = Scratch::Get(w.p, kBlockQ * kBlockK);
  float* pd = a.dropout > 0 ? Scratch::Get(w.o, kBlockQ * kBlockK) : p;
  float* ds = Scratch::Get(w.dp, kBlockQ * kBlockK);
  // Sums of 0 * operand (problem.h): the masked products of the composite's matmuls.
  float* qpoison = Scratch::Get(w.qpoison, D);  // over g q_i/|q_i|, reaches dK
  float* vpoison = Scratch::Get(w.vpoison, Dv);
  if (D != Dp) std::fill(qn, qn + Nq * Dp, 0.0f);  // pad columns (rows are overwritten)
  if (!do_in_place) std::fill(dop, dop + Nq * Dvp, 0.0f);
  std::fill(dq, dq + Nq * Dp, 0.0f);
  std::fill(qpoison, qpoison + D, 0.0f);
  std::fill(kpoison, kpoison + D, 0.0f);
  std::fill(vpoison, vpoison + Dv, 0.0f);
  for (int64_t j = 0; j < Nk; ++j) AccumulateNonfinite(&a.v.at(b, h, j, 0), Dv, vpoison);
  // D_i = rowsum(dO o O) = sum_j P_ij dP_ij. A non-finite value that row i does not see made its
  // output non-finite (as 0 * v) but not the composite's D_i, so then D_i comes from the tiles.
  const bool d_from_tiles = any_nonfinite(vpoison, Dv);
  for (int64_t i = 0; i < Nq; ++i) {
    const float* q = &a.q.at(b, h, i, 0);
    const float rq = InverseNorm(q, D, a.q_norm, a.l2_eps, &qnorm[i]);
    ScaleRow(q, rq * gq, D, qn + i * Dp);  // as the forward's qs
    if (MayBeNonfinite(qnorm[i], rq * gq)) AccumulateNonfinite(qn + i * Dp, D, qpoison);
    if (!do_in_place) std::copy_n(&dout.at(b, h, i, 0), Dv, dop + i * Dvp);
    dsum[i] = d_from_tiles ? 0.0f : Dot(&dout.at(b, h, i, 0), &out.at(b, h, i, 0), Dv);
  }
  const VF vneg_inf = hn::Set(d, kNegInf);
  double dscale = 0;
  const bool want_dscale = gr.dhead_scale && a.head_scale;  // else the row sums are not needed
  // Pass 0 (only when d_from_tiles) accumulates D_i; pass 1 computes the gradients.
  for (int pass = d_from_tiles ? 0 : 1; pass < 2; ++pass)
  for (int64_t j0 = 0; j0 < Nk; j0 += kBlockK) {
    if (pass == 1 && (j0 / kBlockK) % chunks != chunk) continue;  // another chunk's tile
    const int64_t jn = std::min(kBlockK, Nk - j0), width = RoundUp(jn, L);
    PackKeys(a, b, h, j0, jn, width, kt, kbar, Dp, knorm, rk);
    if (pass == 1)
      for (int64_t c = 0; c < jn; ++c)
        if (MayBeNonfinite(knorm[c], rk[c])) AccumulateNonfinite(kbar + c * Dp, D, kpoison);
    TransposeRows(&a.v.at(b, h, j0, 0), a.v.stride[2], jn, Dv, vt, width, width);
    std::fill(dk, dk + width * Dp, 0.0f);
    std::fill(dv, dv + width * Dvp, 0.0f);
    // Rows before the first that can see key j0 (i + shift >= j0) see none of this tile.
    const int64_t i_start =
        a.causal ? std::max<int64_t>(0, j0 - a.causal_shift()) / kBlockQ * kBlockQ : 0;
    for (int64_t i0 = i_start; i0 < Nq; i0 += kBlockQ) {
      const int64_t Br = std::min(kBlockQ, Nq - i0);
      Gemm(Br, width, D, qn + i0 * Dp, Dp, 1, kt, width, s, width, false);       // S, as forward
      Gemm(Br, width, Dv, dob + i0 * ldo, ldo, 1, vt, width, ds, width, false);  // dP = dO V^T
      const VF vpost = hn::Set(d, post), vinv_gq = hn::Set(d, 1.0f / gq);
      for (int64_t r = 0; r < Br; ++r) {
        const int64_t i = i0 + r;
        float* sr = s + r * width;
        float* pr = p + r * width;
        float* dsr = ds + r * width;
        float* pdr = pd + r * width;
        MaskRow(a, b, i, j0, jn, width, sr);  // masked logits -> -inf -> P = 0
        if (shift[i] == kNegInf || (pass == 0 && std::isnan(shift[i]))) {
          std::fill(pr, pr + width, 0.0f);  // row saw no key: no gradient
          std::fill(dsr, dsr + width, 0.0f);
          std::fill(pdr, pdr + width, 0.0f);
          continue;
        }
        if (std::isnan(shift[i])) {  // the forward row was NaN: so are P and dS where it sees
          for (int64_t c = 0; c < width; ++c) pr[c] = kNaN;
          MaskRow(a, b, i, j0, jn, width, pr);
          for (int64_t c = 0; c < width; ++c) pr[c] = pr[c] == kNegInf ? 0.0f : kNaN;
          std::copy_n(pr, width, dsr);
          std::copy_n(pr, width, pdr);
          dscale += kNaN;
          continue;
        }
        const VF vm = hn::Set(d, shift[i]), vls = hn::Set(d, log_sum[i]);
        for (int64_t c = 0; c < width; c += L)  // P = exp((s - shift) - log_sum)
          hn::StoreU(SoftmaxExp(d, hn::Sub(hn::Sub(hn::Mul(vpost, hn::LoadU(d, sr + c)), vm), vls)),
                     d, pr + c);
        if (a.dropout > 0)
          for (int64_t c = 0; c < width; ++c) {
            const float f = c < jn ? DropoutFactor(a, b, h, i, j0 + c) : 0.0f;
            pdr[c] = pr[c] * f;  // P' feeds dV
            dsr[c] *= f;         // dP = dP' * keep / (1 - p_drop)
          }
        if (pass == 0) {  // D_i += sum over visible j of P_ij dP_ij
          VF vd = hn::Zero(d);
          for (int64_t c = 0; c < width; c += L)
            vd = hn::Add(vd, hn::IfThenElseZero(hn::Gt(hn::LoadU(d, sr + c), vneg_inf),
                                                hn::Mul(hn::LoadU(d, pr + c), hn::LoadU(d, dsr + c))));
          dsum[i] += hn::GetLane(hn::SumOfLanes(d, vd));
          continue;
        }
        const VF vdi = hn::Set(d, dsum[i]);
        VF vscale = hn::Zero(d);
        for (int64_t c = 0; c < width; c += L) {  // dS = P o (dP - D_i), 0 where masked
          const VF sv = hn::LoadU(d, sr + c);  // g q.k (or q.k where g = 0)
          const auto visible = hn::Gt(sv, vneg_inf);
          const VF dsv = hn::IfThenElseZero(
              visible, hn::Mul(hn::LoadU(d, pr + c), hn::Sub(hn::LoadU(d, dsr + c), vdi)));
          if (want_dscale)
            vscale = hn::Add(vscale, hn::IfThenElseZero(visible, hn::Mul(hn::Mul(dsv, sv), vinv_gq)));
          hn::StoreU(hn::Mul(dsv, vpost), d, dsr + c);
        }
        if (want_dscale) dscale += hn::GetLane(hn::SumOfLanes(d, vscale));
      }
      if (pass == 0) continue;
      // (The pad keys' columns of P and dS are 0: only jn rows / jn terms are computed.)
      Gemm(jn, Dvp, Br, pd, 1, width, dob + i0 * ldo, ldo, dv, Dvp, true);  // dV += P'^T dO
      Gemm(jn, Dp, Br, ds, 1, width, qn + i0 * Dp, Dp, dk, Dp, true);  // dK += dS^T (g Q)
      Gemm(Br, Dp, jn, ds, width, 1, kbar, Dp, dq + i0 * Dp, Dp, true);  // dQ += dS K (x g later)
    }
    if (pass == 0) continue;
    const bool q_poisoned = any_nonfinite(qpoison, D);
    for (int64_t c = 0; c < jn; ++c) {
      std::copy_n(dv + c * Dvp, Dv, &gr.dv.at(b, h, j0 + c, 0));
      if (q_poisoned)  // every query multiplies k_j in the composite, masked ones by 0
        for (int64_t e = 0; e < D; ++e) dk[c * Dp + e] += qpoison[e];
      float* dst = &gr.dk.at(b, h, j0 + c, 0);
      if (a.k_norm == Norm::l2)
        L2Backward(kbar + c * Dp, dk + c * Dp, knorm[c], a.l2_eps, D, dst);
      else
        std::copy_n(dk + c * Dp, D, dst);
    }
  }
  *dscale_out = dscale;
}

// dQ of (b, h) from the summed tile shares dq (Nq x Dp, overwritten) and key poison; adds the
// poison terms of the head-scale gradient to *dscale.
void FinishQueries(const AttentionArgs<float>& a, int64_t b, int64_t h, float* dq,
                   const float* kpoison, const AttentionGrads<float>& gr, double* dscale,
                   Scratch& w) {
  const int64_t L = LanesF();
  const int64_t D = a.dims.qk_dim, Dp = RoundUp(D, L), Nq = a.dims.q_len;
  const float g = static_cast<float>(a.head_scale_at(h));
  const float gq = g != 0 ? g : 1.0f;
  float* qi = Scratch::Get(w.qs, D);
  float* qpoison = Scratch::Get(w.qpoison, D);
  std::fill(qpoison, qpoison + D, 0.0f);
  const bool k_poisoned = any_nonfinite(kpoison, D);
  for (int64_t i = 0; i < Nq; ++i) {
    float raw = 0;
    const float* q = &a.q.at(b, h, i, 0);
    const float rq = InverseNorm(q, D, a.q_norm, a.l2_eps, &raw);
    if (MayBeNonfinite(raw, rq * gq)) {  // BackwardTiles' operand has a NaN or inf
      ScaleRow(q, rq * gq, D, qi);
      AccumulateNonfinite(qi, D, qpoison);
    }
    float* dst = &gr.dq.at(b, h, i, 0);
    float* dqi = dq + i * Dp;
    if (k_poisoned)  // every key multiplies q_i, masked ones by 0
      for (int64_t e = 0; e < D; ++e) dqi[e] += kpoison[e];
    if (a.q_norm == Norm::l2) {  // d(q/|q|) = g sum_j dS_ij k_j/|k_j|
      ScaleRow(dqi, g, D, dqi);
      ScaleRow(q, rq, D, qi);  // q/|q|
      L2Backward(qi, dqi, raw, a.l2_eps, D, dst);
    } else {
      ScaleRow(dqi, g, D, dst);
    }
  }
  for (int64_t e = 0; e < D; ++e)  // the head-scale gradient sums dS o (q.k) over every pair
    *dscale += static_cast<double>(qpoison[e]) + kpoison[e];
}

void BackwardF32(const AttentionArgs<float>& a, View4<const float> out, View4<const float> dout,
                 RowStats stats, const AttentionGrads<float>& gr, int threads) {
  const AttentionDims& dm = a.dims;
  const int64_t heads = dm.batch * dm.heads;
  const int64_t Dp = RoundUp(dm.qk_dim, LanesF());
  // Fewer heads than threads: each head's key tiles are dealt round-robin to `chunks` work items
  // (round-robin balances the causal mask), each with its own dQ share, summed afterwards.
  const int64_t tiles = (dm.k_len + kBlockK - 1) / kBlockK;
  const int64_t chunks = std::max<int64_t>(1, std::min(tiles, threads / std::max<int64_t>(heads, 1)));
  std::vector<double> dscale(heads * chunks, 0.0);
  // Split heads keep every chunk's dQ share until all are done; otherwise a thread's own buffer
  // serves head after head (extra memory stays O(threads * N * D)).
  const bool split = chunks > 1;
  std::vector<float> shares(split ? heads * chunks * dm.q_len * Dp : 0),
      share_kpoison(split ? heads * chunks * dm.qk_dim : 0);
#pragma omp parallel num_threads(threads)
  {
    Scratch& w = ThreadScratch();
    std::vector<float> own(split ? 0 : dm.q_len * Dp), own_kpoison(split ? 0 : dm.qk_dim);
    auto dq_of = [&](int64_t item) { return split ? &shares[item * dm.q_len * Dp] : own.data(); };
    auto kpoison_of = [&](int64_t item) {
      return split ? &share_kpoison[item * dm.qk_dim] : own_kpoison.data();
    };
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < heads * chunks; ++item) {
      const int64_t bh = item / chunks, b = bh / dm.heads, h = bh % dm.heads;
      BackwardTiles(a, b, h, item % chunks, chunks, out, dout, stats, gr, dq_of(item),
                    kpoison_of(item), &dscale[item], w);
      if (!split) FinishQueries(a, b, h, dq_of(item), kpoison_of(item), gr, &dscale[item], w);
    }
    if (split) {
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < heads; ++bh) {
        const int64_t first = bh * chunks;
        for (int64_t c = 1; c < chunks; ++c) {  // sum the shares into the first chunk's
          for (int64_t x = 0; x < dm.q_len * Dp; ++x) dq_of(first)[x] += dq_of(first + c)[x];
          for (int64_t e = 0; e < dm.qk_dim; ++e) kpoison_of(first)[e] += kpoison_of(first + c)[e];
          dscale[first] += dscale[first + c];
        }
        FinishQueries(a, bh / dm.heads, bh % dm.heads, dq_of(first), kpoison_of(first), gr,
                      &dscale[first], w);
      }
    }
  }
  if (gr.dhead_scale && a.head_scale) {
    for (int64_t h = 0; h < dm.heads; ++h) {
      double sum = 0;
      for (int64_t b = 0; b < dm.batch; ++b) sum += dscale[(b * dm.heads + h) * chunks];
      gr.dhead_scale[h] = static_cast<float>(sum);
    }
  }
}

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace quest::fused
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quest::fused {

HWY_EXPORT(ForwardF32);
HWY_EXPORT(BackwardF32);
HWY_EXPORT(TargetName);

std::string why_not(const AttentionArgs<float>& a) {
  if (a.q.stride[3] != 1 || a.k.stride[3] != 1 || a.v.stride[3] != 1)
    return "q, k and v need unit stride along D";
  if (a.q_norm == Norm::layer || a.k_norm == Norm::layer)
    return "LayerNorm is not fused (the caller normalises before the kernel)";
  return "";
}

bool supports(const AttentionArgs<float>& a) { return why_not(a).empty(); }

static void check_supported(const AttentionArgs<float>& a, const char* entry) {
  check_args(a, entry);
  if (const std::string reason = why_not(a); !reason.empty())
    throw std::invalid_argument(std::string("quest::") + entry + ": " + reason);
}

static int resolve_threads(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

void forward(const AttentionArgs<float>& args, View4<float> out, RowStats stats,
             HeadDiagnosticsPartial* diagnostics, int threads) {
  check_supported(args, "fused::forward");
  if (!out.data || !stats.shift || !stats.log_sum)
    throw std::invalid_argument("quest::fused::forward: out and stats must not be null");
  HWY_DYNAMIC_DISPATCH(ForwardF32)(args, out, stats, diagnostics, resolve_threads(threads));
}

void backward(const AttentionArgs<float>& args, View4<const float> out, View4<const float> dout,
              RowStats stats, const AttentionGrads<float>& grads, int threads) {
  check_supported(args, "fused::backward");
  if (!out.data || !dout.data || !stats.shift || !stats.log_sum || !grads.dq.data ||
      !grads.dk.data || !grads.dv.data)
    throw std::invalid_argument("quest::fused::backward: out, dout, stats and dq/dk/dv must not be null");
  HWY_DYNAMIC_DISPATCH(BackwardF32)(args, out, dout, stats, grads, resolve_threads(threads));
}

std::string simd_target() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }

}  // namespace quest::fused
#endif  // HWY_ONCE
