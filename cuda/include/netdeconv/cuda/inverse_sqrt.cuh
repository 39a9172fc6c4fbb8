// SPDX-License-Identifier: MIT
#pragma once
// Batched inverse square root on the GPU (docs/method.md §5; netdeconv/inverse_sqrt.hpp): the coupled
// Newton-Schulz iteration of the CPU path, step for step, for `batch` F x F matrices at once, with
// cuBLAS strided-batched GEMMs for the products and small kernels for the rest.
//   s = ||A||_F (or tr A); Y = A/s; Z = I; k = 0, 1, ...: P = Z Y; residual ||I - P||_F/sqrt(F);
//   stop at k == iterations (or residual <= tolerance); T = (3I - P)/2; Y = Y T; Z = T Z;  D = Z/sqrt(s)
// Exact rewrites save products: P_0 = Y_0 and Z_1 = T_0 (Z_0 = I); with final_residual = false the
// last step skips Y and the last P (3n - 3 GEMMs for n fixed steps instead of the reference's 3n).
// Tolerance mode freezes converged matrices (T = I, so Y and Z stay exactly as they were) and
// synchronises the stream every policy.check_interval steps to stop when all are done; fixed mode
// never synchronises.
// Statuses (isqrt_status numbering in device_isqrt_reports::status): non_finite for NaN/Inf in A
// or D, not_positive_definite when the scale or a diagonal entry is <= 0 (a necessary condition
// only: the CPU path's Cholesky test is not run here), not_converged in tolerance mode. Failed
// matrices get D = NaN, as on the CPU. The exact (eigendecomposition) method is CPU-only.
//
//   netdeconv::inverse_sqrt(policy, A, D, netdeconv::isqrt_options::fixed(5), reports);  // A, D: device_view<T, 3> (batch, F, F)

#include <cmath>
#include <cstddef>
#include <limits>
#include <utility>

#include <cublas_v2.h>

#include "execution.cuh"
#include "kernel_bodies.hpp"
#include "tensor_view.cuh"

