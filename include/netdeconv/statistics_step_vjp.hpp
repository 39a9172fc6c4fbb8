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
// scattered back to x through the sampled patch map (padding taps are dropped). No n x F patch
// matrix is formed: seq scatters row by row in double (sequential/statistics_step_vjp.hpp), the
// OpenMP policies tile by tile in T, an image per thread (omp/statistics_step_vjp.hpp); the cost
// is 2 F multiply-adds per sampled entry. The inverse square root's gradient follows the options
// (inverse_sqrt_vjp.hpp: the truncated iteration in fixed mode, the true root otherwise), with one
// report per statistic in out.reports.
//
// The pieces, for data-parallel training (statistics merged over the processes' shards):
//   fold_vjp             dL/dW, dL/db, dL/dD_s, dL/dmu_s (all-reduce the last two over the processes)
//   inverse_sqrt_vjp     dL/dCov_s at the merged Cov_s (inverse_sqrt_vjp.hpp)
//   conv_covariance_vjp  each process adds its shard's rows' dL/dx_stats (linear_covariance_vjp)
// which sum to the whole batch's backward.
//
//   netdeconv::statistics_step_gradients<float, 4> grads{dW, db, dx_stats, reports};   // caller views
//   netdeconv::conv_statistics_step_vjp(netdeconv::par, x, W, b, cfg, stats, dL_dWfolded, dL_dbfolded, grads);

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "block_statistics.hpp"
#include "checks.hpp"
#include "covariance.hpp"
#include "execution.hpp"
#include "geometry.hpp"
#include "inverse_sqrt_vjp.hpp"
#include "matrix_rows.hpp"
#include "omp/statistics_step_vjp.hpp"
#include "row_reader.hpp"
#include "sequential/statistics_step_vjp.hpp"
#include "statistics_reduction.hpp"
#include "statistics_step_config.hpp"
#include "statistics_view.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

