// SPDX-License-Identifier: MIT
#pragma once
// Weight folding as one GEMM per statistic instead of one row-vector product per (output, piece):
// the pieces w = W[o, column(s, g, :)] that lie in o's input group are gathered as the rows of a
// (pieces x F) matrix, multiplied by D_s at once (Eigen GEMM, OpenMP threads), and scattered back;
// b'[o] = b[o] - sum of (w D_s) . mu_s over o's pieces, as in the sequential fold. Extra memory: two
// pieces x F matrices (the size of the weights).

#include <Eigen/Core>

#include "../blocks.hpp"
#include "../execution.hpp"
#include "../tensor_view.hpp"

namespace netdeconv::detail {

template <class T>
void fold_impl(const simd_policy& policy, const block_statistics<T>& stats, image_view<const T> weight,
               vector_view<const T> bias, image_view<T> weight_out, vector_view<T> bias_out) {
  using rows_t = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const block_plan& plan = stats.plan;
  const index_t cout = weight.shape[0], K = plan.kernel_area, kw = weight.shape[3];
  const index_t group_cols = weight.shape[1] * K, F = plan.features(), G = plan.rows_per_patch();
  const int threads = thread_count(policy);
  std::vector<T> b(cout);
  for (index_t o = 0; o < cout; ++o) b[o] = bias.empty() ? T(0) : bias(o);
  std::vector<index_t> owner, piece;  // output channel and g of each gathered row
  rows_t w, folded;
  for (index_t s = 0; s < plan.count(); ++s) {
    owner.clear();
    piece.clear();
    for (index_t o = 0; o < cout; ++o) {
      const index_t base = (o / (cout / plan.groups)) * group_cols;
      for (index_t g = 0; g < G; ++g) {
        const index_t first = plan.column(s, g, 0);
        if (first < base || first >= base + group_cols) continue;
        owner.push_back(o);
        piece.push_back(g);
      }
    }
    const index_t rows = index_t(owner.size());
    if (rows == 0) continue;
    w.resize(rows, F);
    folded.resize(rows, F);
    const auto at = [&](const auto& v, index_t o, index_t col) -> auto& {
      const index_t local = col - (o / (cout / plan.groups)) * group_cols, c = local / K, k = local % K;
      return v(o, c, k / kw, k % kw);
    };
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
    for (index_t r = 0; r < rows; ++r)
      for (index_t f = 0; f < F; ++f) w(r, f) = at(weight, owner[r], plan.column(s, piece[r], f));
    folded.noalias() = w * stats.D[s];
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
    for (index_t r = 0; r < rows; ++r)
      for (index_t f = 0; f < F; ++f) at(weight_out, owner[r], plan.column(s, piece[r], f)) = folded(r, f);
    for (index_t r = 0; r < rows; ++r) b[owner[r]] -= folded.row(r).dot(stats.mean[s].transpose());
  }
  for (index_t o = 0; o < cout; ++o) bias_out(o) = b[o];
}

}  // namespace netdeconv::detail
