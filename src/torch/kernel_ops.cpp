#include "kernel_ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstring>

#include "quest/core/fused.h"
#include "quest/core/reference.h"
#include "quest/torch/runtime.h"

namespace quest::detail {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<Tensor>;

// --- the scalars every kernel op takes, in schema order -------------------------------------------

#define QUEST_KERNEL_SCALARS_SCHEMA                                                              \
  "int q_norm, int k_norm, float scale, float l2_eps, float layernorm_eps, bool causal, "       \
  "int causal_alignment, float dropout, int seed"
#define QUEST_KERNEL_SCALARS_PARAMS                                                              \
  int64_t q_norm, int64_t k_norm, double scale, double l2_eps, double layernorm_eps, bool causal, \
      int64_t causal_alignment, double dropout, int64_t seed
#define QUEST_KERNEL_SCALARS_ARGS \
  q_norm, k_norm, scale, l2_eps, layernorm_eps, causal, causal_alignment, dropout, seed

// An AttentionScalars as op arguments (its dims come from the tensors).
struct KernelScalars {
  int64_t q_norm, k_norm;
  double scale, l2_eps, layernorm_eps;
  bool causal;
  int64_t causal_alignment;
  double dropout;
  int64_t seed;

  static KernelScalars of(const AttentionScalars& s) {
    return {static_cast<int64_t>(s.q_norm), static_cast<int64_t>(s.k_norm), s.scale, s.l2_eps,
            s.layernorm_eps, s.causal, static_cast<int64_t>(s.causal_alignment), s.dropout,
            static_cast<int64_t>(s.seed)};
  }
  static KernelScalars of(QUEST_KERNEL_SCALARS_PARAMS) { return {QUEST_KERNEL_SCALARS_ARGS}; }
};
#define QUEST_KERNEL_SCALARS_OF(s)                                                              \
  s.q_norm, s.k_norm, s.scale, s.l2_eps, s.layernorm_eps, s.causal, s.causal_alignment, s.dropout, \
      s.seed

// The call a CPU kernel runs: tensors as given, scalars checked (the ops are callable directly).
AttentionCall call_of(const Tensor& q, const Tensor& k, const Tensor& v, const KernelScalars& s) {
  for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}})
    TORCH_CHECK(t->dim() == 4, "quest kernel op: ", name, " must have rank 4, got ", t->sizes());
  TORCH_CHECK(k.size(1) == v.size(1) && q.size(1) % k.size(1) == 0,
              "quest kernel op: q's heads must be a multiple of k's and v's (grouped-query attention)");
  TORCH_CHECK(s.q_norm >= 0 && s.q_norm <= 2 && s.k_norm >= 0 && s.k_norm <= 2,
              "quest kernel op: q_norm and k_norm must be 0 (none), 1 (l2) or 2 (layer)");
  TORCH_CHECK(s.causal_alignment == 0 || s.causal_alignment == 1,
              "quest kernel op: causal_alignment must be 0 (top_left) or 1 (bottom_right)");
  AttentionCall c;
  c.q = q;
  c.k = k;
  c.v = v;
  c.dims = {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  c.kv_group = q.size(1) / k.size(1);
  c.q_norm = static_cast<Norm>(s.q_norm);
  c.k_norm = static_cast<Norm>(s.k_norm);
  c.scale = s.scale;
  c.l2_eps = s.l2_eps;
  c.layernorm_eps = s.layernorm_eps;
  c.causal = s.causal;
  c.causal_alignment = static_cast<CausalAlignment>(s.causal_alignment);
  c.dropout = s.dropout;
  c.seed = static_cast<uint64_t>(s.seed);
  return c;
}

Tensor value_or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }
OptTensor optional_if_defined(const Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); }
// Absent optional tensors and gradients travel as empty tensors (an op's result is a Tensor, and
// the autograd Functions take their inputs the same way); real ones are never empty.
Tensor placeholder(const Tensor& t, const Tensor& like) { return t.defined() ? t : torch::empty({0}, like.options()); }
Tensor placeholder_mask(const Tensor& t) { return t.defined() ? t : torch::empty({0}, torch::kBool); }
OptTensor optional_of(const Tensor& t) { return t.sym_numel() == 0 ? OptTensor() : OptTensor(t); }
Tensor undefined_if_empty(const Tensor& t) { return t.sym_numel() == 0 ? Tensor() : t; }

KernelBackend parse_kernel_backend(c10::string_view name) {
  if (name == "fused") return KernelBackend::fused;
  TORCH_CHECK(name == "reference", "quest kernel op: backend must be fused or reference, got '",
              std::string(name.data(), name.size()), "'");
  return KernelBackend::reference;
}
const char* name_of(KernelBackend b) { return b == KernelBackend::fused ? "fused" : "reference"; }

