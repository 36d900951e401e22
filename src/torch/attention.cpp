// The LibTorch functional API: validate once (make_call), select a backend from an ordered list of
// eligibility checks, run it. Kernel backends (fused, reference) share one autograd Function that
// saves a typed context; the composite backend is torch ops under torch's autograd.
#include "quest/torch/attention.h"
#include "quest/torch/runtime.h"

#include <cstdlib>

#include "call.h"
#include "kernel_ops.h"
#include "quest/core/fused.h"

namespace quest {

std::string to_string(Backend backend) {
  switch (backend) {
    case Backend::automatic: return "automatic";
    case Backend::reference: return "reference";
    case Backend::composite: return "composite";
    case Backend::fused: return "fused";
    case Backend::sdpa: return "sdpa";
  }
  return "?";
}

std::optional<Backend> parse_backend(std::string_view name) {
  if (name == "auto") return Backend::automatic;
  for (Backend b : {Backend::automatic, Backend::reference, Backend::composite, Backend::fused, Backend::sdpa})
    if (name == to_string(b)) return b;
  return std::nullopt;
}

std::optional<Backend> parse_backend_override(const char* value) {
  if (!value || !*value) return std::nullopt;
  const auto forced = parse_backend(value);
  TORCH_CHECK(forced.has_value(), "quest::attention: QUEST_ATTENTION_BACKEND='", value,
              "' is not one of automatic, reference, composite, fused, sdpa");
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
using detail::KernelBackend;
using torch::Tensor;

// --- composite: matmul -> softmax -> matmul with torch ops ------------------------------------

Tensor normalise(const Tensor& x, Norm norm, const Tensor& weight, const Tensor& bias,
                 const AttentionCall& c) {
  switch (norm) {
    case Norm::none: return x;
    case Norm::l2: return x / x.norm(2, -1, /*keepdim=*/true).clamp_min(c.l2_eps);
    case Norm::layer: return at::layer_norm_symint(x, {x.sym_size(-1)}, weight, bias, c.layernorm_eps);
  }
  return x;
}

}  // namespace

Tensor normalize_keys(const Tensor& k, const AttentionOptions& o) {
  // Validated and resolved as a call would be (k stands in for q and v); no dropout seed drawn.
  const AttentionCall c = detail::make_call(
      k, k, k, AttentionOptions(o).check_finite(false).keys_normalized(false).training(false).head_scale({})
                   .enable_gqa(false));  // k has the key/value heads; the head scale is per query head
  return normalise(k, c.k_norm, c.k_norm_weight, c.k_norm_bias, c);
}

namespace {

// Keys hidden from each query: (B or 1, 1, Nq, Nk) bool, or undefined if every key is visible.
Tensor hidden_keys(const AttentionCall& c) {
  Tensor hidden;
  if (c.causal) {  // key j > query i + shift is hidden (sizes from the tensors: symbolic when traced)
    const c10::SymInt &q_len = c.q.sym_size(2), &k_len = c.k.sym_size(2);
    const c10::SymInt shift = c.causal_alignment == CausalAlignment::bottom_right ? k_len - q_len : c10::SymInt(0);
    const auto index = torch::TensorOptions().dtype(torch::kLong).device(c.q.device());
    const Tensor rows = torch::arange(c10::Scalar(q_len), index).unsqueeze(1);
    const Tensor cols = torch::arange(c10::Scalar(k_len), index);
    hidden = (cols.unsqueeze(0) > rows + c10::Scalar(shift)).unsqueeze(0).unsqueeze(0);
  }
  if (c.key_padding_mask.defined()) {
    Tensor pad = c.key_padding_mask.unsqueeze(1).unsqueeze(1);  // (B, 1, 1, Nk)
    hidden = hidden.defined() ? hidden.logical_or(pad) : pad;
  }
  if (c.attn_bias.defined()) {  // -inf in the bias hides a pair as the flags do
    Tensor blocked = c.attn_bias == -INFINITY;
    while (blocked.dim() < 4) blocked = blocked.unsqueeze(0);
    hidden = hidden.defined() ? hidden.logical_or(blocked) : blocked;
  }
  return hidden;
}

// Grouped-query attention as torch's math SDPA does it: each key/value head repeated for its group.
Tensor per_query_head(const Tensor& t, const AttentionCall& c) {
  return c.kv_group == 1 ? t : t.repeat_interleave(c.kv_group, 1);
}

// The logits (B, H, Nq, Nk) of the kind, the bias added, before masking.
Tensor logits_of(const AttentionCall& c) {
  const Tensor qn = normalise(c.q, c.q_norm, c.q_norm_weight, c.q_norm_bias, c);
  const Tensor kn = per_query_head(normalise(c.k, c.k_norm, c.k_norm_weight, c.k_norm_bias, c), c);
  Tensor s = torch::matmul(qn, kn.transpose(-2, -1));
  s = c.head_scale.defined() ? s * c.head_scale.view({1, -1, 1, 1}) : s * c.scale;
  return c.attn_bias.defined() ? s + c.attn_bias : s;
}

// Per-row log-sum-exp of the visible logits (B, H, Nq) float32, detached; -inf where a row sees no key.
Tensor logsumexp_of(const AttentionCall& c) {
  torch::NoGradGuard no_grad;
  Tensor s = logits_of(c);
  if (const Tensor hidden = hidden_keys(c); hidden.defined()) s = s.masked_fill(hidden, -INFINITY);
  return s.logsumexp(-1).to(torch::kFloat);
}

// Softmax weights (before dropout) and the output.
std::pair<Tensor, Tensor> composite(const AttentionCall& c) {
  const Tensor s = logits_of(c);
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
  if (c.torch_dropout) {
    dropped = torch::dropout(probs, c.dropout, /*train=*/true);
  } else if (c.dropout > 0) {
    Tensor keep = torch::empty({c.dims.batch, c.dims.heads, c.dims.q_len, c.dims.k_len}, torch::kBool);
    dropout_keep_mask(c.seed, c.dropout, c.dims, keep.data_ptr<bool>());
    dropped = probs * keep.to(probs.options()) * (1.0 / (1.0 - c.dropout));  // drawn on the host
  }
  Tensor out = torch::matmul(dropped, per_query_head(c.v, c));
  if (empty_row.defined()) out = out.masked_fill(empty_row, 0);
  return {probs, out};
}

// Diagnostics of a call as the reference computes them (one implementation for every path that
// does not compute them in its own pass): raw norms, max |logit| and entropy, without dropout.
HeadDiagnostics reference_diagnostics(const AttentionCall& call) {
  torch::NoGradGuard no_grad;
  AttentionCall c = call;
  c.dropout = 0;
  for (auto field : AttentionCall::tensor_fields())  // the reference reads host memory
    if ((c.*field).defined()) c.*field = (c.*field).cpu();
  HeadDiagnostics d;
  detail::run_kernel(c, KernelBackend::reference, &d);
  return d;
}

// A reduced-precision call (bfloat16 storage, sdpa_dtype) with float32 copies of q, k, v: the
// extras torch ops compute (weights, logsumexp, diagnostics) are float32 on every path.
AttentionCall in_float32(const AttentionCall& c) {
  if (c.q.scalar_type() == torch::kFloat || c.q.scalar_type() == torch::kDouble) return c;
  AttentionCall f = c;
  for (Tensor AttentionCall::*t : {&AttentionCall::q, &AttentionCall::k, &AttentionCall::v}) f.*t = (c.*t).to(torch::kFloat);
  return f;
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
  // The kernel's scalars and its inputs' unit strides along D as they will be after the copies
  // (nothing copied, no data read: eligibility is decided on tracing stand-ins too).
  AttentionArgs<float> layout_args(const AttentionCall& c) const {
    AttentionArgs<float> a;
    static_cast<AttentionScalars&>(a) = scalars(c);
    a.q.stride[3] = a.k.stride[3] = a.v.stride[3] = 1;
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
  l.copy_q = c.q.sym_stride(3) != 1;
  l.copy_k = c.k.sym_stride(3) != 1;
  l.copy_v = c.v.sym_stride(3) != 1;
  return l;
}

std::string reference_why_not(const AttentionCall& c) {
  if (!c.q.device().is_cpu()) return "runs on CPU tensors only, got " + c.q.device().str();
  if (c.attn_bias.defined()) return "takes masks as flags (causal, key_padding_mask), not an attn_bias";
  // The kernels run grouped-query calls group by group, and their dropout mask is drawn per
  // (b, h) of the call they see: it would differ from the composite's.
  if (c.kv_group > 1 && c.dropout > 0) return "no dropout with grouped-query attention";
  if (c.torch_dropout) return "attention dropout under torch.compile draws torch's in-graph random numbers";
  return "";
}

std::string fused_why_not(const AttentionCall& c) {
  if (const std::string reason = reference_why_not(c); !reason.empty()) return reason;  // the same limits
  if (c.q.scalar_type() != torch::kFloat)
    return std::string("computes in float32 only, got ") + c10::toString(c.q.scalar_type());
  return fused::why_not(fused_layout(c).layout_args(c));
}

std::string always_eligible(const AttentionCall&) { return ""; }

std::string sdpa_why_not(const AttentionCall& c) {
  if (c.dropout > 0 && !c.torch_dropout) return "its dropout mask would be torch's, not quest's seeded one";
  return "";
}

// The first four diagnostics rows (q_norm_mean, q_norm_max, k_norm_mean, k_norm_max: norms of
// the raw rows, keys without the padded ones) as torch ops, for a traced call whose kernel saw
// normalised rows (add_norm_diagnostics is its eager twin, on the host).
Tensor raw_norm_rows(const AttentionCall& c) {
  torch::NoGradGuard no_grad;
  const Tensor qn = c.q.to(torch::kDouble).norm(2, -1);  // (B, Hq, Nq)
  Tensor kn = c.k.to(torch::kDouble).norm(2, -1);        // (B, Hk, Nk)
  Tensor kept = torch::ones_like(kn);
  if (c.key_padding_mask.defined()) {
    kept = c.key_padding_mask.logical_not().unsqueeze(1).to(torch::kDouble).expand_as(kn);
    kn = torch::where(kept > 0, kn, 0.0);  // norms are >= 0; an empty head's max is 0, as the partials' start
  }
  const auto per_query_head = [&](const Tensor& t) {  // (Hk) -> (Hq): head h reads h / kv_group
    return c.kv_group == 1 ? t : t.repeat_interleave(c.kv_group, 0);
  };
  const std::vector<int64_t> batch_and_rows{0, 2};  // named: a braced list is ambiguous in torch 2.11's overloads
  const Tensor k_count = kept.sum(batch_and_rows);
  const Tensor k_mean = torch::where(k_count > 0, kn.sum(batch_and_rows) / k_count.clamp_min(1), torch::zeros_like(k_count));
  return torch::stack({qn.mean(batch_and_rows), qn.amax(batch_and_rows), per_query_head(k_mean),
                       per_query_head(kn.amax(batch_and_rows))});
}

AttentionOutput run_fused(const AttentionCall& c, const AttentionRequest& want) {
  const AttentionCall f = fused_layout(c).apply(c);
  AttentionOutput r;
  HeadDiagnostics diagnostics;
  r.output = detail::run_kernel(f, KernelBackend::fused, want.diagnostics ? &diagnostics : nullptr,
                                want.logsumexp ? &r.logsumexp : nullptr, &r.traced_diagnostics);
  if (want.diagnostics && r.traced_diagnostics.defined()) {
    if (f.q_norm != c.q_norm || f.k_norm != c.k_norm)
      r.traced_diagnostics = torch::cat({raw_norm_rows(c), r.traced_diagnostics.slice(0, 4)});
  } else if (want.diagnostics) {
    if (f.q_norm != c.q_norm || f.k_norm != c.k_norm) {  // norms of the raw rows, as every path
      torch::NoGradGuard no_grad;
      const AttentionCall raw_rows = in_float32(c);  // (bfloat16 storage: float32 copies)
      std::vector<HeadDiagnosticsPartial> norms(c.dims.batch * c.dims.heads);
      std::vector<HeadDiagnosticsPartial> group(c.kv_group > 1 ? norms.size() / c.kv_group : 0);
      for (int64_t g = 0; g < c.kv_group; ++g) {
        std::fill(group.begin(), group.end(), HeadDiagnosticsPartial{});  // add_norm_diagnostics adds
        add_norm_diagnostics(detail::group_call(raw_rows, g).kernel_args<float>(),
                             group.empty() ? norms.data() : group.data());
        if (!group.empty()) detail::scatter_group_partials(group, c, g, norms.data());
      }
      const HeadDiagnostics raw = reduce_partials(norms, c.dims.heads);
      diagnostics.q_norm_mean = raw.q_norm_mean;
      diagnostics.q_norm_max = raw.q_norm_max;
      diagnostics.k_norm_mean = raw.k_norm_mean;
      diagnostics.k_norm_max = raw.k_norm_max;
    }
    r.diagnostics = diagnostics;
  }
  if (want.weights) r.weights = weights_of(in_float32(c));
  return r;
}

AttentionOutput run_reference(const AttentionCall& c, const AttentionRequest& want) {
  AttentionOutput r;
  HeadDiagnostics diagnostics;
  r.output = detail::run_kernel(c, KernelBackend::reference, want.diagnostics ? &diagnostics : nullptr,
                                want.logsumexp ? &r.logsumexp : nullptr, &r.traced_diagnostics);
  if (want.diagnostics && !r.traced_diagnostics.defined()) r.diagnostics = diagnostics;
  if (want.weights) r.weights = weights_of(c);
  return r;
}

AttentionOutput run_composite(const AttentionCall& c, const AttentionRequest& want) {
  AttentionOutput r;
  auto [probs, out] = composite(c);
  r.output = out;
  if (want.weights) r.weights = probs;  // in the graph: a loss on the weights gets gradients
  if (want.logsumexp) r.logsumexp = logsumexp_of(c);
  if (want.diagnostics) {
    TORCH_CHECK(!c.attn_bias.defined(), "quest::attention: diagnostics are not computed with an "
                "attn_bias (they follow the kernels, which take masks as flags)");
    r.diagnostics = reference_diagnostics(c);
  }
  return r;
}

// torch's SDPA on the kind's normalised q and k: QUEST = SDPA(q, k/|k|, v, scale=1), a per-head
// scale folded into q, so torch's flash / memory-efficient / cuDNN kernels serve any device.
// The flags become SDPA's bool mask (true takes part) or, with an attn_bias, its float mask; rows
// that see no key are unmasked before and zeroed after, as the composite does, so no NaN enters.
AttentionOutput run_sdpa(const AttentionCall& c, const AttentionRequest& want) {
  // sdpa_dtype: q, k, v arrive in bfloat16 / float16; what is normalised is normalised in float32.
  const auto to_normalise = [&](const Tensor& t, Norm norm) {
    return c.sdpa_dtype && norm != Norm::none ? t.to(torch::kFloat) : t;
  };
  Tensor qn = normalise(to_normalise(c.q, c.q_norm), c.q_norm, c.q_norm_weight, c.q_norm_bias, c);
  Tensor kn = normalise(to_normalise(c.k, c.k_norm), c.k_norm, c.k_norm_weight, c.k_norm_bias, c);
  double scale = c.scale;
  if (c.head_scale.defined()) {
    qn = qn * c.head_scale.view({1, -1, 1, 1});
    scale = 1.0;
  }
  // top-left causal alone is SDPA's is_causal (no row is empty: row i sees key 0).
  const bool flag_only = c.causal && !c.key_padding_mask.defined() && !c.attn_bias.defined() &&
                         (c.causal_alignment == CausalAlignment::top_left || c.q.sym_size(2) == c.k.sym_size(2));
  std::optional<Tensor> mask;
  Tensor empty_row;
  if (!flag_only) {
    if (const Tensor hidden = hidden_keys(c); hidden.defined()) {
      empty_row = hidden.all(-1, /*keepdim=*/true);
      const Tensor visible = hidden.logical_not().logical_or(empty_row);
      mask = c.attn_bias.defined()
                 ? torch::where(visible, c.attn_bias, -INFINITY).masked_fill(empty_row, 0)
                 : visible;
    } else if (c.attn_bias.defined()) {
      mask = c.attn_bias;
    }
  }
  if (c.sdpa_dtype) {  // attended in the input dtype (no-ops where nothing was normalised)
    qn = qn.to(*c.sdpa_dtype);
    kn = kn.to(*c.sdpa_dtype);
    if (mask && mask->is_floating_point()) mask = mask->to(*c.sdpa_dtype);
  }
  AttentionOutput r;
  r.output = at::scaled_dot_product_attention(qn, kn, c.v, mask, c.torch_dropout ? c.dropout : 0.0, flag_only,
                                              scale, c.kv_group > 1);
  if (empty_row.defined()) r.output = r.output.masked_fill(empty_row, 0);
  if (!want.weights && !want.logsumexp && !want.diagnostics) return r;
  const AttentionCall f = in_float32(c);  // the extras in float32, as on every other path
  if (want.weights) r.weights = weights_of(f);
  if (want.logsumexp) r.logsumexp = logsumexp_of(f);
  if (want.diagnostics) {
    TORCH_CHECK(!c.attn_bias.defined(), "quest::attention: diagnostics are not computed with an "
                "attn_bias (they follow the kernels, which take masks as flags)");
    r.diagnostics = reference_diagnostics(f);
  }
  return r;
}

using RunFn = AttentionOutput (*)(const AttentionCall&, const AttentionRequest&);

// Packed self-attention: q, k, v are the (B, H, N, D) views of qkv5 = (B, N, 3, H, D); the output
// is (B, N, H * Dv).
AttentionOutput run_split_heads(RunFn run, const AttentionCall& c, const AttentionRequest& want) {
  AttentionOutput r = run(c, want);
  r.output = r.output.transpose(1, 2).flatten(2);
  return r;
}

// The fused kernel reads the projection in place (run_packed_kernel) where its layout lets it.
AttentionOutput run_fused_packed(const AttentionCall& c, const Tensor& qkv5, const AttentionRequest& want) {
  if (!fused_layout(c).in_place()) return run_split_heads(run_fused, c, want);
  AttentionOutput r;
  HeadDiagnostics diagnostics;
  r.output = detail::run_packed_kernel(c, qkv5, want.diagnostics ? &diagnostics : nullptr,
                                       want.logsumexp ? &r.logsumexp : nullptr, &r.traced_diagnostics)
                 .flatten(2);
  if (want.diagnostics && !r.traced_diagnostics.defined()) r.diagnostics = diagnostics;
  if (want.weights) r.weights = weights_of(c);
  return r;
}

// One row per backend: everything the dispatcher knows about a backend is here (ATen's SDPA
// keeps its constraints the same way).
struct BackendEntry {
  Backend id;
  std::string (*why_not)(const AttentionCall&);  // "" = eligible
  RunFn run;
  // Packed self-attention (B, N, 3, H, D) read in place; null: split the heads, run, merge.
  AttentionOutput (*run_packed)(const AttentionCall&, const Tensor& qkv5, const AttentionRequest&);
};

const BackendEntry kBackends[] = {
    {Backend::fused, fused_why_not, run_fused, run_fused_packed},
    {Backend::composite, always_eligible, run_composite, nullptr},
    {Backend::reference, reference_why_not, run_reference, nullptr},
    {Backend::sdpa, sdpa_why_not, run_sdpa, nullptr},
};

// Runs a backend on a call, packed self-attention (qkv5 defined, (B, N, 3, H, D)) or not. A call
// whose finiteness check is pending (request_finite_check) leaves it to the fused kernel, which
// reads q, k and v anyway; every other backend checks first.
AttentionOutput run_backend(const BackendEntry& e, const AttentionCall& c, const AttentionRequest& want,
                            const Tensor& qkv5 = {}) {
  if (c.finite_check_pending && e.id != Backend::fused) detail::check_call_finite(c);
  if (!qkv5.defined()) return e.run(c, want);
  return e.run_packed ? e.run_packed(c, qkv5, want) : run_split_heads(e.run, c, want);
}

const BackendEntry& entry_of(Backend id) {
  for (const BackendEntry& e : kBackends)
    if (e.id == id) return e;
  TORCH_CHECK(false, "quest::attention: no backend ", to_string(id));
}

// The order `automatic` tries them in: on the CPU quest's kernels (the fused for float32), on any
// other device torch's SDPA, the composite where neither can.
constexpr Backend kCpuOrder[] = {Backend::fused, Backend::composite};
constexpr Backend kDeviceOrder[] = {Backend::sdpa, Backend::composite};

struct Selected {
  const BackendEntry* entry;
  BackendSelection selection;
};

Selected select(const AttentionCall& c) {
  Backend wanted = c.requested;
  if (wanted == Backend::automatic) wanted = backend_override().value_or(Backend::automatic);
  Selected s{nullptr, {}};
  std::vector<Backend> order(1, wanted);
  if (wanted == Backend::automatic) {
    if (c.q.device().is_cpu()) order.assign(std::begin(kCpuOrder), std::end(kCpuOrder));
    else order.assign(std::begin(kDeviceOrder), std::end(kDeviceOrder));
  }
  for (Backend id : order) {
    const BackendEntry& e = entry_of(id);
    const std::string reason = e.why_not(c);
    if (reason.empty()) {
      s.entry = &e;
      s.selection.backend = e.id;
      return s;
    }
    s.selection.rejected.push_back(to_string(e.id) + ": " + reason);
  }
  // The composite runs every call; the reference is suggested only where it can run this one.
  const bool reference_can = wanted != Backend::reference && reference_why_not(c).empty();
  TORCH_CHECK(wanted == Backend::automatic, "quest::attention: the ", to_string(wanted),
              " backend cannot run this call: ", s.selection.rejected.back(),
              reference_can ? "; use the composite or reference backend" : "; use the composite backend");
  TORCH_CHECK(false, "quest::attention: no backend can run this call");  // composite always can
  return s;
}

}  // namespace

namespace {

// bfloat16 and float16: computed in float32 (the casts are autograd ops, so gradients come back in
// the input dtype), outputs cast back to it.
bool reduced_precision(const Tensor& t) {
  return t.defined() && (t.scalar_type() == torch::kBFloat16 || t.scalar_type() == torch::kHalf);
}

Tensor to_float(const Tensor& t) { return reduced_precision(t) ? t.to(torch::kFloat) : t; }

// Float32 copies would hide a mix (bfloat16 q, float32 k) that no backend takes.
void check_one_dtype(const Tensor& q, const Tensor& k, const Tensor& v) {
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "quest::attention: q, k, v must share a dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
}

AttentionOptions in_float(AttentionOptions o) {
  return o.head_scale(to_float(o.head_scale())).q_norm_weight(to_float(o.q_norm_weight()))
      .q_norm_bias(to_float(o.q_norm_bias())).k_norm_weight(to_float(o.k_norm_weight()))
      .k_norm_bias(to_float(o.k_norm_bias())).attn_bias(to_float(o.attn_bias()));
}

// A float32 stand-in of a reduced-precision tensor for validation and selection: allocated with its
// sizes and strides, never written (no copy kernel).
Tensor stand_in(const Tensor& t) {
  return reduced_precision(t)
             ? at::empty_strided_symint(t.sym_sizes(), t.sym_strides(), t.options().dtype(torch::kFloat))
             : t;
}

// Whether a backend takes bfloat16 / float16 q, k, v as they are, rather than their float32
// copies: torch's SDPA off the CPU (its bf16 / fp16 kernels; AttentionCall::sdpa_dtype), and the
// fused kernel in bfloat16 storage. That reads the caller's tensors in place, or what FusedLayout
// makes of them in bfloat16 (a contiguous copy; QK-LayerNorm's output, which torch's layer_norm
// computes in float32 and rounds to the input's dtype, as a bf16 model's LayerNorm would).
// Either way it computes in float32.
bool takes_input_dtype(const AttentionCall& c, Backend backend, torch::ScalarType dtype) {
  if (backend == Backend::sdpa) return !c.q.device().is_cpu();
  return backend == Backend::fused && dtype == torch::kBFloat16;
}

// A bfloat16 / float16 call validated and selected on float32 stand-ins, with the caller's q, k, v
// put back where the selected backend takes them as they are (takes_input_dtype); nullopt where it
// needs float32 copies instead.
struct AsGiven {
  AttentionCall call;
  const BackendEntry* entry;
};
std::optional<AsGiven> as_given(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o) {
  AttentionCall call = detail::make_call(stand_in(q), stand_in(k), stand_in(v), AttentionOptions(o).check_finite(false));
  const Selected s = select(call);
  if (!takes_input_dtype(call, s.selection.backend, q.scalar_type())) return std::nullopt;
  if (s.selection.backend == Backend::sdpa) call.sdpa_dtype = q.scalar_type();
  call.q = q;
  call.k = k;
  call.v = v;
  if (o.check_finite()) detail::request_finite_check(call);
  return AsGiven{call, s.entry};
}

AttentionOutput in_dtype(AttentionOutput r, torch::ScalarType dtype) {
  r.output = r.output.to(dtype);
  if (r.weights.defined()) r.weights = r.weights.to(dtype);
  return r;
}

}  // namespace

// As attention_forward sees the call: bfloat16 and float16 inputs as their float32 copies.
BackendSelection select_backend(const Tensor& q, const Tensor& k, const Tensor& v,
                                const AttentionOptions& options) {
  if (reduced_precision(q) || reduced_precision(k) || reduced_precision(v)) check_one_dtype(q, k, v);
  return select(detail::make_call(to_float(q), to_float(k), to_float(v), in_float(options))).selection;
}

AttentionOutput attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionOptions& options, bool need_weights,
                                  bool need_diagnostics) {
  return attention_forward(q, k, v, options, AttentionRequest{need_weights, need_diagnostics, false});
}

AttentionOutput attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionOptions& options, const AttentionRequest& want) {
  if (reduced_precision(q) || reduced_precision(k) || reduced_precision(v)) {
    check_one_dtype(q, k, v);
    const AttentionOptions o = in_float(options);
    if (const auto g = as_given(q, k, v, o)) return in_dtype(run_backend(*g->entry, g->call, want), q.scalar_type());
    const AttentionCall call = detail::make_call(to_float(q), to_float(k), to_float(v), o);
    return in_dtype(run_backend(*select(call).entry, call, want), q.scalar_type());
  }
  const AttentionCall call = detail::make_call(q, k, v, options);
  return run_backend(*select(call).entry, call, want);
}

