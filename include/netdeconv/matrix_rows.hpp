// SPDX-License-Identifier: MIT
#pragma once
// The row source over an n x F matrix (rows are samples), for block_moments and the linear layer;
// patch_sampler (geometry.hpp) is the one over sampled conv patches. Eigen-free; over device memory
// it is the CUDA row source too.

#include "config.hpp"
#include "error.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

/// Row source over the rows of a matrix (rows are samples).
template <class T>
class matrix_rows {
 public:
  using value_type = T;

  explicit matrix_rows(matrix_view<const T> x) : x_(x) { detail::check_view("matrix_rows", "x", x); }
  NETDECONV_HOST_DEVICE index_t rows() const { return x_.shape[0]; }
  NETDECONV_HOST_DEVICE index_t width() const { return x_.shape[1]; }
  /// Entry (r, j), converted to Out (host or device code).
  template <class Out>
  NETDECONV_HOST_DEVICE Out value(index_t r, index_t j) const {
    return static_cast<Out>(x_(r, j));
  }
  template <class Out>
  void gather(index_t r, Out* out) const {
    for (index_t j = 0; j < x_.shape[1]; ++j) out[j] = static_cast<Out>(x_(r, j));
  }
  /// The matrix, for backends with their own gather.
  const matrix_view<const T>& matrix() const { return x_; }

 private:
  matrix_view<const T> x_;
};

}  // namespace netdeconv
