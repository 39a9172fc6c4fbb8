// SPDX-License-Identifier: MIT
#pragma once
// The backward of a statistics step (docs/method.md §7, "Backward"): given what the forward used
// (x, W, b, and the statistics mu_s, D_s it folded) and the upstream gradients of its outputs,
// G = dL/dW' and g = dL/db', the gradients dL/dW, dL/db and dL/dx_stats, the part of dL/dx that
// flows through mu and Cov (the caller adds it to its conv's own input gradient).
//
// For every output o and piece (s, piece) of the plan in o's input group, with w = W[o, piece],
// G_o = G[o, piece] and W'_o = w D_s:
//   b' = b - sum W'_o . mu_s   =>  Gt_o = G_o - g_o mu_s^T   (the total gradient of W'_o)
//   dL/dW[o, piece] = Gt_o D_s^T;   dL/dD_s += w^T Gt_o;   dL/dmu_s -= g_o W'_o^T;   dL/db = g
//   dL/dCov_s = inverse_sqrt_vjp(Cov_s, dL/dD_s)   (Cov_s = M_s/n + eps I, recomputed from x)
//   dL/dX_r = (2/n)(X_r - mu_s) sym(dL/dCov_s) + dL/dmu_s / n   for every sampled row r and piece,
// scattered back to x through the sampled patch map (padding taps are dropped). The scatter runs
// row by row over the sampled patches: there is no n x F buffer, and its cost is that of the
// forward covariance (C K F per sampled row). The inverse square root's gradient follows the
// options (inverse_sqrt_vjp.hpp: the truncated iteration in fixed mode, the true root otherwise),
// with one report per statistic in out.reports.
//
//   netdeconv::statistics_step_gradients<float, 4> grads{dW, db, dx_stats, reports};   // caller views
//   netdeconv::conv_statistics_step_vjp(netdeconv::seq, x, W, b, cfg, stats, dL_dWfolded, dL_dbfolded, grads);

#include <limits>
#include <vector>

#include <Eigen/Core>

#include "block_statistics.hpp"
#include "checks.hpp"
#include "covariance.hpp"
#include "execution.hpp"
#include "geometry.hpp"
#include "inverse_sqrt_vjp.hpp"
#include "matrix_rows.hpp"
#include "statistics_step_config.hpp"
#include "statistics_view.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

