// SPDX-License-Identifier: MIT
#pragma once
// Training state shared by the deconvolution layers (docs/method.md §7): running statistics, the reference
// freeze counter, the failure policy and the per-step diagnostic.
//
// One training step (running mean r_mu, running D r_D per statistic, momentum m):
//   frozen = freeze && counter > freeze_iter;  counter = (counter + 1) mod (10 * freeze_iter)
//   frozen:      fold with (r_mu, r_D); nothing else changes
//   otherwise:   moments of the batch -> Cov_s = M_s/n + eps_s I -> D_s = Cov_s^(-1/2)
//                (measure_batch: the first half of the statistics step, statistics_step.hpp)
//                on failure (NaN/Inf, not positive definite, not converged) apply options.on_failure
//                r <- (1 - m) r + m value for mu and D (or Cov, with average_covariance);
//                r <- value on the first step with first_step_copy
// A step that throws leaves the state exactly as it was.

#include <array>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "blocks.hpp"
#include "checkpoint.hpp"
#include "covariance.hpp"
#include "error.hpp"
#include "fold.hpp"
#include "im2col.hpp"
#include "inverse_sqrt.hpp"
#include "moments.hpp"
#include "statistics_view.hpp"
#include "statistics_step.hpp"
#include "statistics_step_config.hpp"

namespace netdeconv {

/// What a layer does when a step's statistics fail (NaN/Inf, not positive definite, not converged).
enum class failure_policy {
  throw_error,     ///< throw numerical_error; the state is unchanged
  keep_previous,   ///< fold with the running statistics; do not update them
  exact_fallback,  ///< recompute the failed blocks with the exact float64 path (then keep_previous)
  raise_eps,       ///< multiply eps by 10 and retry, at most max_eps_raises times (then keep_previous)
};

enum class step_outcome { computed, frozen, kept_previous, exact_fallback, eps_raised };

inline std::ostream& operator<<(std::ostream& os, step_outcome o) {
  constexpr const char* names[] = {"computed", "frozen", "kept_previous", "exact_fallback", "eps_raised"};
  const auto i = static_cast<std::size_t>(o);
  if (i >= std::size(names)) return os << "step_outcome(" << static_cast<int>(o) << ")";
  return os << names[i];
}

/// Thrown by failure_policy::throw_error.
class numerical_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Layer options. The defaults are the reference layers' behaviour (reference-compatible mode);
/// improved() turns on the documented improvements.
struct layer_options {
  double momentum = 0.1;
  bool freeze = false;
  index_t freeze_iter = 100;
  /// Copy the first step's statistics into the running ones instead of averaging with (0, I).
  /// The reference does this only in the channel layer.
  bool first_step_copy = false;
  /// Keep a running average of Cov instead of D; evaluation takes the inverse square root of it.
  bool average_covariance = false;
  /// eps_s = eps * tr(Cov0_s)/F (scale-free) instead of eps.
  bool relative_eps = false;
  failure_policy on_failure = failure_policy::throw_error;
  int max_eps_raises = 3;

  /// First-step copy, running covariance, trace-relative eps, keep previous statistics on failure.
  static layer_options improved() {
    layer_options o;
    o.first_step_copy = true;
    o.average_covariance = true;
    o.relative_eps = true;
    o.on_failure = failure_policy::keep_previous;
    return o;
  }
};

/// A training step's result: W', b' and the statistics they were folded with (the batch's, or the
/// running ones when the step was frozen or kept its previous statistics); a backward pass needs them.
template <class T>
struct layer_step : folded_weights<T> {
  block_statistics<T> statistics;
};

/// What the last training step did.
struct step_diagnostic {
  step_outcome outcome = step_outcome::computed;
  std::vector<isqrt_report> reports;  ///< one per statistic, as finally used (empty when frozen)
  int eps_raises = 0;                 ///< tenfold eps increases this step (raise_eps)
  index_t failures = 0;               ///< steps so far whose statistics failed (saved in checkpoints)
};

/// A layer's running state in memory its caller owns (a framework's buffers, e.g. PyTorch
/// register_buffer tensors, so that its own checkpoint holds them). S = plan().count(),
/// F = plan().features(); any strides.
template <class T>
struct running_state_view {
  matrix_view<T> mean;            ///< (S, F) running means
  tensor_view<T, 3> D;            ///< (S, F, F) running D
  tensor_view<T, 3> cov;          ///< (S, F, F) running covariance with average_covariance, else empty
  vector_view<index_t> counters;  ///< (3): training steps, freeze counter, failed steps
  vector_view<T> remaining;       ///< channel layer with unwhitened channels: their mean and variance (2), else empty
};

namespace detail {

/// Running statistics of one plan and the step logic above; used by every layer.
template <class T>
class deconv_core {
 public:
  using vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

