// quest's operators in the dispatcher (TORCH_LIBRARY): torch.ops.quest.* from Python and
// TorchScript, over the same quest::attention as the C++ API. Built as its own shared library
// (libquest_ops.so, loaded by torch.ops.load_library) because static registrations inside an
// archive would be dropped by the linker.
//
// These are registered as CompositeImplicitAutograd: quest::attention is already differentiable
// (the fused and reference backends through the kernel operators' autograd kernels, the composite
// through torch's), so autograd, TorchScript, inference mode and torch.compile reach the same code.
#include <ATen/autocast_mode.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "quest/core/fused.h"
#include "quest/torch/attention.h"
#include "quest/torch/runtime.h"
#include "kernel_ops.h"

namespace quest {
namespace {

using torch::Tensor;

Tensor or_undefined(const c10::optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }

// Every argument the schemas below share, in schema order, as one AttentionOptions.
AttentionOptions options_of(c10::string_view kind, bool causal, c10::string_view causal_alignment,
                            const c10::optional<Tensor>& key_padding_mask, double dropout_p,
                            bool training, c10::optional<double> scale,
                            const c10::optional<Tensor>& head_scale,
                            const c10::optional<Tensor>& q_norm_weight,
                            const c10::optional<Tensor>& q_norm_bias,
                            const c10::optional<Tensor>& k_norm_weight,
                            const c10::optional<Tensor>& k_norm_bias, c10::optional<int64_t> seed,
                            c10::string_view backend, bool check_finite, double l2_eps,
                            double layernorm_eps, const c10::optional<Tensor>& attn_bias,
                            bool enable_gqa) {
  const std::string_view kind_name(kind.data(), kind.size());
  const std::optional<Kind> k = parse_kind(kind_name);
  TORCH_CHECK_VALUE(k.has_value(), "quest.attention: unknown kind '", kind_name,
                    "'; expected one of standard, quest, qnorm, qknorm, qk_layernorm");
  const std::string_view backend_name(backend.data(), backend.size());
  const std::optional<Backend> b = parse_backend(backend_name);
  TORCH_CHECK_VALUE(b.has_value(), "quest.attention: unknown backend '", backend_name,
                    "'; expected one of auto, fused, composite, reference, sdpa");
  const std::string_view alignment_name(causal_alignment.data(), causal_alignment.size());
  const std::optional<CausalAlignment> alignment = parse_causal_alignment(alignment_name);
  TORCH_CHECK_VALUE(alignment.has_value(), "quest.attention: unknown causal_alignment '",
                    alignment_name, "'; expected top_left or bottom_right");
  TORCH_CHECK_VALUE(!seed.has_value() || *seed >= 0, "quest.attention: seed must be >= 0, got ",
                    *seed);
  AttentionOptions o(*k);
  o.causal(causal)
      .causal_alignment(*alignment)
      .key_padding_mask(or_undefined(key_padding_mask))
      .dropout(dropout_p)
      .training(training)
      .head_scale(or_undefined(head_scale))
      .q_norm_weight(or_undefined(q_norm_weight))
      .q_norm_bias(or_undefined(q_norm_bias))
      .k_norm_weight(or_undefined(k_norm_weight))
      .k_norm_bias(or_undefined(k_norm_bias))
      .backend(*b)
      .check_finite(check_finite)
      .l2_eps(l2_eps)
      .layernorm_eps(layernorm_eps)
      .attn_bias(or_undefined(attn_bias))
      .enable_gqa(enable_gqa);
  if (scale.has_value()) o.scale(*scale);
  if (seed.has_value()) o.seed(static_cast<uint64_t>(*seed));
  return o;
}

// The argument list after (q, k, v) that every op takes; keyword-only after `kind`.
#define QUEST_OPTION_SCHEMA                                                                      \
  "str kind=\"quest\", *, bool causal=False, str causal_alignment=\"top_left\", "               \
  "Tensor? key_padding_mask=None, "                                                             \
  "float dropout_p=0.0, bool training=False, float? scale=None, Tensor? head_scale=None, "       \
  "Tensor? q_norm_weight=None, Tensor? q_norm_bias=None, Tensor? k_norm_weight=None, "           \
  "Tensor? k_norm_bias=None, int? seed=None, str backend=\"auto\", bool check_finite=True, "     \
  "float l2_eps=1e-06, float layernorm_eps=1e-05, Tensor? attn_bias=None, bool enable_gqa=False"

#define QUEST_OPTION_PARAMS                                                                      \
  c10::string_view kind, bool causal, c10::string_view causal_alignment,                        \
      const c10::optional<Tensor>&key_padding_mask,                                              \
      double dropout_p, bool training, c10::optional<double> scale,                              \
      const c10::optional<Tensor>&head_scale, const c10::optional<Tensor>&q_norm_weight,         \
      const c10::optional<Tensor>&q_norm_bias, const c10::optional<Tensor>&k_norm_weight,        \
      const c10::optional<Tensor>&k_norm_bias, c10::optional<int64_t> seed,                      \
      c10::string_view backend, bool check_finite, double l2_eps, double layernorm_eps,           \
      const c10::optional<Tensor>&attn_bias, bool enable_gqa

#define QUEST_OPTION_ARGS                                                                        \
  options_of(kind, causal, causal_alignment, key_padding_mask, dropout_p, training, scale, head_scale,            \
             q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, seed, backend,              \
             check_finite, l2_eps, layernorm_eps, attn_bias, enable_gqa)

Tensor attention_op(const Tensor& q, const Tensor& k, const Tensor& v, QUEST_OPTION_PARAMS) {
  return attention(q, k, v, QUEST_OPTION_ARGS);
}

Tensor attention_packed_op(const Tensor& qkv, int64_t heads, QUEST_OPTION_PARAMS) {
  return attention_packed(qkv, heads, QUEST_OPTION_ARGS);
}

// Diagnostics as the operators return them: (7, H) float64, eager (reduced on the host) or traced
// (the graph's own reduction); an empty tensor when not asked for.
Tensor diagnostics_of(const AttentionOutput& r, const Tensor& none) {
  if (r.diagnostics) return detail::diagnostics_tensor(*r.diagnostics);
  return r.traced_diagnostics.defined() ? r.traced_diagnostics : none;
}

// SDPA's arguments first, then quest's (kind and the extras) keyword-only.
Tensor sdpa_op(const Tensor& query, const Tensor& key, const Tensor& value,
               const c10::optional<Tensor>& attn_mask, double dropout_p, bool is_causal,
               c10::optional<double> scale, bool enable_gqa, c10::string_view kind,
               const c10::optional<Tensor>& head_scale, const c10::optional<Tensor>& q_norm_weight,
               const c10::optional<Tensor>& q_norm_bias, const c10::optional<Tensor>& k_norm_weight,
               const c10::optional<Tensor>& k_norm_bias, c10::optional<int64_t> seed,
               c10::string_view backend, bool check_finite, double l2_eps, double layernorm_eps) {
  const AttentionOptions o = options_of(kind, false, "top_left", c10::nullopt, 0.0, false, c10::nullopt,
                                        head_scale, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias,
                                        seed, backend, check_finite, l2_eps, layernorm_eps, c10::nullopt,
                                        false);
  return scaled_dot_product_attention(query, key, value, or_undefined(attn_mask), dropout_p, is_causal,
                                      scale.has_value() ? std::optional<double>(*scale) : std::nullopt,
                                      enable_gqa, o);
}

// (output, logsumexp (..., Hq, L) float32 or an empty tensor, max logit (Hq,) float32 or an empty tensor).
std::tuple<Tensor, Tensor, Tensor> sdpa_forward_op(
    const Tensor& query, const Tensor& key, const Tensor& value, const c10::optional<Tensor>& attn_mask,
    double dropout_p, bool is_causal, c10::optional<double> scale, bool enable_gqa, c10::string_view kind,
    const c10::optional<Tensor>& head_scale, const c10::optional<Tensor>& q_norm_weight,
    const c10::optional<Tensor>& q_norm_bias, const c10::optional<Tensor>& k_norm_weight,
    const c10::optional<Tensor>& k_norm_bias, c10::optional<int64_t> seed, c10::string_view backend,
    bool check_finite, double l2_eps, double layernorm_eps, bool need_logsumexp, bool need_max_logit) {
  const AttentionOptions o = options_of(kind, false, "top_left", c10::nullopt, 0.0, false, c10::nullopt,
                                        head_scale, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias,
                                        seed, backend, check_finite, l2_eps, layernorm_eps, c10::nullopt,
                                        false);
  AttentionRequest request;
  request.logsumexp = need_logsumexp;
  request.diagnostics = need_max_logit;
  const AttentionOutput r = scaled_dot_product_attention_forward(
      query, key, value, or_undefined(attn_mask), dropout_p, is_causal,
      scale.has_value() ? std::optional<double>(*scale) : std::nullopt, enable_gqa, o, request);
  const Tensor none = torch::empty({0}, query.options().dtype(torch::kFloat));
  return {r.output, need_logsumexp ? r.logsumexp : none,
          need_max_logit ? diagnostics_of(r, none)[6].to(torch::kFloat) : none};
}

// (output, weights or an empty tensor, diagnostics (7, H) float64 or an empty tensor).
std::tuple<Tensor, Tensor, Tensor> attention_forward_op(const Tensor& q, const Tensor& k,
                                                        const Tensor& v, QUEST_OPTION_PARAMS,
                                                        bool need_weights, bool need_diagnostics) {
  AttentionOutput r = attention_forward(q, k, v, QUEST_OPTION_ARGS, need_weights, need_diagnostics);
  const Tensor none = torch::empty({0});
  return {r.output, need_weights ? r.weights : none,
          diagnostics_of(r, none)};
}

// As attention_forward_op, from a packed (B, N, 3E) projection; the output is (B, N, E).
std::tuple<Tensor, Tensor, Tensor> attention_packed_forward_op(const Tensor& qkv, int64_t heads,
                                                               QUEST_OPTION_PARAMS, bool need_weights,
                                                               bool need_diagnostics) {
  AttentionOutput r = attention_packed_forward(qkv, heads, QUEST_OPTION_ARGS, need_weights, need_diagnostics);
  const Tensor none = torch::empty({0});
  return {r.output, need_weights ? r.weights : none,
          diagnostics_of(r, none)};
}

// (the backend that would run, why each one before it was not taken).
std::tuple<std::string, std::vector<std::string>> select_backend_op(const Tensor& q,
                                                                    const Tensor& k,
                                                                    const Tensor& v,
                                                                    QUEST_OPTION_PARAMS) {
  const BackendSelection s = select_backend(q, k, v, QUEST_OPTION_ARGS);
  return {to_string(s.backend), s.rejected};
}

// What a benchmark must report: the fused kernel's SIMD target and the BLAS behind torch's matmul.
c10::Dict<std::string, std::string> runtime_op() {
  const BlasInfo blas = detect_blas();
  c10::Dict<std::string, std::string> r;
  r.insert("simd_target", fused::simd_target());
  r.insert("bf16_products", !fused::bf16_dot_runs() ? "none" : bf16_products_enabled() ? "vdpbf16ps" : "disabled");
  r.insert("blas", blas.name);
  r.insert("blas_library", blas.library);
  r.insert("blas_core", blas.core);
  std::string openmp;
  for (const std::string& path : openmp_runtimes()) openmp += (openmp.empty() ? "" : ";") + path;
  r.insert("openmp_runtimes", openmp);
  r.insert("torch", torch_version());
  return r;
}

}  // namespace
}  // namespace quest

