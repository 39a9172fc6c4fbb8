// SPDX-License-Identifier: MIT
#pragma once
// Vector-Jacobian product of the batched inverse square root on the GPU: netdeconv/
// inverse_sqrt_vjp.hpp's view form with a cuda_policy (A, G, dA: (batch, F, F) device views, any
// strides; reports: `batch` isqrt_report in device memory), checked by the same
// netdeconv::detail::check_inverse_sqrt_vjp_batch. The forward iteration of inverse_sqrt.cuh runs
// with its tangent in the direction of G (bodies/inverse_sqrt_vjp.hpp has the recurrence and why
// it equals the reverse-mode gradient), on cuBLAS strided-batched GEMMs, with no iterate kept:
//   fixed mode       the gradient of the truncated iteration (what autograd takes through the
//                    reference layers), report as the CPU's: iterations n, the forward's residual;
//   tolerance mode   the gradient of the true A^(-1/2): the iteration and its tangent run until
//                    both have converged (not_converged otherwise, which the CPU's
//                    eigendecomposition never reports).
// The screen is the forward's (non_finite, not_positive_definite), plus NaN/Inf in G; a failed
// matrix gets dA = NaN. The exact method is CPU-only (invalid_argument), as in the forward.
//
//   netdeconv::inverse_sqrt_vjp(policy, A, G, dA, netdeconv::isqrt_options::fixed(5), reports);

#include <cmath>
#include <cstddef>
#include <utility>

#include <cublas_v2.h>

#include <netdeconv/checks.hpp>
#include <netdeconv/isqrt_options.hpp>
#include <netdeconv/tensor_view.hpp>

#include "bodies/inverse_sqrt_vjp.hpp"
#include "execution.cuh"
#include "inverse_sqrt.cuh"