// Per-(b, h) diagnostics partials as bytes (B * H, sizeof partial); (0, ...) when not asked for.
Tensor diagnostics_buffer(bool need, c10::SymInt rows, const Tensor& like) {
  return at::empty_symint({need ? rows : c10::SymInt(0), c10::SymInt(sizeof(HeadDiagnosticsPartial))},
                          like.options().dtype(torch::kByte));
}
HeadDiagnosticsPartial* partials_of(const Tensor& buffer) {
  return buffer.numel() ? reinterpret_cast<HeadDiagnosticsPartial*>(buffer.data_ptr<uint8_t>()) : nullptr;
}
HeadDiagnostics reduce_buffer(const Tensor& buffer, int64_t heads) {
  TORCH_CHECK(!traced(buffer), "quest::attention: on the composite and sdpa backends diagnostics are computed "
              "in eager mode only, not under torch.compile or on fake tensors (compiled, the fused and reference "
              "backends return them)");
  std::vector<HeadDiagnosticsPartial> partials(buffer.size(0));
  std::memcpy(partials.data(), buffer.data_ptr<uint8_t>(), buffer.numel());
  return reduce_partials(partials, heads);
}

// quest::_reduce_diagnostics: the host reduction as an operator, so that a compiled graph runs it.
Tensor reduce_diagnostics_cpu(const Tensor& partials, int64_t heads) {
  return diagnostics_tensor(reduce_buffer(partials, heads));
}
Tensor reduce_diagnostics_meta(const Tensor& partials, int64_t heads) {
  return at::empty({7, heads}, partials.options().dtype(torch::kDouble));
}

// --- the kernels: forward writes out and the softmax row statistics backward needs ----------------

fused::RowStats row_stats(const Tensor& stats) {  // stats: (2, B, H, Nq) = shift, log_sum
  return {stats[0].data_ptr<float>(), stats[1].data_ptr<float>()};
}

// Row statistics per query-head group r (group_call): the fused kernel's (group, 2, B, Hk, Nq)
// float32 shift and log-sum, the reference's (group, B, Hk, Nq) logsumexp in float64 whatever
// the input dtype.
Tensor empty_stats(KernelBackend b, const Tensor& q, const c10::SymInt& group, const c10::SymInt& batch,
                   const c10::SymInt& kv_heads, const c10::SymInt& rows) {
  if (b == KernelBackend::fused)  // float32 also for bfloat16 storage
    return at::empty_symint({group, 2, batch, kv_heads, rows}, q.options().dtype(torch::kFloat));
  return at::empty_symint({group, batch, kv_heads, rows}, q.options().dtype(torch::kDouble));
}

// Query heads r, r + group, ... of a (B, Hq, ...) tensor: group r's output or gradient.
Tensor group_heads(const Tensor& t, int64_t group, int64_t r) {
  return group == 1 ? t : t.slice(1, r, c10::nullopt, group);
}

// A bfloat16 tensor as the kernels' view (quest::bfloat16 has torch's at::BFloat16 layout).
template <typename T>
View4<T> bf16_view(const Tensor& t) {
  static_assert(sizeof(bfloat16) == sizeof(at::BFloat16));
  View4<T> v;
  v.data = reinterpret_cast<T*>(t.data_ptr<at::BFloat16>());
  for (int d = 0; d < 4; ++d) v.stride[d] = t.stride(d);
  return v;
}
bool bf16_storage(const AttentionCall& c) { return c.q.scalar_type() == torch::kBFloat16; }
// The fused kernel's output: float32 also for bfloat16 storage (the caller rounds it; the backward
// reads it unrounded, see fused.h).
torch::TensorOptions out_options(KernelBackend b, const Tensor& q) {
  return b == KernelBackend::fused && q.scalar_type() == torch::kBFloat16 ? q.options().dtype(torch::kFloat)
                                                                          : q.options();
}

// Returns true where the kernel found every q, k and v element finite (the fused kernel tells,
// see fused::forward); false where one was not, or the kernel does not tell (the reference).
bool forward_into(KernelBackend b, const AttentionCall& c, const Tensor& out, const Tensor& stats,
                  HeadDiagnosticsPartial* diag) {
  if (b == KernelBackend::fused && bf16_storage(c)) {
    fused::Bf16Forward io{bf16_view<const bfloat16>(c.q), bf16_view<const bfloat16>(c.k),
                          bf16_view<const bfloat16>(c.v), view4<float>(out)};
    io.bf16_dot = bf16_products_enabled();
    return fused::forward(c.kernel_args<float>(), io, row_stats(stats), diag, at::get_num_threads());
  }
  if (b == KernelBackend::fused)
    return fused::forward(c.kernel_args<float>(), view4<float>(out), row_stats(stats), diag, at::get_num_threads());
  AT_DISPATCH_FLOATING_TYPES(c.q.scalar_type(), "quest_reference_forward", [&] {
    reference::forward<scalar_t>(c.kernel_args<scalar_t>(), view4<scalar_t>(out), stats.data_ptr<double>(), diag);
  });
  return false;
}

