// SPDX-License-Identifier: MIT
#pragma once
// What each thread of the CUDA batched Newton-Schulz kernels computes (../inverse_sqrt.cuh), with
// the matrix b and element e passed in, plus the iteration's host-side control flow as a template
// over its operations (cuBLAS and kernels on the GPU, loops in cuda/tests/emulator.hpp). Matrices
// A and D are (batch, F, F) views, any strides; the work matrices Y, Z, P, T are contiguous
// scratch, matrix b at b*F*F. Plain C++ without nvcc.

#include <cmath>
#include <limits>

#include <netdeconv/config.hpp>
#include <netdeconv/isqrt_options.hpp>
#include <netdeconv/tensor_view.hpp>

namespace netdeconv::cuda::detail {

/// Per-matrix state on the device: the caller's reports and two flags.
struct ns_state {
  vector_view<isqrt_report> reports;
  int* done = nullptr;       ///< 1: the matrix is frozen (converged, failed, or finished)
  int* converged = nullptr;  ///< 1: residual <= tolerance reached
};

/// The screen of matrix b, as the CPU's (classify_spd, sequential/inverse_sqrt.hpp): the
/// Cholesky factorisation in double of L = A + tau I, tau = F * epsilon(T) * max_i |a_ii|, in
/// place (lower triangle), column by column; A is refused (not_positive_definite) at the first
/// pivot <= 0, i.e. when it has an eigenvalue below -tau (or is 0). L is matrix b of a contiguous
/// (batch, F, F) double scratch.
/// epsilon(T) as a constant that device code may read.
template <class T>
inline constexpr double ns_epsilon = double(std::numeric_limits<T>::epsilon());

template <class T>
NETDECONV_HOST_DEVICE double ns_shift(const tensor_view<const T, 3>& A, index_t b) {
  const index_t F = A.shape[1];
  double largest = 0;
  for (index_t i = 0; i < F; ++i) {
    const double a = double(A(b, i, i));
    largest = a > largest ? a : (-a > largest ? -a : largest);
  }
  return double(F) * ns_epsilon<T> * largest;
}

/// Element e of L = A + tau I.
template <class T>
NETDECONV_HOST_DEVICE void ns_cholesky_load(const tensor_view<const T, 3>& A, double tau, double* L, index_t b, index_t e) {
  const index_t F = A.shape[1], i = e / F, j = e % F;
  L[b * F * F + e] = double(A(b, i, j)) + (i == j ? tau : 0.0);
}

/// Step k, first phase (after checking the pivot L(k, k) > 0): row i > k of column k, L(i, k) /= sqrt(L(k, k)).
NETDECONV_HOST_DEVICE inline void ns_cholesky_column(double* L, index_t F, index_t b, index_t k, index_t i) {
  double* l = L + b * F * F;
  l[i * F + k] /= std::sqrt(l[k * F + k]);
}

/// Step k, second phase: entry (i, j), k < j <= i, of the trailing lower triangle,
/// L(i, j) -= L(i, k) L(j, k).
NETDECONV_HOST_DEVICE inline void ns_cholesky_update(double* L, index_t F, index_t b, index_t k, index_t i, index_t j) {
  double* l = L + b * F * F;
  l[i * F + j] -= l[i * F + k] * l[j * F + k];
}

/// After the screen of matrix b (scale s in double: ||A||_F or tr A; NaN/Inf in A; the Cholesky
/// test failed): the starting report and flags, in the CPU's order of checks. `nan` is the
/// caller's quiet NaN.
NETDECONV_HOST_DEVICE inline void ns_start(const ns_state& st, double scale, bool non_finite, bool not_positive_definite,
                                           double nan, index_t b) {
  isqrt_report& r = st.reports(b);
  const bool scale_finite = scale - scale == 0.0;
  r.status = non_finite                ? isqrt_status::non_finite
             : not_positive_definite   ? isqrt_status::not_positive_definite
             : !scale_finite           ? isqrt_status::non_finite
             : !(scale > 0)            ? isqrt_status::not_positive_definite
                                       : isqrt_status::ok;
  r.iterations = 0;
  r.residual = nan;
  st.done[b] = r.status != isqrt_status::ok;
  st.converged[b] = 0;
}

/// Y = A/s (divided in double), Z = I; element e of matrix b.
template <class T>
NETDECONV_HOST_DEVICE void ns_init_element(const tensor_view<const T, 3>& A, const double* scale, T* Y, T* Z, index_t F,
                                           index_t b, index_t e) {
  const index_t i = e / F, j = e % F, o = b * F * F + e;
  Y[o] = static_cast<T>(double(A(b, i, j)) / scale[b]);
  Z[o] = i == j ? T(1) : T(0);
}

/// T = (3I - P)/2, or I for a frozen matrix (then Y T = Y and T Z = Z exactly).
template <class T>
NETDECONV_HOST_DEVICE void ns_T_element(const T* P, const int* done, T* Tk, index_t F, index_t b, index_t e) {
  const index_t o = b * F * F + e;
  const bool diag = e / F == e % F;
  Tk[o] = done[b] ? (diag ? T(1) : T(0)) : T(0.5) * ((diag ? T(3) : T(0)) - P[o]);
}

/// After the residual of step k: record it for a live matrix, freeze it if converged or last.
NETDECONV_HOST_DEVICE inline void ns_record(const ns_state& st, double residual, int k, bool last, double tolerance,
                                            index_t b) {
  if (st.done[b]) return;
  st.reports(b).residual = residual;
  st.reports(b).iterations = k;
  if (tolerance > 0 && residual <= tolerance) {
    st.done[b] = 1;
    st.converged[b] = 1;
  } else if (last) {
    st.done[b] = 1;
  }
}

/// Element e of D = Z / sqrt(s) (divided in double).
template <class T>
NETDECONV_HOST_DEVICE T ns_result_element(const T* Z, const double* scale, index_t F, index_t b, index_t e) {
  return static_cast<T>(double(Z[b * F * F + e]) / std::sqrt(scale[b]));
}

/// The final report of matrix b, given whether all of D is finite: without a final residual (fixed
/// mode, final_residual = false) a healthy matrix reports every step and residual NaN; NaN/Inf in
/// D (or in the residual) is non_finite; tolerance mode without convergence is not_converged.
/// Returns true when D must be filled with NaN (non_finite, not_positive_definite).
NETDECONV_HOST_DEVICE inline bool ns_finish(const ns_state& st, int iterations, double tolerance, bool have_residual,
                                            bool finite, double nan, index_t b) {
  isqrt_report& r = st.reports(b);
  if (r.status == isqrt_status::ok) {
    if (!have_residual) {
      r.iterations = iterations;
      r.residual = nan;
    }
    if (!finite || (have_residual && !(r.residual == r.residual)))
      r.status = isqrt_status::non_finite;
    else if (tolerance > 0 && !st.converged[b])
      r.status = isqrt_status::not_converged;
  }
  const bool failed = r.status == isqrt_status::non_finite || r.status == isqrt_status::not_positive_definite;
  if (failed) {
    r.residual = nan;
    r.iterations = 0;
  }
  return failed;
}

/// The iteration's control flow; Ops runs each operation on every matrix. Matches the CPU's
/// coupled Newton-Schulz (inverse_sqrt.hpp) step for step, with the exact rewrites P_0 = Z_0 Y_0 =
/// Y_0 and Z_1 = T_0 Z_0 = T_0 (Z_0 = I), and, without a final residual, no Y update in the last
/// step and no last P:
///   k = 0, 1, ...: P = Z Y; record residual; stop at k == iterations; T = (3I - P)/2; Y = Y T; Z = T Z
/// Tolerance mode asks ops.all_done() (a stream synchronisation) every check_interval steps.
template <class Ops>
void run_newton_schulz(Ops& ops, int iterations, double tolerance, bool final_residual, int check_interval) {
  ops.init();
  const bool need_last_P = tolerance > 0 || final_residual;
  for (int k = 0;; ++k) {
    const bool last = k == iterations;
    if (!last || need_last_P) {
      if (k == 0)
        ops.copy_P_from_Y();
      else
        ops.gemm_P();
      ops.residual(k, last, tolerance);
    }
    if (last) break;
    if (tolerance > 0 && check_interval > 0 && (k + 1) % check_interval == 0 && ops.all_done()) break;
    ops.update_T();
    if (k + 1 < iterations || need_last_P) ops.gemm_Y();
    if (k == 0)
      ops.copy_Z_from_T();
    else
      ops.gemm_Z();
  }
  ops.finalize(tolerance, need_last_P);
}

}  // namespace netdeconv::cuda::detail
