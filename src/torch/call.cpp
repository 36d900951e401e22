#include "call.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "quest/torch/random.h"

namespace quest::detail {

namespace {

using torch::Tensor;

void check_input(const Tensor& t, const char* name, const Tensor& q) {
  TORCH_CHECK(t.defined(), "quest::attention: ", name, " is undefined");
  TORCH_CHECK(t.device() == q.device(), "quest::attention: ", name, " is on ", t.device(), " but q is on ",
              q.device());
  TORCH_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble,
              "quest::attention: ", name, " has dtype ", t.scalar_type(),
              "; expected float32, float64, bfloat16 or float16 (the last two computed in float32)");
  TORCH_CHECK(t.dim() == 4, "quest::attention: ", name, " must have rank 4 (B, H, N, D), got rank ",
              t.dim(), " with shape ", t.sym_sizes());
  TORCH_CHECK(t.sym_numel() > 0, "quest::attention: ", name, " is empty (shape ", t.sym_sizes(),
              "); every dimension must be at least 1");
}

void check_param(const Tensor& t, const char* name, const c10::SymInt& size, const Tensor& like) {
  if (!t.defined()) return;
  TORCH_CHECK(t.device() == like.device(), "quest::attention: ", name, " is on ", t.device(), " but q is on ",
              like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "quest::attention: ", name, " has dtype ",
              t.scalar_type(), " but q has ", like.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.sym_size(0) == size, "quest::attention: ", name,
              " must have shape [", size, "], got ", t.sym_sizes());
}

// Whether n elements are finite: no exponent field all ones (NaN, ±Inf). An integer max over the
// masked bits, which the compiler vectorises (a float compare reduction it may not reorder).
template <typename T>
bool finite_span(const T* p, int64_t n) {
  using U = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
  constexpr U exponent = sizeof(T) == 2   ? U(0x7f80u)       // bfloat16
                         : sizeof(T) == 4 ? U(0x7f800000u)
                                          : U(0x7ff0000000000000ull);
  U worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    U u;
    std::memcpy(&u, p + i, sizeof u);
    worst = std::max<U>(worst, u & exponent);
  }
  return worst != exponent;
}

// Whether every element of a CPU tensor is finite, in one parallel pass read in place (rows along
// the last dimension where the tensor is not contiguous) and without the bool tensor that
// isfinite(t).all() allocates: that check took as long as the fused forward itself at the ViT's shapes.
template <typename T>
bool all_finite_cpu(const Tensor& t) {
  const Tensor x = t.dim() > 0 && t.stride(-1) == 1 ? t : t.contiguous();
  const T* data = x.data_ptr<T>();
  std::atomic<bool> finite{true};
  if (x.is_contiguous()) {
    at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
      if (!finite_span(data + begin, end - begin)) finite.store(false, std::memory_order_relaxed);
    });
    return finite.load();
  }
  const int64_t width = x.size(-1), rows = x.numel() / width, lead = x.dim() - 1;
  at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 16) / width), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> index(lead);  // row `begin` in the leading dimensions, then counted up
    for (int64_t d = lead - 1, rest = begin; d >= 0; --d) {
      index[d] = rest % x.size(d);
      rest /= x.size(d);
    }
    for (int64_t r = begin; r < end; ++r) {
      int64_t offset = 0;
      for (int64_t d = 0; d < lead; ++d) offset += index[d] * x.stride(d);
      if (!finite_span(data + offset, width)) {
        finite.store(false, std::memory_order_relaxed);
        return;
      }
      for (int64_t d = lead - 1; d >= 0 && ++index[d] == x.size(d); --d) index[d] = 0;
    }
  });
  return finite.load();
}

bool all_finite(const Tensor& t) {
  if (t.device().is_cpu() && t.scalar_type() == torch::kFloat) return all_finite_cpu<float>(t);
  if (t.device().is_cpu() && t.scalar_type() == torch::kDouble) return all_finite_cpu<double>(t);
  if (t.device().is_cpu() && t.scalar_type() == torch::kBFloat16) return all_finite_cpu<at::BFloat16>(t);
  return torch::isfinite(t).all().item<bool>();
}

