// SPDX-License-Identifier: MIT
#pragma once
// Batched inverse square root on the GPU: netdeconv/inverse_sqrt.hpp's view form with a cuda_policy
// (A, D: (batch, F, F) device views, any strides; reports: `batch` isqrt_report in device memory),
// checked by the same netdeconv::detail::check_inverse_sqrt_batch. The coupled Newton-Schulz
// iteration of the CPU path, step for step, for every matrix at once, with cuBLAS strided-batched
// GEMMs on contiguous scratch and small kernels for the rest (bodies/inverse_sqrt.hpp):
//   s = ||A||_F (or tr A), in double; Y = A/s; Z = I; k = 0, 1, ...: P = Z Y; residual ||I - P||_F/sqrt(F);
//   stop at k == iterations (or residual <= tolerance); T = (3I - P)/2; Y = Y T; Z = T Z;  D = Z/sqrt(s)
// Exact rewrites save products: P_0 = Y_0 and Z_1 = T_0 (Z_0 = I); with final_residual = false the
// last step skips Y and the last P (3n - 3 GEMMs for n fixed steps instead of the reference's 3n).
// Tolerance mode freezes converged matrices (T = I, so Y and Z stay exactly as they were) and
// synchronises the stream every policy.check_interval steps to stop when all are done; fixed mode
// never synchronises.
//
// The screen is the CPU's (bodies/inverse_sqrt.hpp): non_finite for NaN/Inf in A (or in D),
// not_positive_definite when the Cholesky factorisation of A + tau I fails in double (tau = F *
// epsilon(T) * max |a_ii|: an eigenvalue below -tau, or A = 0) or the scale is <= 0; failed
// matrices get D = NaN. Differences from the CPU, because A is not read on the host: its symmetry
// is not checked (only its lower triangle is factored), and the exact method is CPU-only
// (invalid_argument here).
//
//   netdeconv::inverse_sqrt(policy, A, D, netdeconv::isqrt_options::fixed(5), reports);

#include <cmath>
#include <cstddef>
#include <limits>
#include <utility>

#include <cublas_v2.h>

#include <netdeconv/checks.hpp>
#include <netdeconv/isqrt_options.hpp>
#include <netdeconv/tensor_view.hpp>

#include "bodies/inverse_sqrt.hpp"
#include "execution.cuh"

