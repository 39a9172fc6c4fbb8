// SPDX-License-Identifier: MIT
#pragma once
// Sequential coupled Newton-Schulz and the exact eigendecomposition path (recurrences in
// ../inverse_sqrt.hpp).

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>

#include "../eigen.hpp"
#include "../execution.hpp"
#include "../isqrt_options.hpp"

namespace netdeconv::detail {

/// Status of A before iterating, the screen of every Newton-Schulz path:
///   non_finite             NaN or Inf in A, or a scale s that overflows double;
///   not_positive_definite  A has an eigenvalue below -tau, tau = F * epsilon(T) * max_i |a_ii|
///                          (the Cholesky factorisation of A + tau I fails in double); A = 0;
///   ok                     otherwise.
/// Why -tau and not a positive floor: a symmetric positive semi-definite M rounded to T is
/// A = M + E with |E_ij| <= u |M_ij| <= u sqrt(M_ii M_jj) (u = epsilon(T)/2), so
/// ||E||_2 <= ||E||_F <= u tr M <= tau/2. Every covariance of real data, Cov0 + eps I, therefore
/// passes whatever eps, its rank (fewer samples than features) or dead (all-zero) channels, and
/// only a matrix that is indefinite beyond its own rounding is refused. A singular positive
/// semi-definite A passes too: the truncated iteration is a polynomial in A/s and is defined there
/// (fixed mode returns it, as the reference layers do; converged mode reports not_converged).
/// (a is consumed: the shift is applied in place.)
template <class T>
isqrt_status classify_spd(square_matrix<double> a) {
  if (!a.allFinite()) return isqrt_status::non_finite;
  // Scaled to max |a_ij| = 1 first (definiteness and tau's test are scale-free) so that the factor
  // cannot overflow where A's entries span the double range; a factor that still is not finite
  // (NaN pivots pass Eigen's x <= 0 test) proves nothing, and is refused.
  if (const double scale = a.cwiseAbs().maxCoeff(); scale > 0) a /= scale;
  const double tau = double(a.rows()) * double(std::numeric_limits<T>::epsilon()) * a.diagonal().cwiseAbs().maxCoeff();
  a.diagonal().array() += tau;
  const Eigen::LLT<square_matrix<double>, Eigen::Lower> llt(a);
  return llt.info() == Eigen::Success && llt.matrixLLT().allFinite() ? isqrt_status::ok
                                                                     : isqrt_status::not_positive_definite;
}

/// The start of every Newton-Schulz path: the screen's report (D filled with NaN unless ok) and
/// the scale s = ||A||_F (or tr A), taken in double so that it neither overflows nor underflows
/// T (1e30 I and 1e-30 I in float are ordinary matrices).
struct screened {
  isqrt_report report;
  double scale = 0.0;
};

template <class T>
screened screen(const Eigen::Ref<const square_matrix<T>>& A, square_matrix<T>& D, isqrt_scaling scaling) {
  screened out;
  square_matrix<double> a = A.template cast<double>();
  out.scale = scaling == isqrt_scaling::frobenius ? a.stableNorm() : a.trace();  // before a is consumed
  out.report.status = classify_spd<T>(std::move(a));
  if (out.report.status == isqrt_status::ok) {
    if (!std::isfinite(out.scale))
      out.report.status = isqrt_status::non_finite;
    else if (!(out.scale > 0))  // tr A <= 0 within the tolerance above
      out.report.status = isqrt_status::not_positive_definite;
  }
  if (out.report.status != isqrt_status::ok) {
    D = square_matrix<T>::Constant(A.rows(), A.rows(), std::numeric_limits<T>::quiet_NaN());
    out.report.residual = std::numeric_limits<double>::quiet_NaN();
  }
  return out;
}

/// Y_0 = A/s, divided in double.
template <class T>
square_matrix<T> scaled(const Eigen::Ref<const square_matrix<T>>& A, double s) {
  return (A.template cast<double>() / s).template cast<T>();
}

/// D = Z_n / sqrt(s), divided in double; non_finite if D or the residual (when computed) is not finite.
template <class T>
void finish(const square_matrix<T>& Z, double s, bool residual, square_matrix<T>& D, isqrt_report& report) {
  D = (Z.template cast<double>() / std::sqrt(s)).template cast<T>();
  if (!D.allFinite() || (residual && !std::isfinite(report.residual))) report.status = isqrt_status::non_finite;
}

template <class T>
isqrt_report inverse_sqrt_exact_impl(const Eigen::Ref<const square_matrix<T>>& A, square_matrix<T>& D);

template <class T>
isqrt_report newton_schulz(const Eigen::Ref<const square_matrix<T>>& A, square_matrix<T>& D,
                           const isqrt_options& options) {
  using M = square_matrix<T>;
  const index_t F = A.rows();
  const auto [checked, s] = screen<T>(A, D, options.scaling);
  isqrt_report report = checked;
  if (report.status != isqrt_status::ok) return report;
  const M I = M::Identity(F, F);
  M Y = scaled<T>(A, s), Z = I, P, Tk;
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
  finish(Z, s, residual, D, report);
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
