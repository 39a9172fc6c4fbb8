// SPDX-License-Identifier: MIT
#pragma once
// The training-mode statistics step of a deconvolution layer (docs/method.md §7): from the input batch x and
// the layer's weights, compute the blocked mean mu_s and D_s ~ Cov_s^(-1/2) and the folded weights
// W' = W D, b' = b - W' mu. The host framework then runs its own conv/linear with (W', b').
//
//   conv:   x (N, C, H, W) any layout; weight (Cout, C/groups, kh, kw); bias (Cout) or empty.
//           Rows: the sampled patches of docs/method.md §2; blocks: config.layout (docs/method.md §3).
//   linear: x (rows, Fin); weight (Cout, Fin); bias (Cout) or empty. All rows are used.
//
//   netdeconv::conv_deconv_config cfg;             // reference defaults: block 64, S = 3, eps 1e-5, 5 iterations
//   cfg.geometry = netdeconv::conv_geometry::square(3, 1, 1);
//   auto step = netdeconv::conv_statistics_step(netdeconv::par, netdeconv::nchw(x, N, C, H, W),
//                                               netdeconv::nchw(w, Cout, C, 3, 3),
//                                               netdeconv::contiguous(b, Cout), cfg);
//   // step.weight (Cout*C*9, OIHW contiguous), step.bias (Cout): hand them to the framework's conv.
//   netdeconv::conv_statistics_step(policy, x, w, b, cfg, out);   // or into caller views, on any backend
//                                                                 // (statistics_step_config.hpp)

#include <vector>

#include "block_statistics.hpp"
#include "blocks.hpp"
#include "checks.hpp"
#include "covariance.hpp"
#include "error.hpp"
#include "execution.hpp"
#include "fold.hpp"
#include "im2col.hpp"
#include "inverse_sqrt.hpp"
#include "statistics_reduction.hpp"
#include "statistics_step_config.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

/// mu, D of every statistic, with one inverse-square-root report per statistic.
template <class T>
struct estimated_statistics {
  block_statistics<T> statistics;
  std::vector<isqrt_report> reports;
  index_t samples = 0;  ///< rows per statistic (sampled rows x rows_per_patch)
};

/// mu, D, reports and the folded weights W' (contiguous OIHW / (Cout, Fin)) and b'.
template <class T>
struct statistics_step_result : estimated_statistics<T>, folded_weights<T> {};

/// The batch half of a statistics step (docs/method.md §7), which the steps and the layers share:
/// per statistic of `plan`, the mean mu_s (in T) and Cov0_s = M_s/n in double (eps not added;
/// uncentred: M_s/n + mu_s mu_s^T, the reference channel layer's quirk).
template <class T>
struct batch_statistics {
  block_plan plan;
  std::vector<Eigen::Matrix<T, Eigen::Dynamic, 1>> mean;
  std::vector<square_matrix<double>> cov0;
  index_t samples = 0;  ///< rows per statistic (sampled rows x rows_per_patch)

  /// Cov0_s + eps[s] I, converted to T: what the inverse square root takes.
  std::vector<square_matrix<T>> regularised(const std::vector<double>& eps) const {
    std::vector<square_matrix<T>> cov;
    for (std::size_t s = 0; s < cov0.size(); ++s) {
      square_matrix<double> c = cov0[s];
      c.diagonal().array() += eps[s];
      cov.push_back(c.template cast<T>());
    }
    return cov;
  }
};

/// block_moments of `source` under `plan` (of the whole batch with a reduction), as batch_statistics.
template <class T, class Policy, class Source>
batch_statistics<T> measure_batch(const Policy& policy, const Source& source, const block_plan& plan,
                                  bool uncentred = false, const statistics_reduction* reduction = nullptr) {
  batch_statistics<T> out{plan, {}, {}, 0};
  for (const auto& m : batch_moments("train_step", policy, source, plan, reduction)) {
    out.samples = m.count();
    out.mean.push_back(m.mean().template cast<T>());
    out.cov0.push_back(m.template covariance<double>(0.0));
    if (uncentred) out.cov0.back() += m.mean() * m.mean().transpose();
  }
  return out;
}