namespace detail {

/// How a backward treats the statistics: eps_s as the forward used it (eps, times
/// tr(Cov0_s)/F when relative: dL/dCov0 = dL/dCov + (eps/F) tr(dL/dCov) I), the inverse square
/// root's options, or no gradient through mu and D at all (constants: dL/dx_stats = 0 and
/// reports of 0 iterations, residual NaN, ok).
struct statistics_backward {
  double eps = 0;
  bool relative_eps = false;
  isqrt_options isqrt;
  bool constants = false;
};

/// The backward on checked arguments (see file comment); scatter(r, j, v) adds v to the x entry of
/// patch entry (r, j).
template <class Policy, class T, class Source, class Scatter>
void statistics_step_vjp_impl(const Policy& policy, const Source& source, const block_plan& plan,
                              const image_view<const T>& weight, const block_statistics<T>& stats,
                              const statistics_backward& how, const image_view<const T>& grad_weight,
                              const vector_view<const T>& grad_bias, const image_view<T>& out_weight,
                              const vector_view<T>& out_bias, const vector_view<isqrt_report>& reports, Scatter&& scatter) {
  using vec = Eigen::VectorXd;
  const index_t S = plan.count(), F = plan.features(), G = plan.rows_per_patch();
  const index_t cout = weight.shape[0], K = plan.kernel_area, kw = weight.shape[3], group_cols = weight.shape[1] * K;
  std::vector<square_matrix<double>> dD(std::size_t(S), square_matrix<double>::Zero(F, F));
  std::vector<vec> dmu(std::size_t(S), vec::Zero(F));
  vec w(F), gt(F);
  for (index_t o = 0; o < cout; ++o) {
    const index_t base = (o / (cout / plan.groups)) * group_cols;
    const auto at = [&](const auto& v, index_t col) -> auto& {
      const index_t local = col - base, c = local / K, k = local % K;
      return v(o, c, k / kw, k % kw);
    };
    const double go = double(grad_bias(o));
    for (index_t s = 0; s < S; ++s)
      for (index_t g = 0; g < G; ++g) {
        const index_t first = plan.column(s, g, 0);
        if (first < base || first >= base + group_cols) continue;
        const square_matrix<double> D = stats.D[std::size_t(s)].template cast<double>();
        const vec mu = stats.mean[std::size_t(s)].template cast<double>();
        for (index_t f = 0; f < F; ++f)
          w[f] = double(at(weight, plan.column(s, g, f))), gt[f] = double(at(grad_weight, plan.column(s, g, f))) - go * mu[f];
        const vec dw = D * gt;  // (Gt D^T)^T
        for (index_t f = 0; f < F; ++f) at(out_weight, plan.column(s, g, f)) = T(dw[f]);
        dD[std::size_t(s)].noalias() += w * gt.transpose();
        dmu[std::size_t(s)].noalias() -= go * (D.transpose() * w);
      }
    if (!out_bias.empty()) out_bias(o) = grad_bias(o);
  }
  if (how.constants) {
    for (index_t s = 0; s < S; ++s) reports(s) = {0, std::numeric_limits<double>::quiet_NaN(), isqrt_status::ok};
    return;
  }
  // dL/dCov through the inverse square root, at the covariance the forward inverted.
  const std::vector<moments<double>> m = block_moments(policy, source, plan);
  std::vector<square_matrix<double>> sym(static_cast<std::size_t>(S));
  std::vector<vec> mean(static_cast<std::size_t>(S));
  std::vector<double> n(static_cast<std::size_t>(S));
  for (index_t s = 0; s < S; ++s) {
    const moments<double>& ms = m[std::size_t(s)];
    square_matrix<double> cov0 = ms.template covariance<double>(0.0);
    const double eps = how.relative_eps ? how.eps * cov0.trace() / double(F) : how.eps;
    cov0.diagonal().array() += eps;
    square_matrix<T> dcov;
    reports(s) = inverse_sqrt_vjp(policy, square_matrix<T>(cov0.template cast<T>()),
                                  square_matrix<T>(dD[std::size_t(s)].template cast<T>()), dcov, how.isqrt);
    square_matrix<double> d = dcov.template cast<double>();
    if (how.relative_eps) d.diagonal().array() += how.eps / double(F) * d.trace();
    n[std::size_t(s)] = double(ms.count());
    sym[std::size_t(s)] = (d + d.transpose()) / n[std::size_t(s)];  // (2/n) sym(dCov)
    mean[std::size_t(s)] = ms.mean();
    dmu[std::size_t(s)] /= n[std::size_t(s)];
  }
  // dL/dX_r for every sampled row and piece, scattered.
  vec xr(F), v(F);
  for (index_t r = 0; r < source.rows(); ++r)
    for (index_t s = 0; s < S; ++s)
      for (index_t g = 0; g < G; ++g) {
        for (index_t f = 0; f < F; ++f) xr[f] = source.template value<double>(r, plan.column(s, g, f)) - mean[std::size_t(s)][f];
        v.noalias() = sym[std::size_t(s)] * xr;  // sym is symmetric: (x - mu)^T S = S (x - mu)
        v += dmu[std::size_t(s)];
        for (index_t f = 0; f < F; ++f) scatter(r, plan.column(s, g, f), v[f]);
      }
}

}  // namespace detail