struct KernelGrads {
  Tensor dq, dk, dv, dhead_scale, dq_norm_weight, dq_norm_bias, dk_norm_weight, dk_norm_bias;
  // bfloat16 storage with query-head groups: float32 dK and dV each group adds into (fused.h).
  Tensor dk_sum, dv_sum;
};

// dq, dk, dv are views of q, k, v's shapes (any strides with unit stride along D); the fused
// kernel takes no LayerNorm (the caller normalises first), so only the reference has its affine
// gradients.
void backward_into(KernelBackend b, const AttentionCall& c, const Tensor& out, const Tensor& stats,
                   const Tensor& dout, const KernelGrads& g) {
  if (b == KernelBackend::fused && bf16_storage(c)) {
    const Tensor dout_rows = (dout.stride(3) == 1 ? dout : dout.contiguous()).to(torch::kFloat);
    fused::Bf16Backward io{bf16_view<const bfloat16>(c.q), bf16_view<const bfloat16>(c.k),
                           bf16_view<const bfloat16>(c.v), view4<const float>(out),
                           view4<const float>(dout_rows),   bf16_view<bfloat16>(g.dq),
                           g.dk_sum.defined() ? View4<bfloat16>{} : bf16_view<bfloat16>(g.dk),
                           g.dv_sum.defined() ? View4<bfloat16>{} : bf16_view<bfloat16>(g.dv),
                           g.dk_sum.defined() ? view4<float>(g.dk_sum) : View4<float>{},
                           g.dv_sum.defined() ? view4<float>(g.dv_sum) : View4<float>{}};
    io.bf16_dot = bf16_products_enabled();
    fused::backward(c.kernel_args<float>(), io, row_stats(stats), ptr_or_null<float>(g.dhead_scale),
                    at::get_num_threads());
    return;
  }
  if (b == KernelBackend::fused) {
    AttentionGrads<float> k;
    k.dq = view4<float>(g.dq);
    k.dk = view4<float>(g.dk);
    k.dv = view4<float>(g.dv);
    k.dhead_scale = ptr_or_null<float>(g.dhead_scale);
    const Tensor dout_rows = dout.stride(3) == 1 ? dout : dout.contiguous();
    fused::backward(c.kernel_args<float>(), view4<const float>(out), view4<const float>(dout_rows),
                    row_stats(stats), k, at::get_num_threads());
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(c.q.scalar_type(), "quest_reference_backward", [&] {
    AttentionGrads<scalar_t> k;
    k.dq = view4<scalar_t>(g.dq);
    k.dk = view4<scalar_t>(g.dk);
    k.dv = view4<scalar_t>(g.dv);
    k.dhead_scale = ptr_or_null<scalar_t>(g.dhead_scale);
    k.dq_ln_weight = ptr_or_null<scalar_t>(g.dq_norm_weight);
    k.dq_ln_bias = ptr_or_null<scalar_t>(g.dq_norm_bias);
    k.dk_ln_weight = ptr_or_null<scalar_t>(g.dk_norm_weight);
    k.dk_ln_bias = ptr_or_null<scalar_t>(g.dk_norm_bias);
    reference::backward<scalar_t>(c.kernel_args<scalar_t>(), view4<const scalar_t>(dout),
                                  stats.data_ptr<double>(), k);
  });
}

// --- quest::_kernel_forward / _kernel_backward: CPU and Meta kernels -------------------------------

#define QUEST_KERNEL_PARAMS_SCHEMA                                                               \
  "Tensor? head_scale, Tensor? q_norm_weight, Tensor? q_norm_bias, Tensor? k_norm_weight, "     \
  "Tensor? k_norm_bias, Tensor? key_padding_mask, str backend, " QUEST_KERNEL_SCALARS_SCHEMA
#define QUEST_KERNEL_PARAMS                                                                      \
  const OptTensor &head_scale, const OptTensor &q_norm_weight, const OptTensor &q_norm_bias,      \
      const OptTensor &k_norm_weight, const OptTensor &k_norm_bias,                               \
      const OptTensor &key_padding_mask, c10::string_view backend, QUEST_KERNEL_SCALARS_PARAMS
#define QUEST_KERNEL_ARGS                                                                        \
  head_scale, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, key_padding_mask, backend, \
      QUEST_KERNEL_SCALARS_ARGS

AttentionCall kernel_call(const Tensor& q, const Tensor& k, const Tensor& v, QUEST_KERNEL_PARAMS) {
  AttentionCall c = call_of(q, k, v, KernelScalars::of(QUEST_KERNEL_SCALARS_ARGS));
  c.head_scale = value_or_undefined(head_scale);
  c.q_norm_weight = value_or_undefined(q_norm_weight);
  c.q_norm_bias = value_or_undefined(q_norm_bias);
  c.k_norm_weight = value_or_undefined(k_norm_weight);
  c.k_norm_bias = value_or_undefined(k_norm_bias);
  c.key_padding_mask = value_or_undefined(key_padding_mask);
  return c;
}

using ForwardResult = std::tuple<Tensor, Tensor, Tensor>;  // out, stats, diagnostics

// check_finite: refuse a NaN or infinity in q, k, v or the parameters, as make_call would have
// (read again only where the kernel saw one, see forward_into).
ForwardResult kernel_forward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, QUEST_KERNEL_PARAMS,
                                 bool need_diagnostics, bool check_finite) {
  const KernelBackend b = parse_kernel_backend(backend);
  const AttentionCall c = kernel_call(q, k, v, QUEST_KERNEL_ARGS);
  const AttentionDims& d = c.dims;
  const int64_t group = c.kv_group;
  Tensor out = torch::empty({d.batch, d.heads, d.q_len, d.v_dim}, out_options(b, q));
  Tensor stats = empty_stats(b, q, group, d.batch, d.heads / group, d.q_len);
  Tensor diag = diagnostics_buffer(need_diagnostics, d.batch * d.heads, q);
  std::vector<HeadDiagnosticsPartial> partials(need_diagnostics && group > 1 ? d.batch * d.heads / group : 0);
  bool finite = true;
  for (int64_t r = 0; r < group; ++r) {
    finite = forward_into(b, group_call(c, r), group_heads(out, group, r), stats[r],
                          group == 1 ? partials_of(diag) : partials.empty() ? nullptr : partials.data()) &&
             finite;
    if (!partials.empty()) scatter_group_partials(partials, c, r, partials_of(diag));
  }
  if (check_finite && !finite) check_call_finite(c);
  return {out, stats, diag};
}