namespace detail {

/// How a backward treats the statistics: eps_s as the forward used it (eps, times
/// tr(Cov0_s)/F when relative: dL/dCov0 = dL/dCov + (eps/F) tr(dL/dCov) I), the inverse square
/// root's options, or no gradient through mu and D at all (constants: dL/dx_stats = 0 and
/// reports of 0 iterations, residual NaN, ok); uncentred: Cov0_s is the second moment
/// x x^T / n (the channel layer's reference quirk), not the covariance; exact_blocks: statistics
/// whose D is the true root (a layer step that exact_fallback repaired), whatever the options.
struct statistics_backward {
  double eps = 0;
  bool relative_eps = false;
  isqrt_options isqrt;
  bool constants = false;
  bool uncentred = false;
  std::vector<index_t> exact_blocks{};
  const statistics_reduction* reduction = nullptr;  ///< the layer's, for a data-parallel step
};

/// The scalar type of the weight side's products: double for seq (the oracle), T for the OpenMP policies.
template <class Policy, class T>
using vjp_accumulator = std::conditional_t<std::is_base_of_v<omp_policy, Policy>, T, double>;

/// The weight side of the backward, with products in Acc (vjp_accumulator). The pieces of statistic s are the (o, g) whose columns plan.column(s, g, .) lie in
/// o's input group: P_s = G * Cout/groups of them, taken g by g, o by o. They are split into
/// `parts` ranges (parts = ceil(threads / S), so that every thread has work) and each range runs in
/// chunks of up to `chunk` pieces (Wc, Gc: chunk x F the pieces of W and G, gc their g_o):
///   Gt = Gc - gc mu_s^T;  dW[pieces] = Gt D_s^T;  dD_s += Wc^T Gt;  u_s += Wc^T gc
/// then the ranges' dD_s and u_s are summed in order (in double) and dmu_s = -D_s^T u_s; dL/db = g.
/// The extra memory is three chunks per thread and one accumulator per range.
template <class Acc, class T>
void weight_vjp(int threads, const block_plan& plan, const image_view<const T>& weight, const block_statistics<T>& stats,
                const image_view<const T>& grad_weight, const vector_view<const T>& grad_bias, const image_view<T>& out_weight,
                const vector_view<T>& out_bias, std::vector<square_matrix<double>>& dD, std::vector<Eigen::VectorXd>& dmu) {
  using mat = Eigen::Matrix<Acc, Eigen::Dynamic, Eigen::Dynamic>;
  using vec = Eigen::Matrix<Acc, Eigen::Dynamic, 1>;
  const index_t S = plan.count(), F = plan.features(), G = plan.rows_per_patch(), K = plan.kernel_area;
  const index_t cout = weight.shape[0], kw = weight.shape[3], group_cols = weight.shape[1] * K, per_group = cout / plan.groups;
  const index_t chunk = std::max<index_t>(1, 32768 / F), pieces = G * per_group;
  const index_t parts = std::min(pieces, std::max<index_t>(1, (threads + S - 1) / S)), units = S * parts;
  // offset of local column c*K + k of an output's weights, in each weight-shaped view
  const auto offsets = [&](const auto& v) {
    std::vector<index_t> t(static_cast<std::size_t>(group_cols));
    for (index_t lc = 0; lc < group_cols; ++lc)
      t[std::size_t(lc)] = (lc / K) * v.stride[1] + (lc % K / kw) * v.stride[2] + (lc % K % kw) * v.stride[3];
    return t;
  };
  const std::vector<index_t> w_at = offsets(weight), g_at = offsets(grad_weight), o_at = offsets(out_weight);
  std::vector<mat> part_dD(static_cast<std::size_t>(units));
  std::vector<vec> part_u(static_cast<std::size_t>(units));
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic) if (threads > 1 && units > 1)
#endif
  for (index_t unit = 0; unit < units; ++unit) {
    keep_eigen_in_thread();
    const index_t s = unit / parts, part = unit % parts;
    const mat D = stats.D[std::size_t(s)].template cast<Acc>();
    const Eigen::Matrix<Acc, 1, Eigen::Dynamic> mu = stats.mean[std::size_t(s)].transpose().template cast<Acc>();
    mat dDs = mat::Zero(F, F), Wc(chunk, F), Gc(chunk, F), Gt, dW;
    vec u = vec::Zero(F), gc(chunk);
    std::vector<index_t> local(static_cast<std::size_t>(G * F)), owner(static_cast<std::size_t>(chunk)), piece(owner);
    for (index_t g = 0; g < G; ++g) {
      const index_t q = plan.column(s, g, 0) / group_cols;  // the input group of piece g
      for (index_t f = 0; f < F; ++f) local[std::size_t(g * F + f)] = plan.column(s, g, f) - q * group_cols;
    }
    index_t filled = 0;
    const auto flush = [&] {
      Gt.noalias() = Gc.topRows(filled) - gc.head(filled) * mu;
      dW.noalias() = Gt * D.transpose();
      for (index_t p = 0; p < filled; ++p) {
        T* out = out_weight.data + owner[std::size_t(p)] * out_weight.stride[0];
        const index_t* lc = local.data() + piece[std::size_t(p)] * F;
        for (index_t f = 0; f < F; ++f) out[o_at[std::size_t(lc[f])]] = T(dW(p, f));
      }
      dDs.noalias() += Wc.topRows(filled).transpose() * Gt;
      u.noalias() += Wc.topRows(filled).transpose() * gc.head(filled);
      filled = 0;
    };
    for (index_t p = pieces * part / parts; p < pieces * (part + 1) / parts; ++p) {
      const index_t g = p / per_group, o = plan.column(s, g, 0) / group_cols * per_group + p % per_group;
      const index_t* lc = local.data() + g * F;
      const T* w = weight.data + o * weight.stride[0];
      const T* gw = grad_weight.data + o * grad_weight.stride[0];
      for (index_t f = 0; f < F; ++f)
        Wc(filled, f) = Acc(w[w_at[std::size_t(lc[f])]]), Gc(filled, f) = Acc(gw[g_at[std::size_t(lc[f])]]);
      gc[filled] = Acc(grad_bias(o));
      owner[std::size_t(filled)] = o, piece[std::size_t(filled)] = g;
      if (++filled == chunk) flush();
    }
    if (filled > 0) flush();
    part_dD[std::size_t(unit)] = std::move(dDs);
    part_u[std::size_t(unit)] = std::move(u);
  }
  dD.assign(std::size_t(S), square_matrix<double>::Zero(F, F));
  dmu.assign(std::size_t(S), Eigen::VectorXd());
  for (index_t s = 0; s < S; ++s) {
    Eigen::VectorXd u = Eigen::VectorXd::Zero(F);
    for (index_t part = 0; part < parts; ++part) {
      dD[std::size_t(s)] += part_dD[std::size_t(s * parts + part)].template cast<double>();
      u += part_u[std::size_t(s * parts + part)].template cast<double>();
    }
    dmu[std::size_t(s)].noalias() = -(stats.D[std::size_t(s)].template cast<double>().transpose() * u);
  }
  if (!out_bias.empty())
    for (index_t o = 0; o < cout; ++o) out_bias(o) = grad_bias(o);
}