  deconv_core(const block_plan& plan, double eps, const isqrt_options& isqrt, const layer_options& options,
              bool uncentred = false)
      : plan_(plan), eps_(eps), isqrt_(isqrt), options_(options), uncentred_(uncentred) {
    constexpr const char* fn = "layer";
    NETDECONV_REQUIRE(eps >= 0, fn, "eps must be >= 0, got ", eps);
    check_isqrt_options(fn, isqrt);
    NETDECONV_REQUIRE(options.momentum >= 0 && options.momentum <= 1, fn, "momentum must be in [0, 1], got ",
                      options.momentum);
    NETDECONV_REQUIRE(options.freeze_iter >= 1 && options.freeze_iter <= std::numeric_limits<index_t>::max() / 10, fn,
                      "freeze_iter must be in [1, 2^63/10] (the counter wraps at 10*freeze_iter), got ",
                      options.freeze_iter);
    NETDECONV_REQUIRE(options.max_eps_raises >= 0 && options.max_eps_raises <= 30, fn,
                      "max_eps_raises must be in [0, 30] (eps x 10^30 at most), got ", options.max_eps_raises);
    const index_t F = plan.features();
    running_.plan = plan;
    running_.mean.assign(plan.count(), vector::Zero(F));
    running_.D.assign(plan.count(), square_matrix<T>::Identity(F, F));
    if (options.average_covariance) running_cov_.assign(plan.count(), square_matrix<T>::Identity(F, F));
  }

  const block_plan& plan() const { return plan_; }
  const layer_options& options() const { return options_; }
  const block_statistics<T>& running() const { return (pull(), running_); }
  const step_diagnostic& diagnostic() const { return (pull(), diagnostic_); }
  index_t steps() const { return (pull(), steps_); }
  index_t counter() const { return (pull(), counter_); }

  /// From now on keeps the running statistics and counters in `state` (see running_state_view):
  /// writes the current ones there, and every later call reads them back first (checked as a
  /// checkpoint is), so whatever the caller loads into that memory is the state.
  void attach(const running_state_view<T>& state) {
    constexpr const char* fn = "attach_state";
    const index_t S = plan_.count(), F = plan_.features();
    const block_statistics_view<const T> stats{plan_, state.mean, state.D};
    check_statistics_view(fn, stats);
    check_output_view(fn, "mean", state.mean);
    check_output_view(fn, "D", state.D);
    check_output_view(fn, "counters", state.counters);
    NETDECONV_REQUIRE(state.counters.shape[0] == 3, fn, "counters must have 3 entries (steps, freeze counter, failures), got ",
                      state.counters.shape[0]);
    check_disjoint(fn, "D", state.D, "mean", state.mean);
    check_disjoint(fn, "counters", state.counters, "mean", state.mean);
    check_disjoint(fn, "counters", state.counters, "D", state.D);
    if (options_.average_covariance) {
      check_output_view(fn, "cov", state.cov);
      NETDECONV_REQUIRE(state.cov.shape[0] == S && state.cov.shape[1] == F && state.cov.shape[2] == F, fn, "cov is (",
                        state.cov.shape[0], ", ", state.cov.shape[1], ", ", state.cov.shape[2], "), the layer needs (", S,
                        ", ", F, ", ", F, ") with average_covariance");
      check_disjoint(fn, "cov", state.cov, "mean", state.mean);
      check_disjoint(fn, "cov", state.cov, "D", state.D);
      check_disjoint(fn, "cov", state.cov, "counters", state.counters);
    } else {
      NETDECONV_REQUIRE(state.cov.empty(), fn, "cov must be empty without average_covariance");
    }
    pull();
    external_ = state;
    push();
  }

