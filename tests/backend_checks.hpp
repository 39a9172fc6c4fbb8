// SPDX-License-Identifier: MIT
#pragma once
// One suite for every backend: each algorithm's checks, written once over a backend B, compare B
// with the CPU oracle (netdeconv::seq, itself checked against the float64 definitions in the
// test_<header>.cpp files) on random shapes: every block layout, odd sizes, several tiles and
// row chunks, batched blocks, NCHW, NHWC and padded strides, float and double.
//
// A backend takes host data and returns host results, so that the same checks run for
//   cpu_backend<omp_policy>, cpu_backend<simd_policy>      (tests/test_backends.cpp)
//   the CUDA kernel bodies emulated on the host             (tests/test_backends.cpp, cuda/tests/emulator.hpp)
//   the GPU, through nvcc-compiled wrappers                 (cuda/tests/test_cuda.cpp, when a GPU is visible).
// B's interface (views over host memory; `span` is the number of elements a view reaches, which
// the GPU wrappers copy; results are contiguous row-major):
//   im2col<T>(x, span, g) -> cols                         col2im<T>(cols, N, C, H, W, g) -> x
//   block_moments_image<T>(x, span, g, S, plan, ws)       block_moments_matrix<T>(X, span, plan)  -> host_moments
//   merge(a, b) -> host_moments                           covariance<T>(m, eps) -> cov (S*F*F) then means (S*F)
//   inverse_sqrt<T>(A, batch, F, options) -> host_isqrt   fold<T>(plan, mean, D, w, span, bias) -> W' then b'
//   inverse_sqrt_vjp<T>(A, G, batch, F, options) -> host_isqrt (dA in D)
//   conv_step_vjp<T>(x, span, w, bias, cfg, forward, gw, gb) / linear_step_vjp<T>(...) -> host_step_vjp
//     (the backward of the step whose statistics are `forward`'s; gw = dL/dW', w's shape, contiguous; gb = dL/db')
//   fold_vjp<T>(plan, mean, D, w, span, bias, gw, gb) -> host_fold_vjp
//   conv_covariance_vjp<T>(x, span, cfg, moments, dcov, dmean) -> dx (from zero)
//   conv_layer_backward<T>(xs, span, w, bias, cfg, options, gw, gb, constants) / linear_layer_backward<T>(...)
//   channel_layer_backward<T>(xs, span, cfg, options, dys, constants) -> a host_step_vjp per step (empty when it threw)
//   apply_whitening<T>(plan, mean, D, X, span, columns)   conv_step<T>(x, span, w, bias, cfg) / linear_step<T>(...)
//   conv_layer<T>(xs, span, w, bias, cfg, options) / linear_layer<T>(...) / channel_layer<T>(xs, span, cfg, options)
//     -> host_layer_trace (a layer's steps over the batches xs, its final state and evaluation)
// Plain C++ + doctest + Eigen.

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <doctest/doctest.h>
#include <Eigen/Core>

#include <netdeconv/netdeconv.hpp>

#include "host_results.hpp"
#include "oracle.hpp"

namespace netdeconv::checks {

/// The backend interface's conv_step_vjp and linear_step_vjp, for a backend whose
/// step_vjp<T>(x, w, bias, cfg, plan, forward, gw, gb) does the work (cpu_backend, the emulator).
template <class Backend>
struct step_vjp_forms {
  template <class T>
  static host_step_vjp<T> conv_step_vjp(image_view<const T> x, std::size_t, image_view<const T> w, const std::vector<T>& bias,
                                        const conv_deconv_config& cfg, const host_step<T>& forward, const std::vector<T>& gw,
                                        const std::vector<T>& gb) {
    return Backend::template step_vjp<T>(x, w, bias, cfg, conv_statistics_plan(x.shape[1], cfg), forward, gw, gb);
  }
  template <class T>
  static host_step_vjp<T> linear_step_vjp(matrix_view<const T> x, std::size_t, matrix_view<const T> w, const std::vector<T>& bias,
                                          const linear_deconv_config& cfg, const host_step<T>& forward, const std::vector<T>& gw,
                                          const std::vector<T>& gb) {
    return Backend::template step_vjp<T>(x, w, bias, cfg, linear_statistics_plan(x.shape[1], cfg), forward, gw, gb);
  }
};

/// A backend over the CPU policy P: the view forms of the public calls.
template <class P>
struct cpu_backend : step_vjp_forms<cpu_backend<P>> {
  static constexpr P policy{};