// Traced, the check is a graph op (aten::_assert_async), raising the same message when it runs.
void check_finite(const Tensor& t, const char* name) {
  if (!t.defined()) return;
  if (traced(t)) {
    at::_assert_async(torch::isfinite(t).all(), c10::str("quest::attention: ", name, " contains NaN or Inf"));
    return;
  }
  TORCH_CHECK(all_finite(t), "quest::attention: ", name, " contains NaN or Inf");
}

}  // namespace

bool traced(const Tensor& t) {
  return t.is_meta() || t.key_set().has_any(c10::DispatchKeySet(
                            {c10::DispatchKey::Python, c10::DispatchKey::Functionalize}));
}

int64_t size_of(const Tensor& t, int64_t d) { return t.sym_size(d).guard_int(__FILE__, __LINE__); }

namespace {
// A size where it is known; -1 where torch.compile made it symbolic (see AttentionCall::dims).
int64_t known(const c10::SymInt& size) { return size.maybe_as_int().value_or(-1); }
}  // namespace

namespace {
// The call's tensors in the order their finiteness is checked (and the first bad one named).
std::array<std::pair<const Tensor*, const char*>, 8> finite_checked(const AttentionCall& c) {
  return {{{&c.q, "q"}, {&c.k, "k"}, {&c.v, "v"}, {&c.head_scale, "head_scale"},
           {&c.q_norm_weight, "q_norm_weight"}, {&c.q_norm_bias, "q_norm_bias"},
           {&c.k_norm_weight, "k_norm_weight"}, {&c.k_norm_bias, "k_norm_bias"}}};
}
}  // namespace

void check_call_finite(const AttentionCall& c) {
  const auto checked = finite_checked(c);
  if (c.q.device().is_cpu() || traced(c.q)) {
    for (auto [t, name] : checked) check_finite(*t, name);
    return;
  }
  // Off the CPU every answer costs the host a synchronisation: one for all the tensors, each
  // reduced by one kernel (its largest magnitude, which is NaN or Inf exactly when an element is).
  std::vector<Tensor> largest;
  for (auto [t, name] : checked)
    if (t->defined()) largest.push_back(at::linalg_vector_norm(*t, INFINITY).to(torch::kFloat));
  const Tensor finite = torch::isfinite(torch::stack(largest)).cpu();
  int64_t i = 0;
  for (auto [t, name] : checked)
    if (t->defined()) TORCH_CHECK(finite[i++].item<bool>(), "quest::attention: ", name, " contains NaN or Inf");
}