namespace detail {

/// The conv backward on checked arguments (out.x is zeroed first).
template <class Policy, class T>
void conv_step_vjp(const Policy& policy, const image_view<const T>& x, const image_view<const T>& weight,
                   const conv_geometry& geometry, index_t sampling_stride, const block_plan& plan,
                   const block_statistics_view<const T>& stats, const statistics_backward& how,
                   const image_view<const T>& grad_weight, const vector_view<const T>& grad_bias,
                   const statistics_step_gradients<T, 4>& out) {
  constexpr const char* fn = "conv_statistics_step_vjp";
  const patch_sampler<T> source(x, geometry, sampling_stride);
  check_block_moments(fn, source, plan);
  const patch_map map = make_patch_map(fn, x.shape, geometry, sampling_stride, true);
  for (index_t n = 0; n < x.shape[0]; ++n)
    for (index_t c = 0; c < x.shape[1]; ++c)
      for (index_t y = 0; y < x.shape[2]; ++y)
        for (index_t xx = 0; xx < x.shape[3]; ++xx) out.x(n, c, y, xx) = T(0);
  statistics_step_vjp_impl(policy, source, plan, weight, load_statistics(stats), how, grad_weight, grad_bias, out.weight,
                           out.bias, out.reports, [&](index_t r, index_t j, double v) {
                             const patch_coord p = map.locate(r, j);
                             if (p.inside) out.x(p.n, p.c, p.y, p.x) += T(v);
                           });
}

/// The linear backward on checked arguments (out.x is zeroed first).
template <class Policy, class T>
void linear_step_vjp(const Policy& policy, const matrix_view<const T>& x, const matrix_view<const T>& weight,
                     const block_plan& plan, const block_statistics_view<const T>& stats, const statistics_backward& how,
                     const matrix_view<const T>& grad_weight, const vector_view<const T>& grad_bias,
                     const statistics_step_gradients<T, 2>& out) {
  const matrix_rows<T> source(x);
  check_block_moments("linear_statistics_step_vjp", source, plan);
  for (index_t r = 0; r < x.shape[0]; ++r)
    for (index_t j = 0; j < x.shape[1]; ++j) out.x(r, j) = T(0);
  statistics_step_vjp_impl(policy, source, plan, as_conv_weight(weight), load_statistics(stats), how,
                           as_conv_weight(grad_weight), grad_bias, as_conv_weight(out.weight), out.bias, out.reports,
                           [&](index_t r, index_t j, double v) { out.x(r, j) += T(v); });
}

}  // namespace detail

/// Backward of conv_statistics_step (see file comment): x (N, C, H, W), weight, bias (or empty)
/// and config as in the forward; stats: the mu and D it folded (plan conv_statistics_plan);
/// grad_weight = dL/dW' (the weight's shape), grad_bias = dL/db' (Cout).
template <class Policy, class T>
void conv_statistics_step_vjp(const Policy& policy, image_view<const T> x, image_view<const T> weight,
                              vector_view<const T> bias, const conv_deconv_config& config,
                              const block_statistics_view<const T>& stats, image_view<const T> grad_weight,
                              vector_view<const T> grad_bias, const statistics_step_gradients<T, 4>& out) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  constexpr const char* fn = "conv_statistics_step_vjp";
  const block_plan plan = detail::check_conv_step(fn, x, weight, bias, config);
  detail::check_step_vjp(fn, plan, x, weight, bias, stats, grad_weight, grad_bias, out, out.weight);
  const detail::statistics_backward how{config.eps, false, config.isqrt, false};
  detail::conv_step_vjp(policy, x, weight, config.geometry, config.sampling_stride, plan, stats, how, grad_weight, grad_bias,
                        out);
}

/// Backward of linear_statistics_step: x (rows, Fin), weight (Cout, Fin); as the conv form.
template <class Policy, class T>
void linear_statistics_step_vjp(const Policy& policy, matrix_view<const T> x, matrix_view<const T> weight,
                                vector_view<const T> bias, const linear_deconv_config& config,
                                const block_statistics_view<const T>& stats, matrix_view<const T> grad_weight,
                                vector_view<const T> grad_bias, const statistics_step_gradients<T, 2>& out) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  using detail::as_conv_weight;
  constexpr const char* fn = "linear_statistics_step_vjp";
  const block_plan plan = detail::check_linear_step(fn, x, weight, bias, config);
  detail::check_step_vjp(fn, plan, x, as_conv_weight(weight), bias, stats, as_conv_weight(grad_weight), grad_bias, out,
                         as_conv_weight(out.weight));
  const detail::statistics_backward how{config.eps, false, config.isqrt, false};
  detail::linear_step_vjp(policy, x, weight, plan, stats, how, grad_weight, grad_bias, out);
}

}  // namespace netdeconv