namespace netdeconv {

namespace cuda::detail {

/// One block per matrix: ||Yd_0||_F = ||G||_F / sqrt(s) and the screen of G.
template <class T>
__global__ void __launch_bounds__(ns_threads) nsv_gradient_kernel(tensor_view<const T, 3> G, const double* scale,
                                                                 double* norm, ns_state st) {
  __shared__ double shm[ns_threads];
  const index_t b = blockIdx.x, F = G.shape[1], FF = F * F;
  double acc = 0, bad = 0;
  for (index_t e = threadIdx.x; e < FF; e += ns_threads) {
    const double g = double(G(b, e / F, e % F));
    if (!std::isfinite(g)) bad = 1;
    acc += g * g;
  }
  acc = block_sum(acc, shm);
  bad = block_sum(bad, shm);
  if (threadIdx.x == 0) {
    norm[b] = std::sqrt(acc) / std::sqrt(scale[b]);
    nsv_screen_gradient(st, bad == 0, b);
  }
}

template <class T>
__global__ void nsv_init_kernel(tensor_view<const T, 3> G, const double* scale, T* Yd, T* Zd, index_t F, long long count) {
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    nsv_init_element(G, scale, Yd, Zd, F, e / (F * F), e % (F * F));
}

template <class T>
__global__ void nsv_T_kernel(const T* P, const T* Pd, const int* done, T* Tk, T* Td, index_t F, long long count) {
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    nsv_T_element(P, Pd, done, Tk, Td, F, e / (F * F), e % (F * F));
}

/// One block per matrix: ||I - P||_F / sqrt(F) and ||Pd||_F / ||Yd_0||_F, recorded by nsv_record.
template <class T>
__global__ void __launch_bounds__(ns_threads) nsv_residual_kernel(const T* P, const T* Pd, const double* norm, index_t F,
                                                                 int k, bool last, double tolerance, ns_state st) {
  __shared__ double shm[ns_threads];
  const index_t b = blockIdx.x, FF = F * F;
  double acc = 0, tangent = 0;
  for (index_t e = threadIdx.x; e < FF; e += ns_threads) {
    const double r = (e / F == e % F ? 1.0 : 0.0) - double(P[b * FF + e]), d = double(Pd[b * FF + e]);
    acc += r * r;
    tangent += d * d;
  }
  acc = block_sum(acc, shm);
  tangent = block_sum(tangent, shm);
  if (threadIdx.x == 0)
    nsv_record(st, std::sqrt(acc) / std::sqrt(double(F)), norm[b] > 0 ? std::sqrt(tangent) / norm[b] : 0.0, k, last,
               tolerance, b);
}

/// One block per matrix: <G, Z_n> and <Zd_n, A>, dA (nsv_result_element), the final report
/// (ns_finish), NaN fill for failures.
template <class T>
__global__ void __launch_bounds__(ns_threads) nsv_finalize_kernel(tensor_view<const T, 3> A, tensor_view<const T, 3> G,
                                                                 const T* Z, const T* Zd, const double* scale,
                                                                 tensor_view<T, 3> dA, int iterations, double tolerance,
                                                                 bool trace, ns_state st) {
  __shared__ double shm[ns_threads];
  __shared__ int failed;
  const index_t b = blockIdx.x, F = A.shape[1], FF = F * F;
  double gz = 0, za = 0;
  for (index_t e = threadIdx.x; e < FF; e += ns_threads) {
    gz += double(G(b, e / F, e % F)) * double(Z[b * FF + e]);
    za += double(Zd[b * FF + e]) * double(A(b, e / F, e % F));
  }
  gz = block_sum(gz, shm);
  za = block_sum(za, shm);
  const double sb = nsv_scale_adjoint(scale[b], gz, za);
  double bad = 0;
  for (index_t e = threadIdx.x; e < FF; e += ns_threads) {
    const T d = nsv_result_element(A, Zd, scale, sb, trace, F, b, e);
    dA(b, e / F, e % F) = d;
    if (!std::isfinite(double(d))) bad = 1;
  }
  bad = block_sum(bad, shm);
  if (threadIdx.x == 0) failed = ns_finish(st, iterations, tolerance, true, bad == 0, quiet_nan<double>(), b);
  __syncthreads();
  if (failed)
    for (index_t e = threadIdx.x; e < FF; e += ns_threads) dA(b, e / F, e % F) = quiet_nan<T>();
}

/// Scratch: the forward's (ns_layout), then Yd, Zd, Pd, Td, Wd (batch*F*F T each) and ||Yd_0|| (batch double).
template <class T>
struct nsv_layout {
  ns_layout<T> primal;
  std::size_t norm, total;
  nsv_layout(index_t batch, index_t F) : primal(batch, F) {
    norm = align_up(sizeof(double) * std::size_t(batch));
    total = primal.total + 5 * primal.matrix + norm;
  }
};

/// The Ops of run_newton_schulz for the VJP: the forward's (gpu_ns_ops) with the tangent.
template <class T>
struct gpu_nsv_ops {
  gpu_ns_ops<T> primal;
  tensor_view<const T, 3> G;
  tensor_view<T, 3> dA;
  T *Yd, *Zd, *Pd, *Td, *Wd;
  double* norm;

