// SPDX-License-Identifier: MIT
#pragma once
// Applying a whitening on the GPU: netdeconv/whiten.hpp's apply_whitening on statistics views with
// a cuda_policy, checked by the same netdeconv::detail::check_apply_whitening:
// out = (X - mu_s) D_s block by block, rows as samples (or columns, with columns_are_samples), any
// strides. One thread per output entry (bodies/whiten.hpp). The statistics (kernel area 1, one row
// per sample: independent or single-block plans) come from the device pipeline (block_moments ->
// covariance -> inverse_sqrt) or from a CPU whiten() copied over. Unlike the CPU, out may not be X.
//
//   netdeconv::apply_whitening(policy, stats, netdeconv::row_major<const float>(X, n, F), netdeconv::row_major(out, n, F));

#include <type_traits>

#include <netdeconv/checks.hpp>
#include <netdeconv/statistics_view.hpp>
#include <netdeconv/tensor_view.hpp>

#include "bodies/whiten.hpp"
#include "execution.cuh"

namespace netdeconv {
namespace cuda::detail {

template <class T>
__global__ void whiten_kernel(block_statistics_view<const T> st, matrix_view<const T> X, matrix_view<T> out, long long count) {
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    whiten_element(st, X, out, e);
}

}  // namespace cuda::detail

/// out = (X - mu_s) D_s per block (see file comment); X is not modified. Asynchronous.
template <class S, class T>
void apply_whitening(const cuda_policy& policy, const block_statistics_view<S>& stats_in, matrix_view<const T> X,
                     matrix_view<T> out, bool columns_are_samples = false) {
  static_assert(std::is_same_v<std::remove_const_t<S>, T>, "statistics and data must have the same scalar type");
  namespace d = cuda::detail;
  constexpr const char* fn = "apply_whitening";
  const block_statistics_view<const T> stats = stats_in;
  if (columns_are_samples) {
    X = ::netdeconv::detail::transposed(X);
    out = ::netdeconv::detail::transposed(out);
  }
  ::netdeconv::detail::check_apply_whitening(fn, stats, X, out, false);
  d::check_device_memory(fn, "mean", stats.mean);
  d::check_device_memory(fn, "D", stats.D);
  d::check_device_memory(fn, "X", X);
  d::check_device_memory(fn, "out", out);
  const long long count = X.size();
  if (count == 0) return;
  d::whiten_kernel<T><<<d::grid_for(count, 256), 256, 0, policy.stream>>>(stats, X, out, count);
  NETDECONV_CUDA_CHECK_LAUNCH("whiten_kernel");
}

}  // namespace netdeconv
