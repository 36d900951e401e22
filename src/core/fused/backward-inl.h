// The fused backward: per (b, h), for each key tile, for each query block, recompute the forward's
// logits bit for bit (same packed operands, same GEMM order) and P = exp((S - shift) - log_sum),
// dP = dO V^T, dS = P o (dP - D_i) with D_i = rowsum(dO o O), dV += P^T dO, dK += dS^T Q,
// dQ += dS K. A work item owns a head's key tiles (all, or every chunks-th when there are fewer
// heads than threads), so dK, dV need no synchronisation and dQ shares are summed at the end.
// Included by src/core/fused.cpp once per Highway target (toggle guard as in Highway's -inl.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "hwy/highway.h"
#include "quest/core/fused.h"
#include "quest/core/problem.h"
#include "src/core/fused/bf16_dot.h"
#include "src/core/fused/tile_ops-inl.h"
#include "src/core/fused/tiles-inl.h"

#if defined(QUEST_CORE_FUSED_BACKWARD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QUEST_CORE_FUSED_BACKWARD_INL_H_
#undef QUEST_CORE_FUSED_BACKWARD_INL_H_
#else
#define QUEST_CORE_FUSED_BACKWARD_INL_H_
#endif

HWY_BEFORE_NAMESPACE();
namespace quest::fused {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

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

// The backward's per-thread buffers, each named for what it holds.
struct BackwardScratch {
  std::vector<float> queries;       // g q_i/|q_i| of the head's rows, Nq x Dp (the forward's qs)
  std::vector<float> query_norm;    // raw |q_i|
  std::vector<float> dout_rows;     // dO zero-padded to whole vectors (when its rows are not)
  std::vector<float> row_dots;      // D_i = rowsum(dO o O)
  std::vector<float> query_poison;  // sum_i 0 * g q_i/|q_i| (D): reaches dK (and the head scale)
  std::vector<float> value_poison;  // sum_j 0 * v_j (Dv)
  std::vector<float> keys_t;        // the tile's normalised keys, D x width (K^T)
  std::vector<float> keys;          // the same products, width x Dp (rows, for dQ)
  std::vector<float> key_norm;      // raw |k_j| of the tile's keys
  std::vector<float> key_inv_norm;  // 1 / max(|k_j|, eps) (1 without normalisation)
  std::vector<float> values_t;      // the tile's values, Dv x width (V^T)
  std::vector<float> dkeys;         // the tile's dK before the key normalisation, width x Dp
  std::vector<float> dvalues;       // the tile's dV, width x Dvp
  std::vector<float> logits;        // S of a query block against the tile
  std::vector<float> probs;         // P
  std::vector<float> probs_kept;    // P' = P o keep / (1 - p_drop), with dropout only
  std::vector<float> dlogits;       // dP = dO V^T, turned into dS = P o (dP - D_i) row by row
  std::vector<float> query_row;     // FinishQueries: one q/|q| (or g q/|q|)
  // bf16 products (HeadQueries::dot):
  std::vector<float> query_scale;          // g / max(|q_i|, eps)
  std::vector<bfloat16> dout16;            // bf16(dO), Nq x Dvp
  std::vector<uint32_t> dout_pairs;        // bf16(dO) pair-rows along queries (for dV)
  std::vector<uint32_t> query_pairs;       // raw q pair-rows along queries (for dK)
  std::vector<uint32_t> keys_t16;          // the tile's raw keys as pair-words along D (for S)
  std::vector<uint32_t> values_t16;        // the tile's values as pair-words along Dv (for dP)
  std::vector<uint32_t> key_pairs;         // raw k pair-rows along keys (for dQ)
  std::vector<bfloat16> dlogits16;         // bf16(dS_ij / |k_j|), Br x width (for dQ)
  std::vector<uint32_t> dlogit_pairs;      // bf16(dS_ij g / |q_i|) pair-rows along queries (for dK)
  std::vector<uint32_t> prob_pairs;        // bf16(P') pair-rows along queries (for dV)
};

// The head's bf16 operands of the backward's products (HeadQueries::dot).
struct HeadQueries16 {
  const bfloat16* q = nullptr;      // raw q rows, ldq apart
  int64_t ldq = 0;
  const float* q_scale = nullptr;   // per row
  const bfloat16* dout = nullptr;   // Nq x Dvp
  const uint32_t* dout_pairs = nullptr;   // (Nq + 1) / 2 x Dvp
  const uint32_t* query_pairs = nullptr;  // (Nq + 1) / 2 x Dp
};

// What every key tile of (b, h) reads about the head's queries.
struct HeadQueries {
  const float* qn;        // g q_i/|q_i| (or q_i/|q_i| where g = 0), Nq x Dp
  const float* qnorm;     // raw |q_i|
  const float* dob;       // dO rows, ldo apart
  int64_t ldo;
  float* dsum;            // D_i
  const float* shift;     // the forward's row statistics
  const float* log_sum;
  const float* qpoison;   // D
  float gq, post;         // the operand's factor, and the logits' (0 where g = 0)
  bool d_from_tiles;      // D_i is summed from the tiles (RowDotsFromTiles), not from dO o O
  const Bf16Backward* dot = nullptr;  // bf16 products (Bf16BackwardIo::Dot), with their operands:
  HeadQueries16 h16;
};

// Pointers into BackwardScratch, sized for any tile of one head.
struct TileBuffers {
  float *kt, *kbar, *knorm, *rk, *vt, *dk, *dv, *s, *p, *pd, *ds;
  // bf16 products only
  uint32_t *kt16, *vt16, *k_pairs, *p_pairs, *ds_pairs;
  bfloat16* ds16;
};

TileBuffers TileBuffersOf(const AttentionArgs<float>& a, int64_t Dp, int64_t Dvp,
                          BackwardScratch& w) {
  const int64_t D = a.dims.qk_dim, Dv = a.dims.v_dim, block = kBlockQ * kBlockK;
  TileBuffers t;
  t.kt = Grow(w.keys_t, D * kBlockK);
  t.kbar = Grow(w.keys, kBlockK * Dp);
  t.knorm = Grow(w.key_norm, kBlockK);
  t.rk = Grow(w.key_inv_norm, kBlockK);
  t.vt = Grow(w.values_t, Dv * kBlockK);
  t.dk = Grow(w.dkeys, kBlockK * Dp);
  t.dv = Grow(w.dvalues, kBlockK * Dvp);
  t.s = Grow(w.logits, block);
  t.p = Grow(w.probs, block);
  t.pd = a.dropout > 0 ? Grow(w.probs_kept, block) : t.p;  // without dropout P' is P
  t.ds = Grow(w.dlogits, block);
  t.kt16 = t.vt16 = t.k_pairs = t.p_pairs = t.ds_pairs = nullptr;
  t.ds16 = nullptr;
  return t;
}

// TileBuffersOf's, with the bf16 products' buffers.
TileBuffers TileBuffers16Of(const AttentionArgs<float>& a, int64_t Dp, int64_t Dvp, BackwardScratch& w) {
  TileBuffers t = TileBuffersOf(a, Dp, Dvp, w);
  const int64_t D = a.dims.qk_dim, Dv = a.dims.v_dim, block = kBlockQ * kBlockK;
  t.kt16 = Grow(w.keys_t16, D / 2 * kBlockK);
  t.vt16 = Grow(w.values_t16, Dv / 2 * kBlockK);
  t.k_pairs = Grow(w.key_pairs, kBlockK / 2 * Dp);
  t.ds16 = Grow(w.dlogits16, block);
  t.p_pairs = Grow(w.prob_pairs, block / 2 + kBlockK);
  t.ds_pairs = Grow(w.dlogit_pairs, block / 2 + kBlockK);
  return t;
}

// The head's query rows as the forward saw them, dO, D_i and the poison sums (problem.h: the
// masked products of the composite's matmuls, added back as 0 * operand sums).
HeadQueries PrepareQueries(const AttentionArgs<float>& a, const Bf16Backward* dot, int64_t b,
                           int64_t h, View4<const float> out, View4<const float> dout,
                           RowStats stats, BackwardScratch& w) {
  const int64_t L = LanesF();
  const AttentionDims& dm = a.dims;
  const int64_t D = dm.qk_dim, Dp = RoundUp(D, L), Dv = dm.v_dim, Dvp = RoundUp(Dv, L);
  const int64_t Nq = dm.q_len;
  const float g = static_cast<float>(a.head_scale_at(h));
  HeadQueries hq;
  // The forward's query operand is g q/|q|; with g = 0 its logits are all 0, so the unscaled
  // q/|q| serves (for the head-scale gradient) and the logits are multiplied by 0.
  hq.gq = g != 0 ? g : 1.0f;
  hq.post = g != 0 ? 1.0f : 0.0f;
  const RowStats rows = HeadRows(stats, dm, b * dm.heads + h);
  hq.shift = rows.shift;
  hq.log_sum = rows.log_sum;
  float* qn = Grow(w.queries, Nq * Dp);
  float* qnorm = Grow(w.query_norm, Nq);
  // dO feeds the GEMMs in place when its rows are whole vectors, else as a zero-padded copy.
  const bool do_in_place = Dv == Dvp;
  float* dop = do_in_place ? nullptr : Grow(w.dout_rows, Nq * Dvp);
  hq.dob = do_in_place ? &dout.at(b, h, 0, 0) : dop;
  hq.ldo = do_in_place ? dout.stride[2] : Dvp;
  float* dsum = Grow(w.row_dots, Nq);
  float* qpoison = Grow(w.query_poison, D);  // over g q_i/|q_i|, reaches dK
  float* vpoison = Grow(w.value_poison, Dv);
  if (D != Dp) std::fill(qn, qn + Nq * Dp, 0.0f);  // pad columns (rows are overwritten)
  if (!do_in_place) std::fill(dop, dop + Nq * Dvp, 0.0f);
  std::fill(qpoison, qpoison + D, 0.0f);
  std::fill(vpoison, vpoison + Dv, 0.0f);
  AccumulateNonfiniteRows(&a.v.at(b, h, 0, 0), a.v.stride[2], dm.k_len, Dv, vpoison);
  // D_i = rowsum(dO o O) = sum_j P_ij dP_ij. A non-finite value that row i does not see made its
  // output non-finite (as 0 * v) but not the composite's D_i, so then D_i comes from the tiles.
  hq.d_from_tiles = any_nonfinite(vpoison, Dv);
  float* q_scale = dot ? Grow(w.query_scale, Nq) : nullptr;
  for (int64_t i = 0; i < Nq; ++i) {
    const float* q = &a.q.at(b, h, i, 0);
    const float rq = InverseNorm(q, D, a.q_norm, a.l2_eps, &qnorm[i]);
    ScaleRow(q, rq * hq.gq, D, qn + i * Dp);  // as the forward's qs
    if (dot) q_scale[i] = rq * hq.gq;
    if (MayBeNonfinite(qnorm[i], rq * hq.gq)) AccumulateNonfinite(qn + i * Dp, D, qpoison);
    if (!do_in_place) std::copy_n(&dout.at(b, h, i, 0), Dv, dop + i * Dvp);
    dsum[i] = hq.d_from_tiles ? 0.0f : Dot(&dout.at(b, h, i, 0), &out.at(b, h, i, 0), Dv);
  }
  hq.qn = qn;
  hq.qnorm = qnorm;
  hq.dsum = dsum;
  hq.qpoison = qpoison;
  if (dot) {  // bf16(dO) rows and pair-rows, raw q pair-rows
    const int64_t pairs = (Nq + 1) / 2;
    HeadQueries16& x = hq.h16;
    bfloat16* do16 = Grow(w.dout16, Nq * Dvp);
    for (int64_t i = 0; i < Nq; ++i) bf16_dot::round_row(hq.dob + i * hq.ldo, Dvp, do16 + i * Dvp);
    uint32_t* do_pairs = Grow(w.dout_pairs, pairs * Dvp);
    bf16_dot::pack_pairs(do16, Dvp, Nq, Dvp, do_pairs, Dvp);
    uint32_t* q_pairs = Grow(w.query_pairs, pairs * Dp);
    bf16_dot::pack_pairs(&dot->q.at(b, h, 0, 0), dot->q.stride[2], Nq, D, q_pairs, Dp);
    x.q = &dot->q.at(b, h, 0, 0);
    x.ldq = dot->q.stride[2];
    x.q_scale = q_scale;
    x.dout = do16;
    x.dout_pairs = do_pairs;
    x.query_pairs = q_pairs;
    hq.dot = dot;
  }
  return hq;
}

// Packs key tile [j0, j0 + jn) of (b, h) into t: K^T, K rows, key norms, V^T; with bf16
// products also the raw keys and values as pair-words along D and Dv, and the raw keys as
// pair-rows along keys. Returns its width.
int64_t PackTile(const AttentionArgs<float>& a, const HeadQueries& hq, int64_t b, int64_t h,
                 int64_t j0, int64_t jn, int64_t Dp, const TileBuffers& t) {
  const int64_t width = RoundUp(jn, LanesF());
  const int64_t D = a.dims.qk_dim, Dv = a.dims.v_dim;
  PackKeys(a, b, h, j0, jn, width, t.kt, t.kbar, Dp, t.knorm, t.rk);
  if (!hq.dot) {
    TransposeRows(&a.v.at(b, h, j0, 0), a.v.stride[2], jn, Dv, t.vt, width, width);
    return width;
  }
  const Bf16Backward& x = *hq.dot;  // bf16 pairs moved as 32-bit lanes
  TransposeRows(reinterpret_cast<const float*>(&x.k.at(b, h, j0, 0)), x.k.stride[2] / 2, jn, D / 2,
                reinterpret_cast<float*>(t.kt16), width, width);
  TransposeRows(reinterpret_cast<const float*>(&x.v.at(b, h, j0, 0)), x.v.stride[2] / 2, jn, Dv / 2,
                reinterpret_cast<float*>(t.vt16), width, width);
  std::fill(t.rk + jn, t.rk + width, 0.0f);  // pad columns of S and dS: 0 times 0
  bf16_dot::pack_pairs(&x.k.at(b, h, j0, 0), x.k.stride[2], jn, D, t.k_pairs, Dp);
  return width;
}

// The first query block with a row that can see key j0 (i + shift >= j0): earlier ones see none
// of its tile.
HWY_INLINE int64_t FirstBlockSeeing(const AttentionArgs<float>& a, int64_t j0) {
  return a.causal ? std::max<int64_t>(0, j0 - a.causal_shift()) / kBlockQ * kBlockQ : 0;
}

// Query rows [i0, i0 + Br) of (b, h) against the key tile [j0, j0 + jn) packed in t: S = (g Q) K^T
// (the forward's logits bit for bit: same operands, same GEMM order), dP = dO V^T, then row by
// row P = exp((S - shift) - log_sum), masked entries 0, and with dropout P' and dP' = dP o keep /
// (1 - p_drop). A row that saw no key gets zeros; a row whose forward was NaN gets NaN where it
// sees, or zeros where nan_rows_empty (D_i, which such a row does not use). Every other row,
// and a NaN row unless nan_rows_empty, then goes to on_row(r, i, nan_row).
template <class OnRow>
HWY_INLINE void TileRows(const AttentionArgs<float>& a, int64_t b, int64_t h,
                         const HeadQueries& hq, const TileBuffers& t, int64_t j0, int64_t jn,
                         int64_t width, int64_t i0, int64_t Br, bool nan_rows_empty,
                         OnRow&& on_row) {
  const DF d;
  const int64_t L = LanesF();
  const int64_t D = a.dims.qk_dim, Dp = RoundUp(D, L), Dv = a.dims.v_dim;
  if (hq.dot) {  // S as the forward's bf16 products (same operands, scales and order), dP
    const HeadQueries16& x = hq.h16;
    bf16_dot::gemm(Br, width, D / 2, x.q + i0 * x.ldq, x.ldq / 2, 1, t.kt16, width, t.s, width, false,
                   x.q_scale + i0, t.rk);
    const int64_t Dvp = RoundUp(Dv, L);
    bf16_dot::gemm(Br, width, Dv / 2, x.dout + i0 * Dvp, Dvp / 2, 1, t.vt16, width, t.ds, width, false,
                   nullptr, nullptr);
  } else {
    Gemm(Br, width, D, hq.qn + i0 * Dp, Dp, 1, t.kt, width, t.s, width, false);  // S, as forward
    Gemm(Br, width, Dv, hq.dob + i0 * hq.ldo, hq.ldo, 1, t.vt, width, t.ds, width, false);  // dP
  }
  const VF vpost = hn::Set(d, hq.post);
  for (int64_t r = 0; r < Br; ++r) {
    const int64_t i = i0 + r;
    float* sr = t.s + r * width;
    float* pr = t.p + r * width;
    float* dsr = t.ds + r * width;
    float* pdr = t.pd + r * width;
    MaskRow(a, b, i, j0, jn, width, sr);  // masked logits -> -inf -> P = 0
    const float shift = hq.shift[i];
    if (shift == kNegInf || (nan_rows_empty && std::isnan(shift))) {
      std::fill(pr, pr + width, 0.0f);  // row saw no key: no gradient
      std::fill(dsr, dsr + width, 0.0f);
      std::fill(pdr, pdr + width, 0.0f);
      continue;
    }
    if (std::isnan(shift)) {  // the forward row was NaN: so are P and dS where it sees
      for (int64_t c = 0; c < width; ++c) pr[c] = kNaN;
      MaskRow(a, b, i, j0, jn, width, pr);
      for (int64_t c = 0; c < width; ++c) pr[c] = pr[c] == kNegInf ? 0.0f : kNaN;
      std::copy_n(pr, width, dsr);
      std::copy_n(pr, width, pdr);
      on_row(r, i, true);
      continue;
    }
    const VF vm = hn::Set(d, shift), vls = hn::Set(d, hq.log_sum[i]);
    auto probabilities = [&](auto exp) {  // P = exp((s - shift) - log_sum); exp chosen outside the loop
      for (int64_t c = 0; c < width; c += L)
        hn::StoreU(exp(hn::Sub(hn::Sub(hn::Mul(vpost, hn::LoadU(d, sr + c)), vm), vls)), d, pr + c);
    };
    if (hq.dot)
      probabilities([d](VF x) { return SoftmaxExpBf16(d, x); });
    else
      probabilities([d](VF x) { return SoftmaxExp(d, x); });
    if (a.dropout > 0)
      for (int64_t c = 0; c < width; ++c) {
        const float f = c < jn ? DropoutFactor(a, b, h, i, j0 + c) : 0.0f;
        pdr[c] = pr[c] * f;  // P' feeds dV
        dsr[c] *= f;         // dP = dP' * keep / (1 - p_drop)
      }
    on_row(r, i, false);
  }
}

// D_i = sum over visible j of P_ij dP_ij, from every key tile of (b, h) (hq.d_from_tiles).
void RowDotsFromTiles(const AttentionArgs<float>& a, int64_t b, int64_t h, const HeadQueries& hq,
                      const TileBuffers& t) {
  const DF d;
  const int64_t L = LanesF();
  const int64_t Dp = RoundUp(a.dims.qk_dim, L), Nq = a.dims.q_len, Nk = a.dims.k_len;
  const VF vneg_inf = hn::Set(d, kNegInf);
  for (int64_t j0 = 0; j0 < Nk; j0 += kBlockK) {
    const int64_t jn = std::min(kBlockK, Nk - j0);
    const int64_t width = PackTile(a, hq, b, h, j0, jn, Dp, t);
    for (int64_t i0 = FirstBlockSeeing(a, j0); i0 < Nq; i0 += kBlockQ) {
      const int64_t Br = std::min(kBlockQ, Nq - i0);
      TileRows(a, b, h, hq, t, j0, jn, width, i0, Br, /*nan_rows_empty=*/true,
               [&](int64_t r, int64_t i, bool) {
                 const float* sr = t.s + r * width;
                 const float* pr = t.p + r * width;
                 const float* dsr = t.ds + r * width;
                 VF vd = hn::Zero(d);
                 for (int64_t c = 0; c < width; c += L)
                   vd = hn::Add(vd, hn::IfThenElseZero(
                                        hn::Gt(hn::LoadU(d, sr + c), vneg_inf),
                                        hn::Mul(hn::LoadU(d, pr + c), hn::LoadU(d, dsr + c))));
                 hq.dsum[i] += hn::GetLane(hn::SumOfLanes(d, vd));
               });
    }
  }
}

// The key tiles of (b, h) with tile % chunks == chunk: writes their dK and dV, and accumulates
// their share of dQ (before the factor g and the query normalisation; Nq x Dp), of the key
// poison (D) and of the head-scale gradient (returned). FinishQueries completes dQ.
double TileGradients(const AttentionArgs<float>& a, int64_t b, int64_t h, int64_t chunk,
                     int64_t chunks, const HeadQueries& hq, const TileBuffers& t,
                     const AttentionGrads<float>& gr, float* dq, float* kpoison) {
  const DF d;
  const int64_t L = LanesF();
  const AttentionDims& dm = a.dims;
  const int64_t D = dm.qk_dim, Dp = RoundUp(D, L), Dv = dm.v_dim, Dvp = RoundUp(Dv, L);
  const int64_t Nq = dm.q_len, Nk = dm.k_len;
  const VF vneg_inf = hn::Set(d, kNegInf);
  const VF vpost = hn::Set(d, hq.post), vinv_gq = hn::Set(d, 1.0f / hq.gq);
  const bool want_dscale = gr.dhead_scale && a.head_scale;  // else the row sums are not needed
  double dscale = 0;
  for (int64_t j0 = 0; j0 < Nk; j0 += kBlockK) {
    if ((j0 / kBlockK) % chunks != chunk) continue;  // another chunk's tile
    const int64_t jn = std::min(kBlockK, Nk - j0);
    const int64_t width = PackTile(a, hq, b, h, j0, jn, Dp, t);
    for (int64_t c = 0; c < jn; ++c)
      if (MayBeNonfinite(t.knorm[c], t.rk[c])) AccumulateNonfinite(t.kbar + c * Dp, D, kpoison);
    // The first query block's dV and dK products overwrite the buffers (no zeroing pass).
    const int64_t i_first = FirstBlockSeeing(a, j0);
    for (int64_t i0 = i_first; i0 < Nq; i0 += kBlockQ) {
      const int64_t Br = std::min(kBlockQ, Nq - i0);
      const bool acc = i0 > i_first;
      TileRows(a, b, h, hq, t, j0, jn, width, i0, Br, /*nan_rows_empty=*/false,
               [&](int64_t r, int64_t i, bool nan_row) {
                 if (nan_row) {
                   dscale += kNaN;
                   return;
                 }
                 const float* sr = t.s + r * width;
                 const float* pr = t.p + r * width;
                 float* dsr = t.ds + r * width;
                 const VF vdi = hn::Set(d, hq.dsum[i]);
                 VF vscale = hn::Zero(d);
                 for (int64_t c = 0; c < width; c += L) {  // dS = P o (dP - D_i), 0 where masked
                   const VF sv = hn::LoadU(d, sr + c);  // g q.k (or q.k where g = 0)
                   const auto visible = hn::Gt(sv, vneg_inf);
                   const VF dsv = hn::IfThenElseZero(
                       visible, hn::Mul(hn::LoadU(d, pr + c), hn::Sub(hn::LoadU(d, dsr + c), vdi)));
                   if (want_dscale)
                     vscale = hn::Add(vscale,
                                      hn::IfThenElseZero(visible, hn::Mul(hn::Mul(dsv, sv), vinv_gq)));
                   hn::StoreU(hn::Mul(dsv, vpost), d, dsr + c);
                 }
                 if (want_dscale) dscale += hn::GetLane(hn::SumOfLanes(d, vscale));
               });
      // (The pad keys' columns of P and dS are 0: only jn rows / jn terms are computed.)
      if (hq.dot) {  // the same products from bf16 operands: P' and dS as pair-rows along
        // queries are P'^T and dS^T's pairs (ars 1, aps width). The norms go into dS before it is
        // rounded (dK: g / |q_i| per row, dQ: 1 / |k_j| per column): q and k enter as stored.
        const HeadQueries16& x = hq.h16;
        const int64_t pairs = (Br + 1) / 2;
        bf16_dot::round_pairs(t.pd, width, Br, width, t.p_pairs, nullptr);
        bf16_dot::round_pairs(t.ds, width, Br, width, t.ds_pairs, x.q_scale + i0);
        for (int64_t r = 0; r < Br; ++r) bf16_dot::round_row(t.ds + r * width, width, t.ds16 + r * width, t.rk);
        bf16_dot::gemm(jn, Dvp, pairs, t.p_pairs, 1, width, x.dout_pairs + i0 / 2 * Dvp, Dvp, t.dv,
                       Dvp, acc, nullptr, nullptr);
        bf16_dot::gemm(jn, Dp, pairs, t.ds_pairs, 1, width, x.query_pairs + i0 / 2 * Dp, Dp, t.dk, Dp,
                       acc, nullptr, nullptr);
        bf16_dot::gemm(Br, Dp, (jn + 1) / 2, t.ds16, width / 2, 1, t.k_pairs, Dp, dq + i0 * Dp, Dp,
                       true, nullptr, nullptr);
        continue;
      }
      const float* dob = hq.dob + i0 * hq.ldo;
      Gemm(jn, Dvp, Br, t.pd, 1, width, dob, hq.ldo, t.dv, Dvp, acc);  // dV += P'^T dO
      Gemm(jn, Dp, Br, t.ds, 1, width, hq.qn + i0 * Dp, Dp, t.dk, Dp, acc);  // dK += dS^T (g Q)
      Gemm(Br, Dp, jn, t.ds, width, 1, t.kbar, Dp, dq + i0 * Dp, Dp, true);  // dQ += dS K (x g later)
    }
    if (i_first >= Nq) {  // no query sees this tile (causal)
      std::fill(t.dk, t.dk + jn * Dp, 0.0f);
      std::fill(t.dv, t.dv + jn * Dvp, 0.0f);
    }
    const bool q_poisoned = any_nonfinite(hq.qpoison, D);
    for (int64_t c = 0; c < jn; ++c) {
      CopyRow(t.dv + c * Dvp, Dv, &gr.dv.at(b, h, j0 + c, 0));
      if (q_poisoned)  // every query multiplies k_j in the composite, masked ones by 0
        for (int64_t e = 0; e < D; ++e) t.dk[c * Dp + e] += hq.qpoison[e];
      float* dst = &gr.dk.at(b, h, j0 + c, 0);
      if (a.k_norm == Norm::l2)
        L2Backward(t.kbar + c * Dp, t.dk + c * Dp, t.knorm[c], a.l2_eps, D, dst);
      else
        CopyRow(t.dk + c * Dp, D, dst);
    }
  }
  return dscale;
}

// One work item: the key tiles t % chunks == chunk of (b, h). dq (Nq x Dp) and kpoison (D) are
// zeroed here and receive this item's shares; *dscale its share of the head-scale gradient.
// Returns the head's queries as prepared (in w: valid until this thread's next item).
HeadQueries BackwardItem(const AttentionArgs<float>& a, const Bf16Backward* dot, int64_t b, int64_t h,
                  int64_t chunk, int64_t chunks, View4<const float> out, View4<const float> dout,
                  RowStats stats, const AttentionGrads<float>& gr, float* dq, float* kpoison,
                  double* dscale, BackwardScratch& w) {
  const int64_t L = LanesF();
  const int64_t D = a.dims.qk_dim, Dp = RoundUp(D, L), Dvp = RoundUp(a.dims.v_dim, L);
  const TileBuffers t = dot ? TileBuffers16Of(a, Dp, Dvp, w) : TileBuffersOf(a, Dp, Dvp, w);
  const HeadQueries hq = PrepareQueries(a, dot, b, h, out, dout, stats, w);
  std::fill(dq, dq + a.dims.q_len * Dp, 0.0f);
  std::fill(kpoison, kpoison + D, 0.0f);
  if (hq.d_from_tiles) RowDotsFromTiles(a, b, h, hq, t);
  *dscale = TileGradients(a, b, h, chunk, chunks, hq, t, gr, dq, kpoison);
  return hq;
}

// dQ of (b, h) from the summed tile shares dq (Nq x Dp, overwritten) and key poison; adds the
// poison terms of the head-scale gradient to *dscale. hq: the head's queries as this thread just
// prepared them (their norms and poison sum), or null (split heads: computed again here).
void FinishQueries(const AttentionArgs<float>& a, int64_t b, int64_t h, float* dq,
                   const float* kpoison, const AttentionGrads<float>& gr, double* dscale,
                   BackwardScratch& w, const HeadQueries* hq) {
  const int64_t L = LanesF();
  const int64_t D = a.dims.qk_dim, Dp = RoundUp(D, L), Nq = a.dims.q_len;
  const float g = static_cast<float>(a.head_scale_at(h));
  const float gq = g != 0 ? g : 1.0f;
  float* qi = Grow(w.query_row, D);
  float* own_poison = hq ? nullptr : Grow(w.query_poison, D);  // summed here without hq
  if (own_poison) std::fill(own_poison, own_poison + D, 0.0f);
  const float* qpoison = hq ? hq->qpoison : own_poison;
  const bool k_poisoned = any_nonfinite(kpoison, D);
  for (int64_t i = 0; i < Nq; ++i) {
    float raw = 0;
    const float* q = &a.q.at(b, h, i, 0);
    const float rq = hq ? InverseOf(raw = hq->qnorm[i], a.q_norm, a.l2_eps)
                        : InverseNorm(q, D, a.q_norm, a.l2_eps, &raw);
    if (!hq && MayBeNonfinite(raw, rq * gq)) {  // TileGradients' operand has a NaN or inf
      ScaleRow(q, rq * gq, D, qi);
      AccumulateNonfinite(qi, D, own_poison);
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

// Where the backward reads q, k, v, O, dO and writes dQ, dK, dV. Float32: in place. Head(b, h):
// a work item's view of (b, h), everything readable and the gradients' destination; Queries(b, h):
// q of (b, h) readable (FinishQueries); KeysDone / QueriesDone: those rows of dK, dV / dQ are final.
struct HeadIo {
  AttentionArgs<float> args;
  View4<const float> out, dout;
  AttentionGrads<float> grads;
};
struct F32Backward {
  const AttentionArgs<float>& a;
  View4<const float> out, dout;
  const AttentionGrads<float>& gr;
  const Bf16Backward* Dot() const { return nullptr; }
  HeadIo Head(int64_t, int64_t, HeadStage&) const { return {a, out, dout, gr}; }
  HeadIo Queries(int64_t, int64_t, HeadStage&) const { return {a, out, dout, gr}; }
  void KeysDone(int64_t, int64_t, int64_t, int64_t, HeadStage&) const {}
  void QueriesDone(int64_t, int64_t, HeadStage&) const {}
  void Warm(int64_t b) const { WarmEntry(a.dims, b, a.q, a.k, a.v, out, dout); }
};

// bfloat16 storage: each head's q, k, v staged in float32 (HeadStage), dQ, dK, dV rounded back.
struct Bf16BackwardIo {
  const AttentionArgs<float>& a;
  const Bf16Backward& io;
  float* dhead_scale;
  // bf16 products: pairs along D in q and k, along Dv in v (dP = dO V^T).
  const bool dot = Bf16DotApplies(io.bf16_dot, {a.dims.qk_dim, a.dims.v_dim, io.q.stride[2],
                                                io.k.stride[2], io.v.stride[2]});
  const Bf16Backward* Dot() const { return dot ? &io : nullptr; }
  HeadIo Queries(int64_t b, int64_t h, HeadStage& s) const {
    const AttentionDims& dm = a.dims;
    const int64_t bh = b * dm.heads + h;
    if (s.q_of != bh) {
      StageRows(io.q, b, h, 0, dm.q_len, dm.qk_dim, Grow(s.q, dm.q_len * dm.qk_dim));
      s.q_of = bh;
    }
    HeadIo x{a, {}, {}, {}};
    x.args.q = HeadView<const float>(s.q.data(), dm.qk_dim);
    x.grads.dq = HeadView<float>(Grow(s.dq, dm.q_len * dm.qk_dim), dm.qk_dim);
    x.grads.dk = HeadView<float>(Grow(s.dk, dm.k_len * dm.qk_dim), dm.qk_dim);
    x.grads.dv = HeadView<float>(Grow(s.dv, dm.k_len * dm.v_dim), dm.v_dim);
    x.grads.dhead_scale = dhead_scale;
    return x;
  }
  HeadIo Head(int64_t b, int64_t h, HeadStage& s) const {
    const AttentionDims& dm = a.dims;
    const int64_t bh = b * dm.heads + h;
    HeadIo x = Queries(b, h, s);
    if (s.kv_of != bh) {
      StageRows(io.k, b, h, 0, dm.k_len, dm.qk_dim, Grow(s.k, dm.k_len * dm.qk_dim));
      StageRows(io.v, b, h, 0, dm.k_len, dm.v_dim, Grow(s.v, dm.k_len * dm.v_dim));
      s.kv_of = bh;
    }
    x.args.k = HeadView<const float>(s.k.data(), dm.qk_dim);
    x.args.v = HeadView<const float>(s.v.data(), dm.v_dim);
    x.out = io.out;
    x.dout = io.dout;
    return x;
  }
  void KeysDone(int64_t b, int64_t h, int64_t chunk, int64_t chunks, HeadStage& s) const {
    const AttentionDims& dm = a.dims;
    for (int64_t j0 = chunk * kBlockK; j0 < dm.k_len; j0 += chunks * kBlockK) {  // this item's tiles
      const int64_t j1 = std::min(dm.k_len, j0 + kBlockK);
      if (io.dk_sum.data) {
        AddRows(s.dk.data(), j0, j1, dm.qk_dim, io.dk_sum, b, h);
        AddRows(s.dv.data(), j0, j1, dm.v_dim, io.dv_sum, b, h);
      } else {
        UnstageRows(s.dk.data(), j0, j1, dm.qk_dim, io.dk, b, h);
        UnstageRows(s.dv.data(), j0, j1, dm.v_dim, io.dv, b, h);
      }
    }
  }
  void QueriesDone(int64_t b, int64_t h, HeadStage& s) const {
    UnstageRows(s.dq.data(), 0, a.dims.q_len, a.dims.qk_dim, io.dq, b, h);
  }
  void Warm(int64_t b) const { WarmEntry(a.dims, b, io.q, io.k, io.v, io.out, io.dout); }
};

template <class Io>
void BackwardHeads(const AttentionArgs<float>& a, const Io& io, RowStats stats, float* dhead_scale,
                   int threads) {
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
  const bool warm = WarmPays(dm, threads);
  std::vector<float> shares(split ? heads * chunks * dm.q_len * Dp : 0),
      share_kpoison(split ? heads * chunks * dm.qk_dim : 0);
#pragma omp parallel num_threads(threads)
  {
    BackwardScratch& w = ThreadScratch<BackwardScratch>();
    HeadStage& st = ThreadScratch<HeadStage>();
    st.q_of = st.kv_of = -1;  // nothing of this call staged yet
    std::vector<float> own(split ? 0 : dm.q_len * Dp), own_kpoison(split ? 0 : dm.qk_dim);
    auto dq_of = [&](int64_t item) { return split ? &shares[item * dm.q_len * Dp] : own.data(); };
    auto kpoison_of = [&](int64_t item) {
      return split ? &share_kpoison[item * dm.qk_dim] : own_kpoison.data();
    };
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < heads * chunks; ++item) {
      const int64_t bh = item / chunks, b = bh / dm.heads, h = bh % dm.heads;
      if (h == 0 && item % chunks == 0 && warm) io.Warm(b);  // before the entry's first head (WarmSpans)
      const HeadIo x = io.Head(b, h, st);
      const HeadQueries hq = BackwardItem(x.args, io.Dot(), b, h, item % chunks, chunks, x.out,
                                          x.dout, stats, x.grads, dq_of(item), kpoison_of(item),
                                          &dscale[item], w);
      io.KeysDone(b, h, item % chunks, chunks, st);
      if (!split) {
        FinishQueries(x.args, b, h, dq_of(item), kpoison_of(item), x.grads, &dscale[item], w, &hq);
        io.QueriesDone(b, h, st);
      }
    }
    if (split) {
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < heads; ++bh) {
        const int64_t first = bh * chunks, b = bh / dm.heads, h = bh % dm.heads;
        for (int64_t c = 1; c < chunks; ++c) {  // sum the shares into the first chunk's
          for (int64_t x = 0; x < dm.q_len * Dp; ++x) dq_of(first)[x] += dq_of(first + c)[x];
          for (int64_t e = 0; e < dm.qk_dim; ++e) kpoison_of(first)[e] += kpoison_of(first + c)[e];
          dscale[first] += dscale[first + c];
        }
        const HeadIo x = io.Queries(b, h, st);
        FinishQueries(x.args, b, h, dq_of(first), kpoison_of(first), x.grads, &dscale[first], w,
                      nullptr);
        io.QueriesDone(b, h, st);
      }
    }
  }
  if (dhead_scale && a.head_scale) {
    for (int64_t h = 0; h < dm.heads; ++h) {
      double sum = 0;
      for (int64_t b = 0; b < dm.batch; ++b) sum += dscale[(b * dm.heads + h) * chunks];
      dhead_scale[h] = static_cast<float>(sum);
    }
  }
}

void BackwardF32(const AttentionArgs<float>& a, View4<const float> out, View4<const float> dout,
                 RowStats stats, const AttentionGrads<float>& gr, int threads) {
  BackwardHeads(a, F32Backward{a, out, dout, gr}, stats, gr.dhead_scale, threads);
}

void BackwardBF16(const AttentionArgs<float>& a, const Bf16Backward& io, RowStats stats,
                  float* dhead_scale, int threads) {
  BackwardHeads(a, Bf16BackwardIo{a, io, dhead_scale}, stats, dhead_scale, threads);
}

}  // namespace HWY_NAMESPACE
}  // namespace quest::fused
HWY_AFTER_NAMESPACE();

#endif  // QUEST_CORE_FUSED_BACKWARD_INL_H_
