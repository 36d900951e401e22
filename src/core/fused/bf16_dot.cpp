// See bf16_dot.h. Everything below the pragma is compiled for AVX-512 F/BW/VL + AVX512_BF16 and
// runs only where available() is true.
#include "src/core/fused/bf16_dot.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__) && defined(__GNUC__)
#define QUEST_BF16_DOT 1
#include <immintrin.h>
#endif

namespace quest::fused::bf16_dot {

#ifdef QUEST_BF16_DOT
bool available() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")
// GCC 12's own intrinsics (_mm512_cvtepu16_epi32, _mm512_slli_epi32) start from a self-initialised
// "undefined" vector, which -Wmaybe-uninitialized reports once they are inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace {

// Word i of A (a bf16 pair; A need not be 4-byte aligned).
inline int32_t Word(const void* A, int64_t i) {
  int32_t w;
  std::memcpy(&w, static_cast<const char*>(A) + 4 * i, sizeof w);
  return w;
}

// C[r][0 : 16 V] (+)= sum_p A pair (r, p) . B pair-row p, r < R; 8 x 2 accumulators fill 16 of the
// 32 registers, as the float32 micro-kernel's do (6 x 4 measured no faster).
template <int R, int V>
inline void Micro(const void* A, int64_t ars, int64_t aps, const uint32_t* B, int64_t ldb, float* C,
                  int64_t ldc, int64_t P, bool accumulate, const float* row_scale,
                  const float* col_scale) {
  // Every loop over r and v is unrolled by pragma: left to itself GCC 12 keeps c in a stack array
  // outside the p loop (~100 memory operations a call, around product loops as short as 32 pairs:
  // QK^T at D = 64); in registers a bf16 forward + backward is 5-6 % faster (docs/kernels.md).
  __m512 c[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v)
      c[r][v] = accumulate ? _mm512_loadu_ps(C + r * ldc + 16 * v) : _mm512_setzero_ps();
  for (int64_t p = 0; p < P; ++p) {
    __m512bh b[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) b[v] = (__m512bh)_mm512_loadu_si512(B + p * ldb + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(Word(A, r * ars + p * aps));
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) c[r][v] = _mm512_dpbf16_ps(c[r][v], a, b[v]);
    }
  }
  if (row_scale)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      const __m512 cs = _mm512_loadu_ps(col_scale + 16 * v);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) c[r][v] = _mm512_mul_ps(_mm512_mul_ps(c[r][v], cs), _mm512_set1_ps(row_scale[r]));
    }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(C + r * ldc + 16 * v, c[r][v]);
}

template <int V>
void MicroRows(int64_t rows, const void* A, int64_t ars, int64_t aps, const uint32_t* B, int64_t ldb, float* C,
               int64_t ldc, int64_t P, bool accumulate, const float* rs, const float* cs) {
  switch (rows) {
    case 1: return Micro<1, V>(A, ars, aps, B, ldb, C, ldc, P, accumulate, rs, cs);
    case 2: return Micro<2, V>(A, ars, aps, B, ldb, C, ldc, P, accumulate, rs, cs);
    case 3: return Micro<3, V>(A, ars, aps, B, ldb, C, ldc, P, accumulate, rs, cs);
    case 4: return Micro<4, V>(A, ars, aps, B, ldb, C, ldc, P, accumulate, rs, cs);
    case 5: return Micro<5, V>(A, ars, aps, B, ldb, C, ldc, P, accumulate, rs, cs);
    case 6: return Micro<6, V>(A, ars, aps, B, ldb, C, ldc, P, accumulate, rs, cs);
    case 7: return Micro<7, V>(A, ars, aps, B, ldb, C, ldc, P, accumulate, rs, cs);
    default: return Micro<8, V>(A, ars, aps, B, ldb, C, ldc, P, accumulate, rs, cs);
  }
}

}  // namespace

