// Fused fp32 attention, FlashAttention-2 style, compiled once per SIMD target by Highway. This file
// holds the per-target entry points, the dispatch and the argument checks; the algorithm lives in
//   src/core/fused/tile_ops-inl.h   SIMD primitives (GEMM micro-kernel, dots, transposes, exp)
//   src/core/fused/tiles-inl.h      one key tile: masks, packing, dropout, per-thread buffers
//   src/core/fused/forward-inl.h    the forward (online softmax, or a fixed shift where bounded)
//   src/core/fused/backward-inl.h   the backward (logits recomputed bit for bit from the forward's)
// Non-finite inputs follow the contract in problem.h: a row with a NaN or +inf logit (or only
// -inf ones) is NaN, and the masked products the tiles skip are added back as 0 * operand sums.
#include "quest/core/fused.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/core/fused.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "src/core/fused/forward-inl.h"  // (forward before backward, as the code was measured)
#include "src/core/fused/backward-inl.h"

HWY_BEFORE_NAMESPACE();
namespace quest::fused {
namespace HWY_NAMESPACE {

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace quest::fused
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quest::fused {

HWY_EXPORT(ForwardF32);
HWY_EXPORT(BackwardF32);
HWY_EXPORT(ForwardBF16);
HWY_EXPORT(BackwardBF16);
HWY_EXPORT(TargetName);
HWY_EXPORT(Bf16DotRuns);

std::string why_not(const AttentionArgs<float>& a) {
  if (a.q.stride[3] != 1 || a.k.stride[3] != 1 || a.v.stride[3] != 1)
    return "q, k and v need unit stride along D";
  if (a.q_norm == Norm::layer || a.k_norm == Norm::layer)
    return "LayerNorm is not fused (the caller normalises before the kernel)";
  return "";
}

bool supports(const AttentionArgs<float>& a) { return why_not(a).empty(); }

static void check_supported(const AttentionArgs<float>& a, const char* entry) {
  check_args(a, entry);
  if (const std::string reason = why_not(a); !reason.empty())
    throw std::invalid_argument(std::string("quest::") + entry + ": " + reason);
}

static int resolve_threads(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

static void apply_env_simd_target();

std::vector<std::string> simd_targets() {
  apply_env_simd_target();
  std::vector<std::string> names;
  for (const int64_t t : hwy::SupportedAndGeneratedTargets()) names.push_back(hwy::TargetName(t));
  return names;
}

// set_simd_target without the environment's: what QUEST_SIMD_TARGET itself applies.
static void choose_simd_target(const std::string& name) {
  hwy::DisableTargets(0);  // every target this CPU has, to choose from
  if (name.empty()) return;
  std::string names;
  for (const int64_t t : hwy::SupportedAndGeneratedTargets()) {
    if (name == hwy::TargetName(t)) return hwy::DisableTargets(t - 1);  // the better ones (lower bits)
    names += std::string(" ") + hwy::TargetName(t);
  }
  throw std::invalid_argument("quest: \"" + name + "\" is not a SIMD target this CPU and build have; they are:" + names);
}

void set_simd_target(const std::string& name) {
  apply_env_simd_target();  // first, so that a later first kernel call does not override `name`
  choose_simd_target(name);
}

// QUEST_SIMD_TARGET, applied before the first call into the kernels; an unknown name is an error
// at every call (not a silent fall back to the best target).
static void apply_env_simd_target() {
  static const std::string error = [] {
    const char* name = std::getenv("QUEST_SIMD_TARGET");
    try {
      if (name && *name) choose_simd_target(name);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what()) + " (QUEST_SIMD_TARGET)";
    }
    return std::string();
  }();
  if (!error.empty()) throw std::invalid_argument(error);
}

bool forward(const AttentionArgs<float>& args, View4<float> out, RowStats stats,
             HeadDiagnosticsPartial* diagnostics, int threads) {
  apply_env_simd_target();
  check_supported(args, "fused::forward");
  if (!out.data || !stats.shift || !stats.log_sum)
    throw std::invalid_argument("quest::fused::forward: out and stats must not be null");
  return HWY_DYNAMIC_DISPATCH(ForwardF32)(args, out, stats, diagnostics, resolve_threads(threads));
}

void backward(const AttentionArgs<float>& args, View4<const float> out, View4<const float> dout,
              RowStats stats, const AttentionGrads<float>& grads, int threads) {
  apply_env_simd_target();
  check_supported(args, "fused::backward");
  if (!out.data || !dout.data || !stats.shift || !stats.log_sum || !grads.dq.data ||
      !grads.dk.data || !grads.dv.data)
    throw std::invalid_argument("quest::fused::backward: out, dout, stats and dq/dk/dv must not be null");
  HWY_DYNAMIC_DISPATCH(BackwardF32)(args, out, dout, stats, grads, resolve_threads(threads));
}

// The bfloat16 entry points check args as the float32 ones do, with the bf16 tensors standing in
// for args' (unread) q, k, v views.
static AttentionArgs<float> with_bf16_views(AttentionArgs<float> a, View4<const bfloat16> q,
                                            View4<const bfloat16> k, View4<const bfloat16> v) {
  const auto as_float = [](View4<const bfloat16> x) {
    View4<const float> f;
    f.data = reinterpret_cast<const float*>(x.data);  // for the null and stride checks only
    std::copy(x.stride, x.stride + 4, f.stride);
    return f;
  };
  a.q = as_float(q);
  a.k = as_float(k);
  a.v = as_float(v);
  return a;
}

bool forward(const AttentionArgs<float>& args, const Bf16Forward& io, RowStats stats,
             HeadDiagnosticsPartial* diagnostics, int threads) {
  apply_env_simd_target();
  check_supported(with_bf16_views(args, io.q, io.k, io.v), "fused::forward");
  if (!io.out.data || !stats.shift || !stats.log_sum)
    throw std::invalid_argument("quest::fused::forward: out and stats must not be null");
  return HWY_DYNAMIC_DISPATCH(ForwardBF16)(args, io, stats, diagnostics, resolve_threads(threads));
}

void backward(const AttentionArgs<float>& args, const Bf16Backward& io, RowStats stats,
              float* dhead_scale, int threads) {
  apply_env_simd_target();
  check_supported(with_bf16_views(args, io.q, io.k, io.v), "fused::backward");
  if (!io.out.data || !io.dout.data || !stats.shift || !stats.log_sum || !io.dq.data ||
      !(io.dk_sum.data ? io.dv_sum.data != nullptr : io.dk.data && io.dv.data))
    throw std::invalid_argument("quest::fused::backward: out, dout, stats and dq/dk/dv must not be null");
  for (const int64_t s : {io.out.stride[3], io.dout.stride[3], io.dq.stride[3],
                          io.dk_sum.data ? io.dk_sum.stride[3] : io.dk.stride[3],
                          io.dv_sum.data ? io.dv_sum.stride[3] : io.dv.stride[3]})
    if (s != 1) throw std::invalid_argument("quest::fused::backward: out, dout and the gradients need unit stride along D");
  HWY_DYNAMIC_DISPATCH(BackwardBF16)(args, io, stats, dhead_scale, resolve_threads(threads));
}

std::string simd_target() {
  apply_env_simd_target();
  return HWY_DYNAMIC_DISPATCH(TargetName)();
}
bool bf16_dot_runs() {
  apply_env_simd_target();
  return HWY_DYNAMIC_DISPATCH(Bf16DotRuns)();
}

}  // namespace quest::fused
#endif  // HWY_ONCE