  /// Reads an attached state into this object (see attach); invalid_argument if it makes no sense.
  void pull() const {
    if (!external_) return;
    const running_state_view<T>& v = *external_;
    const index_t F = plan_.features();
    for (index_t s = 0; s < plan_.count(); ++s)
      for (index_t i = 0; i < F; ++i) {
        running_.mean[s][i] = v.mean(s, i);
        for (index_t j = 0; j < F; ++j) {
          running_.D[s](i, j) = v.D(s, i, j);
          if (options_.average_covariance) running_cov_[s](i, j) = v.cov(s, i, j);
        }
      }
    steps_ = v.counters(0);
    counter_ = v.counters(1);
    diagnostic_.failures = v.counters(2);
    check_running([](const auto&... parts) { fail("attach_state", "the attached state ", parts...); });
  }

  /// Writes this object's state into the attached views.
  void push() const {
    if (!external_) return;
    const running_state_view<T>& v = *external_;
    const index_t F = plan_.features();
    for (index_t s = 0; s < plan_.count(); ++s)
      for (index_t i = 0; i < F; ++i) {
        v.mean(s, i) = running_.mean[s][i];
        for (index_t j = 0; j < F; ++j) {
          v.D(s, i, j) = running_.D[s](i, j);
          if (options_.average_covariance) v.cov(s, i, j) = running_cov_[s](i, j);
        }
      }
    v.counters(0) = steps_;
    v.counters(1) = counter_;
    v.counters(2) = diagnostic_.failures;
  }

  /// One training step over the rows of `source`; returns the statistics to fold with this step.
  template <class Policy, class Source>
  block_statistics<T> train(const Policy& policy, const Source& source) {
    pull();
    const bool frozen = options_.freeze && counter_ > options_.freeze_iter;
    step_diagnostic diag;
    diag.failures = diagnostic_.failures;
    if (frozen) {
      diag.outcome = step_outcome::frozen;
      auto stats = evaluation(policy);
      commit(diag);
      return stats;
    }
    const batch_statistics<T> measured = measure_batch<T>(policy, source, plan_, uncentred_);
    std::vector<double> eps(plan_.count(), eps_);
    if (options_.relative_eps)
      for (index_t s = 0; s < plan_.count(); ++s) eps[s] = eps_ * measured.cov0[s].trace() / double(plan_.features());
    block_statistics<T> batch{plan_, measured.mean, {}};
    std::vector<square_matrix<T>> cov = measured.regularised(eps);
    diag.reports = inverse_sqrt(policy, cov, batch.D, isqrt_);
    if (!all_ok(diag.reports)) {
      ++diag.failures;
      switch (options_.on_failure) {
        case failure_policy::throw_error: throw numerical_error(describe_failure(diag.reports));
        case failure_policy::keep_previous: break;
        case failure_policy::exact_fallback:
          diag.outcome = step_outcome::exact_fallback;
          for (std::size_t s = 0; s < cov.size(); ++s)
            if (diag.reports[s].status != isqrt_status::ok) diag.reports[s] = inverse_sqrt_exact(cov[s], batch.D[s]);
          break;
        case failure_policy::raise_eps:
          diag.outcome = step_outcome::eps_raised;
          for (double scale = 10.0; !all_ok(diag.reports) && diag.eps_raises < options_.max_eps_raises; scale *= 10.0) {
            ++diag.eps_raises;
            std::vector<double> raised(eps);
            for (double& e : raised) e *= scale;
            cov = measured.regularised(raised);
            diag.reports = inverse_sqrt(policy, cov, batch.D, isqrt_);
          }
          break;
      }
      if (!all_ok(diag.reports) || !all_finite(batch.mean)) {
        diag.outcome = step_outcome::kept_previous;
        auto stats = evaluation(policy);
        commit(diag);
        return stats;
      }
    }
    const bool copy = options_.first_step_copy && steps_ == 0;
    const T m = T(options_.momentum);
    for (index_t s = 0; s < plan_.count(); ++s) {
      average(running_.mean[s], batch.mean[s], copy, m);
      average(running_.D[s], batch.D[s], copy, m);
      if (options_.average_covariance) average(running_cov_[s], cov[s], copy, m);
    }
    commit(diag);
    return batch;
  }