ForwardResult kernel_forward_meta(const Tensor& q, const Tensor& k, const Tensor& v, QUEST_KERNEL_PARAMS,
                                  bool need_diagnostics, bool) {
  const KernelBackend b = parse_kernel_backend(backend);
  const auto &batch = q.sym_size(0), &heads = q.sym_size(1), &rows = q.sym_size(2), &kv_heads = k.sym_size(1);
  return {at::empty_symint({batch, heads, rows, v.sym_size(3)}, out_options(b, q)),
          empty_stats(b, q, heads / kv_heads, batch, kv_heads, rows), diagnostics_buffer(need_diagnostics, batch * heads, q)};
}

// Gradients of q, k, v, then head_scale and the LayerNorm affine (empty where absent).
using BackwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// The gradient buffers, allocated alike by both kernels. The parameters' are zero-filled: a kernel
// writes a parameter's gradient only where the parameter takes part (a LayerNorm affine only
// under Norm::layer, head_scale only where given).
KernelGrads empty_grads(KernelBackend b, const Tensor& q, const Tensor& k, const Tensor& v, QUEST_KERNEL_PARAMS) {
  auto param_grad = [&](const OptTensor& t, bool computed) {
    return t.has_value() && computed ? torch::zeros_like(*t) : torch::empty({0}, q.options());
  };
  const bool affine = b == KernelBackend::reference;
  return {at::empty_symint(q.sym_sizes(), q.options()), at::empty_symint(k.sym_sizes(), k.options()),
          at::empty_symint(v.sym_sizes(), v.options()), param_grad(head_scale, true),
          param_grad(q_norm_weight, affine), param_grad(q_norm_bias, affine),
          param_grad(k_norm_weight, affine), param_grad(k_norm_bias, affine), {}, {}};
}

BackwardResult tuple_of(const KernelGrads& g) {
  return {g.dq, g.dk, g.dv, g.dhead_scale, g.dq_norm_weight, g.dq_norm_bias, g.dk_norm_weight, g.dk_norm_bias};
}

