// SPDX-License-Identifier: MIT
#pragma once
// OpenMP weight folding, as Eigen GEMMs instead of one row-vector product per (output, piece) instead of one row-vector product per (output, piece). For statistic s,
// the pieces w = W[o, column(s, g, :)] that lie in o's input group are the rows r = (o, g) of a
// (pieces x F) matrix. Each thread takes a contiguous range of rows and walks it in tiles: gather
// the tile through a per-piece offset table (no index division per element), multiply by D_s
// (Eigen GEMM, in the thread), scatter into W'; then b'[o] = b[o] - sum over o's pieces of
// (w D_s) . mu_s, summed in row order (deterministic for any thread count), as in the sequential
// fold. Extra memory: two tiles per thread and the row tables.

#include <algorithm>
#include <vector>

#include <Eigen/Core>

#include "../block_statistics.hpp"
#include "../blocks.hpp"
#include "../execution.hpp"
#include "../tensor_view.hpp"

namespace netdeconv::detail {

template <class T>
void fold_impl(const omp_policy& policy, const block_statistics<T>& stats, image_view<const T> weight,
               vector_view<const T> bias, image_view<T> weight_out, vector_view<T> bias_out) {
  using rows_t = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const block_plan& plan = stats.plan;
  const index_t cout = weight.shape[0], K = plan.kernel_area, kw = weight.shape[3];
  const index_t group_cols = weight.shape[1] * K, per_group = cout / plan.groups;
  const index_t F = plan.features(), G = plan.rows_per_patch();
  const index_t tile = std::max<index_t>(64, 65536 / F);
  const int threads = thread_count(policy);
  // offset of a column local to its group (channel c = local / K, tap k = local % K) in a view
  const auto offset = [&](const auto& v, index_t local) {
    const index_t c = local / K, k = local % K;
    return c * v.stride[1] + (k / kw) * v.stride[2] + (k % kw) * v.stride[3];
  };
  std::vector<T> b(cout);
  for (index_t o = 0; o < cout; ++o) b[o] = bias.empty() ? T(0) : bias(o);
  std::vector<index_t> in_off(G * F), out_off(G * F), group(G), owner, piece;
  std::vector<T> dots;
  for (index_t s = 0; s < plan.count(); ++s) {
    for (index_t g = 0; g < G; ++g) {
      group[g] = plan.column(s, g, 0) / group_cols;
      for (index_t f = 0; f < F; ++f) {
        const index_t local = plan.column(s, g, f) - group[g] * group_cols;
        in_off[g * F + f] = offset(weight, local);
        out_off[g * F + f] = offset(weight_out, local);
      }
    }
    owner.clear();
    piece.clear();
    for (index_t o = 0; o < cout; ++o)
      for (index_t g = 0; g < G; ++g)
        if (group[g] == o / per_group) {
          owner.push_back(o);
          piece.push_back(g);
        }
    const index_t rows = index_t(owner.size());
    dots.assign(rows, T(0));
    const auto& D = stats.D[s];
    const auto& mu = stats.mean[s];
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
      const auto [t, nt] = this_team_position();
      keep_eigen_in_thread();
      rows_t w, folded;
      for (index_t r0 = rows * t / nt, end = rows * (t + 1) / nt; r0 < end; r0 += tile) {
        const index_t m = std::min(tile, end - r0);
        w.resize(m, F);
        for (index_t i = 0; i < m; ++i) {
          const T* src = weight.data + owner[r0 + i] * weight.stride[0];
          const index_t* off = in_off.data() + piece[r0 + i] * F;
          for (index_t f = 0; f < F; ++f) w(i, f) = src[off[f]];
        }
        folded.noalias() = w * D;
        for (index_t i = 0; i < m; ++i) {
          T* dst = weight_out.data + owner[r0 + i] * weight_out.stride[0];
          const index_t* off = out_off.data() + piece[r0 + i] * F;
          for (index_t f = 0; f < F; ++f) dst[off[f]] = folded(i, f);
          dots[r0 + i] = folded.row(i).dot(mu.transpose());
        }
      }
    }
    for (index_t r = 0; r < rows; ++r) b[owner[r]] -= dots[r];
  }
  for (index_t o = 0; o < cout; ++o) bias_out(o) = b[o];
}

}  // namespace netdeconv::detail