/// dL/dCov_s through the inverse square root at the covariance the forward inverted (recomputed
/// from the source: Cov_s = M_s/n_s + eps_s I, or the second moment with `uncentred`, whose
/// scatter then takes mean_s = 0), with the trace-relative eps term, one report per statistic;
/// dmu is taken over (divided by n_s). Each intermediate is freed once used.
template <class Policy, class T, class Source>
patch_gradient covariance_vjp(const Policy& policy, const Source& source, const block_plan& plan,
                              const statistics_backward& how, std::vector<square_matrix<double>>&& dD,
                              std::vector<Eigen::VectorXd>&& dmu, const vector_view<isqrt_report>& reports) {
  const std::size_t S = std::size_t(plan.count());
  const double F = double(plan.features());
  patch_gradient out{std::vector<square_matrix<double>>(S), std::vector<Eigen::VectorXd>(S), std::move(dmu)};
  std::vector<double> n(S);
  std::vector<square_matrix<T>> cov(S), grad(S), dcov;
  {
    const std::vector<moments<double>> m = batch_moments("backward", policy, source, plan, how.reduction);
    for (std::size_t s = 0; s < S; ++s) {
      square_matrix<double> cov0 = m[s].template covariance<double>(0.0);
      if (how.uncentred) cov0 += m[s].mean() * m[s].mean().transpose();
      cov0.diagonal().array() += how.relative_eps ? how.eps * cov0.trace() / F : how.eps;
      cov[s] = cov0.template cast<T>();
      grad[s] = dD[s].template cast<T>();
      dD[s] = {};
      n[s] = double(m[s].count());
      out.mean[s] = how.uncentred ? Eigen::VectorXd::Zero(m[s].mean().size()) : Eigen::VectorXd(m[s].mean());
    }
  }
  std::vector<isqrt_report> r = inverse_sqrt_vjp_batched_impl<T>(policy, cov, grad, dcov, how.isqrt);
  for (const index_t s : how.exact_blocks)
    r[std::size_t(s)] = inverse_sqrt_vjp_impl<T>(seq, cov[std::size_t(s)], grad[std::size_t(s)], dcov[std::size_t(s)],
                                                 isqrt_options::exact());
  cov = {}, grad = {};
  std::vector<square_matrix<double>> d(S);
  for (std::size_t s = 0; s < S; ++s) {
    reports(index_t(s)) = r[s];
    d[s] = dcov[s].template cast<double>();
    dcov[s] = {};
    if (how.relative_eps) d[s].diagonal().array() += how.eps / F * d[s].trace();
  }
  if (how.reduction) how.reduction->gradients(d, out.dmu);
  for (std::size_t s = 0; s < S; ++s) {
    out.sym[s] = (d[s] + d[s].transpose()) / n[s];
    out.dmu[s] /= n[s];
  }
  return out;
}

