// LibTorch layer: validate, resolve options into a Plan, then run the reference kernel (through an
// autograd Function) or the composite path (torch ops, torch's autograd).
#include "quest/attention.h"

#include <cmath>
#include <cstdlib>
#include <iomanip>
#include <sstream>

#include "quest/fused.h"
#include "quest/reference.h"

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
  for (Backend b : {Backend::automatic, Backend::reference, Backend::composite, Backend::fused})
    if (name == to_string(b)) return b;
  return std::nullopt;
}

Backend resolve(Backend backend, torch::ScalarType dtype) {
  if (backend == Backend::automatic) {
    if (const char* env = std::getenv("QUEST_ATTENTION_BACKEND"); env && *env) {
      const auto forced = parse_backend(env);
      TORCH_CHECK(forced.has_value(), "quest::attention: QUEST_ATTENTION_BACKEND='", env,
                  "' is not one of automatic, reference, composite, fused");
      backend = *forced;
    }
  }
  if (backend == Backend::automatic)  // the fastest path for the dtype
    return dtype == torch::kFloat ? Backend::fused : Backend::composite;
  TORCH_CHECK(backend != Backend::fused || dtype == torch::kFloat,
              "quest::attention: the fused backend computes in float32 only, got ", dtype,
              "; use the composite or reference backend");
  return backend;
}

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Everything the kernels need, resolved from the options once.
struct Plan {
  AttentionDims dims;
  Norm q_norm = Norm::none, k_norm = Norm::none;
  double scale = 1.0, l2_eps = 1e-6, layernorm_eps = 1e-5;
  bool causal = false;
  double dropout = 0.0;  // 0 unless training
  uint64_t seed = 0;
};

void check_input(const Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), "quest::attention: ", name, " is undefined");
  TORCH_CHECK(t.device().is_cpu(), "quest::attention: ", name, " is on ", t.device(),
              "; quest runs on CPU tensors only");
  TORCH_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble,
              "quest::attention: ", name, " has dtype ", t.scalar_type(),
              "; expected float32 or float64");
  TORCH_CHECK(t.dim() == 4, "quest::attention: ", name, " must have rank 4 (B, H, N, D), got rank ",
              t.dim(), " with shape ", t.sizes());
  TORCH_CHECK(t.numel() > 0, "quest::attention: ", name, " is empty (shape ", t.sizes(),
              "); every dimension must be at least 1");
}

void check_param(const Tensor& t, const char* name, int64_t size, const Tensor& like) {
  if (!t.defined()) return;
  TORCH_CHECK(t.device().is_cpu(), "quest::attention: ", name, " is on ", t.device(),
              "; quest runs on CPU tensors only");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "quest::attention: ", name, " has dtype ",
              t.scalar_type(), " but q has ", like.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == size, "quest::attention: ", name,
              " must have shape [", size, "], got ", t.sizes());
}

void check_finite(const Tensor& t, const char* name) {
  if (!t.defined()) return;
  TORCH_CHECK(torch::isfinite(t).all().item<bool>(), "quest::attention: ", name,
              " contains NaN or Inf");
}

