// SPDX-License-Identifier: MIT
#pragma once
// The results a backend of tests/backend_checks.hpp returns, in host memory. Eigen-free and
// doctest-free, so that nvcc compiles it too (cuda/tests/cuda_wrappers.cu).

#include <vector>

#include <netdeconv/isqrt_options.hpp>
#include <netdeconv/layer_core.hpp>
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

/// A statistics step's backward on the host: dL/dW (the weight's logical shape, contiguous),
/// dL/db (empty without a bias), dL/dx_stats (x's logical shape, contiguous), reports.
template <class T>
struct host_step_vjp {
  std::vector<T> weight, bias, x;
  std::vector<isqrt_report> reports;
};

/// fold_vjp's results on the host: dL/dW (contiguous), dL/db (empty without a bias), dL/dD_s
/// (S*F*F) and dL/dmu_s (S*F).
template <class T>
struct host_fold_vjp {
  std::vector<T> weight, bias, D, mean;
};

/// A row-major view at p with v's shape.
template <class T, class U, int R>
tensor_view<T, R> contiguous_like(T* p, const tensor_view<U, R>& v) {
  tensor_view<T, R> out{p, v.shape, {}};
  for (int a = R - 1, stride = 1; a >= 0; stride *= int(v.shape[a]), --a) out.stride[a] = stride;
  return out;
}

/// A layer's trajectory on the host: every step's outputs (conv/linear: mu, D, W', b', reports;
/// channel: y in `weight`), whether it threw numerical_error, the running state after the last
/// step (contiguous, row-major; as running_state_view) and what evaluation gives then (conv/linear:
/// export_weights' W' then b'; channel: eval's y of the last batch).
template <class T>
struct host_layer_trace {
  std::vector<host_step<T>> steps;
  std::vector<int> threw;
  std::vector<T> mean, D, cov, remaining;
  std::vector<index_t> counters;
  std::vector<T> evaluated;

  /// The state before any step: mean 0, D = Cov = I, counters 0, remaining (0, 1).
  static host_layer_trace initial(index_t S, index_t F, bool covariance, bool remaining) {
    host_layer_trace t;
    t.mean.assign(std::size_t(S * F), T(0));
    t.D.assign(std::size_t(S * F * F), T(0));
    for (index_t s = 0; s < S; ++s)
      for (index_t i = 0; i < F; ++i) t.D[std::size_t((s * F + i) * F + i)] = T(1);
    if (covariance) t.cov = t.D;
    if (remaining) t.remaining = {T(0), T(1)};
    t.counters.assign(3, 0);
    return t;
  }
  running_state_view<T> state(index_t S, index_t F) {
    return {{mean.data(), {S, F}, {F, 1}},
            {D.data(), {S, F, F}, {F * F, F, 1}},
            cov.empty() ? tensor_view<T, 3>{} : tensor_view<T, 3>{cov.data(), {S, F, F}, {F * F, F, 1}},
            {counters.data(), {3}, {1}},
            remaining.empty() ? vector_view<T>{} : vector_view<T>{remaining.data(), {2}, {1}}};
  }
};

}  // namespace netdeconv::checks
