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

#include <vector>

#include "blocks.hpp"
#include "error.hpp"
#include "execution.hpp"
#include "geometry.hpp"
#include "matrix_rows.hpp"
#include "moments.hpp"
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
  constexpr const char* fn = "block_moments";
  detail::check_plan(fn, plan);
  const index_t width = detail::checked_mul(fn, "C*K", plan.channels, plan.kernel_area);
  NETDECONV_REQUIRE(source.width() == width, fn, "rows have ", source.width(), " columns but the plan needs C*K = ",
                    plan.channels, "*", plan.kernel_area, " = ", width);
  if constexpr (requires { source.sampling_geometry(); }) {  // patch rows: the same C and K, not only C*K
    const index_t C = source.image().shape[1], K = source.sampling_geometry().kernel_area();
    NETDECONV_REQUIRE(C == plan.channels && K == plan.kernel_area, fn, "the patches have C=", C, " and K=", K,
                      ", the plan has C=", plan.channels, " and K=", plan.kernel_area);
  }
  const index_t samples = detail::checked_mul(fn, "samples", source.rows(), plan.rows_per_patch());
  NETDECONV_REQUIRE(samples >= 2, fn, "statistics need >= 2 samples, got ", samples, " (", source.rows(),
                    " sampled rows x ", plan.rows_per_patch(), " per row)");
  return detail::block_moments_impl(policy, source, plan);
}

}  // namespace netdeconv
