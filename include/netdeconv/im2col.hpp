// SPDX-License-Identifier: MIT
#pragma once
// im2col (the patch matrix of a convolution, geometry.hpp) and its adjoint col2im
// (docs/method.md §2). col2im adds every entry of cols back to the pixel it came from, so that
// <im2col(x), Y> == <x, col2im(Y)>.

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
  const auto shape = detail::patch_matrix_shape("im2col", x, g);
  detail::check_output_view("im2col", "cols", cols);
  detail::check_disjoint("im2col", "cols", cols, "x", x);
  NETDECONV_REQUIRE(cols.shape[0] == shape[0] && cols.shape[1] == shape[1], "im2col", "cols is ", cols.shape[0], "x",
                    cols.shape[1], " but the patch matrix is ", shape[0], "x", shape[1]);
  detail::im2col_impl(policy, x, g, cols);
}

/// Adjoint of im2col: x[n,c,y,x] = sum of the cols entries that im2col reads from that pixel.
/// x is overwritten (entries no patch touches become 0); it must not share memory with cols or
/// with itself. cols is not modified.
template <class Policy, class T>
void col2im(const Policy& policy, matrix_view<const T> cols, const conv_geometry& g, image_view<T> x) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  const auto shape = detail::patch_matrix_shape("col2im", image_view<const T>(x), g);
  detail::check_output_view("col2im", "x", x);
  detail::check_view("col2im", "cols", cols);
  detail::check_disjoint("col2im", "x", x, "cols", cols);
  NETDECONV_REQUIRE(cols.shape[0] == shape[0] && cols.shape[1] == shape[1], "col2im", "cols is ", cols.shape[0], "x",
                    cols.shape[1], " but the patch matrix of x is ", shape[0], "x", shape[1]);
  detail::col2im_impl(policy, cols, g, x);
}

}  // namespace netdeconv
