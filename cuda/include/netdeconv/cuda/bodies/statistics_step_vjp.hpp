// SPDX-License-Identifier: MIT
#pragma once
// What each thread of the CUDA statistics step's backward computes (../statistics_step_vjp.cuh):
// the recurrences of netdeconv/statistics_step_vjp.hpp, one output entry per thread, sums in T.
// The pieces of statistic s are the P_s = rows_per_patch * Cout/groups pairs (o, g) whose patch
// columns plan.column(s, g, .) lie in o's input group, g by g, o by o; w_p, G_p are piece p's F
// entries of W and dL/dW', g_p = dL/db'_o:
//   weight side   Gt_p = G_p - g_p mu_s;  dW[piece p] = Gt_p D_s^T;  dD_s = sum_p w_p^T Gt_p;
//                 u_s = sum_p g_p w_p;  dmu_s = -D_s^T u_s
//   covariance    dCov0_s = dCov_s + (eps/F) tr(dCov_s) I with trace-relative eps (eps_F = eps/F, else 0)
//                 sym_s = (dCov0_s + dCov0_s^T) / n_s,  dmu_s / n_s,  mean_s (0 when uncentred)
//   scatter       entry j of sampled row r, (s, g, f) = plan.locate(j):
//                 dL/dX_rj = sum_f' sym_s(f, f') (X_r[column(s, g, f')] - mean_s(f')) + dmu_s(f) / n_s,
//                 added to the pixel it was read from (padding taps dropped).
// Plain C++ without nvcc.

#include <netdeconv/blocks.hpp>
#include <netdeconv/channel_samples.hpp>
#include <netdeconv/config.hpp>
#include <netdeconv/isqrt_options.hpp>
#include <netdeconv/geometry.hpp>
#include <netdeconv/statistics_view.hpp>
#include <netdeconv/tensor_view.hpp>

namespace netdeconv::cuda::detail {

/// The weight side's inputs: W and dL/dW' (Cout, C/groups, kh, kw), dL/db' (Cout), the folded mu_s
/// (S, F) and D_s (S, F, F).
template <class T>
struct weight_vjp_inputs {
  block_plan plan;
  image_view<const T> weight, grad_weight;
  vector_view<const T> grad_bias;
  matrix_view<const T> mean;
  tensor_view<const T, 3> D;

