// SPDX-License-Identifier: MIT
#pragma once
// Channel-only deconvolution (docs/method.md §7, last bullet): whitens the channels of a feature map, e.g.
// the last one before a classifier. It rewrites the data (there are no weights to fold into).
//
// With c = floor(C/B)*B, the first c channels form B feature rows: row f is channels
// [f*c/B, (f+1)*c/B) concatenated, each in (n, y, x) order, so one "sample" is the B values at the
// same position of channel f*c/B + cc for f = 0..B-1. Statistics use every S^2-th sample when
// H >= S and W >= S (else all). Output, for channel f*c/B + cc:
//   y = sum_g D[f, g] (x[channel g*c/B + cc] - mu[g])
// The remaining C - c channels are standardised with one scalar mean m and one unbiased variance v
// of their sampled values (per image, every S^2-th value of the flattened (C-c, H, W) block):
//   y = (x - m) / sqrt(v + eps)
// Reference-compatible mode (the defaults, reference_options()): the B x B matrix is the
// UNcentred second moment x_s x_s^T / n_s + eps I (a quirk of the reference; set
// uncentred_covariance = false for the centred covariance), and the first step copies its
// statistics into the running ones. Training rule and failure policies: layer_core.hpp; the
// steps: layer_state.hpp (CPU), cuda/layer_state.cuh (CUDA) (freeze is refused: the reference
// channel layer has none). A batch whose remaining variance plus
// eps is not positive (a dead remaining channel with eps = 0) is a failed step.
//
//   netdeconv::channel_deconv_layer<float> layer(/*C*/ 512, netdeconv::channel_deconv_config{/*block*/ 16});
//   layer.train_step(netdeconv::par, x, y);    // x, y: (N, C, H, W) views, any layout
//   layer.eval(netdeconv::par, x, y);

#include <cmath>
#include <cstdint>
#include <vector>

#include "blocks.hpp"
#include "channel_samples.hpp"
#include "checkpoint.hpp"
#include "checks.hpp"
#include "layer_core.hpp"
#include "tensor_view.hpp"
#if !defined(__CUDACC__)
#include "layer_state.hpp"  // the CPU policies' step; nvcc translation units take cuda/layer_state.cuh
#endif

namespace netdeconv {

template <class T>
class channel_deconv_layer {
 public:
  /// The reference channel layer's options: first-step copy, momentum 0.1.
  static layer_options reference_options() {
    layer_options o;
    o.first_step_copy = true;
    return o;
  }

  channel_deconv_layer(index_t channels, const channel_deconv_config& config,
                       const layer_options& options = reference_options())
      : config_(config),
        spec_{channels, checked_block(channels, config.block) * config.block, config.block, config.sampling_stride,
              config.eps},
        core_(make_block_plan(block_layout::independent, config.block, 1, config.block), config.eps, config.isqrt,
              options, config.uncentred_covariance, spec_.whitened < channels ? 2 : 0) {
    NETDECONV_REQUIRE(config.sampling_stride >= 1, "channel_deconv_layer", "sampling_stride must be >= 1, got ",
                      config.sampling_stride);
    NETDECONV_REQUIRE(!options.freeze, "channel_deconv_layer",
                      "the channel layer has no freeze (its remaining-channel statistics would keep moving)");
  }

  /// Training forward: y = whitened x with the batch statistics; updates the running statistics.
  /// x and y are (N, C, H, W) views of the same shape; y may be x exactly (in place), no other overlap.
  template <class Policy>
  void train_step(const Policy& policy, image_view<const T> x, image_view<T> y) {
    check_train("train_step", x, y);
    detail::layer_backend<Policy>::channel_train(policy, core_, spec_, x, y);
  }

  /// The same, writing the statistics the step used into `used` (mean (1, B), D (1, B, B), the
  /// remaining channels' mean and variance (2, or empty when C is a multiple of B): the batch's,
  /// or the running ones when the step kept them) and the inverse square root's report (1; a kept
  /// step writes its failed report). backward() takes them.
  template <class Policy>
  void train_step(const Policy& policy, image_view<const T> x, image_view<T> y, const channel_statistics_view<T>& used,
                  vector_view<isqrt_report> reports) {
    constexpr const char* fn = "train_step";
    check_used(fn, used);
    detail::check_output_view(fn, "used.mean", used.mean);
    detail::check_output_view(fn, "used.D", used.D);
    detail::check_output_view(fn, "used.remaining", used.remaining);
    detail::check_output_view(fn, "reports", reports);
    NETDECONV_REQUIRE(reports.shape[0] == 1, fn, "reports must have 1 entry, got ", reports.shape[0]);
    const auto apart = [&](const char* name, const auto& v) {
      detail::check_disjoint(fn, name, v, "x", x);
      detail::check_disjoint(fn, name, v, "y", y);
    };
    apart("used.mean", used.mean);
    apart("used.D", used.D);
    apart("used.remaining", used.remaining);
    apart("reports", reports);
    check_train(fn, x, y);
    detail::layer_backend<Policy>::channel_train(policy, core_, spec_, x, y, used, reports);
  }