namespace netdeconv {

namespace cuda::detail {

inline constexpr int ns_threads = 256;

template <class T>
__device__ inline T quiet_nan() {
  return static_cast<T>(::nan(""));
}

/// Sum of v over the block (blockDim.x == ns_threads), returned to every thread.
__device__ inline double block_sum(double v, double* shm) {
  shm[threadIdx.x] = v;
  __syncthreads();
  for (int w = ns_threads / 2; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) shm[threadIdx.x] += shm[threadIdx.x + w];
    __syncthreads();
  }
  const double total = shm[0];
  __syncthreads();
  return total;
}

/// One block per matrix: the scale (in double), NaN/Inf, the Cholesky screen of A + tau I in
/// `chol` (bodies/inverse_sqrt.hpp) and the starting report (ns_start).
template <class T>
__global__ void __launch_bounds__(ns_threads) ns_scale_kernel(tensor_view<const T, 3> A, bool trace, double* scale,
                                                              double* chol, ns_state st) {
  __shared__ double shm[ns_threads];
  __shared__ double tau;
  __shared__ int refused;
  const index_t b = blockIdx.x, F = A.shape[1], FF = F * F;
  double acc = 0, bad = 0;
  for (index_t e = threadIdx.x; e < FF; e += ns_threads) {
    const index_t i = e / F, j = e % F;
    const double a = double(A(b, i, j));
    if (!std::isfinite(a)) bad = 1;
    if (!trace)
      acc += a * a;
    else if (i == j)
      acc += a;
  }
  acc = block_sum(acc, shm);
  bad = block_sum(bad, shm);
  if (threadIdx.x == 0) {
    tau = ns_shift(A, b);
    refused = 0;
  }
  __syncthreads();
  if (bad == 0) {
    for (index_t e = threadIdx.x; e < FF; e += ns_threads) ns_cholesky_load(A, tau, chol, b, e);
    for (index_t k = 0; k < F; ++k) {
      __syncthreads();
      if (threadIdx.x == 0 && !(chol[b * FF + k * F + k] > 0)) refused = 1;
      __syncthreads();
      if (refused) break;
      for (index_t i = k + 1 + threadIdx.x; i < F; i += ns_threads) ns_cholesky_column(chol, F, b, k, i);
      __syncthreads();
      for (index_t i = k + 1; i < F; ++i)
        for (index_t j = k + 1 + threadIdx.x; j <= i; j += ns_threads) ns_cholesky_update(chol, F, b, k, i, j);
    }
  }
  if (threadIdx.x == 0) {
    scale[b] = trace ? acc : std::sqrt(acc);
    ns_start(st, scale[b], bad > 0, refused != 0, quiet_nan<double>(), b);
  }
}

template <class T>
__global__ void ns_init_kernel(tensor_view<const T, 3> A, const double* scale, T* Y, T* Z, index_t F, long long count) {
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    ns_init_element(A, scale, Y, Z, F, e / (F * F), e % (F * F));
}

template <class T>
__global__ void ns_T_kernel(const T* P, const int* done, T* Tk, index_t F, long long count) {
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    ns_T_element(P, done, Tk, F, e / (F * F), e % (F * F));
}

/// One block per matrix: residual ||I - P||_F / sqrt(F), recorded by ns_record.
template <class T>
__global__ void __launch_bounds__(ns_threads) ns_residual_kernel(const T* P, index_t F, int k, bool last, double tolerance,
                                                                ns_state st) {
  __shared__ double shm[ns_threads];
  const index_t b = blockIdx.x, FF = F * F;
  double acc = 0;
  for (index_t e = threadIdx.x; e < FF; e += ns_threads) {
    const double r = (e / F == e % F ? 1.0 : 0.0) - double(P[b * FF + e]);
    acc += r * r;
  }
  acc = block_sum(acc, shm);
  if (threadIdx.x == 0) ns_record(st, std::sqrt(acc) / std::sqrt(double(F)), k, last, tolerance, b);
}

/// flag = 1 if every matrix is done.
template <class = void>
__global__ void ns_all_done_kernel(const int* done, index_t batch, int* flag) {
  __shared__ double shm[ns_threads];
  double pending = 0;
  for (index_t b = threadIdx.x; b < batch; b += ns_threads) pending += done[b] ? 0 : 1;
  pending = block_sum(pending, shm);
  if (threadIdx.x == 0) *flag = pending == 0 ? 1 : 0;
}

/// One block per matrix: D = Z / sqrt(s), the final report (ns_finish), NaN fill for failures.
template <class T>
__global__ void __launch_bounds__(ns_threads) ns_finalize_kernel(const T* Z, const double* scale, tensor_view<T, 3> D,
                                                                int iterations, double tolerance, bool have_residual,
                                                                ns_state st) {
  __shared__ double shm[ns_threads];
  __shared__ int failed;
  const index_t b = blockIdx.x, F = D.shape[1], FF = F * F;
  double bad = 0;
  for (index_t e = threadIdx.x; e < FF; e += ns_threads) {
    const T d = ns_result_element(Z, scale, F, b, e);
    D(b, e / F, e % F) = d;
    if (!std::isfinite(double(d))) bad = 1;
  }
  bad = block_sum(bad, shm);
  if (threadIdx.x == 0) failed = ns_finish(st, iterations, tolerance, have_residual, bad == 0, quiet_nan<double>(), b);
  __syncthreads();
  if (failed)
    for (index_t e = threadIdx.x; e < FF; e += ns_threads) D(b, e / F, e % F) = quiet_nan<T>();
}

/// Row-major C = A B + beta C for every matrix of the batch (column-major cuBLAS computes C^T = B^T A^T).
inline void gemm_batched(cublasHandle_t h, const float* A, const float* B, float* C, int F, long long batch,
                         float beta = 0) {
  const float one = 1;
  NETDECONV_CUBLAS_CHECK(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, F, F, F, &one, B, F, (long long)F * F, A,
                                                   F, (long long)F * F, &beta, C, F, (long long)F * F, int(batch)));
}
inline void gemm_batched(cublasHandle_t h, const double* A, const double* B, double* C, int F, long long batch,
                         double beta = 0) {
  const double one = 1;
  NETDECONV_CUBLAS_CHECK(cublasDgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, F, F, F, &one, B, F, (long long)F * F, A,
                                                   F, (long long)F * F, &beta, C, F, (long long)F * F, int(batch)));
}

