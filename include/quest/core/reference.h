// The math reference: plain loops, accumulating in double, forward and backward for every kind.
// Slow on purpose and kept forever as the oracle every faster path is tested against.
#pragma once

#include "quest/core/diagnostics.h"
#include "quest/core/problem.h"

namespace quest::reference {

// out: (B, H, Nq, Dv). lse: B*H*Nq contiguous, in double whatever T: the per-row logsumexp of the logits (-inf for a row
// that sees no key; its output row is zero). diagnostics: optional, B*H partials.
template <typename T>
void forward(const AttentionArgs<T>& args, View4<T> out, double* lse,
             HeadDiagnosticsPartial* diagnostics = nullptr);

// dout: (B, H, Nq, Dv); lse from forward. Rows that see no key get zero gradient.
template <typename T>
void backward(const AttentionArgs<T>& args, View4<const T> dout, const double* lse,
              const AttentionGrads<T>& grads);

}  // namespace quest::reference