/// Adds rows of patch-entry gradients to dL/dx (N, C, H, W): add(r, v) adds v[j] (j < C*kh*kw) to
/// the pixel of entry (r, j) of the sampled patch matrix, padding taps dropped; a patch inside the
/// image through a table of offsets. Rows of different chunks (chunk_rows() consecutive rows: an
/// image for a kernel > 1, one row for the 1x1 rule) touch different pixels.
template <class T>
class patch_row_adder {
 public:
  patch_row_adder(const patch_map& map, const image_view<T>& dx) : map_(map), dx_(dx) {
    if (!map.pointwise) offset_ = patch_offsets(map, dx.stride);
  }

  index_t chunk_rows() const { return map_.pointwise ? 1 : map_.out_h * map_.out_w; }

  template <class V>
  void operator()(index_t r, const V* v) const {
    if (map_.pointwise) {
      const index_t p = r * map_.step, n = p / (map_.H * map_.W), y = (p / map_.W) % map_.H, xx = p % map_.W;
      for (index_t c = 0; c < map_.C; ++c) dx_(n, c, y, xx) += T(v[c]);
      return;
    }
    const patch_coord o = map_.origin(r);
    if (o.inside) {
      T* base = dx_.data + o.n * dx_.stride[0] + o.y * dx_.stride[2] + o.x * dx_.stride[3];
      for (std::size_t j = 0; j < offset_.size(); ++j) base[offset_[j]] += T(v[j]);
      return;
    }
    visit_patch_row(dx_, map_.g, map_.out_h, map_.out_w, r, [&](index_t j, index_t n, index_t c, index_t y, index_t xx, bool inside) {
      if (inside) dx_(n, c, y, xx) += T(v[j]);
    });
  }

 private:
  patch_map map_;
  image_view<T> dx_;
  std::vector<index_t> offset_;  // per patch column, from the patch's origin
};

/// add(r, v) adds v to row r of dL/dx (rows, Fin); every row is its own chunk.
template <class T>
struct matrix_row_adder {
  matrix_view<T> dx;

  index_t chunk_rows() const { return 1; }
  template <class V>
  void operator()(index_t r, const V* v) const {
    for (index_t j = 0; j < dx.shape[1]; ++j) dx(r, j) += T(v[j]);
  }
};

/// Sets every entry of v (rank 2 or 4) to zero, the leading index split over `threads` threads.
template <class T, int R>
void fill_zero(int threads, const tensor_view<T, R>& v) {
  static_assert(R == 2 || R == 4, "fill_zero takes matrices and images");
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
  for (index_t i = 0; i < v.shape[0]; ++i) {
    if constexpr (R == 2) {
      for (index_t j = 0; j < v.shape[1]; ++j) v(i, j) = T(0);
    } else {
      for (index_t c = 0; c < v.shape[1]; ++c)
        for (index_t y = 0; y < v.shape[2]; ++y)
          for (index_t xx = 0; xx < v.shape[3]; ++xx) v(i, c, y, xx) = T(0);
    }
  }
}

/// The backward on checked arguments (see file comment), dL/dx_stats added through `add` (its
/// target zeroed by the caller).
template <class Policy, class T, class Source, class Adder>
void statistics_step_vjp_impl(const Policy& policy, const Source& source, const block_plan& plan,
                              const image_view<const T>& weight, const block_statistics<T>& stats,
                              const statistics_backward& how, const image_view<const T>& grad_weight,
                              const vector_view<const T>& grad_bias, const image_view<T>& out_weight,
                              const vector_view<T>& out_bias, const vector_view<isqrt_report>& reports, const Adder& add) {
  std::vector<square_matrix<double>> dD;
  std::vector<Eigen::VectorXd> dmu;
  weight_vjp<vjp_accumulator<Policy, T>>(policy_threads(policy), plan, weight, stats, grad_weight, grad_bias, out_weight,
                                         out_bias, dD, dmu);
  if (how.constants) {
    for (index_t s = 0; s < plan.count(); ++s) reports(s) = {0, std::numeric_limits<double>::quiet_NaN(), isqrt_status::ok};
    return;
  }
  const patch_gradient grad = covariance_vjp<Policy, T>(policy, source, plan, how, std::move(dD), std::move(dmu), reports);
  scatter_patch_gradient(policy, source, plan, grad, add);
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
  check_block_moments(fn, source, plan, how.reduction ? 0 : 2);
  fill_zero(policy_threads(policy), out.x);
  statistics_step_vjp_impl(policy, source, plan, weight, load_statistics(stats), how, grad_weight, grad_bias, out.weight,
                           out.bias, out.reports,
                           patch_row_adder<T>(make_patch_map(fn, x.shape, geometry, sampling_stride, true), out.x));
}

