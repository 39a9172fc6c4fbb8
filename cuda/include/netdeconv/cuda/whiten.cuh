// SPDX-License-Identifier: MIT
#pragma once
// Applying a whitening on the GPU (docs/method.md §8; netdeconv::apply_whitening): out = (X - mu_s) D_s
// block by block, rows as samples (or columns, with columns_are_samples), any strides. One thread
// per output entry (kernel_bodies.hpp: whiten_element). The statistics come from the device
// pipeline (block_moments -> covariance -> inverse_sqrt) or from a CPU whiten() copied over;
// they must have kernel area 1 and one row per sample (independent or single-block plans).
//
//   netdeconv::apply_whitening(policy, stats, device_row_major<const float>(X, n, F), device_row_major(out, n, F));

#include "covariance.cuh"
#include "execution.cuh"
#include "fold.cuh"
#include "kernel_bodies.hpp"
#include "tensor_view.cuh"

namespace netdeconv {
namespace cuda::detail {

template <class T>
__global__ void whiten_kernel(device_view<const T, 2> X, const T* mean, const T* D, index_t F, device_view<T, 2> out,
                              long long count) {
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    whiten_element(X, mean, D, F, out, e);
}

template <class T>
device_view<T, 2> transposed(const device_view<T, 2>& m) {
  return {m.data, {m.shape[1], m.shape[0]}, {m.stride[1], m.stride[0]}};
}

}  // namespace cuda::detail

/// out = (X - mu_s) D_s per block (see file comment); X is not modified; asynchronous.
template <class T>
void apply_whitening(const cuda_policy& policy, const device_block_statistics<T>& stats, device_matrix_view<const T> X,
                     device_matrix_view<T> out, bool columns_are_samples = false) {
  namespace d = cuda::detail;
  constexpr const char* fn = "apply_whitening";
  d::check_device_view(fn, "X", X);
  d::check_device_view(fn, "out", out);
  NETDECONV_REQUIRE(out.shape[0] == X.shape[0] && out.shape[1] == X.shape[1], fn, "out is ", out.shape[0], "x",
                    out.shape[1], " but X is ", X.shape[0], "x", X.shape[1]);
  if (columns_are_samples) {
    X = d::transposed(X);
    out = d::transposed(out);
  }
  const cuda::plan& p = stats.plan;
  d::check_plan(fn, p);
  NETDECONV_REQUIRE(p.kernel_area == 1 && p.rows_per_patch() == 1, fn,
                    "statistics must come from independent or single-block whitening");
  NETDECONV_REQUIRE(X.shape[1] == p.channels, fn, "X has ", X.shape[1], " features, the statistics have ", p.channels);
  NETDECONV_REQUIRE(stats.mean && stats.D, fn, "statistics have a null mean or D");
  const long long count = X.shape[0] * X.shape[1];
  if (count == 0) return;
  d::whiten_kernel<T><<<d::grid_for(count, 256), 256, 0, policy.stream>>>(X, stats.mean, stats.D, p.features(), out, count);
  NETDECONV_CUDA_CHECK_LAUNCH("whiten_kernel");
}

}  // namespace netdeconv
