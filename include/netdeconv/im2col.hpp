// SPDX-License-Identifier: MIT
#pragma once
// im2col (the patch matrix of a convolution, geometry.hpp) and its adjoint col2im
// (docs/method.md §2). col2im adds every entry of cols back to the pixel it came from, so that
// <im2col(x), Y> == <x, col2im(Y)>.

#include "checks.hpp"
#include "error.hpp"
#include "execution.hpp"
#include "geometry.hpp"
#include "tensor_view.hpp"

#include "sequential/im2col.hpp"
#include "omp/im2col.hpp"

namespace netdeconv {

/// cols[(n,oy,ox), (c,ky,kx)] = x[n, c, oy*s - p + ky*d, ox*s - p + kx*d] (0 outside the image).
/// cols must be (N*Ho*Wo) x (C*kh*kw), with no two elements in the same memory and none in x's;
/// every entry is written. x is not modified.
template <class Policy, class T>
void im2col(const Policy& policy, image_view<const T> x, const conv_geometry& g, matrix_view<T> cols) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  detail::check_im2col("im2col", x, g, cols);
  detail::im2col_impl(policy, x, g, cols);
}

/// Adjoint of im2col: x[n,c,y,x] = sum of the cols entries that im2col reads from that pixel.
/// x is overwritten (entries no patch touches become 0); it must not share memory with cols or
/// with itself. cols is not modified.
template <class Policy, class T>
void col2im(const Policy& policy, matrix_view<const T> cols, const conv_geometry& g, image_view<T> x) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  detail::check_col2im("col2im", cols, g, x);
  detail::col2im_impl(policy, cols, g, x);
}

}  // namespace netdeconv