/// The linear backward on checked arguments (out.x is zeroed first).
template <class Policy, class T>
void linear_step_vjp(const Policy& policy, const matrix_view<const T>& x, const matrix_view<const T>& weight,
                     const block_plan& plan, const block_statistics_view<const T>& stats, const statistics_backward& how,
                     const matrix_view<const T>& grad_weight, const vector_view<const T>& grad_bias,
                     const statistics_step_gradients<T, 2>& out) {
  const matrix_rows<T> source(x);
  check_block_moments("linear_statistics_step_vjp", source, plan, how.reduction ? 0 : 2);
  fill_zero(policy_threads(policy), out.x);
  statistics_step_vjp_impl(policy, source, plan, as_conv_weight(weight), load_statistics(stats), how,
                           as_conv_weight(grad_weight), grad_bias, as_conv_weight(out.weight), out.bias, out.reports,
                           matrix_row_adder<T>{out.x});
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
  const detail::statistics_backward how{.eps = config.eps, .isqrt = config.isqrt};
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
  const detail::statistics_backward how{.eps = config.eps, .isqrt = config.isqrt};
  detail::linear_step_vjp(policy, x, weight, plan, stats, how, grad_weight, grad_bias, out);
}

/// The weight side of the backward on its own (fold's backward; see file comment): dL/dW and
/// dL/db into out_weight, out_bias (empty when there is no bias), and the gradients of the folded
/// statistics, grad_D (S, F, F) = dL/dD_s and grad_mean (S, F) = dL/dmu_s. With data-parallel
/// training, sum grad_D and grad_mean over the processes; then inverse_sqrt_vjp at the merged
/// covariance, and conv_covariance_vjp / linear_covariance_vjp on every process's shard.
template <class Policy, class T>
void fold_vjp(const Policy& policy, const block_statistics_view<const T>& stats, image_view<const T> weight,
              vector_view<const T> bias, image_view<const T> grad_weight, vector_view<const T> grad_bias,
              image_view<T> out_weight, vector_view<T> out_bias, tensor_view<T, 3> grad_D, matrix_view<T> grad_mean) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  constexpr const char* fn = "fold_vjp";
  detail::check_fold_vjp_outputs(fn, stats, weight, bias, grad_weight, grad_bias, out_weight, out_bias, grad_D, grad_mean);
  const index_t S = stats.plan.count(), F = stats.plan.features();
  std::vector<square_matrix<double>> dD;
  std::vector<Eigen::VectorXd> dmu;
  detail::weight_vjp<detail::vjp_accumulator<Policy, T>>(detail::policy_threads(policy), stats.plan, weight,
                                                         detail::load_statistics(stats), grad_weight, grad_bias, out_weight,
                                                         out_bias, dD, dmu);
  for (index_t s = 0; s < S; ++s)
    for (index_t i = 0; i < F; ++i) {
      grad_mean(s, i) = T(dmu[std::size_t(s)][i]);
      for (index_t j = 0; j < F; ++j) grad_D(s, i, j) = T(dD[std::size_t(s)](i, j));
    }
}

