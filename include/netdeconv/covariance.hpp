// SPDX-License-Identifier: MIT
#pragma once
// Blocked moments of sampled patches (docs/method.md §3-4), without materialising the patch matrix.
//
// A row source (patch_sampler for conv inputs, matrix_rows for an n x F matrix) yields rows of
// width C*K; a block_plan maps each row to rows_per_patch() rows of F features for each of its
// count() statistics. block_moments() returns one moments<double> per statistic; accumulation is in
// double whatever the input type, in centred form (moments.hpp), so float32 data with large means
// keeps its covariance. Cov_s = moments[s].covariance<T>(eps).
//
//   auto plan = make_block_plan(block_layout::independent, C, 9, 16);
//   auto m = block_moments(par, patch_sampler<float>(x, conv_geometry::square(3), 3), plan);
//   Eigen::MatrixXf cov0 = m[0].covariance<float>(1e-5);
//   netdeconv::block_moments(par, sampler, plan, out);    // or into caller views (statistics_view.hpp)

#include <vector>

#include "blocks.hpp"
#include "checks.hpp"
#include "error.hpp"
#include "execution.hpp"
#include "geometry.hpp"
#include "matrix_rows.hpp"
#include "moments.hpp"
#include "statistics_view.hpp"
#include "tensor_view.hpp"

#include "sequential/covariance.hpp"
#include "omp/covariance.hpp"
#include "simd/covariance.hpp"

namespace netdeconv {

/// Moments of every statistic of `plan` over the rows of `source` (see file comment).
/// Throws if the source width is not C*K of the plan or if fewer than 2 rows reach a statistic.
template <class Policy, class Source>
std::vector<moments<double>> block_moments(const Policy& policy, const Source& source, const block_plan& plan) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  detail::check_block_moments("block_moments", source, plan);
  return detail::block_moments_impl(policy, source, plan);
}

/// The same moments written into `out` (count (S), mean (S, F), scatter (S, F, F) full symmetric;
/// S = plan.count(), F = plan.features()), e.g. a framework's tensors.
template <class Policy, class Source>
void block_moments(const Policy& policy, const Source& source, const block_plan& plan, const moments_view<double>& out) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  detail::check_block_moments("block_moments", source, plan);
  detail::check_output_moments("block_moments", "out", out, plan);
  detail::store_moments(detail::block_moments_impl(policy, source, plan), out);
}

}  // namespace netdeconv
