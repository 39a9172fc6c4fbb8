// SPDX-License-Identifier: MIT
#pragma once
// Checked CUDA and cuBLAS calls: a failure becomes netdeconv::cuda_error whose message holds the
// error string, the failing expression and the call site.
//
//   NETDECONV_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));
//   kernel<<<grid, block, 0, stream>>>(...);
//   NETDECONV_CUDA_CHECK_LAUNCH("kernel");   // launch errors (cudaGetLastError), no synchronisation

#include <sstream>
#include <stdexcept>
#include <string>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <netdeconv/error.hpp>

namespace netdeconv {

/// A CUDA runtime or cuBLAS call failed. code() is the cudaError_t (or cublasStatus_t) value.
class cuda_error : public std::runtime_error {
 public:
  cuda_error(const std::string& message, int code) : std::runtime_error(message), code_(code) {}
  int code() const noexcept { return code_; }

 private:
  int code_;
};

namespace cuda::detail {

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* expr, const char* file, int line) {
  std::ostringstream m;
  m << "netdeconv: CUDA error " << int(err) << " (" << cudaGetErrorName(err) << ": " << cudaGetErrorString(err)
    << ") in " << expr << " at " << file << ":" << line;
  throw cuda_error(m.str(), int(err));
}

[[noreturn]] inline void throw_cublas(cublasStatus_t err, const char* expr, const char* file, int line) {
  std::ostringstream m;
  m << "netdeconv: cuBLAS error " << int(err) << " (" << cublasGetStatusName(err) << ": "
    << cublasGetStatusString(err) << ") in " << expr << " at " << file << ":" << line;
  throw cuda_error(m.str(), int(err));
}

}  // namespace cuda::detail
}  // namespace netdeconv

#define NETDECONV_CUDA_CHECK(expr)                                                             \
  do {                                                                                         \
    const cudaError_t netdeconv_err_ = (expr);                                                 \
    if (netdeconv_err_ != cudaSuccess)                                                         \
      ::netdeconv::cuda::detail::throw_cuda(netdeconv_err_, #expr, __FILE__, __LINE__);        \
  } while (false)

/// After a kernel launch: reports launch-configuration errors (and earlier asynchronous ones).
#define NETDECONV_CUDA_CHECK_LAUNCH(kernel_name)                                               \
  do {                                                                                         \
    const cudaError_t netdeconv_err_ = cudaGetLastError();                                     \
    if (netdeconv_err_ != cudaSuccess)                                                         \
      ::netdeconv::cuda::detail::throw_cuda(netdeconv_err_, "launch of " kernel_name, __FILE__, __LINE__); \
  } while (false)

#define NETDECONV_CUBLAS_CHECK(expr)                                                           \
  do {                                                                                         \
    const cublasStatus_t netdeconv_st_ = (expr);                                               \
    if (netdeconv_st_ != CUBLAS_STATUS_SUCCESS)                                                \
      ::netdeconv::cuda::detail::throw_cublas(netdeconv_st_, #expr, __FILE__, __LINE__);       \
  } while (false)
