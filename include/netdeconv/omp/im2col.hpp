// SPDX-License-Identifier: MIT
#pragma once
// OpenMP im2col (threads over patch rows) and col2im (threads over images: the rows of image n
// only touch image n, so no two threads write the same pixel).

#include "../execution.hpp"
#include "../sequential/im2col.hpp"

namespace netdeconv::detail {

template <class T>
void im2col_impl(const omp_policy& policy, image_view<const T> x, const conv_geometry& g, matrix_view<T> cols) {
  const int threads = thread_count(policy);
  const index_t rows = cols.shape[0];
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1)
#endif
  for (int t = 0; t < threads; ++t) im2col_rows(x, g, cols, rows * t / threads, rows * (t + 1) / threads);
}

template <class T>
void col2im_impl(const omp_policy& policy, matrix_view<const T> cols, const conv_geometry& g, image_view<T> x) {
  [[maybe_unused]] const int threads = thread_count(policy);
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
  for (index_t n = 0; n < x.shape[0]; ++n) col2im_image(cols, g, x, n);
}

}  // namespace netdeconv::detail
