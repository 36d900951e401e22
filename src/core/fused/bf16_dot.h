// bfloat16 arithmetic for the fused kernel: a GEMM on AVX512_BF16's vdpbf16ps (two bf16 products
// added into each float32 lane per instruction), and the packing it needs. Compiled for that
// instruction set with function target attributes and entered only where available() says the CPU
// has it, so the rest of the build keeps its baseline (the Highway 1.0 of Debian 12 has no target
// and no op for it).
//
// The operands are bf16 pairs along the reduction index, each pair one 32-bit word (low half the
// even index). A's pair (r, p) is the word at A + r * ars + p * aps (strides in words): a bf16 row
// as it is stored has ars = its stride / 2 and aps = 1; pair-rows (below) have ars = 1 and
// aps = their ld. B is pair-rows: (b[2p][c], b[2p+1][c]) at B[p * ldb + c].
#pragma once

#include <cstdint>

#include "quest/core/problem.h"

namespace quest::fused::bf16_dot {

// Whether this CPU (and OS) runs AVX-512 F/BW/VL and AVX512_BF16, and this build has the code.
bool available();

// C (M x N, ldc) (+)= A (M x 2P) B (2P x N), in float32 accumulators; N a multiple of 16. With
// row_scale and col_scale (accumulate false): C[r][c] = (A B)[r][c] * row_scale[r] * col_scale[c],
// col_scale read for all N columns.
void gemm(int64_t M, int64_t N, int64_t P, const void* A, int64_t ars, int64_t aps,
          const uint32_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate,
          const float* row_scale, const float* col_scale);

// y[0, n) = x[0, n) (times scale[0, n), if given) rounded to nearest even (NaN stays NaN,
// denormals become 0); n a multiple of 16.
void round_row(const float* x, int64_t n, bfloat16* y, const float* scale = nullptr);

// Pair-rows of float rows x[0, n) (row i at x + i * stride, times row_scale[i] if given) rounded
// to bf16: out[p * width + c] holds (x[2p][c], x[2p+1][c]) for c < width (a multiple of 16), a
// zero half for the missing row of an odd n.
void round_pairs(const float* x, int64_t stride, int64_t n, int64_t width, uint32_t* out,
                 const float* row_scale);

// Pair-rows of rows x[0, n) (row i at x + i * stride, cols entries): out[p * ld + c] holds
// (x[2p][c], x[2p+1][c]) for c < cols, zero words for cols <= c < ld and for the missing row of
// an odd n. (n + 1) / 2 pair-rows.
void pack_pairs(const bfloat16* x, int64_t stride, int64_t n, int64_t cols, uint32_t* out,
                int64_t ld);

}  // namespace quest::fused::bf16_dot
