// The LibTorch functional API: validate once (make_call), select a backend from an ordered list of
// eligibility checks, run it. Kernel backends (fused, reference) share one autograd Function that
// saves a typed context; the composite backend is torch ops under torch's autograd.
#include "quest/torch/attention.h"
#include "quest/torch/runtime.h"

#include <cstdlib>

#include "call.h"
#include "quest/core/fused.h"
#include "quest/core/reference.h"

namespace quest {

std::string to_string(Backend backend) {
  switch (backend) {
    case Backend::automatic: return "automatic";
    case Backend::reference: return "reference";
    case Backend::composite: return "composite";
    case Backend::fused: return "fused";
  }
  return "?";
}

std::optional<Backend> parse_backend(std::string_view name) {
  if (name == "auto") return Backend::automatic;
  for (Backend b : {Backend::automatic, Backend::reference, Backend::composite, Backend::fused})
    if (name == to_string(b)) return b;
  return std::nullopt;
}

std::optional<Backend> parse_backend_override(const char* value) {
  if (!value || !*value) return std::nullopt;
  const auto forced = parse_backend(value);
  TORCH_CHECK(forced.has_value(), "quest::attention: QUEST_ATTENTION_BACKEND='", value,
              "' is not one of automatic, reference, composite, fused");
  if (*forced == Backend::automatic) return std::nullopt;
  return forced;
}

std::optional<Backend> backend_override() {
  static const std::optional<Backend> forced =
      parse_backend_override(std::getenv("QUEST_ATTENTION_BACKEND"));
  return forced;
}

namespace {

using detail::AttentionCall;
using detail::ptr_or_null;
using detail::view4;
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// --- kernel backends: {forward, backward} over an AttentionCall -----------------------------------

struct KernelGrads {
  Tensor dq, dk, dv, dhead_scale, dq_norm_weight, dq_norm_bias, dk_norm_weight, dk_norm_bias;
};

struct KernelOps {
  // Output (B, H, Nq, Dv) and the per-row softmax statistics backward needs.
  std::pair<Tensor, Tensor> (*forward)(const AttentionCall&, HeadDiagnosticsPartial*);
  KernelGrads (*backward)(const AttentionCall&, const Tensor& out, const Tensor& stats,
                          const Tensor& dout);
};

Tensor zeros_if_defined(const Tensor& t) { return t.defined() ? torch::zeros_like(t) : Tensor(); }

// The reference keeps its logsumexp in double whatever the input dtype.
std::pair<Tensor, Tensor> reference_forward(const AttentionCall& c, HeadDiagnosticsPartial* diag) {
  const AttentionDims& d = c.dims;
  Tensor out = torch::empty({d.batch, d.heads, d.q_len, d.v_dim}, c.q.options());
  Tensor lse = torch::empty({d.batch, d.heads, d.q_len}, c.q.options().dtype(torch::kDouble));
  AT_DISPATCH_FLOATING_TYPES(c.q.scalar_type(), "quest_reference_forward", [&] {
    reference::forward<scalar_t>(c.kernel_args<scalar_t>(), view4<scalar_t>(out),
                                 lse.data_ptr<double>(), diag);
  });
  return {out, lse};
}

KernelGrads reference_backward(const AttentionCall& c, const Tensor&, const Tensor& lse,
                               const Tensor& dout) {
  KernelGrads g{torch::empty(c.q.sizes(), c.q.options()), torch::empty(c.k.sizes(), c.k.options()),
                torch::empty(c.v.sizes(), c.v.options()), zeros_if_defined(c.head_scale),
                zeros_if_defined(c.q_norm_weight), zeros_if_defined(c.q_norm_bias),
                zeros_if_defined(c.k_norm_weight), zeros_if_defined(c.k_norm_bias)};
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
                                  lse.data_ptr<double>(), k);
  });
  return g;
}

fused::RowStats row_stats(const Tensor& stats) {  // stats: (2, B, H, Nq) = shift, log_sum
  return {stats[0].data_ptr<float>(), stats[1].data_ptr<float>()};
}