Plan make_plan(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o) {
  check_input(q, "q");
  check_input(k, "k");
  check_input(v, "v");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "quest::attention: q, k, v must share a dtype, got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0),
              "quest::attention: batch sizes differ: q ", q.sizes(), ", k ", k.sizes(), ", v ",
              v.sizes());
  TORCH_CHECK(k.size(1) == q.size(1) && v.size(1) == q.size(1),
              "quest::attention: head counts differ: q ", q.sizes(), ", k ", k.sizes(), ", v ",
              v.sizes());
  TORCH_CHECK(k.size(3) == q.size(3), "quest::attention: q and k head dims differ: q ", q.sizes(),
              ", k ", k.sizes());
  TORCH_CHECK(v.size(2) == k.size(2), "quest::attention: k and v key counts differ: k ", k.sizes(),
              ", v ", v.sizes());
  Plan p;
  p.dims = {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  const KindTraits t = traits(o.kind());
  p.q_norm = t.q_norm;
  p.k_norm = t.k_norm;
  p.scale = o.scale().value_or(default_scale(o.kind(), p.dims.qk_dim));
  TORCH_CHECK(std::isfinite(p.scale), "quest::attention: scale must be finite, got ", p.scale);
  p.l2_eps = o.l2_eps();
  p.layernorm_eps = o.layernorm_eps();
  TORCH_CHECK(p.l2_eps > 0 && std::isfinite(p.l2_eps), "quest::attention: l2_eps must be > 0, got ",
              p.l2_eps);
  TORCH_CHECK(p.layernorm_eps > 0 && std::isfinite(p.layernorm_eps),
              "quest::attention: layernorm_eps must be > 0, got ", p.layernorm_eps);
  p.causal = o.causal();
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, "quest::attention: dropout must be in [0, 1), got ",
              o.dropout());
  p.dropout = o.training() ? o.dropout() : 0.0;
  if (p.dropout > 0)
    p.seed = o.seed() ? *o.seed()
                      : static_cast<uint64_t>(
                            torch::randint(std::numeric_limits<int64_t>::max(), {1}, torch::kLong)
                                .item<int64_t>());

  const Tensor& m = o.key_padding_mask();
  if (m.defined()) {
    TORCH_CHECK(m.scalar_type() == torch::kBool, "quest::attention: key_padding_mask has dtype ",
                m.scalar_type(), "; expected bool (true = padding)");
    TORCH_CHECK(m.device().is_cpu(), "quest::attention: key_padding_mask is on ", m.device());
    TORCH_CHECK(m.dim() == 2 && m.size(0) == p.dims.batch && m.size(1) == p.dims.k_len,
                "quest::attention: key_padding_mask must have shape [B, Nk] = [", p.dims.batch,
                ", ", p.dims.k_len, "], got ", m.sizes());
  }
  check_param(o.head_scale(), "head_scale", p.dims.heads, q);
  for (auto [t, name] : {std::pair{&o.q_norm_weight(), "q_norm_weight"},
                         {&o.q_norm_bias(), "q_norm_bias"},
                         {&o.k_norm_weight(), "k_norm_weight"},
                         {&o.k_norm_bias(), "k_norm_bias"}})
    check_param(*t, name, p.dims.qk_dim, q);
  if (o.check_finite()) {
    check_finite(q, "q");
    check_finite(k, "k");
    check_finite(v, "v");
    check_finite(o.head_scale(), "head_scale");
    check_finite(o.q_norm_weight(), "q_norm_weight");
    check_finite(o.q_norm_bias(), "q_norm_bias");
    check_finite(o.k_norm_weight(), "k_norm_weight");
    check_finite(o.k_norm_bias(), "k_norm_bias");
  }
  return p;
}

template <typename T>
View4<T> view4(const Tensor& t) {
  View4<T> v;
  v.data = t.data_ptr<std::remove_const_t<T>>();
  for (int d = 0; d < 4; ++d) v.stride[d] = t.stride(d);
  return v;
}

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Tensors of one call, in the order the autograd Function takes them.
struct Inputs {
  Tensor q, k, v, head_scale, q_weight, q_bias, k_weight, k_bias, key_padding_mask;
};

template <typename T>
AttentionArgs<T> make_args(const Plan& p, const Inputs& in) {
  AttentionArgs<T> a;
  a.dims = p.dims;
  a.q = view4<const T>(in.q);
  a.k = view4<const T>(in.k);
  a.v = view4<const T>(in.v);
  a.q_norm = p.q_norm;
  a.k_norm = p.k_norm;
  a.scale = p.scale;
  a.head_scale = ptr_or_null<T>(in.head_scale);
  a.q_ln_weight = ptr_or_null<T>(in.q_weight);
  a.q_ln_bias = ptr_or_null<T>(in.q_bias);
  a.k_ln_weight = ptr_or_null<T>(in.k_weight);
  a.k_ln_bias = ptr_or_null<T>(in.k_bias);
  a.l2_eps = p.l2_eps;
  a.layernorm_eps = p.layernorm_eps;
  a.causal = p.causal;
  if (in.key_padding_mask.defined()) {
    a.key_padding_mask = in.key_padding_mask.data_ptr<bool>();
    a.key_padding_stride[0] = in.key_padding_mask.stride(0);
    a.key_padding_stride[1] = in.key_padding_mask.stride(1);
  }
  a.dropout = p.dropout;
  a.seed = p.seed;
  return a;
}

