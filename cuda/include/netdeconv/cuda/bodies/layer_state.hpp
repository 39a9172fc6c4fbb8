// SPDX-License-Identifier: MIT
#pragma once
// What each thread of the CUDA layer kernels computes (../layer_state.cuh): the rule of
// netdeconv/layer_core.hpp decided and applied on the device, so that a step needs no host
// synchronisation. Plain C++ without nvcc (cuda/tests/emulator.hpp runs it on the host).

#include <cmath>

#include <netdeconv/channel_samples.hpp>
#include <netdeconv/config.hpp>
#include <netdeconv/isqrt_options.hpp>
#include <netdeconv/layer_core.hpp>
#include <netdeconv/statistics_view.hpp>
#include <netdeconv/tensor_view.hpp>

namespace netdeconv::cuda::detail {

/// What a step does, decided on the device from the counters and the reports (layer_decide).
struct layer_decision {
  int frozen;       ///< freeze && counter > freeze_iter: fold with the evaluation statistics
  int failed;       ///< not frozen, and the batch statistics failed (a report not ok, or the remaining channels')
  int use_batch;    ///< neither: fold with the batch statistics and average them into the running ones
  int copy;         ///< first_step_copy && steps == 0: the running statistics become the batch's
  int use_eval;     ///< average_covariance && steps > 0: evaluation takes D from the running covariance
  int eval_failed;  ///< evaluation statistics needed, and the running covariance's inverse square root failed
};

/// Whether a step with decision d (and a failure policy on_failure) changes the state.
NETDECONV_HOST_DEVICE inline bool commits(const layer_decision& d, failure_policy on_failure) {
  return !(d.failed && on_failure == failure_policy::throw_error);
}

/// Whether a step with these options may fold with the evaluation statistics, which then need
/// the running covariance's inverse square root (computed before layer_decide).
inline bool needs_evaluation(const layer_options& o) {
  return o.average_covariance && (o.freeze || o.on_failure == failure_policy::keep_previous);
}

/// One thread: the decision, and the counters' update (steps + 1, counter + 1 mod 10 freeze_iter,
/// failures + 1 on failure), unless the step fails under throw_error (the host then throws).
/// eval_reports: the running covariance's reports when the step computed them, else empty.
NETDECONV_HOST_DEVICE inline layer_decision layer_decide(const layer_options& o, const vector_view<index_t>& counters,
                                                         const vector_view<const isqrt_report>& reports,
                                                         const vector_view<const isqrt_report>& eval_reports,
                                                         bool remaining_failed) {
  const index_t steps = counters(0), counter = counters(1);
  bool ok = !remaining_failed;
  for (index_t s = 0; s < reports.shape[0]; ++s) ok = ok && reports(s).status == isqrt_status::ok;
  layer_decision d{};
  d.frozen = o.freeze && counter > o.freeze_iter;
  d.failed = !d.frozen && !ok;
  d.use_batch = !d.frozen && ok;
  d.copy = o.first_step_copy && steps == 0;
  d.use_eval = o.average_covariance && steps > 0;
  if (!d.use_batch && d.use_eval)
    for (index_t s = 0; s < eval_reports.shape[0]; ++s) d.eval_failed = d.eval_failed || eval_reports(s).status != isqrt_status::ok;
  if (commits(d, o.on_failure)) {
    counters(1) = (counter + 1) % (10 * o.freeze_iter);
    counters(0) = steps + 1;
    if (d.failed) counters(2) += 1;
  }
  return d;
}

/// r <- v (copy) or (1 - m) r + m v.
template <class T>
NETDECONV_HOST_DEVICE T running_average(T r, T v, bool copy, T m) {
  return copy ? v : (T(1) - m) * r + m * v;
}

/// Element (s, i, j) after layer_decide. mean (S, F) and D (S, F, F) hold the batch statistics;
/// cov the batch's regularised covariance, eval_D the running covariance's inverse square root
/// (when computed). With use_batch, the running statistics take their average with the batch's;
/// when frozen or failed (and not throwing), mean and D become the evaluation statistics, and
/// reports (S) those of a frozen step (0 iterations, residual NaN, ok) or of a failed evaluation.
template <class T>
NETDECONV_HOST_DEVICE void layer_update_element(const layer_decision& d, const layer_options& o,
                                                const running_state_view<T>& st, const matrix_view<T>& mean,
                                                const tensor_view<T, 3>& D, const tensor_view<const T, 3>& cov,
                                                const tensor_view<const T, 3>& eval_D,
                                                const vector_view<isqrt_report>& reports,
                                                const vector_view<const isqrt_report>& eval_reports, index_t s, index_t i,
                                                index_t j) {
  const T m = T(o.momentum);
  if (d.use_batch) {
    st.D(s, i, j) = running_average(st.D(s, i, j), D(s, i, j), d.copy, m);
    if (o.average_covariance) st.cov(s, i, j) = running_average(st.cov(s, i, j), cov(s, i, j), d.copy, m);
    if (i == j) st.mean(s, i) = running_average(st.mean(s, i), mean(s, i), d.copy, m);
    return;
  }
  if (!commits(d, o.on_failure)) return;
  D(s, i, j) = d.use_eval ? eval_D(s, i, j) : st.D(s, i, j);
  if (i == j) mean(s, i) = st.mean(s, i);
  if (i == 0 && j == 0 && !reports.empty()) {
    if (d.eval_failed)
      reports(s) = eval_reports(s);
    else if (d.frozen)
      reports(s) = isqrt_report{0, double(NAN), isqrt_status::ok};
  }
}

/// Element (s, i, j) of the layer's covariance: Cov0 = M_s/n (uncentred: + mu_s mu_s^T), plus
/// eps_s I with eps_s = eps, or eps tr(Cov0)/F (relative), in double, then converted to T; thread
/// (s, i, i) writes mean(s, i) = mu_i in T. As measure_batch and regularised on the CPU.
template <class T>
NETDECONV_HOST_DEVICE void layer_covariance_element(const moments_view<const double>& m, double eps, bool relative,
                                                    bool uncentred, const tensor_view<T, 3>& cov, const matrix_view<T>& mean,
                                                    index_t s, index_t i, index_t j) {
  const double n = double(m.count(s));
  const index_t F = cov.shape[1];
  const auto cov0 = [&](index_t a, index_t b) {
    return m.scatter(s, a, b) / n + (uncentred ? m.mean(s, a) * m.mean(s, b) : 0.0);
  };
  double e = eps;
  if (relative) {
    double trace = cov0(0, 0);
    for (index_t k = 1; k < F; ++k) trace += cov0(k, k);
    e = eps * trace / double(F);
  }
  cov(s, i, j) = static_cast<T>(cov0(i, j) + (i == j ? e : 0.0));
  if (i == j) mean(s, i) = static_cast<T>(m.mean(s, i));
}

/// Element (s, i, j) of the evaluation D (layer_state.cuh's evaluation): the running D before any
/// step, else eval_D (the running covariance's inverse square root), in place.
template <class T>
NETDECONV_HOST_DEVICE void evaluation_element(const running_state_view<T>& st, const tensor_view<T, 3>& eval_D, index_t s,
                                              index_t i, index_t j) {
  if (st.counters(0) == 0) eval_D(s, i, j) = st.D(s, i, j);
}

/// Thread tid of `threads`: sums of (v - shift) and (v - shift)^2 over its share of the remaining
/// channels' sampled values (channel_samples.hpp), value e = tid + k threads of N x per-image.
template <class T>
NETDECONV_HOST_DEVICE void remaining_partial(const netdeconv::detail::channel_spec& spec, const image_view<const T>& x,
                                             double shift, int tid, int threads, double& sum, double& squares) {
  const index_t per_image = spec.remaining_per_image(x.shape), total = x.shape[0] * per_image;
  sum = 0, squares = 0;
  for (index_t e = tid; e < total; e += threads) {
    const double v = double(spec.remaining_value(x, e / per_image, e % per_image)) - shift;
    sum += v;
    squares += v * v;
  }
}

/// From the total shifted sums of `count` values: batch[0] = the mean, batch[1] = the unbiased
/// variance, in T.
template <class T>
NETDECONV_HOST_DEVICE void remaining_finish(double shift, double sum, double squares, index_t count, T* batch) {
  const double n = double(count), mean = sum / n;
  batch[0] = static_cast<T>(shift + mean);
  batch[1] = static_cast<T>((squares - sum * mean) / (n - 1));
}

/// Whether the remaining channels' batch statistics fail (not finite, or variance + eps <= 0).
template <class T>
NETDECONV_HOST_DEVICE bool remaining_failed(const T* batch, double eps) {
  return !(std::isfinite(double(batch[0])) && std::isfinite(double(batch[1])) && double(batch[1]) + eps > 0);
}

/// After layer_decide (one thread): the running remaining statistics (2) take the batch's average
/// when the step uses the batch; apply (2) gets the scalars the step standardises with.
template <class T>
NETDECONV_HOST_DEVICE void remaining_update(const layer_decision& d, const layer_options& o, const vector_view<T>& running,
                                            const T* batch, T* apply) {
  for (int k = 0; k < 2; ++k) {
    apply[k] = d.use_batch ? batch[k] : running(k);
    if (d.use_batch) running(k) = running_average(running(k), batch[k], bool(d.copy), T(o.momentum));
  }
}

/// Element e of y (N, C, H, W in that order): whitened channel c = f per_row + cc is
/// sum_g D[f, g] (x[g per_row + cc] - mu[g]); a remaining one (x - m) / sqrt(v + eps) with
/// scalars = (m, v) (read only when C > c). y must not be x (elements read other channels).
template <class T>
NETDECONV_HOST_DEVICE void channel_apply_element(const netdeconv::detail::channel_spec& spec, const image_view<const T>& x,
                                                 const image_view<T>& y, const matrix_view<const T>& mu,
                                                 const tensor_view<const T, 3>& D, const vector_view<const T>& scalars,
                                                 index_t e) {
  const index_t C = x.shape[1], H = x.shape[2], W = x.shape[3];
  const index_t xx = e % W, yy = (e / W) % H, c = (e / (W * H)) % C, n = e / (W * H * C);
  if (c < spec.whitened) {
    const index_t per_row = spec.per_row(), f = c / per_row, cc = c % per_row;
    T v = T(0);
    for (index_t g = 0; g < spec.block; ++g) v += D(0, f, g) * (x(n, g * per_row + cc, yy, xx) - mu(0, g));
    y(n, c, yy, xx) = v;
  } else {
    const T inv_sd = T(1.0 / std::sqrt(double(scalars(1)) + spec.eps));
    y(n, c, yy, xx) = (x(n, c, yy, xx) - scalars(0)) * inv_sd;
  }
}

/// Element e of a state packed as [mean (S, F) | D (S, F, F) | cov (S, F, F) if any | remaining],
/// row-major, with its 3 counters: written into st (attach_state with a cuda_policy); thread 0
/// also writes the counters.
// The channel layer's backward (netdeconv/layer_state.hpp, channel_backward), with mu, D and the
// remaining channels' (m, v) the step used; positions of the whitened rows are (n, cc, y, x).

/// Element e (NCHW order) of the direct part of dL/dx: D^T dy over the whitened rows,
/// dy / sqrt(v + eps) over the remaining channels.
template <class T>
NETDECONV_HOST_DEVICE void channel_direct_vjp_element(const netdeconv::detail::channel_spec& spec, const image_view<const T>& dy,
                                                      const tensor_view<const T, 3>& D, const vector_view<const T>& scalars,
                                                      const image_view<T>& dx, index_t e) {
  const index_t C = dy.shape[1], H = dy.shape[2], W = dy.shape[3];
  const index_t xx = e % W, yy = (e / W) % H, c = (e / (W * H)) % C, n = e / (W * H * C);
  if (c < spec.whitened) {
    const index_t per_row = spec.per_row(), f = c / per_row, cc = c % per_row;
    T v = T(0);
    for (index_t g = 0; g < spec.block; ++g) v += D(0, g, f) * dy(n, g * per_row + cc, yy, xx);
    dx(n, c, yy, xx) = v;
  } else {
    dx(n, c, yy, xx) = static_cast<T>(double(dy(n, c, yy, xx)) / std::sqrt(double(scalars(1)) + spec.eps));
  }
}

/// dL/dD(i, j) = sum over the positions of dy_i (x_j - mu_j).
template <class T>
NETDECONV_HOST_DEVICE T channel_D_vjp_element(const netdeconv::detail::channel_spec& spec, const image_view<const T>& x,
                                              const image_view<const T>& dy, const matrix_view<const T>& mu, index_t i,
                                              index_t j) {
  const index_t per_row = spec.per_row();
  T v = T(0);
  for (index_t n = 0; n < x.shape[0]; ++n)
    for (index_t cc = 0; cc < per_row; ++cc)
      for (index_t yy = 0; yy < x.shape[2]; ++yy)
        for (index_t xx = 0; xx < x.shape[3]; ++xx)
          v += dy(n, i * per_row + cc, yy, xx) * (x(n, j * per_row + cc, yy, xx) - mu(0, j));
  return v;
}

/// sum over the positions of dy_i (dL/dmu = -D^T of it: weight_vjp_mean_element).
template <class T>
NETDECONV_HOST_DEVICE T channel_dy_sum_element(const netdeconv::detail::channel_spec& spec, const image_view<const T>& dy,
                                               index_t i) {
  const index_t per_row = spec.per_row();
  T v = T(0);
  for (index_t n = 0; n < dy.shape[0]; ++n)
    for (index_t cc = 0; cc < per_row; ++cc)
      for (index_t yy = 0; yy < dy.shape[2]; ++yy)
        for (index_t xx = 0; xx < dy.shape[3]; ++xx) v += dy(n, i * per_row + cc, yy, xx);
  return v;
}

/// Thread tid's part (of `threads`) of sum dy and sum dy (x - m) over every position of the
/// remaining channels.
template <class T>
NETDECONV_HOST_DEVICE void channel_remaining_vjp_partial(const netdeconv::detail::channel_spec& spec, const image_view<const T>& x,
                                                         const image_view<const T>& dy, double m, int tid, int threads,
                                                         double& sum_dy, double& sum_dyx) {
  const index_t H = x.shape[2], W = x.shape[3], R = spec.channels - spec.whitened, total = x.shape[0] * R * H * W;
  sum_dy = 0, sum_dyx = 0;
  for (index_t e = tid; e < total; e += threads) {
    const index_t n = e / (R * H * W), c = spec.whitened + e / (H * W) % R, yy = e / W % H, xx = e % W;
    const double g = double(dy(n, c, yy, xx));
    sum_dy += g;
    sum_dyx += g * (double(x(n, c, yy, xx)) - m);
  }
}

/// Sampled value e (image e / K_n, value e % K_n of remaining_value) of the remaining channels gets
/// dL/dm / K + dL/dv 2 (x - m) / (K - 1), with dL/dm = -sum dy / sd, dL/dv = -sum dy (x - m) / (2 sd^3),
/// sd = sqrt(v + eps), K the sampled values of the batch; sums = (sum dy, sum dy (x - m)).
template <class T>
NETDECONV_HOST_DEVICE void channel_remaining_vjp_element(const netdeconv::detail::channel_spec& spec, const image_view<const T>& x,
                                                         const vector_view<const T>& scalars, const double* sums,
                                                         const image_view<T>& dx, index_t e) {
  const index_t per_image = spec.remaining_per_image(x.shape), K = x.shape[0] * per_image, H = x.shape[2], W = x.shape[3];
  const double m = double(scalars(0)), sd = std::sqrt(double(scalars(1)) + spec.eps);
  const double dm = -sums[0] / sd, dv = -sums[1] / (2 * sd * sd * sd);
  const index_t n = e / per_image, at = e % per_image * spec.step(x.shape);
  const index_t c = spec.whitened + at / (H * W), yy = (at / W) % H, xx = at % W;
  dx(n, c, yy, xx) += static_cast<T>(dm / double(K) + dv * 2 * (double(x(n, c, yy, xx)) - m) / double(K - 1));
}

template <class T>
NETDECONV_HOST_DEVICE void state_unpack_element(const T* packed, const index_t* counters, const running_state_view<T>& st,
                                                index_t e) {
  const index_t S = st.mean.shape[0], F = st.mean.shape[1], means = S * F, matrices = S * F * F;
  if (e == 0)
    for (index_t k = 0; k < 3; ++k) st.counters(k) = counters[k];
  if (e < means) {
    st.mean(e / F, e % F) = packed[e];
    return;
  }
  e -= means;
  if (e < matrices) {
    st.D(e / (F * F), (e / F) % F, e % F) = packed[means + e];
    return;
  }
  e -= matrices;
  if (!st.cov.empty()) {
    if (e < matrices) {
      st.cov(e / (F * F), (e / F) % F, e % F) = packed[means + matrices + e];
      return;
    }
    e -= matrices;
  }
  if (!st.remaining.empty() && e < st.remaining.shape[0]) st.remaining(e) = packed[means + matrices * (st.cov.empty() ? 1 : 2) + e];
}

}  // namespace netdeconv::cuda::detail
