// One key tile of one head as both directions see it: block sizes, the causal and padding masks,
// keys packed (and normalised) into the tile, values, dropout, per-thread buffers.
// Included by src/core/fused.cpp once per Highway target (hence the toggle guard, as in Highway's
// own -inl.h headers): everything here lives in quest::fused::HWY_NAMESPACE.
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

#include "hwy/highway.h"
#include "quest/core/problem.h"
#include "src/core/fused/bf16_dot.h"
#include "src/core/fused/tile_ops-inl.h"

#if defined(QUEST_CORE_FUSED_TILES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QUEST_CORE_FUSED_TILES_INL_H_
#undef QUEST_CORE_FUSED_TILES_INL_H_
#else
#define QUEST_CORE_FUSED_TILES_INL_H_
#endif

HWY_BEFORE_NAMESPACE();
namespace quest::fused {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr int64_t kBlockQ = 256;
constexpr int64_t kBlockK = 128;

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

// A per-thread buffer of at least n elements (grown on demand, never shrunk).
template <class T>
HWY_INLINE T* Grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

// This thread's buffers of one kind (the caller's or an OpenMP worker's), kept from call to call:
// OpenMP reuses its threads. Fresh ones per call would come from mmap (they are over glibc's
// 128 KB threshold) and be faulted in page by page every time, at the cost of several heads' work
// at the small shapes (docs/kernels.md).
template <class Scratch>
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
        if (ldk > D) std::fill(kbar + (c + x) * ldk + D, kbar + (c + x + 1) * ldk, 0.0f);
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

// Whether this target takes bf16 products (Bf16Forward::bf16_dot, Bf16Backward::bf16_dot): the
// AVX-512 code (16 lanes, as the packing assumes) on a CPU with AVX512_BF16.
bool Bf16DotRuns() { return HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3 && bf16_dot::available(); }

// Whether a call takes them: asked for, run here, and every bf16 pair is one 32-bit word (the
// paired dimensions and the row strides of the tensors read in pairs are even).
bool Bf16DotApplies(bool asked, std::initializer_list<int64_t> paired) {
  if (!asked || !Bf16DotRuns()) return false;
  return std::all_of(paired.begin(), paired.end(), [](int64_t n) { return n % 2 == 0; });
}

// --- Heads interleaved in memory: each batch entry's rows read once, in address order. ---
// quest's MultiheadAttention hands the kernel q, k, v as one (B, N, 3, H, D) projection and O, dO as
// (B, N, H, D). A head's row of a token is then a few dozen bytes among 3 H D, its rows a page or
// more apart, and the hardware prefetchers (which stop at page boundaries) leave each row a cold
// miss as the head first reads it. Reading all of batch entry b's rows once, in address order,
// before its first head runs lets the prefetchers stream them; the heads then find them in cache.
// (Forward + backward 3-6 % faster at one thread, both dtypes: results/head-gemms/README.md.)

// What WarmSpans reads at most (the entry's rows should still be in cache when its heads run).
constexpr int64_t kWarmBytes = int64_t{4} << 20;

// With fewer than two of an entry's heads per thread, its other heads run while the thread of its
// first one reads it, and gain little from that.
HWY_INLINE bool WarmPays(const AttentionDims& dm, int threads) {
  return threads == 1 || dm.heads >= 2 * int64_t{threads};
}

struct ByteSpan {
  const char* begin = nullptr;
  const char* end = nullptr;
};

// The bytes of batch entry b of v (heads x rows x cols, non-negative strides), or an empty span
// where a head's rows are adjacent (the prefetchers already see each head as one stream).
template <class T>
ByteSpan EntrySpan(const View4<T>& v, int64_t b, int64_t heads, int64_t rows, int64_t cols) {
  if (!v.data || heads < 1 || rows < 1 || cols < 1 || v.stride[2] <= cols * v.stride[3]) return {};
  for (int64_t st : v.stride)
    if (st < 0) return {};
  const char* begin = reinterpret_cast<const char*>(&v.at(b, 0, 0, 0));
  const int64_t last = (heads - 1) * v.stride[1] + (rows - 1) * v.stride[2] + (cols - 1) * v.stride[3];
  return {begin, begin + (last + 1) * static_cast<int64_t>(sizeof(T))};
}

// Reads one byte of every 64-byte line of the spans' union, in address order; nothing if the
// union is larger than kWarmBytes.
HWY_INLINE void WarmSpans(std::initializer_list<ByteSpan> spans) {
  ByteSpan s[8];
  int n = 0;
  for (const ByteSpan& x : spans)
    if (x.begin && n < 8) s[n++] = x;
  for (int i = 1; i < n; ++i)  // by address (insertion: a handful of spans)
    for (int j = i; j > 0 && s[j].begin < s[j - 1].begin; --j) std::swap(s[j], s[j - 1]);
  int merged = 0;  // overlapping spans (q, k, v of one projection) become one
  for (int i = 0; i < n; ++i) {
    if (merged > 0 && s[i].begin <= s[merged - 1].end)
      s[merged - 1].end = std::max(s[merged - 1].end, s[i].end);
    else
      s[merged++] = s[i];
  }
  int64_t bytes = 0;
  for (int i = 0; i < merged; ++i) bytes += s[i].end - s[i].begin;
  if (bytes > kWarmBytes) return;
  unsigned char acc = 0;
  for (int i = 0; i < merged; ++i)
    for (const char* p = s[i].begin; p < s[i].end; p += 64) acc ^= static_cast<unsigned char>(*p);
  volatile unsigned char keep = acc;  // the loads must happen
  (void)keep;
}

// Batch entry b's q, k, v (and O, dO for the backward) through WarmSpans: every Io's Warm.
template <class T, class O = const float>
HWY_INLINE void WarmEntry(const AttentionDims& d, int64_t b, const View4<T>& q, const View4<T>& k,
                          const View4<T>& v, const View4<O>& out = {}, const View4<O>& dout = {}) {
  WarmSpans({EntrySpan(q, b, d.heads, d.q_len, d.qk_dim), EntrySpan(k, b, d.heads, d.k_len, d.qk_dim),
             EntrySpan(v, b, d.heads, d.k_len, d.v_dim), EntrySpan(out, b, d.heads, d.q_len, d.v_dim),
             EntrySpan(dout, b, d.heads, d.q_len, d.v_dim)});
}

// --- bfloat16 storage: one head's rows converted to float32 in this thread's buffers, so that the
// float32 tiles run unchanged on them; results rounded back to bfloat16 row by row. ---

// Rows [n0, n1) of head (b, h) into dst, row n at dst + n * d (the head's own layout).
HWY_INLINE void StageRows(View4<const bfloat16> src, int64_t b, int64_t h, int64_t n0, int64_t n1,
                          int64_t d, float* dst) {
  for (int64_t n = n0; n < n1; ++n) {
    const bfloat16* x = &src.at(b, h, n, 0);
    float* y = dst + n * d;
    for (int64_t e = 0; e < d; ++e) y[e] = to_float(x[e]);
  }
}
HWY_INLINE void UnstageRows(const float* src, int64_t n0, int64_t n1, int64_t d, View4<bfloat16> dst,
                            int64_t b, int64_t h) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* x = src + n * d;
    bfloat16* y = &dst.at(b, h, n, 0);
    for (int64_t e = 0; e < d; ++e) y[e] = to_bfloat16(x[e]);
  }
}
HWY_INLINE void AddRows(const float* src, int64_t n0, int64_t n1, int64_t d, View4<float> dst, int64_t b,
                        int64_t h) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* x = src + n * d;
    float* y = &dst.at(b, h, n, 0);
    for (int64_t e = 0; e < d; ++e) y[e] += x[e];
  }
}
// A head's staged rows (n x d, dense) as a view that every (b, h) reads: zero batch and head strides.
template <class T>
View4<T> HeadView(T* data, int64_t d) {
  View4<T> v;
  v.data = data;
  v.stride[2] = d;
  v.stride[3] = 1;
  return v;
}
// This thread's staged head: which (b * heads + h) each buffer holds (-1: none), so that the
// steps of one work item convert a tensor once.
struct HeadStage {
  std::vector<float> q, k, v, dq, dk, dv;
  int64_t q_of = -1, kv_of = -1;
};

// The row statistics of head bh = b * heads + h.
RowStats HeadRows(RowStats stats, const AttentionDims& dm, int64_t bh) {
  return {stats.shift + bh * dm.q_len, stats.log_sum + bh * dm.q_len};
}

}  // namespace HWY_NAMESPACE
}  // namespace quest::fused
HWY_AFTER_NAMESPACE();

#endif  // QUEST_CORE_FUSED_TILES_INL_H_