  index_t batch() const { return primal.batch(); }
  index_t F() const { return primal.F(); }
  long long elements() const { return primal.elements(); }
  /// out = a b + c d for every matrix.
  void gemm2(const T* a, const T* b, const T* c, const T* d, T* out) {
    gemm_batched(primal.blas, a, b, out, int(F()), batch());
    gemm_batched(primal.blas, c, d, out, int(F()), batch(), T(1));
  }
  void init() {
    primal.init();
    nsv_gradient_kernel<T><<<unsigned(batch()), ns_threads, 0, primal.stream>>>(G, primal.scale, norm, primal.st);
    NETDECONV_CUDA_CHECK_LAUNCH("nsv_gradient_kernel");
    nsv_init_kernel<T><<<grid_for(elements(), 256), 256, 0, primal.stream>>>(G, primal.scale, Yd, Zd, F(), elements());
    NETDECONV_CUDA_CHECK_LAUNCH("nsv_init_kernel");
  }
  void copy_P_from_Y() {
    primal.copy_P_from_Y();
    NETDECONV_CUDA_CHECK(cudaMemcpyAsync(Pd, Yd, sizeof(T) * elements(), cudaMemcpyDeviceToDevice, primal.stream));
  }
  void gemm_P() {
    gemm2(Zd, primal.Y, primal.Z, Yd, Pd);
    primal.gemm_P();
  }
  void residual(int k, bool last, double tolerance) {
    nsv_residual_kernel<T><<<unsigned(batch()), ns_threads, 0, primal.stream>>>(primal.P, Pd, norm, F(), k, last, tolerance,
                                                                                 primal.st);
    NETDECONV_CUDA_CHECK_LAUNCH("nsv_residual_kernel");
  }
  bool all_done() { return primal.all_done(); }
  void update_T() {
    nsv_T_kernel<T><<<grid_for(elements(), 256), 256, 0, primal.stream>>>(primal.P, Pd, primal.st.done, primal.Tk, Td, F(),
                                                                           elements());
    NETDECONV_CUDA_CHECK_LAUNCH("nsv_T_kernel");
  }
  void gemm_Y() {
    gemm2(Yd, primal.Tk, primal.Y, Td, Wd);
    std::swap(Yd, Wd);
    primal.gemm_Y();
  }
  void copy_Z_from_T() {
    primal.copy_Z_from_T();
    NETDECONV_CUDA_CHECK(cudaMemcpyAsync(Zd, Td, sizeof(T) * elements(), cudaMemcpyDeviceToDevice, primal.stream));
  }
  void gemm_Z() {
    gemm2(Td, primal.Z, primal.Tk, Zd, Wd);
    std::swap(Zd, Wd);
    primal.gemm_Z();
  }
  void finalize(double tolerance, bool) {
    nsv_finalize_kernel<T><<<unsigned(batch()), ns_threads, 0, primal.stream>>>(
        primal.A, G, primal.Z, Zd, primal.scale, dA, primal.options.iterations, tolerance,
        primal.options.scaling == isqrt_scaling::trace, primal.st);
    NETDECONV_CUDA_CHECK_LAUNCH("nsv_finalize_kernel");
  }
};

}  // namespace cuda::detail

/// Scratch bytes inverse_sqrt_vjp needs for `batch` F x F matrices of T.
template <class T>
std::size_t inverse_sqrt_vjp_workspace(const cuda_policy&, index_t batch, index_t F) {
  return cuda::detail::nsv_layout<T>(batch, F).total;
}

/// dA[b] = dL/dA[b] of D[b] = inverse_sqrt(A[b], options), given G[b] = dL/dD[b] (see file comment).
/// Asynchronous, except for the convergence checks of tolerance mode.
template <class T>
void inverse_sqrt_vjp(const cuda_policy& policy, tensor_view<const T, 3> A, tensor_view<const T, 3> G, tensor_view<T, 3> dA,
                      const isqrt_options& options, vector_view<isqrt_report> reports) {
  namespace d = cuda::detail;
  constexpr const char* fn = "inverse_sqrt_vjp";
  ::netdeconv::detail::check_inverse_sqrt_vjp_batch(fn, A, G, dA, options, reports);
  NETDECONV_REQUIRE(options.method == isqrt_method::newton_schulz, fn,
                    "the CUDA path runs Newton-Schulz only (the exact method is CPU-only)");
  d::check_device_memory(fn, "A", A);
  d::check_device_memory(fn, "G", G);
  d::check_device_memory(fn, "dA", dA);
  d::check_device_memory(fn, "reports", reports);
  const index_t batch = A.shape[0], F = A.shape[1];
  NETDECONV_REQUIRE(F <= 46340 && batch <= 2147483647, fn, "F=", F, " or batch=", batch, " too large for cuBLAS");
  if (batch == 0) return;
  const d::nsv_layout<T> l(batch, F);
  d::scratch ws(policy, l.total, fn);
  const d::blas_binding blas(policy);
  const std::size_t m = l.primal.matrix, extra = l.primal.total;
  int* flags = ws.at<int>(5 * m + l.primal.scale);
  d::gpu_nsv_ops<T> ops{{policy.stream, blas.get(), A, {}, options, {reports, flags, flags + batch}, ws.at<T>(0),
                         ws.at<T>(m), ws.at<T>(2 * m), ws.at<T>(3 * m), ws.at<T>(4 * m), ws.at<double>(5 * m),
                         ws.at<double>(5 * m + l.primal.scale + l.primal.flags), flags + 2 * batch},
                        G, dA, ws.at<T>(extra), ws.at<T>(extra + m), ws.at<T>(extra + 2 * m), ws.at<T>(extra + 3 * m),
                        ws.at<T>(extra + 4 * m), ws.at<double>(extra + 5 * m)};
  d::run_newton_schulz(ops, options.iterations, options.tolerance, true, policy.check_interval);
}

}  // namespace netdeconv