AttentionCall make_call(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o) {
  check_input(q, "q", q);  // first: k and v are checked against q
  check_input(k, "k", q);
  check_input(v, "v", q);
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "quest::attention: q, k, v must share a dtype, got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  // Sizes compared symbolically: traced with dynamic shapes, a check is a relation torch.compile
  // guards on, not a specialisation to one length.
  const c10::SymInt &batch = q.sym_size(0), &heads = q.sym_size(1), &q_len = q.sym_size(2),
                    &k_len = k.sym_size(2);
  TORCH_CHECK(k.sym_size(0) == batch && v.sym_size(0) == batch,
              "quest::attention: batch sizes differ: q ", q.sym_sizes(), ", k ", k.sym_sizes(), ", v ",
              v.sym_sizes());
  if (o.enable_gqa()) {
    TORCH_CHECK(v.sym_size(1) == k.sym_size(1) && heads % k.sym_size(1) == 0,
                "quest::attention: with enable_gqa, k and v need the same head count and q a multiple "
                "of it: q ", q.sym_sizes(), ", k ", k.sym_sizes(), ", v ", v.sym_sizes());
  } else {
    TORCH_CHECK(k.sym_size(1) == heads && v.sym_size(1) == heads,
                "quest::attention: head counts differ: q ", q.sym_sizes(), ", k ", k.sym_sizes(), ", v ",
                v.sym_sizes(), " (grouped-query attention: enable_gqa)");
  }
  TORCH_CHECK(k.sym_size(3) == q.sym_size(3), "quest::attention: q and k head dims differ: q ", q.sym_sizes(),
              ", k ", k.sym_sizes());
  TORCH_CHECK(v.sym_size(2) == k_len, "quest::attention: k and v key counts differ: k ", k.sym_sizes(),
              ", v ", v.sym_sizes());
  AttentionCall c;
  c.q = q;
  c.k = k;
  c.v = v;
  // The head dims fix the default scale and the kernels' tiles: specialised on, as torch's SDPA does.
  c.dims = {known(batch), known(heads), known(q_len), known(k_len), size_of(q, 3), size_of(v, 3)};
  if (o.enable_gqa()) c.kv_group = size_of(q, 1) / size_of(k, 1);  // specialised on, as head dims
  const KindTraits t = kind_traits(o.kind());
  c.q_norm = t.q_norm;
  c.k_norm = o.keys_normalized() ? Norm::none : t.k_norm;
  c.scale = o.scale().value_or(default_scale(o.kind(), c.dims.qk_dim));
  TORCH_CHECK(std::isfinite(c.scale), "quest::attention: scale must be finite, got ", c.scale);
  c.l2_eps = o.l2_eps();
  c.layernorm_eps = o.layernorm_eps();
  TORCH_CHECK(c.l2_eps > 0 && std::isfinite(c.l2_eps), "quest::attention: l2_eps must be > 0, got ",
              c.l2_eps);
  TORCH_CHECK(c.layernorm_eps > 0 && std::isfinite(c.layernorm_eps),
              "quest::attention: layernorm_eps must be > 0, got ", c.layernorm_eps);
  c.causal = o.causal();
  c.causal_alignment = o.causal_alignment();
  TORCH_CHECK(o.dropout() >= 0 && o.dropout() < 1, "quest::attention: dropout must be in [0, 1), got ",
              o.dropout());
  c.dropout = o.training() ? o.dropout() : 0.0;
  if (c.dropout > 0 && traced(q)) {
    TORCH_CHECK(!o.seed(), "quest::attention: a dropout seed does not compile (quest's seeded mask is drawn on "
                "the host); leave seed unset and compiled dropout draws torch's in-graph random numbers");
    c.torch_dropout = true;
  } else if (c.dropout > 0) {
    c.seed = o.seed() ? *o.seed() : draw_seed();
  }
  c.requested = o.backend();

  const Tensor& m = o.key_padding_mask();
  if (m.defined()) {
    TORCH_CHECK(m.scalar_type() == torch::kBool, "quest::attention: key_padding_mask has dtype ",
                m.scalar_type(), "; expected bool (true = padding)");
    TORCH_CHECK(m.device() == q.device(), "quest::attention: key_padding_mask is on ", m.device(),
                " but q is on ", q.device());
    TORCH_CHECK(m.dim() == 2 && m.sym_size(0) == batch && m.sym_size(1) == k_len,
                "quest::attention: key_padding_mask must have shape [B, Nk] = [", batch, ", ", k_len,
                "], got ", m.sym_sizes());
    c.key_padding_mask = m.contiguous();
  }
  const Tensor& bias = o.attn_bias();
  if (bias.defined()) {
    TORCH_CHECK(bias.scalar_type() == q.scalar_type(), "quest::attention: attn_bias has dtype ",
                bias.scalar_type(), " but q has ", q.scalar_type());
    TORCH_CHECK(bias.device() == q.device(), "quest::attention: attn_bias is on ", bias.device(),
                " but q is on ", q.device());
    const std::vector<c10::SymInt> full = {batch, heads, q_len, k_len};
    bool fits = bias.dim() <= 4;
    for (int64_t d = 0; fits && d < bias.dim(); ++d) {
      const c10::SymInt &size = bias.sym_size(bias.dim() - 1 - d), &want = full[3 - d];
      fits = size == want || size == 1;
    }
    TORCH_CHECK(fits, "quest::attention: attn_bias of shape ", bias.sym_sizes(),
                " does not broadcast to (B, H, Nq, Nk) = ", c10::SymIntArrayRef(full));
    c.attn_bias = bias;
  }
  check_param(o.head_scale(), "head_scale", heads, q);
  for (auto [t, name] : {std::pair{&o.q_norm_weight(), "q_norm_weight"}, {&o.q_norm_bias(), "q_norm_bias"},
                         {&o.k_norm_weight(), "k_norm_weight"}, {&o.k_norm_bias(), "k_norm_bias"}})
    check_param(*t, name, q.sym_size(3), q);
  // The kernels index parameters as plain arrays.
  auto dense = [](const Tensor& t) { return t.defined() ? t.contiguous() : t; };
  c.head_scale = dense(o.head_scale());
  c.q_norm_weight = dense(o.q_norm_weight());
  c.q_norm_bias = dense(o.q_norm_bias());
  // Keys already normalised (normalize_keys) take no key normalisation, so no key affine.
  c.k_norm_weight = o.keys_normalized() ? Tensor() : dense(o.k_norm_weight());
  c.k_norm_bias = o.keys_normalized() ? Tensor() : dense(o.k_norm_bias());
  if (o.check_finite()) request_finite_check(c);
  return c;
}

