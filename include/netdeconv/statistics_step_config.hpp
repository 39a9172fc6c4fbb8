// SPDX-License-Identifier: MIT
#pragma once
// The statistics step's vocabulary, shared by every backend (Eigen-free): the conv and linear
// configurations (defaults: the reference layers'), the block plan each implies, the views that
// the writing form of conv_statistics_step / linear_statistics_step fills, and their checks.
//
//   auto plan = netdeconv::conv_statistics_plan(C, cfg);       // S = plan.count(), F = plan.features()
//   netdeconv::statistics_step_outputs<float, 4> out{mean, D, w_out, b_out, reports};
//   // mean (S, F), D (S, F, F), w_out of W's shape, b_out (Cout), reports (S): caller memory

#include "blocks.hpp"
#include "checks.hpp"
#include "error.hpp"
#include "geometry.hpp"
#include "isqrt_options.hpp"
#include "statistics_view.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

/// Conv layer configuration; defaults are those of the reference conv layer.
struct conv_deconv_config {
  conv_geometry geometry{};
  index_t groups = 1;
  /// interleaved_shared (reference, groups == 1), grouped (reference, groups > 1) or independent.
  block_layout layout = block_layout::interleaved_shared;
  index_t block = 64;
  index_t sampling_stride = 3;
  double eps = 1e-5;
  isqrt_options isqrt = isqrt_options::fixed(5);
};

/// Linear layer configuration; defaults are those of the reference linear layer.
struct linear_deconv_config {
  /// contiguous_shared (reference) or independent.
  block_layout layout = block_layout::contiguous_shared;
  index_t block = 512;
  double eps = 1e-5;
  isqrt_options isqrt = isqrt_options::fixed(5);
};

/// The block plan of a conv layer with `channels` input channels (make_block_plan's adjustment rule).
inline block_plan conv_statistics_plan(index_t channels, const conv_deconv_config& config) {
  constexpr const char* fn = "conv_statistics_plan";
  NETDECONV_REQUIRE(config.groups >= 1, fn, "groups must be >= 1, got ", config.groups);
  detail::check_geometry(fn, config.geometry);
  return make_block_plan(config.layout, channels, config.geometry.kernel_area(), config.block, config.groups);
}

/// The block plan of a linear layer with `features` inputs.
inline block_plan linear_statistics_plan(index_t features, const linear_deconv_config& config) {
  return make_block_plan(config.layout, features, 1, config.block);
}

/// Where the writing form of a statistics step puts its results (caller memory, any strides):
/// mu (S, F), D (S, F, F), W' (the weight's shape: R = 4 for conv, 2 for linear), b' (Cout) and one
/// report per statistic (S).
template <class T, int R>
struct statistics_step_outputs {
  matrix_view<T> mean;
  tensor_view<T, 3> D;
  tensor_view<T, R> weight;
  vector_view<T> bias;
  vector_view<isqrt_report> reports;
};

/// What a statistics step's backward writes, in caller views: dL/dW (the weight's shape), dL/db
/// (Cout; empty when the step had no bias), dL/dx_stats (x's shape; overwritten) and one
/// inverse-square-root report per statistic.
template <class T, int R>
struct statistics_step_gradients {
  tensor_view<T, R> weight;
  vector_view<T> bias;
  tensor_view<T, R> x;
  vector_view<isqrt_report> reports;
};

