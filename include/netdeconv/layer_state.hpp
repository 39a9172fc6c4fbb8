// SPDX-License-Identifier: MIT
#pragma once
// The layers' training step on the CPU policies (seq, omp, par): detail::layer_backend<Policy> for
// the rule in layer_core.hpp, over the host state of a deconv_core.
//   train:      measure_batch (statistics_step.hpp) -> Cov_s + eps_s I -> inverse_sqrt, the failure
//               policy, the running update; returns the statistics the step folds
//   evaluation: running mean with running D, or (average_covariance) the inverse square root of
//               the running covariance
// The CUDA form is cuda/layer_state.cuh.

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "block_statistics.hpp"
#include "channel_samples.hpp"
#include "covariance.hpp"
#include "execution.hpp"
#include "fold.hpp"
#include "inverse_sqrt.hpp"
#include "layer_core.hpp"
#include "moments.hpp"
#include "statistics_step.hpp"
#include "statistics_step_config.hpp"
#include "statistics_step_vjp.hpp"

namespace netdeconv {

/// A training step's result: W', b' and the statistics they were folded with (the batch's, or the
/// running ones when the step was frozen or kept its previous statistics); a backward pass needs them.
template <class T>
struct layer_step : folded_weights<T> {
  block_statistics<T> statistics;
};

namespace detail {

template <class T>
block_statistics<T> running_statistics(const deconv_core<T>& core) {
  const running_state_view<T>& st = core.host_state("running");
  return load_statistics(block_statistics_view<const T>{core.plan(), st.mean, st.D});
}

template <class Policy, class>
struct layer_backend {
  static_assert(is_execution_policy_v<Policy>, "a layer's policy must be an execution policy");

  template <class T>
  static void attach(const Policy&, deconv_core<T>& core, const running_state_view<T>& state) {
    core.attach(state);
  }

  /// One training step over the rows of `source`; returns the statistics to fold with this step.
  template <class T, class Source>
  static block_statistics<T> train(const Policy& policy, deconv_core<T>& core, const Source& source) {
    const running_state_view<T>& st = core.host_state("train_step");
    const layer_options& o = core.options();
    const block_plan& plan = core.plan();
    step_diagnostic diag;
    diag.failures = st.counters(2);
    if (o.freeze && st.counters(1) > o.freeze_iter) {
      diag.outcome = step_outcome::frozen;
      auto stats = evaluation(policy, core);
      core.commit(diag);
      return stats;
    }
    const batch_statistics<T> measured = measure_batch<T>(policy, source, plan, core.uncentred());
    std::vector<double> eps(std::size_t(plan.count()), core.eps());
    if (o.relative_eps)
      for (index_t s = 0; s < plan.count(); ++s) eps[s] = core.eps() * measured.cov0[s].trace() / double(plan.features());
    block_statistics<T> batch{plan, measured.mean, {}};
    std::vector<square_matrix<T>> cov = measured.regularised(eps);
    diag.reports = inverse_sqrt(policy, cov, batch.D, core.isqrt());
    if (!all_ok(diag.reports)) {
      ++diag.failures;
      switch (o.on_failure) {
        case failure_policy::throw_error:
          throw numerical_error("netdeconv: layer statistics failed:" + describe_failures(diag.reports));
        case failure_policy::keep_previous: break;
        case failure_policy::exact_fallback:
          diag.outcome = step_outcome::exact_fallback;
          for (std::size_t s = 0; s < cov.size(); ++s)
            if (diag.reports[s].status != isqrt_status::ok) diag.reports[s] = inverse_sqrt_exact(cov[s], batch.D[s]);
          break;
        case failure_policy::raise_eps:
          diag.outcome = step_outcome::eps_raised;
          for (double scale = 10.0; !all_ok(diag.reports) && diag.eps_raises < o.max_eps_raises; scale *= 10.0) {
            ++diag.eps_raises;
            std::vector<double> raised(eps);
            for (double& e : raised) e *= scale;
            cov = measured.regularised(raised);
            diag.reports = inverse_sqrt(policy, cov, batch.D, core.isqrt());
          }
          break;
      }
      if (!all_ok(diag.reports) || !all_finite(batch.mean)) {
        diag.outcome = step_outcome::kept_previous;
        auto stats = evaluation(policy, core);
        core.commit(diag);
        return stats;
      }
    }
    const bool copy = o.first_step_copy && st.counters(0) == 0;
    const T m = T(o.momentum);
    block_statistics<T> running = running_statistics(core);
    std::vector<square_matrix<T>> running_cov = covariances(core);
    for (index_t s = 0; s < plan.count(); ++s) {
      average(running.mean[s], batch.mean[s], copy, m);
      average(running.D[s], batch.D[s], copy, m);
      if (o.average_covariance) average(running_cov[s], cov[s], copy, m);
    }
    store_statistics(running, st.mean, st.D);
    store_covariances(running_cov, st.cov);
    core.commit(diag);
    return batch;
  }

