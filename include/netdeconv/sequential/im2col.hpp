// SPDX-License-Identifier: MIT
#pragma once
// Sequential im2col / col2im: direct loops over (n, oy, ox) x (c, ky, kx).

#include "../execution.hpp"
#include "../tensor_view.hpp"

namespace netdeconv::detail {

/// Calls f(row, col, n, c, y, x, inside) for every entry of the patch matrix in row-major order.
template <class T, class F>
void for_each_patch_entry(const image_view<T>& x, const conv_geometry& g, F&& f) {
  const index_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
  const index_t Ho = g.out_h(H), Wo = g.out_w(W);
  index_t row = 0;
  for (index_t n = 0; n < N; ++n)
    for (index_t oy = 0; oy < Ho; ++oy)
      for (index_t ox = 0; ox < Wo; ++ox, ++row) {
        index_t col = 0;
        for (index_t c = 0; c < C; ++c)
          for (index_t ky = 0; ky < g.kernel_h; ++ky) {
            const index_t y = oy * g.stride_h - g.pad_h + ky * g.dilation_h;
            for (index_t kx = 0; kx < g.kernel_w; ++kx, ++col) {
              const index_t xx = ox * g.stride_w - g.pad_w + kx * g.dilation_w;
              f(row, col, n, c, y, xx, y >= 0 && y < H && xx >= 0 && xx < W);
            }
          }
      }
}

template <class T>
void im2col_impl(const sequential_policy&, image_view<const T> x, const conv_geometry& g, matrix_view<T> cols) {
  for_each_patch_entry(x, g, [&](index_t r, index_t j, index_t n, index_t c, index_t y, index_t xx, bool inside) {
    cols(r, j) = inside ? x(n, c, y, xx) : T(0);
  });
}

template <class T>
void col2im_impl(const sequential_policy&, matrix_view<const T> cols, const conv_geometry& g, image_view<T> x) {
  for (index_t n = 0; n < x.shape[0]; ++n)
    for (index_t c = 0; c < x.shape[1]; ++c)
      for (index_t y = 0; y < x.shape[2]; ++y)
        for (index_t xx = 0; xx < x.shape[3]; ++xx) x(n, c, y, xx) = T(0);
  for_each_patch_entry(x, g, [&](index_t r, index_t j, index_t n, index_t c, index_t y, index_t xx, bool inside) {
    if (inside) x(n, c, y, xx) += cols(r, j);
  });
}

}  // namespace netdeconv::detail
