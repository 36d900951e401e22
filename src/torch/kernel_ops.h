// The kernel backends (fused, reference) as dispatcher operators — quest::_kernel_forward /
// _kernel_backward and, for packed self-attention, quest::_packed_kernel_forward / _backward —
// each with a CPU kernel, a Meta kernel (shapes only, for torch.compile's fake tensors) and the
// forward's autograd kernel. Every kernel call goes through them, eager or traced, from C++ or
// Python: torch.compile sees the kernels as ops and the code around them as torch ops.
#pragma once

#include <torch/torch.h>

#include "call.h"
#include "quest/core/diagnostics.h"

namespace quest::detail {

enum class KernelBackend { fused, reference };

// The output (B, H, Nq, Dv) of `call` on a kernel backend; fills *diagnostics when non-null and
// *logsumexp (B, H, Nq) float32 from the kernel's row statistics when non-null. Eager, the
// diagnostics are reduced on the host into *diagnostics; traced by torch.compile (no data) they
// become the graph's quest::_reduce_diagnostics operator, (7, H) float64 in *traced_diagnostics
// (rows as diagnostics_tensor), and without that pointer a traced call asking for them is an error.
torch::Tensor run_kernel(const AttentionCall& call, KernelBackend backend, HeadDiagnostics* diagnostics,
                         torch::Tensor* logsumexp = nullptr, torch::Tensor* traced_diagnostics = nullptr);

// The fused kernel on a packed (B, N, 3, H, D) projection read in place (call's q, k, v are its
// views); the output is (B, N, H, Dv).
torch::Tensor run_packed_kernel(const AttentionCall& call, const torch::Tensor& qkv5,
                                HeadDiagnostics* diagnostics, torch::Tensor* logsumexp = nullptr,
                                torch::Tensor* traced_diagnostics = nullptr);

// Diagnostics as the operators return them: (7, H) float64, rows q_norm_mean, q_norm_max,
// k_norm_mean, k_norm_max, logit_abs_max, entropy_mean, logit_max (python/quest/diagnostics.py).
torch::Tensor diagnostics_tensor(const HeadDiagnostics& diagnostics);

}  // namespace quest::detail