// pt2_compliant: torch.compile traces them (fullgraph) into quest's kernel operators
// (src/torch/kernel_ops.cpp) and torch ops; the fused and reference kernels' diagnostics too
// (quest::_reduce_diagnostics), the composite's and sdpa's are eager-only.
TORCH_LIBRARY(quest, m) {
  const std::vector<at::Tag> pt2 = {at::Tag::pt2_compliant_tag};
  m.def("attention(Tensor q, Tensor k, Tensor v, " QUEST_OPTION_SCHEMA ") -> Tensor",
        &quest::attention_op, pt2);
  m.def("attention_forward(Tensor q, Tensor k, Tensor v, " QUEST_OPTION_SCHEMA
        ", bool need_weights=False, bool need_diagnostics=False) -> (Tensor, Tensor, Tensor)",
        &quest::attention_forward_op, pt2);
  m.def("attention_packed(Tensor qkv, int heads, " QUEST_OPTION_SCHEMA ") -> Tensor",
        &quest::attention_packed_op, pt2);
  m.def("attention_packed_forward(Tensor qkv, int heads, " QUEST_OPTION_SCHEMA
        ", bool need_weights=False, bool need_diagnostics=False) -> (Tensor, Tensor, Tensor)",
        &quest::attention_packed_forward_op, pt2);
  m.def("scaled_dot_product_attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, "
        "float dropout_p=0.0, bool is_causal=False, float? scale=None, bool enable_gqa=False, *, "
        "str kind=\"quest\", Tensor? head_scale=None, Tensor? q_norm_weight=None, Tensor? q_norm_bias=None, "
        "Tensor? k_norm_weight=None, Tensor? k_norm_bias=None, int? seed=None, str backend=\"auto\", "
        "bool check_finite=True, float l2_eps=1e-06, float layernorm_eps=1e-05) -> Tensor",
        &quest::sdpa_op, pt2);
  m.def("scaled_dot_product_attention_forward(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, "
        "float dropout_p=0.0, bool is_causal=False, float? scale=None, bool enable_gqa=False, *, "
        "str kind=\"quest\", Tensor? head_scale=None, Tensor? q_norm_weight=None, Tensor? q_norm_bias=None, "
        "Tensor? k_norm_weight=None, Tensor? k_norm_bias=None, int? seed=None, str backend=\"auto\", "
        "bool check_finite=True, float l2_eps=1e-06, float layernorm_eps=1e-05, bool need_logsumexp=False, "
        "bool need_max_logit=False) -> (Tensor, Tensor, Tensor)",
        &quest::sdpa_forward_op, pt2);
  m.def("select_backend(Tensor q, Tensor k, Tensor v, " QUEST_OPTION_SCHEMA
        ") -> (str, str[])",
        &quest::select_backend_op);
  m.def("runtime() -> Dict(str, str)", &quest::runtime_op);
  m.def("set_bf16_products(bool enabled) -> bool", &quest::set_bf16_products);
  m.def("set_simd_target(str name) -> str",
        [](c10::string_view name) { return quest::set_simd_target(std::string(name)); });
}

