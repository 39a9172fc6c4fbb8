// SPDX-License-Identifier: MIT
#pragma once
// The Eigen side of the vocabulary: square_matrix<T>, and adapters between Eigen objects and
// tensor_view (in place, no copies).
//
//   matrix_view<const double> m = view(eigen_matrix);      // any Eigen dense object with direct access
//   auto e = as_eigen(m);                                  // Eigen::Map with run-time strides

#include <type_traits>

#include <Eigen/Core>

#include "error.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

/// Dense F x F matrix of T (covariances, D).
template <class T>
using square_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

/// View of an Eigen dense object with direct access (Matrix, Map, Block, Ref), in place.
template <class Derived>
auto view(const Eigen::DenseBase<Derived>& m) {
  using Scalar = typename Derived::Scalar;
  static_assert(bool(Eigen::internal::traits<Derived>::Flags & Eigen::DirectAccessBit),
                "netdeconv::view needs an Eigen object with direct memory access (evaluate expressions first)");
  const index_t inner = m.innerStride(), outer = m.outerStride();
  return matrix_view<const Scalar>{m.derived().data(), {m.rows(), m.cols()},
                                   Derived::IsRowMajor ? index_array<2>{outer, inner}
                                                       : index_array<2>{inner, outer}};
}

/// Mutable view of an Eigen dense object with direct access.
template <class Derived>
auto view_mut(Eigen::DenseBase<Derived>& m) {
  using Scalar = typename Derived::Scalar;
  const auto v = view(m);
  return matrix_view<Scalar>{const_cast<Scalar*>(v.data), v.shape, v.stride};
}

/// Eigen::Map of a matrix view with run-time strides (column-major Map; stride order (outer, inner)).
template <class T>
auto as_eigen(const matrix_view<T>& m) {
  detail::check_view("as_eigen", "m", m);
  using Plain = Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic>;
  using MapT = Eigen::Map<std::conditional_t<std::is_const_v<T>, const Plain, Plain>, 0,
                          Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;
  return MapT(m.data, m.shape[0], m.shape[1], Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(m.stride[1], m.stride[0]));
}

}  // namespace netdeconv