  NETDECONV_HOST_DEVICE index_t per_group() const { return weight.shape[0] / plan.groups; }
  NETDECONV_HOST_DEVICE index_t group_columns() const { return weight.shape[1] * plan.kernel_area; }
  NETDECONV_HOST_DEVICE index_t pieces() const { return plan.rows_per_patch() * per_group(); }
  /// The output o of piece p of statistic s (its patch row is p / per_group()).
  NETDECONV_HOST_DEVICE index_t output(index_t s, index_t p) const {
    return plan.column(s, p / per_group(), 0) / group_columns() * per_group() + p % per_group();
  }
  /// The entry of a weight-shaped view v for output o at patch column `column` (in o's group).
  NETDECONV_HOST_DEVICE const T& at(const image_view<const T>& v, index_t o, index_t column) const {
    const index_t K = plan.kernel_area, kw = v.shape[3], lc = column % group_columns();
    return v(o, lc / K, lc % K / kw, lc % K % kw);
  }
  /// Gt_p(j) for output o and patch row g of statistic s.
  NETDECONV_HOST_DEVICE T total_gradient(index_t s, index_t o, index_t g, index_t j) const {
    return at(grad_weight, o, plan.column(s, g, j)) - grad_bias(o) * mean(s, j);
  }
};

/// How a backward treats the statistics (netdeconv::detail::statistics_backward without what
/// needs the host): eps_s as the forward used it, the inverse square root's options, centred or not.
struct backward_rule {
  double eps = 0;
  bool relative_eps = false;
  bool uncentred = false;
  isqrt_options isqrt;
};

/// The weight side's inputs from the public calls' arguments.
template <class T>
weight_vjp_inputs<T> weight_inputs(const block_statistics_view<const T>& stats, const image_view<const T>& weight,
                                   const image_view<const T>& grad_weight, const vector_view<const T>& grad_bias) {
  return {stats.plan, weight, grad_weight, grad_bias, stats.mean, stats.D};
}

/// Entry e of dL/dW (out: the weight's shape, entries in (o, c, ky, kx) order): Gt_p D_s^T.
template <class T>
NETDECONV_HOST_DEVICE void weight_vjp_element(const weight_vjp_inputs<T>& in, const image_view<T>& out, index_t e) {
  const index_t cols = in.group_columns(), o = e / cols, lc = e % cols, K = in.plan.kernel_area, kw = out.shape[3];
  const column_coord c = in.plan.locate(o / in.per_group() * cols + lc);
  const index_t F = in.plan.features();
  T v = T(0);
  for (index_t j = 0; j < F; ++j) v += in.total_gradient(c.s, o, c.g, j) * in.D(c.s, c.f, j);
  out(o, lc / K, lc % K / kw, lc % K % kw) = v;
}

/// dD_s(i, j) = sum_p w_p(i) Gt_p(j).
template <class T>
NETDECONV_HOST_DEVICE T weight_vjp_D_element(const weight_vjp_inputs<T>& in, index_t s, index_t i, index_t j) {
  T v = T(0);
  for (index_t p = 0; p < in.pieces(); ++p) {
    const index_t o = in.output(s, p), g = p / in.per_group();
    v += in.at(in.weight, o, in.plan.column(s, g, i)) * in.total_gradient(s, o, g, j);
  }
  return v;
}

/// u_s(i) = sum_p g_p w_p(i).
template <class T>
NETDECONV_HOST_DEVICE T weight_vjp_u_element(const weight_vjp_inputs<T>& in, index_t s, index_t i) {
  T v = T(0);
  for (index_t p = 0; p < in.pieces(); ++p) {
    const index_t o = in.output(s, p);
    v += in.at(in.weight, o, in.plan.column(s, p / in.per_group(), i)) * in.grad_bias(o);
  }
  return v;
}

/// dmu_s(i) = -(D_s^T u_s)(i).
template <class T>
NETDECONV_HOST_DEVICE T weight_vjp_mean_element(const tensor_view<const T, 3>& D, const matrix_view<const T>& u, index_t s,
                                                index_t i) {
  T v = T(0);
  for (index_t k = 0; k < D.shape[1]; ++k) v += D(s, k, i) * u(s, k);
  return -v;
}

/// tr(dCov_s).
template <class T>
NETDECONV_HOST_DEVICE T covariance_vjp_trace(const tensor_view<const T, 3>& dcov, index_t s) {
  T v = T(0);
  for (index_t k = 0; k < dcov.shape[1]; ++k) v += dcov(s, k, k);
  return v;
}

/// sym_s(i, j) = (dCov0_s(i, j) + dCov0_s(j, i)) / n_s, dCov0_s = dCov_s + eps_F tr_s I.
template <class T>
NETDECONV_HOST_DEVICE void covariance_vjp_sym_element(const moments_view<const double>& m, const tensor_view<const T, 3>& dcov,
                                                      const T* trace, double eps_F, const tensor_view<T, 3>& sym, index_t s,
                                                      index_t i, index_t j) {
  const double diagonal = i == j ? 2 * eps_F * double(trace[s]) : 0.0;
  sym(s, i, j) = static_cast<T>((double(dcov(s, i, j)) + double(dcov(s, j, i)) + diagonal) / double(m.count(s)));
}

/// mean_s(i) (0 when uncentred: the second moment has no shift) and dmu_s(i) / n_s.
template <class T>
NETDECONV_HOST_DEVICE void covariance_vjp_shift_element(const moments_view<const double>& m, const matrix_view<const T>& dmean,
                                                        bool uncentred, const matrix_view<T>& mean, const matrix_view<T>& dmu,
                                                        index_t s, index_t i) {
  mean(s, i) = uncentred ? T(0) : static_cast<T>(m.mean(s, i));
  dmu(s, i) = static_cast<T>(double(dmean(s, i)) / double(m.count(s)));
}

/// dL/dX_rj of entry j of sampled row r (see file comment); src: a patch_sampler or matrix_rows.
template <class T, class Source>
NETDECONV_HOST_DEVICE T covariance_vjp_entry(const Source& src, const block_plan& p, const tensor_view<const T, 3>& sym,
                                             const matrix_view<const T>& mean, const matrix_view<const T>& dmu, index_t r,
                                             index_t j) {
  const column_coord c = p.locate(j);
  T v = dmu(c.s, c.f);
  for (index_t k = 0; k < p.features(); ++k)
    v += sym(c.s, c.f, k) * (src.template value<T>(r, p.column(c.s, c.g, k)) - mean(c.s, k));
  return v;
}

/// Where entry (r, j) of the sampled patch rows came from in dL/dx (N, C, H, W): null for padding.
template <class T>
struct patch_target {
  patch_map map;
  image_view<T> dx;
  NETDECONV_HOST_DEVICE T* at(index_t r, index_t j) const {
    const patch_coord p = map.locate(r, j);
    return p.inside ? &dx(p.n, p.c, p.y, p.x) : nullptr;
  }
};

/// The same for a linear layer's rows: dL/dx (rows, Fin).
template <class T>
struct row_target {
  matrix_view<T> dx;
  NETDECONV_HOST_DEVICE T* at(index_t r, index_t j) const { return &dx(r, j); }
};

/// The same for the channel layer's samples (channel_samples.hpp): dL/dx (N, C, H, W).
template <class T>
struct channel_target {
  ::netdeconv::detail::channel_samples<T> layout;  ///< the sampling; its x is not read
  image_view<T> dx;
  NETDECONV_HOST_DEVICE T* at(index_t r, index_t f) const {
    const index_t j = r * layout.step, plane = dx.shape[0] * dx.shape[2] * dx.shape[3], p = j % plane, cc = j / plane;
    const index_t n = p / (dx.shape[2] * dx.shape[3]), yy = (p / dx.shape[3]) % dx.shape[2], xx = p % dx.shape[3];
    return &dx(n, f * layout.per_row + cc, yy, xx);
  }
};

/// Entry e (in logical row-major order) of v set to zero.
template <class T, int R>
NETDECONV_HOST_DEVICE void zero_element(const tensor_view<T, R>& v, index_t e) {
  index_t offset = 0;
  for (int axis = R - 1; axis >= 0; --axis) {
    offset += e % v.shape[axis] * v.stride[axis];
    e /= v.shape[axis];
  }
  v.data[offset] = T(0);
}

}  // namespace netdeconv::cuda::detail