// LibTorch 1.13's custom Functions reject undefined inputs: absent optional tensors travel as
// empty placeholders and are turned back into undefined ones inside.
Tensor placeholder_if_undefined(const Tensor& t, const Tensor& like) {
  return t.defined() ? t : torch::empty({0}, like.options());
}
Tensor undefined_if_placeholder(const Tensor& t) {
  return t.numel() == 0 ? Tensor() : t.contiguous();
}

void save_plan(AutogradContext* ctx, const Plan& plan) {
  const AttentionDims& d = plan.dims;
  ctx->saved_data["dims"] = std::vector<int64_t>{d.batch, d.heads, d.q_len,
                                                 d.k_len, d.qk_dim, d.v_dim};
  ctx->saved_data["norms"] = std::vector<int64_t>{static_cast<int64_t>(plan.q_norm),
                                                  static_cast<int64_t>(plan.k_norm)};
  ctx->saved_data["reals"] = std::vector<double>{plan.scale, plan.l2_eps, plan.layernorm_eps,
                                                 plan.dropout};
  ctx->saved_data["causal"] = plan.causal;
  ctx->saved_data["seed"] = static_cast<int64_t>(plan.seed);
}

Plan load_plan(AutogradContext* ctx) {
  Plan plan;
  const auto dims = ctx->saved_data["dims"].toIntVector();
  plan.dims = {dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]};
  const auto norms = ctx->saved_data["norms"].toIntVector();
  plan.q_norm = static_cast<Norm>(norms[0]);
  plan.k_norm = static_cast<Norm>(norms[1]);
  const auto reals = ctx->saved_data["reals"].toDoubleVector();
  plan.scale = reals[0];
  plan.l2_eps = reals[1];
  plan.layernorm_eps = reals[2];
  plan.dropout = reals[3];
  plan.causal = ctx->saved_data["causal"].toBool();
  plan.seed = static_cast<uint64_t>(ctx->saved_data["seed"].toInt());
  return plan;
}

// Parameter gradients the backward kernels write: zero tensors where the parameter exists.
Tensor grad_like(const Tensor& t) { return t.defined() ? torch::zeros_like(t) : Tensor(); }