  /// Statistics for evaluation: running mean with running D, or (average_covariance) the inverse
  /// square root of the running covariance. A block whose iteration fails (not converged within its
  /// cap, say) takes the exact float64 root of the running covariance, a positive combination of
  /// positive definite matrices; if that fails too, numerical_error is thrown.
  template <class T>
  static block_statistics<T> evaluation(const Policy& policy, const deconv_core<T>& core) {
    block_statistics<T> running = running_statistics(core);
    if (!core.options().average_covariance || core.steps() == 0) return running;
    const std::vector<square_matrix<T>> cov = covariances(core);
    block_statistics<T> out{core.plan(), std::move(running.mean), {}};
    auto reports = inverse_sqrt(policy, cov, out.D, core.isqrt());
    for (std::size_t s = 0; s < reports.size(); ++s)
      if (reports[s].status != isqrt_status::ok) reports[s] = inverse_sqrt_exact(cov[s], out.D[s]);
    if (!all_ok(reports))
      throw numerical_error("netdeconv: the running covariance has no inverse square root:" + describe_failures(reports));
    return out;
  }

  // Conv and linear layers (weights as conv weights, (Cout, C/groups, kh, kw)).

  template <class T, class Source>
  static layer_step<T> step(const Policy& policy, deconv_core<T>& core, const Source& source,
                            const image_view<const T>& weight, const vector_view<const T>& bias) {
    auto stats = train(policy, core, source);
    auto folded = detail::folded(policy, stats, weight, bias);
    return {std::move(folded), std::move(stats)};
  }

  /// The writing form: the statistics a step folds, its reports (a frozen step, which has none,
  /// writes 0 iterations, residual NaN, ok) and W', b' into checked outputs.
  template <class T, class Source>
  static void step(const Policy& policy, deconv_core<T>& core, const Source& source, const image_view<const T>& weight,
                   const vector_view<const T>& bias, const statistics_step_outputs<T, 4>& out) {
    const block_statistics<T> stats = train(policy, core, source);
    store_statistics(stats, out.mean, out.D);
    const std::vector<isqrt_report>& reports = core.diagnostic().reports;
    for (index_t s = 0; s < out.reports.shape[0]; ++s)
      out.reports(s) = reports.empty() ? isqrt_report{0, std::numeric_limits<double>::quiet_NaN(), isqrt_status::ok}
                                       : reports[std::size_t(s)];
    fold_impl(policy, stats, weight, bias, out.weight, out.bias);
  }

  template <class T>
  static folded_weights<T> eval(const Policy& policy, const deconv_core<T>& core, const image_view<const T>& weight,
                                const vector_view<const T>& bias) {
    return detail::folded(policy, evaluation(policy, core), weight, bias);
  }

  template <class T>
  static void export_weights(const Policy& policy, const deconv_core<T>& core, const image_view<const T>& weight,
                             const vector_view<const T>& bias, const image_view<T>& weight_out,
                             const vector_view<T>& bias_out) {
    fold_impl(policy, evaluation(policy, core), weight, bias, weight_out, bias_out);
  }

  // The backward of a conv or linear step (statistics_step_vjp.hpp), arguments checked.

