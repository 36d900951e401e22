// Math reference for every kind: per (b, h) block, normalise rows, then plain softmax attention.
#include "quest/core/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace quest::reference {
namespace {

// Rows of one (b, h) block after the kind's normalisation, in double, with what backward needs.
struct Rows {
  int64_t n = 0, d = 0;
  std::vector<double> x;     // raw rows
  std::vector<double> y;     // normalised rows (what enters the dot product)
  std::vector<double> stat;  // per row: |x| for l2, 1/sqrt(var + eps) for layer
  std::vector<double> xhat;  // layer only: (x - mean) * rstd
  const double* row(int64_t r) const { return y.data() + r * d; }
};

template <typename T>
Rows normalise(View4<const T> x, int64_t b, int64_t h, int64_t n, int64_t d, Norm norm,
               const T* weight, const T* bias, const AttentionArgs<T>& a) {
  Rows r;
  r.n = n;
  r.d = d;
  r.x.resize(n * d);
  r.y.resize(n * d);
  r.stat.assign(n, 0.0);
  if (norm == Norm::layer) r.xhat.resize(n * d);
  for (int64_t i = 0; i < n; ++i) {
    double* xi = &r.x[i * d];
    double* yi = &r.y[i * d];
    for (int64_t c = 0; c < d; ++c) xi[c] = static_cast<double>(x.at(b, h, i, c));
    if (norm == Norm::none) {
      std::copy(xi, xi + d, yi);
    } else if (norm == Norm::l2) {
      double ss = 0;
      for (int64_t c = 0; c < d; ++c) ss += xi[c] * xi[c];
      const double nrm = std::sqrt(ss);
      r.stat[i] = nrm;
      const double den = std::max(nrm, a.l2_eps);  // y = x / max(|x|, eps)
      for (int64_t c = 0; c < d; ++c) yi[c] = xi[c] / den;
    } else {
      double mean = 0;
      for (int64_t c = 0; c < d; ++c) mean += xi[c];
      mean /= d;
      double var = 0;
      for (int64_t c = 0; c < d; ++c) var += (xi[c] - mean) * (xi[c] - mean);
      var /= d;
      const double rstd = 1.0 / std::sqrt(var + a.layernorm_eps);
      r.stat[i] = rstd;
      for (int64_t c = 0; c < d; ++c) {
        const double xh = (xi[c] - mean) * rstd;
        r.xhat[i * d + c] = xh;
        yi[c] = xh * (weight ? static_cast<double>(weight[c]) : 1.0) +
                (bias ? static_cast<double>(bias[c]) : 0.0);
      }
    }
  }
  return r;
}

template <typename T>
Rows normalise_queries(const AttentionArgs<T>& a, int64_t b, int64_t h) {
  return normalise(a.q, b, h, a.dims.q_len, a.dims.qk_dim, a.q_norm, a.q_ln_weight, a.q_ln_bias, a);
}

template <typename T>
Rows normalise_keys(const AttentionArgs<T>& a, int64_t b, int64_t h) {
  return normalise(a.k, b, h, a.dims.k_len, a.dims.qk_dim, a.k_norm, a.k_ln_weight, a.k_ln_bias, a);
}

// dx from dy through the row normalisation; accumulates the LayerNorm affine gradients.
template <typename T>
void normalise_backward(const Rows& r, Norm norm, const T* weight, const std::vector<double>& dy,
                        std::vector<double>& dx, double* dweight, double* dbias,
                        const AttentionArgs<T>& a) {
  const int64_t d = r.d;
  dx.assign(r.n * d, 0.0);
  for (int64_t i = 0; i < r.n; ++i) {
    const double* dyi = &dy[i * d];
    double* dxi = &dx[i * d];
    if (norm == Norm::none) {
      std::copy(dyi, dyi + d, dxi);
    } else if (norm == Norm::l2) {
      const double nrm = r.stat[i];
      if (!(nrm <= a.l2_eps)) {  // a NaN norm takes this branch and stays NaN
        // dx = (dy - y (y.dy)) / |x|: tangent to the sphere, shrinking as 1/|x|
        const double* yi = r.row(i);
        double ydy = 0;
        for (int64_t c = 0; c < d; ++c) ydy += yi[c] * dyi[c];
        for (int64_t c = 0; c < d; ++c) dxi[c] = (dyi[c] - yi[c] * ydy) / nrm;
      } else {
        for (int64_t c = 0; c < d; ++c) dxi[c] = dyi[c] / a.l2_eps;  // clamped: y = x / eps
      }
    } else {
      // dxhat = dy*w;  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat*xhat))
      const double rstd = r.stat[i];
      const double* xh = &r.xhat[i * d];
      double mean_g = 0, mean_gx = 0;
      std::vector<double> g(d);
      for (int64_t c = 0; c < d; ++c) {
        g[c] = dyi[c] * (weight ? static_cast<double>(weight[c]) : 1.0);
        mean_g += g[c];
        mean_gx += g[c] * xh[c];
        if (dweight) dweight[c] += dyi[c] * xh[c];
        if (dbias) dbias[c] += dyi[c];
      }
      mean_g /= d;
      mean_gx /= d;
      for (int64_t c = 0; c < d; ++c) dxi[c] = rstd * (g[c] - mean_g - xh[c] * mean_gx);
    }
  }
}

double dot(const double* a, const double* b, int64_t n) {
  double s = 0;
  for (int64_t c = 0; c < n; ++c) s += a[c] * b[c];
  return s;
}

template <typename T>
double dropout_scale(const AttentionArgs<T>& a, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (a.dropout <= 0) return 1.0;
  return dropout_keep(a.seed, a.dropout, a.dims, b, h, i, j) ? 1.0 / (1.0 - a.dropout) : 0.0;
}


}  // namespace

