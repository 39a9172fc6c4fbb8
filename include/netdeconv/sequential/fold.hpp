// SPDX-License-Identifier: MIT
#pragma once
// Sequential weight folding: one row-vector-times-D product per (output, piece), in the order of
// the reference (w @ D), so D need not be exactly symmetric.

#include <Eigen/Core>

#include "../block_statistics.hpp"
#include "../blocks.hpp"
#include "../execution.hpp"
#include "../tensor_view.hpp"

namespace netdeconv::detail {

template <class T>
void fold_impl(const sequential_policy&, const block_statistics<T>& stats, image_view<const T> weight,
               vector_view<const T> bias, image_view<T> weight_out, vector_view<T> bias_out) {
  const block_plan& plan = stats.plan;
  const index_t cout = weight.shape[0], K = plan.kernel_area, kw = weight.shape[3];
  const index_t group_cols = weight.shape[1] * K, F = plan.features();
  Eigen::Matrix<T, 1, Eigen::Dynamic> w(F), folded(F);
  for (index_t o = 0; o < cout; ++o) {
    const index_t base = (o / (cout / plan.groups)) * group_cols;
    const auto at = [&](const auto& v, index_t col) -> auto& {
      const index_t local = col - base, c = local / K, k = local % K;
      return v(o, c, k / kw, k % kw);
    };
    T b = bias.empty() ? T(0) : bias(o);
    for (index_t s = 0; s < plan.count(); ++s)
      for (index_t g = 0; g < plan.rows_per_patch(); ++g) {
        const index_t first = plan.column(s, g, 0);
        if (first < base || first >= base + group_cols) continue;
        for (index_t f = 0; f < F; ++f) w[f] = at(weight, plan.column(s, g, f));
        folded.noalias() = w * stats.D[s];
        for (index_t f = 0; f < F; ++f) at(weight_out, plan.column(s, g, f)) = folded[f];
        b -= folded.dot(stats.mean[s]);
      }
    bias_out(o) = b;
  }
}

}  // namespace netdeconv::detail
