// SPDX-License-Identifier: MIT
#pragma once
// OpenMP scatter of the statistics step's backward (../statistics_step_vjp.hpp), in the source's
// scalar type T. Work units are whole chunks of the adder (an image for a kernel > 1 patch map,
// so that no two threads add to the same pixel; tiles of rows otherwise), in parallel; each unit
// walks its rows in tiles of R rows (R * G * F about 16K values):
//   Xrow (R x width)  the tile's sampled rows, gathered
//   X_s  (R G_s x F)  per statistic, its pieces' columns, minus mean_s
//   V_s = X_s sym_s + 1 dmu_s^T        (one Eigen product, F x F)
//   Out (R x width)   V_s written back to the pieces' columns; add(r, Out row) for every row.
// No sampled patch matrix is formed: the extra memory is the tiles, per thread. Every pixel's
// additions happen in one unit in row order, so the result does not depend on the thread count.

#include <algorithm>
#include <vector>

#include <Eigen/Core>

#include "../blocks.hpp"
#include "../execution.hpp"
#include "../row_reader.hpp"
#include "../sequential/statistics_step_vjp.hpp"

namespace netdeconv::detail {

template <class Source, class Adder>
void scatter_patch_gradient(const omp_policy& policy, const Source& source, const block_plan& plan,
                            const patch_gradient& grad, const Adder& add) {
  using T = typename Source::value_type;
  using rows_t = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using vec_t = Eigen::Matrix<T, 1, Eigen::Dynamic>;
  const int threads = thread_count(policy);
  const index_t S = plan.count(), F = plan.features(), G = plan.rows_per_patch(), width = source.width(), rows = source.rows();
  std::vector<square_matrix<T>> sym(static_cast<std::size_t>(S));
  std::vector<vec_t> mean(static_cast<std::size_t>(S)), dmu(mean);
  for (index_t s = 0; s < S; ++s) {
    sym[std::size_t(s)] = grad.sym[std::size_t(s)].template cast<T>();
    mean[std::size_t(s)] = grad.mean[std::size_t(s)].transpose().template cast<T>();
    dmu[std::size_t(s)] = grad.dmu[std::size_t(s)].transpose().template cast<T>();
  }
  std::vector<std::vector<index_t>> column(static_cast<std::size_t>(S));  // column[s][g F + f] = plan.column(s, g, f)
  for (index_t s = 0; s < S; ++s)
    for (index_t g = 0; g < G; ++g)
      for (index_t f = 0; f < F; ++f) column[std::size_t(s)].push_back(plan.column(s, g, f));
  const row_reader<Source> reader(source);
  const index_t tile = std::max<index_t>(1, std::min<index_t>(rows, 16384 / std::max<index_t>(1, G * F)));
  const index_t chunk = add.chunk_rows(), unit = chunk > 1 ? chunk : tile;
  const index_t units = rows == 0 ? 0 : (rows - 1) / unit + 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1 && units > 1)
#endif
  {
    keep_eigen_in_thread();
    rows_t X(tile, width), Out(tile, width), Xs, V;
#ifdef _OPENMP
#pragma omp for schedule(dynamic)
#endif
    for (index_t u = 0; u < units; ++u) {
      const index_t u1 = std::min(rows, (u + 1) * unit);
      for (index_t r0 = u * unit; r0 < u1; r0 += tile) {
        const index_t nr = std::min(tile, u1 - r0);
        for (index_t i = 0; i < nr; ++i) {
          const T* b = reader.base(r0 + i);
          if (!b) {
            reader.gather(r0 + i, X.row(i).data());
            continue;
          }
          for (index_t j = 0; j < width; ++j) X(i, j) = b[reader.offset(j)];
        }
        for (index_t s = 0; s < S; ++s) {
          const index_t* col = column[std::size_t(s)].data();
          const T* mu = mean[std::size_t(s)].data();
          Xs.resize(nr * G, F);
          for (index_t i = 0; i < nr; ++i)
            for (index_t g = 0; g < G; ++g)
              for (index_t f = 0; f < F; ++f) Xs(i * G + g, f) = X(i, col[g * F + f]) - mu[f];
          V.noalias() = Xs * sym[std::size_t(s)];
          V.rowwise() += dmu[std::size_t(s)];
          for (index_t i = 0; i < nr; ++i)
            for (index_t g = 0; g < G; ++g)
              for (index_t f = 0; f < F; ++f) Out(i, col[g * F + f]) = V(i * G + g, f);
        }
        for (index_t i = 0; i < nr; ++i) add(r0 + i, Out.row(i).data());
      }
    }
  }
}

}  // namespace netdeconv::detail