// The fused kernel writes into views: (B, H, Nq, Dv) for the output and q, k, v's shapes for the
// gradients, any strides with unit stride along D (the packed path writes (B, N, ...) layouts).
Tensor fused_forward_into(const AttentionCall& c, const Tensor& out, HeadDiagnosticsPartial* diag) {
  const AttentionDims& d = c.dims;
  Tensor stats = torch::empty({2, d.batch, d.heads, d.q_len}, c.q.options());
  fused::forward(c.kernel_args<float>(), view4<float>(out), row_stats(stats), diag,
                 at::get_num_threads());
  return stats;
}

std::pair<Tensor, Tensor> fused_forward(const AttentionCall& c, HeadDiagnosticsPartial* diag) {
  const AttentionDims& d = c.dims;
  Tensor out = torch::empty({d.batch, d.heads, d.q_len, d.v_dim}, c.q.options());
  return {out, fused_forward_into(c, out, diag)};
}

// Returns the head_scale gradient (undefined without one); LayerNorm never reaches the fused
// kernel: its affine gradients come from torch.
Tensor fused_backward_into(const AttentionCall& c, const Tensor& out, const Tensor& stats,
                           const Tensor& dout, const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  Tensor dhead_scale = zeros_if_defined(c.head_scale);
  AttentionGrads<float> k;
  k.dq = view4<float>(dq);
  k.dk = view4<float>(dk);
  k.dv = view4<float>(dv);
  k.dhead_scale = ptr_or_null<float>(dhead_scale);
  const Tensor dout_rows = dout.stride(3) == 1 ? dout : dout.contiguous();
  fused::backward(c.kernel_args<float>(), view4<const float>(out), view4<const float>(dout_rows),
                  row_stats(stats), k, at::get_num_threads());
  return dhead_scale;
}

KernelGrads fused_backward(const AttentionCall& c, const Tensor& out, const Tensor& stats,
                           const Tensor& dout) {
  KernelGrads g;
  g.dq = torch::empty(c.q.sizes(), c.q.options());
  g.dk = torch::empty(c.k.sizes(), c.k.options());
  g.dv = torch::empty(c.v.sizes(), c.v.options());
  g.dhead_scale = fused_backward_into(c, out, stats, dout, g.dq, g.dk, g.dv);
  return g;
}

constexpr KernelOps kReferenceOps{reference_forward, reference_backward};
constexpr KernelOps kFusedOps{fused_forward, fused_backward};

// --- what both autograd Functions share ---------------------------------------------------------

// The kernels' backward is not itself recorded by autograd: with create_graph (grad mode on in
// backward) a second derivative would silently miss this term, so refuse instead.
void require_once_differentiable() {
  TORCH_CHECK(!torch::GradMode::is_enabled(),
              "quest::attention: the fused and reference backends are once-differentiable; for "
              "double backward (create_graph=True, gradgradcheck) use the composite backend");
}

// Per-(b, h) diagnostics partials for a kernel to fill (none when not asked for), and their
// reduction per head into *diagnostics.
struct DiagnosticsSink {
  HeadDiagnostics* diagnostics;
  std::vector<HeadDiagnosticsPartial> partials;
  DiagnosticsSink(HeadDiagnostics* out, const AttentionDims& d)
      : diagnostics(out), partials(out ? d.batch * d.heads : 0) {}
  HeadDiagnosticsPartial* data() { return diagnostics ? partials.data() : nullptr; }
  void reduce(int64_t heads) {
    if (diagnostics) *diagnostics = reduce_partials(partials, heads);
  }
};

// --- the typed autograd context ---------------------------------------------------------------

// The scalars of a call (its tensors cleared) and the kernel that ran, kept in the context as a
// capsule; tensors travel through save_for_backward in AttentionCall::tensor_fields() order.
struct SavedScalars : torch::CustomClassHolder {
  AttentionCall call;
  const KernelOps* ops = nullptr;
};

struct SavedState {
  AttentionCall call;
  const KernelOps* ops;
  Tensor out, stats;
};

void save_scalars(AutogradContext* ctx, const AttentionCall& call, const KernelOps* ops) {
  auto scalars = c10::make_intrusive<SavedScalars>();
  scalars->call = call;
  for (auto field : AttentionCall::tensor_fields()) scalars->call.*field = Tensor();
  scalars->ops = ops;
  ctx->saved_data["call"] = c10::IValue::make_capsule(std::move(scalars));
}

c10::intrusive_ptr<SavedScalars> load_scalars(AutogradContext* ctx) {
  return c10::static_intrusive_pointer_cast<SavedScalars>(ctx->saved_data["call"].toCapsule());
}