namespace netdeconv {

/// Per-matrix reports in device memory (batch entries each), filled asynchronously.
struct device_isqrt_reports {
  int* iterations = nullptr;
  double* residual = nullptr;
  int* status = nullptr;  ///< static_cast<isqrt_status>(status) on the host
};

namespace cuda {

/// The fields of isqrt_options that the GPU path uses.
struct isqrt_params {
  int iterations = 5;
  double tolerance = 0.0;
  bool trace_scaling = false;
  bool final_residual = true;  ///< false: skip the last P (fixed mode; reports residual NaN)
};

/// From netdeconv::isqrt_options (or any object with iterations, tolerance, scaling, method,
/// final_residual).
template <class Options>
isqrt_params to_isqrt_params(const Options& o) {
  NETDECONV_REQUIRE(static_cast<int>(o.method) == 0, "inverse_sqrt",
                    "the CUDA path runs Newton-Schulz only (the exact method is CPU-only)");
  return {o.iterations, o.tolerance, static_cast<int>(o.scaling) == 1, o.final_residual};
}
inline isqrt_params to_isqrt_params(const isqrt_params& p) { return p; }

namespace detail {

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

/// One block per matrix: scale, status (non_finite, or not_positive_definite if scale or a
/// diagonal entry <= 0), report defaults.
template <class T>
__global__ void __launch_bounds__(ns_threads) ns_scale_kernel(const T* A, index_t F, bool trace, T* scale, ns_state st) {
  __shared__ double shm[ns_threads];
  const index_t b = blockIdx.x, FF = F * F;
  double acc = 0, bad = 0, nonpos = 0;
  for (index_t e = threadIdx.x; e < FF; e += ns_threads) {
    const double a = double(A[b * FF + e]);
    if (!std::isfinite(a)) bad = 1;
    const bool diag = e / F == e % F;
    if (diag && !(a > 0)) nonpos = 1;
    if (!trace)
      acc += a * a;
    else if (diag)
      acc += a;
  }
  acc = block_sum(acc, shm);
  bad = block_sum(bad, shm);
  nonpos = block_sum(nonpos, shm);
  if (threadIdx.x == 0) {
    const T s = trace ? T(acc) : T(std::sqrt(acc));
    scale[b] = s;
    st.status[b] = bad > 0 ? 2 : (nonpos > 0 || !(s > T(0))) ? 3 : 0;
    st.done[b] = st.status[b] != 0;
    st.converged[b] = 0;
    st.iterations[b] = 0;
    st.residual[b] = quiet_nan<double>();
  }
}

template <class T>
__global__ void ns_init_kernel(const T* A, const T* scale, T* Y, T* Z, index_t F, long long count) {
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

/// One block per matrix: D = Z / sqrt(s), final status, NaN fill for failures.
template <class T>
__global__ void __launch_bounds__(ns_threads) ns_finalize_kernel(const T* Z, const T* scale, T* D, index_t F,
                                                                int iterations, double tolerance, bool have_residual,
                                                                ns_state st) {
  __shared__ double shm[ns_threads];
  __shared__ int status;
  const index_t b = blockIdx.x, FF = F * F;
  const T root = T(std::sqrt(scale[b]));
  double bad = 0;
  for (index_t e = threadIdx.x; e < FF; e += ns_threads) {
    const T d = Z[b * FF + e] / root;
    D[b * FF + e] = d;
    if (!std::isfinite(double(d))) bad = 1;
  }
  bad = block_sum(bad, shm);
  if (threadIdx.x == 0) {
    ns_finish_report(st, iterations, have_residual, quiet_nan<double>(), b);
    status = ns_final_status(st, tolerance, bad == 0, have_residual, b);
    st.status[b] = status;
    if (status >= 2) {
      st.residual[b] = quiet_nan<double>();
      st.iterations[b] = 0;
    }
  }
  __syncthreads();
  if (status >= 2)
    for (index_t e = threadIdx.x; e < FF; e += ns_threads) D[b * FF + e] = quiet_nan<T>();
}

/// Row-major C = A B for every matrix of the batch (column-major cuBLAS computes C^T = B^T A^T).
inline void gemm_batched(cublasHandle_t h, const float* A, const float* B, float* C, int F, long long batch) {
  const float one = 1, zero = 0;
  NETDECONV_CUBLAS_CHECK(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, F, F, F, &one, B, F, (long long)F * F, A,
                                                   F, (long long)F * F, &zero, C, F, (long long)F * F, int(batch)));
}
inline void gemm_batched(cublasHandle_t h, const double* A, const double* B, double* C, int F, long long batch) {
  const double one = 1, zero = 0;
  NETDECONV_CUBLAS_CHECK(cublasDgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, F, F, F, &one, B, F, (long long)F * F, A,
                                                   F, (long long)F * F, &zero, C, F, (long long)F * F, int(batch)));
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

/// Scratch layout: Y, Z, P, T, W (batch*F*F T each), scale (batch T), done, converged, flag (int).
template <class T>
struct ns_layout {
  std::size_t matrix, scale, flags, total;
  ns_layout(index_t batch, index_t F) {
    matrix = align_up(sizeof(T) * std::size_t(batch * F * F));
    scale = align_up(sizeof(T) * std::size_t(batch));
    flags = align_up(sizeof(int) * std::size_t(2 * batch + 1));
    total = 5 * matrix + scale + flags;
  }
};

/// The Ops of run_newton_schulz on the GPU.
template <class T>
struct gpu_ns_ops {
  cudaStream_t stream;
  cublasHandle_t blas;
  const T* A;
  T* D;
  index_t batch, F;
  isqrt_params params;
  ns_state st;
  T *Y, *Z, *P, *Tk, *W, *scale;
  int* flag;

