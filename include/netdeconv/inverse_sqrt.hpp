// SPDX-License-Identifier: MIT
#pragma once
// Inverse square root D ~ A^(-1/2) of a symmetric positive definite F x F matrix (docs/method.md §5).
//
// Coupled Newton-Schulz (Denman-Beavers form), computed in the scalar type T:
//   s = ||A||_F (or tr A);  Y_0 = A/s;  Z_0 = I
//   P_k = Z_k Y_k;  T_k = (3I - P_k)/2;  Y_{k+1} = Y_k T_k;  Z_{k+1} = T_k Z_k
//   D = Z_n / sqrt(s)            (Y_n * sqrt(s) ~ A^(1/2) is a by-product)
// Fixed mode (tolerance == 0) runs exactly `iterations` steps: the truncated iteration of the
// reference layers, which is deliberately NOT converged for eigenvalues far below s. Converged mode
// (tolerance > 0) stops as soon as residual <= tolerance, after at most `iterations` steps.
// residual = ||I - Z_n Y_n||_F / sqrt(F), which equals ||D A D - I||_F / sqrt(F) in exact arithmetic.
//
// inverse_sqrt_exact is the float64 verification path: D = V diag(w^-1/2) V^T from Eigen's
// SelfAdjointEigenSolver.
//
// The scale s is computed in double and Y_0 = A/s, D = Z_n/sqrt(s) are divided in double, so a
// matrix of any magnitude that T represents is whitened (1e30 I and 1e-30 I in float).
//
// Failures of the data are statuses, not exceptions: non_finite (NaN/Inf in A or in the result),
// not_positive_definite (an eigenvalue below -F*epsilon(T)*max_i |a_ii|, i.e. indefinite beyond
// the rounding of A; or A = 0: see classify_spd in sequential/inverse_sqrt.hpp for why covariances
// of real data, rank-deficient or with dead channels, always pass), not_converged (tolerance not
// reached). For the first two, D is filled with NaN so it cannot be used by accident. The exact
// path needs a positive definite A: it reports not_positive_definite when the smallest eigenvalue
// is <= F*2^-52 times the largest. Every result with status ok is finite.
//
// Argument errors throw invalid_argument: A not square or empty, A not symmetric (beyond
// ||A - A^T||_F <= F*epsilon(T)*||A||_F, checked when A is finite), iterations outside
// [0, isqrt_max_iterations], tolerance < 0.
//
//   Eigen::MatrixXf D;
//   auto report = netdeconv::inverse_sqrt(netdeconv::seq, cov, D, netdeconv::isqrt_options::converged(1e-4));
//   if (report.status != netdeconv::isqrt_status::ok) { ... }

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "checks.hpp"
#include "eigen.hpp"
#include "error.hpp"
#include "execution.hpp"
#include "isqrt_options.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

namespace detail {

/// ||A - A^T||_F and the bound F*epsilon(T)*||A||_F it must not exceed, in double (square A).
struct symmetry {
  double asymmetry = 0, bound = 0;
  bool ok() const { return asymmetry <= bound; }
};

template <class T>
symmetry measure_symmetry(const Eigen::Ref<const square_matrix<T>>& A) {
  symmetry out;
  for (index_t j = 0; j < A.cols(); ++j)
    for (index_t i = 0; i < j; ++i) {
      const double d = double(A(i, j)) - double(A(j, i));
      out.asymmetry += 2 * d * d;
    }
  out.asymmetry = std::sqrt(out.asymmetry);
  out.bound = double(A.rows()) * double(std::numeric_limits<T>::epsilon()) * A.template cast<double>().stableNorm();
  return out;
}

template <class T>
void check_square_symmetric(const char* fn, const char* name, const Eigen::Ref<const square_matrix<T>>& A) {
  NETDECONV_REQUIRE(A.rows() == A.cols(), fn, name, " must be square, got ", A.rows(), "x", A.cols());
  NETDECONV_REQUIRE(A.rows() >= 1, fn, name, " must be at least 1x1, got ", A.rows(), "x", A.cols());
  if (!A.allFinite()) return;  // reported as non_finite
  const symmetry sym = measure_symmetry<T>(A);
  NETDECONV_REQUIRE(sym.ok(), fn, name, " is not symmetric: ||A - A^T||_F = ", sym.asymmetry,
                    " exceeds F*epsilon*||A||_F = ", sym.bound);
}

}  // namespace detail
}  // namespace netdeconv