  template <class T>
  static std::vector<T> im2col(image_view<const T> x, std::size_t, const conv_geometry& g) {
    const index_t rows = x.shape[0] * g.out_h(x.shape[2]) * g.out_w(x.shape[3]), cols = x.shape[1] * g.kernel_area();
    std::vector<T> out(std::size_t(rows * cols));
    netdeconv::im2col(policy, x, g, row_major(out.data(), rows, cols));
    return out;
  }
  template <class T>
  static std::vector<T> col2im(const std::vector<T>& cols, index_t N, index_t C, index_t H, index_t W, const conv_geometry& g) {
    std::vector<T> x(std::size_t(N * C * H * W));
    const index_t rows = N * g.out_h(H) * g.out_w(W);
    netdeconv::col2im(policy, row_major(cols.data(), rows, C * g.kernel_area()), g, nchw(x.data(), N, C, H, W));
    return x;
  }
  template <class T, class Source>
  static host_moments moments(const Source& source, const block_plan& plan) {
    host_moments m = host_moments::zeros(plan.count(), plan.features());
    netdeconv::block_moments(policy, source, plan, m.view());
    return m;
  }
  template <class T>
  static host_moments block_moments_image(image_view<const T> x, std::size_t, const conv_geometry& g, index_t S,
                                          const block_plan& plan, bool) {
    return moments<T>(patch_sampler<T>(x, g, S), plan);
  }
  template <class T>
  static host_moments block_moments_matrix(matrix_view<const T> x, std::size_t, const block_plan& plan) {
    return moments<T>(matrix_rows<T>(x), plan);
  }
  static host_moments merge(const host_moments& a, const host_moments& b) {
    host_moments out = host_moments::zeros(a.statistics, a.features);
    netdeconv::merge(policy, a.view(), b.view(), out.view());
    return out;
  }
  template <class T>
  static std::vector<T> covariance(const host_moments& m, double eps) {
    const index_t S = m.statistics, F = m.features;
    std::vector<T> out(std::size_t(S * F * F + S * F));
    netdeconv::covariance(policy, m.view(), eps, tensor_view<T, 3>{out.data(), {S, F, F}, {F * F, F, 1}},
                          row_major(out.data() + S * F * F, S, F));
    return out;
  }
  template <class T>
  static host_isqrt<T> inverse_sqrt(const std::vector<T>& A, index_t batch, index_t F, const isqrt_options& o) {
    host_isqrt<T> out{std::vector<T>(A.size()), std::vector<isqrt_report>(std::size_t(batch))};
    netdeconv::inverse_sqrt(policy, tensor_view<const T, 3>{A.data(), {batch, F, F}, {F * F, F, 1}},
                            tensor_view<T, 3>{out.D.data(), {batch, F, F}, {F * F, F, 1}}, o,
                            contiguous(out.reports.data(), batch));
    return out;
  }
  template <class T>
  static host_isqrt<T> inverse_sqrt_vjp(const std::vector<T>& A, const std::vector<T>& G, index_t batch, index_t F,
                                        const isqrt_options& o) {
    host_isqrt<T> out{std::vector<T>(A.size()), std::vector<isqrt_report>(std::size_t(batch))};
    netdeconv::inverse_sqrt_vjp(policy, tensor_view<const T, 3>{A.data(), {batch, F, F}, {F * F, F, 1}},
                                tensor_view<const T, 3>{G.data(), {batch, F, F}, {F * F, F, 1}},
                                tensor_view<T, 3>{out.D.data(), {batch, F, F}, {F * F, F, 1}}, o,
                                contiguous(out.reports.data(), batch));
    return out;
  }
  template <class T>
  static block_statistics_view<const T> statistics(const block_plan& plan, const std::vector<T>& mean, const std::vector<T>& D) {
    const index_t S = plan.count(), F = plan.features();
    return {plan, row_major(mean.data(), S, F), {D.data(), {S, F, F}, {F * F, F, 1}}};
  }
  template <class T>
  static std::vector<T> fold(const block_plan& plan, const std::vector<T>& mean, const std::vector<T>& D,
                             image_view<const T> w, std::size_t, const std::vector<T>& bias) {
    const auto& s = w.shape;
    std::vector<T> out(std::size_t(s[0] * s[1] * s[2] * s[3] + s[0]));
    netdeconv::fold(policy, statistics(plan, mean, D), w,
                    bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), s[0]),
                    nchw(out.data(), s[0], s[1], s[2], s[3]), contiguous(out.data() + s[0] * s[1] * s[2] * s[3], s[0]));
    return out;
  }
  template <class T>
  static std::vector<T> apply_whitening(const block_plan& plan, const std::vector<T>& mean, const std::vector<T>& D,
                                        matrix_view<const T> X, std::size_t, bool columns) {
    std::vector<T> out(std::size_t(X.shape[0] * X.shape[1]));
    netdeconv::apply_whitening(policy, statistics(plan, mean, D), X, row_major(out.data(), X.shape[0], X.shape[1]), columns);
    return out;
  }
  template <class T, int R, class X, class Config, class Plan>
  static host_step<T> step(const X& x, tensor_view<const T, R> w, const std::vector<T>& bias, const Config& config,
                           const Plan& plan) {
    const index_t S = plan.count(), F = plan.features(), cout = w.shape[0];
    host_step<T> h{std::vector<T>(std::size_t(S * F)), std::vector<T>(std::size_t(S * F * F)), std::vector<T>(std::size_t(w.size())),
                   std::vector<T>(std::size_t(cout)), std::vector<isqrt_report>(std::size_t(S))};
    tensor_view<T, R> wo{h.weight.data(), w.shape, {}};
    for (int a = R - 1, stride = 1; a >= 0; stride *= int(w.shape[a]), --a) wo.stride[a] = stride;
    const statistics_step_outputs<T, R> out{row_major(h.mean.data(), S, F), {h.D.data(), {S, F, F}, {F * F, F, 1}}, wo,
                                            contiguous(h.bias.data(), cout), contiguous(h.reports.data(), S)};
    const vector_view<const T> b = bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), cout);
    if constexpr (R == 4)
      conv_statistics_step(policy, x, w, b, config, out);
    else
      linear_statistics_step(policy, x, w, b, config, out);
    return h;
  }
  /// The backward of a step whose statistics are `forward`'s; gw, gb: dL/dW' (w's shape, contiguous), dL/db'.
  template <class T, int R, int RX, class Config>
  static host_step_vjp<T> step_vjp(tensor_view<const T, RX> x, tensor_view<const T, R> w, const std::vector<T>& bias,
                                   const Config& config, const block_plan& plan, const host_step<T>& forward,
                                   const std::vector<T>& gw, const std::vector<T>& gb) {
    const index_t S = plan.count(), cout = w.shape[0];
    host_step_vjp<T> h{std::vector<T>(std::size_t(w.size())), std::vector<T>(bias.empty() ? 0 : std::size_t(cout)),
                       std::vector<T>(std::size_t(x.size())), std::vector<isqrt_report>(std::size_t(S))};
    const statistics_step_gradients<T, RX> out{contiguous_like(h.weight.data(), w),
                                               bias.empty() ? vector_view<T>{} : contiguous(h.bias.data(), cout),
                                               contiguous_like(h.x.data(), x), contiguous(h.reports.data(), S)};
    const vector_view<const T> b = bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), cout);
    const auto stats = statistics(plan, forward.mean, forward.D);
    const tensor_view<const T, R> gwv = contiguous_like(gw.data(), w);
    if constexpr (RX == 4)
      conv_statistics_step_vjp(policy, x, w, b, config, stats, gwv, contiguous(gb.data(), cout), out);
    else
      linear_statistics_step_vjp(policy, x, w, b, config, stats, gwv, contiguous(gb.data(), cout), out);
    return h;
  }
  template <class T>
  static host_fold_vjp<T> fold_vjp(const block_plan& plan, const std::vector<T>& mean, const std::vector<T>& D,
                                   image_view<const T> w, std::size_t, const std::vector<T>& bias, const std::vector<T>& gw,
                                   const std::vector<T>& gb) {
    const index_t S = plan.count(), F = plan.features(), cout = w.shape[0];
    host_fold_vjp<T> h{std::vector<T>(std::size_t(w.size())), std::vector<T>(bias.size()), std::vector<T>(std::size_t(S * F * F)),
                       std::vector<T>(std::size_t(S * F))};
    netdeconv::fold_vjp(policy, statistics(plan, mean, D), w, bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), cout),
                        contiguous_like(gw.data(), w), contiguous(gb.data(), cout), contiguous_like(h.weight.data(), w),
                        bias.empty() ? vector_view<T>{} : contiguous(h.bias.data(), cout), {h.D.data(), {S, F, F}, {F * F, F, 1}},
                        row_major(h.mean.data(), S, F));
    return h;
  }
  /// conv_covariance_vjp into a zeroed dx (x's shape, contiguous); dcov (S*F*F) and dmean (S*F) contiguous.
  template <class T>
  static std::vector<T> conv_covariance_vjp(image_view<const T> x, std::size_t, const conv_deconv_config& cfg,
                                            const host_moments& m, const std::vector<T>& dcov, const std::vector<T>& dmean) {
    const index_t S = m.statistics, F = m.features;
    std::vector<T> dx(std::size_t(x.size()));
    netdeconv::conv_covariance_vjp(policy, x, cfg, m.view(), {dcov.data(), {S, F, F}, {F * F, F, 1}}, row_major(dmean.data(), S, F),
                                   contiguous_like(dx.data(), x));
    return dx;
  }
  template <class T>
  static host_step<T> conv_step(image_view<const T> x, std::size_t, image_view<const T> w, const std::vector<T>& bias,
                                const conv_deconv_config& cfg) {
    return step<T, 4>(x, w, bias, cfg, conv_statistics_plan(x.shape[1], cfg));
  }
  template <class T>
  static host_step<T> linear_step(matrix_view<const T> x, std::size_t, matrix_view<const T> w, const std::vector<T>& bias,
                                  const linear_deconv_config& cfg) {
    return step<T, 2>(x, w, bias, cfg, linear_statistics_plan(x.shape[1], cfg));
  }

  /// A conv or linear layer's trajectory over the batches xs, its state attached to the trace's
  /// buffers with the policy.
  template <class T, int R, class Layer, class X>
  static host_layer_trace<T> folding_layer(Layer layer, const layer_options& o, const std::vector<X>& xs,
                                           tensor_view<const T, R> w, const std::vector<T>& bias) {
    const block_plan plan = layer.plan();
    const index_t S = plan.count(), F = plan.features(), cout = w.shape[0];
    host_layer_trace<T> t = host_layer_trace<T>::initial(S, F, o.average_covariance, false);
    layer.attach_state(policy, t.state(S, F));
    const vector_view<const T> b = bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), cout);
    for (const X& x : xs) {
      host_step<T> h{std::vector<T>(std::size_t(S * F)), std::vector<T>(std::size_t(S * F * F)),
                     std::vector<T>(std::size_t(w.size())), std::vector<T>(std::size_t(cout)),
                     std::vector<isqrt_report>(std::size_t(S))};
      const statistics_step_outputs<T, R> out{row_major(h.mean.data(), S, F), {h.D.data(), {S, F, F}, {F * F, F, 1}},
                                              contiguous_like(h.weight.data(), w), contiguous(h.bias.data(), cout),
                                              contiguous(h.reports.data(), S)};
      try {
        layer.train_step(policy, x, w, b, out);
        t.threw.push_back(0);
      } catch (const numerical_error&) {
        t.threw.push_back(1);
      }
      t.steps.push_back(std::move(h));
    }
    t.evaluated.resize(std::size_t(w.size() + cout));
    layer.export_weights(policy, w, b, contiguous_like(t.evaluated.data(), w), contiguous(t.evaluated.data() + w.size(), cout));
    return t;
  }
  template <class T>
  static host_layer_trace<T> conv_layer(const std::vector<image_view<const T>>& xs, std::size_t, image_view<const T> w,
                                        const std::vector<T>& bias, const conv_deconv_config& cfg, const layer_options& o) {
    return folding_layer<T, 4>(conv_deconv_layer<T>(xs[0].shape[1], cfg, o), o, xs, w, bias);
  }
  template <class T>
  static host_layer_trace<T> linear_layer(const std::vector<matrix_view<const T>>& xs, std::size_t, matrix_view<const T> w,
                                          const std::vector<T>& bias, const linear_deconv_config& cfg,
                                          const layer_options& o) {
    return folding_layer<T, 2>(linear_deconv_layer<T>(xs[0].shape[1], cfg, o), o, xs, w, bias);
  }
  /// A layer's steps (the writing form), each followed by its backward with the step's outputs and
  /// diagnostic() (mode constants if `constants`); a step that throws has an empty result.
  template <class T, int R, class Layer, class X>
  static std::vector<host_step_vjp<T>> folding_layer_backward(Layer layer, const std::vector<X>& xs, tensor_view<const T, R> w,
                                                              const std::vector<T>& bias, const std::vector<T>& gw,
                                                              const std::vector<T>& gb, bool constants) {
    const block_plan plan = layer.plan();
    const index_t S = plan.count(), F = plan.features(), cout = w.shape[0];
    const vector_view<const T> b = bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), cout);
    std::vector<host_step_vjp<T>> result;
    for (const X& x : xs) {
      std::vector<T> mean(static_cast<std::size_t>(S * F)), D(static_cast<std::size_t>(S * F * F)), wo(static_cast<std::size_t>(w.size())), bo(static_cast<std::size_t>(cout));
      std::vector<isqrt_report> reports(static_cast<std::size_t>(S));
      try {
        layer.train_step(policy, x, w, b,
                         statistics_step_outputs<T, R>{row_major(mean.data(), S, F), {D.data(), {S, F, F}, {F * F, F, 1}},
                                                       contiguous_like(wo.data(), w), contiguous(bo.data(), cout),
                                                       contiguous(reports.data(), S)});
      } catch (const numerical_error&) {
        result.emplace_back();
        continue;
      }
      host_step_vjp<T> g{std::vector<T>(std::size_t(w.size())), std::vector<T>(bias.empty() ? 0 : std::size_t(cout)),
                         std::vector<T>(std::size_t(x.size())), std::vector<isqrt_report>(std::size_t(S))};
      const statistics_step_gradients<T, R> out{contiguous_like(g.weight.data(), w),
                                                bias.empty() ? vector_view<T>{} : contiguous(g.bias.data(), cout),
                                                contiguous_like(g.x.data(), x), contiguous(g.reports.data(), S)};
      layer.backward(policy, x, w, b, statistics(plan, mean, D), layer.diagnostic(), contiguous_like(gw.data(), w),
                     contiguous(gb.data(), cout), out, constants ? statistics_gradient::constants : statistics_gradient::full);
      result.push_back(std::move(g));
    }
    return result;
  }
  template <class T>
  static std::vector<host_step_vjp<T>> conv_layer_backward(const std::vector<image_view<const T>>& xs, std::size_t,
                                                           image_view<const T> w, const std::vector<T>& bias,
                                                           const conv_deconv_config& cfg, const layer_options& o,
                                                           const std::vector<T>& gw, const std::vector<T>& gb, bool constants) {
    return folding_layer_backward<T, 4>(conv_deconv_layer<T>(xs[0].shape[1], cfg, o), xs, w, bias, gw, gb, constants);
  }
  template <class T>
  static std::vector<host_step_vjp<T>> linear_layer_backward(const std::vector<matrix_view<const T>>& xs, std::size_t,
                                                             matrix_view<const T> w, const std::vector<T>& bias,
                                                             const linear_deconv_config& cfg, const layer_options& o,
                                                             const std::vector<T>& gw, const std::vector<T>& gb, bool constants) {
    return folding_layer_backward<T, 2>(linear_deconv_layer<T>(xs[0].shape[1], cfg, o), xs, w, bias, gw, gb, constants);
  }
  /// The channel layer's steps (writing the statistics they used), each followed by its backward
  /// given dys[k] (x's shape, contiguous); dL/dx in host_step_vjp::x.
  template <class T>
  static std::vector<host_step_vjp<T>> channel_layer_backward(const std::vector<image_view<const T>>& xs, std::size_t,
                                                              const channel_deconv_config& cfg, const layer_options& o,
                                                              const std::vector<std::vector<T>>& dys, bool constants) {
    const index_t C = xs[0].shape[1], B = cfg.block;
    channel_deconv_layer<T> layer(C, cfg, o);
    std::vector<host_step_vjp<T>> result;
    for (std::size_t k = 0; k < xs.size(); ++k) {
      const image_view<const T>& x = xs[k];
      std::vector<T> y(static_cast<std::size_t>(x.size())), mean(static_cast<std::size_t>(B)), D(static_cast<std::size_t>(B * B)), remaining(C % B ? 2 : 0);
      std::vector<isqrt_report> reports(1);
      const channel_statistics_view<T> used{row_major(mean.data(), 1, B), {D.data(), {1, B, B}, {B * B, B, 1}},
                                            remaining.empty() ? vector_view<T>{} : contiguous(remaining.data(), 2)};
      try {
        layer.train_step(policy, x, contiguous_like(y.data(), x), used, contiguous(reports.data(), 1));
      } catch (const numerical_error&) {
        result.emplace_back();
        continue;
      }
      host_step_vjp<T> g{{}, {}, std::vector<T>(std::size_t(x.size())), std::vector<isqrt_report>(1)};
      layer.backward(policy, x, channel_statistics_view<const T>(used), layer.diagnostic(), contiguous_like(dys[k].data(), x),
                     contiguous_like(g.x.data(), x), contiguous(g.reports.data(), 1),
                     constants ? statistics_gradient::constants : statistics_gradient::full);
      result.push_back(std::move(g));
    }
    return result;
  }
  /// The channel layer's trajectory: y of every batch (in steps[k].weight, NCHW contiguous).
  template <class T>
  static host_layer_trace<T> channel_layer(const std::vector<image_view<const T>>& xs, std::size_t,
                                           const channel_deconv_config& cfg, const layer_options& o) {
    const index_t C = xs[0].shape[1], B = cfg.block;
    channel_deconv_layer<T> layer(C, cfg, o);
    host_layer_trace<T> t = host_layer_trace<T>::initial(1, B, o.average_covariance, C % B != 0);
    layer.attach_state(policy, t.state(1, B));
    for (const image_view<const T>& x : xs) {
      host_step<T> h;
      h.weight.resize(std::size_t(x.size()));
      try {
        layer.train_step(policy, x, contiguous_like(h.weight.data(), x));
        t.threw.push_back(0);
      } catch (const numerical_error&) {
        t.threw.push_back(1);
      }
      t.steps.push_back(std::move(h));
    }
    t.evaluated.resize(std::size_t(xs.back().size()));
    layer.eval(policy, xs.back(), contiguous_like(t.evaluated.data(), xs.back()));
    return t;
  }
};

