// The fused forward: per (b, h, block of kBlockQ queries), over tiles of kBlockK keys,
//   S = (g q/|q|) (k/|k|)^T      keys normalised while packed into the tile (K^T, zero-padded)
//   m' = max(m, rowmax S);  P = exp(S - m');  l = l*exp(m - m') + rowsum P;  O = O*exp(m - m') + P V
// and, when every row of the block has a moderate logit bound |s_ij| <= |g| |q_i| max_j |k_j|
// (always |g| |q_i| for unit keys), a fixed shift m = bound: no running max, no rescaling.
// Saves per row the shift and log l, from which the backward recomputes P.
// Included by src/core/fused.cpp once per Highway target (toggle guard as in Highway's -inl.h).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "hwy/highway.h"
#include "quest/core/diagnostics.h"
#include "quest/core/fused.h"
#include "quest/core/problem.h"
#include "src/core/fused/bf16_dot.h"
#include "src/core/fused/tile_ops-inl.h"
#include "src/core/fused/tiles-inl.h"

#if defined(QUEST_CORE_FUSED_FORWARD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QUEST_CORE_FUSED_FORWARD_INL_H_
#undef QUEST_CORE_FUSED_FORWARD_INL_H_
#else
#define QUEST_CORE_FUSED_FORWARD_INL_H_
#endif

HWY_BEFORE_NAMESPACE();
namespace quest::fused {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// exp(s - shift) >= exp(-2 * 40) stays a normal float, so a fixed shift loses no row.
constexpr float kFixedShiftMax = 40.0f;

// The forward's per-thread buffers, each named for what it holds.
struct ForwardScratch {
  std::vector<float> packed_keys;   // one head's keys, packed and normalised (PackedTileOffset)
  std::vector<float> key_tile;      // one tile of them copied close (several query blocks)
  std::vector<float> key_norm;      // ScanHead: raw |k| of a tile's keys
  std::vector<float> key_inv_norm;  // ScanHead: 1 / max(|k|, eps) of a tile's keys
  std::vector<float> queries;       // g q / |q| of the block's rows
  std::vector<float> values;        // a tile's values, zero-padded to whole vectors
  std::vector<float> logits;        // S, then P, of the block against one tile
  std::vector<float> out_rows;      // the block's unnormalised output rows
  std::vector<float> row_bound;     // |g| |q_i| max_j |k_j|: bounds |s_ij|
  std::vector<float> row_shift;     // m_i: the fixed or running shift
  std::vector<float> row_sum;       // l_i = sum_j exp(s_ij - m_i)
  std::vector<float> row_plogit;    // sum_j exp(s_ij - m_i) s_ij (the entropy's)
  std::vector<char> row_bad;        // the row met a NaN or +inf logit: its output is NaN
  // bf16 arithmetic (Bf16ForwardIo::Dot):
  // one head's raw bf16 keys as pair-words (PackedTileOffset, D / 2); float because TransposeRows
  // moves them (as 32-bit lanes), and the all-heads path keeps them in the float32 keys' buffer
  std::vector<float> packed_keys16;
  std::vector<float> key_scale;      // 1 / max(|k_j|, eps) of one head's keys, zero-padded
  std::vector<float> row_scale;      // g / max(|q_i|, eps) of the block's rows
  std::vector<uint32_t> values16;    // a tile's values as pair-rows of bf16 (bf16_dot::pack_pairs)
  std::vector<bfloat16> probs16;     // P of the block against one tile, rounded to bf16
};

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
  const float* packed = nullptr;   // the keys, packed and normalised once (PackedTileOffset);
                                   // null with bf16 products
  // bf16 arithmetic only: the raw keys as bf16 pair-words (D / 2 rows per tile, PackedTileOffset)
  // and each key's 1 / max(|k|, eps), applied to S's columns after the products.
  const uint32_t* packed16 = nullptr;
  const float* key_scale = nullptr;
};

