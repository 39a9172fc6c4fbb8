// SPDX-License-Identifier: MIT
#pragma once
// Weight folding on the GPU (docs/method.md §6; netdeconv/fold.hpp): for every output o and every piece
// (s, g) of the plan in o's input group, with w = W[o, column(s, g, :)]:
//   W'[o, column(s, g, :)] = w D_s        b'[o] = b[o] - sum over pieces of (w D_s) . mu_s
// One block per output channel (kernel_bodies.hpp: fold_output_part); the bias sum is a fixed-order
// block reduction, so the result is deterministic. An absent bias (empty view) counts as 0.
//
//   netdeconv::device_block_statistics<float> st{plan, mean, D};   // mean: S*F, D: S*F*F (row-major), device
//   netdeconv::fold(policy, st, device_nchw<const float>(w, Cout, C, 3, 3), device_contiguous<const float>(b, Cout),
//                   device_nchw(w_out, Cout, C, 3, 3), device_contiguous(b_out, Cout));

#include "covariance.cuh"
#include "execution.cuh"
#include "kernel_bodies.hpp"
#include "tensor_view.cuh"

namespace netdeconv {

/// mu_s and D_s of every statistic of a plan, in device memory: mean[s*F + f], D[(s*F + i)*F + j].
template <class T>
struct device_block_statistics {
  cuda::plan plan;
  const T* mean = nullptr;
  const T* D = nullptr;
};

namespace cuda::detail {

inline constexpr int fold_threads = 128;

template <class T>
__global__ void __launch_bounds__(fold_threads) fold_kernel(plan p, device_view<const T, 4> w, device_view<const T, 1> bias,
                                                           const T* mean, const T* D, device_view<T, 4> w_out,
                                                           device_view<T, 1> bias_out) {
  __shared__ T shm[fold_threads];
  const index_t o = blockIdx.x;
  shm[threadIdx.x] = fold_output_part(p, w, mean, D, w_out, o, int(threadIdx.x), fold_threads);
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
template <class T>
void fold(const cuda_policy& policy, const device_block_statistics<T>& stats, device_image_view<const T> weight,
          device_vector_view<const T> bias, device_image_view<T> weight_out, device_vector_view<T> bias_out) {
  namespace d = cuda::detail;
  constexpr const char* fn = "fold";
  const cuda::plan& p = stats.plan;
  d::check_plan(fn, p);
  d::check_device_view(fn, "weight", weight);
  d::check_device_view(fn, "bias", bias);
  d::check_device_view(fn, "weight_out", weight_out);
  d::check_device_view(fn, "bias_out", bias_out);
  const cuda::index_t cout = weight.shape[0];
  NETDECONV_REQUIRE(cout >= 1 && cout % p.groups == 0, fn, "weight has Cout=", cout,
                    ", which must be a positive multiple of groups=", p.groups);
  NETDECONV_REQUIRE(weight.shape[1] * p.groups == p.channels, fn, "weight has ", weight.shape[1],
                    " input channels per group, the plan needs C/groups = ", p.channels, "/", p.groups);
  NETDECONV_REQUIRE(weight.shape[2] * weight.shape[3] == p.kernel_area, fn, "weight kernel ", weight.shape[2], "x",
                    weight.shape[3], " does not match the plan's kernel area ", p.kernel_area);
  if (!bias.empty())
    NETDECONV_REQUIRE(bias.shape[0] == cout, fn, "bias has ", bias.shape[0], " entries, weight has Cout=", cout);
  for (int a = 0; a < 4; ++a)
    NETDECONV_REQUIRE(weight_out.shape[a] == weight.shape[a], fn, "weight_out must have weight's shape");
  NETDECONV_REQUIRE(bias_out.shape[0] == cout, fn, "bias_out has ", bias_out.shape[0], " entries, weight has Cout=", cout);
  NETDECONV_REQUIRE(stats.mean && stats.D, fn, "statistics have a null mean or D");
  NETDECONV_REQUIRE(cout <= 2147483647, fn, "Cout=", cout, " too large");
  d::fold_kernel<T><<<unsigned(cout), d::fold_threads, 0, policy.stream>>>(p, weight, bias, stats.mean, stats.D,
                                                                           weight_out, bias_out);
  NETDECONV_CUDA_CHECK_LAUNCH("fold_kernel");
}

/// Linear form: weight (Cout, Fin) viewed as (Cout, Fin, 1, 1).
template <class T>
void fold(const cuda_policy& policy, const device_block_statistics<T>& stats, device_matrix_view<const T> weight,
          device_vector_view<const T> bias, device_matrix_view<T> weight_out, device_vector_view<T> bias_out) {
  const auto conv = [](auto m) {
    using U = std::remove_pointer_t<decltype(m.data)>;
    return device_image_view<U>{m.data, {m.shape[0], m.shape[1], 1, 1}, {m.stride[0], m.stride[1], 0, 0}};
  };
  fold(policy, stats, conv(weight), bias, conv(weight_out), bias_out);
}

}  // namespace netdeconv
