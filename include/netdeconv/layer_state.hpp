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
    const batch_statistics<T> measured = measure_batch<T>(policy, source, plan, core.uncentred(), core.reduction());
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
            if (diag.reports[s].status != isqrt_status::ok) {
              diag.reports[s] = inverse_sqrt_exact(cov[s], batch.D[s]);
              diag.exact_blocks.push_back(index_t(s));
            }
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
    const std::vector<isqrt_report> reports = core.diagnostic().reports;
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
    channel_step(policy, core, spec, x, y);
  }

  /// The same, writing the statistics the step used and its report (outputs checked).
  template <class T>
  static void channel_train(const Policy& policy, deconv_core<T>& core, const channel_spec& spec,
                            const image_view<const T>& x, const image_view<T>& y, const channel_statistics_view<T>& used,
                            const vector_view<isqrt_report>& reports) {
    const channel_used<T> u = channel_step(policy, core, spec, x, y);
    store_statistics(u.stats, used.mean, used.D);
    if (!used.remaining.empty()) used.remaining(0) = u.remaining.mean, used.remaining(1) = u.remaining.var;
    const std::vector<isqrt_report> r = core.diagnostic().reports;
    reports(0) = r.empty() ? isqrt_report{0, std::numeric_limits<double>::quiet_NaN(), isqrt_status::ok} : r[0];
  }

  /// The channel layer's backward (arguments checked; channel_deconv_layer.hpp):
  ///   direct:     dx = D^T dy over the whitened rows, dy / sqrt(v + eps) over the others
  ///   whitened:   dL/dD = sum dy (x - mu)^T, dL/dmu = -D^T sum dy (every position), then the
  ///               covariance's gradient scattered to the sampled rows (statistics_step_vjp.hpp;
  ///               the uncentred second moment differentiates as x_s x_s^T / n)
  ///   remaining:  dL/dm = -sum dy / sd, dL/dv = -sum dy (x - m) / (2 sd^3), sd = sqrt(v + eps);
  ///               every sampled value x_k gets dL/dm / K + dL/dv 2 (x_k - m) / (K - 1)
  template <class T>
  static void channel_backward(const Policy& policy, const deconv_core<T>& core, const channel_spec& spec,
                               const image_view<const T>& x, const channel_statistics_view<const T>& used,
                               const step_diagnostic& step, statistics_gradient mode, const image_view<const T>& dy,
                               const image_view<T>& dx, const vector_view<isqrt_report>& reports) {
    const statistics_backward how = backward_rule(core, step, mode);
    const block_statistics<T> stats = load_statistics(block_statistics_view<const T>{core.plan(), used.mean, used.D});
    const scalar_stats<T> scalars =
        used.remaining.empty() ? scalar_stats<T>{} : scalar_stats<T>{used.remaining(0), used.remaining(1)};
    const channel_sums sums = channel_direct_vjp(policy_threads(policy), spec, x, dy, stats, scalars, dx);
    if (how.constants) {
      reports(0) = {0, std::numeric_limits<double>::quiet_NaN(), isqrt_status::ok};
      return;
    }
    const square_matrix<double> D = stats.D[0].template cast<double>();
    const auto samples = make_channel_samples(spec, x);
    patch_gradient grad = covariance_vjp<Policy, T>(policy, samples, core.plan(), how, {sums.dD},
                                                    {Eigen::VectorXd(-(D.transpose() * sums.dy))}, reports);
    scatter_patch_gradient(policy, samples, core.plan(), grad, channel_row_adder<T>{samples, dx});
    if (spec.whitened == spec.channels) return;
    const index_t per_image = spec.remaining_per_image(x.shape), K = x.shape[0] * per_image;
    const double m = double(scalars.mean), sd = std::sqrt(double(scalars.var) + spec.eps);
    const double dm = -sums.remaining_dy / sd, dv = -sums.remaining_dyx / (2 * sd * sd * sd);
    const index_t H = x.shape[2], W = x.shape[3], stride = spec.step(x.shape);
    for (index_t n = 0; n < x.shape[0]; ++n)
      for (index_t k = 0; k < per_image; ++k) {
        const index_t e = k * stride, c = spec.whitened + e / (H * W), yy = (e / W) % H, xx = e % W;
        dx(n, c, yy, xx) += T(dm / double(K) + dv * 2 * (double(x(n, c, yy, xx)) - m) / double(K - 1));
      }
  }

  template <class T>
  static void channel_eval(const Policy& policy, const deconv_core<T>& core, const channel_spec& spec,
                           const image_view<const T>& x, const image_view<T>& y) {
    const scalar_stats<T> running = remaining_running(core.host_state("eval"));
    channel_apply(spec, x, y, evaluation(policy, core), running);
  }

 private:
  /// The rule of a step's backward: constants for a frozen or kept step (or when asked); else the
  /// layer's eps (trace-relative with relative_eps) and inverse square root, with eps times
  /// 10^eps_raises for a step that raise_eps repaired, and the true root's gradient for the
  /// statistics that exact_fallback recomputed.
  template <class T>
  static statistics_backward backward_rule(const deconv_core<T>& core, const step_diagnostic& step, statistics_gradient mode) {
    const bool constants = mode == statistics_gradient::constants || step.outcome == step_outcome::frozen ||
                           step.outcome == step_outcome::kept_previous;
    const double eps = step.outcome == step_outcome::eps_raised ? core.eps() * std::pow(10.0, step.eps_raises) : core.eps();
    statistics_backward how{.eps = eps, .relative_eps = core.options().relative_eps, .isqrt = core.isqrt(),
                            .constants = constants, .uncentred = core.uncentred(), .reduction = core.reduction()};
    if (step.outcome == step_outcome::exact_fallback) {
      for (const index_t s : step.exact_blocks)  // a diagnostic of another layer would index out of range
        NETDECONV_REQUIRE(s >= 0 && s < core.plan().count(), "backward", "the step's diagnostic names statistic ", s,
                          " (exact_fallback), this layer has ", core.plan().count(), ": pass this layer's own diagnostic()");
      how.exact_blocks = step.exact_blocks;
    }
    return how;
  }

  template <class T>
  struct scalar_stats {
    T mean = T(0), var = T(1);
  };

  /// What a channel step used: the whitened channels' statistics and the remaining ones'.
  template <class T>
  struct channel_used {
    block_statistics<T> stats;
    scalar_stats<T> remaining;
  };

  template <class T>
  static channel_used<T> channel_step(const Policy& policy, deconv_core<T>& core, const channel_spec& spec,
                                      const image_view<const T>& x, const image_view<T>& y) {
    const running_state_view<T>& st = core.host_state("train_step");
    const scalar_stats<T> running = remaining_running(st);
    scalar_stats<T> batch = remaining_stats(spec, x, running);
    if (!std::isfinite(batch.mean) || !std::isfinite(batch.var) || !(double(batch.var) + spec.eps > 0)) {
      if (core.options().on_failure == failure_policy::throw_error)
        throw numerical_error("netdeconv: channel layer statistics failed: the remaining channels' mean "
                              "or variance is not finite, or variance + eps is 0");
      core.keep_previous_step();
      channel_used<T> kept{evaluation(policy, core), running};
      channel_apply(spec, x, y, kept.stats, running);
      return kept;
    }
    channel_used<T> u{train(policy, core, make_channel_samples(spec, x)), batch};
    if (core.diagnostic().outcome == step_outcome::kept_previous) {
      u.remaining = running;
    } else if (!st.remaining.empty()) {
      const T m = T(core.options().momentum);
      const bool copy = core.options().first_step_copy && st.counters(0) == 1;
      st.remaining(0) = copy ? batch.mean : (T(1) - m) * running.mean + m * batch.mean;
      st.remaining(1) = copy ? batch.var : (T(1) - m) * running.var + m * batch.var;
    }
    channel_apply(spec, x, y, u.stats, u.remaining);
    return u;
  }

  /// The backward's sums over every position: dL/dD = sum dy (x - mu)^T and sum dy over the
  /// whitened rows, sum dy and sum dy (x - m) over the remaining channels; dx gets the direct part.
  /// Images run in parallel on `threads` threads, their sums added in thread order.
  struct channel_sums {
    square_matrix<double> dD;
    Eigen::VectorXd dy;
    double remaining_dy = 0, remaining_dyx = 0;
  };
  template <class T>
  static channel_sums channel_direct_vjp(int threads, const channel_spec& spec, const image_view<const T>& x,
                                         const image_view<const T>& dy, const block_statistics<T>& stats,
                                         const scalar_stats<T>& scalars, const image_view<T>& dx) {
    const index_t B = spec.block, per_row = spec.per_row();
    const square_matrix<double> D = stats.D[0].template cast<double>();
    const Eigen::VectorXd mu = stats.mean[0].template cast<double>();
    const double m = double(scalars.mean), inv_sd = 1.0 / std::sqrt(double(scalars.var) + spec.eps);
    std::vector<channel_sums> part(static_cast<std::size_t>(threads),
                                   channel_sums{square_matrix<double>::Zero(B, B), Eigen::VectorXd::Zero(B)});
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
      keep_eigen_in_thread();
      channel_sums& acc = part[std::size_t(this_team_position().thread)];
      Eigen::VectorXd xc(B), g(B), d(B);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (index_t n = 0; n < x.shape[0]; ++n)
        for (index_t yy = 0; yy < x.shape[2]; ++yy)
          for (index_t xx = 0; xx < x.shape[3]; ++xx) {
            for (index_t cc = 0; cc < per_row; ++cc) {
              for (index_t f = 0; f < B; ++f)
                xc[f] = double(x(n, f * per_row + cc, yy, xx)) - mu[f], g[f] = double(dy(n, f * per_row + cc, yy, xx));
              d.noalias() = D.transpose() * g;
              for (index_t f = 0; f < B; ++f) dx(n, f * per_row + cc, yy, xx) = T(d[f]);
              acc.dD.noalias() += g * xc.transpose();
              acc.dy += g;
            }
            for (index_t c = spec.whitened; c < spec.channels; ++c) {
              const double v = double(dy(n, c, yy, xx));
              dx(n, c, yy, xx) = T(v * inv_sd);
              acc.remaining_dy += v;
              acc.remaining_dyx += v * (double(x(n, c, yy, xx)) - m);
            }
          }
    }
    channel_sums total = part[0];
    for (std::size_t t = 1; t < part.size(); ++t) {
      total.dD += part[t].dD, total.dy += part[t].dy;
      total.remaining_dy += part[t].remaining_dy, total.remaining_dyx += part[t].remaining_dyx;
    }
    return total;
  }

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