  /// Backward of a training step: x as in the step, `used` what it wrote and step its diagnostic(),
  /// dy = dL/dy (x's shape). Writes dL/dx into dx (x's shape; overwritten; it may not overlap x or
  /// dy): the direct part D^T dy and (x - m)/sqrt(v + eps)'s 1/sqrt(v + eps), plus the part through
  /// mu, D (its covariance, centred or uncentred, with the step's eps) and m, v. A kept step, or mode
  /// constants, treats the statistics as constants. One inverse-square-root report into reports (1).
  /// The layer's state does not change. With a cuda_policy, `step` is not read: the outcome of
  /// the layer's latest step is (cuda/layer_state.cuh).
  template <class Policy>
  void backward(const Policy& policy, image_view<const T> x, const channel_statistics_view<const T>& used,
                const step_diagnostic& step, image_view<const T> dy, image_view<T> dx, vector_view<isqrt_report> reports,
                statistics_gradient mode = statistics_gradient::full) const {
    constexpr const char* fn = "backward";
    detail::check_view(fn, "x", x);
    NETDECONV_REQUIRE(x.shape[1] == spec_.channels, fn, "x has C=", x.shape[1], ", the layer has ", spec_.channels);
    check_used(fn, used);
    detail::check_view(fn, "dy", dy);
    detail::check_output_view(fn, "dx", dx);
    detail::check_output_view(fn, "reports", reports);
    NETDECONV_REQUIRE(dy.shape == x.shape && dx.shape == x.shape, fn, "dy and dx must have x's shape");
    NETDECONV_REQUIRE(reports.shape[0] == 1, fn, "reports must have 1 entry, got ", reports.shape[0]);
    const auto apart = [&](const char* name, const auto& v) {
      detail::check_disjoint(fn, name, v, "x", x);
      detail::check_disjoint(fn, name, v, "dy", dy);
      detail::check_disjoint(fn, name, v, "used.mean", used.mean);
      detail::check_disjoint(fn, name, v, "used.D", used.D);
      detail::check_disjoint(fn, name, v, "used.remaining", used.remaining);
    };
    apart("dx", dx);
    apart("reports", reports);
    detail::check_disjoint(fn, "reports", reports, "dx", dx);
    detail::layer_backend<Policy>::channel_backward(policy, core_, spec_, x, used, step, mode, dy, dx, reports);
  }

  /// Evaluation forward with the running statistics.
  template <class Policy>
  void eval(const Policy& policy, image_view<const T> x, image_view<T> y) const {
    check("eval", x, y);
    detail::layer_backend<Policy>::channel_eval(policy, core_, spec_, x, y);
  }

  /// Running mean (B) and D (B x B) of the whitened channels; host state only.
  block_statistics<T> running() const { return detail::running_statistics(core_); }
  /// Running mean and variance of the remaining C - c channels (0 and 1 before training).
  T running_remaining_mean() const { return remaining_scalar(0, T(0)); }
  T running_remaining_var() const { return remaining_scalar(1, T(1)); }

  /// Keeps the running state in the caller's host memory from now on (running_state_view, with
  /// `remaining` = the unwhitened channels' mean and variance (2) when C is not a multiple of the
  /// block, else empty); the current state is written there first.
  void attach_state(const running_state_view<T>& state) { core_.attach(state); }
  /// The same on Policy's backend (device memory with a cuda_policy; see folding_layer).
  template <class Policy>
  void attach_state(const Policy& policy, const running_state_view<T>& state) {
    detail::layer_backend<Policy>::attach(policy, core_, state);
  }
  step_diagnostic diagnostic() const { return core_.diagnostic(); }
  index_t steps() const { return core_.steps(); }

