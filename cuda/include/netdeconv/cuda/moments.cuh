// SPDX-License-Identifier: MIT
#pragma once
// Device-side mergeable moments (docs/method.md §4), in the form of netdeconv::moments<double>:
//   count n, mean mu, centred scatter M = sum (x - mu)(x - mu)^T   (here stored full and symmetric)
// for each of the S statistics of a plan, in caller-owned device memory (device_moments):
//   count: S long long; mean: S*F double; scatter: S*F*F double, statistic s at s*F*F (row-major).
// merge() is Chan's pairwise update (moments.hpp). A data-parallel job combines its replicas by
// gathering the buffers (e.g. ncclAllGather of count/mean/scatter) and merging them pairwise;
// the three buffers are contiguous in device_moments_buffer so that one collective moves them.
//
//   netdeconv::device_moments_buffer m(S, F);                 // cudaMalloc; not for the hot path
//   netdeconv::block_moments(policy, rows, plan, m.view());
//   netdeconv::covariance(policy, m.view(), 1e-5, cov, mean); // cov: S*F*F T, Cov_s = M_s/n + eps I; mean: S*F T

#include <cstddef>

#include "execution.cuh"
#include "kernel_bodies.hpp"

namespace netdeconv {

using device_moments = cuda::detail::moments_view;

/// Owning device storage for device_moments, one allocation: [count | mean | scatter].
class device_moments_buffer {
 public:
  device_moments_buffer(cuda::index_t statistics, cuda::index_t features) {
    NETDECONV_REQUIRE(statistics >= 0 && features >= 0, "device_moments_buffer", "statistics ", statistics,
                      " and features ", features, " must be >= 0");
    view_.statistics = statistics;
    view_.features = features;
    bytes_ = bytes(statistics, features);
    if (bytes_ == 0) return;
    NETDECONV_CUDA_CHECK(cudaMalloc(&data_, bytes_));
    char* p = static_cast<char*>(data_);
    view_.count = reinterpret_cast<long long*>(p);
    view_.mean = reinterpret_cast<double*>(p + sizeof(double) * std::size_t(statistics));
    view_.scatter = view_.mean + statistics * features;
  }
  device_moments_buffer(const device_moments_buffer&) = delete;
  device_moments_buffer& operator=(const device_moments_buffer&) = delete;
  ~device_moments_buffer() {
    if (data_) (void)cudaFree(data_);
  }
  const device_moments& view() const { return view_; }
  void* data() const { return data_; }
  std::size_t size_bytes() const { return bytes_; }
  /// Bytes of [count | mean | scatter] (count padded to 8 bytes each).
  static std::size_t bytes(cuda::index_t statistics, cuda::index_t features) {
    return sizeof(double) * std::size_t(statistics) * std::size_t(1 + features + features * features);
  }

 private:
  device_moments view_{};
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

namespace cuda::detail {

template <class = void>
__global__ void merge_kernel(moments_view a, moments_view b, moments_view out, long long count) {
  const long long F = a.features;
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    merge_element(a, b, out, e / (F * F), (e / F) % F, e % F);
}

template <class T>
__global__ void covariance_kernel(moments_view m, double eps, T* cov, T* mean, long long count) {
  const long long F = m.features;
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    covariance_element(m, eps, cov, mean, e / (F * F), (e / F) % F, e % F);
}

inline void check_moments(const char* fn, const char* name, const moments_view& m) {
  NETDECONV_REQUIRE(m.statistics >= 0 && m.features >= 0, fn, name, " has ", m.statistics, " statistics of ",
                    m.features, " features");
  NETDECONV_REQUIRE(m.statistics * m.features == 0 || (m.count && m.mean && m.scatter), fn, name,
                    " has a null buffer");
}

}  // namespace cuda::detail

/// out = moments of the union of a and b (Chan's update), statistic by statistic. out must not
/// share memory with a or b. Asynchronous on policy.stream.
inline void merge(const cuda_policy& policy, const device_moments& a, const device_moments& b, const device_moments& out) {
  namespace d = cuda::detail;
  constexpr const char* fn = "merge";
  d::check_moments(fn, "a", a);
  d::check_moments(fn, "b", b);
  d::check_moments(fn, "out", out);
  NETDECONV_REQUIRE(a.statistics == b.statistics && a.statistics == out.statistics && a.features == b.features &&
                        a.features == out.features,
                    fn, "shapes differ: a ", a.statistics, "x", a.features, ", b ", b.statistics, "x", b.features,
                    ", out ", out.statistics, "x", out.features);
  NETDECONV_REQUIRE(out.scatter != a.scatter && out.scatter != b.scatter, fn, "out must not alias a or b");
  const long long count = a.statistics * a.features * a.features;
  if (count == 0) return;
  d::merge_kernel<><<<d::grid_for(count, 256), 256, 0, policy.stream>>>(a, b, out, count);
  NETDECONV_CUDA_CHECK_LAUNCH("merge_kernel");
}

/// cov (S*F*F, row-major per statistic) = M_s / n + eps I, in T, and (if given) mean (S*F) = mu_s
/// in T: what inverse_sqrt and fold take. Needs n >= 2 (as moments::covariance); the count is on
/// the device, so it is not checked here: n < 2 gives Inf/NaN, which inverse_sqrt reports.
template <class T>
void covariance(const cuda_policy& policy, const device_moments& m, double eps, T* cov, T* mean = nullptr) {
  namespace d = cuda::detail;
  constexpr const char* fn = "covariance";
  d::check_moments(fn, "moments", m);
  NETDECONV_REQUIRE(eps >= 0, fn, "eps must be >= 0, got ", eps);
  const long long count = m.statistics * m.features * m.features;
  if (count == 0) return;
  NETDECONV_REQUIRE(cov != nullptr, fn, "cov is null");
  d::covariance_kernel<T><<<d::grid_for(count, 256), 256, 0, policy.stream>>>(m, eps, cov, mean, count);
  NETDECONV_CUDA_CHECK_LAUNCH("covariance_kernel");
}

}  // namespace netdeconv