// Autograd wrapper of the reference kernel. Saved context: inputs and the per-row logsumexp.
class ReferenceFunction : public torch::autograd::Function<ReferenceFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, Tensor q, Tensor k, Tensor v,
                               Tensor head_scale, Tensor q_weight, Tensor q_bias, Tensor k_weight,
                               Tensor k_bias, Tensor key_padding_mask, const Plan& plan,
                               HeadDiagnostics* diagnostics) {
    const Inputs in{q, k, v, undefined_if_placeholder(head_scale),
                    undefined_if_placeholder(q_weight), undefined_if_placeholder(q_bias),
                    undefined_if_placeholder(k_weight), undefined_if_placeholder(k_bias),
                    undefined_if_placeholder(key_padding_mask)};
    const AttentionDims& d = plan.dims;
    Tensor out = torch::empty({d.batch, d.heads, d.q_len, d.v_dim}, q.options());
    // The oracle keeps its logsumexp in double whatever the input dtype.
    Tensor lse = torch::empty({d.batch, d.heads, d.q_len}, q.options().dtype(torch::kDouble));
    std::vector<HeadDiagnosticsPartial> partials(diagnostics ? d.batch * d.heads : 0);
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "quest_reference_forward", [&] {
      reference::forward<scalar_t>(make_args<scalar_t>(plan, in), view4<scalar_t>(out),
                                   lse.data_ptr<double>(),
                                   diagnostics ? partials.data() : nullptr);
    });
    if (diagnostics) *diagnostics = reduce(partials, d.heads);
    ctx->save_for_backward({in.q, in.k, in.v, head_scale, q_weight, q_bias, k_weight, k_bias,
                            key_padding_mask, lse});
    save_plan(ctx, plan);
    ctx->mark_non_differentiable({lse});
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Inputs in{saved[0],
                    saved[1],
                    saved[2],
                    undefined_if_placeholder(saved[3]),
                    undefined_if_placeholder(saved[4]),
                    undefined_if_placeholder(saved[5]),
                    undefined_if_placeholder(saved[6]),
                    undefined_if_placeholder(saved[7]),
                    undefined_if_placeholder(saved[8])};
    const Tensor& lse = saved[9];
    const Plan plan = load_plan(ctx);

    Tensor dout = grad_outputs[0];
    if (!dout.defined()) dout = torch::zeros({plan.dims.batch, plan.dims.heads, plan.dims.q_len,
                                              plan.dims.v_dim}, in.q.options());
    Tensor dq = torch::empty(in.q.sizes(), in.q.options());
    Tensor dk = torch::empty(in.k.sizes(), in.k.options());
    Tensor dv = torch::empty(in.v.sizes(), in.v.options());
    Tensor dscale = grad_like(in.head_scale), dqw = grad_like(in.q_weight),
           dqb = grad_like(in.q_bias), dkw = grad_like(in.k_weight), dkb = grad_like(in.k_bias);
    AT_DISPATCH_FLOATING_TYPES(in.q.scalar_type(), "quest_reference_backward", [&] {
      AttentionGrads<scalar_t> g;
      g.dq = view4<scalar_t>(dq);
      g.dk = view4<scalar_t>(dk);
      g.dv = view4<scalar_t>(dv);
      auto out_ptr = [](Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
      g.dhead_scale = out_ptr(dscale);
      g.dq_ln_weight = out_ptr(dqw);
      g.dq_ln_bias = out_ptr(dqb);
      g.dk_ln_weight = out_ptr(dkw);
      g.dk_ln_bias = out_ptr(dkb);
      reference::backward<scalar_t>(make_args<scalar_t>(plan, in), view4<const scalar_t>(dout),
                                    lse.data_ptr<double>(), g);
    });
    return {dq, dk, dv, dscale, dqw, dqb, dkw, dkb, Tensor(), Tensor(), Tensor()};
  }
};

