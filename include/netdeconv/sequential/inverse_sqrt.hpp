// SPDX-License-Identifier: MIT
#pragma once
// Sequential coupled Newton-Schulz and the exact eigendecomposition path (recurrences in
// ../inverse_sqrt.hpp).

#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>

#include "../execution.hpp"

namespace netdeconv::detail {

/// Status of A before iterating: non_finite, not_positive_definite (Cholesky in double fails or a
/// pivot is below F*epsilon(T)*max diag), else ok.
template <class T>
isqrt_status classify_spd(const Eigen::Ref<const square_matrix<T>>& A) {
  if (!A.allFinite()) return isqrt_status::non_finite;
  const Eigen::LLT<square_matrix<double>> llt(A.template cast<double>());
  if (llt.info() != Eigen::Success) return isqrt_status::not_positive_definite;
  const double floor = double(A.rows()) * double(std::numeric_limits<T>::epsilon()) *
                       A.diagonal().template cast<double>().cwiseAbs().maxCoeff();
  const double min_pivot = llt.matrixLLT().diagonal().cwiseAbs2().minCoeff();
  return min_pivot > floor ? isqrt_status::ok : isqrt_status::not_positive_definite;
}

/// The report of A's status before iterating (classify_spd); D is filled with NaN unless ok.
template <class T>
isqrt_report screen(const Eigen::Ref<const square_matrix<T>>& A, square_matrix<T>& D) {
  isqrt_report report;
  report.status = classify_spd<T>(A);
  if (report.status != isqrt_status::ok) {
    D = square_matrix<T>::Constant(A.rows(), A.rows(), std::numeric_limits<T>::quiet_NaN());
    report.residual = std::numeric_limits<double>::quiet_NaN();
  }
  return report;
}

template <class T>
isqrt_report inverse_sqrt_exact_impl(const Eigen::Ref<const square_matrix<T>>& A, square_matrix<T>& D);

template <class T>
isqrt_report newton_schulz(const Eigen::Ref<const square_matrix<T>>& A, square_matrix<T>& D,
                           const isqrt_options& options) {
  using M = square_matrix<T>;
  const index_t F = A.rows();
  isqrt_report report = screen<T>(A, D);
  if (report.status != isqrt_status::ok) return report;
  const T s = options.scaling == isqrt_scaling::frobenius ? A.norm() : A.trace();
  const M I = M::Identity(F, F);
  M Y = A / s, Z = I, P, Tk;
  const bool residual = options.tolerance > 0 || options.final_residual;
  for (int k = 0;; ++k) {
    if (k == options.iterations && !residual) {
      report.residual = std::numeric_limits<double>::quiet_NaN();
      report.iterations = k;
      break;
    }
    P.noalias() = Z * Y;
    report.residual = double((I - P).norm()) / std::sqrt(double(F));
    report.iterations = k;
    if (options.tolerance > 0 && report.residual <= options.tolerance) break;
    if (k == options.iterations) {
      if (options.tolerance > 0) report.status = isqrt_status::not_converged;
      break;
    }
    Tk = T(0.5) * (T(3) * I - P);
    Y = Y * Tk;
    Z = Tk * Z;
  }
  D = Z / std::sqrt(s);
  if (!D.allFinite() || (residual && !std::isfinite(report.residual))) report.status = isqrt_status::non_finite;
  return report;
}

template <class T>
isqrt_report inverse_sqrt_impl(const sequential_policy&, const Eigen::Ref<const square_matrix<T>>& A,
                               square_matrix<T>& D, const isqrt_options& options) {
  return options.method == isqrt_method::exact ? inverse_sqrt_exact_impl<T>(A, D) : newton_schulz<T>(A, D, options);
}

template <class T>
std::vector<isqrt_report> inverse_sqrt_batched_impl(const sequential_policy& policy, const std::vector<square_matrix<T>>& A,
                                                    std::vector<square_matrix<T>>& D, const isqrt_options& options) {
  std::vector<isqrt_report> reports(A.size());
  for (std::size_t i = 0; i < A.size(); ++i) reports[i] = inverse_sqrt_impl<T>(policy, A[i], D[i], options);
  return reports;
}

template <class T>
isqrt_report inverse_sqrt_exact_impl(const Eigen::Ref<const square_matrix<T>>& A, square_matrix<T>& D) {
  const index_t F = A.rows();
  isqrt_report report;
  const square_matrix<double> a = A.template cast<double>();
  const auto fail = [&](isqrt_status status) {
    D = square_matrix<T>::Constant(F, F, std::numeric_limits<T>::quiet_NaN());
    report.status = status;
    report.residual = std::numeric_limits<double>::quiet_NaN();
    return report;
  };
  if (!a.allFinite()) return fail(isqrt_status::non_finite);
  const Eigen::SelfAdjointEigenSolver<square_matrix<double>> eig(a);
  const auto& w = eig.eigenvalues();
  if (eig.info() != Eigen::Success) return fail(isqrt_status::non_finite);
  if (w.minCoeff() <= double(F) * std::numeric_limits<double>::epsilon() * w.cwiseAbs().maxCoeff())
    return fail(isqrt_status::not_positive_definite);
  const square_matrix<double> d = eig.eigenvectors() * w.cwiseSqrt().cwiseInverse().asDiagonal() *
                                  eig.eigenvectors().transpose();
  report.residual = (d * a * d - square_matrix<double>::Identity(F, F)).norm() / std::sqrt(double(F));
  D = d.template cast<T>();
  return report;
}

}  // namespace netdeconv::detail