using rng_t = std::mt19937_64;

inline index_t uniform(rng_t& rng, index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); }

template <class T>
std::vector<T> random_vector(rng_t& rng, std::size_t n, double offset = 0, double scale = 1) {
  std::normal_distribution<double> d(offset, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = T(d(rng));
  return v;
}

/// A random image (N, C, H, W) in NCHW or NHWC memory, or with padded (non-contiguous) strides.
template <class T>
struct image_case {
  std::vector<T> data;
  index_t N, C, H, W;
  index_array<4> stride;
  image_view<const T> cpu() const { return {data.data(), {N, C, H, W}, stride}; }
};

template <class T>
image_case<T> random_image(rng_t& rng, index_t N, index_t C, index_t H, index_t W, double offset = 0) {
  image_case<T> c{{}, N, C, H, W, {}};
  switch (uniform(rng, 0, 2)) {
    case 0: c.stride = {C * H * W, H * W, W, 1}; break;                          // NCHW
    case 1: c.stride = {H * W * C, 1, W * C, C}; break;                          // NHWC
    default: c.stride = {C * H * (W + 3), H * (W + 3), W + 3, 1}; break;         // padded rows
  }
  c.data = random_vector<T>(rng, std::size_t(std::max<index_t>(N * c.stride[0], 1)), offset);
  return c;
}

inline conv_geometry random_geometry(rng_t& rng) {
  conv_geometry g;
  g.kernel_h = uniform(rng, 1, 4);
  g.kernel_w = uniform(rng, 1, 4);
  g.stride_h = uniform(rng, 1, 2);
  g.stride_w = uniform(rng, 1, 3);
  g.pad_h = uniform(rng, 0, 2);
  g.pad_w = uniform(rng, 0, 1);
  g.dilation_h = uniform(rng, 1, 2);
  g.dilation_w = uniform(rng, 1, 2);
  return g;
}

template <class T>
double tol() {
  return std::is_same_v<T, float> ? 2e-4 : 1e-11;
}

/// max |a - b| / max(1, max |b|)
template <class A, class B>
double rel_diff(const A& a, const B& b) {
  double diff = 0, scale = 1;
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < std::size_t(a.size()); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return diff / scale;
}

template <class B, class T>
void check_im2col(rng_t& rng) {
  for (int trial = 0; trial < 25; ++trial) {
    const conv_geometry g = random_geometry(rng);
    const auto x = random_image<T>(rng, uniform(rng, 1, 2), uniform(rng, 1, 5), uniform(rng, 1, 9), uniform(rng, 1, 9));
    const index_t rows = x.N * g.out_h(x.H) * g.out_w(x.W), cols = x.C * g.kernel_area();
    std::vector<T> expected(std::size_t(rows * cols));
    im2col(seq, x.cpu(), g, row_major(expected.data(), rows, cols));
    CAPTURE(trial);
    CHECK(B::template im2col<T>(x.cpu(), x.data.size(), g) == expected);

    const std::vector<T> y = random_vector<T>(rng, expected.size());
    std::vector<T> back(std::size_t(x.N * x.C * x.H * x.W));
    col2im(seq, row_major<const T>(y.data(), rows, cols), g, nchw(back.data(), x.N, x.C, x.H, x.W));
    CHECK(rel_diff(B::template col2im<T>(y, x.N, x.C, x.H, x.W, g), back) < tol<T>());
  }
}

template <class Moments>
void check_moments(const Moments& got, const std::vector<moments<double>>& expected, double tolerance) {
  REQUIRE(got.statistics == index_t(expected.size()));
  const index_t F = got.features;
  for (index_t s = 0; s < got.statistics; ++s) {
    CAPTURE(s);
    CHECK(got.count[s] == expected[s].count());
    const Eigen::Map<const Eigen::VectorXd> mean(got.mean.data() + s * F, F);
    const Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> M(got.scatter.data() + s * F * F, F, F);
    const Eigen::MatrixXd M_ref = expected[s].scatter().selfadjointView<Eigen::Lower>();
    const double n = double(expected[s].count());
    CHECK((mean - expected[s].mean()).cwiseAbs().maxCoeff() <= tolerance * (1 + expected[s].mean().cwiseAbs().maxCoeff()));
    CHECK((M - M_ref).cwiseAbs().maxCoeff() / n <= tolerance * (1 + M_ref.cwiseAbs().maxCoeff() / n));
    CHECK((M - M.transpose()).cwiseAbs().maxCoeff() == 0.0);
  }
}

/// Random plan of `layout` for C channels and kernel area K (block sizes that exercise the
/// adjustment rule, one or several tiles, batched statistics).
inline block_plan random_plan(rng_t& rng, block_layout layout, index_t C, index_t K) {
  if (layout == block_layout::grouped) {
    std::vector<index_t> divisors;
    for (index_t d = 2; d <= C; ++d)
      if (C % d == 0) divisors.push_back(d);
    return make_block_plan(layout, C, K, 1, divisors[std::size_t(uniform(rng, 0, index_t(divisors.size()) - 1))]);
  }
  if (layout == block_layout::independent) {
    std::vector<index_t> divisors;
    for (index_t d = 1; d <= C; ++d)
      if (C % d == 0) divisors.push_back(d);
    return make_block_plan(layout, C, K, divisors[std::size_t(uniform(rng, 0, index_t(divisors.size()) - 1))]);
  }
  return make_block_plan(layout, C, K, uniform(rng, 1, C + 2));
}

/// The random cases of the block-moments checks: 24 sampled images (conv layouts, both sampling
/// rules, one or several 64-feature tiles, NCHW/NHWC/padded) passed to image(x, g, S, plan, trial),
/// then 8 matrices X (n rows of Fin features, row stride Fin + 1, up to 3000 rows: several row
/// chunks; contiguous_shared and independent) passed to matrix(X, n, Fin, plan).
template <class T, class Image, class Matrix>
void for_each_moments_case(rng_t& rng, Image&& image, Matrix&& matrix) {
  const block_layout conv_layouts[] = {block_layout::interleaved_shared, block_layout::grouped, block_layout::independent};
  for (int trial = 0; trial < 24; ++trial) {
    const block_layout layout = conv_layouts[trial % 3];
    conv_geometry g = random_geometry(rng);
    if (trial % 4 == 0) g.kernel_h = g.kernel_w = 1;  // pointwise sampling rule
    const bool wide = trial % 5 == 0;                   // several 64-feature tiles
    const index_t C = layout == block_layout::grouped ? 2 * uniform(rng, 1, 4) : uniform(rng, 1, wide ? 24 : 7);
    const index_t S = uniform(rng, 1, 3);
    const auto x = random_image<T>(rng, uniform(rng, 1, 3), C, uniform(rng, 4, 17), uniform(rng, 4, 15), 3.0);
    const patch_sampler<T> sampler(x.cpu(), g, S);
    const block_plan plan = random_plan(rng, layout, C, g.kernel_area());
    if (sampler.rows() * plan.rows_per_patch() < 2) continue;
    CAPTURE(trial);
    CAPTURE(layout);
    CAPTURE(plan.block);
    image(x, g, S, plan, trial);
  }
  for (int trial = 0; trial < 8; ++trial) {  // matrix rows: contiguous_shared and independent, many rows (chunks)
    const index_t Fin = uniform(rng, 1, 70), n = uniform(rng, 2, 3000);
    const block_layout layout = trial % 2 ? block_layout::contiguous_shared : block_layout::independent;
    const block_plan plan = random_plan(rng, layout, Fin, 1);
    const std::vector<T> X = random_vector<T>(rng, std::size_t(n * (Fin + 1)), -2.0);
    CAPTURE(trial);
    matrix(X, n, Fin, plan);
  }
}

template <class B, class T>
void check_block_moments(rng_t& rng) {
  for_each_moments_case<T>(
      rng,
      [](const image_case<T>& x, const conv_geometry& g, index_t S, const block_plan& bp, int trial) {
        const auto expected = block_moments(seq, patch_sampler<T>(x.cpu(), g, S), bp);
        check_moments(B::template block_moments_image<T>(x.cpu(), x.data.size(), g, S, bp, trial % 2), expected, tol<T>());
      },
      [](const std::vector<T>& X, index_t n, index_t Fin, const block_plan& bp) {
        const auto expected = block_moments(seq, netdeconv::matrix_rows<T>(matrix_view<const T>{X.data(), {n, Fin}, {Fin + 1, 1}}), bp);
        check_moments(B::template block_moments_matrix<T>(matrix_view<const T>{X.data(), {n, Fin}, {Fin + 1, 1}}, X.size(), bp),
                      expected, tol<T>());
      });
}

/// Float input with a mean 10^4 times its spread: the shifted FP32 sums keep the covariance.
template <class B>
void check_large_offset(rng_t& rng) {
  const index_t n = 200000, F = 3;
  const std::vector<float> X = random_vector<float>(rng, std::size_t(n * F), 1e4, 1.0);
  const block_plan plan = make_block_plan(block_layout::independent, F, 1, F);
  const auto expected = block_moments(seq, netdeconv::matrix_rows<float>(row_major(X.data(), n, F)), plan);
  const auto got = B::template block_moments_matrix<float>(row_major(X.data(), n, F), X.size(), plan);
  const Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> M(got.scatter.data(), F, F);
  const Eigen::MatrixXd cov = M / double(n), cov_ref = expected[0].covariance(0.0);
  CHECK((cov - cov_ref).cwiseAbs().maxCoeff() < 1e-3);  // variances are ~1; naive FP32 E[x^2] - E[x]^2 loses everything
  CHECK(std::abs(got.mean[0] - expected[0].mean()[0]) < 1e-3);
}

template <class B, class T>
void check_merge_and_covariance(rng_t& rng) {
  for (int trial = 0; trial < 6; ++trial) {
    const index_t F = uniform(rng, 1, 20), na = uniform(rng, 2, 300), nb = uniform(rng, 2, 300);
    const block_plan plan = random_plan(rng, block_layout::independent, F, 1);
    const std::vector<T> X = random_vector<T>(rng, std::size_t((na + nb) * F), 1.5);
    const auto a = B::template block_moments_matrix<T>(row_major(X.data(), na, F), std::size_t(na * F), plan);
    const auto b = B::template block_moments_matrix<T>(row_major(X.data() + na * F, nb, F), std::size_t(nb * F), plan);
    const auto merged = B::merge(a, b);
    const auto expected = block_moments(seq, netdeconv::matrix_rows<T>(row_major(X.data(), na + nb, F)), plan);
    CAPTURE(trial);
    check_moments(merged, expected, tol<T>());
    const double eps = 1e-3;
    const std::vector<T> cov = B::template covariance<T>(merged, eps);
    const index_t Fb = plan.features();
    for (index_t s = 0; s < plan.count(); ++s) {
      const Eigen::Matrix<T, -1, -1> ref = expected[s].template covariance<T>(eps);
      const Eigen::Map<const Eigen::Matrix<T, -1, -1, Eigen::RowMajor>> got(cov.data() + s * Fb * Fb, Fb, Fb);
      CHECK((got - ref).cwiseAbs().maxCoeff() <= tol<T>() * (1 + ref.cwiseAbs().maxCoeff()));
      const Eigen::Map<const Eigen::Matrix<T, -1, 1>> mean(cov.data() + plan.count() * Fb * Fb + s * Fb, Fb);
      CHECK((mean - expected[s].mean().template cast<T>()).cwiseAbs().maxCoeff() <= tol<T>() * (1 + mean.cwiseAbs().maxCoeff()));
    }
  }
}

template <class T>
Eigen::Matrix<T, -1, -1> random_spd(rng_t& rng, index_t F) {
  const std::vector<double> g = random_vector<double>(rng, std::size_t(F * (F + 3)));
  const Eigen::Map<const Eigen::MatrixXd> G(g.data(), F, F + 3);
  Eigen::MatrixXd A = G * G.transpose() / double(F + 3);
  A.diagonal().array() += 1e-2;
  return A.cast<T>();
}

template <class B, class T>
void check_inverse_sqrt(rng_t& rng) {
  struct mode {
    int iterations;
    double tolerance;
    bool trace, final_residual;
  };
  const double conv_tol = std::is_same_v<T, float> ? 1e-3 : 1e-9;
  const mode modes[] = {{5, 0, false, true}, {15, 0, false, true}, {5, 0, true, true}, {5, 0, false, false},
                        {100, conv_tol, false, true}, {0, 0, false, true}, {1, 0, false, true}};
  for (const mode& m : modes) {
    const index_t batch = uniform(rng, 1, 5), F = uniform(rng, 1, 40);
    std::vector<Eigen::Matrix<T, -1, -1>> A;
    std::vector<T> packed;
    for (index_t b = 0; b < batch; ++b) {
      A.push_back(random_spd<T>(rng, F));
      const Eigen::Matrix<T, -1, -1, Eigen::RowMajor> r = A.back();
      packed.insert(packed.end(), r.data(), r.data() + F * F);
    }
    isqrt_options o = m.tolerance > 0 ? isqrt_options::converged(m.tolerance, m.iterations) : isqrt_options::fixed(m.iterations);
    o.scaling = m.trace ? isqrt_scaling::trace : isqrt_scaling::frobenius;
    o.final_residual = m.final_residual;
    std::vector<Eigen::Matrix<T, -1, -1>> D;
    const auto reports = inverse_sqrt(seq, A, D, o);
    const auto got = B::template inverse_sqrt<T>(packed, batch, F, o);
    CAPTURE(m.iterations);
    CAPTURE(m.tolerance);
    CAPTURE(m.trace);
    CAPTURE(F);
    for (index_t b = 0; b < batch; ++b) {
      const Eigen::Map<const Eigen::Matrix<T, -1, -1, Eigen::RowMajor>> d(got.D.data() + b * F * F, F, F);
      const isqrt_report& r = got.reports[std::size_t(b)];
      CHECK(r.status == reports[b].status);
      CHECK(std::abs(r.iterations - reports[b].iterations) <= (m.tolerance > 0 ? 1 : 0));
      if (m.tolerance == 0) CHECK((d - D[b]).cwiseAbs().maxCoeff() <= 50 * tol<T>() * (1 + D[b].cwiseAbs().maxCoeff()));
      if (m.tolerance > 0) CHECK(r.residual <= m.tolerance);
      if (m.final_residual && m.tolerance == 0)
        CHECK(std::abs(r.residual - reports[b].residual) <= 50 * tol<T>() * (1 + reports[b].residual));
      if (!m.final_residual) CHECK(std::isnan(r.residual));
    }
  }
  // The screen (sequential/inverse_sqrt.hpp, classify_spd): NaN (non_finite); indefinite with a
  // positive diagonal, and A = 0 (not_positive_definite, D is NaN); positive semi-definite with a
  // dead channel, whose rounding the shift tau covers (ok, D finite).
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> cases[] = {{1, nan, 0, nan, 1, 0, 0, 0, 1}, {1, 2, 0, 2, 1, 0, 0, 0, 1}, std::vector<T>(9, T(0)),
                                  {1, 0, 0, 0, 0, 0, 0, 0, 2}};
  const isqrt_status expected[] = {isqrt_status::non_finite, isqrt_status::not_positive_definite,
                                   isqrt_status::not_positive_definite, isqrt_status::ok};
  std::vector<T> packed;
  for (const auto& c : cases) packed.insert(packed.end(), c.begin(), c.end());
  const auto got = B::template inverse_sqrt<T>(packed, 4, 3, isqrt_options::fixed(5));
  for (int b = 0; b < 4; ++b) {
    CAPTURE(b);
    CHECK(got.reports[std::size_t(b)].status == expected[b]);
    square_matrix<T> D;
    CHECK(inverse_sqrt(seq, Eigen::Map<const Eigen::Matrix<T, 3, 3, Eigen::RowMajor>>(cases[b].data()), D,
                       isqrt_options::fixed(5)).status == expected[b]);
    const bool failed = expected[b] != isqrt_status::ok;
    for (int e = 0; e < 9; ++e) CHECK(std::isnan(got.D[std::size_t(9 * b + e)]) == failed);
  }
}

/// The batched inverse square root's VJP (dA in host_isqrt::D) against seq's, with a random
/// non-symmetric G: fixed modes (the truncated iteration's gradient; Frobenius and trace scaling;
/// 0, 1, 5 and 15 steps) within 100 tol of the largest entry, with seq's report; tolerance mode
/// against the true root's gradient (seq: the float64 eigendecomposition) within 1e-3 (float)
/// and 1e-8 (double), the iteration stopped at 1e-4 and 1e-10 (the gradient's error follows the
/// tangent's residual); the screen: NaN in A or G and an indefinite A fail as seq's, with NaN dA.
template <class B, class T>
void check_inverse_sqrt_vjp(rng_t& rng) {
  struct mode {
    int iterations;
    double tolerance;
    bool trace;
  };
  const bool single = std::is_same_v<T, float>;
  const mode modes[] = {{5, 0, false}, {15, 0, false}, {5, 0, true}, {0, 0, false}, {1, 0, false},
                        {100, single ? 1e-4 : 1e-10, false}, {100, single ? 1e-4 : 1e-10, true}};
  for (const mode& m : modes) {
    const index_t batch = uniform(rng, 1, 4), F = uniform(rng, 1, 24);
    isqrt_options o = m.tolerance > 0 ? isqrt_options::converged(m.tolerance, m.iterations) : isqrt_options::fixed(m.iterations);
    o.scaling = m.trace ? isqrt_scaling::trace : isqrt_scaling::frobenius;
    std::vector<T> packed_a, packed_g;
    std::vector<Eigen::Matrix<T, -1, -1>> expected;
    std::vector<isqrt_report> reports;
    for (index_t b = 0; b < batch; ++b) {
      const Eigen::Matrix<T, -1, -1, Eigen::RowMajor> A = random_spd<T>(rng, F);
      const std::vector<T> g = random_vector<T>(rng, std::size_t(F * F));
      const Eigen::Map<const Eigen::Matrix<T, -1, -1, Eigen::RowMajor>> G(g.data(), F, F);
      packed_a.insert(packed_a.end(), A.data(), A.data() + F * F);
      packed_g.insert(packed_g.end(), g.begin(), g.end());
      square_matrix<T> dA;
      reports.push_back(inverse_sqrt_vjp(seq, A, G, dA, o));
      expected.push_back(dA);
    }
    const auto got = B::template inverse_sqrt_vjp<T>(packed_a, packed_g, batch, F, o);
    CAPTURE(m.iterations);
    CAPTURE(m.tolerance);
    CAPTURE(m.trace);
    CAPTURE(F);
    for (index_t b = 0; b < batch; ++b) {
      const Eigen::Map<const Eigen::Matrix<T, -1, -1, Eigen::RowMajor>> d(got.D.data() + b * F * F, F, F);
      const isqrt_report& r = got.reports[std::size_t(b)];
      const Eigen::Matrix<T, -1, -1>& want = expected[std::size_t(b)];
      CHECK(r.status == reports[std::size_t(b)].status);
      const double err = double((d - want).cwiseAbs().maxCoeff()) / double(want.cwiseAbs().maxCoeff());
      CHECK(err <= (m.tolerance > 0 ? (single ? 1e-3 : 1e-8) : 100 * tol<T>()));
      if (m.tolerance == 0) {
        CHECK(r.iterations == m.iterations);
        CHECK(std::abs(r.residual - reports[std::size_t(b)].residual) <= 50 * tol<T>() * (1 + reports[std::size_t(b)].residual));
      } else {
        CHECK(r.residual <= m.tolerance);
      }
    }
  }
  // The screen: NaN in A, NaN in G (non_finite), indefinite A (not_positive_definite), healthy.
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> a_cases[] = {{1, nan, 0, nan, 1, 0, 0, 0, 1}, {2, 0, 0, 0, 1, 0, 0, 0, 1}, {1, 2, 0, 2, 1, 0, 0, 0, 1},
                                    {2, 1, 0, 1, 2, 0, 0, 0, 1}};
  const std::vector<T> g_cases[] = {std::vector<T>(9, T(1)), {1, 0, 0, 0, nan, 0, 0, 0, 1}, std::vector<T>(9, T(1)),
                                    {1, 2, 3, 4, 5, 6, 7, 8, 9}};
  std::vector<T> packed_a, packed_g;
  for (int b = 0; b < 4; ++b) {
    packed_a.insert(packed_a.end(), a_cases[b].begin(), a_cases[b].end());
    packed_g.insert(packed_g.end(), g_cases[b].begin(), g_cases[b].end());
  }
  const auto got = B::template inverse_sqrt_vjp<T>(packed_a, packed_g, 4, 3, isqrt_options::fixed(5));
  for (int b = 0; b < 4; ++b) {
    CAPTURE(b);
    square_matrix<T> dA;
    const isqrt_status want = inverse_sqrt_vjp(seq, Eigen::Map<const Eigen::Matrix<T, 3, 3, Eigen::RowMajor>>(a_cases[b].data()),
                                               Eigen::Map<const Eigen::Matrix<T, 3, 3, Eigen::RowMajor>>(g_cases[b].data()),
                                               dA, isqrt_options::fixed(5)).status;
    CHECK(want == (b == 3 ? isqrt_status::ok : b == 2 ? isqrt_status::not_positive_definite : isqrt_status::non_finite));
    CHECK(got.reports[std::size_t(b)].status == want);
    for (int e = 0; e < 9; ++e) CHECK(std::isnan(got.D[std::size_t(9 * b + e)]) == (b < 3));
  }
}

template <class B, class T>
void check_fold(rng_t& rng) {
  const block_layout layouts[] = {block_layout::interleaved_shared, block_layout::grouped, block_layout::independent};
  for (int trial = 0; trial < 18; ++trial) {
    const block_layout layout = layouts[trial % 3];
    const index_t C = layout == block_layout::grouped ? 2 * uniform(rng, 1, 4) : uniform(rng, 1, 9);
    const index_t kh = uniform(rng, 1, 3), kw = uniform(rng, 1, 3);
    const block_plan plan = random_plan(rng, layout, C, kh * kw);
    const index_t cout = plan.groups * uniform(rng, 1, 5), ci = C / plan.groups, F = plan.features();
    block_statistics<T> stats{plan, {}, {}};
    std::vector<T> mean, D;
    for (index_t s = 0; s < plan.count(); ++s) {
      const std::vector<T> m = random_vector<T>(rng, std::size_t(F)), d = random_vector<T>(rng, std::size_t(F * F));
      stats.mean.push_back(Eigen::Map<const Eigen::Matrix<T, -1, 1>>(m.data(), F));
      stats.D.push_back(Eigen::Map<const Eigen::Matrix<T, -1, -1, Eigen::RowMajor>>(d.data(), F, F));
      mean.insert(mean.end(), m.begin(), m.end());
      D.insert(D.end(), d.begin(), d.end());
    }
    // weight with a padded output-channel stride (not contiguous)
    const index_array<4> stride{ci * kh * kw + 2, kh * kw, kw, 1};
    const std::vector<T> w = random_vector<T>(rng, std::size_t(cout * stride[0]));
    const std::vector<T> bias = trial % 4 == 3 ? std::vector<T>{} : random_vector<T>(rng, std::size_t(cout));
    const image_view<const T> wv{w.data(), {cout, ci, kh, kw}, stride};
    const auto expected = fold(seq, stats, wv, bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), cout));
    const auto got = B::template fold<T>(plan, mean, D, wv, w.size(), bias);
    CAPTURE(trial);
    CAPTURE(layout);
    const std::vector<T> got_w(got.begin(), got.end() - cout), got_b(got.end() - cout, got.end());
    CHECK(rel_diff(got_w, expected.weight) < 10 * tol<T>());
    CHECK(rel_diff(got_b, expected.bias) < 10 * tol<T>());
  }
}