  /// Statistics for evaluation: running mean with running D, or (average_covariance) the inverse
  /// square root of the running covariance. A block whose iteration fails (not converged within its
  /// cap, say) takes the exact float64 root of the running covariance, a positive combination of
  /// positive definite matrices; if that fails too, numerical_error is thrown.
  template <class Policy>
  block_statistics<T> evaluation(const Policy& policy) const {
    pull();
    if (!options_.average_covariance || steps_ == 0) return running_;
    block_statistics<T> out{plan_, running_.mean, {}};
    auto reports = inverse_sqrt(policy, running_cov_, out.D, isqrt_);
    for (std::size_t s = 0; s < reports.size(); ++s)
      if (reports[s].status != isqrt_status::ok) reports[s] = inverse_sqrt_exact(running_cov_[s], out.D[s]);
    if (!all_ok(reports))
      throw numerical_error("netdeconv: the running covariance has no inverse square root:" + describe(reports));
    return out;
  }

  /// Records a step whose statistics are not used (e.g. a failed part of a composite layer).
  void keep_previous_step() {
    pull();
    step_diagnostic diag;
    diag.outcome = step_outcome::kept_previous;
    diag.failures = diagnostic_.failures + 1;
    commit(diag);
  }

  /// Writes the plan, every option that shapes the trajectory, the counters and the running
  /// statistics.
  void save(byte_writer& w) const {
    pull();
    for (const std::int64_t v : configuration()) w.i64(v);
    w.f64(options_.momentum);
    w.f64(isqrt_.tolerance);
    w.i64(steps_);
    w.i64(counter_);
    w.i64(diagnostic_.failures);
    for (index_t s = 0; s < plan_.count(); ++s) {
      w.scalars(running_.mean[s].data(), running_.mean[s].size());
      w.scalars(running_.D[s].data(), running_.D[s].size());
      if (options_.average_covariance) w.scalars(running_cov_[s].data(), running_cov_[s].size());
    }
  }

  /// This state with what save() wrote; throws checkpoint_error (and changes nothing) when the
  /// configuration differs or the contents make no sense: counters outside
  /// 0 <= failures <= steps < 2^62 and counter == steps mod (10 freeze_iter), running statistics
  /// that are not finite, or a running covariance that is not symmetric.
  deconv_core loaded(byte_reader& r) const {
    pull();
    deconv_core copy = *this;
    constexpr const char* names[] = {"block layout", "channels", "kernel area", "groups", "block",
                                     "freeze", "freeze_iter", "first_step_copy", "average_covariance",
                                     "relative_eps", "on_failure", "max_eps_raises", "isqrt method",
                                     "isqrt iterations", "isqrt scaling"};
    const auto config = configuration();
    static_assert(std::size(names) == std::tuple_size_v<decltype(config)>);
    for (std::size_t i = 0; i < config.size(); ++i) r.expect_i64(config[i], names[i]);
    r.expect_f64(options_.momentum, "momentum");
    r.expect_f64(isqrt_.tolerance, "isqrt tolerance");
    copy.steps_ = r.i64();
    copy.counter_ = r.i64();
    copy.diagnostic_ = {};
    copy.diagnostic_.failures = r.i64();
    for (index_t s = 0; s < plan_.count(); ++s) {
      r.scalars(copy.running_.mean[s].data(), copy.running_.mean[s].size(), "running mean");
      r.scalars(copy.running_.D[s].data(), copy.running_.D[s].size(), "running D");
      if (options_.average_covariance) r.scalars(copy.running_cov_[s].data(), copy.running_cov_[s].size(), "running Cov");
    }
    copy.check_running([&](const auto&... parts) { r.fail(parts...); });
    return copy;
  }