// Autograd wrapper of the fused kernel. LayerNorm kinds arrive here already normalised (by
// torch::layer_norm, whose autograd carries the affine gradients). Saved: q, k, v, O, lse.
class FusedFunction : public torch::autograd::Function<FusedFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, Tensor q, Tensor k, Tensor v,
                               Tensor head_scale, Tensor key_padding_mask, const Plan& plan,
                               HeadDiagnostics* diagnostics) {
    const Inputs in{unit_stride(q), unit_stride(k), unit_stride(v),
                    undefined_if_placeholder(head_scale), {}, {}, {}, {},
                    undefined_if_placeholder(key_padding_mask)};
    const AttentionDims& d = plan.dims;
    Tensor out = torch::empty({d.batch, d.heads, d.q_len, d.v_dim}, q.options());
    Tensor stats = torch::empty({2, d.batch, d.heads, d.q_len}, q.options());  // shift, log_sum
    std::vector<HeadDiagnosticsPartial> partials(diagnostics ? d.batch * d.heads : 0);
    fused::forward(make_args<float>(plan, in), view4<float>(out), row_stats(stats),
                   diagnostics ? partials.data() : nullptr, at::get_num_threads());
    if (diagnostics) *diagnostics = reduce(partials, d.heads);
    ctx->save_for_backward({in.q, in.k, in.v, head_scale, key_padding_mask, out, stats});
    save_plan(ctx, plan);
    ctx->mark_non_differentiable({stats});
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Inputs in{saved[0], saved[1], saved[2], undefined_if_placeholder(saved[3]),
                    {},       {},       {},       {},
                    undefined_if_placeholder(saved[4])};
    const Tensor &out = saved[5], &stats = saved[6];
    const Plan plan = load_plan(ctx);
    Tensor dout = grad_outputs[0].defined() ? unit_stride(grad_outputs[0]) : torch::zeros_like(out);
    Tensor dq = torch::empty(in.q.sizes(), in.q.options());
    Tensor dk = torch::empty(in.k.sizes(), in.k.options());
    Tensor dv = torch::empty(in.v.sizes(), in.v.options());
    Tensor dscale = grad_like(in.head_scale);
    AttentionGrads<float> g;
    g.dq = view4<float>(dq);
    g.dk = view4<float>(dk);
    g.dv = view4<float>(dv);
    g.dhead_scale = dscale.defined() ? dscale.data_ptr<float>() : nullptr;
    fused::backward(make_args<float>(plan, in), view4<const float>(out),
                    view4<const float>(dout), row_stats(stats), g, at::get_num_threads());
    return {dq, dk, dv, dscale, Tensor(), Tensor(), Tensor()};
  }

 private:
  static fused::RowStats row_stats(const Tensor& stats) {
    return {stats[0].data_ptr<float>(), stats[1].data_ptr<float>()};
  }
  // The fused kernel reads rows with unit stride along D; other layouts are copied once.
  static Tensor unit_stride(const Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); }
};

Tensor normalise(const Tensor& x, Norm norm, const Tensor& weight, const Tensor& bias,
                 const Plan& p) {
  switch (norm) {
    case Norm::none: return x;
    case Norm::l2: return x / x.norm(2, -1, /*keepdim=*/true).clamp_min(p.l2_eps);
    case Norm::layer:
      return torch::layer_norm(x, {x.size(-1)}, weight, bias, p.layernorm_eps);
  }
  return x;
}

// Keys hidden from each query: (B or 1, 1, Nq, Nk) bool, or undefined if every key is visible.
Tensor hidden_keys(const Plan& p, const Tensor& key_padding_mask) {
  Tensor hidden;
  if (p.causal)  // key j > query i is hidden
    hidden = torch::ones({p.dims.q_len, p.dims.k_len}, torch::kBool).triu(1).view(
        {1, 1, p.dims.q_len, p.dims.k_len});
  if (key_padding_mask.defined()) {
    Tensor pad = key_padding_mask.view({p.dims.batch, 1, 1, p.dims.k_len});
    hidden = hidden.defined() ? hidden.logical_or(pad) : pad;
  }
  return hidden;
}

struct CompositeResult {
  Tensor output, weights;
  std::optional<HeadDiagnostics> diagnostics;
};

// Per-head mean / max of the raw |q| and |k| (padded keys left out) into d.
void fill_norm_diagnostics(const Tensor& q, const Tensor& k, const Tensor& key_padding_mask,
                           HeadDiagnostics& d) {
  torch::NoGradGuard no_grad;
  const int64_t heads = q.size(1);
  const Tensor qn = q.to(torch::kDouble).norm(2, -1).transpose(0, 1).reshape({heads, -1});
  const Tensor kn = k.to(torch::kDouble).norm(2, -1).transpose(0, 1).reshape({heads, -1});
  Tensor kvalid = torch::ones_like(kn, torch::kBool);
  if (key_padding_mask.defined())
    kvalid = key_padding_mask.logical_not().unsqueeze(0).expand({heads, k.size(0), k.size(2)})
                 .reshape({heads, -1});
  const Tensor kcount = kvalid.sum(1).to(torch::kDouble);
  const Tensor kmean = (kn * kvalid).sum(1) / kcount.clamp_min(1);
  const Tensor kmax = (kn * kvalid).amax(1);
  const Tensor qmean = qn.mean(1), qmax = qn.amax(1);
  for (int64_t h = 0; h < heads; ++h) {
    d.q_norm_mean[h] = qmean[h].item<double>();
    d.q_norm_max[h] = qmax[h].item<double>();
    d.k_norm_mean[h] = kmean[h].item<double>();
    d.k_norm_max[h] = kmax[h].item<double>();
  }
}