namespace quest {
namespace {

// Under torch.autocast: the float32 activations (q, k, v or qkv, and a float mask or bias) in the
// autocast dtype, as torch's own scaled_dot_product_attention (a lower-precision op there), then
// the operator itself with autocast off. The kind's parameters stay as they are (float32 master
// weights); the operator answers in the input dtype (docs/kernels.md: what it computes in bf16).
template <c10::DispatchKey key, c10::DeviceType device>
void autocast_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  static const std::set<std::string> parameters = {"head_scale", "q_norm_weight", "q_norm_bias", "k_norm_weight",
                                                   "k_norm_bias"};
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  const auto dtype = at::autocast::get_autocast_dtype(device);
  const auto& arguments = op.schema().arguments();
  const auto first = stack->end() - static_cast<std::ptrdiff_t>(arguments.size());
  for (size_t i = 0; i < arguments.size(); ++i) {
    c10::IValue& value = *(first + static_cast<std::ptrdiff_t>(i));
    if (!value.isTensor() || parameters.count(arguments[i].name())) continue;
    const Tensor& t = value.toTensor();
    if (t.defined() && t.scalar_type() == torch::kFloat && t.device().type() == device) value = t.to(dtype);
  }
  op.callBoxed(stack);
}

constexpr const char* kAutocastOps[] = {"attention", "attention_forward", "attention_packed",
                                        "attention_packed_forward", "scaled_dot_product_attention",
                                        "scaled_dot_product_attention_forward"};

}  // namespace
}  // namespace quest

TORCH_LIBRARY_IMPL(quest, AutocastCPU, m) {
  for (const char* name : quest::kAutocastOps)
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<
                     &quest::autocast_boxed<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>>());
}

TORCH_LIBRARY_IMPL(quest, AutocastCUDA, m) {
  for (const char* name : quest::kAutocastOps)
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<
                     &quest::autocast_boxed<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>>());
}
