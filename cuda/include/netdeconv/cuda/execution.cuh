// SPDX-License-Identifier: MIT
#pragma once
// The CUDA execution policy. Unlike the CPU policies it does not derive from sequential_policy:
// its views point at device memory, which the sequential fallback cannot read, so a primitive
// without a CUDA overload fails to compile instead of falling back.
//
//   cudaStream_t stream = ...;                           // e.g. torch.cuda.current_stream().cuda_stream
//   netdeconv::cuda_policy policy{stream};
//   std::size_t bytes = netdeconv::block_moments_workspace(policy, rows, plan);
//   policy.workspace = {ptr, bytes};                     // caller-owned device scratch (optional)
//   netdeconv::block_moments(policy, rows, plan, moments);   // enqueued on `stream`, returns at once
//
// The views are the CPU's (tensor_view, patch_sampler, block_plan, moments_view, ...) over device
// memory, and every call validates its arguments with the CPU's checks (netdeconv/checks.hpp);
// it also refuses pointers to ordinary host memory (check_device_memory).
//
// Every call only enqueues work on `stream`: no synchronisation, except where a function says so
// (inverse_sqrt in tolerance mode checks for convergence every check_interval steps). Functions
// that need scratch memory have a `*_workspace` query; with no workspace in the policy they take
// it with cudaMallocAsync / cudaFreeAsync on the stream (stream-ordered, no synchronisation), with
// a too small one they throw.

#include <cstddef>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <netdeconv/error.hpp>
#include <netdeconv/tensor_view.hpp>

#include "error.cuh"

namespace netdeconv {

/// Caller-owned device scratch memory.
struct device_workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

struct cuda_policy {
  cudaStream_t stream = nullptr;    ///< every kernel and copy is enqueued here (nullptr: the legacy default stream)
  device_workspace workspace{};     ///< optional scratch; see the *_workspace queries
  cublasHandle_t blas = nullptr;    ///< cuBLAS handle for inverse_sqrt (nullptr: one is created per call)
  int check_interval = 5;           ///< inverse_sqrt tolerance mode: steps between convergence checks (a sync)
};

namespace cuda::detail {

inline constexpr std::size_t workspace_alignment = 256;

inline std::size_t align_up(std::size_t n) { return (n + workspace_alignment - 1) / workspace_alignment * workspace_alignment; }

/// Scratch of `bytes` for one call: the policy's workspace, or a stream-ordered allocation freed
/// (stream-ordered) when this object goes out of scope.
class scratch {
 public:
  scratch(const cuda_policy& policy, std::size_t bytes, const char* function) : stream_(policy.stream) {
    if (bytes == 0) return;
    if (policy.workspace.data != nullptr) {
      NETDECONV_REQUIRE(policy.workspace.bytes >= bytes, function, "workspace has ", policy.workspace.bytes,
                        " bytes, this call needs ", bytes);
      data_ = static_cast<char*>(policy.workspace.data);
      return;
    }
    NETDECONV_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&data_), bytes, stream_));
    owned_ = true;
  }
  scratch(const scratch&) = delete;
  scratch& operator=(const scratch&) = delete;
  ~scratch() {
    if (owned_) (void)cudaFreeAsync(data_, stream_);
  }
  /// The part [offset, offset + bytes) as T*.
  template <class T>
  T* at(std::size_t offset) const {
    return reinterpret_cast<T*>(data_ + offset);
  }

 private:
  cudaStream_t stream_;
  char* data_ = nullptr;
  bool owned_ = false;
};

/// The policy with `bytes` of its scratch at `data` as its workspace (for the calls a composite makes).
inline cuda_policy with_workspace(const cuda_policy& policy, void* data, std::size_t bytes) {
  cuda_policy p = policy;
  p.workspace = {data, bytes};
  return p;
}

/// Throws invalid_argument when a non-empty view points at host memory that the device cannot
/// read (ordinary pageable memory); device, managed and pinned host memory pass.
template <class T, int R>
void check_device_memory(const char* fn, const char* name, const tensor_view<T, R>& v) {
  if (v.data == nullptr || v.size() == 0) return;
  cudaPointerAttributes attr{};
  NETDECONV_CUDA_CHECK(cudaPointerGetAttributes(&attr, static_cast<const void*>(v.data)));
  NETDECONV_REQUIRE(attr.type != cudaMemoryTypeUnregistered, fn, name,
                    " points at host memory; a cuda_policy call needs device, managed or pinned memory");
}

/// Grid size for `count` independent elements with `threads` per block (grid-stride loops cover the rest).
inline unsigned grid_for(long long count, int threads) {
  const long long blocks = (count + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535LL * 64 ? 65535LL * 64 : blocks));
}

}  // namespace cuda::detail
}  // namespace netdeconv