AttentionOutput attention_packed_forward(const Tensor& qkv, int64_t heads,
                                         const AttentionOptions& options, bool need_weights,
                                         bool need_diagnostics) {
  return attention_packed_forward(qkv, heads, options, AttentionRequest{need_weights, need_diagnostics, false});
}

AttentionOutput attention_packed_forward(const Tensor& qkv, int64_t heads,
                                         const AttentionOptions& options, const AttentionRequest& want) {
  TORCH_CHECK(qkv.defined() && qkv.dim() == 3, "quest::attention_packed: qkv must have shape (B, N, "
              "3 x heads x head_dim), got ", qkv.defined() ? qkv.sym_sizes() : c10::SymIntArrayRef{});
  const int64_t width = detail::size_of(qkv, 2);
  TORCH_CHECK(heads > 0 && width > 0 && width % (3 * heads) == 0,
              "quest::attention_packed: the last dimension of qkv (", width,
              ") is not 3 x heads (", heads, ") x head_dim");
  const Tensor qkv5 = qkv.unflatten(2, {3, heads, width / (3 * heads)});
  // unbind: one backward node (a stack) where indexing would make one zero-filled buffer per part.
  const std::vector<Tensor> parts = qkv5.permute({2, 0, 3, 1, 4}).unbind(0);
  if (reduced_precision(qkv)) {  // as given where the backend takes it, else float32 copies
    const AttentionOptions o = in_float(options);
    if (const auto g = as_given(parts[0], parts[1], parts[2], o))
      return in_dtype(run_backend(*g->entry, g->call, want, qkv5), qkv.scalar_type());
    return in_dtype(attention_packed_forward(qkv.to(torch::kFloat), heads, o, want), qkv.scalar_type());
  }
  const AttentionCall call = detail::make_call(parts[0], parts[1], parts[2], options);
  return run_backend(*select(call).entry, call, want, qkv5);
}

