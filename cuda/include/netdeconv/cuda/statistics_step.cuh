// SPDX-License-Identifier: MIT
#pragma once
// The training-mode statistics step on the GPU: the writing forms of netdeconv/statistics_step.hpp
// (conv_statistics_step, linear_statistics_step) with a cuda_policy, checked by the same
// netdeconv::detail::check_conv_step / check_linear_step / check_step_outputs. The whole step is
// enqueued on policy.stream, with no host synchronisation (except tolerance mode's convergence
// checks, see inverse_sqrt.cuh):
//   block_moments (sampled patches, fused) -> covariance (+ eps I, mu into out.mean)
//   -> inverse_sqrt (D into out.D, reports into out.reports) -> fold (W', b' into out.weight, out.bias)
// The moments and covariances live in scratch (policy.workspace, or stream-ordered allocations);
// conv_statistics_step_workspace / linear_statistics_step_workspace give its size.
//
//   netdeconv::statistics_step_outputs<float, 4> out{mean, D, w_out, b_out, reports};   // device views
//   netdeconv::conv_statistics_step(netdeconv::cuda_policy{stream}, x, w, b, cfg, out);

#include <algorithm>
#include <cstddef>

#include <netdeconv/checks.hpp>
#include <netdeconv/geometry.hpp>
#include <netdeconv/matrix_rows.hpp>
#include <netdeconv/statistics_step_config.hpp>
#include <netdeconv/statistics_view.hpp>

#include "covariance.cuh"
#include "execution.cuh"
#include "fold.cuh"
#include "inverse_sqrt.cuh"
#include "moments.cuh"

namespace netdeconv {
namespace cuda::detail {

/// Scratch of a step: moments [count | mean | scatter], covariances (S, F, F) of T, then the
/// larger of what block_moments and inverse_sqrt need.
template <class T>
struct step_layout {
  std::size_t count, mean, scatter, cov, inner, total;
  template <class Source>
  step_layout(const cuda_policy& policy, const Source& source, const block_plan& p) {
    const std::size_t S = std::size_t(p.count()), F = std::size_t(p.features());
    count = align_up(sizeof(index_t) * S);
    mean = align_up(sizeof(double) * S * F);
    scatter = align_up(sizeof(double) * S * F * F);
    cov = align_up(sizeof(T) * S * F * F);
    inner = align_up(std::max(block_moments_workspace(policy, source, p),
                              inverse_sqrt_workspace<T>(policy, p.count(), p.features())));
    total = count + mean + scatter + cov + inner;
  }
};

/// The step on validated arguments.
template <class T, class Source>
void statistics_step(const cuda_policy& policy, const Source& source, const block_plan& p, image_view<const T> weight,
                     vector_view<const T> bias, double eps, const isqrt_options& isqrt,
                     const statistics_step_outputs<T, 4>& out) {
  const char* fn = "statistics_step";
  const step_layout<T> l(policy, source, p);
  scratch ws(policy, l.total, fn);
  const index_t S = p.count(), F = p.features();
  const moments_view<double> m = contiguous_moments<double>(ws.at<index_t>(0), ws.at<double>(l.count),
                                                            ws.at<double>(l.count + l.mean), S, F);
  const tensor_view<T, 3> cov{ws.at<T>(l.count + l.mean + l.scatter), {S, F, F}, {F * F, F, 1}};
  const cuda_policy inner = with_workspace(policy, ws.at<char>(l.total - l.inner), l.inner);
  block_moments(inner, source, p, m);
  covariance(inner, moments_view<const double>(m), eps, cov, out.mean);
  inverse_sqrt(inner, tensor_view<const T, 3>(cov), out.D, isqrt, out.reports);
  fold(policy, block_statistics_view<const T>{p, out.mean, out.D}, weight, bias, out.weight, out.bias);
}

template <class T, class X, int RX>
void check_step_memory(const char* fn, const tensor_view<const X, RX>& x, const image_view<const T>& weight,
                       const vector_view<const T>& bias, const statistics_step_outputs<T, 4>& out) {
  check_device_memory(fn, "x", x);
  check_device_memory(fn, "weight", weight);
  check_device_memory(fn, "bias", bias);
  check_device_memory(fn, "out.mean", out.mean);
  check_device_memory(fn, "out.D", out.D);
  check_device_memory(fn, "out.weight", out.weight);
  check_device_memory(fn, "out.bias", out.bias);
  check_device_memory(fn, "out.reports", out.reports);
}

}  // namespace cuda::detail

/// Scratch bytes conv_statistics_step needs for x (N, C, H, W) under config.
template <class T>
std::size_t conv_statistics_step_workspace(const cuda_policy& policy, image_view<const T> x, const conv_deconv_config& config) {
  const patch_sampler<T> source(x, config.geometry, config.sampling_stride);
  return cuda::detail::step_layout<T>(policy, source, conv_statistics_plan(x.shape[1], config)).total;
}

/// Scratch bytes linear_statistics_step needs for x (rows, Fin) under config.
template <class T>
std::size_t linear_statistics_step_workspace(const cuda_policy& policy, matrix_view<const T> x,
                                             const linear_deconv_config& config) {
  const matrix_rows<T> source(x);
  return cuda::detail::step_layout<T>(policy, source, linear_statistics_plan(x.shape[1], config)).total;
}

/// Conv statistics step into caller views (statistics_step_config.hpp), all in device memory.
template <class T>
void conv_statistics_step(const cuda_policy& policy, image_view<const T> x, image_view<const T> weight,
                          vector_view<const T> bias, const conv_deconv_config& config,
                          const statistics_step_outputs<T, 4>& out) {
  constexpr const char* fn = "conv_statistics_step";
  const block_plan plan = ::netdeconv::detail::check_conv_step(fn, x, weight, bias, config);
  ::netdeconv::detail::check_step_outputs(fn, plan, x, weight, bias, out);
  cuda::detail::check_step_memory(fn, x, weight, bias, out);
  const patch_sampler<T> source(x, config.geometry, config.sampling_stride);
  ::netdeconv::detail::check_block_moments(fn, source, plan);
  cuda::detail::statistics_step(policy, source, plan, weight, bias, config.eps, config.isqrt, out);
}

/// Linear statistics step into caller views (W' in out.weight, (Cout, Fin)), all in device memory.
template <class T>
void linear_statistics_step(const cuda_policy& policy, matrix_view<const T> x, matrix_view<const T> weight,
                            vector_view<const T> bias, const linear_deconv_config& config,
                            const statistics_step_outputs<T, 2>& out) {
  using ::netdeconv::detail::as_conv_weight;
  constexpr const char* fn = "linear_statistics_step";
  const block_plan plan = ::netdeconv::detail::check_linear_step(fn, x, weight, bias, config);
  const auto conv_out = ::netdeconv::detail::as_conv_outputs(out);
  ::netdeconv::detail::check_step_outputs(fn, plan, x, as_conv_weight(weight), bias, conv_out);
  cuda::detail::check_step_memory(fn, x, as_conv_weight(weight), bias, conv_out);
  const matrix_rows<T> source(x);
  ::netdeconv::detail::check_block_moments(fn, source, plan);
  cuda::detail::statistics_step(policy, source, plan, as_conv_weight(weight), bias, config.eps, config.isqrt, conv_out);
}

}  // namespace netdeconv