template <typename T>
void forward(const AttentionArgs<T>& a, View4<T> out, double* lse, HeadDiagnosticsPartial* diag) {
  check_args(a, "reference::forward");
  if (!out.data || !lse) throw std::invalid_argument("quest::reference::forward: out and lse must not be null");
  const AttentionDims& d = a.dims;
  std::vector<double> s(d.k_len), o(d.v_dim), v_nonfinite(d.v_dim);
  std::vector<char> visible(d.k_len);
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.heads; ++h) {
      const int64_t first = a.first_unpadded_key(b);
      // Every key's value enters P V, masked ones times 0: column c of every row that sees a key
      // is non-finite if any v[j, c] is.
      std::fill(v_nonfinite.begin(), v_nonfinite.end(), 0.0);
      for (int64_t j = 0; j < d.k_len; ++j)
        accumulate_nonfinite(&a.v.at(b, h, j, 0), d.v_dim, a.v.stride[3], v_nonfinite.data());
      const bool v_poisoned = any_nonfinite(v_nonfinite.data(), d.v_dim);
      const Rows qn = normalise_queries(a, b, h);
      const Rows kn = normalise_keys(a, b, h);
      const double g = a.head_scale_at(h);
      HeadDiagnosticsPartial* part = diag ? &diag[b * d.heads + h] : nullptr;
      if (part) {
        *part = HeadDiagnosticsPartial{};
        AttentionArgs<T> block = a;  // the raw norms of this (b, h) block only
        block.dims.batch = block.dims.heads = 1;
        block.q.data += b * a.q.stride[0] + h * a.q.stride[1];
        block.k.data += b * a.k.stride[0] + h * a.k.stride[1];
        if (a.key_padding_mask) block.key_padding_mask += b * a.key_padding_stride[0];
        add_norm_diagnostics(block, part);
      }
      for (int64_t i = 0; i < d.q_len; ++i) {
        double* lse_i = &lse[(b * d.heads + h) * d.q_len + i];
        if (a.sees_no_key(first, i)) {  // zero row
          *lse_i = -std::numeric_limits<double>::infinity();
          for (int64_t c = 0; c < d.v_dim; ++c) out.at(b, h, i, c) = T(0);
          continue;
        }
        double m = -std::numeric_limits<double>::infinity();
        bool nonfinite = false;  // a NaN or +inf logit makes torch's softmax row NaN
        for (int64_t j = 0; j < d.k_len; ++j) {
          visible[j] = a.key_visible(b, i, j);
          if (!visible[j]) continue;
          s[j] = g * dot(qn.row(i), kn.row(j), d.qk_dim);  // s_ij = g q.k
          if (!(s[j] < std::numeric_limits<double>::infinity())) nonfinite = true;
          m = std::max(m, s[j]);
        }
        if (nonfinite || m == -std::numeric_limits<double>::infinity()) {  // so is all -inf
          *lse_i = std::numeric_limits<double>::quiet_NaN();
          for (int64_t c = 0; c < d.v_dim; ++c)
            out.at(b, h, i, c) = std::numeric_limits<T>::quiet_NaN();
          if (part) {
            part->entropy_sum = part->logit_abs_max = part->logit_max = std::numeric_limits<double>::quiet_NaN();
            ++part->entropy_rows;
          }
          continue;
        }
        double l = 0;
        for (int64_t j = 0; j < d.k_len; ++j)
          if (visible[j]) l += std::exp(s[j] - m);
        const double row_lse = m + std::log(l);  // lse = m + log sum exp(s - m)
        *lse_i = row_lse;
        std::fill(o.begin(), o.end(), 0.0);
        double p_dot_s = 0, logit_max = 0, signed_max = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < d.k_len; ++j) {
          if (!visible[j]) continue;
          const double p = std::exp(s[j] - row_lse);
          p_dot_s += p * s[j];
          logit_max = std::max(logit_max, std::abs(s[j]));
          signed_max = std::max(signed_max, s[j]);
          const double pd = p * dropout_scale(a, b, h, i, j);
          if (pd == 0) continue;
          for (int64_t c = 0; c < d.v_dim; ++c) o[c] += pd * static_cast<double>(a.v.at(b, h, j, c));
        }
        if (v_poisoned)
          for (int64_t c = 0; c < d.v_dim; ++c) o[c] += v_nonfinite[c];
        for (int64_t c = 0; c < d.v_dim; ++c) out.at(b, h, i, c) = static_cast<T>(o[c]);
        if (part) {
          part->logit_abs_max = nan_max(part->logit_abs_max, logit_max);
          part->logit_max = nan_max(part->logit_max, signed_max);
          part->entropy_sum += row_lse - p_dot_s;  // H_i = lse_i - sum_j p_ij s_ij
          ++part->entropy_rows;
        }
      }
    }
}