Tensor attention_packed(const Tensor& qkv, int64_t heads, const AttentionOptions& options) {
  return attention_packed_forward(qkv, heads, options, false, false).output;
}

namespace {

// SDPA's (..., H, N, D) as (B, H, N, D): the leading batch dims flattened, or a batch of 1.
Tensor as_4d(const Tensor& t) {
  if (t.dim() >= 4) return t.flatten(0, t.dim() - 4);
  Tensor r = t;
  while (r.dim() < 4) r = r.unsqueeze(0);
  return r;
}

// An SDPA attn_mask as quest's masks: (B, Nk) key padding where a bool mask varies along keys
// only (the fused kernel takes it), else a logit bias broadcastable to (B, H, Nq, Nk).
void set_sdpa_mask(const Tensor& mask, const Tensor& q, AttentionOptions& o) {
  TORCH_CHECK(mask.scalar_type() == torch::kBool || mask.scalar_type() == q.scalar_type(),
              "quest::scaled_dot_product_attention: attn_mask has dtype ", mask.scalar_type(),
              "; expected bool (true takes part) or q's dtype ", q.scalar_type(), " (added to the logits)");
  TORCH_CHECK(mask.dim() >= 1 && mask.dim() <= q.dim(), "quest::scaled_dot_product_attention: attn_mask of shape ",
              mask.sym_sizes(), " does not broadcast to (..., Hq, L, S) = ", q.sym_sizes().slice(0, q.dim() - 1),
              " + (S)");
  Tensor m = mask;
  while (m.dim() < q.dim()) m = m.unsqueeze(0);
  // Leading batch dims as q's (a view), then flattened as q's are.
  std::vector<c10::SymInt> shape(m.sym_sizes().begin(), m.sym_sizes().end());
  for (int64_t d = 0; d + 3 < q.dim(); ++d) shape[d] = q.sym_size(d);
  m = as_4d(m.expand_symint(shape));
  const bool keys_only = m.scalar_type() == torch::kBool && m.sym_size(1) == 1 && m.sym_size(2) == 1;
  if (keys_only) {
    o.key_padding_mask(m.select(2, 0).select(1, 0).logical_not());
  } else {
    o.attn_bias(m.scalar_type() == torch::kBool ? torch::zeros({}, q.options()).masked_fill(m.logical_not(), -INFINITY)
                                                : m);
  }
}

}  // namespace

