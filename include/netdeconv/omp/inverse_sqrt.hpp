// SPDX-License-Identifier: MIT
#pragma once
// OpenMP inverse square root. Converged mode and the exact path: blocks in parallel, each with the
// sequential iteration. Fixed-step mode: a faster coupled Newton-Schulz (Eigen products), the
// recurrence of ../inverse_sqrt.hpp
// rewritten exactly (in exact arithmetic) as
//   Y_0 = A/s;  T_0 = (3I - Y_0)/2;  Z_1 = T_0 (Z_0 = I: no product);  Y_1 = Y_0 T_0
//   k = 1 .. n-1:  P_k = Z_k Y_k;  T_k = (3I - P_k)/2;  Z_{k+1} = T_k Z_k;  Y_{k+1} = Y_k T_k
//   P_n = Z_n Y_n (for the residual);  D = Z_n / sqrt(s)
// (options.final_residual = false: no Y_n and no P_n, the residual is NaN.)
// Every iterate is a polynomial in A, so all of them are symmetric and commute: for n <= 5 steps
// (the reference's conv setting) each product computes only its upper triangle (threads over
// column ranges, see product()) and mirrors it: 3n - 1 half products instead of the 3n + 1 full
// ones of the sequential loop. Beyond 5 steps exact symmetry costs float32 accuracy (see
// max_symmetric_steps), so those runs use full products (3n - 1). Y_n and P_n serve only the
// residual ||I - Z_n Y_n|| (its (I - P)^2 (4I - P)/4 form costs the same two products), so
// final_residual = false saves them: 3n - 3 products. Many blocks: blocks in parallel, one thread
// each; few blocks: column ranges of each product in parallel.

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "../execution.hpp"
#include "../sequential/inverse_sqrt.hpp"