template <class B, class T>
void check_apply_whitening(rng_t& rng) {
  for (int trial = 0; trial < 8; ++trial) {
    const index_t F = uniform(rng, 1, 30), n = uniform(rng, 1, 50);
    const block_plan plan = random_plan(rng, block_layout::independent, F, 1);
    const index_t Fb = plan.features();
    block_statistics<T> stats{plan, {}, {}};
    std::vector<T> mean, D;
    for (index_t s = 0; s < plan.count(); ++s) {
      const std::vector<T> m = random_vector<T>(rng, std::size_t(Fb)), d = random_vector<T>(rng, std::size_t(Fb * Fb));
      stats.mean.push_back(Eigen::Map<const Eigen::Matrix<T, -1, 1>>(m.data(), Fb));
      stats.D.push_back(Eigen::Map<const Eigen::Matrix<T, -1, -1, Eigen::RowMajor>>(d.data(), Fb, Fb));
      mean.insert(mean.end(), m.begin(), m.end());
      D.insert(D.end(), d.begin(), d.end());
    }
    const bool columns = trial % 2 == 1;
    const index_t rows = columns ? F : n, cols = columns ? n : F;
    const std::vector<T> X = random_vector<T>(rng, std::size_t(rows * (cols + 1)));
    const matrix_view<const T> xv{X.data(), {rows, cols}, {cols + 1, 1}};
    Eigen::Matrix<T, -1, -1, Eigen::RowMajor> expected(rows, cols);
    apply_whitening(seq, stats, xv, view_mut(expected), columns);
    const auto got = B::template apply_whitening<T>(plan, mean, D, xv, X.size(), columns);
    CAPTURE(trial);
    CHECK(rel_diff(got, std::vector<T>(expected.data(), expected.data() + expected.size())) < 10 * tol<T>());
  }
}