/// The policy's cuBLAS handle bound to its stream for one call (restored after), or a handle
/// created for the call.
class blas_binding {
 public:
  explicit blas_binding(const cuda_policy& policy) : handle_(policy.blas) {
    if (handle_ == nullptr) {
      NETDECONV_CUBLAS_CHECK(cublasCreate(&handle_));
      owned_ = true;
    } else {
      NETDECONV_CUBLAS_CHECK(cublasGetStream(handle_, &previous_));
    }
    NETDECONV_CUBLAS_CHECK(cublasSetStream(handle_, policy.stream));
  }
  blas_binding(const blas_binding&) = delete;
  blas_binding& operator=(const blas_binding&) = delete;
  ~blas_binding() {
    if (owned_)
      (void)cublasDestroy(handle_);
    else
      (void)cublasSetStream(handle_, previous_);
  }
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_;
  cudaStream_t previous_ = nullptr;
  bool owned_ = false;
};

/// Scratch layout: Y, Z, P, T, W (batch*F*F T each), scale (batch double), done, converged, flag
/// (int), the screen's Cholesky factors (batch*F*F double).
template <class T>
struct ns_layout {
  std::size_t matrix, scale, flags, chol, total;
  ns_layout(index_t batch, index_t F) {
    matrix = align_up(sizeof(T) * std::size_t(batch * F * F));
    scale = align_up(sizeof(double) * std::size_t(batch));
    flags = align_up(sizeof(int) * std::size_t(2 * batch + 1));
    chol = align_up(sizeof(double) * std::size_t(batch * F * F));
    total = 5 * matrix + scale + flags + chol;
  }
};

/// The Ops of run_newton_schulz on the GPU.
template <class T>
struct gpu_ns_ops {
  cudaStream_t stream;
  cublasHandle_t blas;
  tensor_view<const T, 3> A;
  tensor_view<T, 3> D;
  isqrt_options options;
  ns_state st;
  T *Y, *Z, *P, *Tk, *W;
  double *scale, *chol;
  int* flag;