AttentionOutput scaled_dot_product_attention_forward(const Tensor& query, const Tensor& key, const Tensor& value,
                                                    const Tensor& attn_mask, double dropout_p, bool is_causal,
                                                    std::optional<double> scale, bool enable_gqa, AttentionOptions o,
                                                    const AttentionRequest& request) {
  for (auto [t, name] : {std::pair{&query, "query"}, {&key, "key"}, {&value, "value"}})
    TORCH_CHECK(t->defined() && t->dim() >= 2, "quest::scaled_dot_product_attention: ", name,
                " must have shape (..., N, D), got ", t->defined() ? t->sym_sizes() : c10::SymIntArrayRef{});
  TORCH_CHECK(key.dim() == query.dim() && value.dim() == query.dim(),
              "quest::scaled_dot_product_attention: query, key and value must have the same rank, got ",
              query.sym_sizes(), ", ", key.sym_sizes(), ", ", value.sym_sizes());
  const int64_t lead = std::max<int64_t>(query.dim() - 3, 0);  // batch dims before the heads
  TORCH_CHECK(query.sym_sizes().slice(0, lead) == key.sym_sizes().slice(0, lead) &&
                  query.sym_sizes().slice(0, lead) == value.sym_sizes().slice(0, lead),
              "quest::scaled_dot_product_attention: query, key and value must have the same batch dims, got ",
              query.sym_sizes(), ", ", key.sym_sizes(), ", ", value.sym_sizes());
  TORCH_CHECK(!(is_causal && attn_mask.defined()),
              "quest::scaled_dot_product_attention: pass attn_mask or is_causal, not both (as torch)");
  TORCH_CHECK(dropout_p >= 0 && dropout_p < 1, "quest::scaled_dot_product_attention: dropout_p must be in [0, 1), got ",
              dropout_p);
  o.causal(is_causal).causal_alignment(CausalAlignment::top_left).key_padding_mask({}).attn_bias({})
      .dropout(dropout_p).training(dropout_p > 0).enable_gqa(enable_gqa).scale(scale);
  if (attn_mask.defined()) set_sdpa_mask(attn_mask, query, o);
  AttentionOutput r = attention_forward(as_4d(query), as_4d(key), as_4d(value), o, request);
  std::vector<c10::SymInt> shape(query.sym_sizes().begin(), query.sym_sizes().end());
  shape.back() = value.sym_size(-1);
  r.output = r.output.reshape_symint(shape);
  shape.pop_back();  // (..., Hq, L)
  if (r.logsumexp.defined()) r.logsumexp = r.logsumexp.reshape_symint(shape);
  if (r.weights.defined()) {
    shape.push_back(key.sym_size(-2));
    r.weights = r.weights.reshape_symint(shape);
  }
  return r;
}

Tensor scaled_dot_product_attention(const Tensor& query, const Tensor& key, const Tensor& value,
                                    const Tensor& attn_mask, double dropout_p, bool is_causal,
                                    std::optional<double> scale, bool enable_gqa, AttentionOptions o) {
  return scaled_dot_product_attention_forward(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                              std::move(o), {})
      .output;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v,
                 const AttentionOptions& options) {
  return attention_forward(q, k, v, options, false, false).output;
}

}  // namespace quest
