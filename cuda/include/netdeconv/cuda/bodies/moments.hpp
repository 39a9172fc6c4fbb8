// SPDX-License-Identifier: MIT
#pragma once
// What each thread of the CUDA merge and covariance kernels computes (../moments.cuh), element
// (s, i, j) passed in. Plain C++ without nvcc (cuda/tests/emulator.hpp runs it on the host).

#include <netdeconv/config.hpp>
#include <netdeconv/statistics_view.hpp>
#include <netdeconv/tensor_view.hpp>

namespace netdeconv::cuda::detail {

/// Element (s, i, j) of out = the moments of the union of a and b (Chan's update, moments.hpp):
/// M = M_a + M_b + d_i d_j na nb / n with d = mu_b - mu_a; thread (s, i, i) writes mean_i,
/// thread (s, 0, 0) the count. out must not share memory with a or b.
NETDECONV_HOST_DEVICE inline void merge_element(const moments_view<const double>& a, const moments_view<const double>& b,
                                                const moments_view<double>& out, index_t s, index_t i, index_t j) {
  const double na = double(a.count(s)), nb = double(b.count(s)), n = na + nb;
  if (nb == 0 || na == 0) {
    const moments_view<const double>& only = nb == 0 ? a : b;
    out.scatter(s, i, j) = only.scatter(s, i, j);
    if (i == j) out.mean(s, i) = only.mean(s, i);
  } else {
    const double di = b.mean(s, i) - a.mean(s, i), dj = b.mean(s, j) - a.mean(s, j);
    out.scatter(s, i, j) = a.scatter(s, i, j) + b.scatter(s, i, j) + di * dj * na * nb / n;
    if (i == j) out.mean(s, i) = a.mean(s, i) + di * nb / n;
  }
  if (i == 0 && j == 0) out.count(s) = a.count(s) + b.count(s);
}

/// Element (s, i, j): cov(s, i, j) = M_ij / n + eps [i == j] in T; thread (s, i, i) also writes
/// mean(s, i) = mu_i in T when mean is not empty.
template <class T>
NETDECONV_HOST_DEVICE void covariance_element(const moments_view<const double>& m, double eps, const tensor_view<T, 3>& cov,
                                              const matrix_view<T>& mean, index_t s, index_t i, index_t j) {
  cov(s, i, j) = static_cast<T>(m.scatter(s, i, j) / double(m.count(s)) + (i == j ? eps : 0.0));
  if (!mean.empty() && i == j) mean(s, i) = static_cast<T>(m.mean(s, i));
}

}  // namespace netdeconv::cuda::detail