  index_t batch() const { return A.shape[0]; }
  index_t F() const { return A.shape[1]; }
  long long elements() const { return batch() * F() * F(); }
  void init() {
    ns_scale_kernel<T><<<unsigned(batch()), ns_threads, 0, stream>>>(A, options.scaling == isqrt_scaling::trace, scale,
                                                                      chol, st);
    NETDECONV_CUDA_CHECK_LAUNCH("ns_scale_kernel");
    ns_init_kernel<T><<<grid_for(elements(), 256), 256, 0, stream>>>(A, scale, Y, Z, F(), elements());
    NETDECONV_CUDA_CHECK_LAUNCH("ns_init_kernel");
  }
  void copy_P_from_Y() {
    NETDECONV_CUDA_CHECK(cudaMemcpyAsync(P, Y, sizeof(T) * elements(), cudaMemcpyDeviceToDevice, stream));
  }
  void gemm_P() { gemm_batched(blas, Z, Y, P, int(F()), batch()); }
  void residual(int k, bool last, double tolerance) {
    ns_residual_kernel<T><<<unsigned(batch()), ns_threads, 0, stream>>>(P, F(), k, last, tolerance, st);
    NETDECONV_CUDA_CHECK_LAUNCH("ns_residual_kernel");
  }
  bool all_done() {
    ns_all_done_kernel<><<<1, ns_threads, 0, stream>>>(st.done, batch(), flag);
    NETDECONV_CUDA_CHECK_LAUNCH("ns_all_done_kernel");
    int host = 0;
    NETDECONV_CUDA_CHECK(cudaMemcpyAsync(&host, flag, sizeof(int), cudaMemcpyDeviceToHost, stream));
    NETDECONV_CUDA_CHECK(cudaStreamSynchronize(stream));
    return host != 0;
  }
  void update_T() {
    ns_T_kernel<T><<<grid_for(elements(), 256), 256, 0, stream>>>(P, st.done, Tk, F(), elements());
    NETDECONV_CUDA_CHECK_LAUNCH("ns_T_kernel");
  }
  void gemm_Y() {
    gemm_batched(blas, Y, Tk, W, int(F()), batch());
    std::swap(Y, W);
  }
  void copy_Z_from_T() {
    NETDECONV_CUDA_CHECK(cudaMemcpyAsync(Z, Tk, sizeof(T) * elements(), cudaMemcpyDeviceToDevice, stream));
  }
  void gemm_Z() {
    gemm_batched(blas, Tk, Z, W, int(F()), batch());
    std::swap(Z, W);
  }
  void finalize(double tolerance, bool have_residual) {
    ns_finalize_kernel<T><<<unsigned(batch()), ns_threads, 0, stream>>>(Z, scale, D, options.iterations, tolerance,
                                                                        have_residual, st);
    NETDECONV_CUDA_CHECK_LAUNCH("ns_finalize_kernel");
  }
};

}  // namespace cuda::detail

/// Scratch bytes inverse_sqrt needs for `batch` F x F matrices of T.
template <class T>
std::size_t inverse_sqrt_workspace(const cuda_policy&, index_t batch, index_t F) {
  return cuda::detail::ns_layout<T>(batch, F).total;
}

/// D[b] ~ A[b]^(-1/2) for every matrix of the batch, reports[b] its report (see file comment).
/// Asynchronous, except for the convergence checks of tolerance mode.
template <class T>
void inverse_sqrt(const cuda_policy& policy, tensor_view<const T, 3> A, tensor_view<T, 3> D, const isqrt_options& options,
                  vector_view<isqrt_report> reports) {
  namespace d = cuda::detail;
  constexpr const char* fn = "inverse_sqrt";
  ::netdeconv::detail::check_inverse_sqrt_batch(fn, A, D, options, reports);
  NETDECONV_REQUIRE(options.method == isqrt_method::newton_schulz, fn,
                    "the CUDA path runs Newton-Schulz only (the exact method is CPU-only)");
  d::check_device_memory(fn, "A", A);
  d::check_device_memory(fn, "D", D);
  d::check_device_memory(fn, "reports", reports);
  const index_t batch = A.shape[0], F = A.shape[1];
  NETDECONV_REQUIRE(F <= 46340 && batch <= 2147483647, fn, "F=", F, " or batch=", batch, " too large for cuBLAS");
  if (batch == 0) return;
  const d::ns_layout<T> layout(batch, F);
  d::scratch ws(policy, layout.total, fn);
  const d::blas_binding blas(policy);
  int* flags = ws.at<int>(5 * layout.matrix + layout.scale);
  d::gpu_ns_ops<T> ops{policy.stream, blas.get(), A, D, options, {reports, flags, flags + batch},
                       ws.at<T>(0), ws.at<T>(layout.matrix), ws.at<T>(2 * layout.matrix), ws.at<T>(3 * layout.matrix),
                       ws.at<T>(4 * layout.matrix), ws.at<double>(5 * layout.matrix),
                       ws.at<double>(5 * layout.matrix + layout.scale + layout.flags), flags + 2 * batch};
  d::run_newton_schulz(ops, options.iterations, options.tolerance, options.final_residual, policy.check_interval);
}

}  // namespace netdeconv
