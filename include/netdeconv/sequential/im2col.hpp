// SPDX-License-Identifier: MIT
#pragma once
// Sequential im2col / col2im: one patch row at a time (detail::visit_patch_row).

#include "../execution.hpp"
#include "../geometry.hpp"
#include "../tensor_view.hpp"

namespace netdeconv::detail {

/// Patch rows [begin, end) of cols.
template <class T>
void im2col_rows(image_view<const T> x, const conv_geometry& g, matrix_view<T> cols, index_t begin, index_t end) {
  const index_t Ho = g.out_h(x.shape[2]), Wo = g.out_w(x.shape[3]);
  for (index_t r = begin; r < end; ++r)
    visit_patch_row(x, g, Ho, Wo, r, [&](index_t j, index_t n, index_t c, index_t y, index_t xx, bool inside) {
      cols(r, j) = inside ? x(n, c, y, xx) : T(0);
    });
}

/// Image n of col2im: zero it, then add back every entry of its Ho*Wo patch rows.
template <class T>
void col2im_image(matrix_view<const T> cols, const conv_geometry& g, image_view<T> x, index_t n) {
  const index_t Ho = g.out_h(x.shape[2]), Wo = g.out_w(x.shape[3]);
  for (index_t c = 0; c < x.shape[1]; ++c)
    for (index_t y = 0; y < x.shape[2]; ++y)
      for (index_t xx = 0; xx < x.shape[3]; ++xx) x(n, c, y, xx) = T(0);
  for (index_t r = n * Ho * Wo; r < (n + 1) * Ho * Wo; ++r)
    visit_patch_row(x, g, Ho, Wo, r, [&](index_t j, index_t, index_t c, index_t y, index_t xx, bool inside) {
      if (inside) x(n, c, y, xx) += cols(r, j);
    });
}

template <class T>
void im2col_impl(const sequential_policy&, image_view<const T> x, const conv_geometry& g, matrix_view<T> cols) {
  im2col_rows(x, g, cols, 0, cols.shape[0]);
}

template <class T>
void col2im_impl(const sequential_policy&, matrix_view<const T> cols, const conv_geometry& g, image_view<T> x) {
  for (index_t n = 0; n < x.shape[0]; ++n) col2im_image(cols, g, x, n);
}

}  // namespace netdeconv::detail
