// An independent plain-torch re-implementation of every kind, written from the formulas and
// differentiated by torch's autograd: the third opinion beside the reference and composite paths.
#pragma once

#include <torch/torch.h>

#include "quest/torch/attention.h"

namespace quest::testing {

struct OracleInputs {
  torch::Tensor q, k, v;
  torch::Tensor head_scale, qw, qb, kw, kb, key_padding_mask;
};

inline torch::Tensor oracle_normalise(const torch::Tensor& x, Norm norm, const torch::Tensor& w,
                                      const torch::Tensor& b) {
  if (norm == Norm::l2) return x / (x * x).sum(-1, true).sqrt().clamp_min(1e-6);
  if (norm == Norm::layer) {
    const auto mean = x.mean(-1, true);
    const auto var = ((x - mean) * (x - mean)).mean(-1, true);
    auto y = (x - mean) / (var + 1e-5).sqrt();
    if (w.defined()) y = y * w;
    if (b.defined()) y = y + b;
    return y;
  }
  return x;
}

// Returns the output and (through `weights`) the attention weights before dropout.
inline torch::Tensor oracle_attention(const OracleInputs& in, Kind kind, bool causal,
                                      double dropout, uint64_t seed,
                                      torch::Tensor* weights = nullptr) {
  const int64_t b = in.q.size(0), h = in.q.size(1), nq = in.q.size(2), nk = in.k.size(2),
                d = in.q.size(3);
  const auto qn = oracle_normalise(in.q, kind_traits(kind).q_norm, in.qw, in.qb);
  const auto kn = oracle_normalise(in.k, kind_traits(kind).k_norm, in.kw, in.kb);
  auto s = torch::einsum("bhid,bhjd->bhij", {qn, kn});
  s = in.head_scale.defined() ? s * in.head_scale.view({1, h, 1, 1})
                              : s * default_scale(kind, d);
  auto visible = torch::ones({b, h, nq, nk}, torch::kBool);
  if (causal) {
    const auto i = torch::arange(nq).view({nq, 1}), j = torch::arange(nk).view({1, nk});
    visible = visible.logical_and(j.le(i));
  }
  if (in.key_padding_mask.defined())
    visible = visible.logical_and(in.key_padding_mask.logical_not().view({b, 1, 1, nk}));
  const auto row_max = s.detach().masked_fill(visible.logical_not(), -INFINITY).amax(-1, true);
  const auto shift = row_max.masked_fill(row_max.isinf(), 0);
  const auto e = (s - shift).exp() * visible.to(s.scalar_type());
  auto p = e / e.sum(-1, true).clamp_min(1e-300);
  if (weights) *weights = p.detach();
  if (dropout > 0) {
    auto keep = torch::empty({b, h, nq, nk}, torch::kBool);
    dropout_keep_mask(seed, dropout, {b, h, nq, nk, d, in.v.size(3)}, keep.data_ptr<bool>());
    p = p * keep.to(p.scalar_type()) / (1 - dropout);
  }
  return torch::einsum("bhij,bhjd->bhid", {p, in.v});
}

// Per-head diagnostics from the definitions (HeadDiagnostics): raw norms over every query and every
// non-padded key, max |s| over visible pairs, mean over rows that see a key of lse - sum p s.
inline HeadDiagnostics oracle_diagnostics(const OracleInputs& in, Kind kind, bool causal) {
  const int64_t b = in.q.size(0), h = in.q.size(1), nq = in.q.size(2), nk = in.k.size(2), d = in.q.size(3);
  const auto qn = oracle_normalise(in.q, kind_traits(kind).q_norm, in.qw, in.qb);
  const auto kn = oracle_normalise(in.k, kind_traits(kind).k_norm, in.kw, in.kb);
  auto s = torch::einsum("bhid,bhjd->bhij", {qn, kn});
  s = in.head_scale.defined() ? s * in.head_scale.view({1, h, 1, 1}) : s * default_scale(kind, d);
  auto visible = torch::ones({b, h, nq, nk}, torch::kBool);
  if (causal)
    visible = visible.logical_and(torch::arange(nk).view({1, nk}).le(torch::arange(nq).view({nq, 1})));
  auto key_valid = torch::ones({b, nk}, torch::kBool);
  if (in.key_padding_mask.defined()) key_valid = in.key_padding_mask.logical_not();
  visible = visible.logical_and(key_valid.view({b, 1, 1, nk}));
  HeadDiagnostics out;
  out.resize(h);
  const auto q_norms = in.q.norm(2, -1), k_norms = in.k.norm(2, -1);  // (B, H, N)
  for (int64_t head = 0; head < h; ++head) {
    const auto qh = q_norms.select(1, head);
    out.q_norm_mean[head] = qh.mean().item<double>();
    out.q_norm_max[head] = qh.max().item<double>();
    const auto kh = k_norms.select(1, head).masked_select(key_valid);
    out.k_norm_mean[head] = kh.mean().item<double>();
    out.k_norm_max[head] = kh.max().item<double>();
    const auto sh = s.select(1, head), vh = visible.select(1, head);
    out.logit_abs_max[head] = sh.abs().masked_select(vh).max().item<double>();
    out.logit_max[head] = sh.masked_select(vh).max().item<double>();
    double entropy = 0;
    int64_t rows = 0;
    for (int64_t bb = 0; bb < b; ++bb)
      for (int64_t i = 0; i < nq; ++i) {
        const auto row = sh[bb][i].masked_select(vh[bb][i]);
        if (row.numel() == 0) continue;
        const auto lse = row.logsumexp(0);
        entropy += (lse - ((row - lse).exp() * row).sum()).item<double>();
        ++rows;
      }
    out.entropy_mean[head] = entropy / rows;
  }
  return out;
}

}  // namespace quest::testing
