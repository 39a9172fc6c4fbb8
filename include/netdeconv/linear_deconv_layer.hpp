// SPDX-License-Identifier: MIT
#pragma once
// Linear deconvolution layer (docs/method.md §7): all rows of the (rows, Fin) input, contiguous blocks
// (shared as in the reference, or independent), no sampling. Training rule: layer_core.hpp (CPU:
// layer_state.hpp, CUDA: cuda/layer_state.cuh).
//
//   netdeconv::linear_deconv_layer<float> layer(/*in_features*/ 64, netdeconv::linear_deconv_config{});
//   auto wb = layer.train_step(netdeconv::par, x, W, b);  // then y = x wb.weight^T + wb.bias
//
// x: (rows, Fin); W: (Cout, Fin); b: (Cout) or empty.

#include "checks.hpp"
#include "layer_core.hpp"
#include "matrix_rows.hpp"
#include "statistics_step_config.hpp"
#if !defined(__CUDACC__)
#include "layer_state.hpp"  // the CPU policies' step; nvcc translation units take cuda/layer_state.cuh
#endif

namespace netdeconv {

template <class T>
class linear_deconv_layer : public detail::folding_layer<T, layer_kind::linear> {
  using base = detail::folding_layer<T, layer_kind::linear>;

 public:
  linear_deconv_layer(index_t in_features, const linear_deconv_config& config, const layer_options& options = {})
      : base(linear_statistics_plan(in_features, config), conv_geometry{}, config.eps, 1, config.isqrt,
             options) {}

  template <class Policy>
  layer_step<T> train_step(const Policy& policy, matrix_view<const T> x, matrix_view<const T> weight,
                           vector_view<const T> bias) {
    check_input("train_step", x, weight, bias);
    return detail::layer_backend<Policy>::step(policy, this->core_, matrix_rows<T>(x), detail::as_conv_weight(weight),
                                               bias);
  }

  /// Writing form (W' (Cout, Fin) in out.weight): as conv_deconv_layer's.
  template <class Policy>
  void train_step(const Policy& policy, matrix_view<const T> x, matrix_view<const T> weight, vector_view<const T> bias,
                  const statistics_step_outputs<T, 2>& out) {
    check_input("train_step", x, weight, bias);
    const auto conv_out = detail::as_conv_outputs(out);
    detail::check_step_outputs("train_step", this->plan(), x, detail::as_conv_weight(weight), bias, conv_out);
    detail::layer_backend<Policy>::step(policy, this->core_, matrix_rows<T>(x), detail::as_conv_weight(weight), bias,
                                        conv_out);
  }

  template <class Policy>
  folded_weights<T> eval(const Policy& policy, matrix_view<const T> weight, vector_view<const T> bias) const {
    check("eval", weight, bias);
    return detail::layer_backend<Policy>::eval(policy, this->core_, detail::as_conv_weight(weight), bias);
  }

  template <class Policy>
  void export_weights(const Policy& policy, matrix_view<const T> weight, vector_view<const T> bias,
                      matrix_view<T> weight_out, vector_view<T> bias_out) const {
    check("export_weights", weight, bias);
    detail::check_fold_outputs("export_weights", detail::as_conv_weight(weight), bias, detail::as_conv_weight(weight_out), bias_out, true);
    detail::layer_backend<Policy>::export_weights(policy, this->core_, detail::as_conv_weight(weight), bias,
                                                  detail::as_conv_weight(weight_out), bias_out);
  }

  /// Backward of a training step (statistics_step_vjp.hpp): x, weight and bias as in the step;
  /// stats the statistics it folded (its out.mean and out.D) and step its diagnostic(), taken
  /// right after it; grad_weight = dL/dW', grad_bias = dL/db'. Writes dL/dW, dL/db and
  /// dL/dx_stats (through mu and Cov, with eps as the step used it) into out. A frozen or kept
  /// step, or mode constants, treats mu and D as constants (dL/dx_stats = 0), as the reference's
  /// frozen steps do. The layer's state does not change. With a cuda_policy, `step` is not read:
  /// the outcome of the layer's latest step is (cuda/layer_state.cuh).
  template <class Policy>
  void backward(const Policy& policy, matrix_view<const T> x, matrix_view<const T> weight, vector_view<const T> bias,
                const block_statistics_view<const T>& stats, const step_diagnostic& step, matrix_view<const T> grad_weight,
                vector_view<const T> grad_bias, const statistics_step_gradients<T, 2>& out,
                statistics_gradient mode = statistics_gradient::full) const {
    check_input("backward", x, weight, bias);
    detail::check_step_vjp("backward", this->plan(), x, detail::as_conv_weight(weight), bias, stats,
                           detail::as_conv_weight(grad_weight), grad_bias, out, detail::as_conv_weight(out.weight));
    detail::layer_backend<Policy>::linear_backward(policy, this->core_, x, weight, stats, step, mode, grad_weight, grad_bias,
                                                   out);
  }

 private:
  void check_input(const char* fn, matrix_view<const T> x, matrix_view<const T> weight, vector_view<const T> bias) const {
    check(fn, weight, bias);
    detail::check_view(fn, "x", x);
    NETDECONV_REQUIRE(x.shape[1] == this->plan().channels, fn, "x has ", x.shape[1], " features, the layer has ",
                      this->plan().channels);
  }
  void check(const char* fn, matrix_view<const T> weight, vector_view<const T> bias) const {
    detail::check_weight(fn, this->plan(), detail::as_conv_weight(weight), bias);
  }
};

}  // namespace netdeconv