BackwardResult kernel_backward_cpu(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& out, const Tensor& stats, QUEST_KERNEL_PARAMS) {
  const KernelBackend b = parse_kernel_backend(backend);
  const AttentionCall c = kernel_call(q, k, v, QUEST_KERNEL_ARGS);
  const int64_t group = c.kv_group;
  KernelGrads g = empty_grads(b, q, k, v, QUEST_KERNEL_ARGS);
  constexpr Tensor KernelGrads::*kShared[] = {&KernelGrads::dk, &KernelGrads::dv, &KernelGrads::dq_norm_weight,
                                               &KernelGrads::dq_norm_bias, &KernelGrads::dk_norm_weight,
                                               &KernelGrads::dk_norm_bias};
  // Grouped-query: each group r writes dq and head_scale's gradient of its own heads; dK, dV and
  // the LayerNorm affine are summed over the groups (flash-attention sums an expanded dK so).
  // Group 0 writes into the results; later groups into fresh buffers, then added. In bfloat16
  // storage the fused kernel adds every group's dK, dV into float32 sums instead, rounded once at
  // the end. The kernels take null where a parameter is absent.
  const bool float_sums = group > 1 && q.scalar_type() == torch::kBFloat16;
  const Tensor dk_sum = float_sums ? torch::zeros(k.sizes(), k.options().dtype(torch::kFloat)) : Tensor();
  const Tensor dv_sum = float_sums ? torch::zeros(v.sizes(), v.options().dtype(torch::kFloat)) : Tensor();
  for (int64_t r = 0; r < group; ++r) {
    KernelGrads into;
    into.dq = group_heads(g.dq, group, r);
    for (auto f : kShared)
      if (!(float_sums && (f == &KernelGrads::dk || f == &KernelGrads::dv)))  // else into the sums
        into.*f = undefined_if_empty(r == 0 ? g.*f : torch::zeros_like(g.*f));
    into.dk_sum = dk_sum;
    into.dv_sum = dv_sum;
    if (head_scale.has_value())  // group r's heads only: a buffer of its own beside group 1's
      into.dhead_scale = group == 1 ? g.dhead_scale : torch::zeros({k.size(1)}, head_scale->options());
    backward_into(b, group_call(c, r), group_heads(out, group, r), stats[r], group_heads(dout, group, r), into);
    if (r > 0)
      for (auto f : kShared)
        if ((into.*f).defined()) (g.*f).add_(into.*f);
    if (group > 1 && head_scale.has_value()) g.dhead_scale.slice(0, r, c10::nullopt, group).copy_(into.dhead_scale);
  }
  if (float_sums) {
    g.dk.copy_(dk_sum);
    g.dv.copy_(dv_sum);
  }
  return tuple_of(g);
}

BackwardResult kernel_backward_meta(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& out, const Tensor& stats, QUEST_KERNEL_PARAMS) {
  return tuple_of(empty_grads(parse_kernel_backend(backend), q, k, v, QUEST_KERNEL_ARGS));
}

// --- packed self-attention: quest::_packed_kernel_forward / _backward (fused only) ---------------

// The q (0), k (1) or v (2) heads of a packed (B, N, 3, H, D) tensor as a (B, H, N, D) view.
Tensor packed_heads(const Tensor& qkv5, int64_t which) { return qkv5.select(2, which).permute({0, 2, 1, 3}); }

#define QUEST_PACKED_PARAMS_SCHEMA "Tensor? head_scale, Tensor? key_padding_mask, " QUEST_KERNEL_SCALARS_SCHEMA
#define QUEST_PACKED_PARAMS \
  const OptTensor &head_scale, const OptTensor &key_padding_mask, QUEST_KERNEL_SCALARS_PARAMS
#define QUEST_PACKED_ARGS head_scale, key_padding_mask, QUEST_KERNEL_SCALARS_ARGS

AttentionCall packed_call(const Tensor& qkv5, QUEST_PACKED_PARAMS) {
  TORCH_CHECK(qkv5.dim() == 5 && qkv5.size(2) == 3, "quest packed kernel op: qkv must be (B, N, 3, H, D), got ",
              qkv5.sizes());
  AttentionCall c = call_of(packed_heads(qkv5, 0), packed_heads(qkv5, 1), packed_heads(qkv5, 2),
                            KernelScalars::of(QUEST_KERNEL_SCALARS_ARGS));
  c.head_scale = value_or_undefined(head_scale);
  c.key_padding_mask = value_or_undefined(key_padding_mask);
  return c;
}

ForwardResult packed_forward_cpu(const Tensor& qkv5, QUEST_PACKED_PARAMS, bool need_diagnostics, bool check_finite) {
  const AttentionCall c = packed_call(qkv5, QUEST_PACKED_ARGS);
  const AttentionDims& d = c.dims;
  Tensor out = torch::empty({d.batch, d.q_len, d.heads, d.v_dim}, out_options(KernelBackend::fused, qkv5));
  Tensor stats = empty_stats(KernelBackend::fused, qkv5, 1, d.batch, d.heads, d.q_len);
  Tensor diag = diagnostics_buffer(need_diagnostics, d.batch * d.heads, qkv5);
  if (!forward_into(KernelBackend::fused, c, out.transpose(1, 2), stats[0], partials_of(diag)) && check_finite)
    check_call_finite(c);
  return {out, stats, diag};
}

