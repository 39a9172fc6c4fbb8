// SPDX-License-Identifier: MIT
#pragma once
// Weight folding on the GPU: netdeconv/fold.hpp's view form with a cuda_policy, checked by the same
// netdeconv::detail::check_fold. For every output o and every piece (s, g) of the plan in o's
// input group, with w = W[o, column(s, g, :)]:
//   W'[o, column(s, g, :)] = w D_s        b'[o] = b[o] - sum over pieces of (w D_s) . mu_s
// One block per output channel (bodies/fold.hpp); the bias sum is a fixed-order block reduction,
// so the result is deterministic. An absent bias (empty view) counts as 0. Unlike the CPU, the
// outputs may not be the inputs (no folding in place).
//
//   netdeconv::block_statistics_view<const float> st{plan, mean, D};   // mean (S, F), D (S, F, F): device
//   netdeconv::fold(policy, st, netdeconv::nchw<const float>(w, Cout, C, 3, 3), netdeconv::contiguous<const float>(b, Cout),
//                   netdeconv::nchw(w_out, Cout, C, 3, 3), netdeconv::contiguous(b_out, Cout));

#include <type_traits>

#include <netdeconv/checks.hpp>
#include <netdeconv/statistics_view.hpp>
#include <netdeconv/tensor_view.hpp>

#include "bodies/fold.hpp"
#include "execution.cuh"

namespace netdeconv {
namespace cuda::detail {

inline constexpr int fold_threads = 128;

template <class T>
__global__ void __launch_bounds__(fold_threads) fold_kernel(block_statistics_view<const T> st, image_view<const T> w,
                                                           vector_view<const T> bias, image_view<T> w_out,
                                                           vector_view<T> bias_out) {
  __shared__ T shm[fold_threads];
  const index_t o = blockIdx.x;
  shm[threadIdx.x] = fold_output_part(st, w, w_out, o, int(threadIdx.x), fold_threads);
  __syncthreads();
  for (int s = fold_threads / 2; s > 0; s /= 2) {
    if (int(threadIdx.x) < s) shm[threadIdx.x] += shm[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) bias_out(o) = (bias.empty() ? T(0) : bias(o)) - shm[0];
}

}  // namespace cuda::detail

/// W' and b' (see file comment). weight (Cout, C/groups, kh, kw), any strides; bias (Cout) or
/// empty; weight_out has weight's shape, bias_out Cout entries (always written). Asynchronous.
template <class S, class T>
void fold(const cuda_policy& policy, const block_statistics_view<S>& stats_in, image_view<const T> weight,
          vector_view<const T> bias, image_view<T> weight_out, vector_view<T> bias_out) {
  static_assert(std::is_same_v<std::remove_const_t<S>, T>, "statistics and weights must have the same scalar type");
  namespace d = cuda::detail;
  constexpr const char* fn = "fold";
  const block_statistics_view<const T> stats = stats_in;
  ::netdeconv::detail::check_fold(fn, stats, weight, bias, weight_out, bias_out, false);
  d::check_device_memory(fn, "mean", stats.mean);
  d::check_device_memory(fn, "D", stats.D);
  d::check_device_memory(fn, "weight", weight);
  d::check_device_memory(fn, "bias", bias);
  d::check_device_memory(fn, "weight_out", weight_out);
  d::check_device_memory(fn, "bias_out", bias_out);
  const index_t cout = weight.shape[0];
  NETDECONV_REQUIRE(cout <= 2147483647, fn, "Cout=", cout, " too large");
  d::fold_kernel<T><<<unsigned(cout), d::fold_threads, 0, policy.stream>>>(stats, weight, bias, weight_out, bias_out);
  NETDECONV_CUDA_CHECK_LAUNCH("fold_kernel");
}

/// Linear form: weight (Cout, Fin) viewed as (Cout, Fin, 1, 1).
template <class S, class T>
void fold(const cuda_policy& policy, const block_statistics_view<S>& stats, matrix_view<const T> weight,
          vector_view<const T> bias, matrix_view<T> weight_out, vector_view<T> bias_out) {
  using ::netdeconv::detail::as_conv_weight;
  fold(policy, stats, as_conv_weight(weight), bias, as_conv_weight(weight_out), bias_out);
}

}  // namespace netdeconv
