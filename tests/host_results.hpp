// SPDX-License-Identifier: MIT
#pragma once
// The results a backend of tests/backend_checks.hpp returns, in host memory. Eigen-free and
// doctest-free, so that nvcc compiles it too (cuda/tests/cuda_wrappers.cu).

#include <vector>

#include <netdeconv/isqrt_options.hpp>
#include <netdeconv/statistics_view.hpp>

namespace netdeconv::checks {

/// Moments on the host, in the layout of contiguous_moments.
struct host_moments {
  index_t statistics = 0, features = 0;
  std::vector<index_t> count;
  std::vector<double> mean, scatter;

  static host_moments zeros(index_t S, index_t F) {
    return {S, F, std::vector<index_t>(std::size_t(S)), std::vector<double>(std::size_t(S * F)),
            std::vector<double>(std::size_t(S * F * F))};
  }
  moments_view<double> view() { return contiguous_moments<double>(count.data(), mean.data(), scatter.data(), statistics, features); }
  moments_view<const double> view() const {
    return contiguous_moments<const double>(count.data(), mean.data(), scatter.data(), statistics, features);
  }
};

template <class T>
struct host_isqrt {
  std::vector<T> D;
  std::vector<isqrt_report> reports;
};

/// A statistics step's outputs on the host: mu (S*F), D (S*F*F), W' (the weight's logical shape,
/// contiguous), b', reports.
template <class T>
struct host_step {
  std::vector<T> mean, D, weight, bias;
  std::vector<isqrt_report> reports;
};

}  // namespace netdeconv::checks