ForwardResult packed_forward_meta(const Tensor& qkv5, QUEST_PACKED_PARAMS, bool need_diagnostics, bool) {
  const auto &batch = qkv5.sym_size(0), &rows = qkv5.sym_size(1), &heads = qkv5.sym_size(3);
  return {at::empty_symint({batch, rows, heads, qkv5.sym_size(4)}, out_options(KernelBackend::fused, qkv5)),
          empty_stats(KernelBackend::fused, qkv5, 1, batch, heads, rows), diagnostics_buffer(need_diagnostics, batch * heads, qkv5)};
}

using PackedBackwardResult = std::tuple<Tensor, Tensor>;  // dqkv, dhead_scale (empty if absent)

PackedBackwardResult packed_backward_meta(const Tensor& dout, const Tensor& qkv5, const Tensor& out,
                                          const Tensor& stats, QUEST_PACKED_PARAMS) {
  return {at::empty_symint(qkv5.sym_sizes(), qkv5.options()),
          head_scale.has_value() ? torch::zeros_like(*head_scale) : torch::empty({0}, qkv5.options())};
}

// dq, dk and dv are written straight into one gradient of the projection's shape.
PackedBackwardResult packed_backward_cpu(const Tensor& dout, const Tensor& qkv5, const Tensor& out,
                                         const Tensor& stats, QUEST_PACKED_PARAMS) {
  const AttentionCall c = packed_call(qkv5, QUEST_PACKED_ARGS);
  auto [dqkv, dhead_scale] = packed_backward_meta(dout, qkv5, out, stats, QUEST_PACKED_ARGS);
  KernelGrads into;  // no LayerNorm affine: the packed path runs without LayerNorm
  into.dq = packed_heads(dqkv, 0);
  into.dk = packed_heads(dqkv, 1);
  into.dv = packed_heads(dqkv, 2);
  into.dhead_scale = undefined_if_empty(dhead_scale);
  backward_into(KernelBackend::fused, c, out.transpose(1, 2), stats[0], dout.transpose(1, 2), into);
  return {dqkv, dhead_scale};
}

// --- autograd kernels ------------------------------------------------------------------------------

// The kernels' backward is not itself recorded by autograd: with create_graph (grad mode on in
// backward) a second derivative would silently miss this term, so refuse instead.
void require_once_differentiable() {
  TORCH_CHECK(!torch::GradMode::is_enabled(),
              "quest::attention: the fused and reference backends are once-differentiable; for "
              "double backward (create_graph=True, gradgradcheck) use the composite backend");
}

template <typename Fn>
c10::TypedOperatorHandle<Fn> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}
const auto& forward_op() {
  static const auto op = op_handle<decltype(kernel_forward_cpu)>("quest::_kernel_forward");
  return op;
}
const auto& backward_op() {
  static const auto op = op_handle<decltype(kernel_backward_cpu)>("quest::_kernel_backward");
  return op;
}
const auto& packed_forward_op() {
  static const auto op = op_handle<decltype(packed_forward_cpu)>("quest::_packed_kernel_forward");
  return op;
}
const auto& packed_backward_op() {
  static const auto op = op_handle<decltype(packed_backward_cpu)>("quest::_packed_kernel_backward");
  return op;
}

// The scalars of a call in the autograd context, and back.
void save_scalars(AutogradContext* ctx, const KernelScalars& s) {
  ctx->saved_data["ints"] = std::vector<int64_t>{s.q_norm, s.k_norm, s.causal, s.causal_alignment, s.seed};
  ctx->saved_data["floats"] = std::vector<double>{s.scale, s.l2_eps, s.layernorm_eps, s.dropout};
}
KernelScalars load_scalars(AutogradContext* ctx) {
  const auto i = ctx->saved_data["ints"].toIntVector();
  const auto f = ctx->saved_data["floats"].toDoubleVector();
  return {i[0], i[1], f[0], f[1], f[2], i[2] != 0, i[3], f[3], i[4]};
}