  std::vector<std::uint8_t> state() const {
    detail::byte_writer w(layer_kind::channel, sizeof(T));
    w.i64(spec_.channels);
    w.f64(config_.eps);
    w.i64(config_.sampling_stride);
    w.i64(config_.uncentred_covariance);
    core_.save(w);
    const T scalars[2] = {running_remaining_mean(), running_remaining_var()};
    w.scalars(scalars, 2);
    return w.finish();
  }

  void load_state(const std::vector<std::uint8_t>& bytes) {
    detail::byte_reader r(bytes, layer_kind::channel, sizeof(T));
    r.expect_i64(spec_.channels, "channels");
    r.expect_f64(config_.eps, "eps");
    r.expect_i64(config_.sampling_stride, "sampling_stride");
    r.expect_i64(config_.uncentred_covariance, "uncentred_covariance");
    T scalars[2];
    core_.load(r, [&](detail::byte_reader& rr) {
      rr.scalars(scalars, 2, "remaining-channel statistics");
      if (!std::isfinite(scalars[0]) || !(scalars[1] >= T(0)) || !std::isfinite(scalars[1]) ||
          !(double(scalars[1]) + config_.eps > 0))
        rr.fail("holds remaining-channel mean ", scalars[0], " and variance ", scalars[1],
                " (need finite values, variance >= 0 and variance + eps > 0)");
    });
    const running_state_view<T>& st = core_.host_state("load_state");
    if (!st.remaining.empty()) st.remaining(0) = scalars[0], st.remaining(1) = scalars[1];
  }

 private:
  static index_t checked_block(index_t channels, index_t block) {
    NETDECONV_REQUIRE(block >= 1, "channel_deconv_layer", "block must be >= 1, got ", block);
    NETDECONV_REQUIRE(channels >= block, "channel_deconv_layer", "block ", block, " is larger than C=", channels);
    return channels / block;
  }

  void check(const char* fn, const image_view<const T>& x, const image_view<T>& y) const {
    detail::check_view(fn, "x", x);
    detail::check_output_view(fn, "y", y);
    detail::check_disjoint(fn, "y", y, "x", x, true);
    NETDECONV_REQUIRE(x.shape[1] == spec_.channels, fn, "x has C=", x.shape[1], ", the layer has ", spec_.channels);
    NETDECONV_REQUIRE(y.shape == x.shape, fn, "y must have x's shape");
  }

  void check_train(const char* fn, const image_view<const T>& x, const image_view<T>& y) const {
    check(fn, x, y);
    const index_t rows = detail::make_channel_samples(spec_, x).rows();
    NETDECONV_REQUIRE(rows >= 2, fn, "statistics need >= 2 samples, got ", rows, " (x is ", x.shape[0], "x", x.shape[1],
                      "x", x.shape[2], "x", x.shape[3], ")");
    const index_t remaining = x.shape[0] * spec_.remaining_per_image(x.shape);
    NETDECONV_REQUIRE(spec_.whitened == spec_.channels || remaining >= 2, fn,
                      "the remaining channels' variance needs >= 2 samples, got ", remaining);
  }

  /// `used` views of the shapes train_step writes: mean (1, B), D (1, B, B), remaining (2 or empty).
  template <class U>
  void check_used(const char* fn, const channel_statistics_view<U>& used) const {
    const index_t B = spec_.block;
    detail::check_view(fn, "used.mean", used.mean);
    detail::check_view(fn, "used.D", used.D);
    detail::check_view(fn, "used.remaining", used.remaining);
    NETDECONV_REQUIRE(used.mean.shape == (index_array<2>{1, B}) && used.D.shape == (index_array<3>{1, B, B}), fn,
                      "used.mean must be (1, ", B, ") and used.D (1, ", B, ", ", B, ")");
    const index_t remaining = spec_.whitened < spec_.channels ? 2 : 0;
    NETDECONV_REQUIRE((remaining == 0 ? used.remaining.empty() : used.remaining.shape[0] == 2), fn, "used.remaining must ",
                      remaining == 0 ? "be empty: every channel is whitened" : "have 2 entries (mean, variance)");
  }

  T remaining_scalar(index_t k, T unused) const {
    const running_state_view<T>& st = core_.host_state("running_remaining");
    return st.remaining.empty() ? unused : st.remaining(k);
  }

  channel_deconv_config config_;
  detail::channel_spec spec_;
  detail::deconv_core<T> core_;
};

}  // namespace netdeconv