/// The statistics steps (writing form) against the CPU oracle's returning form: conv with every
/// layout, groups, geometry and sampling stride on NCHW/NHWC/padded inputs; linear with both
/// layouts; fixed and converged Newton-Schulz, Frobenius and trace scaling.
/// Trial `trial` of the steps' checks: a conv configuration with layout trial % 3 (interleaved
/// shared, grouped, independent), a random geometry (1x1 every 4th trial), C, block and sampling
/// stride 1-2, eps 1e-2; the caller sets the inverse square root.
struct conv_case {
  conv_deconv_config cfg;
  block_plan plan;
  index_t C;
};
inline conv_case random_conv_case(rng_t& rng, int trial) {
  const block_layout layouts[] = {block_layout::interleaved_shared, block_layout::grouped, block_layout::independent};
  conv_deconv_config cfg;
  cfg.layout = layouts[trial % 3];
  cfg.geometry = random_geometry(rng);
  if (trial % 4 == 0) cfg.geometry.kernel_h = cfg.geometry.kernel_w = 1;
  const index_t C = cfg.layout == block_layout::grouped ? 2 * uniform(rng, 1, 3) : uniform(rng, 1, 6);
  const block_plan plan = random_plan(rng, cfg.layout, C, cfg.geometry.kernel_area());
  cfg.groups = plan.groups;
  cfg.block = plan.block;
  cfg.sampling_stride = uniform(rng, 1, 2);
  cfg.eps = 1e-2;
  return {cfg, plan, C};
}

