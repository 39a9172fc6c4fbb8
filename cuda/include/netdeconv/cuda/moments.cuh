// SPDX-License-Identifier: MIT
#pragma once
// Merge and covariance of moments in device memory: the moments_view calls of netdeconv/moments.hpp
// with a cuda_policy, checked by the same netdeconv::detail::check_merge / check_covariance. One
// thread per element (bodies/moments.hpp). A data-parallel job combines its replicas' moments by
// gathering the three views (e.g. ncclAllGather) and merging them pairwise.
//
//   netdeconv::merge(policy, a, b, out);                     // Chan's update, statistic by statistic
//   netdeconv::covariance(policy, m, 1e-5, cov, mean);       // cov (S, F, F) = M_s/n + eps I, mean (S, F), in T

#include <netdeconv/checks.hpp>
#include <netdeconv/statistics_view.hpp>
#include <netdeconv/tensor_view.hpp>

#include "bodies/moments.hpp"
#include "execution.cuh"

namespace netdeconv {
namespace cuda::detail {

template <class = void>
__global__ void merge_kernel(moments_view<const double> a, moments_view<const double> b, moments_view<double> out,
                             long long count) {
  const long long F = a.features();
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    merge_element(a, b, out, e / (F * F), (e / F) % F, e % F);
}

template <class T>
__global__ void covariance_kernel(moments_view<const double> m, double eps, tensor_view<T, 3> cov, matrix_view<T> mean,
                                  long long count) {
  const long long F = m.features();
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    covariance_element(m, eps, cov, mean, e / (F * F), (e / F) % F, e % F);
}

template <class D>
void check_moments_memory(const char* fn, const moments_view<D>& m) {
  check_device_memory(fn, "count", m.count);
  check_device_memory(fn, "mean", m.mean);
  check_device_memory(fn, "scatter", m.scatter);
}

}  // namespace cuda::detail

/// out = moments of the union of a and b (Chan's update), statistic by statistic. Asynchronous.
inline void merge(const cuda_policy& policy, const moments_view<const double>& a, const moments_view<const double>& b,
                  const moments_view<double>& out) {
  namespace d = cuda::detail;
  constexpr const char* fn = "merge";
  ::netdeconv::detail::check_merge(fn, a, b, out);
  d::check_moments_memory(fn, a);
  d::check_moments_memory(fn, b);
  d::check_moments_memory(fn, out);
  const long long count = a.scatter.size();
  if (count == 0) return;
  d::merge_kernel<><<<d::grid_for(count, 256), 256, 0, policy.stream>>>(a, b, out, count);
  NETDECONV_CUDA_CHECK_LAUNCH("merge_kernel");
}

/// cov[s] = M_s / n_s + eps I and (if mean is not empty) mean[s] = mu_s, in T. Asynchronous. The
/// counts are in device memory, so, unlike the CPU, a count below 2 is not refused here: it gives
/// Inf/NaN, which inverse_sqrt reports as non_finite.
template <class T>
void covariance(const cuda_policy& policy, const moments_view<const double>& m, double eps, const tensor_view<T, 3>& cov,
                const matrix_view<T>& mean = {}) {
  namespace d = cuda::detail;
  constexpr const char* fn = "covariance";
  ::netdeconv::detail::check_covariance(fn, m, eps, cov, mean);
  d::check_moments_memory(fn, m);
  d::check_device_memory(fn, "cov", cov);
  d::check_device_memory(fn, "mean", mean);
  const long long count = cov.size();
  if (count == 0) return;
  d::covariance_kernel<T><<<d::grid_for(count, 256), 256, 0, policy.stream>>>(m, eps, cov, mean, count);
  NETDECONV_CUDA_CHECK_LAUNCH("covariance_kernel");
}

}  // namespace netdeconv