/// Moments of `source` under `plan`, covariances Cov_s + eps I and their inverse square roots.
template <class T, class Policy, class Source>
estimated_statistics<T> estimate_statistics(const Policy& policy, const Source& source, const block_plan& plan,
                                            double eps, const isqrt_options& isqrt) {
  NETDECONV_REQUIRE(eps >= 0, "estimate_statistics", "eps must be >= 0, got ", eps);
  detail::check_isqrt_options("estimate_statistics", isqrt);
  batch_statistics<T> batch = measure_batch<T>(policy, source, plan);
  estimated_statistics<T> out{{plan, std::move(batch.mean), {}}, {}, batch.samples};
  out.reports = inverse_sqrt(policy, batch.regularised(std::vector<double>(batch.cov0.size(), eps)), out.statistics.D, isqrt);
  return out;
}

namespace detail {

/// Writes an estimate and its folded weights into checked step outputs.
template <class Policy, class T>
void store_step(const Policy& policy, const estimated_statistics<T>& estimate, const image_view<const T>& weight,
                const vector_view<const T>& bias, const statistics_step_outputs<T, 4>& out) {
  store_statistics(estimate.statistics, out.mean, out.D);
  for (index_t s = 0; s < out.reports.shape[0]; ++s) out.reports(s) = estimate.reports[std::size_t(s)];
  fold_impl(policy, estimate.statistics, weight, bias, out.weight, out.bias);
}

}  // namespace detail

/// Conv statistics step (see file comment).
template <class Policy, class T>
statistics_step_result<T> conv_statistics_step(const Policy& policy, image_view<const T> x, image_view<const T> weight,
                                               vector_view<const T> bias, const conv_deconv_config& config) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  const block_plan plan = detail::check_conv_step("conv_statistics_step", x, weight, bias, config);
  auto estimate = estimate_statistics<T>(policy, patch_sampler<T>(x, config.geometry, config.sampling_stride), plan,
                                         config.eps, config.isqrt);
  auto folded = detail::folded(policy, estimate.statistics, weight, bias);
  return {std::move(estimate), std::move(folded)};
}

/// Writing form: mu, D, W', b' and the reports into caller views (statistics_step_config.hpp).
template <class Policy, class T>
void conv_statistics_step(const Policy& policy, image_view<const T> x, image_view<const T> weight,
                          vector_view<const T> bias, const conv_deconv_config& config,
                          const statistics_step_outputs<T, 4>& out) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  constexpr const char* fn = "conv_statistics_step";
  const block_plan plan = detail::check_conv_step(fn, x, weight, bias, config);
  detail::check_step_outputs(fn, plan, x, weight, bias, out);
  detail::store_step(policy,
                     estimate_statistics<T>(policy, patch_sampler<T>(x, config.geometry, config.sampling_stride), plan,
                                            config.eps, config.isqrt),
                     weight, bias, out);
}

/// Linear statistics step (see file comment).
template <class Policy, class T>
statistics_step_result<T> linear_statistics_step(const Policy& policy, matrix_view<const T> x,
                                                 matrix_view<const T> weight, vector_view<const T> bias,
                                                 const linear_deconv_config& config) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  const block_plan plan = detail::check_linear_step("linear_statistics_step", x, weight, bias, config);
  auto estimate = estimate_statistics<T>(policy, matrix_rows<T>(x), plan, config.eps, config.isqrt);
  auto folded = detail::folded(policy, estimate.statistics, detail::as_conv_weight(weight), bias);
  return {std::move(estimate), std::move(folded)};
}

/// Writing form of the linear step (W' in out.weight, (Cout, Fin)).
template <class Policy, class T>
void linear_statistics_step(const Policy& policy, matrix_view<const T> x, matrix_view<const T> weight,
                            vector_view<const T> bias, const linear_deconv_config& config,
                            const statistics_step_outputs<T, 2>& out) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  constexpr const char* fn = "linear_statistics_step";
  const block_plan plan = detail::check_linear_step(fn, x, weight, bias, config);
  const auto conv_out = detail::as_conv_outputs(out);
  detail::check_step_outputs(fn, plan, x, detail::as_conv_weight(weight), bias, conv_out);
  detail::store_step(policy, estimate_statistics<T>(policy, matrix_rows<T>(x), plan, config.eps, config.isqrt),
                     detail::as_conv_weight(weight), bias, conv_out);
}

}  // namespace netdeconv