void gemm(int64_t M, int64_t N, int64_t P, const void* A, int64_t ars, int64_t aps,
          const uint32_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate,
          const float* row_scale, const float* col_scale) {
  for (int64_t c0 = 0; c0 < N;) {
    const bool two = N - c0 >= 32;
    for (int64_t r0 = 0; r0 < M; r0 += 8) {
      const int64_t rows = std::min<int64_t>(8, M - r0);
      const float* rs = row_scale ? row_scale + r0 : nullptr;
      const float* cs = col_scale ? col_scale + c0 : nullptr;
      (two ? MicroRows<2> : MicroRows<1>)(rows, static_cast<const char*>(A) + 4 * r0 * ars, ars, aps,
                                          B + c0, ldb, C + r0 * ldc + c0, ldc, P, accumulate, rs, cs);
    }
    c0 += two ? 32 : 16;
  }
}

void round_row(const float* x, int64_t n, bfloat16* y, const float* scale) {
  auto load = [&](int64_t i) {  // (vcvtne*ps2bf16 read denormals as zero)
    const __m512 v = _mm512_loadu_ps(x + i);
    return scale ? _mm512_mul_ps(v, _mm512_loadu_ps(scale + i)) : v;
  };
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) _mm512_storeu_si512(y + i, (__m512i)_mm512_cvtne2ps_pbh(load(i + 16), load(i)));
  if (i < n) _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), (__m256i)_mm512_cvtneps_pbh(load(i)));
}

void round_pairs(const float* x, int64_t stride, int64_t n, int64_t width, uint32_t* out,
                 const float* row_scale) {
  // cvtne2ps_pbh(odd, even) holds even's 16 bf16 then odd's; vpermw interleaves them into words
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                              23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int64_t p = 0; p < (n + 1) / 2; ++p) {
    const float* even = x + 2 * p * stride;
    const float* odd = 2 * p + 1 < n ? even + stride : nullptr;
    const __m512 se = _mm512_set1_ps(row_scale ? row_scale[2 * p] : 1.0f);
    const __m512 so = _mm512_set1_ps(odd && row_scale ? row_scale[2 * p + 1] : 1.0f);
    for (int64_t c = 0; c < width; c += 16) {
      const __m512 e = _mm512_mul_ps(_mm512_loadu_ps(even + c), se);
      const __m512 o = odd ? _mm512_mul_ps(_mm512_loadu_ps(odd + c), so) : _mm512_setzero_ps();
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(o, e);
      _mm512_storeu_si512(out + p * width + c, _mm512_permutexvar_epi16(interleave, both));
    }
  }
}

void pack_pairs(const bfloat16* x, int64_t stride, int64_t n, int64_t cols, uint32_t* out, int64_t ld) {
  for (int64_t p = 0; p < (n + 1) / 2; ++p) {
    const bfloat16* even = x + 2 * p * stride;
    const bfloat16* odd = 2 * p + 1 < n ? even + stride : nullptr;
    for (int64_t c = 0; c < ld; c += 16) {
      const __mmask16 m = static_cast<__mmask16>(
          c >= cols ? 0u : cols - c >= 16 ? 0xffffu : (1u << (cols - c)) - 1);
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, even + c));
      const __m512i hi = odd ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, odd + c))
                             : _mm512_setzero_si512();
      _mm512_storeu_si512(out + p * ld + c, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

#else  // no AVX512_BF16 code in this build: available() is false and nothing else is called
bool available() { return false; }
[[noreturn]] static void absent() { throw std::logic_error("quest: bf16_dot is not in this build"); }
void gemm(int64_t, int64_t, int64_t, const void*, int64_t, int64_t, const uint32_t*, int64_t, float*,
          int64_t, bool, const float*, const float*) { absent(); }
void round_pairs(const float*, int64_t, int64_t, int64_t, uint32_t*, const float*) { absent(); }
void round_row(const float*, int64_t, bfloat16*, const float*) { absent(); }
void pack_pairs(const bfloat16*, int64_t, int64_t, int64_t, uint32_t*, int64_t) { absent(); }
#endif

}  // namespace quest::fused::bf16_dot