 private:
  /// The integer configuration fields a checkpoint must match, in the order save() writes them.
  std::array<std::int64_t, 15> configuration() const {
    return {std::int64_t(plan_.layout), plan_.channels, plan_.kernel_area, plan_.groups, plan_.block,
            options_.freeze, options_.freeze_iter, options_.first_step_copy, options_.average_covariance,
            options_.relative_eps, std::int64_t(options_.on_failure), options_.max_eps_raises,
            std::int64_t(isqrt_.method), isqrt_.iterations, std::int64_t(isqrt_.scaling)};
  }

  static bool all_ok(const std::vector<isqrt_report>& reports) {
    for (const auto& r : reports)
      if (r.status != isqrt_status::ok) return false;
    return true;
  }
  static bool all_finite(const std::vector<vector>& v) {
    for (const auto& e : v)
      if (!e.allFinite()) return false;
    return true;
  }
  static std::string describe_failure(const std::vector<isqrt_report>& reports) {
    return "netdeconv: layer statistics failed:" + describe(reports);
  }
  static std::string describe(const std::vector<isqrt_report>& reports) {
    std::ostringstream os;
    for (std::size_t s = 0; s < reports.size(); ++s)
      if (reports[s].status != isqrt_status::ok)
        os << " block " << s << ' ' << reports[s].status << " (residual " << reports[s].residual << " after "
           << reports[s].iterations << " iterations)";
    return os.str();
  }
  template <class M>
  static void average(M& running, const M& value, bool copy, T m) {
    if (copy)
      running = value;
    else
      running = (T(1) - m) * running + m * value;
  }
  /// Steps a checkpoint may hold: far beyond any run, and far from overflowing ++steps_.
  static constexpr index_t max_steps = index_t(1) << 62;

  void commit(const step_diagnostic& diag) {
    counter_ = (counter_ + 1) % (10 * options_.freeze_iter);
    ++steps_;
    diagnostic_ = diag;
    push();
  }

  /// Calls fail(message parts...) unless the counters and statistics make sense: 0 <= failures <=
  /// steps < 2^62, counter == steps mod (10 freeze_iter), finite running statistics, a symmetric
  /// running covariance.
  template <class Fail>
  void check_running(Fail&& fail) const {
    const index_t wrap = 10 * options_.freeze_iter;
    if (steps_ < 0 || steps_ >= max_steps) fail("has steps = ", steps_, ", outside [0, 2^62)");
    if (counter_ != steps_ % wrap)
      fail("has freeze counter ", counter_, ", but steps ", steps_, " mod 10*freeze_iter = ", steps_ % wrap);
    if (diagnostic_.failures < 0 || diagnostic_.failures > steps_)
      fail("has ", diagnostic_.failures, " failed steps, outside [0, steps = ", steps_, "]");
    for (index_t s = 0; s < plan_.count(); ++s) {
      if (!running_.mean[s].allFinite() || !running_.D[s].allFinite() ||
          (options_.average_covariance && !running_cov_[s].allFinite()))
        fail("holds non-finite running statistics for block ", s);
      if (options_.average_covariance && !measure_symmetry<T>(running_cov_[s]).ok())
        fail("holds a non-symmetric running covariance for block ", s);
    }
  }

