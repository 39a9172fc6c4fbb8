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

#include <vector>

#include "blocks.hpp"
#include "covariance.hpp"
#include "error.hpp"
#include "execution.hpp"
#include "fold.hpp"
#include "im2col.hpp"
#include "inverse_sqrt.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

/// Conv layer configuration; defaults are those of the reference conv layer.
struct conv_deconv_config {
  conv_geometry geometry{};
  index_t groups = 1;
  /// interleaved_shared (reference, groups == 1), grouped (reference, groups > 1) or independent.
  block_layout layout = block_layout::interleaved_shared;
  index_t block = 64;
  index_t sampling_stride = 3;
  double eps = 1e-5;
  isqrt_options isqrt = isqrt_options::fixed(5);
};

/// Linear layer configuration; defaults are those of the reference linear layer.
struct linear_deconv_config {
  /// contiguous_shared (reference) or independent.
  block_layout layout = block_layout::contiguous_shared;
  index_t block = 512;
  double eps = 1e-5;
  isqrt_options isqrt = isqrt_options::fixed(5);
};

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

/// Moments of `source` under `plan`, covariances Cov_s + eps I and their inverse square roots.
template <class T, class Policy, class Source>
estimated_statistics<T> estimate_statistics(const Policy& policy, const Source& source, const block_plan& plan,
                                            double eps, const isqrt_options& isqrt) {
  NETDECONV_REQUIRE(eps >= 0, "estimate_statistics", "eps must be >= 0, got ", eps);
  detail::check_isqrt_options("estimate_statistics", isqrt);
  const auto stats = block_moments(policy, source, plan);
  estimated_statistics<T> out;
  out.statistics.plan = plan;
  out.samples = stats.front().count();
  std::vector<square_matrix<T>> cov;
  for (const auto& m : stats) {
    out.statistics.mean.push_back(m.mean().template cast<T>());
    cov.push_back(m.template covariance<T>(eps));
  }
  out.reports = inverse_sqrt(policy, cov, out.statistics.D, isqrt);
  return out;
}

namespace detail {

inline block_plan conv_plan(const char* fn, index_t channels, const conv_deconv_config& config) {
  NETDECONV_REQUIRE(config.groups >= 1, fn, "groups must be >= 1, got ", config.groups);
  return make_block_plan(config.layout, channels, config.geometry.kernel_area(), config.block, config.groups);
}

}  // namespace detail

/// Conv statistics step (see file comment).
template <class Policy, class T>
statistics_step_result<T> conv_statistics_step(const Policy& policy, image_view<const T> x, image_view<const T> weight,
                                               vector_view<const T> bias, const conv_deconv_config& config) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  constexpr const char* fn = "conv_statistics_step";
  detail::check_view(fn, "x", x);
  const block_plan plan = detail::conv_plan(fn, x.shape[1], config);
  detail::check_weight(fn, plan, weight, bias);
  NETDECONV_REQUIRE(weight.shape[2] == config.geometry.kernel_h && weight.shape[3] == config.geometry.kernel_w, fn,
                    "weight kernel ", weight.shape[2], "x", weight.shape[3], " differs from the geometry's ",
                    config.geometry.kernel_h, "x", config.geometry.kernel_w);
  auto estimate = estimate_statistics<T>(policy, patch_sampler<T>(x, config.geometry, config.sampling_stride), plan,
                                         config.eps, config.isqrt);
  auto folded = fold(policy, estimate.statistics, weight, bias);
  return {std::move(estimate), std::move(folded)};
}

/// Linear statistics step (see file comment).
template <class Policy, class T>
statistics_step_result<T> linear_statistics_step(const Policy& policy, matrix_view<const T> x,
                                                 matrix_view<const T> weight, vector_view<const T> bias,
                                                 const linear_deconv_config& config) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  constexpr const char* fn = "linear_statistics_step";
  detail::check_view(fn, "x", x);
  detail::check_view(fn, "weight", weight);
  NETDECONV_REQUIRE(weight.shape[1] == x.shape[1], fn, "weight has Fin=", weight.shape[1], " but x has ", x.shape[1],
                    " features");
  const block_plan plan = make_block_plan(config.layout, x.shape[1], 1, config.block);
  detail::check_weight(fn, plan, detail::as_conv_weight(weight), bias);
  auto estimate = estimate_statistics<T>(policy, matrix_rows<T>(x), plan, config.eps, config.isqrt);
  auto folded = fold(policy, estimate.statistics, weight, bias);
  return {std::move(estimate), std::move(folded)};
}

}  // namespace netdeconv