// Diagnostics from the logits s (B, H, Nq, Nk) the composite path materialises anyway.
HeadDiagnostics composite_diagnostics(const Tensor& q, const Tensor& k, const Tensor& s,
                                      const Tensor& hidden, const Tensor& key_padding_mask) {
  torch::NoGradGuard no_grad;
  const int64_t heads = q.size(1);
  HeadDiagnostics d;
  d.resize(heads);
  fill_norm_diagnostics(q, k, key_padding_mask, d);
  Tensor sd = s.to(torch::kDouble);
  Tensor visible = torch::ones_like(sd, torch::kBool);
  if (hidden.defined()) visible = hidden.logical_not().expand_as(sd);
  const Tensor s0 = sd.masked_fill(visible.logical_not(), 0);
  const Tensor logit_max = s0.abs().transpose(0, 1).reshape({heads, -1}).amax(1);
  const Tensor row_valid = visible.any(-1);  // (B, H, Nq)
  const Tensor lse = sd.masked_fill(visible.logical_not(), -INFINITY).logsumexp(-1);
  const Tensor lse0 = lse.masked_fill(row_valid.logical_not(), 0);
  const Tensor p = (sd - lse0.unsqueeze(-1)).exp().masked_fill(visible.logical_not(), 0);
  const Tensor entropy = (lse0 - (p * s0).sum(-1)).masked_fill(row_valid.logical_not(), 0);
  const Tensor ent_sum = entropy.transpose(0, 1).reshape({heads, -1}).sum(1);
  const Tensor ent_rows = row_valid.transpose(0, 1).reshape({heads, -1}).sum(1).to(torch::kDouble);
  const Tensor ent_mean = ent_sum / ent_rows.clamp_min(1);
  for (int64_t h = 0; h < heads; ++h) {
    d.logit_abs_max[h] = logit_max[h].item<double>();
    d.entropy_mean[h] = ent_mean[h].item<double>();
  }
  return d;
}

// matmul -> softmax -> matmul with torch ops; torch's autograd differentiates it.
CompositeResult composite(const Inputs& in, const Plan& p, bool need_diagnostics) {
  const Tensor qn = normalise(in.q, p.q_norm, in.q_weight, in.q_bias, p);
  const Tensor kn = normalise(in.k, p.k_norm, in.k_weight, in.k_bias, p);
  Tensor s = torch::matmul(qn, kn.transpose(-2, -1));
  s = in.head_scale.defined() ? s * in.head_scale.view({1, -1, 1, 1}) : s * p.scale;
  const Tensor hidden = hidden_keys(p, in.key_padding_mask);
  CompositeResult r;
  if (need_diagnostics) r.diagnostics = composite_diagnostics(in.q, in.k, s, hidden,
                                                              in.key_padding_mask);
  Tensor probs;
  if (hidden.defined()) {
    // Rows that see no key get finite logits before softmax and zero weights after it, so
    // neither the output nor any gradient holds NaN.
    const Tensor empty_row = hidden.all(-1, /*keepdim=*/true);
    Tensor sm = s.masked_fill(hidden, -INFINITY).masked_fill(empty_row, 0);
    probs = torch::softmax(sm, -1).masked_fill(hidden, 0);
  } else {
    probs = torch::softmax(s, -1);
  }
  r.weights = probs;
  if (p.dropout > 0) {
    Tensor keep = torch::empty({p.dims.batch, p.dims.heads, p.dims.q_len, p.dims.k_len},
                               torch::kBool);
    dropout_keep_mask(p.seed, p.dropout, p.dims, keep.data_ptr<bool>());
    probs = probs * keep.to(probs.scalar_type()) * (1.0 / (1.0 - p.dropout));
  }
  r.output = torch::matmul(probs, in.v);
  return r;
}

}  // namespace