namespace detail {

/// The configuration's eps and isqrt options.
template <class Config>
void check_step_config(const char* fn, const Config& config) {
  NETDECONV_REQUIRE(config.eps >= 0, fn, "eps must be >= 0, got ", config.eps);
  check_isqrt_options(fn, config.isqrt);
}

/// Conv step inputs: x (N, C, H, W), weight and bias for the plan, the weight's kernel equal to the
/// geometry's. Returns the plan.
template <class T>
block_plan check_conv_step(const char* fn, const image_view<const T>& x, const image_view<const T>& weight,
                           const vector_view<const T>& bias, const conv_deconv_config& config) {
  check_view(fn, "x", x);
  check_step_config(fn, config);
  const block_plan plan = conv_statistics_plan(x.shape[1], config);
  check_weight(fn, plan, weight, bias);
  NETDECONV_REQUIRE(weight.shape[2] == config.geometry.kernel_h && weight.shape[3] == config.geometry.kernel_w, fn,
                    "weight kernel ", weight.shape[2], "x", weight.shape[3], " differs from the geometry's ",
                    config.geometry.kernel_h, "x", config.geometry.kernel_w);
  return plan;
}

/// Linear step inputs: x (rows, Fin), weight (Cout, Fin) and bias. Returns the plan.
template <class T>
block_plan check_linear_step(const char* fn, const matrix_view<const T>& x, const matrix_view<const T>& weight,
                             const vector_view<const T>& bias, const linear_deconv_config& config) {
  check_view(fn, "x", x);
  check_view(fn, "weight", weight);
  check_step_config(fn, config);
  NETDECONV_REQUIRE(weight.shape[1] == x.shape[1], fn, "weight has Fin=", weight.shape[1], " but x has ", x.shape[1],
                    " features");
  const block_plan plan = linear_statistics_plan(x.shape[1], config);
  check_weight(fn, plan, as_conv_weight(weight), bias);
  return plan;
}

/// The outputs of a step with `plan` for x, weight (as a conv weight) and bias: the shapes above,
/// no element sharing memory, no output overlapping an input or another output (W' may not be W).
template <class T, class X, int RX>
void check_step_outputs(const char* fn, const block_plan& plan, const tensor_view<const X, RX>& x,
                        const image_view<const T>& weight, const vector_view<const T>& bias,
                        const statistics_step_outputs<T, 4>& out) {
  const image_view<T>& weight_out = out.weight;
  const block_statistics_view<const T> stats{plan, out.mean, out.D};
  check_statistics_view(fn, stats);
  check_output_view(fn, "mean", out.mean);
  check_output_view(fn, "D", out.D);
  check_output_view(fn, "reports", out.reports);
  NETDECONV_REQUIRE(out.reports.shape[0] == plan.count(), fn, "reports has ", out.reports.shape[0], " entries, the plan has ",
                    plan.count(), " statistics");
  check_fold(fn, stats, weight, bias, weight_out, out.bias, false);
  check_disjoint(fn, "D", out.D, "mean", out.mean);
  const auto inputs_apart = [&](const char* name, const auto& v) {
    check_disjoint(fn, name, v, "x", x);
    check_disjoint(fn, name, v, "weight", weight);
    check_disjoint(fn, name, v, "bias", bias);
  };
  inputs_apart("mean", out.mean);
  inputs_apart("D", out.D);
  inputs_apart("reports", out.reports);
  check_disjoint(fn, "weight_out", weight_out, "x", x);
  check_disjoint(fn, "bias_out", out.bias, "x", x);
  check_disjoint(fn, "reports", out.reports, "mean", out.mean);
  check_disjoint(fn, "reports", out.reports, "D", out.D);
  check_disjoint(fn, "reports", out.reports, "weight_out", weight_out);
  check_disjoint(fn, "reports", out.reports, "bias_out", out.bias);
}

/// The linear outputs as conv outputs (W' (Cout, Fin) as (Cout, Fin, 1, 1)).
template <class T>
statistics_step_outputs<T, 4> as_conv_outputs(const statistics_step_outputs<T, 2>& out) {
  return {out.mean, out.D, as_conv_weight(out.weight), out.bias, out.reports};
}

/// Throws unless output o overlaps none of a weight-side backward's inputs.
template <class O, class T>
void inputs_apart_of_fold_vjp(const char* fn, const char* name, const O& o, const block_statistics_view<const T>& stats,
                              const image_view<const T>& weight, const vector_view<const T>& bias,
                              const image_view<const T>& grad_weight, const vector_view<const T>& grad_bias) {
  check_disjoint(fn, name, o, "weight", weight);
  check_disjoint(fn, name, o, "bias", bias);
  check_disjoint(fn, name, o, "grad_weight", grad_weight);
  check_disjoint(fn, name, o, "grad_bias", grad_bias);
  check_disjoint(fn, name, o, "mean", stats.mean);
  check_disjoint(fn, name, o, "D", stats.D);
}

/// fold_vjp's arguments: valid statistics for the weight and bias, upstream gradients of W' and
/// b''s shapes, outputs of W's and b's shapes (out_bias empty when there is no bias) that overlap
/// no input.
template <class T>
void check_fold_vjp(const char* fn, const block_statistics_view<const T>& stats, const image_view<const T>& weight,
                    const vector_view<const T>& bias, const image_view<const T>& grad_weight,
                    const vector_view<const T>& grad_bias, const image_view<T>& out_weight, const vector_view<T>& out_bias) {
  check_statistics_view(fn, stats);
  check_weight(fn, stats.plan, weight, bias);
  check_view(fn, "grad_weight", grad_weight);
  check_view(fn, "grad_bias", grad_bias);
  NETDECONV_REQUIRE(grad_weight.shape == weight.shape, fn, "grad_weight must have the weight's shape");
  NETDECONV_REQUIRE(grad_bias.shape[0] == weight.shape[0] && !grad_bias.empty(), fn, "grad_bias must have Cout = ",
                    weight.shape[0], " entries, got ", grad_bias.empty() ? 0 : grad_bias.shape[0]);
  check_output_view(fn, "out.weight", out_weight);
  NETDECONV_REQUIRE(out_weight.shape == weight.shape, fn, "out.weight must have the weight's shape");
  if (bias.empty()) {
    NETDECONV_REQUIRE(out_bias.empty(), fn, "out.bias must be empty: the step has no bias");
  } else {
    check_output_view(fn, "out.bias", out_bias);
    NETDECONV_REQUIRE(out_bias.shape[0] == weight.shape[0], fn, "out.bias must have Cout = ", weight.shape[0], " entries");
  }
  inputs_apart_of_fold_vjp(fn, "out.weight", out_weight, stats, weight, bias, grad_weight, grad_bias);
  inputs_apart_of_fold_vjp(fn, "out.bias", out_bias, stats, weight, bias, grad_weight, grad_bias);
}

/// The checks every statistics-step backward shares: check_fold_vjp with statistics of the step's
/// plan, and dL/dx_stats of x's shape and the reports, overlapping no input or other output.
template <class T, int R>
void check_step_vjp(const char* fn, const block_plan& plan, const tensor_view<const T, R>& x, const image_view<const T>& weight,
                    const vector_view<const T>& bias, const block_statistics_view<const T>& stats,
                    const image_view<const T>& grad_weight, const vector_view<const T>& grad_bias,
                    const statistics_step_gradients<T, R>& out, const image_view<T>& out_weight) {
  check_statistics_view(fn, stats);
  const block_plan& q = stats.plan;
  NETDECONV_REQUIRE(q.layout == plan.layout && q.channels == plan.channels && q.kernel_area == plan.kernel_area &&
                        q.groups == plan.groups && q.block == plan.block,
                    fn, "the statistics' plan differs from the step's (", q.count(), " statistics of ", q.features(),
                    " features; the step has ", plan.count(), " of ", plan.features(), ")");
  check_fold_vjp(fn, stats, weight, bias, grad_weight, grad_bias, out_weight, out.bias);
  check_output_view(fn, "out.x", out.x);
  check_output_view(fn, "out.reports", out.reports);
  NETDECONV_REQUIRE(out.x.shape == x.shape, fn, "out.x must have x's shape");
  NETDECONV_REQUIRE(out.reports.shape[0] == plan.count(), fn, "out.reports has ", out.reports.shape[0], " entries for ",
                    plan.count(), " statistics");
  check_disjoint(fn, "out.weight", out_weight, "x", x);
  check_disjoint(fn, "out.bias", out.bias, "x", x);
  inputs_apart_of_fold_vjp(fn, "out.x", out.x, stats, weight, bias, grad_weight, grad_bias);
  inputs_apart_of_fold_vjp(fn, "out.reports", out.reports, stats, weight, bias, grad_weight, grad_bias);
  check_disjoint(fn, "out.x", out.x, "x", x);
  check_disjoint(fn, "out.reports", out.reports, "x", x);
  check_disjoint(fn, "out.x", out.x, "out.weight", out_weight);
  check_disjoint(fn, "out.x", out.x, "out.bias", out.bias);
}

/// fold_vjp's views: check_fold_vjp's, and grad_D (S, F, F), grad_mean (S, F) outputs apart from
/// every input and output.
template <class T>
void check_fold_vjp_outputs(const char* fn, const block_statistics_view<const T>& stats, const image_view<const T>& weight,
                            const vector_view<const T>& bias, const image_view<const T>& grad_weight,
                            const vector_view<const T>& grad_bias, const image_view<T>& out_weight,
                            const vector_view<T>& out_bias, const tensor_view<T, 3>& grad_D, const matrix_view<T>& grad_mean) {
  check_fold_vjp(fn, stats, weight, bias, grad_weight, grad_bias, out_weight, out_bias);
  const index_t S = stats.plan.count(), F = stats.plan.features();
  check_output_view(fn, "grad_D", grad_D);
  check_output_view(fn, "grad_mean", grad_mean);
  NETDECONV_REQUIRE(grad_D.shape == (index_array<3>{S, F, F}) && grad_mean.shape == (index_array<2>{S, F}), fn,
                    "grad_D must be (", S, ", ", F, ", ", F, ") and grad_mean (", S, ", ", F, ")");
  inputs_apart_of_fold_vjp(fn, "grad_D", grad_D, stats, weight, bias, grad_weight, grad_bias);
  inputs_apart_of_fold_vjp(fn, "grad_mean", grad_mean, stats, weight, bias, grad_weight, grad_bias);
  check_disjoint(fn, "grad_D", grad_D, "grad_mean", grad_mean);
  check_disjoint(fn, "grad_D", grad_D, "out.weight", out_weight);
  check_disjoint(fn, "grad_D", grad_D, "out.bias", out_bias);
  check_disjoint(fn, "grad_mean", grad_mean, "out.weight", out_weight);
  check_disjoint(fn, "grad_mean", grad_mean, "out.bias", out_bias);
}

/// The covariance backward's views: moments of the plan's shape, dcov (S, F, F) and dmean (S, F),
/// dx an output of x's shape that overlaps none of them. (The CPU also reads the moments: counts
/// >= 1 and finite values.)
template <class T, class X, int R>
void check_covariance_vjp(const char* fn, const block_plan& plan, const tensor_view<const X, R>& x,
                          const moments_view<const double>& moments, const tensor_view<const T, 3>& dcov,
                          const matrix_view<const T>& dmean, const tensor_view<T, R>& dx) {
  check_moments_view(fn, "moments", moments, plan);
  const index_t S = plan.count(), F = plan.features();
  check_view(fn, "dcov", dcov);
  check_view(fn, "dmean", dmean);
  NETDECONV_REQUIRE(dcov.shape == (index_array<3>{S, F, F}) && dmean.shape == (index_array<2>{S, F}), fn,
                    "dcov must be (", S, ", ", F, ", ", F, ") and dmean (", S, ", ", F, ")");
  check_output_view(fn, "dx", dx);
  NETDECONV_REQUIRE(dx.shape == x.shape, fn, "dx must have x's shape");
  check_disjoint(fn, "dx", dx, "x", x);
  check_disjoint(fn, "dx", dx, "dcov", dcov);
  check_disjoint(fn, "dx", dx, "dmean", dmean);
  check_disjoint(fn, "dx", dx, "the moments' mean", moments.mean);
  check_disjoint(fn, "dx", dx, "the moments' scatter", moments.scatter);
  check_disjoint(fn, "dx", dx, "the moments' count", moments.count);
}

}  // namespace detail
}  // namespace netdeconv
