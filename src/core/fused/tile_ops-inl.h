// SIMD primitives of the fused kernel: a small GEMM, dots and norms, row transposes, the softmax's
// exp. Nothing here knows about attention.
// Included by src/core/fused.cpp once per Highway target (hence the toggle guard, as in Highway's
// own -inl.h headers): everything here lives in quest::fused::HWY_NAMESPACE.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "hwy/highway.h"
#include "quest/core/problem.h"

#if defined(QUEST_CORE_FUSED_TILE_OPS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QUEST_CORE_FUSED_TILE_OPS_INL_H_
#undef QUEST_CORE_FUSED_TILE_OPS_INL_H_
#else
#define QUEST_CORE_FUSED_TILE_OPS_INL_H_
#endif

HWY_BEFORE_NAMESPACE();
namespace quest::fused {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

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

// y[0, n) = x[0, n): a row too short for a memcpy call to pay.
HWY_INLINE void CopyRow(const float* x, int64_t n, float* y) {
  const DF d;
  const int64_t L = LanesF();
  int64_t i = 0;
  for (; i + L <= n; i += L) hn::StoreU(hn::LoadU(d, x + i), d, y + i);
  for (; i < n; ++i) y[i] = x[i];
}

// acc[0, n) += 0 * x[r * stride + [0, n)) for r < rows, in that order (problem.h's
// accumulate_nonfinite, vectorised), the sums held in registers across the rows.
HWY_INLINE void AccumulateNonfiniteRows(const float* x, int64_t stride, int64_t rows, int64_t n,
                                        float* acc) {
  const DF d;
  const int64_t L = LanesF();
  const VF zero = hn::Zero(d);
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    VF s0 = hn::LoadU(d, acc + i), s1 = hn::LoadU(d, acc + i + L);
    for (int64_t r = 0; r < rows; ++r) {
      s0 = hn::Add(s0, hn::Mul(zero, hn::LoadU(d, x + r * stride + i)));
      s1 = hn::Add(s1, hn::Mul(zero, hn::LoadU(d, x + r * stride + i + L)));
    }
    hn::StoreU(s0, d, acc + i);
    hn::StoreU(s1, d, acc + i + L);
  }
  for (; i + L <= n; i += L) {
    VF s0 = hn::LoadU(d, acc + i);
    for (int64_t r = 0; r < rows; ++r) s0 = hn::Add(s0, hn::Mul(zero, hn::LoadU(d, x + r * stride + i)));
    hn::StoreU(s0, d, acc + i);
  }
  for (; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) acc[i] += 0.0f * x[r * stride + i];
}
HWY_INLINE void AccumulateNonfinite(const float* x, int64_t n, float* acc) {
  AccumulateNonfiniteRows(x, 0, 1, n, acc);
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
// r = x - n ln 2 (ln 2 in two parts), Cephes' expf polynomial for e^r (~1 ulp), times 2^n. x < -87
// (and -inf, NaN) gives 0, as hn::Exp does below its range. On AVX-512 vscalefps multiplies by 2^n
// (~14 vector ops against hn::Exp's ~25); elsewhere 2^n is built in the exponent bits from an
// integer n, so x is clamped first for every lane to convert safely (~18). Both are the same
// exact product p 2^n for x >= -87 (n >= -126: 2^n is a normal float), so the targets agree.
HWY_INLINE VF SoftmaxExp(DF d, VF x) {
  const auto in_range = hn::Ge(x, hn::Set(d, -87.0f));  // false for NaN
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  const VF xc = hn::Min(x, hn::Set(d, 88.0f));  // lanes out of range give garbage, zeroed below
#else
  const VF xc = hn::IfThenElse(in_range, hn::Min(x, hn::Set(d, 88.0f)), hn::Set(d, -87.0f));
#endif
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
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  return hn::IfThenElseZero(in_range, VF{_mm512_scalef_ps(p.raw, n.raw)});
#else
  const hn::RebindToSigned<DF> di;
  const VF two_n = hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, n), hn::Set(di, 127))));
  return hn::IfThenElseZero(in_range, hn::Mul(p, two_n));
#endif
}

// e^x for the softmax of the bf16 products, whose P is rounded to bf16 (relative 2^-9) before it
// meets V: 2^t with t = x log2 e, n = round(t), f = t - n, 2^f by a degree-5 minimax fit on
// [-1/2, 1/2] (relative error 1.5e-7; rounding t adds up to |x| 2^-24 relative, 5e-6 at x = -87,
// where e^x is negligible in a row's sum), times 2^n: 12 vector ops against SoftmaxExp's 16, 1-4 %
// of a bf16 forward + backward (results/peers/README.md). x < -87 (and -inf, NaN) gives 0. Only
// the AVX-512 code takes bf16 products; other targets use SoftmaxExp.
HWY_INLINE VF SoftmaxExpBf16(DF d, VF x) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  const auto in_range = hn::Ge(x, hn::Set(d, -87.0f));  // false for NaN
  const VF t = hn::Mul(hn::Min(x, hn::Set(d, 88.0f)), hn::Set(d, 1.44269504088896341f));
  const VF n = hn::Round(t);
  const VF f = hn::Sub(t, n);
  VF p = hn::Set(d, 1.3276447e-3f);
  p = hn::MulAdd(p, f, hn::Set(d, 9.6755326e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.5507131e-2f));
  p = hn::MulAdd(p, f, hn::Set(d, 2.4022120e-1f));
  p = hn::MulAdd(p, f, hn::Set(d, 6.9314694e-1f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.0000001f));
  return hn::IfThenElseZero(in_range, VF{_mm512_scalef_ps(p.raw, n.raw)});
#else
  return SoftmaxExp(d, x);
#endif
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

}  // namespace HWY_NAMESPACE
}  // namespace quest::fused
HWY_AFTER_NAMESPACE();

#endif  // QUEST_CORE_FUSED_TILE_OPS_INL_H_
