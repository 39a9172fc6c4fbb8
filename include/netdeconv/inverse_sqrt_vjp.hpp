// SPDX-License-Identifier: MIT
#pragma once
// Vector-Jacobian product of the inverse square root (docs/method.md §5, "Gradient"): given
// D = inverse_sqrt(A, options) and G = dL/dD (F x F), dA = dL/dA, for every entry of A as an
// independent variable (what autograd computes; a caller whose A is symmetric by construction
// takes sym(dA) = (dA + dA^T)/2).
//
// Fixed mode (Newton-Schulz, tolerance 0): the exact gradient of the truncated iteration that ran
// (inverse_sqrt.hpp), in T, with s and the divisions in double as in the forward:
//   forward  Y_0 = A/s, Z_0 = I;  P_k = Z_k Y_k;  T_k = (3I - P_k)/2;  Y_{k+1} = Y_k T_k;  Z_{k+1} = T_k Z_k
//   start    Zb_n = G / sqrt(s),  Yb_n = 0,  sb = -<G, Z_n> / (2 s^(3/2))
//   step     Pb = -(Y_k^T Yb_{k+1} + Zb_{k+1} Z_k^T)/2
//            Yb_k = Yb_{k+1} T_k^T + Z_k^T Pb,   Zb_k = T_k^T Zb_{k+1} + Pb Y_k^T
//   end      sb -= <Yb_0, A>/s^2;   dA = Yb_0/s + sb ds/dA,  ds/dA = A/s (Frobenius) or I (trace)
// This is the gradient autograd takes through the reference layers. The OpenMP backend (par)
// differentiates the iteration its forward runs, whose iterates are symmetric, with the
// transposes dropped and every iterate kept (omp/inverse_sqrt_vjp.hpp): the same gradient to rounding.
// Converged mode and the exact method: the gradient of the true A^(-1/2), from the float64
// eigendecomposition A = U diag(w) U^T (the derivative of the spectral function w^(-1/2): the
// divided differences (r_i^-1 - r_j^-1)/(w_i - w_j), written without cancellation):
//   dA = U (K o (U^T G U)) U^T,  K_ij = -1 / (r_i r_j (r_i + r_j)),  r = sqrt(w).
//
// Reports: fixed mode gives the forward's screen (non_finite, not_positive_definite), iterations
// = n and the forward's residual ||I - Z_n Y_n||_F / sqrt(F); the root gradient gives
// not_positive_definite when the smallest eigenvalue is <= F 2^-52 times the largest, and the
// exact root's residual. NaN/Inf in A or G, or in the result: non_finite. A failed report comes
// with dA filled with NaN. Argument errors throw invalid_argument, as inverse_sqrt's (G must have
// A's shape).
//
//   square_matrix<float> dA;
//   auto report = netdeconv::inverse_sqrt_vjp(netdeconv::seq, A, dL_dD, dA, netdeconv::isqrt_options::fixed(5));

#include <string>
#include <vector>

#include <Eigen/Core>

#include "checks.hpp"
#include "eigen.hpp"
#include "execution.hpp"
#include "inverse_sqrt.hpp"
#include "isqrt_options.hpp"
#include "omp/inverse_sqrt_vjp.hpp"
#include "sequential/inverse_sqrt_vjp.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

/// dA (resized to F x F) = dL/dA of D = inverse_sqrt(A, options), given G = dL/dD (see file comment).
template <class Policy, class DerivedA, class DerivedG>
isqrt_report inverse_sqrt_vjp(const Policy& policy, const Eigen::MatrixBase<DerivedA>& A,
                              const Eigen::MatrixBase<DerivedG>& G, square_matrix<typename DerivedA::Scalar>& dA,
                              const isqrt_options& options = {}) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  using T = typename DerivedA::Scalar;
  static_assert(std::is_same_v<T, typename DerivedG::Scalar>, "A and G must have the same scalar type");
  constexpr const char* fn = "inverse_sqrt_vjp";
  detail::check_isqrt_options(fn, options);
  const Eigen::Ref<const square_matrix<T>> a(A.derived()), g(G.derived());
  detail::check_square_symmetric<T>(fn, "A", a);
  NETDECONV_REQUIRE(g.rows() == a.rows() && g.cols() == a.cols(), fn, "G is ", g.rows(), "x", g.cols(), ", A is ", a.rows(),
                    "x", a.cols());
  return detail::inverse_sqrt_vjp_impl<T>(policy, a, g, dA, options);
}

/// Batched form on views: dA[b] for A[b], G[b] (batch, F, F), any strides; dA of A's shape;
/// reports[b] the report of matrix b. A and G are read and not modified.
template <class Policy, class T>
void inverse_sqrt_vjp(const Policy& policy, tensor_view<const T, 3> A, tensor_view<const T, 3> G, tensor_view<T, 3> dA,
                      const isqrt_options& options, vector_view<isqrt_report> reports) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  constexpr const char* fn = "inverse_sqrt_vjp";
  detail::check_inverse_sqrt_vjp_batch(fn, A, G, dA, options, reports);
  const index_t batch = A.shape[0], F = A.shape[1];
  std::vector<square_matrix<T>> a(std::size_t(batch), square_matrix<T>(F, F)), g(a);
  for (index_t b = 0; b < batch; ++b) {
    for (index_t i = 0; i < F; ++i)
      for (index_t j = 0; j < F; ++j) a[std::size_t(b)](i, j) = A(b, i, j), g[std::size_t(b)](i, j) = G(b, i, j);
    const std::string name = "A[" + std::to_string(b) + "]";
    detail::check_square_symmetric<T>(fn, name.c_str(), a[std::size_t(b)]);
  }
  std::vector<square_matrix<T>> da;
  const std::vector<isqrt_report> r = detail::inverse_sqrt_vjp_batched_impl<T>(policy, a, g, da, options);
  for (index_t b = 0; b < batch; ++b) {
    reports(b) = r[std::size_t(b)];
    for (index_t i = 0; i < F; ++i)
      for (index_t j = 0; j < F; ++j) dA(b, i, j) = da[std::size_t(b)](i, j);
  }
}

}  // namespace netdeconv