AttentionOutput attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionOptions& options, bool need_weights,
                                  bool need_diagnostics) {
  const Plan plan = make_plan(q, k, v, options);
  const Inputs in{q, k, v, options.head_scale(), options.q_norm_weight(), options.q_norm_bias(),
                  options.k_norm_weight(), options.k_norm_bias(),
                  options.key_padding_mask().defined() ? options.key_padding_mask().contiguous()
                                                       : Tensor()};
  AttentionOutput result;
  const Backend backend = resolve(options.backend(), q.scalar_type());
  auto pass = [&](const Tensor& t) { return placeholder_if_undefined(t, q); };
  if (backend == Backend::fused) {
    // LayerNorm kinds: normalise with torch (autograd for the affine), then plain dot products.
    Plan fused_plan = plan;
    Tensor qf = in.q, kf = in.k;
    if (plan.q_norm == Norm::layer) {
      qf = normalise(in.q, Norm::layer, in.q_weight, in.q_bias, plan);
      fused_plan.q_norm = Norm::none;
    }
    if (plan.k_norm == Norm::layer) {
      kf = normalise(in.k, Norm::layer, in.k_weight, in.k_bias, plan);
      fused_plan.k_norm = Norm::none;
    }
    HeadDiagnostics diagnostics;
    result.output = FusedFunction::apply(
        qf, kf, in.v, pass(in.head_scale),
        placeholder_if_undefined(in.key_padding_mask, torch::empty({0}, torch::kBool)),
        fused_plan, need_diagnostics ? &diagnostics : nullptr)[0];
    if (need_diagnostics) {
      // Norms are of the raw inputs, as on every path.
      if (fused_plan.q_norm != plan.q_norm || fused_plan.k_norm != plan.k_norm)
        fill_norm_diagnostics(in.q, in.k, in.key_padding_mask, diagnostics);
      result.diagnostics = diagnostics;
    }
    if (need_weights) {
      torch::NoGradGuard no_grad;
      result.weights = composite(in, plan, false).weights;
    }
  } else if (backend == Backend::reference) {
    HeadDiagnostics diagnostics;
    result.output = ReferenceFunction::apply(
        in.q, in.k, in.v, pass(in.head_scale), pass(in.q_weight), pass(in.q_bias),
        pass(in.k_weight), pass(in.k_bias),
        placeholder_if_undefined(in.key_padding_mask, torch::empty({0}, torch::kBool)), plan,
        need_diagnostics ? &diagnostics : nullptr)[0];
    if (need_diagnostics) result.diagnostics = diagnostics;
    if (need_weights) {
      torch::NoGradGuard no_grad;
      result.weights = composite(in, plan, false).weights;
    }
  } else {
    CompositeResult r = composite(in, plan, need_diagnostics);
    result.output = r.output;
    result.diagnostics = r.diagnostics;
    if (need_weights) result.weights = r.weights.detach();
  }
  return result;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v,
                 const AttentionOptions& options) {
  return attention_forward(q, k, v, options, false, false).output;
}

std::string format_diagnostics(const HeadDiagnostics& d) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(3);
  os << "head   |q| mean   |q| max   |k| mean   |k| max   max|logit|   entropy\n";
  for (size_t h = 0; h < d.q_norm_mean.size(); ++h)
    os << std::setw(4) << h << std::setw(11) << d.q_norm_mean[h] << std::setw(10)
       << d.q_norm_max[h] << std::setw(11) << d.k_norm_mean[h] << std::setw(10) << d.k_norm_max[h]
       << std::setw(13) << d.logit_abs_max[h] << std::setw(10) << d.entropy_mean[h] << "\n";
  return os.str();
}

}  // namespace quest