template <typename T>
void backward(const AttentionArgs<T>& a, View4<const T> dout, const double* lse,
              const AttentionGrads<T>& gr) {
  check_args(a, "reference::backward");
  if (!dout.data || !lse || !gr.dq.data || !gr.dk.data || !gr.dv.data)
    throw std::invalid_argument("quest::reference::backward: dout, lse and dq/dk/dv must not be null");
  const AttentionDims& d = a.dims;
  const bool want_ln_q = a.q_norm == Norm::layer;
  const bool want_ln_k = a.k_norm == Norm::layer;
  std::vector<double> dqw(d.qk_dim, 0.0), dqb(d.qk_dim, 0.0), dkw(d.qk_dim, 0.0),
      dkb(d.qk_dim, 0.0), dscale(d.heads, 0.0);
  std::vector<double> p(d.k_len), dp(d.k_len), dqn, dkn, dv, dq, dk, q_nonfinite, k_nonfinite;
  std::vector<char> visible(d.k_len);
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.heads; ++h) {
      const Rows qn = normalise_queries(a, b, h);
      const Rows kn = normalise_keys(a, b, h);
      const double g = a.head_scale_at(h);
      dqn.assign(d.q_len * d.qk_dim, 0.0);
      dkn.assign(d.k_len * d.qk_dim, 0.0);
      dv.assign(d.k_len * d.v_dim, 0.0);
      for (int64_t i = 0; i < d.q_len; ++i) {
        const double row_lse = lse[(b * d.heads + h) * d.q_len + i];
        // A row that saw no key has zero gradient; a NaN row (lse NaN) gets P = NaN below.
        if (row_lse == -std::numeric_limits<double>::infinity()) continue;
        double di = 0;
        for (int64_t j = 0; j < d.k_len; ++j) {
          visible[j] = a.key_visible(b, i, j);
          if (!visible[j]) continue;
          const double sij = g * dot(qn.row(i), kn.row(j), d.qk_dim);
          p[j] = std::exp(sij - row_lse);
          const double keep = dropout_scale(a, b, h, i, j);
          double dpj = 0;
          for (int64_t c = 0; c < d.v_dim; ++c) {
            const double go = static_cast<double>(dout.at(b, h, i, c));
            dpj += go * static_cast<double>(a.v.at(b, h, j, c));
            dv[j * d.v_dim + c] += p[j] * keep * go;  // dV = P'^T dO
          }
          dp[j] = dpj * keep;  // dP = dP' * keep / (1 - p_drop)
          di += p[j] * dp[j];  // D_i = sum_j p_ij dP_ij  (= rowsum(dO o O))
        }
        for (int64_t j = 0; j < d.k_len; ++j) {
          if (!visible[j]) continue;
          const double ds = p[j] * (dp[j] - di);  // dS = P o (dP - D)
          const double* qi = qn.row(i);
          const double* kj = kn.row(j);
          for (int64_t c = 0; c < d.qk_dim; ++c) {
            dqn[i * d.qk_dim + c] += g * ds * kj[c];
            dkn[j * d.qk_dim + c] += g * ds * qi[c];
          }
          dscale[h] += ds * dot(qi, kj, d.qk_dim);
        }
      }
      // The masked products the loops above skip, as the composite's matmuls make them: 0 times
      // a non-finite g q_i or g k_j still reaches dK, dQ and the head-scale gradient.
      q_nonfinite.assign(d.qk_dim, 0.0);
      k_nonfinite.assign(d.qk_dim, 0.0);
      for (int64_t i = 0; i < d.q_len; ++i) accumulate_nonfinite(qn.row(i), d.qk_dim, 1, q_nonfinite.data());
      for (int64_t j = 0; j < d.k_len; ++j) accumulate_nonfinite(kn.row(j), d.qk_dim, 1, k_nonfinite.data());
      for (int64_t c = 0; c < d.qk_dim; ++c) {
        q_nonfinite[c] *= g;
        k_nonfinite[c] *= g;
      }
      if (any_nonfinite(q_nonfinite.data(), d.qk_dim) || any_nonfinite(k_nonfinite.data(), d.qk_dim)) {
        for (int64_t i = 0; i < d.q_len; ++i)
          for (int64_t c = 0; c < d.qk_dim; ++c) dqn[i * d.qk_dim + c] += k_nonfinite[c];
        for (int64_t j = 0; j < d.k_len; ++j)
          for (int64_t c = 0; c < d.qk_dim; ++c) dkn[j * d.qk_dim + c] += q_nonfinite[c];
        for (int64_t c = 0; c < d.qk_dim; ++c) dscale[h] += q_nonfinite[c] + k_nonfinite[c];
      }
      normalise_backward(qn, a.q_norm, a.q_ln_weight, dqn, dq, want_ln_q ? dqw.data() : nullptr,
                         want_ln_q ? dqb.data() : nullptr, a);
      normalise_backward(kn, a.k_norm, a.k_ln_weight, dkn, dk, want_ln_k ? dkw.data() : nullptr,
                         want_ln_k ? dkb.data() : nullptr, a);
      for (int64_t i = 0; i < d.q_len; ++i)
        for (int64_t c = 0; c < d.qk_dim; ++c)
          gr.dq.at(b, h, i, c) = static_cast<T>(dq[i * d.qk_dim + c]);
      for (int64_t j = 0; j < d.k_len; ++j) {
        for (int64_t c = 0; c < d.qk_dim; ++c)
          gr.dk.at(b, h, j, c) = static_cast<T>(dk[j * d.qk_dim + c]);
        for (int64_t c = 0; c < d.v_dim; ++c)
          gr.dv.at(b, h, j, c) = static_cast<T>(dv[j * d.v_dim + c]);
      }
    }
  auto write = [](T* dst, const T* param, const std::vector<double>& src) {
    if (!dst || !param) return;
    for (size_t c = 0; c < src.size(); ++c) dst[c] = static_cast<T>(src[c]);
  };
  write(gr.dhead_scale, a.head_scale, dscale);
  if (want_ln_q) {
    write(gr.dq_ln_weight, a.q_ln_weight, dqw);
    write(gr.dq_ln_bias, a.q_ln_bias, dqb);
  }
  if (want_ln_k) {
    write(gr.dk_ln_weight, a.k_ln_weight, dkw);
    write(gr.dk_ln_bias, a.k_ln_bias, dkb);
  }
}

template void forward<float>(const AttentionArgs<float>&, View4<float>, double*,
                             HeadDiagnosticsPartial*);
template void forward<double>(const AttentionArgs<double>&, View4<double>, double*,
                              HeadDiagnosticsPartial*);
template void backward<float>(const AttentionArgs<float>&, View4<const float>, const double*,
                              const AttentionGrads<float>&);
template void backward<double>(const AttentionArgs<double>&, View4<const double>, const double*,
                               const AttentionGrads<double>&);

}  // namespace quest::reference
