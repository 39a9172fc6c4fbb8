// SPDX-License-Identifier: MIT
#pragma once
// Sequential vector-Jacobian products of the inverse square root (recurrences in
// ../inverse_sqrt_vjp.hpp).

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include <Eigen/Eigenvalues>

#include "../eigen.hpp"
#include "../execution.hpp"
#include "../isqrt_options.hpp"
#include "inverse_sqrt.hpp"

namespace netdeconv::detail {

/// A report `status` with dA filled with NaN, so that it cannot be used by accident.
template <class T>
isqrt_report failed_vjp(isqrt_report report, isqrt_status status, index_t F, square_matrix<T>& dA) {
  report.status = status;
  report.residual = std::numeric_limits<double>::quiet_NaN();
  dA = square_matrix<T>::Constant(F, F, std::numeric_limits<T>::quiet_NaN());
  return report;
}

/// The fixed-mode gradient's screen: the forward's (its report and scale s), and NaN/Inf in G
/// (non_finite). A report that is not ok comes with dA filled with NaN.
template <class T>
std::pair<isqrt_report, double> screen_vjp(const Eigen::Ref<const square_matrix<T>>& A,
                                           const Eigen::Ref<const square_matrix<T>>& G, square_matrix<T>& dA,
                                           isqrt_scaling scaling) {
  square_matrix<T> unused;
  const auto [report, s] = screen<T>(A, unused, scaling);
  if (report.status != isqrt_status::ok) return {failed_vjp(report, report.status, A.rows(), dA), s};
  if (!G.allFinite()) return {failed_vjp(report, isqrt_status::non_finite, A.rows(), dA), s};
  return {report, s};
}

/// The fixed-mode gradient's last step, in double: sb -= <Yb_0, A>/s^2, dA = Yb_0/s + sb ds/dA
/// (ds/dA = A/s for Frobenius scaling, I for trace); non_finite if dA or the residual is not finite.
template <class T>
isqrt_report finish_vjp(const Eigen::Ref<const square_matrix<T>>& A, const square_matrix<T>& Yb, double sb, double s,
                        isqrt_scaling scaling, isqrt_report report, square_matrix<T>& dA) {
  sb -= Yb.template cast<double>().cwiseProduct(A.template cast<double>()).sum() / (s * s);
  if (scaling == isqrt_scaling::frobenius) {
    dA = (Yb.template cast<double>() / s + (sb / s) * A.template cast<double>()).template cast<T>();
  } else {
    dA = (Yb.template cast<double>() / s).template cast<T>();
    for (index_t i = 0; i < A.rows(); ++i) dA(i, i) = T(double(Yb(i, i)) / s + sb);
  }
  if (!dA.allFinite() || !std::isfinite(report.residual)) return failed_vjp(report, isqrt_status::non_finite, A.rows(), dA);
  return report;
}

/// The gradient of the truncated iteration that ran (fixed mode). The forward states are kept at
/// every c-th step (c = ceil(sqrt(n))) and each segment is recomputed once on the way back:
/// about 4 sqrt(n) F x F matrices of T, and 2n more products than keeping them all.
template <class T>
isqrt_report newton_schulz_vjp(const Eigen::Ref<const square_matrix<T>>& A, const Eigen::Ref<const square_matrix<T>>& G,
                               square_matrix<T>& dA, const isqrt_options& options) {
  using M = square_matrix<T>;
  const index_t F = A.rows();
  const int n = options.iterations;
  auto [report, s] = screen_vjp<T>(A, G, dA, options.scaling);
  if (report.status != isqrt_status::ok) return report;
  const M I = M::Identity(F, F);
  const auto step = [&](const M& Y, const M& Z, M& Tk, M& Yn, M& Zn) {
    Tk = T(0.5) * (T(3) * I - Z * Y);
    Yn = Y * Tk;
    Zn = Tk * Z;
  };
  // Forward, keeping (Y_k, Z_k) at k = 0, c, 2c, ...
  const int c = std::max(1, int(std::ceil(std::sqrt(double(n)))));
  std::vector<M> Ys{scaled<T>(A, s)}, Zs{I};
  M Y = Ys[0], Z = I, Tk, Yn, Zn;
  for (int k = 0; k < n; ++k) {
    step(Y, Z, Tk, Yn, Zn);
    Y = Yn, Z = Zn;
    if ((k + 1) % c == 0 && k + 1 < n) Ys.push_back(Y), Zs.push_back(Z);
  }
  report.iterations = n;
  report.residual = double((I - Z * Y).norm()) / std::sqrt(double(F));
  // D = Z_n / sqrt(s): adjoints of Z_n and s.
  const square_matrix<double> g = G.template cast<double>();
  const double root = std::sqrt(s);
  M Zb = (g / root).template cast<T>(), Yb = M::Zero(F, F);
  double sb = -0.5 * g.cwiseProduct(Z.template cast<double>()).sum() / (s * root);
  // Backward over the segments [j c, min(n, (j + 1) c)), last first.
  std::vector<M> Yk, Zk, Tks;
  for (int j = int(Ys.size()) - 1; j >= 0; --j) {
    const int first = j * c, last = std::min(n, first + c);
    Yk.assign(1, Ys[std::size_t(j)]), Zk.assign(1, Zs[std::size_t(j)]), Tks.clear();
    for (int k = first; k < last; ++k) {
      step(Yk.back(), Zk.back(), Tk, Yn, Zn);
      Tks.push_back(Tk), Yk.push_back(Yn), Zk.push_back(Zn);
    }
    for (int k = last - 1; k >= first; --k) {
      const std::size_t i = std::size_t(k - first);
      const M& Yi = Yk[i];
      const M& Zi = Zk[i];
      const M& Ti = Tks[i];
      // Y' = Y T, Z' = T Z, T = (3I - P)/2, P = Z Y.
      const M Pb = T(-0.5) * (Yi.transpose() * Yb + Zb * Zi.transpose());
      M Yb_prev = Yb * Ti.transpose() + Zi.transpose() * Pb;
      M Zb_prev = Ti.transpose() * Zb + Pb * Yi.transpose();
      Yb = std::move(Yb_prev), Zb = std::move(Zb_prev);
    }
  }
  return finish_vjp<T>(A, Yb, sb, s, options.scaling, report, dA);
}

/// The gradient of the true A^(-1/2) (converged and exact modes), in double:
/// A = U diag(w) U^T, dA = U (K o (U^T G U)) U^T, K_ij = -1 / (r_i r_j (r_i + r_j)), r = sqrt(w).
template <class T>
isqrt_report root_vjp(const Eigen::Ref<const square_matrix<T>>& A, const Eigen::Ref<const square_matrix<T>>& G,
                      square_matrix<T>& dA) {
  const index_t F = A.rows();
  isqrt_report report;
  const square_matrix<double> a = A.template cast<double>();
  if (!a.allFinite() || !G.allFinite()) return failed_vjp(report, isqrt_status::non_finite, F, dA);
  const Eigen::SelfAdjointEigenSolver<square_matrix<double>> eig(a);
  if (eig.info() != Eigen::Success) return failed_vjp(report, isqrt_status::non_finite, F, dA);
  const auto& w = eig.eigenvalues();
  if (w.minCoeff() <= double(F) * std::numeric_limits<double>::epsilon() * w.cwiseAbs().maxCoeff())
    return failed_vjp(report, isqrt_status::not_positive_definite, F, dA);
  const square_matrix<double>& U = eig.eigenvectors();
  const Eigen::VectorXd r = w.cwiseSqrt();
  square_matrix<double> k = U.transpose() * G.template cast<double>() * U;
  for (index_t j = 0; j < F; ++j)
    for (index_t i = 0; i < F; ++i) k(i, j) *= -1.0 / (r[i] * r[j] * (r[i] + r[j]));
  const square_matrix<double> d = U * r.cwiseInverse().asDiagonal() * U.transpose();
  report.residual = (d * a * d - square_matrix<double>::Identity(F, F)).norm() / std::sqrt(double(F));
  dA = (U * k * U.transpose()).template cast<T>();
  if (!dA.allFinite()) return failed_vjp(report, isqrt_status::non_finite, F, dA);
  return report;
}

template <class T>
isqrt_report inverse_sqrt_vjp_impl(const sequential_policy&, const Eigen::Ref<const square_matrix<T>>& A,
                                   const Eigen::Ref<const square_matrix<T>>& G, square_matrix<T>& dA,
                                   const isqrt_options& options) {
  const bool truncated = options.method == isqrt_method::newton_schulz && options.tolerance == 0;
  return truncated ? newton_schulz_vjp<T>(A, G, dA, options) : root_vjp<T>(A, G, dA);
}

template <class T>
std::vector<isqrt_report> inverse_sqrt_vjp_batched_impl(const sequential_policy& policy, const std::vector<square_matrix<T>>& A,
                                                        const std::vector<square_matrix<T>>& G,
                                                        std::vector<square_matrix<T>>& dA, const isqrt_options& options) {
  std::vector<isqrt_report> reports(A.size());
  dA.resize(A.size());
  for (std::size_t i = 0; i < A.size(); ++i) reports[i] = inverse_sqrt_vjp_impl<T>(policy, A[i], G[i], dA[i], options);
  return reports;
}

}  // namespace netdeconv::detail
