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
// statistics into the running ones. Training rule and failure policies: layer_state.hpp
// (freeze is refused: the reference channel layer has none). A batch whose remaining variance plus
// eps is not positive (a dead remaining channel with eps = 0) is a failed step.
//
//   netdeconv::channel_deconv_layer<float> layer(/*C*/ 512, netdeconv::channel_deconv_config{/*block*/ 16});
//   layer.train_step(netdeconv::par, x, y);    // x, y: (N, C, H, W) views, any layout
//   layer.eval(netdeconv::par, x, y);

#include <cmath>
#include <cstdint>
#include <vector>

#include "blocks.hpp"
#include "checkpoint.hpp"
#include "layer_state.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

struct channel_deconv_config {
  index_t block = 16;
  index_t sampling_stride = 3;
  double eps = 1e-2;
  isqrt_options isqrt = isqrt_options::fixed(5);
  bool uncentred_covariance = true;  ///< the reference's quirk; false: centred covariance
};

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
        whitened_(checked_block(channels, config.block) * config.block),
        core_(make_block_plan(block_layout::independent, config.block, 1, config.block), config.eps, config.isqrt,
              options, config.uncentred_covariance),
        channels_(channels) {
    NETDECONV_REQUIRE(config.sampling_stride >= 1, "channel_deconv_layer", "sampling_stride must be >= 1, got ",
                      config.sampling_stride);
    NETDECONV_REQUIRE(!options.freeze, "channel_deconv_layer",
                      "the channel layer has no freeze (its remaining-channel statistics would keep moving)");
  }

  /// Training forward: y = whitened x with the batch statistics; updates the running statistics.
  /// x and y are (N, C, H, W) views of the same shape; y may be x exactly (in place), no other overlap.
  template <class Policy>
  void train_step(const Policy& policy, image_view<const T> x, image_view<T> y) {
    constexpr const char* fn = "train_step";
    check(fn, x, y);
    pull_scalars();
    const index_t step = sampling_step(x);
    const sample_source source{x, whitened_ / config_.block, config_.block, step};
    NETDECONV_REQUIRE(source.rows() >= 2, fn, "statistics need >= 2 samples, got ", source.rows(), " (x is ", x.shape[0],
                      "x", x.shape[1], "x", x.shape[2], "x", x.shape[3], ")");
    NETDECONV_REQUIRE(whitened_ == channels_ || remaining_samples(x, step) >= 2, fn,
                      "the remaining channels' variance needs >= 2 samples, got ", remaining_samples(x, step));
    scalar_stats batch = remaining_stats(x, step);
    if (!std::isfinite(batch.mean) || !std::isfinite(batch.var) || !(double(batch.var) + config_.eps > 0)) {
      if (core_.options().on_failure == failure_policy::throw_error)
        throw numerical_error("netdeconv: channel layer statistics failed: the remaining channels' mean "
                              "or variance is not finite, or variance + eps is 0");
      core_.keep_previous_step();
      apply(x, y, core_.evaluation(policy), running_scalars_);
      return;
    }
    const auto stats = core_.train(policy, source);
    if (core_.diagnostic().outcome == step_outcome::kept_previous) {
      batch = running_scalars_;
    } else {
      const T m = T(core_.options().momentum);
      const bool copy = core_.options().first_step_copy && core_.steps() == 1;
      running_scalars_.mean = copy ? batch.mean : (T(1) - m) * running_scalars_.mean + m * batch.mean;
      running_scalars_.var = copy ? batch.var : (T(1) - m) * running_scalars_.var + m * batch.var;
    }
    push_scalars();
    apply(x, y, stats, batch);
  }

  /// Evaluation forward with the running statistics.
  template <class Policy>
  void eval(const Policy& policy, image_view<const T> x, image_view<T> y) const {
    check("eval", x, y);
    pull_scalars();
    apply(x, y, core_.evaluation(policy), running_scalars_);
  }

  /// Running mean (B) and D (B x B) of the whitened channels.
  const block_statistics<T>& running() const { return core_.running(); }
  /// Running mean and variance of the remaining C - c channels (0 and 1 before training).
  T running_remaining_mean() const { return (pull_scalars(), running_scalars_.mean); }
  T running_remaining_var() const { return (pull_scalars(), running_scalars_.var); }

  /// Keeps the running state in the caller's memory from now on (running_state_view, with
  /// `remaining` = the unwhitened channels' mean and variance (2) when C is not a multiple of the
  /// block, else empty); the current state is written there first.
  void attach_state(const running_state_view<T>& state) {
    constexpr const char* fn = "attach_state";
    if (whitened_ < channels_) {
      detail::check_output_view(fn, "remaining", state.remaining);
      NETDECONV_REQUIRE(state.remaining.shape[0] == 2, fn, "remaining must have 2 entries (mean, variance), got ",
                        state.remaining.shape[0]);
      detail::check_disjoint(fn, "remaining", state.remaining, "mean", state.mean);
      detail::check_disjoint(fn, "remaining", state.remaining, "D", state.D);
      detail::check_disjoint(fn, "remaining", state.remaining, "cov", state.cov);
    } else {
      NETDECONV_REQUIRE(state.remaining.empty(), fn, "remaining must be empty: every channel is whitened");
    }
    pull_scalars();
    core_.attach(state);
    remaining_ = state.remaining;
    push_scalars();
  }
  const step_diagnostic& diagnostic() const { return core_.diagnostic(); }
  index_t steps() const { return core_.steps(); }

  std::vector<std::uint8_t> state() const {
    pull_scalars();
    detail::byte_writer w(layer_kind::channel, sizeof(T));
    w.i64(channels_);
    w.f64(config_.eps);
    w.i64(config_.sampling_stride);
    w.i64(config_.uncentred_covariance);
    core_.save(w);
    const T scalars[2] = {running_scalars_.mean, running_scalars_.var};
    w.scalars(scalars, 2);
    return w.finish();
  }

  void load_state(const std::vector<std::uint8_t>& bytes) {
    detail::byte_reader r(bytes, layer_kind::channel, sizeof(T));
    r.expect_i64(channels_, "channels");
    r.expect_f64(config_.eps, "eps");
    r.expect_i64(config_.sampling_stride, "sampling_stride");
    r.expect_i64(config_.uncentred_covariance, "uncentred_covariance");
    auto loaded = core_.loaded(r);
    T scalars[2];
    r.scalars(scalars, 2, "remaining-channel statistics");
    if (!std::isfinite(scalars[0]) || !(scalars[1] >= T(0)) || !std::isfinite(scalars[1]) ||
        !(double(scalars[1]) + config_.eps > 0))
      r.fail("holds remaining-channel mean ", scalars[0], " and variance ", scalars[1],
             " (need finite values, variance >= 0 and variance + eps > 0)");
    r.expect_end();
    core_ = std::move(loaded);
    core_.push();
    running_scalars_ = {scalars[0], scalars[1]};
    push_scalars();
  }

 private:
  struct scalar_stats {
    T mean = T(0), var = T(1);
  };

  /// Row source: sample r is position j = r*step of the concatenated rows, one value per row f.
  struct sample_source {
    image_view<const T> x;
    index_t per_row, block, step;  // per_row = c/B channels in each feature row
    index_t rows() const {
      const index_t length = per_row * x.shape[0] * x.shape[2] * x.shape[3];
      return length == 0 ? 0 : (length - 1) / step + 1;
    }
    index_t width() const { return block; }
    template <class Out>
    void gather(index_t r, Out* out) const {
      const index_t j = r * step, plane = x.shape[0] * x.shape[2] * x.shape[3], p = j % plane;
      const index_t cc = j / plane, n = p / (x.shape[2] * x.shape[3]), yy = (p / x.shape[3]) % x.shape[2],
                    xx = p % x.shape[3];
      for (index_t f = 0; f < block; ++f) out[f] = static_cast<Out>(x(n, f * per_row + cc, yy, xx));
    }
  };

  static index_t checked_block(index_t channels, index_t block) {
    NETDECONV_REQUIRE(block >= 1, "channel_deconv_layer", "block must be >= 1, got ", block);
    NETDECONV_REQUIRE(channels >= block, "channel_deconv_layer", "block ", block, " is larger than C=", channels);
    return channels / block;
  }

  void check(const char* fn, const image_view<const T>& x, const image_view<T>& y) const {
    detail::check_view(fn, "x", x);
    detail::check_output_view(fn, "y", y);
    detail::check_disjoint(fn, "y", y, "x", x, true);
    NETDECONV_REQUIRE(x.shape[1] == channels_, fn, "x has C=", x.shape[1], ", the layer has ", channels_);
    NETDECONV_REQUIRE(y.shape == x.shape, fn, "y must have x's shape");
  }

  index_t sampling_step(const image_view<const T>& x) const {
    const index_t S = config_.sampling_stride;
    return S > 1 && x.shape[2] >= S && x.shape[3] >= S ? S * S : 1;
  }

  /// Values the remaining channels' statistics read: every step-th of (C - c)*H*W per image.
  index_t remaining_samples(const image_view<const T>& x, index_t step) const {
    const index_t length = (channels_ - whitened_) * x.shape[2] * x.shape[3];
    return length == 0 ? 0 : x.shape[0] * ((length - 1) / step + 1);
  }

  /// Mean and unbiased variance of every step-th value of x[n, c:, :, :] flattened, per image (double).
  scalar_stats remaining_stats(const image_view<const T>& x, index_t step) const {
    if (whitened_ == channels_) return running_scalars_;
    const index_t H = x.shape[2], W = x.shape[3], length = (channels_ - whitened_) * H * W;
    moments<double> m(1);
    Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> values((length - 1) / step + 1, 1);
    for (index_t n = 0; n < x.shape[0]; ++n) {
      index_t i = 0;
      for (index_t k = 0; k < length; k += step, ++i)
        values(i, 0) = double(x(n, whitened_ + k / (H * W), (k / W) % H, k % W));
      m.add(values);
    }
    const double var = m.count() > 1 ? m.scatter()(0, 0) / double(m.count() - 1) : std::nan("");
    return {T(m.mean()[0]), T(var)};
  }

  void apply(const image_view<const T>& x, const image_view<T>& y, const block_statistics<T>& stats,
             const scalar_stats& scalars) const {
    const index_t B = config_.block, per_row = whitened_ / B;
    const auto& D = stats.D[0];
    const auto& mu = stats.mean[0];
    const T inv_sd = T(1.0 / std::sqrt(double(scalars.var) + config_.eps));
    Eigen::Matrix<T, Eigen::Dynamic, 1> centred(B);
    for (index_t n = 0; n < x.shape[0]; ++n)
      for (index_t yy = 0; yy < x.shape[2]; ++yy)
        for (index_t xx = 0; xx < x.shape[3]; ++xx) {
          for (index_t cc = 0; cc < per_row; ++cc) {
            for (index_t g = 0; g < B; ++g) centred[g] = x(n, g * per_row + cc, yy, xx) - mu[g];
            for (index_t f = 0; f < B; ++f) y(n, f * per_row + cc, yy, xx) = D.row(f).dot(centred);
          }
          for (index_t c = whitened_; c < channels_; ++c) y(n, c, yy, xx) = (x(n, c, yy, xx) - scalars.mean) * inv_sd;
        }
  }

  /// With an attached state: reads the remaining channels' mean and variance (checked as a
  /// checkpoint's are: finite, variance >= 0 and variance + eps > 0).
  void pull_scalars() const {
    if (remaining_.empty()) return;
    const T mean = remaining_(0), var = remaining_(1);
    NETDECONV_REQUIRE(std::isfinite(mean) && std::isfinite(var) && var >= T(0) && double(var) + config_.eps > 0,
                      "attach_state", "the attached state holds remaining-channel mean ", mean, " and variance ", var,
                      " (need finite values, variance >= 0 and variance + eps > 0)");
    running_scalars_ = {mean, var};
  }
  void push_scalars() const {
    if (remaining_.empty()) return;
    remaining_(0) = running_scalars_.mean;
    remaining_(1) = running_scalars_.var;
  }

  channel_deconv_config config_;
  index_t whitened_;  ///< c = floor(C/B)*B
  detail::deconv_core<T> core_;
  index_t channels_;
  // The remaining channels' running mean and variance; with an attached state a mirror of
  // remaining_ (pull_scalars / push_scalars): hence mutable.
  mutable scalar_stats running_scalars_;
  vector_view<T> remaining_;  ///< attached: the caller's (mean, variance); else empty
};

}  // namespace netdeconv