template <class B, class T>
void check_statistics_steps(rng_t& rng) {
  const auto compare = [](const host_step<T>& got, const auto& expected, const block_plan& plan) {
    const index_t F = plan.features();
    std::vector<T> mean, D;
    for (index_t s = 0; s < plan.count(); ++s) {
      const Eigen::Matrix<T, -1, -1, Eigen::RowMajor> d = expected.statistics.D[s];
      mean.insert(mean.end(), expected.statistics.mean[s].data(), expected.statistics.mean[s].data() + F);
      D.insert(D.end(), d.data(), d.data() + F * F);
    }
    CHECK(rel_diff(got.mean, mean) < 10 * tol<T>());
    CHECK(rel_diff(got.D, D) < 50 * tol<T>());
    CHECK(rel_diff(got.weight, expected.weight) < 50 * tol<T>());
    CHECK(rel_diff(got.bias, expected.bias) < 50 * tol<T>());
    REQUIRE(got.reports.size() == expected.reports.size());
    for (std::size_t s = 0; s < got.reports.size(); ++s) {
      CHECK(got.reports[s].status == expected.reports[s].status);
      CHECK(std::abs(got.reports[s].iterations - expected.reports[s].iterations) <= 1);
    }
  };
  for (int trial = 0; trial < 9; ++trial) {
    conv_case drawn = random_conv_case(rng, trial);
    conv_deconv_config& cfg = drawn.cfg;
    const block_plan& plan = drawn.plan;
    const index_t C = drawn.C;
    cfg.isqrt = trial % 3 == 2 ? isqrt_options::converged(std::is_same_v<T, float> ? 1e-3 : 1e-9, 60) : isqrt_options::fixed(5);
    if (trial % 2) cfg.isqrt.scaling = isqrt_scaling::trace;
    const auto x = random_image<T>(rng, uniform(rng, 1, 3), C, uniform(rng, 6, 14), uniform(rng, 6, 12), 1.0);
    if (patch_sampler<T>(x.cpu(), cfg.geometry, cfg.sampling_stride).rows() * plan.rows_per_patch() < 2) continue;
    const index_t cout = plan.groups * uniform(rng, 1, 3), kh = cfg.geometry.kernel_h, kw = cfg.geometry.kernel_w;
    const std::vector<T> w = random_vector<T>(rng, std::size_t(cout * (C / plan.groups) * kh * kw));
    const std::vector<T> bias = trial % 4 == 1 ? std::vector<T>{} : random_vector<T>(rng, std::size_t(cout));
    const auto wv = nchw(w.data(), cout, C / plan.groups, kh, kw);
    const auto bv = bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), cout);
    CAPTURE(trial);
    CAPTURE(cfg.layout);
    compare(B::template conv_step<T>(x.cpu(), x.data.size(), wv, bias, cfg), conv_statistics_step(seq, x.cpu(), wv, bv, cfg),
            plan);
  }
  for (int trial = 0; trial < 4; ++trial) {
    linear_deconv_config cfg;
    cfg.layout = trial % 2 ? block_layout::contiguous_shared : block_layout::independent;
    const index_t Fin = uniform(rng, 1, 40), n = uniform(rng, 2, 400), cout = uniform(rng, 1, 5);
    const block_plan plan = random_plan(rng, cfg.layout, Fin, 1);
    cfg.block = plan.block;
    cfg.eps = 1e-2;
    const std::vector<T> X = random_vector<T>(rng, std::size_t(n * (Fin + 2)), 0.5);
    const std::vector<T> w = random_vector<T>(rng, std::size_t(cout * Fin)), bias = random_vector<T>(rng, std::size_t(cout));
    const matrix_view<const T> xv{X.data(), {n, Fin}, {Fin + 2, 1}};
    CAPTURE(trial);
    compare(B::template linear_step<T>(xv, X.size(), row_major(w.data(), cout, Fin), bias, cfg),
            linear_statistics_step(seq, xv, row_major(w.data(), cout, Fin), contiguous(bias.data(), cout), cfg), plan);
  }
}

/// The statistics steps' backward against seq's on random configurations: every conv layout,
/// groups, geometry, sampling stride, 1x1, no bias, NCHW/NHWC/padded x; linear shared and
/// independent layouts over padded rows; Frobenius and trace scaling. dL/dW, dL/db and dL/dx_stats
/// within 1e-4 (float) and 1e-10 (double) of the largest entry of each in fixed mode (the issue's
/// parity tolerances; seq sums in double); in tolerance mode, where a GPU's root gradient is its
/// converged iteration's (stopped at 1e-4 / 1e-10), within 1e-3 / 1e-8. The same reports.
/// Two backward results agree: dL/dW, dL/db and dL/dx each within `bound` of its largest entry
/// (max |a - b| / max |b|, or max |a - b| when b is 0), the same report statuses.
template <class T>
void compare_vjps(const host_step_vjp<T>& got, const host_step_vjp<T>& want, double bound) {
  const auto relative = [](const std::vector<T>& a, const std::vector<T>& b) {
    REQUIRE(a.size() == b.size());
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
      scale = std::max(scale, std::abs(double(b[i])));
    }
    return scale > 0 ? diff / scale : diff;
  };
  CHECK(relative(got.weight, want.weight) < bound);
  CHECK(relative(got.bias, want.bias) < bound);
  CHECK(relative(got.x, want.x) < bound);
  REQUIRE(got.reports.size() == want.reports.size());
  for (std::size_t s = 0; s < got.reports.size(); ++s) CHECK(got.reports[s].status == want.reports[s].status);
}