void save_state(AutogradContext* ctx, const AttentionCall& call, const KernelOps* ops,
                const Tensor& out, const Tensor& stats) {
  std::vector<Tensor> tensors;
  for (auto field : AttentionCall::tensor_fields()) tensors.push_back(call.*field);
  tensors.push_back(out);
  tensors.push_back(stats);
  ctx->save_for_backward(tensors);
  save_scalars(ctx, call, ops);
}

SavedState load_state(AutogradContext* ctx) {
  const auto scalars = load_scalars(ctx);
  SavedState s{scalars->call, scalars->ops, {}, {}};
  const variable_list saved = ctx->get_saved_variables();
  size_t i = 0;
  for (auto field : AttentionCall::tensor_fields()) s.call.*field = saved[i++];
  s.out = saved[i++];
  s.stats = saved[i++];
  return s;
}

// LibTorch 1.13's custom Functions reject undefined inputs: absent optional tensors travel as
// empty placeholders and are turned back into undefined ones inside.
Tensor placeholder(const Tensor& t, const Tensor& like) {
  return t.defined() ? t : torch::empty({0}, like.options());
}
Tensor undefined_if_placeholder(const Tensor& t) { return t.numel() == 0 ? Tensor() : t; }

class KernelFunction : public torch::autograd::Function<KernelFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, Tensor q, Tensor k, Tensor v,
                               Tensor head_scale, Tensor q_norm_weight, Tensor q_norm_bias,
                               Tensor k_norm_weight, Tensor k_norm_bias, Tensor key_padding_mask,
                               const AttentionCall& scalars, const KernelOps* ops,
                               HeadDiagnostics* diagnostics) {
    AttentionCall call = scalars;
    const Tensor inputs[] = {q, k, v, head_scale, q_norm_weight, q_norm_bias,
                             k_norm_weight, k_norm_bias, key_padding_mask};
    size_t i = 0;
    for (auto field : AttentionCall::tensor_fields())
      call.*field = i < 3 ? inputs[i++] : undefined_if_placeholder(inputs[i++]);
    DiagnosticsSink sink(diagnostics, call.dims);
    auto [out, stats] = ops->forward(call, sink.data());
    sink.reduce(call.dims.heads);
    save_state(ctx, call, ops, out, stats);
    ctx->mark_non_differentiable({stats});
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    require_once_differentiable();
    const SavedState s = load_state(ctx);
    const Tensor dout = grad_outputs[0].defined() ? grad_outputs[0] : torch::zeros_like(s.out);
    const KernelGrads g = s.ops->backward(s.call, s.out, s.stats, dout);
    return {g.dq, g.dk, g.dv, g.dhead_scale, g.dq_norm_weight, g.dq_norm_bias,
            g.dk_norm_weight, g.dk_norm_bias, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor apply_kernel(const AttentionCall& c, const KernelOps* ops, HeadDiagnostics* diagnostics) {
  const Tensor no_mask = torch::empty({0}, torch::kBool);
  return KernelFunction::apply(c.q, c.k, c.v, placeholder(c.head_scale, c.q),
                               placeholder(c.q_norm_weight, c.q), placeholder(c.q_norm_bias, c.q),
                               placeholder(c.k_norm_weight, c.q), placeholder(c.k_norm_bias, c.q),
                               placeholder(c.key_padding_mask, no_mask), c, ops, diagnostics)[0];
}

// --- packed self-attention: q, k, v read in place from one projection ----------------------------

// The q (0), k (1) or v (2) heads of a packed (B, N, 3, H, D) tensor as a (B, H, N, D) view.
Tensor packed_heads(const Tensor& qkv5, int64_t which) {
  return qkv5.select(2, which).permute({0, 2, 1, 3});
}

// The fused kernel on a (B, N, 3, H, D) projection, output (B, N, H, D): the heads are strided
// views, so neither the head split nor the merge of the output copies, and backward writes dq, dk,
// dv into one gradient of the projection's shape (no zero-filled buffer per head split, no stack).
class PackedFusedFunction : public torch::autograd::Function<PackedFusedFunction> {
 public:
  static AttentionCall with_tensors(AttentionCall call, const Tensor& qkv5, const Tensor& head_scale,
                                    const Tensor& key_padding_mask) {
    call.q = packed_heads(qkv5, 0);
    call.k = packed_heads(qkv5, 1);
    call.v = packed_heads(qkv5, 2);
    call.head_scale = undefined_if_placeholder(head_scale);
    call.key_padding_mask = undefined_if_placeholder(key_padding_mask);
    return call;
  }

  static variable_list forward(AutogradContext* ctx, Tensor qkv5, Tensor head_scale,
                               Tensor key_padding_mask, const AttentionCall& scalars,
                               HeadDiagnostics* diagnostics) {
    const AttentionCall call = with_tensors(scalars, qkv5, head_scale, key_padding_mask);
    const AttentionDims& d = call.dims;
    Tensor out = torch::empty({d.batch, d.q_len, d.heads, d.v_dim}, qkv5.options());
    DiagnosticsSink sink(diagnostics, d);
    const Tensor stats = fused_forward_into(call, out.transpose(1, 2), sink.data());
    sink.reduce(d.heads);
    ctx->save_for_backward({qkv5, head_scale, key_padding_mask, out, stats});
    save_scalars(ctx, scalars, &kFusedOps);
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    require_once_differentiable();
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &qkv5 = saved[0], &out = saved[3], &stats = saved[4];
    const AttentionCall call = with_tensors(load_scalars(ctx)->call, qkv5, saved[1], saved[2]);
    const Tensor dout = grad_outputs[0].defined() ? grad_outputs[0] : torch::zeros_like(out);
    Tensor dqkv = torch::empty(qkv5.sizes(), qkv5.options());
    const Tensor dhead_scale =
        fused_backward_into(call, out.transpose(1, 2), stats, dout.transpose(1, 2),
                            packed_heads(dqkv, 0), packed_heads(dqkv, 1), packed_heads(dqkv, 2));
    return {dqkv, dhead_scale, Tensor(), Tensor(), Tensor()};
  }
};

// --- composite: matmul -> softmax -> matmul with torch ops ------------------------------------

Tensor normalise(const Tensor& x, Norm norm, const Tensor& weight, const Tensor& bias,
                 const AttentionCall& c) {
  switch (norm) {
    case Norm::none: return x;
    case Norm::l2: return x / x.norm(2, -1, /*keepdim=*/true).clamp_min(c.l2_eps);
    case Norm::layer: return torch::layer_norm(x, {x.size(-1)}, weight, bias, c.layernorm_eps);
  }
  return x;
}

}  // namespace

Tensor normalize_keys(const Tensor& k, const AttentionOptions& o) {
  // Validated and resolved as a call would be (k stands in for q and v); no dropout seed drawn.
  const AttentionCall c = detail::make_call(
      k, k, k, AttentionOptions(o).check_finite(false).keys_normalized(false).training(false));
  return normalise(k, c.k_norm, c.k_norm_weight, c.k_norm_bias, c);
}

namespace {

// Keys hidden from each query: (B or 1, 1, Nq, Nk) bool, or undefined if every key is visible.
Tensor hidden_keys(const AttentionCall& c) {
  Tensor hidden;
  if (c.causal) {  // key j > query i + shift is hidden
    hidden = torch::ones({c.dims.q_len, c.dims.k_len}, torch::kBool).triu(1 + c.causal_shift()).view(
        {1, 1, c.dims.q_len, c.dims.k_len});
  }
  if (c.key_padding_mask.defined()) {
    Tensor pad = c.key_padding_mask.view({c.dims.batch, 1, 1, c.dims.k_len});
    hidden = hidden.defined() ? hidden.logical_or(pad) : pad;
  }
  if (c.attn_bias.defined()) {  // -inf in the bias hides a pair as the flags do
    Tensor blocked = c.attn_bias == -INFINITY;
    while (blocked.dim() < 4) blocked = blocked.unsqueeze(0);
    hidden = hidden.defined() ? hidden.logical_or(blocked) : blocked;
  }
  return hidden;
}

// Softmax weights (before dropout) and the output.
std::pair<Tensor, Tensor> composite(const AttentionCall& c) {
  const Tensor qn = normalise(c.q, c.q_norm, c.q_norm_weight, c.q_norm_bias, c);
  const Tensor kn = normalise(c.k, c.k_norm, c.k_norm_weight, c.k_norm_bias, c);
  Tensor s = torch::matmul(qn, kn.transpose(-2, -1));
  s = c.head_scale.defined() ? s * c.head_scale.view({1, -1, 1, 1}) : s * c.scale;
  if (c.attn_bias.defined()) s = s + c.attn_bias;
  const Tensor hidden = hidden_keys(c);
  Tensor probs, empty_row;
  if (hidden.defined()) {
    // Rows that see no key get finite logits before softmax, zero weights after it and a zero
    // output (even where a value is non-finite), so they carry no NaN forward or back.
    empty_row = hidden.all(-1, /*keepdim=*/true);
    Tensor sm = s.masked_fill(hidden, -INFINITY).masked_fill(empty_row, 0);
    probs = torch::softmax(sm, -1).masked_fill(hidden, 0);
  } else {
    probs = torch::softmax(s, -1);
  }
  Tensor dropped = probs;
  if (c.dropout > 0) {
    Tensor keep = torch::empty({c.dims.batch, c.dims.heads, c.dims.q_len, c.dims.k_len}, torch::kBool);
    dropout_keep_mask(c.seed, c.dropout, c.dims, keep.data_ptr<bool>());
    dropped = probs * keep.to(probs.scalar_type()) * (1.0 / (1.0 - c.dropout));
  }
  Tensor out = torch::matmul(dropped, c.v);
  if (empty_row.defined()) out = out.masked_fill(empty_row, 0);
  return {probs, out};
}

// Diagnostics of a call as the reference computes them (one implementation for every path that
// does not compute them in its own pass): raw norms, max |logit| and entropy, without dropout.
HeadDiagnostics reference_diagnostics(const AttentionCall& call) {
  torch::NoGradGuard no_grad;
  AttentionCall c = call;
  c.dropout = 0;
  std::vector<HeadDiagnosticsPartial> partials(c.dims.batch * c.dims.heads);
  reference_forward(c, partials.data());
  return reduce_partials(partials, c.dims.heads);
}

Tensor weights_of(const AttentionCall& c) {
  torch::NoGradGuard no_grad;
  return composite(c).first;
}

// --- the backends, in the order `automatic` tries them ---------------------------------------

// How a call reaches the fused kernel, decided once and read by both eligibility (without making
// the copies) and execution: LayerNorm kinds are normalised by torch first (its autograd carries
// the affine gradients) and the kernel sees plain dot products; q, k or v without unit stride
// along D are copied once.
struct FusedLayout {
  bool q_layernorm_first = false, k_layernorm_first = false;
  bool copy_q = false, copy_k = false, copy_v = false;

  // Whether the kernel reads the caller's q, k, v as they are (the packed path needs this).
  bool in_place() const {
    return !q_layernorm_first && !k_layernorm_first && !copy_q && !copy_k && !copy_v;
  }
  // The call's scalars as the kernel will see them (norms after normalising first).
  AttentionCall scalars(const AttentionCall& c) const {
    AttentionCall f = c;
    if (q_layernorm_first) f.q_norm = Norm::none;
    if (k_layernorm_first) f.k_norm = Norm::none;
    f.q_norm_weight = f.q_norm_bias = f.k_norm_weight = f.k_norm_bias = Tensor();
    return f;
  }
  // The kernel's arguments, strides as they will be after the copies (nothing copied here).
  AttentionArgs<float> kernel_args(const AttentionCall& c) const {
    AttentionArgs<float> a = scalars(c).kernel_args<float>();
    if (copy_q) a.q.stride[3] = 1;
    if (copy_k) a.k.stride[3] = 1;
    if (copy_v) a.v.stride[3] = 1;
    return a;
  }
  // The call the kernel runs: copies made, LayerNorm applied by torch.
  AttentionCall apply(const AttentionCall& c) const {
    AttentionCall f = scalars(c);
    if (copy_q) f.q = c.q.contiguous();
    if (copy_k) f.k = c.k.contiguous();
    if (copy_v) f.v = c.v.contiguous();
    if (q_layernorm_first) f.q = normalise(f.q, Norm::layer, c.q_norm_weight, c.q_norm_bias, c);
    if (k_layernorm_first) f.k = normalise(f.k, Norm::layer, c.k_norm_weight, c.k_norm_bias, c);
    return f;
  }
};

FusedLayout fused_layout(const AttentionCall& c) {
  FusedLayout l;
  l.q_layernorm_first = c.q_norm == Norm::layer;
  l.k_layernorm_first = c.k_norm == Norm::layer;
  l.copy_q = c.q.stride(3) != 1;
  l.copy_k = c.k.stride(3) != 1;
  l.copy_v = c.v.stride(3) != 1;
  return l;
}

std::string reference_why_not(const AttentionCall& c) {
  return c.attn_bias.defined() ? "takes masks as flags (causal, key_padding_mask), not an attn_bias" : "";
}

std::string fused_why_not(const AttentionCall& c) {
  if (const std::string reason = reference_why_not(c); !reason.empty()) return reason;
  if (c.q.scalar_type() != torch::kFloat)
    return std::string("computes in float32 only, got ") + c10::toString(c.q.scalar_type());
  return fused::why_not(fused_layout(c).kernel_args(c));
}

std::string always_eligible(const AttentionCall&) { return ""; }

AttentionOutput run_fused(const AttentionCall& c, bool need_weights, bool need_diagnostics) {
  const AttentionCall f = fused_layout(c).apply(c);
  AttentionOutput r;
  HeadDiagnostics diagnostics;
  r.output = apply_kernel(f, &kFusedOps, need_diagnostics ? &diagnostics : nullptr);
  if (need_diagnostics) {
    if (f.q_norm != c.q_norm || f.k_norm != c.k_norm) {  // norms of the raw rows, as every path
      torch::NoGradGuard no_grad;
      std::vector<HeadDiagnosticsPartial> norms(c.dims.batch * c.dims.heads);
      add_norm_diagnostics(c.kernel_args<float>(), norms.data());
      const HeadDiagnostics raw = reduce_partials(norms, c.dims.heads);
      diagnostics.q_norm_mean = raw.q_norm_mean;
      diagnostics.q_norm_max = raw.q_norm_max;
      diagnostics.k_norm_mean = raw.k_norm_mean;
      diagnostics.k_norm_max = raw.k_norm_max;
    }
    r.diagnostics = diagnostics;
  }
  if (need_weights) r.weights = weights_of(c);
  return r;
}

AttentionOutput run_reference(const AttentionCall& c, bool need_weights, bool need_diagnostics) {
  AttentionOutput r;
  HeadDiagnostics diagnostics;
  r.output = apply_kernel(c, &kReferenceOps, need_diagnostics ? &diagnostics : nullptr);
  if (need_diagnostics) r.diagnostics = diagnostics;
  if (need_weights) r.weights = weights_of(c);
  return r;
}

AttentionOutput run_composite(const AttentionCall& c, bool need_weights, bool need_diagnostics) {
  AttentionOutput r;
  auto [probs, out] = composite(c);
  r.output = out;
  if (need_weights) r.weights = probs;  // in the graph: a loss on the weights gets gradients
  if (need_diagnostics) {
    TORCH_CHECK(!c.attn_bias.defined(), "quest::attention: diagnostics are not computed with an "
                "attn_bias (they follow the kernels, which take masks as flags)");
    r.diagnostics = reference_diagnostics(c);
  }
  return r;
}

using RunFn = AttentionOutput (*)(const AttentionCall&, bool need_weights, bool need_diagnostics);

// Packed self-attention: q, k, v are the (B, H, N, D) views of qkv5 = (B, N, 3, H, D); the output
// is (B, N, H * Dv).
AttentionOutput run_split_heads(RunFn run, const AttentionCall& c, bool need_weights,
                                bool need_diagnostics) {
  AttentionOutput r = run(c, need_weights, need_diagnostics);
  r.output = r.output.transpose(1, 2).reshape({c.dims.batch, c.dims.q_len, -1});
  return r;
}

// The fused kernel reads the projection in place (PackedFusedFunction) where its layout lets it.
AttentionOutput run_fused_packed(const AttentionCall& c, const Tensor& qkv5, bool need_weights,
                                 bool need_diagnostics) {
  if (!fused_layout(c).in_place()) return run_split_heads(run_fused, c, need_weights, need_diagnostics);
  AttentionOutput r;
  HeadDiagnostics diagnostics;
  const Tensor no_mask = torch::empty({0}, torch::kBool);
  r.output = PackedFusedFunction::apply(qkv5, placeholder(c.head_scale, qkv5),
                                        placeholder(c.key_padding_mask, no_mask), c,
                                        need_diagnostics ? &diagnostics : nullptr)[0]
                 .view({c.dims.batch, c.dims.q_len, -1});
  if (need_diagnostics) r.diagnostics = diagnostics;
  if (need_weights) r.weights = weights_of(c);
  return r;
}

// One row per backend, in the order `automatic` tries them: everything the dispatcher knows
// about a backend is here (ATen's SDPA keeps its constraints the same way).
struct BackendEntry {
  Backend id;
  bool automatic;                                // tried by Backend::automatic
  std::string (*why_not)(const AttentionCall&);  // "" = eligible
  RunFn run;
  // Packed self-attention (B, N, 3, H, D) read in place; null: split the heads, run, merge.
  AttentionOutput (*run_packed)(const AttentionCall&, const Tensor& qkv5, bool need_weights,
                                bool need_diagnostics);
};

const BackendEntry kBackends[] = {
    {Backend::fused, true, fused_why_not, run_fused, run_fused_packed},
    {Backend::composite, true, always_eligible, run_composite, nullptr},
    {Backend::reference, false, reference_why_not, run_reference, nullptr},
};

struct Selected {
  const BackendEntry* entry;
  BackendSelection selection;
};

Selected select(const AttentionCall& c) {
  Backend wanted = c.requested;
  if (wanted == Backend::automatic) wanted = backend_override().value_or(Backend::automatic);
  Selected s{nullptr, {}};
  for (const BackendEntry& e : kBackends) {
    if (wanted == Backend::automatic ? !e.automatic : e.id != wanted) continue;
    const std::string reason = e.why_not(c);
    if (reason.empty()) {
      s.entry = &e;
      s.selection.backend = e.id;
      return s;
    }
    s.selection.rejected.push_back(to_string(e.id) + ": " + reason);
  }
  TORCH_CHECK(wanted == Backend::automatic, "quest::attention: the ", to_string(wanted),
              " backend cannot run this call: ", s.selection.rejected.back(),
              "; use the composite or reference backend");
  TORCH_CHECK(false, "quest::attention: no backend can run this call");  // composite always can
  return s;
}

}  // namespace

BackendSelection select_backend(const Tensor& q, const Tensor& k, const Tensor& v,
                                const AttentionOptions& options) {
  return select(detail::make_call(q, k, v, options)).selection;
}

AttentionOutput attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionOptions& options, bool need_weights,
                                  bool need_diagnostics) {
  const AttentionCall call = detail::make_call(q, k, v, options);
  return select(call).entry->run(call, need_weights, need_diagnostics);
}