#include "sequential/inverse_sqrt.hpp"
#include "omp/inverse_sqrt.hpp"

namespace netdeconv {

/// D (resized to F x F) ~ A^(-1/2) by the coupled Newton-Schulz iteration in T (or the exact path
/// when options.method is exact). A is not modified.
template <class Policy, class Derived>
isqrt_report inverse_sqrt(const Policy& policy, const Eigen::MatrixBase<Derived>& A,
                          square_matrix<typename Derived::Scalar>& D, const isqrt_options& options = {}) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  using T = typename Derived::Scalar;
  detail::check_isqrt_options("inverse_sqrt", options);
  const Eigen::Ref<const square_matrix<T>> a(A.derived());
  detail::check_square_symmetric<T>("inverse_sqrt", "A", a);
  return detail::inverse_sqrt_impl<T>(policy, a, D, options);
}

/// Batched form: D[i] ~ A[i]^(-1/2) for every block (sizes may differ); one report per block.
template <class Policy, class T>
std::vector<isqrt_report> inverse_sqrt(const Policy& policy, const std::vector<square_matrix<T>>& A,
                                       std::vector<square_matrix<T>>& D, const isqrt_options& options = {}) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  detail::check_isqrt_options("inverse_sqrt", options);
  for (std::size_t i = 0; i < A.size(); ++i) {
    const std::string name = "A[" + std::to_string(i) + "]";
    detail::check_square_symmetric<T>("inverse_sqrt", name.c_str(), A[i]);
  }
  D.resize(A.size());
  return detail::inverse_sqrt_batched_impl(policy, A, D, options);
}

/// Batched form on views, for every backend: D[b] ~ A[b]^(-1/2) for the batch of F x F matrices
/// A (batch, F, F), any strides; D of A's shape; reports[b] = the report of matrix b. A is read
/// (its symmetry checked as above) and not modified.
template <class Policy, class T>
void inverse_sqrt(const Policy& policy, tensor_view<const T, 3> A, tensor_view<T, 3> D, const isqrt_options& options,
                  vector_view<isqrt_report> reports) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  detail::check_inverse_sqrt_batch("inverse_sqrt", A, D, options, reports);
  const index_t batch = A.shape[0], F = A.shape[1];
  std::vector<square_matrix<T>> a(std::size_t(batch), square_matrix<T>(F, F)), d;
  for (index_t b = 0; b < batch; ++b)
    for (index_t i = 0; i < F; ++i)
      for (index_t j = 0; j < F; ++j) a[std::size_t(b)](i, j) = A(b, i, j);
  const std::vector<isqrt_report> r = inverse_sqrt(policy, a, d, options);
  for (index_t b = 0; b < batch; ++b) {
    reports(b) = r[std::size_t(b)];
    for (index_t i = 0; i < F; ++i)
      for (index_t j = 0; j < F; ++j) D(b, i, j) = d[std::size_t(b)](i, j);
  }
}

/// Exact float64 path: D = V diag(w^-1/2) V^T (eigendecomposition of A in double), converted to T.
/// not_positive_definite when the smallest eigenvalue is <= F * 2^-52 times the largest.
template <class Derived>
isqrt_report inverse_sqrt_exact(const Eigen::MatrixBase<Derived>& A, square_matrix<typename Derived::Scalar>& D) {
  using T = typename Derived::Scalar;
  const Eigen::Ref<const square_matrix<T>> a(A.derived());
  detail::check_square_symmetric<T>("inverse_sqrt_exact", "A", a);
  return detail::inverse_sqrt_exact_impl<T>(a, D);
}

}  // namespace netdeconv