namespace netdeconv::detail::symmetric_ns {

/// Steps up to which the half products are used. Forcing every iterate to be exactly symmetric
/// removes the rounding structure the coupled iteration corrects itself with: measured in float32
/// (cond 1e4, 15 steps) 2e-2 off the float64 recurrence against 4e-5 for full products, while
/// within 1e-4 up to 5 steps (tests/test_inverse_sqrt.cpp). Longer runs use full products.
inline constexpr int max_symmetric_steps = 5;

/// C = L R. symmetric: L R is known to be symmetric; only its upper triangle is computed and then
/// mirrored. Each thread takes a column range [c0, c1) (of equal area of the computed part: bounds
/// F sqrt(t / threads) when symmetric), computes C[0:c0, c0:c1] = L[0:c0, :] R[:, c0:c1] and the
/// upper triangle of C[c0:c1, c0:c1] (Eigen's triangular product), and after a barrier mirrors its
/// range's upper part into the lower triangle by tiles.
template <class T>
void product(const square_matrix<T>& L, const square_matrix<T>& R, square_matrix<T>& C, bool symmetric, int threads) {
  const index_t F = L.rows();
  C.resize(F, F);
  constexpr index_t tile = 64;
  const auto bound = [&](index_t t, index_t nt) {
    if (t >= nt) return F;
    return symmetric ? index_t(double(F) * std::sqrt(double(t) / double(nt))) : F * t / nt;
  };
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
  {
    const auto [t, nt] = this_team_position();
    keep_eigen_in_thread();
    const index_t c0 = bound(t, nt), c1 = bound(t + 1, nt);
    if (symmetric) {  // C[0:c0, c0:c1] as a GEMM, the diagonal block's upper triangle as a triangular product
      if (c0 > 0) C.block(0, c0, c0, c1 - c0).noalias() = L.topRows(c0) * R.middleCols(c0, c1 - c0);
      C.block(c0, c0, c1 - c0, c1 - c0).template triangularView<Eigen::Upper>() =
          L.middleRows(c0, c1 - c0) * R.middleCols(c0, c1 - c0);
    } else {
      C.middleCols(c0, c1 - c0).noalias() = L * R.middleCols(c0, c1 - c0);
    }
    if (symmetric) {
#ifdef _OPENMP
#pragma omp barrier
#endif
      // C[i, j] = C[j, i] for i > j, j in [c0, c1): tiles of the lower part of the range's columns
      for (index_t j0 = c0; j0 < c1; j0 += tile) {
        const index_t j1 = std::min(c1, j0 + tile);
        for (index_t j = j0; j < j1; ++j)
          for (index_t i = j + 1; i < j1; ++i) C(i, j) = C(j, i);
        for (index_t i0 = j1; i0 < F; i0 += tile) {
          const index_t i1 = std::min(F, i0 + tile);
          C.block(i0, j0, i1 - i0, j1 - j0) = C.block(j0, i0, j1 - j0, i1 - i0).transpose();
        }
      }
    }
  }
}

template <class T>
isqrt_report newton_schulz_fixed(const Eigen::Ref<const square_matrix<T>>& A, square_matrix<T>& D,
                                 const isqrt_options& options, int threads) {
  using M = square_matrix<T>;
  const index_t F = A.rows();
  const auto [checked, s] = screen<T>(A, D, options.scaling);
  isqrt_report report = checked;
  if (report.status != isqrt_status::ok) return report;
  const int n = options.iterations;
  const bool sym = n <= max_symmetric_steps, residual = options.final_residual;
  M Y = scaled<T>(A, s), Z, P, Tk, tmp;
  if (n == 0) {
    Z = M::Identity(F, F);
    P = Y;
  } else {
    Tk = T(-0.5) * Y;
    Tk.diagonal().array() += T(1.5);
    Z = Tk;
    if (n > 1 || residual) {
      product(Y, Tk, tmp, sym, threads);
      Y.swap(tmp);
    }
    for (int k = 1; k < n; ++k) {
      product(Z, Y, P, sym, threads);
      Tk = T(-0.5) * P;
      Tk.diagonal().array() += T(1.5);
      product(Tk, Z, tmp, sym, threads);
      Z.swap(tmp);
      if (k + 1 < n || residual) {  // Y_n only for the residual
        product(Y, Tk, tmp, sym, threads);
        Y.swap(tmp);
      }
    }
    if (residual) product(Z, Y, P, sym, threads);
  }
  report.iterations = n;
  report.residual = std::numeric_limits<double>::quiet_NaN();
  if (residual) {
    P.diagonal().array() -= T(1);
    report.residual = double(P.norm()) / std::sqrt(double(F));
  }
  finish(Z, s, residual, D, report);
  return report;
}

inline bool fast_mode(const isqrt_options& options) {
  return options.method == isqrt_method::newton_schulz && options.tolerance == 0;
}

}  // namespace netdeconv::detail::symmetric_ns

namespace netdeconv::detail {

template <class T>
isqrt_report inverse_sqrt_impl(const omp_policy& policy, const Eigen::Ref<const square_matrix<T>>& A,
                               square_matrix<T>& D, const isqrt_options& options) {
  if (!symmetric_ns::fast_mode(options)) return inverse_sqrt_impl<T>(seq, A, D, options);
  return symmetric_ns::newton_schulz_fixed<T>(A, D, options, thread_count(policy));
}

/// Batched: fixed mode with many blocks runs blocks in parallel, one thread each, and with few
/// blocks the column ranges of each product; the other modes run blocks in parallel with the
/// sequential iteration.
template <class T>
std::vector<isqrt_report> inverse_sqrt_batched_impl(const omp_policy& policy, const std::vector<square_matrix<T>>& A,
                                                    std::vector<square_matrix<T>>& D, const isqrt_options& options) {
  const int threads = thread_count(policy);
  const index_t count = static_cast<index_t>(A.size());
  const bool fast = symmetric_ns::fast_mode(options);
  std::vector<isqrt_report> reports(A.size());
  if (count >= threads || !fast) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic)
#endif
    for (index_t i = 0; i < count; ++i)
      reports[i] = fast ? symmetric_ns::newton_schulz_fixed<T>(A[i], D[i], options, 1) : inverse_sqrt_impl<T>(seq, A[i], D[i], options);
  } else {
    for (index_t i = 0; i < count; ++i) reports[i] = symmetric_ns::newton_schulz_fixed<T>(A[i], D[i], options, threads);
  }
  return reports;
}

}  // namespace netdeconv::detail
