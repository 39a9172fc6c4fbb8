// SPDX-License-Identifier: MIT
#pragma once
// Conv deconvolution layer (docs/method.md §7): the state object a framework keeps next to its conv weights.
// Weights are passed in as views, never owned; the training rule is in layer_core.hpp, its CPU form in
// layer_state.hpp and its CUDA form in cuda/layer_state.cuh (this header is Eigen-free under nvcc).
//
//   netdeconv::conv_deconv_config cfg;                 // reference defaults
//   cfg.geometry = netdeconv::conv_geometry::square(3, 1, 1);
//   netdeconv::conv_deconv_layer<float> layer(/*in_channels*/ 64, cfg);            // compatible mode
//   auto wb = layer.train_step(netdeconv::par, x, W, b);  // training forward: conv(x, wb.weight, wb.bias)
//   auto ev = layer.eval(netdeconv::par, W, b);           // evaluation / export: an ordinary conv
//   std::vector<std::uint8_t> ckpt = layer.state();  layer.load_state(ckpt);
//
// x: (N, C, H, W) any layout; W: (Cout, C/groups, kh, kw); b: (Cout) or empty.

#include "checks.hpp"
#include "geometry.hpp"
#include "layer_core.hpp"
#include "statistics_step_config.hpp"
#if !defined(__CUDACC__)
#include "layer_state.hpp"  // the CPU policies' step; nvcc translation units take cuda/layer_state.cuh
#endif

namespace netdeconv {

template <class T>
class conv_deconv_layer : public detail::folding_layer<T, layer_kind::conv> {
  using base = detail::folding_layer<T, layer_kind::conv>;

 public:
  conv_deconv_layer(index_t in_channels, const conv_deconv_config& config, const layer_options& options = {})
      : base(conv_statistics_plan(in_channels, config), config.geometry, config.eps,
             config.sampling_stride, config.isqrt, options) {
    detail::check_geometry("conv_deconv_layer", config.geometry);
    NETDECONV_REQUIRE(config.sampling_stride >= 1, "conv_deconv_layer", "sampling_stride must be >= 1, got ",
                      config.sampling_stride);
  }

  /// Training step: statistics of x (or the running ones when frozen or kept), state update, W' and b'
  /// with the statistics they fold.
  template <class Policy>
  layer_step<T> train_step(const Policy& policy, image_view<const T> x, image_view<const T> weight,
                           vector_view<const T> bias) {
    check_input("train_step", x, weight, bias);
    return detail::layer_backend<Policy>::step(policy, this->core_, sampler(x), weight, bias);
  }

  /// Writing form: the statistics folded (mean, D), this step's reports and W', b' into caller
  /// views (statistics_step_outputs; a frozen step writes reports of 0 iterations, residual NaN,
  /// ok). Every view is checked before the state changes.
  template <class Policy>
  void train_step(const Policy& policy, image_view<const T> x, image_view<const T> weight, vector_view<const T> bias,
                  const statistics_step_outputs<T, 4>& out) {
    check_input("train_step", x, weight, bias);
    detail::check_step_outputs("train_step", this->plan(), x, weight, bias, out);
    detail::layer_backend<Policy>::step(policy, this->core_, sampler(x), weight, bias, out);
  }

  /// Evaluation: W' and b' from the running statistics (an ordinary conv).
  template <class Policy>
  folded_weights<T> eval(const Policy& policy, image_view<const T> weight, vector_view<const T> bias) const {
    check("eval", weight, bias);
    return detail::layer_backend<Policy>::eval(policy, this->core_, weight, bias);
  }

  /// Export for inference: writes eval()'s W' and b' into the caller's tensors.
  template <class Policy>
  void export_weights(const Policy& policy, image_view<const T> weight, vector_view<const T> bias,
                      image_view<T> weight_out, vector_view<T> bias_out) const {
    check("export_weights", weight, bias);
    detail::check_fold_outputs("export_weights", weight, bias, weight_out, bias_out, true);
    detail::layer_backend<Policy>::export_weights(policy, this->core_, weight, bias, weight_out, bias_out);
  }

  /// Backward of a training step (statistics_step_vjp.hpp): x, weight and bias as in the step;
  /// stats the statistics it folded (its out.mean and out.D) and step its diagnostic(), taken
  /// right after it; grad_weight = dL/dW', grad_bias = dL/db'. Writes dL/dW, dL/db and
  /// dL/dx_stats (through mu and Cov, with eps as the step used it) into out. A frozen or kept
  /// step, or mode constants, treats mu and D as constants (dL/dx_stats = 0), as the reference's
  /// frozen steps do. The layer's state does not change. With a cuda_policy, `step` is not read:
  /// the outcome of the layer's latest step is (cuda/layer_state.cuh).
  template <class Policy>
  void backward(const Policy& policy, image_view<const T> x, image_view<const T> weight, vector_view<const T> bias,
                const block_statistics_view<const T>& stats, const step_diagnostic& step, image_view<const T> grad_weight,
                vector_view<const T> grad_bias, const statistics_step_gradients<T, 4>& out,
                statistics_gradient mode = statistics_gradient::full) const {
    check_input("backward", x, weight, bias);
    detail::check_step_vjp("backward", this->plan(), x, weight, bias, stats, grad_weight, grad_bias, out, out.weight);
    detail::layer_backend<Policy>::conv_backward(policy, this->core_, x, weight, this->geometry_, this->sampling_stride_,
                                                 stats, step, mode, grad_weight, grad_bias, out);
  }

 private:
  patch_sampler<T> sampler(const image_view<const T>& x) const {
    return patch_sampler<T>(x, this->geometry_, this->sampling_stride_);
  }
  void check_input(const char* fn, image_view<const T> x, image_view<const T> weight, vector_view<const T> bias) const {
    check(fn, weight, bias);
    detail::check_view(fn, "x", x);
    NETDECONV_REQUIRE(x.shape[1] == this->plan().channels, fn, "x has C=", x.shape[1], ", the layer has ",
                      this->plan().channels);
  }
  void check(const char* fn, image_view<const T> weight, vector_view<const T> bias) const {
    detail::check_weight(fn, this->plan(), weight, bias);
    const conv_geometry& g = this->geometry_;
    NETDECONV_REQUIRE(weight.shape[2] == g.kernel_h && weight.shape[3] == g.kernel_w, fn, "weight kernel ",
                      weight.shape[2], "x", weight.shape[3], " differs from the layer's ", g.kernel_h, "x", g.kernel_w);
  }
};

}  // namespace netdeconv