  template <class T>
  static void conv_backward(const Policy& policy, const deconv_core<T>& core, const image_view<const T>& x,
                            const image_view<const T>& weight, const conv_geometry& geometry, index_t sampling_stride,
                            const block_statistics_view<const T>& stats, const step_diagnostic& step, statistics_gradient mode,
                            const image_view<const T>& grad_weight, const vector_view<const T>& grad_bias,
                            const statistics_step_gradients<T, 4>& out) {
    conv_step_vjp(policy, x, weight, geometry, sampling_stride, core.plan(), stats, backward_rule(core, step, mode),
                  grad_weight, grad_bias, out);
  }

  template <class T>
  static void linear_backward(const Policy& policy, const deconv_core<T>& core, const matrix_view<const T>& x,
                              const matrix_view<const T>& weight, const block_statistics_view<const T>& stats,
                              const step_diagnostic& step, statistics_gradient mode, const matrix_view<const T>& grad_weight,
                              const vector_view<const T>& grad_bias, const statistics_step_gradients<T, 2>& out) {
    linear_step_vjp(policy, x, weight, core.plan(), stats, backward_rule(core, step, mode), grad_weight, grad_bias, out);
  }

  // The channel layer (channel_deconv_layer.hpp): x and y checked, y may be x.

  template <class T>
  static void channel_train(const Policy& policy, deconv_core<T>& core, const channel_spec& spec,
                            const image_view<const T>& x, const image_view<T>& y) {
    const running_state_view<T>& st = core.host_state("train_step");
    const scalar_stats<T> running = remaining_running(st);
    scalar_stats<T> batch = remaining_stats(spec, x, running);
    if (!std::isfinite(batch.mean) || !std::isfinite(batch.var) || !(double(batch.var) + spec.eps > 0)) {
      if (core.options().on_failure == failure_policy::throw_error)
        throw numerical_error("netdeconv: channel layer statistics failed: the remaining channels' mean "
                              "or variance is not finite, or variance + eps is 0");
      core.keep_previous_step();
      channel_apply(spec, x, y, evaluation(policy, core), running);
      return;
    }
    const auto stats = train(policy, core, make_channel_samples(spec, x));
    if (core.diagnostic().outcome == step_outcome::kept_previous) {
      batch = running;
    } else if (!st.remaining.empty()) {
      const T m = T(core.options().momentum);
      const bool copy = core.options().first_step_copy && st.counters(0) == 1;
      st.remaining(0) = copy ? batch.mean : (T(1) - m) * running.mean + m * batch.mean;
      st.remaining(1) = copy ? batch.var : (T(1) - m) * running.var + m * batch.var;
    }
    channel_apply(spec, x, y, stats, batch);
  }

  template <class T>
  static void channel_eval(const Policy& policy, const deconv_core<T>& core, const channel_spec& spec,
                           const image_view<const T>& x, const image_view<T>& y) {
    const scalar_stats<T> running = remaining_running(core.host_state("eval"));
    channel_apply(spec, x, y, evaluation(policy, core), running);
  }

 private:
  /// The rule of a step's backward: constants for a frozen or kept step (or when asked); else the
  /// layer's eps (trace-relative with relative_eps) and inverse square root. The steps that
  /// exact_fallback or raise_eps repaired are refused (invalid_argument): their backward is not
  /// written yet.
  template <class T>
  static statistics_backward backward_rule(const deconv_core<T>& core, const step_diagnostic& step, statistics_gradient mode) {
    NETDECONV_REQUIRE(step.outcome != step_outcome::exact_fallback && step.outcome != step_outcome::eps_raised, "backward",
                      "the backward of a step that ", step.outcome,
                      " repaired is not implemented; use keep_previous or throw_error, or statistics_gradient::constants");
    const bool constants = mode == statistics_gradient::constants || step.outcome == step_outcome::frozen ||
                           step.outcome == step_outcome::kept_previous;
    return {core.eps(), core.options().relative_eps, core.isqrt(), constants};
  }

  template <class T>
  struct scalar_stats {
    T mean = T(0), var = T(1);
  };