namespace detail {

/// The covariance backward's checks and inputs: moments of the plan's shape with every count >= 1
/// (the statistics of every shard, merged), finite dcov (S, F, F) and dmean (S, F), dx an output of
/// x's shape that overlaps none of them; returns what the scatter adds.
template <class T, class X, int R>
patch_gradient covariance_gradient(const char* fn, const block_plan& plan, const tensor_view<const X, R>& x,
                                   const moments_view<const double>& moments, const tensor_view<const T, 3>& dcov,
                                   const matrix_view<const T>& dmean, const tensor_view<T, R>& dx) {
  check_covariance_vjp(fn, plan, x, moments, dcov, dmean, dx);
  const index_t S = plan.count(), F = plan.features();
  patch_gradient out{std::vector<square_matrix<double>>(std::size_t(S)), std::vector<Eigen::VectorXd>(std::size_t(S)),
                     std::vector<Eigen::VectorXd>(std::size_t(S))};
  for (index_t s = 0; s < S; ++s) {
    const index_t n = moments.count(s);
    NETDECONV_REQUIRE(n >= 1, fn, "statistic ", s, " has ", n, " samples: the merged moments need >= 1");
    square_matrix<double> d(F, F);
    Eigen::VectorXd mean(F), dmu(F);
    for (index_t i = 0; i < F; ++i) {
      mean[i] = moments.mean(s, i), dmu[i] = double(dmean(s, i)) / double(n);
      for (index_t j = 0; j < F; ++j) d(i, j) = double(dcov(s, i, j));
    }
    NETDECONV_REQUIRE(d.allFinite() && dmu.allFinite() && mean.allFinite(), fn, "statistic ", s,
                      ": dcov, dmean and the moments' mean must be finite");
    out.sym[std::size_t(s)] = (d + d.transpose()) / double(n);
    out.mean[std::size_t(s)] = std::move(mean);
    out.dmu[std::size_t(s)] = std::move(dmu);
  }
  return out;
}

}  // namespace detail

/// The backward of a shard's statistics (block_moments, then covariance): given the moments of
/// every shard merged (count n_s and mean mu_s; the scatter is not read), dcov = dL/dCov_s
/// (S, F, F) and dmean = dL/dmu_s (S, F), adds to dx (x's shape) the gradient through this
/// shard's sampled patch rows, for every row and piece of statistic s:
///   dL/dX_r += (1/n_s)(dCov_s + dCov_s^T)(X_r - mu_s) + dL/dmu_s / n_s
/// (Cov_s = M_s/n_s + eps I; the eps term has no gradient in x). Summed over the shards, this is the
/// whole batch's dL/dx_stats.
template <class Policy, class T>
void conv_covariance_vjp(const Policy& policy, image_view<const T> x, const conv_deconv_config& config,
                         const moments_view<const double>& moments, tensor_view<const T, 3> dcov, matrix_view<const T> dmean,
                         image_view<T> dx) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  constexpr const char* fn = "conv_covariance_vjp";
  detail::check_view(fn, "x", x);
  const block_plan plan = conv_statistics_plan(x.shape[1], config);
  const patch_sampler<T> source(x, config.geometry, config.sampling_stride);
  const detail::patch_gradient grad = detail::covariance_gradient(fn, plan, x, moments, dcov, dmean, dx);
  detail::scatter_patch_gradient(
      policy, source, plan, grad,
      detail::patch_row_adder<T>(detail::make_patch_map(fn, x.shape, config.geometry, config.sampling_stride, true), dx));
}

/// The same for a linear layer's rows: x (rows, Fin), dx (rows, Fin).
template <class Policy, class T>
void linear_covariance_vjp(const Policy& policy, matrix_view<const T> x, const linear_deconv_config& config,
                           const moments_view<const double>& moments, tensor_view<const T, 3> dcov,
                           matrix_view<const T> dmean, matrix_view<T> dx) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  constexpr const char* fn = "linear_covariance_vjp";
  detail::check_view(fn, "x", x);
  const block_plan plan = linear_statistics_plan(x.shape[1], config);
  const detail::patch_gradient grad = detail::covariance_gradient(fn, plan, x, moments, dcov, dmean, dx);
  detail::scatter_patch_gradient(policy, matrix_rows<T>(x), plan, grad, detail::matrix_row_adder<T>{dx});
}

}  // namespace netdeconv