// Packs the keys of (b, h) into packed (D * RoundUp(Nk, L) floats, PackedTileOffset; null: into
// this thread's tile buffer, for the norms only) and fills kmax_upto (Nk) and vpoison (Dv); key
// diagnostics into part, and 1 / max(|k|, eps) into key_scale (RoundUp(Nk, L), zero-padded), if
// given.
HeadKeys ScanHead(const AttentionArgs<float>& a, int64_t b, int64_t h, float* packed,
                  float* kmax_upto, float* vpoison, float* key_scale, HeadDiagnosticsPartial* part,
                  ForwardScratch& w) {
  const AttentionDims& dm = a.dims;
  float* raw = Grow(w.key_norm, kBlockK);
  float* rk = Grow(w.key_inv_norm, kBlockK);
  HeadKeys hk;
  float largest = 0;
  bool finite = true;
  std::fill(vpoison, vpoison + dm.v_dim, 0.0f);
  for (int64_t j0 = 0; j0 < dm.k_len; j0 += kBlockK) {
    const int64_t jn = std::min(kBlockK, dm.k_len - j0);
    float* tile = packed ? packed + PackedTileOffset(dm.qk_dim, j0) : Grow(w.key_tile, dm.qk_dim * kBlockK);
    PackKeys(a, b, h, j0, jn, PackedTileWidth(dm.k_len, j0), tile, nullptr, 0, raw, rk);
    if (key_scale) std::copy_n(rk, jn, key_scale + j0);
    AccumulateNonfiniteRows(&a.v.at(b, h, j0, 0), a.v.stride[2], jn, dm.v_dim, vpoison);
    for (int64_t c = 0; c < jn; ++c) {
      const int64_t j = j0 + c;
      const float knorm = raw[c] * rk[c];
      finite = finite && std::isfinite(knorm);
      largest = std::max(largest, knorm);
      kmax_upto[j] = finite ? largest : std::numeric_limits<float>::infinity();
      if (part && !a.key_padded(b, j)) {
        part->k_norm_sum += raw[c];
        part->k_norm_max = nan_max(part->k_norm_max, raw[c]);
        ++part->k_count;
      }
    }
  }
  if (key_scale) std::fill(key_scale + dm.k_len, key_scale + RoundUp(dm.k_len, LanesF()), 0.0f);
  hk.kmax = finite ? largest : std::numeric_limits<float>::infinity();  // no fixed shift then
  hk.kmax_upto = kmax_upto;
  hk.vpoison = any_nonfinite(vpoison, dm.v_dim) ? vpoison : nullptr;
  hk.first_key = a.first_unpadded_key(b);
  hk.packed = packed;
  return hk;
}