template <class B, class T>
void check_statistics_step_vjps(rng_t& rng) {
  using oracle_backend = cpu_backend<sequential_policy>;
  const bool single = std::is_same_v<T, float>;
  const auto compare = [&](const host_step_vjp<T>& got, const host_step_vjp<T>& want, bool converged) {
    compare_vjps(got, want, converged ? (single ? 1e-3 : 1e-8) : (single ? 1e-4 : 1e-10));
  };
  const auto isqrt = [&](int trial) {
    isqrt_options o = trial % 3 == 2 ? isqrt_options::converged(single ? 1e-4 : 1e-10, 100) : isqrt_options::fixed(5);
    if (trial % 2) o.scaling = isqrt_scaling::trace;
    return o;
  };
  for (int trial = 0; trial < 9; ++trial) {
    conv_case drawn = random_conv_case(rng, trial);
    conv_deconv_config& cfg = drawn.cfg;
    const block_plan& plan = drawn.plan;
    const index_t C = drawn.C;
    cfg.isqrt = isqrt(trial);
    const auto x = random_image<T>(rng, uniform(rng, 1, 3), C, uniform(rng, 6, 14), uniform(rng, 6, 12), 1.0);
    if (patch_sampler<T>(x.cpu(), cfg.geometry, cfg.sampling_stride).rows() * plan.rows_per_patch() < 2) continue;
    const index_t cout = plan.groups * uniform(rng, 1, 3), kh = cfg.geometry.kernel_h, kw = cfg.geometry.kernel_w;
    const std::size_t wsize = std::size_t(cout * (C / plan.groups) * kh * kw);
    const std::vector<T> w = random_vector<T>(rng, wsize), gw = random_vector<T>(rng, wsize),
                         gb = random_vector<T>(rng, std::size_t(cout));
    const std::vector<T> bias = trial % 4 == 1 ? std::vector<T>{} : random_vector<T>(rng, std::size_t(cout));
    const auto wv = nchw(w.data(), cout, C / plan.groups, kh, kw);
    const host_step<T> forward = oracle_backend::template conv_step<T>(x.cpu(), x.data.size(), wv, bias, cfg);
    CAPTURE(trial);
    CAPTURE(cfg.layout);
    compare(B::template conv_step_vjp<T>(x.cpu(), x.data.size(), wv, bias, cfg, forward, gw, gb),
            oracle_backend::template conv_step_vjp<T>(x.cpu(), x.data.size(), wv, bias, cfg, forward, gw, gb), trial % 3 == 2);
  }
  for (int trial = 0; trial < 4; ++trial) {
    linear_deconv_config cfg;
    cfg.layout = trial % 2 ? block_layout::contiguous_shared : block_layout::independent;
    const index_t Fin = uniform(rng, 1, 40), n = uniform(rng, 2, 400), cout = uniform(rng, 1, 5);
    const block_plan plan = random_plan(rng, cfg.layout, Fin, 1);
    cfg.block = plan.block;
    cfg.eps = 1e-2;
    cfg.isqrt = isqrt(trial + 1);
    const std::vector<T> X = random_vector<T>(rng, std::size_t(n * (Fin + 2)), 0.5);
    const std::vector<T> w = random_vector<T>(rng, std::size_t(cout * Fin)), bias = random_vector<T>(rng, std::size_t(cout)),
                         gw = random_vector<T>(rng, std::size_t(cout * Fin)), gb = random_vector<T>(rng, std::size_t(cout));
    const matrix_view<const T> xv{X.data(), {n, Fin}, {Fin + 2, 1}};
    const auto wv = row_major(w.data(), cout, Fin);
    const host_step<T> forward = oracle_backend::template linear_step<T>(xv, X.size(), wv, bias, cfg);
    CAPTURE(trial);
    compare(B::template linear_step_vjp<T>(xv, X.size(), wv, bias, cfg, forward, gw, gb),
            oracle_backend::template linear_step_vjp<T>(xv, X.size(), wv, bias, cfg, forward, gw, gb), (trial + 1) % 3 == 2);
  }
}

/// The data-parallel pieces compose to the whole batch's backward (seq's conv_statistics_step_vjp):
/// fold_vjp, inverse_sqrt_vjp at the merged covariance (seq's moments of the whole batch), then
/// conv_covariance_vjp on the uneven shards [0, 2) and [2, 5) of the batch, whose dx are
/// concatenated; the three conv layouts, within 1e-4 (float) and 1e-10 (double). Kernels > 1 only:
/// the 1x1 rule samples every step-th pixel of the whole batch, so a shard whose pixel count is
/// not a multiple of the step samples other pixels than the batch does.
template <class B, class T>
void check_sharded_vjp(rng_t& rng) {
  using oracle_backend = cpu_backend<sequential_policy>;
  for (int trial = 1; trial <= 3; ++trial) {  // random_conv_case gives 1x1 kernels at trial 0 mod 4
    conv_case drawn = random_conv_case(rng, trial);
    conv_deconv_config& cfg = drawn.cfg;
    const block_plan& plan = drawn.plan;
    const index_t C = drawn.C;
    cfg.isqrt = isqrt_options::fixed(5);
    const auto x = random_image<T>(rng, 5, C, uniform(rng, 6, 10), uniform(rng, 6, 10), 1.0);
    const index_t S = plan.count(), F = plan.features(), cout = plan.groups * uniform(rng, 1, 2);
    const std::size_t wsize = std::size_t(cout * (C / plan.groups) * cfg.geometry.kernel_area());
    const std::vector<T> w = random_vector<T>(rng, wsize), gw = random_vector<T>(rng, wsize),
                         bias = random_vector<T>(rng, std::size_t(cout)), gb = random_vector<T>(rng, std::size_t(cout));
    const auto wv = nchw(w.data(), cout, C / plan.groups, cfg.geometry.kernel_h, cfg.geometry.kernel_w);
    const host_step<T> forward = oracle_backend::template conv_step<T>(x.cpu(), x.data.size(), wv, bias, cfg);
    const host_step_vjp<T> want = oracle_backend::template conv_step_vjp<T>(x.cpu(), x.data.size(), wv, bias, cfg, forward, gw, gb);
    const host_fold_vjp<T> fold = B::template fold_vjp<T>(plan, forward.mean, forward.D, wv, wv.size(), bias, gw, gb);
    const host_moments merged = oracle_backend::template moments<T>(patch_sampler<T>(x.cpu(), cfg.geometry, cfg.sampling_stride), plan);
    std::vector<T> cov = oracle_backend::template covariance<T>(merged, cfg.eps);
    cov.resize(std::size_t(S * F * F));  // drop the means
    const host_isqrt<T> dcov = B::template inverse_sqrt_vjp<T>(cov, fold.D, S, F, cfg.isqrt);
    host_step_vjp<T> got{fold.weight, fold.bias, {}, dcov.reports};
    const index_t bounds[] = {0, 2, 5};
    for (int k = 0; k < 2; ++k) {
      const std::size_t offset = std::size_t(bounds[k] * x.stride[0]);
      const image_view<const T> shard{x.data.data() + offset, {bounds[k + 1] - bounds[k], C, x.H, x.W}, x.stride};
      const std::vector<T> dx = B::template conv_covariance_vjp<T>(shard, x.data.size() - offset, cfg, merged, dcov.D, fold.mean);
      got.x.insert(got.x.end(), dx.begin(), dx.end());
    }
    CAPTURE(trial);
    CAPTURE(cfg.layout);
    compare_vjps(got, want, std::is_same_v<T, float> ? 1e-4 : 1e-10);
  }
}

/// Two layer trajectories agree: the same steps throw, the same counters; every other step's
/// outputs, the final state and the evaluation within 50 tol (the statistics steps' bound).
template <class T>
void compare_traces(const host_layer_trace<T>& got, const host_layer_trace<T>& want) {
  REQUIRE(got.steps.size() == want.steps.size());
  CHECK(got.threw == want.threw);
  CHECK(got.counters == want.counters);
  for (std::size_t k = 0; k < want.steps.size(); ++k) {
    CAPTURE(k);
    if (want.threw[k]) continue;
    const host_step<T>&g = got.steps[k], &w = want.steps[k];
    CHECK(rel_diff(g.weight, w.weight) < 50 * tol<T>());
    CHECK(rel_diff(g.bias, w.bias) < 50 * tol<T>());
    if (w.reports.empty()) continue;
    CHECK(rel_diff(g.mean, w.mean) < 50 * tol<T>());
    CHECK(rel_diff(g.D, w.D) < 50 * tol<T>());
    for (std::size_t s = 0; s < w.reports.size(); ++s) {
      CHECK(g.reports[s].status == w.reports[s].status);
      CHECK(std::abs(g.reports[s].iterations - w.reports[s].iterations) <= 1);
    }
  }
  CHECK(rel_diff(got.mean, want.mean) < 50 * tol<T>());
  CHECK(rel_diff(got.D, want.D) < 50 * tol<T>());
  CHECK(rel_diff(got.cov, want.cov) < 50 * tol<T>());
  CHECK(rel_diff(got.remaining, want.remaining) < 50 * tol<T>());
  CHECK(rel_diff(got.evaluated, want.evaluated) < 50 * tol<T>());
}