class KernelFunction : public torch::autograd::Function<KernelFunction> {
 public:
  // q, k, v, then head_scale, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias and
  // key_padding_mask as placeholders.
  static variable_list forward(AutogradContext* ctx, Tensor q, Tensor k, Tensor v, Tensor head_scale,
                               Tensor q_norm_weight, Tensor q_norm_bias, Tensor k_norm_weight,
                               Tensor k_norm_bias, Tensor key_padding_mask, std::string backend,
                               KernelScalars s, bool need_diagnostics, bool check_finite) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, stats, diag] = forward_op().call(
        q, k, v, optional_of(head_scale), optional_of(q_norm_weight), optional_of(q_norm_bias),
        optional_of(k_norm_weight), optional_of(k_norm_bias), optional_of(key_padding_mask), backend,
        QUEST_KERNEL_SCALARS_OF(s), need_diagnostics, check_finite);
    ctx->save_for_backward({q, k, v, head_scale, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias,
                            key_padding_mask, out, stats});
    ctx->saved_data["backend"] = backend;
    save_scalars(ctx, s);
    ctx->mark_non_differentiable({stats, diag});
    return {out, stats, diag};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    require_once_differentiable();
    const variable_list t = ctx->get_saved_variables();
    const Tensor dout = grad_outputs[0].defined() ? grad_outputs[0] : torch::zeros_like(t[9]);
    const KernelScalars s = load_scalars(ctx);
    auto [dq, dk, dv, dhs, dqw, dqb, dkw, dkb] = backward_op().call(
        dout, t[0], t[1], t[2], t[9], t[10], optional_of(t[3]), optional_of(t[4]), optional_of(t[5]),
        optional_of(t[6]), optional_of(t[7]), optional_of(t[8]), ctx->saved_data["backend"].toStringRef(),
        QUEST_KERNEL_SCALARS_OF(s));
    return {dq, dk, dv, undefined_if_empty(dhs), undefined_if_empty(dqw), undefined_if_empty(dqb),
            undefined_if_empty(dkw), undefined_if_empty(dkb), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

ForwardResult kernel_forward_autograd(const Tensor& q, const Tensor& k, const Tensor& v, QUEST_KERNEL_PARAMS,
                                      bool need_diagnostics, bool check_finite) {
  auto r = KernelFunction::apply(
      q, k, v, placeholder(value_or_undefined(head_scale), q), placeholder(value_or_undefined(q_norm_weight), q),
      placeholder(value_or_undefined(q_norm_bias), q), placeholder(value_or_undefined(k_norm_weight), q),
      placeholder(value_or_undefined(k_norm_bias), q), placeholder_mask(value_or_undefined(key_padding_mask)),
      std::string(backend.data(), backend.size()), KernelScalars::of(QUEST_KERNEL_SCALARS_ARGS), need_diagnostics, check_finite);
  return {r[0], r[1], r[2]};
}

class PackedKernelFunction : public torch::autograd::Function<PackedKernelFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, Tensor qkv5, Tensor head_scale, Tensor key_padding_mask,
                               KernelScalars s, bool need_diagnostics, bool check_finite) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, stats, diag] = packed_forward_op().call(qkv5, optional_of(head_scale), optional_of(key_padding_mask),
                                                       QUEST_KERNEL_SCALARS_OF(s), need_diagnostics, check_finite);
    ctx->save_for_backward({qkv5, head_scale, key_padding_mask, out, stats});
    save_scalars(ctx, s);
    ctx->mark_non_differentiable({stats, diag});
    return {out, stats, diag};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    require_once_differentiable();
    const variable_list t = ctx->get_saved_variables();
    const Tensor dout = grad_outputs[0].defined() ? grad_outputs[0] : torch::zeros_like(t[3]);
    const KernelScalars s = load_scalars(ctx);
    auto [dqkv, dhs] = packed_backward_op().call(dout, t[0], t[3], t[4], optional_of(t[1]), optional_of(t[2]),
                                                 QUEST_KERNEL_SCALARS_OF(s));
    return {dqkv, undefined_if_empty(dhs), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

ForwardResult packed_forward_autograd(const Tensor& qkv5, QUEST_PACKED_PARAMS, bool need_diagnostics, bool check_finite) {
  auto r = PackedKernelFunction::apply(qkv5, placeholder(value_or_undefined(head_scale), qkv5),
                                       placeholder_mask(value_or_undefined(key_padding_mask)),
                                       KernelScalars::of(QUEST_KERNEL_SCALARS_ARGS), need_diagnostics, check_finite);
  return {r[0], r[1], r[2]};
}

}  // namespace

// Row log-sum-exp from a kernel's saved statistics: fused (group, 2, B, Hk, Nq) float32 shift and
// log-sum, reference (group, B, Hk, Nq) float64; query head h = hk * group + r.
static Tensor logsumexp_from_stats(const Tensor& stats, KernelBackend backend) {
  torch::NoGradGuard no_grad;
  const Tensor lse = backend == KernelBackend::fused ? stats.select(1, 0) + stats.select(1, 1) : stats;
  return lse.permute({1, 2, 0, 3}).flatten(1, 2).to(torch::kFloat);
}

Tensor diagnostics_tensor(const HeadDiagnostics& d) {
  const std::vector<double>* rows[] = {&d.q_norm_mean, &d.q_norm_max,    &d.k_norm_mean, &d.k_norm_max,
                                       &d.logit_abs_max, &d.entropy_mean, &d.logit_max};
  constexpr int64_t n = std::size(rows);
  const int64_t heads = static_cast<int64_t>(d.q_norm_mean.size());
  Tensor t = torch::empty({n, heads}, torch::kDouble);
  auto a = t.accessor<double, 2>();
  for (int64_t r = 0; r < n; ++r)
    for (int64_t h = 0; h < heads; ++h) a[r][h] = (*rows[r])[h];
  return t;
}