  block_plan plan_;
  double eps_;
  isqrt_options isqrt_;
  layer_options options_;
  bool uncentred_;
  // The running state; with an attached state (attach) a mirror of it, read at the start of every
  // call (pull) and written after every change (push): hence mutable.
  mutable block_statistics<T> running_;
  mutable std::vector<square_matrix<T>> running_cov_;
  mutable index_t counter_ = 0, steps_ = 0;
  mutable step_diagnostic diagnostic_;
  std::optional<running_state_view<T>> external_;
};

/// What conv and linear layers share: the core, accessors and checkpoints. The configuration fields
/// that shape the statistics beyond the plan (geometry, eps, sampling stride) are saved and checked
/// too.
template <class T, layer_kind Kind>
class folding_layer {
 public:
  /// Running statistics (mean and D per statistic of plan()).
  const block_statistics<T>& running() const { return core_.running(); }
  const block_plan& plan() const { return core_.plan(); }
  const step_diagnostic& diagnostic() const { return core_.diagnostic(); }
  /// Training steps seen, and the reference freeze counter (steps mod 10 * freeze_iter).
  index_t steps() const { return core_.steps(); }
  index_t freeze_counter() const { return core_.counter(); }

  /// Keeps the running state in the caller's memory from now on (running_state_view; `remaining`
  /// must be empty); the current state is written there first.
  void attach_state(const running_state_view<T>& state) {
    NETDECONV_REQUIRE(state.remaining.empty(), "attach_state", "remaining is for the channel layer; leave it empty");
    core_.attach(state);
  }

  /// Checkpoint bytes (see checkpoint.hpp).
  std::vector<std::uint8_t> state() const {
    byte_writer w(Kind, sizeof(T));
    w.f64(eps_);
    w.i64(sampling_stride_);
    for (const index_t v : geometry_fields()) w.i64(v);
    core_.save(w);
    return w.finish();
  }
  /// Restores a checkpoint of a layer with the same configuration; throws checkpoint_error, and
  /// changes nothing, otherwise.
  void load_state(const std::vector<std::uint8_t>& bytes) {
    byte_reader r(bytes, Kind, sizeof(T));
    r.expect_f64(eps_, "eps");
    r.expect_i64(sampling_stride_, "sampling_stride");
    constexpr const char* names[] = {"kernel_h", "kernel_w", "stride_h", "stride_w",
                                     "pad_h",    "pad_w",    "dilation_h", "dilation_w"};
    const auto fields = geometry_fields();
    for (std::size_t i = 0; i < fields.size(); ++i) r.expect_i64(fields[i], names[i]);
    auto loaded = core_.loaded(r);
    r.expect_end();
    core_ = std::move(loaded);
    core_.push();
  }

 protected:
  folding_layer(const block_plan& plan, const conv_geometry& geometry, double eps, index_t sampling_stride,
                const isqrt_options& isqrt, const layer_options& options)
      : geometry_(geometry), eps_(eps), sampling_stride_(sampling_stride), core_(plan, eps, isqrt, options) {}

  /// The writing form of train_step: the statistics a step folds, its reports (a frozen step,
  /// which has none, writes 0 iterations, residual NaN, ok) and W', b' into checked outputs.
  template <class Policy>
  void store_step(const Policy& policy, const block_statistics<T>& stats, const image_view<const T>& weight,
                  const vector_view<const T>& bias, const statistics_step_outputs<T, 4>& out) const {
    store_statistics(stats, out.mean, out.D);
    const std::vector<isqrt_report>& reports = core_.diagnostic().reports;
    for (index_t s = 0; s < out.reports.shape[0]; ++s)
      out.reports(s) = reports.empty() ? isqrt_report{0, std::numeric_limits<double>::quiet_NaN(), isqrt_status::ok}
                                       : reports[std::size_t(s)];
    fold_impl(policy, stats, weight, bias, out.weight, out.bias);
  }

  conv_geometry geometry_;  ///< 1x1 for a linear layer
  double eps_;
  index_t sampling_stride_;
  deconv_core<T> core_;

 private:
  std::array<index_t, 8> geometry_fields() const {
    const conv_geometry& g = geometry_;
    return {g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w};
  }
};

}  // namespace detail
}  // namespace netdeconv
