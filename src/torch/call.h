// One attention call inside the LibTorch layer: the tensors and every resolved scalar, validated
// once by make_call. Kernels get their torch-free AttentionArgs from it; backward gets it back
// through a typed autograd context (save_call / load_call).
#pragma once

#include <torch/torch.h>

#include <array>
#include <optional>

#include "quest/core/diagnostics.h"
#include "quest/core/problem.h"
#include "quest/torch/attention.h"

namespace quest::detail {

// The scalars (AttentionScalars) are the kernels' own; the tensors are what AttentionArgs points at.
// Under torch.compile with dynamic shapes, dims holds -1 for the sizes that are symbolic (the
// head dims are always known): code that runs while tracing reads sizes from the tensors, the
// kernels (which see real tensors) from dims.
struct AttentionCall : AttentionScalars {
  torch::Tensor q, k, v;
  torch::Tensor head_scale;                  // (H) or undefined
  torch::Tensor q_norm_weight, q_norm_bias;  // (Dk) or undefined
  torch::Tensor k_norm_weight, k_norm_bias;
  torch::Tensor key_padding_mask;            // (B, Nk) bool, contiguous, or undefined
  // Broadcastable to (B, H, Nq, Nk), q's dtype, or undefined. Only the composite backend takes it
  // (torch's autograd), so it is not among the fields an autograd context saves.
  torch::Tensor attn_bias;

  Backend requested = Backend::automatic;
  // Grouped-query attention: q has kv_group times as many heads as k and v; query head h reads
  // key/value head h / kv_group (torch's SDPA with enable_gqa). 1: every head its own.
  int64_t kv_group = 1;
  // Traced by torch.compile with dropout: torch's in-graph dropout (fresh random numbers each call,
  // as torch's own ops under compile) instead of quest's seeded host-drawn mask; the composite and
  // sdpa backends take it.
  bool torch_dropout = false;
  // bfloat16 or float16 inputs on a device other than the CPU, for the sdpa backend: q, k and v are
  // the caller's tensors in this dtype (validated and selected as their float32 copies); only what
  // is normalised or measured goes through float32, and torch's SDPA attends in this dtype, so that
  // its bfloat16 / float16 kernels (flash, cuDNN) serve it with no float32 round trip of q and v.
  // Undefined: everything in the call's dtype.
  std::optional<torch::ScalarType> sdpa_dtype;
  // check_finite asked, and q, k, v not yet read for it (request_finite_check): the fused CPU
  // kernel finds a NaN or infinity as it reads them, so the call passes the check to it instead of
  // a pass of its own (which cost 9-54 % of a forward at the README's shapes, results/peers); any
  // other backend checks them before it runs (run_backend).
  bool finite_check_pending = false;

  // The tensor members in one fixed order: the only place that order is written down.
  static constexpr std::array<torch::Tensor AttentionCall::*, 9> tensor_fields() {
    return {&AttentionCall::q,           &AttentionCall::k,           &AttentionCall::v,
            &AttentionCall::head_scale,  &AttentionCall::q_norm_weight, &AttentionCall::q_norm_bias,
            &AttentionCall::k_norm_weight, &AttentionCall::k_norm_bias, &AttentionCall::key_padding_mask};
  }

  template <typename T>
  AttentionArgs<T> kernel_args() const;
};

// A tensor as the kernels' strided view (element strides of the 4 dimensions).
template <typename T>
View4<T> view4(const torch::Tensor& t) {
  View4<T> v;
  v.data = t.data_ptr<std::remove_const_t<T>>();
  for (int d = 0; d < 4; ++d) v.stride[d] = t.stride(d);
  return v;
}

// The data of an optional tensor, or null where it is undefined.
template <typename T>
T* ptr_or_null(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<std::remove_const_t<T>>() : nullptr;
}

// Whether t stands in for data while torch.compile traces (a fake or functional tensor) or is a
// meta tensor: shapes only, nothing to read.
bool traced(const torch::Tensor& t);

// t.size(d), also where torch.compile made the size symbolic (then guarded: the graph specialises
// on it, so a new length recompiles).
int64_t size_of(const torch::Tensor& t, int64_t d);

// The query heads r, r + kv_group, r + 2 kv_group, ... of a grouped-query call as a call of its
// own, with as many heads as k and v: q (and head_scale) strided views, k and v as they are. The
// kernels run once per r, so K and V are read in place, never repeated per group. For
// kv_group == 1 (r = 0) the call itself.
AttentionCall group_call(const AttentionCall& call, int64_t r);
// Per-(b, h) diagnostics of group r's call (B x Hk of them) into the whole call's (B x Hq).
void scatter_group_partials(const std::vector<HeadDiagnosticsPartial>& group, const AttentionCall& call,
                            int64_t r, HeadDiagnosticsPartial* all);

// Validates q, k, v and the options (shapes, dtypes, devices, finiteness when asked) and resolves
// every default. Errors are c10::Error naming the offending tensor or option.
AttentionCall make_call(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const AttentionOptions& options);

// Throws naming the first of the call's tensors (q, k, v, then the parameters) that holds a NaN or
// an infinity.
void check_call_finite(const AttentionCall& c);
// The check_finite part of make_call (also for a call whose tensors were replaced after
// validation: bfloat16 / float16 q, k, v validated on float32 stand-ins, then run as they are):
// eager on the CPU, the parameters now and q, k, v left pending (finite_check_pending); else all now.
void request_finite_check(AttentionCall& c);

}  // namespace quest::detail