  long long elements() const { return batch * F * F; }
  void init() {
    ns_scale_kernel<T><<<unsigned(batch), ns_threads, 0, stream>>>(A, F, params.trace_scaling, scale, st);
    NETDECONV_CUDA_CHECK_LAUNCH("ns_scale_kernel");
    ns_init_kernel<T><<<grid_for(elements(), 256), 256, 0, stream>>>(A, scale, Y, Z, F, elements());
    NETDECONV_CUDA_CHECK_LAUNCH("ns_init_kernel");
  }
  void copy_P_from_Y() {
    NETDECONV_CUDA_CHECK(cudaMemcpyAsync(P, Y, sizeof(T) * elements(), cudaMemcpyDeviceToDevice, stream));
  }
  void gemm_P() { gemm_batched(blas, Z, Y, P, int(F), batch); }
  void residual(int k, bool last, double tolerance) {
    ns_residual_kernel<T><<<unsigned(batch), ns_threads, 0, stream>>>(P, F, k, last, tolerance, st);
    NETDECONV_CUDA_CHECK_LAUNCH("ns_residual_kernel");
  }
  bool all_done() {
    ns_all_done_kernel<><<<1, ns_threads, 0, stream>>>(st.done, batch, flag);
    NETDECONV_CUDA_CHECK_LAUNCH("ns_all_done_kernel");
    int host = 0;
    NETDECONV_CUDA_CHECK(cudaMemcpyAsync(&host, flag, sizeof(int), cudaMemcpyDeviceToHost, stream));
    NETDECONV_CUDA_CHECK(cudaStreamSynchronize(stream));
    return host != 0;
  }
  void update_T() {
    ns_T_kernel<T><<<grid_for(elements(), 256), 256, 0, stream>>>(P, st.done, Tk, F, elements());
    NETDECONV_CUDA_CHECK_LAUNCH("ns_T_kernel");
  }
  void gemm_Y() {
    gemm_batched(blas, Y, Tk, W, int(F), batch);
    std::swap(Y, W);
  }
  void copy_Z_from_T() {
    NETDECONV_CUDA_CHECK(cudaMemcpyAsync(Z, Tk, sizeof(T) * elements(), cudaMemcpyDeviceToDevice, stream));
  }
  void gemm_Z() {
    gemm_batched(blas, Tk, Z, W, int(F), batch);
    std::swap(Z, W);
  }
  void finalize(double tolerance, bool have_residual) {
    ns_finalize_kernel<T><<<unsigned(batch), ns_threads, 0, stream>>>(Z, scale, D, F, params.iterations, tolerance,
                                                                      have_residual, st);
    NETDECONV_CUDA_CHECK_LAUNCH("ns_finalize_kernel");
  }
};

template <class T, int R>
bool is_contiguous(const device_view<T, R>& v) {
  index_t expected = 1;
  for (int a = R - 1; a >= 0; --a) {
    if (v.shape[a] != 1 && v.stride[a] != expected) return false;
    expected *= v.shape[a];
  }
  return true;
}

}  // namespace detail
}  // namespace cuda

/// Scratch bytes inverse_sqrt needs for `batch` F x F matrices of T.
template <class T>
std::size_t inverse_sqrt_workspace(const cuda_policy&, cuda::index_t batch, cuda::index_t F) {
  return cuda::detail::ns_layout<T>(batch, F).total;
}

/// D[b] ~ A[b]^(-1/2) for every matrix of the batch; A and D are contiguous (batch, F, F) device
/// views; reports get `batch` entries. Options: netdeconv::isqrt_options or cuda::isqrt_params.
/// Asynchronous, except for the convergence checks of tolerance mode (see file comment).
template <class T, class Options>
void inverse_sqrt(const cuda_policy& policy, device_view<const T, 3> A, device_view<T, 3> D, const Options& options,
                  const device_isqrt_reports& reports) {
  namespace d = cuda::detail;
  constexpr const char* fn = "inverse_sqrt";
  const cuda::isqrt_params params = cuda::to_isqrt_params(options);
  NETDECONV_REQUIRE(params.iterations >= 0, fn, "iterations (n_iter) must be >= 0, got ", params.iterations);
  NETDECONV_REQUIRE(params.tolerance >= 0, fn, "tolerance must be >= 0, got ", params.tolerance);
  d::check_device_view(fn, "A", A);
  d::check_device_view(fn, "D", D);
  const cuda::index_t batch = A.shape[0], F = A.shape[1];
  NETDECONV_REQUIRE(A.shape[2] == F && F >= 1, fn, "A must hold F x F matrices with F >= 1, got ", A.shape[1], "x",
                    A.shape[2]);
  NETDECONV_REQUIRE(D.shape[0] == batch && D.shape[1] == F && D.shape[2] == F, fn, "D must have A's shape");
  NETDECONV_REQUIRE(d::is_contiguous(A) && d::is_contiguous(D), fn, "A and D must be contiguous (batch, F, F)");
  NETDECONV_REQUIRE(F <= 46340 && batch <= 2147483647, fn, "F=", F, " or batch=", batch, " too large for cuBLAS");
  if (batch == 0) return;
  NETDECONV_REQUIRE(reports.iterations && reports.residual && reports.status, fn, "reports has a null buffer");
  const d::ns_layout<T> layout(batch, F);
  d::scratch ws(policy, layout.total, fn);
  const d::blas_binding blas(policy);
  d::gpu_ns_ops<T> ops{policy.stream, blas.get(), A.data, D.data, batch, F, params, {}, nullptr, nullptr, nullptr,
                       nullptr, nullptr, nullptr, nullptr};
  ops.Y = ws.at<T>(0);
  ops.Z = ws.at<T>(layout.matrix);
  ops.P = ws.at<T>(2 * layout.matrix);
  ops.Tk = ws.at<T>(3 * layout.matrix);
  ops.W = ws.at<T>(4 * layout.matrix);
  ops.scale = ws.at<T>(5 * layout.matrix);
  int* flags = ws.at<int>(5 * layout.matrix + layout.scale);
  ops.st = {reports.iterations, reports.residual, reports.status, flags, flags + batch};
  ops.flag = flags + 2 * batch;
  d::run_newton_schulz(ops, params.iterations, params.tolerance, params.final_residual, policy.check_interval);
}

}  // namespace netdeconv