namespace {
const auto& reduce_diagnostics_op() {
  static const auto op = op_handle<decltype(reduce_diagnostics_cpu)>("quest::_reduce_diagnostics");
  return op;
}

// Eager: reduced here into *host; traced: the operator's (7, H) in *traced.
void reduce_into(const Tensor& diag, int64_t heads, HeadDiagnostics* host, Tensor* traced_rows) {
  if (!host) return;
  if (traced(diag) && traced_rows) *traced_rows = reduce_diagnostics_op().call(diag, heads);
  else *host = reduce_buffer(diag, heads);
}
}  // namespace

Tensor run_kernel(const AttentionCall& c, KernelBackend backend, HeadDiagnostics* diagnostics, Tensor* logsumexp,
                  Tensor* traced_diagnostics) {
  auto [out, stats, diag] = forward_op().call(
      c.q, c.k, c.v, optional_if_defined(c.head_scale), optional_if_defined(c.q_norm_weight),
      optional_if_defined(c.q_norm_bias), optional_if_defined(c.k_norm_weight), optional_if_defined(c.k_norm_bias),
      optional_if_defined(c.key_padding_mask), name_of(backend),
      QUEST_KERNEL_SCALARS_OF(KernelScalars::of(c)), diagnostics != nullptr,
      c.finite_check_pending && backend == KernelBackend::fused);
  reduce_into(diag, c.dims.heads, diagnostics, traced_diagnostics);
  if (logsumexp) *logsumexp = logsumexp_from_stats(stats, backend);
  return out;
}

Tensor run_packed_kernel(const AttentionCall& c, const Tensor& qkv5, HeadDiagnostics* diagnostics, Tensor* logsumexp,
                         Tensor* traced_diagnostics) {
  auto [out, stats, diag] = packed_forward_op().call(qkv5, optional_if_defined(c.head_scale),
                                                     optional_if_defined(c.key_padding_mask),
                                                     QUEST_KERNEL_SCALARS_OF(KernelScalars::of(c)),
                                                     diagnostics != nullptr, c.finite_check_pending);
  reduce_into(diag, c.dims.heads, diagnostics, traced_diagnostics);
  if (logsumexp) *logsumexp = logsumexp_from_stats(stats, KernelBackend::fused);
  return out;
}

}  // namespace quest::detail

// In quest_torch itself (not libquest_ops.so): every kernel call, from C++ or Python, goes
// through these ops. attention.cpp calls run_kernel, so this object file (and its static
// registrations) is always linked.
TORCH_LIBRARY_FRAGMENT(quest, m) {
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  m.def("_kernel_forward(Tensor q, Tensor k, Tensor v, " QUEST_KERNEL_PARAMS_SCHEMA
        ", bool need_diagnostics, bool check_finite=False) -> (Tensor, Tensor, Tensor)", tags);
  m.def("_kernel_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor stats, "
        QUEST_KERNEL_PARAMS_SCHEMA ") -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", tags);
  m.def("_packed_kernel_forward(Tensor qkv, " QUEST_PACKED_PARAMS_SCHEMA
        ", bool need_diagnostics, bool check_finite=False) -> (Tensor, Tensor, Tensor)", tags);
  m.def("_packed_kernel_backward(Tensor dout, Tensor qkv, Tensor out, Tensor stats, " QUEST_PACKED_PARAMS_SCHEMA
        ") -> (Tensor, Tensor)", tags);
  m.def("_reduce_diagnostics(Tensor partials, int heads) -> Tensor", tags);
}

TORCH_LIBRARY_IMPL(quest, CPU, m) {
  m.impl("_kernel_forward", &quest::detail::kernel_forward_cpu);
  m.impl("_kernel_backward", &quest::detail::kernel_backward_cpu);
  m.impl("_packed_kernel_forward", &quest::detail::packed_forward_cpu);
  m.impl("_packed_kernel_backward", &quest::detail::packed_backward_cpu);
  m.impl("_reduce_diagnostics", &quest::detail::reduce_diagnostics_cpu);
}

TORCH_LIBRARY_IMPL(quest, Meta, m) {
  m.impl("_kernel_forward", &quest::detail::kernel_forward_meta);
  m.impl("_kernel_backward", &quest::detail::kernel_backward_meta);
  m.impl("_packed_kernel_forward", &quest::detail::packed_forward_meta);
  m.impl("_packed_kernel_backward", &quest::detail::packed_backward_meta);
  m.impl("_reduce_diagnostics", &quest::detail::reduce_diagnostics_meta);
}

TORCH_LIBRARY_IMPL(quest, Autograd, m) {
  m.impl("_kernel_forward", &quest::detail::kernel_forward_autograd);
  m.impl("_packed_kernel_forward", &quest::detail::packed_forward_autograd);
}