void request_finite_check(AttentionCall& c) {
  if (!c.q.device().is_cpu() || traced(c.q)) return check_call_finite(c);
  c.finite_check_pending = true;
  for (auto [t, name] : finite_checked(c))
    if (t != &c.q && t != &c.k && t != &c.v) check_finite(*t, name);  // the parameters, now
}

AttentionCall group_call(const AttentionCall& c, int64_t r) {
  if (c.kv_group == 1) return c;
  const int64_t g = c.kv_group;
  AttentionCall sub = c;
  sub.q = c.q.slice(1, r, c10::nullopt, g);
  if (c.head_scale.defined()) sub.head_scale = c.head_scale.slice(0, r, c10::nullopt, g).contiguous();
  sub.dims.heads = c.dims.heads / g;
  sub.kv_group = 1;
  return sub;
}

void scatter_group_partials(const std::vector<HeadDiagnosticsPartial>& group, const AttentionCall& c,
                            int64_t r, HeadDiagnosticsPartial* all) {
  const int64_t kv_heads = c.dims.heads / c.kv_group;
  for (int64_t b = 0; b < c.dims.batch; ++b)
    for (int64_t h = 0; h < kv_heads; ++h)
      all[b * c.dims.heads + h * c.kv_group + r] = group[b * kv_heads + h];
}

template <typename T>
AttentionArgs<T> AttentionCall::kernel_args() const {
  AttentionArgs<T> a;
  static_cast<AttentionScalars&>(a) = *this;  // the scalars as they are; the tensors as pointers
  if (q.scalar_type() == c10::CppTypeToScalarType<T>::value) {  // bfloat16 storage: views passed apart
    a.q = view4<const T>(q);
    a.k = view4<const T>(k);
    a.v = view4<const T>(v);
  }
  a.head_scale = ptr_or_null<const T>(head_scale);
  a.q_ln_weight = ptr_or_null<const T>(q_norm_weight);
  a.q_ln_bias = ptr_or_null<const T>(q_norm_bias);
  a.k_ln_weight = ptr_or_null<const T>(k_norm_weight);
  a.k_ln_bias = ptr_or_null<const T>(k_norm_bias);
  if (key_padding_mask.defined()) {
    a.key_padding_mask = key_padding_mask.data_ptr<bool>();
    a.key_padding_stride[0] = key_padding_mask.stride(0);
    a.key_padding_stride[1] = key_padding_mask.stride(1);
  }
  return a;
}

template AttentionArgs<float> AttentionCall::kernel_args<float>() const;
template AttentionArgs<double> AttentionCall::kernel_args<double>() const;

}  // namespace quest::detail
