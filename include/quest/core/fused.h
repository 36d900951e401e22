// Fused fp32 attention in the FlashAttention-2 way: tiles of queries and keys, online softmax, only
// the per-row logsumexp saved; the backward recomputes probabilities. Key (and query) L2
// normalisation is fused into the tile packing: no normalised copy of K exists. SIMD through
// Highway with runtime dispatch (AVX-512 / AVX2 / SSE4 ...), threads through OpenMP.
// Extra memory is O(threads * N * D), never N x N. Each calling or OpenMP thread keeps its work
// buffers from one call to the next (about 0.6 MB plus O(N * D) per thread; a fresh set per call
// was faulted in page by page every time).
#pragma once

#include <string>
#include <vector>

#include "quest/core/diagnostics.h"
#include "quest/core/problem.h"

namespace quest::fused {

// Whether the fused kernel handles these args: fp32, unit stride along D for every tensor, and
// Norm::none or Norm::l2 on each side (LayerNorm is applied by the caller before the kernel).
bool supports(const AttentionArgs<float>& args);
// Why supports() is false ("" when it is true), for the dispatcher's rejection reasons.
std::string why_not(const AttentionArgs<float>& args);

// The softmax statistics saved per query row, each B*H*Nq contiguous: logsumexp = shift +
// log_sum. Kept apart because a float logsumexp of a logit near 1e4 has lost the last 1e-3 that
// exp(s - lse) needs; s - shift is exact where s is near shift.
struct RowStats {
  float* shift;    // the softmax shift (row max or the fixed bound); -inf: the row sees no key
  float* log_sum;  // log sum_j exp(s_ij - shift)
};

// Both entry points check their arguments (check_args, supports) and throw
// std::invalid_argument naming the problem.
// out: (B, H, Nq, Dv). diagnostics: optional, B*H partials. threads <= 0: OpenMP's default.
// Returns false where q, k or v holds a NaN or an infinity (the outputs then carry it, as torch's
// would), and also where a finite row's squared norm overflows float32: a caller that must refuse
// non-finite inputs checks them itself only then, instead of reading them again on every call.
bool forward(const AttentionArgs<float>& args, View4<float> out, RowStats stats,
             HeadDiagnosticsPartial* diagnostics, int threads);

// out and stats from forward; D_i = rowsum(dO o O) is computed from them.
void backward(const AttentionArgs<float>& args, View4<const float> out, View4<const float> dout,
              RowStats stats, const AttentionGrads<float>& grads, int threads);

// bfloat16 storage: q, k, v read in place in bf16 (no float32 copy), dQ, dK, dV written in bf16;
// the output stays float32 (the caller rounds it for its user and keeps it for the backward, whose
// D_i = rowsum(dO o O) would lose accuracy from a rounded O), and so do dO and the statistics. args
// holds everything but q, k, v (its q, k, v views are not read). The arithmetic is the float32
// kernel's on each head's rows, converted (exactly) in the work item, except where the forward
// takes bf16 products (bf16_dot below).
struct Bf16Forward {
  View4<const bfloat16> q, k, v;
  View4<float> out;
  // Where the CPU has AVX512_BF16 (and the AVX-512 code runs, D is even, q's and k's row strides
  // are even): S = QK^T and PV as bf16 products (vdpbf16ps) in float32 accumulators, with
  // P rounded to bf16 and the norms applied to S's rows and columns in float32. Else, or false:
  // bit for bit the float32 kernel on the converted rows.
  bool bf16_dot = true;
};
// Whether a bf16 forward on this CPU, at the SIMD target the dispatch picks now, takes the bf16
// products (for args that allow them: see Bf16Forward::bf16_dot).
bool bf16_dot_runs();
struct Bf16Backward {
  View4<const bfloat16> q, k, v;
  View4<const float> out, dout;
  View4<bfloat16> dq, dk, dv;
  // Optional (data null: unused): dK and dV added in float32 into these instead of written to dk
  // and dv, for a caller that sums several calls' shares (grouped-query attention's query groups).
  View4<float> dk_sum, dv_sum;
  // As Bf16Forward's (D and Dv even, q's, k's and v's row strides even): S as the forward's bf16
  // products (bit for bit), dP = bf16(dO) V^T, and dV, dK, dQ from bf16(P'), bf16(dS) (the norms
  // folded in before rounding) and q, k, bf16(dO) as they are, in float32 accumulators.
  bool bf16_dot = true;
};
bool forward(const AttentionArgs<float>& args, const Bf16Forward& io, RowStats stats,
             HeadDiagnosticsPartial* diagnostics, int threads);  // returns as the float32 forward
// dhead_scale: (H) float32, written where args has a head scale and it is non-null.
void backward(const AttentionArgs<float>& args, const Bf16Backward& io, RowStats stats,
              float* dhead_scale, int threads);

// The SIMD target chosen at run time, e.g. "AVX3" or "AVX2".
std::string simd_target();
// The targets the dispatch may pick now (Highway's names, best first): those this CPU and build
// have, less the better ones a set_simd_target call turned off.
std::vector<std::string> simd_targets();
// Runs `name`'s code from now on (one of simd_targets(), e.g. "AVX2") instead of the best target,
// as a CPU with only that target would, its rounding included; "" goes back to the best. Throws
// std::invalid_argument naming the targets there are (the best one then runs). The environment variable QUEST_SIMD_TARGET
// does the same before the first call into the kernels (an unknown name then fails every call).
// Process-wide, not thread-safe against kernels running at the time.
void set_simd_target(const std::string& name);

}  // namespace quest::fused