  template <class T>
  static scalar_stats<T> remaining_running(const running_state_view<T>& st) {
    return st.remaining.empty() ? scalar_stats<T>{} : scalar_stats<T>{st.remaining(0), st.remaining(1)};
  }

  /// Mean and unbiased variance of the remaining channels' sampled values (channel_samples.hpp),
  /// merged image by image in double; `unused` when every channel is whitened.
  template <class T>
  static scalar_stats<T> remaining_stats(const channel_spec& spec, const image_view<const T>& x,
                                         const scalar_stats<T>& unused) {
    if (spec.whitened == spec.channels) return unused;
    const index_t per_image = spec.remaining_per_image(x.shape);
    moments<double> m(1);
    Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> values(per_image, 1);
    for (index_t n = 0; n < x.shape[0]; ++n) {
      for (index_t k = 0; k < per_image; ++k) values(k, 0) = double(spec.remaining_value(x, n, k));
      m.add(values);
    }
    const double var = m.count() > 1 ? m.scatter()(0, 0) / double(m.count() - 1) : std::nan("");
    return {T(m.mean()[0]), T(var)};
  }

  /// y = D (x - mu) over the whitened channels' rows, (x - m) / sqrt(v + eps) over the others.
  template <class T>
  static void channel_apply(const channel_spec& spec, const image_view<const T>& x, const image_view<T>& y,
                            const block_statistics<T>& stats, const scalar_stats<T>& scalars) {
    const index_t B = spec.block, per_row = spec.per_row();
    const auto& D = stats.D[0];
    const auto& mu = stats.mean[0];
    const T inv_sd = T(1.0 / std::sqrt(double(scalars.var) + spec.eps));
    Eigen::Matrix<T, Eigen::Dynamic, 1> centred(B);
    for (index_t n = 0; n < x.shape[0]; ++n)
      for (index_t yy = 0; yy < x.shape[2]; ++yy)
        for (index_t xx = 0; xx < x.shape[3]; ++xx) {
          for (index_t cc = 0; cc < per_row; ++cc) {
            for (index_t g = 0; g < B; ++g) centred[g] = x(n, g * per_row + cc, yy, xx) - mu[g];
            for (index_t f = 0; f < B; ++f) y(n, f * per_row + cc, yy, xx) = D.row(f).dot(centred);
          }
          for (index_t c = spec.whitened; c < spec.channels; ++c)
            y(n, c, yy, xx) = (x(n, c, yy, xx) - scalars.mean) * inv_sd;
        }
  }

  static bool all_ok(const std::vector<isqrt_report>& reports) {
    for (const auto& r : reports)
      if (r.status != isqrt_status::ok) return false;
    return true;
  }
  template <class V>
  static bool all_finite(const std::vector<V>& v) {
    for (const auto& e : v)
      if (!e.allFinite()) return false;
    return true;
  }
  template <class M, class T>
  static void average(M& running, const M& value, bool copy, T m) {
    if (copy)
      running = value;
    else
      running = (T(1) - m) * running + m * value;
  }
  /// The running covariances of a host state (empty without average_covariance).
  template <class T>
  static std::vector<square_matrix<T>> covariances(const deconv_core<T>& core) {
    const running_state_view<T>& st = core.host_state("running");
    std::vector<square_matrix<T>> out;
    if (st.cov.empty()) return out;
    const index_t F = core.plan().features();
    for (index_t s = 0; s < core.plan().count(); ++s) {
      out.emplace_back(F, F);
      for (index_t i = 0; i < F; ++i)
        for (index_t j = 0; j < F; ++j) out.back()(i, j) = st.cov(s, i, j);
    }
    return out;
  }
  template <class T>
  static void store_covariances(const std::vector<square_matrix<T>>& cov, const tensor_view<T, 3>& out) {
    for (std::size_t s = 0; s < cov.size(); ++s)
      for (index_t i = 0; i < cov[s].rows(); ++i)
        for (index_t j = 0; j < cov[s].cols(); ++j) out(index_t(s), i, j) = cov[s](i, j);
  }
};

}  // namespace detail
}  // namespace netdeconv