AttentionOutput attention_packed_forward(const Tensor& qkv, int64_t heads,
                                         const AttentionOptions& options, bool need_weights,
                                         bool need_diagnostics) {
  TORCH_CHECK(qkv.defined() && qkv.dim() == 3, "quest::attention_packed: qkv must have shape (B, N, "
              "3 x heads x head_dim), got ", qkv.defined() ? qkv.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(heads > 0 && qkv.size(2) > 0 && qkv.size(2) % (3 * heads) == 0,
              "quest::attention_packed: the last dimension of qkv (", qkv.size(2),
              ") is not 3 x heads (", heads, ") x head_dim");
  const int64_t b = qkv.size(0), n = qkv.size(1), dh = qkv.size(2) / (3 * heads);
  const Tensor qkv5 = qkv.reshape({b, n, 3, heads, dh});
  // unbind: one backward node (a stack) where indexing would make one zero-filled buffer per part.
  const std::vector<Tensor> parts = qkv5.permute({2, 0, 3, 1, 4}).unbind(0);
  const AttentionCall call = detail::make_call(parts[0], parts[1], parts[2], options);
  const BackendEntry& backend = *select(call).entry;
  if (backend.run_packed) return backend.run_packed(call, qkv5, need_weights, need_diagnostics);
  return run_split_heads(backend.run, call, need_weights, need_diagnostics);
}

Tensor attention_packed(const Tensor& qkv, int64_t heads, const AttentionOptions& options) {
  return attention_packed_forward(qkv, heads, options, false, false).output;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v,
                 const AttentionOptions& options) {
  return attention_forward(q, k, v, options, false, false).output;
}

}  // namespace quest