// Queries [i0, i1) of (b, h). stats point at the head's first row. With dot (and hk.packed16),
// S and PV are bf16 products in float32 accumulators: S = diag(g / |q|) (Q K^T) diag(1 / |k|) from
// the raw bf16 q and k, and P rounded to bf16 for PV; everything else as in float32.
// Returns whether every element of the block's query rows was finite (their norms are).
bool ForwardBlock(const AttentionArgs<float>& a, const Bf16Forward* dot, int64_t b, int64_t h,
                  int64_t i0, int64_t i1, const HeadKeys& hk, View4<float> out, RowStats stats,
                  HeadDiagnosticsPartial* part, ForwardScratch& w) {
  const DF d;
  const int64_t L = LanesF();
  const AttentionDims& dm = a.dims;
  const int64_t D = dm.qk_dim, Dv = dm.v_dim, Dvp = RoundUp(Dv, L), Br = i1 - i0;
  const float g = static_cast<float>(a.head_scale_at(h));
  float* qs = Grow(w.queries, Br * D);
  float* bound = Grow(w.row_bound, Br);
  float* m = Grow(w.row_shift, Br);
  float* l = Grow(w.row_sum, Br);
  float* t = Grow(w.row_plogit, Br);
  float* o = Grow(w.out_rows, Br * Dvp);
  float* vp = Grow(w.values, kBlockK * Dvp);
  float* s = Grow(w.logits, Br * kBlockK);
  char* bad = Grow(w.row_bad, Br);
  float* row_scale = dot ? Grow(w.row_scale, Br) : nullptr;
  uint32_t* v16 = dot ? Grow(w.values16, (kBlockK / 2 + 1) * Dvp) : nullptr;
  bfloat16* p16 = dot ? Grow(w.probs16, Br * kBlockK) : nullptr;
  bool fixed = true, finite_rows = true;
  // Later tiles are hidden from every row of the block.
  const int64_t k_end = a.causal ? std::clamp<int64_t>(i1 + a.causal_shift(), 0, dm.k_len) : dm.k_len;
  for (int64_t r = 0; r < Br; ++r) {  // qs = g q / |q|
    const float* q = &a.q.at(b, h, i0 + r, 0);
    float raw = 0;
    const float rq = InverseNorm(q, D, a.q_norm, a.l2_eps, &raw);
    if (dot)
      row_scale[r] = rq * g;
    else
      ScaleRow(q, rq * g, D, qs + r * D);
    const int64_t last_key = std::min(i0 + r + a.causal_shift(), dm.k_len - 1);
    const float kmax = !a.causal ? hk.kmax : last_key >= 0 ? hk.kmax_upto[last_key] : 0.0f;
    finite_rows = finite_rows && std::isfinite(raw);  // (also false where |q|^2 overflows)
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
  float logit_max = 0, signed_max = kNegInf;
  const VF vinf = hn::Set(d, std::numeric_limits<float>::infinity());
  for (int64_t j0 = 0; j0 < k_end; j0 += kBlockK) {
    const int64_t jn = std::min(kBlockK, k_end - j0), width = RoundUp(jn, L);
    const float* kt = hk.packed + PackedTileOffset(D, j0);
    const int64_t ldk = PackedTileWidth(dm.k_len, j0);  // as packed (k_end may be less)
    if (!dot && !OneBlockPerHead(dm)) {  // the packed keys of every head are far: copy in order
      float* ktc = Grow(w.key_tile, D * kBlockK);
      std::copy_n(kt, D * ldk, ktc);
      kt = ktc;
    }
    if (dot) {  // S = diag(g / |q|) Q K^T diag(1 / |k|), keys in place in the packed words
      bf16_dot::pack_pairs(&dot->v.at(b, h, j0, 0), dot->v.stride[2], jn, Dv, v16, Dvp);
      bf16_dot::gemm(Br, width, D / 2, &dot->q.at(b, h, i0, 0), dot->q.stride[2] / 2, 1,
                     hk.packed16 + PackedTileOffset(D / 2, j0), ldk, s, width, false, row_scale,
                     hk.key_scale + j0);
    } else {
      Gemm(Br, width, D, qs, D, 1, kt, ldk, s, width, false);  // S = Qs K^T
    }
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
      VF vsum = hn::Zero(d), vt = hn::Zero(d), vabs = hn::Zero(d), vhi = hn::Set(d, kNegInf);
      auto probabilities = [&](auto exp) {  // exp chosen outside the loop
        for (int64_t c = 0; c < width; c += L) {
          const VF x = hn::LoadU(d, sr + c);
          const VF p = exp(hn::Sub(x, vm));  // exp(-inf) = 0
          hn::StoreU(p, d, sr + c);
          vsum = hn::Add(vsum, p);
          if (part) {
            const auto visible = hn::Gt(x, hn::Set(d, kNegInf));
            vt = hn::Add(vt, hn::IfThenElseZero(visible, hn::Mul(p, x)));
            vabs = hn::Max(vabs, hn::IfThenElseZero(visible, hn::Abs(x)));
            vhi = hn::Max(vhi, x);  // masked lanes hold -inf
          }
        }
      };
      if (dot)
        probabilities([d](VF x) { return SoftmaxExpBf16(d, x); });
      else
        probabilities([d](VF x) { return SoftmaxExp(d, x); });
      l[r] += hn::GetLane(hn::SumOfLanes(d, vsum));
      if (part) {
        t[r] += hn::GetLane(hn::SumOfLanes(d, vt));
        logit_max = std::max(logit_max, hn::GetLane(hn::MaxOfLanes(d, vabs)));
        signed_max = std::max(signed_max, hn::GetLane(hn::MaxOfLanes(d, vhi)));
      }
      if (a.dropout > 0)  // P' = P * keep / (1 - p_drop) feeds O only; l keeps the full P
        for (int64_t c = 0; c < jn; ++c) sr[c] *= DropoutFactor(a, b, h, i0 + r, j0 + c);
    }
    if (dot) {  // O += bf16(P) V (P's columns from jn on are 0, as is the odd row of v16)
      for (int64_t r = 0; r < Br; ++r) bf16_dot::round_row(s + r * width, width, p16 + r * width);
      bf16_dot::gemm(Br, Dvp, (jn + 1) / 2, p16, width / 2, 1, v16, Dvp, o, Dvp, true, nullptr, nullptr);
    } else {  // O += P V, V in place when its rows are whole vectors (only jn rows are read)
      const bool v_in_place = Dv == Dvp;
      if (!v_in_place) PackValues(a, b, h, j0, jn, Dvp, vp);
      Gemm(Br, Dvp, jn, s, width, 1, v_in_place ? &a.v.at(b, h, j0, 0) : vp,
           v_in_place ? a.v.stride[2] : Dvp, o, Dvp, true);
    }
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
        part->entropy_sum = part->logit_abs_max = part->logit_max = kNaN;
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
  if (part) {
    part->logit_abs_max = nan_max(part->logit_abs_max, logit_max);
    part->logit_max = nan_max(part->logit_max, signed_max);
  }
  return finite_rows;
}

// Where the forward reads q, k, v (the output is float32 either way). Float32: in place. Keys(b, h):
// args whose k and v of (b, h) can be read; Block(b, h, i0, i1): args whose q rows [i0, i1) and v
// of (b, h) can be read.
struct F32Forward {
  const AttentionArgs<float>& a;
  const Bf16Forward* Dot() const { return nullptr; }
  const AttentionArgs<float>& Keys(int64_t, int64_t, HeadStage&) const { return a; }
  const AttentionArgs<float>& Block(int64_t, int64_t, int64_t, int64_t, HeadStage&) const { return a; }
  void Warm(int64_t b) const { WarmEntry(a.dims, b, a.q, a.k, a.v); }
};

// bfloat16 storage: each head's q, k, v staged in float32 (HeadStage).
struct Bf16ForwardIo {
  const AttentionArgs<float>& a;
  const Bf16Forward& io;
  // bf16 products (ForwardBlock's dot): pairs along D in q and k (V is paired along keys).
  const bool dot = Bf16DotApplies(io.bf16_dot, {a.dims.qk_dim, io.q.stride[2], io.k.stride[2]});
  const Bf16Forward* Dot() const { return dot ? &io : nullptr; }
  AttentionArgs<float> StageValues(int64_t b, int64_t h, HeadStage& s) const {
    const AttentionDims& dm = a.dims;
    AttentionArgs<float> x = a;
    const int64_t bh = b * dm.heads + h;
    if (s.kv_of != bh) {
      StageRows(io.k, b, h, 0, dm.k_len, dm.qk_dim, Grow(s.k, dm.k_len * dm.qk_dim));
      StageRows(io.v, b, h, 0, dm.k_len, dm.v_dim, Grow(s.v, dm.k_len * dm.v_dim));
      s.kv_of = bh;
    }
    x.k = HeadView<const float>(s.k.data(), dm.qk_dim);
    x.v = HeadView<const float>(s.v.data(), dm.v_dim);
    return x;
  }
  AttentionArgs<float> Keys(int64_t b, int64_t h, HeadStage& s) const { return StageValues(b, h, s); }
  AttentionArgs<float> Block(int64_t b, int64_t h, int64_t i0, int64_t i1, HeadStage& s) const {
    AttentionArgs<float> x = StageValues(b, h, s);
    StageRows(io.q, b, h, i0, i1, a.dims.qk_dim, Grow(s.q, a.dims.q_len * a.dims.qk_dim));
    x.q = HeadView<const float>(s.q.data(), a.dims.qk_dim);
    return x;
  }
  void Warm(int64_t b) const { WarmEntry(a.dims, b, io.q, io.k, io.v); }
};

// Returns whether every q, k and v element was finite, found from the norms and value sums the
// forward computes anyway (so a caller's finiteness check costs no pass of its own; false also
// where a finite row's squared norm overflows).
template <class Io>
bool ForwardHeads(const AttentionArgs<float>& a, const Io& io, View4<float> out, RowStats stats,
                  HeadDiagnosticsPartial* diagnostics, int threads) {
  const AttentionDims& dm = a.dims;
  const int64_t heads = dm.batch * dm.heads;
  const int64_t q_blocks = (dm.q_len + kBlockQ - 1) / kBlockQ;
  // O(B*H*(Nk + Dv)) per-head key and value facts first, then the query blocks in parallel.
  std::vector<float> kmax_upto(heads * dm.k_len), vpoison(heads * dm.v_dim);
  std::vector<HeadKeys> keys(heads);
  std::vector<HeadDiagnosticsPartial> parts(diagnostics ? heads * q_blocks : 0);
  std::atomic<bool> finite{true};  // only ever set to false
  // Packed keys (every tile is written before it is read, so no buffer is zeroed); with bf16
  // arithmetic also the raw keys as pair-words and their scales.
  const Bf16Forward* dot = io.Dot();
  const int64_t packed_size = dm.qk_dim * RoundUp(dm.k_len, LanesF());
  const int64_t keys_padded = RoundUp(dm.k_len, LanesF());
  const bool warm = WarmPays(dm, threads);
  auto scan = [&](int64_t bh, float* packed, float* packed16, float* key_scale, ForwardScratch& w,
                  HeadStage& st) {
    HeadDiagnosticsPartial* part = diagnostics ? &diagnostics[bh] : nullptr;
    if (part) *part = HeadDiagnosticsPartial{};
    const int64_t b = bh / dm.heads, h = bh % dm.heads;
    if (h == 0 && warm) io.Warm(b);  // before the entry's first head (heads interleaved: WarmSpans)
    keys[bh] = ScanHead(io.Keys(b, h, st), b, h, packed, &kmax_upto[bh * dm.k_len],
                        &vpoison[bh * dm.v_dim], dot ? key_scale : nullptr, part, w);
    if (!std::isfinite(keys[bh].kmax) || keys[bh].vpoison) finite.store(false, std::memory_order_relaxed);
    if (!dot) return;
    const int64_t pairs = dm.qk_dim / 2;
    for (int64_t j0 = 0; j0 < dm.k_len; j0 += kBlockK) {  // bf16 pairs moved as 32-bit lanes
      const int64_t jn = std::min(kBlockK, dm.k_len - j0), width = PackedTileWidth(dm.k_len, j0);
      TransposeRows(reinterpret_cast<const float*>(&dot->k.at(b, h, j0, 0)), dot->k.stride[2] / 2,
                    jn, pairs, packed16 + PackedTileOffset(pairs, j0), width, width);
    }
    keys[bh].packed16 = reinterpret_cast<const uint32_t*>(packed16);
    keys[bh].key_scale = key_scale;
  };
  auto block = [&](int64_t item, ForwardScratch& w, HeadStage& st) {
    const int64_t bh = item / q_blocks, qb = item % q_blocks, b = bh / dm.heads, h = bh % dm.heads;
    const int64_t i0 = qb * kBlockQ, i1 = std::min(dm.q_len, i0 + kBlockQ);
    if (!ForwardBlock(io.Block(b, h, i0, i1, st), dot, b, h, i0, i1, keys[bh], out,
                      HeadRows(stats, dm, bh), diagnostics ? &parts[item] : nullptr, w))
      finite.store(false, std::memory_order_relaxed);
  };
  if (OneBlockPerHead(dm)) {
#pragma omp parallel num_threads(threads)
    {
      ForwardScratch& w = ThreadScratch<ForwardScratch>();
      HeadStage& st = ThreadScratch<HeadStage>();
      st.q_of = st.kv_of = -1;  // nothing of this call staged yet
#pragma omp for schedule(dynamic)
      for (int64_t bh = 0; bh < heads; ++bh) {
        scan(bh, dot ? nullptr : Grow(w.packed_keys, packed_size),
             dot ? Grow(w.packed_keys16, packed_size / 2) : nullptr,
             dot ? Grow(w.key_scale, keys_padded) : nullptr, w, st);
        block(bh, w, st);
      }
    }
  } else {  // all heads' keys first, then the query blocks of every head in parallel
    // (bf16 products read packed16 and key_scale; the float32 keys are then not kept)
    std::unique_ptr<float[]> packed(new float[dot ? heads * packed_size / 2 : heads * packed_size]);
    std::unique_ptr<float[]> key_scale(dot ? new float[heads * keys_padded] : nullptr);
#pragma omp parallel num_threads(threads)
    {
      ForwardScratch& w = ThreadScratch<ForwardScratch>();
      HeadStage& st = ThreadScratch<HeadStage>();
      st.q_of = st.kv_of = -1;
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < heads; ++bh)
        scan(bh, dot ? nullptr : &packed[bh * packed_size], dot ? &packed[bh * packed_size / 2] : nullptr,
             dot ? &key_scale[bh * keys_padded] : nullptr, w, st);
#pragma omp for schedule(dynamic)
      for (int64_t item = 0; item < heads * q_blocks; ++item) block(item, w, st);
    }
  }
  if (diagnostics)
    for (int64_t item = 0; item < heads * q_blocks; ++item)
      merge_partials(diagnostics[item / q_blocks], parts[item]);
  return finite.load();
}

bool ForwardF32(const AttentionArgs<float>& a, View4<float> out, RowStats stats,
                HeadDiagnosticsPartial* diagnostics, int threads) {
  return ForwardHeads(a, F32Forward{a}, out, stats, diagnostics, threads);
}

bool ForwardBF16(const AttentionArgs<float>& a, const Bf16Forward& io, RowStats stats,
                 HeadDiagnosticsPartial* diagnostics, int threads) {
  return ForwardHeads(a, Bf16ForwardIo{a, io}, io.out, stats, diagnostics, threads);
}

}  // namespace HWY_NAMESPACE
}  // namespace quest::fused
HWY_AFTER_NAMESPACE();

#endif  // QUEST_CORE_FUSED_FORWARD_INL_H_
