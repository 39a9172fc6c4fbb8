// SPDX-License-Identifier: MIT
#pragma once
// What each thread of the CUDA inverse square root's VJP kernels computes (../inverse_sqrt_vjp.cuh).
// The GPU runs the forward iteration (bodies/inverse_sqrt.hpp, run_newton_schulz) together with
// its tangent in the direction of G: Z_n = q(Y_0) is a polynomial in the symmetric Y_0 = A/s, so
// its derivative L_q(Y_0, .) is self-adjoint and the tangent of Z_n in the direction G/sqrt(s)
// is the adjoint Yb_0 that the reverse recurrence of netdeconv/inverse_sqrt_vjp.hpp computes. No
// iterate is kept (10 F x F work matrices, 9 products a step):
//   Y_0 = A/s, Z_0 = I, Yd_0 = G/sqrt(s), Zd_0 = 0
//   P = Z Y, Pd = Zd Y + Z Yd;  T = (3I - P)/2, Td = -Pd/2
//   Y' = Y T, Yd' = Yd T + Y Td;  Z' = T Z, Zd' = Td Z + T Zd
//   sb = -<G, Z_n> / (2 s^(3/2)) - <Zd_n, A> / s^2;  dA = Zd_n / s + sb ds/dA  (A/s Frobenius, I trace)
// Fixed mode stops after n steps: the gradient of the truncated iteration. Tolerance mode runs
// until the residual ||I - P||_F / sqrt(F) and the tangent's ||Pd||_F / ||Yd_0||_F are both
// <= tolerance: the iteration's limit is A^(-1/2) and its derivative's is the derivative of
// A^(-1/2), the gradient of the true root (the s terms cancel in the limit). Plain C++ without nvcc.

#include <cmath>

#include <netdeconv/config.hpp>
#include <netdeconv/isqrt_options.hpp>
#include <netdeconv/tensor_view.hpp>

#include "inverse_sqrt.hpp"

namespace netdeconv::cuda::detail {

/// The tangent's start (the forward's Y, Z are ns_init_element's): Yd = G/sqrt(s), Zd = 0;
/// element e of matrix b.
template <class T>
NETDECONV_HOST_DEVICE void nsv_init_element(const tensor_view<const T, 3>& G, const double* scale, T* Yd, T* Zd, index_t F,
                                            index_t b, index_t e) {
  const index_t o = b * F * F + e;
  Yd[o] = static_cast<T>(double(G(b, e / F, e % F)) / std::sqrt(scale[b]));
  Zd[o] = T(0);
}

/// After the forward screen (ns_start): NaN/Inf in G is non_finite.
NETDECONV_HOST_DEVICE inline void nsv_screen_gradient(const ns_state& st, bool gradient_finite, index_t b) {
  if (st.reports(b).status != isqrt_status::ok || gradient_finite) return;
  st.reports(b).status = isqrt_status::non_finite;
  st.done[b] = 1;
}

/// T = (3I - P)/2, Td = -Pd/2, or I and 0 for a frozen matrix (every iterate then stays).
template <class T>
NETDECONV_HOST_DEVICE void nsv_T_element(const T* P, const T* Pd, const int* done, T* Tk, T* Td, index_t F, index_t b,
                                         index_t e) {
  ns_T_element(P, done, Tk, F, b, e);
  const index_t o = b * F * F + e;
  Td[o] = done[b] ? T(0) : T(-0.5) * Pd[o];
}

/// After step k: record the residual of a live matrix; tolerance mode converges when the residual
/// and the tangent's relative size `tangent` = ||Pd||_F / ||Yd_0||_F are both <= tolerance.
NETDECONV_HOST_DEVICE inline void nsv_record(const ns_state& st, double residual, double tangent, int k, bool last,
                                             double tolerance, index_t b) {
  if (st.done[b]) return;
  st.reports(b).residual = residual;
  st.reports(b).iterations = k;
  if (tolerance > 0 && residual <= tolerance && tangent <= tolerance) {
    st.done[b] = 1;
    st.converged[b] = 1;
  } else if (last) {
    st.done[b] = 1;
  }
}

/// The adjoint of s: sb = -<G, Z_n> / (2 s^(3/2)) - <Zd_n, A> / s^2.
NETDECONV_HOST_DEVICE inline double nsv_scale_adjoint(double scale, double g_dot_z, double zd_dot_a) {
  return -0.5 * g_dot_z / (scale * std::sqrt(scale)) - zd_dot_a / (scale * scale);
}

/// Element e of dA = Zd_n / s + sb ds/dA (in double).
template <class T>
NETDECONV_HOST_DEVICE T nsv_result_element(const tensor_view<const T, 3>& A, const T* Zd, const double* scale, double sb,
                                           bool trace, index_t F, index_t b, index_t e) {
  const index_t i = e / F, j = e % F;
  const double s = scale[b], base = double(Zd[b * F * F + e]) / s;
  if (trace) return static_cast<T>(base + (i == j ? sb : 0.0));
  return static_cast<T>(base + sb / s * double(A(b, i, j)));
}

}  // namespace netdeconv::cuda::detail
