// SPDX-License-Identifier: MIT
#pragma once
// OpenMP vector-Jacobian products of the inverse square root (../inverse_sqrt_vjp.hpp). Converged
// and exact modes: the sequential root gradient, matrices in parallel. Fixed mode: the gradient of
// the iteration that omp/inverse_sqrt.hpp runs. Its iterates Y_k, Z_k, T_k are polynomials in A,
// so they are symmetric (exactly, with the half products of up to max_symmetric_steps steps; to
// rounding beyond) and Y_k = Y_0 Z_k. The forward keeps only Z_1 .. Z_n; the backward
// recomputes Y_k = Y_0 Z_k and T_k = (3I - Z_k Y_k)/2 (two half products per step), and the
// adjoint recurrence of the sequential form loses its transposes:
//   Zb_n = G / sqrt(s),  Yb_n = 0,  sb = -<G, Z_n> / (2 s^(3/2))
//   k = n-1 .. 0:  Pb = -(Y_k Yb + Zb Z_k)/2;  Yb <- Yb T_k + Z_k Pb;  Zb <- T_k Zb + Pb Y_k
//   (Yb_n = 0 drops two products at k = n-1; Z_0 = I drops three at k = 0)
//   sb -= <Yb_0, A>/s^2;  dA = Yb_0/s + sb ds/dA
// 6n - 6 full and 5n - 3 half products (the sequential form: 6n full ones plus 3n + 1 to
// recompute its checkpointed segments), threads over column ranges when there are fewer matrices
// than threads. Extra memory: Z_1 .. Z_n and eight work matrices, F x F each.

#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "../execution.hpp"
#include "../sequential/inverse_sqrt_vjp.hpp"
#include "inverse_sqrt.hpp"

namespace netdeconv::detail::symmetric_ns {

template <class T>
isqrt_report newton_schulz_fixed_vjp(const Eigen::Ref<const square_matrix<T>>& A, const Eigen::Ref<const square_matrix<T>>& G,
                                     square_matrix<T>& dA, const isqrt_options& options, int threads) {
  using M = square_matrix<T>;
  const index_t F = A.rows();
  const int n = options.iterations;
  auto [report, s] = screen_vjp<T>(A, G, dA, options.scaling);
  if (report.status != isqrt_status::ok) return report;
  const bool sym = n <= max_symmetric_steps;
  const auto mul = [&](const M& L, const M& R, M& C, bool symmetric) { product(L, R, C, symmetric, threads); };
  const auto half_step = [](M& P) {  // P <- T = (3I - P)/2
    P *= T(-0.5);
    P.diagonal().array() += T(1.5);
  };
  // Forward as omp/inverse_sqrt.hpp, keeping Z_1 .. Z_n.
  const M Y0 = scaled<T>(A, s);
  std::vector<M> Z;
  M Y = Y0, P, Tk;
  for (int k = 0; k < n; ++k) {
    if (k == 0) Tk = Y0; else mul(Z.back(), Y, Tk, sym);  // P_k = Z_k Y_k
    half_step(Tk);
    M next;
    if (k == 0) next = Tk; else mul(Tk, Z.back(), next, sym);
    Z.push_back(std::move(next));
    mul(Y, Tk, P, sym);
    Y.swap(P);
  }
  if (n == 0) P = Y; else mul(Z.back(), Y, P, sym);  // P_n = Z_n Y_n, for the residual
  P.diagonal().array() -= T(1);
  report.iterations = n;
  report.residual = double(P.norm()) / std::sqrt(double(F));
  // Backward; Y_k = Y_0 Z_k (the iteration's invariant) and T_k are recomputed from the kept Z_k.
  const double root = std::sqrt(s);
  M Zb = (G.template cast<double>() / root).template cast<T>(), Yb = M::Zero(F, F), Pb, t1, t2;
  double sb = n == 0 ? -0.5 * G.template cast<double>().trace() / (s * root)
                     : -0.5 * G.template cast<double>().cwiseProduct(Z.back().template cast<double>()).sum() / (s * root);
  if (n > 0) Z.pop_back();
  for (int k = n - 1; k >= 0; --k) {
    const bool first = k == 0, last = k == n - 1;
    if (first) {
      Y = Y0;
      Tk = Y0;
    } else {
      mul(Y0, Z.back(), Y, sym);
      mul(Z.back(), Y, Tk, sym);
    }
    half_step(Tk);
    // Pb = -(Y_k Yb + Zb Z_k)/2
    if (first) Pb = Zb; else mul(Zb, Z.back(), Pb, false);
    if (!last) {
      mul(Y, Yb, t1, false);
      Pb += t1;
    }
    Pb *= T(-0.5);
    // Yb <- Yb T_k + Z_k Pb;  Zb <- T_k Zb + Pb Y_k (not needed at k = 0)
    if (first) t1 = Pb; else mul(Z.back(), Pb, t1, false);
    if (!last) {
      mul(Yb, Tk, t2, false);
      t1 += t2;
    }
    if (!first) {
      mul(Tk, Zb, t2, false);
      Zb.swap(t2);
      mul(Pb, Y, t2, false);
      Zb += t2;
      Z.pop_back();
    }
    Yb.swap(t1);
  }
  return finish_vjp<T>(A, Yb, sb, s, options.scaling, report, dA);
}

}  // namespace netdeconv::detail::symmetric_ns

namespace netdeconv::detail {

template <class T>
isqrt_report inverse_sqrt_vjp_impl(const omp_policy& policy, const Eigen::Ref<const square_matrix<T>>& A,
                                   const Eigen::Ref<const square_matrix<T>>& G, square_matrix<T>& dA,
                                   const isqrt_options& options) {
  if (!symmetric_ns::fast_mode(options)) return root_vjp<T>(A, G, dA);
  return symmetric_ns::newton_schulz_fixed_vjp<T>(A, G, dA, options, thread_count(policy));
}

/// Batched: with at least as many matrices as threads, matrices in parallel (one thread each);
/// else one after the other, each product on every thread.
template <class T>
std::vector<isqrt_report> inverse_sqrt_vjp_batched_impl(const omp_policy& policy, const std::vector<square_matrix<T>>& A,
                                                        const std::vector<square_matrix<T>>& G,
                                                        std::vector<square_matrix<T>>& dA, const isqrt_options& options) {
  const int threads = thread_count(policy);
  const index_t count = static_cast<index_t>(A.size());
  const bool fast = symmetric_ns::fast_mode(options);
  std::vector<isqrt_report> reports(A.size());
  dA.resize(A.size());
  if (count >= threads || !fast) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic)
#endif
    for (index_t i = 0; i < count; ++i) {
      keep_eigen_in_thread();
      reports[i] = fast ? symmetric_ns::newton_schulz_fixed_vjp<T>(A[i], G[i], dA[i], options, 1) : root_vjp<T>(A[i], G[i], dA[i]);
    }
  } else {
    for (index_t i = 0; i < count; ++i) reports[i] = symmetric_ns::newton_schulz_fixed_vjp<T>(A[i], G[i], dA[i], options, threads);
  }
  return reports;
}

}  // namespace netdeconv::detail