/// Layer options of case k: the reference rule; the improved one; freeze (freeze_iter 1, so
/// steps 2 and 3 are frozen) with the running covariance; the reference rule again (with a
/// failing batch below: throw_error).
inline layer_options layer_case(int k) {
  layer_options o = k == 1 || k == 2 ? layer_options::improved() : layer_options{};
  if (k == 2) {
    o.freeze = true;
    o.freeze_iter = 1;
  }
  return o;
}

/// The trajectories of the layer checks, case k of layer_case (options), 4 batches each; batch 1
/// is all NaN in cases 1 and 3 (a kept step, a throwing one). The views point into the batches.
template <class T>
struct image_batches {
  std::vector<image_case<T>> batches;

  std::vector<image_view<const T>> xs() const {
    std::vector<image_view<const T>> v;
    for (const auto& b : batches) v.push_back(b.cpu());
    return v;
  }
  std::size_t span() const {
    std::size_t n = 0;
    for (const auto& b : batches) n = std::max(n, b.data.size());
    return n;
  }
};

template <class T>
struct conv_trajectory : image_batches<T> {
  conv_deconv_config cfg;
  block_plan plan;
  index_t cout;
  std::vector<T> w, bias;

  image_view<const T> weight() const {
    return nchw(w.data(), cout, plan.channels / plan.groups, cfg.geometry.kernel_h, cfg.geometry.kernel_w);
  }
};
template <class T>
conv_trajectory<T> random_conv_trajectory(rng_t& rng, int k) {
  conv_trajectory<T> t;
  t.cfg.layout = k % 2 ? block_layout::interleaved_shared : block_layout::grouped;
  do t.cfg.geometry = random_geometry(rng);
  while (t.cfg.geometry.out_h(6) < 1 || t.cfg.geometry.out_w(6) < 1);
  const index_t C = 2 * uniform(rng, 1, 3);
  t.plan = random_plan(rng, t.cfg.layout, C, t.cfg.geometry.kernel_area());
  t.cfg.groups = t.plan.groups;
  t.cfg.block = t.plan.block;
  t.cfg.sampling_stride = uniform(rng, 1, 2);
  t.cfg.eps = 1e-2;
  for (int b = 0; b < 4; ++b) t.batches.push_back(random_image<T>(rng, 2, C, uniform(rng, 6, 10), uniform(rng, 6, 10), 1.0));
  if (k == 1 || k == 3) std::fill(t.batches[1].data.begin(), t.batches[1].data.end(), std::numeric_limits<T>::quiet_NaN());
  t.cout = t.plan.groups * uniform(rng, 1, 2);
  t.w = random_vector<T>(rng, std::size_t(t.cout * (C / t.plan.groups) * t.cfg.geometry.kernel_area()));
  t.bias = random_vector<T>(rng, std::size_t(t.cout));
  return t;
}

template <class T>
struct linear_trajectory {
  linear_deconv_config cfg;
  index_t rows = 64, Fin, cout;
  std::vector<std::vector<T>> batches;
  std::vector<T> w, bias;

  std::vector<matrix_view<const T>> xs() const {
    std::vector<matrix_view<const T>> v;
    for (const auto& b : batches) v.push_back(row_major(b.data(), rows, Fin));
    return v;
  }
  std::size_t span() const { return std::size_t(rows * Fin); }
  matrix_view<const T> weight() const { return row_major(w.data(), cout, Fin); }
};
template <class T>
linear_trajectory<T> random_linear_trajectory(rng_t& rng, int k) {
  linear_trajectory<T> t;
  t.cfg.layout = k % 2 ? block_layout::contiguous_shared : block_layout::independent;
  t.Fin = uniform(rng, 2, 24);
  t.cout = uniform(rng, 1, 4);
  t.cfg.block = random_plan(rng, t.cfg.layout, t.Fin, 1).block;
  t.cfg.eps = 1e-2;
  for (int b = 0; b < 4; ++b) t.batches.push_back(random_vector<T>(rng, std::size_t(t.rows * t.Fin), 0.5));
  if (k == 1 || k == 3) std::fill(t.batches[1].begin(), t.batches[1].end(), std::numeric_limits<T>::quiet_NaN());
  t.w = random_vector<T>(rng, std::size_t(t.cout * t.Fin));
  t.bias = random_vector<T>(rng, std::size_t(t.cout));
  return t;
}

/// The channel layer's (no freeze: not for case 2); C is not a multiple of the block in cases 0
/// and 1; the reference options except in case 1.
template <class T>
struct channel_trajectory : image_batches<T> {
  channel_deconv_config cfg;
  layer_options options;
};
template <class T>
channel_trajectory<T> random_channel_trajectory(rng_t& rng, int k) {
  channel_trajectory<T> t;
  t.cfg.block = uniform(rng, 2, 4);
  t.cfg.uncentred_covariance = k != 1;
  const index_t C = t.cfg.block * uniform(rng, 1, 3) + (k < 2 ? uniform(rng, 1, t.cfg.block - 1) : 0);
  t.options = k == 1 ? layer_case(k) : channel_deconv_layer<T>::reference_options();
  for (int b = 0; b < 4; ++b) t.batches.push_back(random_image<T>(rng, 2, C, uniform(rng, 3, 8), uniform(rng, 3, 8), 0.5));
  if (k == 1 || k == 3) std::fill(t.batches[1].data.begin(), t.batches[1].data.end(), std::numeric_limits<T>::quiet_NaN());
  return t;
}

/// The three layers' trajectories over 4 batches against the CPU layer on seq: every failure
/// policy a cuda_policy takes, freeze, the running covariance, trace-relative eps, first-step
/// copy; batch 1 is all NaN in cases 1 and 3 (a kept step, a throwing step).
template <class B, class T>
void check_layers(rng_t& rng) {
  using oracle_backend = cpu_backend<sequential_policy>;
  for (int k = 0; k < 4; ++k) {
    CAPTURE(k);
    const layer_options o = layer_case(k);
    {
      const auto t = random_conv_trajectory<T>(rng, k);
      compare_traces(B::template conv_layer<T>(t.xs(), t.span(), t.weight(), t.bias, t.cfg, o),
                     oracle_backend::template conv_layer<T>(t.xs(), t.span(), t.weight(), t.bias, t.cfg, o));
    }
    {
      const auto t = random_linear_trajectory<T>(rng, k);
      compare_traces(B::template linear_layer<T>(t.xs(), t.span(), t.weight(), t.bias, t.cfg, o),
                     oracle_backend::template linear_layer<T>(t.xs(), t.span(), t.weight(), t.bias, t.cfg, o));
    }
    if (k != 2) {
      const auto t = random_channel_trajectory<T>(rng, k);
      compare_traces(B::template channel_layer<T>(t.xs(), t.span(), t.cfg, t.options),
                     oracle_backend::template channel_layer<T>(t.xs(), t.span(), t.cfg, t.options));
    }
  }
}

/// The layers' backward after every step of check_layers' trajectories (computed, frozen, kept
/// and throwing steps) against the CPU layers on seq, which take the step's diagnostic(); a GPU
/// reads the step's outcome on the device instead. Conv, linear and channel layers, full mode, and
/// constants mode in case 0; within 1e-4 (float) and 1e-10 (double) of the largest entries, the
/// same reports; the same steps throw.
template <class B, class T>
void check_layer_backward(rng_t& rng) {
  using oracle_backend = cpu_backend<sequential_policy>;
  const double bound = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  const auto compare = [&](const std::vector<host_step_vjp<T>>& got, const std::vector<host_step_vjp<T>>& want) {
    REQUIRE(got.size() == want.size());
    for (std::size_t k = 0; k < got.size(); ++k) {
      CAPTURE(k);
      compare_vjps(got[k], want[k], bound);
    }
  };
  for (int k = 0; k < 4; ++k) {
    CAPTURE(k);
    const layer_options o = layer_case(k);
    for (const bool constants : {false, true}) {
      if (constants && k != 0) continue;
      CAPTURE(constants);
      {
        const auto t = random_conv_trajectory<T>(rng, k);
        const std::vector<T> gw = random_vector<T>(rng, t.w.size()), gb = random_vector<T>(rng, t.bias.size());
        compare(B::template conv_layer_backward<T>(t.xs(), t.span(), t.weight(), t.bias, t.cfg, o, gw, gb, constants),
                oracle_backend::template conv_layer_backward<T>(t.xs(), t.span(), t.weight(), t.bias, t.cfg, o, gw, gb,
                                                                constants));
      }
      {
        const auto t = random_linear_trajectory<T>(rng, k);
        const std::vector<T> gw = random_vector<T>(rng, t.w.size()), gb = random_vector<T>(rng, t.bias.size());
        compare(B::template linear_layer_backward<T>(t.xs(), t.span(), t.weight(), t.bias, t.cfg, o, gw, gb, constants),
                oracle_backend::template linear_layer_backward<T>(t.xs(), t.span(), t.weight(), t.bias, t.cfg, o, gw, gb,
                                                                  constants));
      }
      if (k != 2) {
        const auto t = random_channel_trajectory<T>(rng, k);
        std::vector<std::vector<T>> dys;
        for (const auto& b : t.batches) dys.push_back(random_vector<T>(rng, b.data.size()));
        compare(B::template channel_layer_backward<T>(t.xs(), t.span(), t.cfg, t.options, dys, constants),
                oracle_backend::template channel_layer_backward<T>(t.xs(), t.span(), t.cfg, t.options, dys, constants));
      }
    }
  }
}

}  // namespace netdeconv::checks
