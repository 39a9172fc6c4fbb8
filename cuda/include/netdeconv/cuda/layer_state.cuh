// SPDX-License-Identifier: MIT
#pragma once
// The layers on the GPU: detail::layer_backend<cuda_policy>, so that the conv, linear and channel
// layers' calls take a cuda_policy (netdeconv/layer_core.hpp has the rule). Include this instead of
// the CPU step in a translation unit that nvcc compiles; the layer headers are Eigen-free there.
//
//   netdeconv::conv_deconv_layer<float> layer(C, cfg, options);
//   layer.attach_state(policy, state);        // running_state_view over device memory (copied there once)
//   layer.train_step(policy, x, w, b, out);   // statistics_step_outputs in device memory
//   layer.export_weights(policy, w, b, w_out, b_out);
//   channel.train_step(policy, x, y);  channel.eval(policy, x, y);
//   layer.backward(policy, x, w, b, stats, {}, dW_folded, db_folded, grads);   // after its step ({}: not read)
//
// The state lives in device memory (attach_state with the policy first); the step decides there
// what the CPU decides on the host, so a step only enqueues work on policy.stream:
//   block_moments -> layer covariance (eps or trace-relative eps, centred or uncentred)
//   -> inverse_sqrt (-> inverse_sqrt of the running covariance, when average_covariance and a step
//      may need the evaluation statistics: freeze or keep_previous)
//   -> layer_decide (one thread: frozen / failed / use the batch; the counters)
//   -> layer_update (running averages, or the evaluation statistics into the outputs) -> fold or apply
// Differences from the CPU, all from not reading the device on the host:
//   - failure_policy::throw_error synchronises the stream once per step to read the decision, and
//     throws numerical_error after the outputs were written (with the failed batch's statistics);
//     the state is unchanged, as on the CPU. keep_previous never synchronises.
//   - exact_fallback and raise_eps are refused (invalid_argument): they need the host.
//   - a frozen step still computes the batch statistics (whether it is frozen is read on the device).
//   - when the running covariance has no Newton-Schulz inverse square root (there is no exact
//     fallback), a step that needs it writes its reports into out.reports; export_weights and
//     eval with average_covariance synchronise to read them and throw numerical_error.
//   - the attached state is not validated on each call (that would need a copy to the host);
//     the host accessors (running(), steps(), state(), load_state ...) refuse a device state.
//   - outputs may not overlap inputs: export_weights is not in place, and the channel layer's y
//     may not be x.
//   - the backward (statistics_step_vjp.cuh, and for the channel layer the direct part first)
//     reads the latest step's decision from a device word the layer keeps (attach_state allocates
//     it, every step writes it), not the host `step` argument: a frozen or kept step's statistics
//     are constants there. Run a step's backward before the layer's next step.
// Scratch: policy.workspace when it is set (too small: invalid_argument with the size needed),
// else stream-ordered allocations.

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include <netdeconv/channel_deconv_layer.hpp>
#include <netdeconv/channel_samples.hpp>
#include <netdeconv/checks.hpp>
#include <netdeconv/conv_deconv_layer.hpp>
#include <netdeconv/layer_core.hpp>
#include <netdeconv/linear_deconv_layer.hpp>
#include <netdeconv/statistics_step_config.hpp>
#include <netdeconv/statistics_view.hpp>

#include "bodies/layer_state.hpp"
#include "covariance.cuh"
#include "execution.cuh"
#include "fold.cuh"
#include "inverse_sqrt.cuh"
#include "statistics_step_vjp.cuh"

namespace netdeconv {
namespace cuda::detail {

/// Grid-stride loop over `count` elements (s, i, j) of (S, F, F).
#define NETDECONV_FOR_ELEMENTS(count) \
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < (count); e += (long long)gridDim.x * blockDim.x)

/// One thread: layer_decide, and for the channel layer (batch_scalars not null) remaining_update.
template <class T>
__global__ void layer_decide_kernel(layer_options o, vector_view<index_t> counters, vector_view<const isqrt_report> reports,
                                    vector_view<const isqrt_report> eval_reports, const T* batch_scalars, double eps,
                                    vector_view<T> running_remaining, T* apply_scalars, layer_decision* out) {
  const bool remaining = batch_scalars != nullptr && !running_remaining.empty();
  const layer_decision d = layer_decide(o, counters, reports, eval_reports, remaining && remaining_failed(batch_scalars, eps));
  if (remaining && commits(d, o.on_failure)) remaining_update(d, o, running_remaining, batch_scalars, apply_scalars);
  *out = d;
}

template <class T>
__global__ void layer_update_kernel(const layer_decision* decision, layer_options o, running_state_view<T> st,
                                    matrix_view<T> mean, tensor_view<T, 3> D, tensor_view<const T, 3> cov,
                                    tensor_view<const T, 3> eval_D, vector_view<isqrt_report> reports,
                                    vector_view<const isqrt_report> eval_reports, long long count) {
  const layer_decision d = *decision;
  const long long F = D.shape[1];
  NETDECONV_FOR_ELEMENTS(count)
  layer_update_element(d, o, st, mean, D, cov, eval_D, reports, eval_reports, e / (F * F), (e / F) % F, e % F);
}

template <class T>
__global__ void evaluation_kernel(running_state_view<T> st, tensor_view<T, 3> eval_D, long long count) {
  const long long F = eval_D.shape[1];
  NETDECONV_FOR_ELEMENTS(count) evaluation_element(st, eval_D, e / (F * F), (e / F) % F, e % F);
}

inline constexpr int remaining_threads = 256;

/// One block: the remaining channels' batch mean and variance into batch (2).
template <class T>
__global__ void __launch_bounds__(remaining_threads) remaining_kernel(::netdeconv::detail::channel_spec spec,
                                                                      image_view<const T> x, T* batch) {
  __shared__ double sums[remaining_threads], squares[remaining_threads];
  const double shift = double(spec.remaining_value(x, 0, 0));
  const int tid = int(threadIdx.x);
  remaining_partial(spec, x, shift, tid, remaining_threads, sums[tid], squares[tid]);
  __syncthreads();
  for (int s = remaining_threads / 2; s > 0; s /= 2) {
    if (tid < s) {
      sums[tid] += sums[tid + s];
      squares[tid] += squares[tid + s];
    }
    __syncthreads();
  }
  if (tid == 0) remaining_finish(shift, sums[0], squares[0], x.shape[0] * spec.remaining_per_image(x.shape), batch);
}

template <class T>
__global__ void channel_apply_kernel(::netdeconv::detail::channel_spec spec, image_view<const T> x, image_view<T> y,
                                     matrix_view<const T> mu, tensor_view<const T, 3> D, vector_view<const T> scalars,
                                     long long count) {
  NETDECONV_FOR_ELEMENTS(count) channel_apply_element(spec, x, y, mu, D, scalars, e);
}

template <class T>
__global__ void state_unpack_kernel(const T* packed, const index_t* counters, running_state_view<T> st, long long count) {
  NETDECONV_FOR_ELEMENTS(count) state_unpack_element(packed, counters, st, e);
}

template <class T>
__global__ void channel_direct_vjp_kernel(::netdeconv::detail::channel_spec spec, image_view<const T> dy, tensor_view<const T, 3> D,
                                          vector_view<const T> scalars, image_view<T> dx, long long count) {
  NETDECONV_FOR_ELEMENTS(count) channel_direct_vjp_element(spec, dy, D, scalars, dx, e);
}

template <class T>
__global__ void channel_sums_vjp_kernel(::netdeconv::detail::channel_spec spec, image_view<const T> x, image_view<const T> dy,
                                        matrix_view<const T> mu, tensor_view<T, 3> dD, matrix_view<T> dy_sum, long long count) {
  const long long B = spec.block;
  NETDECONV_FOR_ELEMENTS(count) {
    dD(0, e / B, e % B) = channel_D_vjp_element(spec, x, dy, mu, e / B, e % B);
    if (e % B == 0) dy_sum(0, e / B) = channel_dy_sum_element(spec, dy, e / B);
  }
}

/// One block: the remaining channels' (sum dy, sum dy (x - m)) into sums (the remaining_kernel's reduction).
template <class T>
__global__ void __launch_bounds__(remaining_threads) channel_remaining_vjp_kernel(::netdeconv::detail::channel_spec spec,
                                                                                  image_view<const T> x, image_view<const T> dy,
                                                                                  vector_view<const T> scalars, double* sums) {
  __shared__ double a[remaining_threads], b[remaining_threads];
  const int tid = int(threadIdx.x);
  channel_remaining_vjp_partial(spec, x, dy, double(scalars(0)), tid, remaining_threads, a[tid], b[tid]);
  __syncthreads();
  for (int s = remaining_threads / 2; s > 0; s /= 2) {
    if (tid < s) {
      a[tid] += a[tid + s];
      b[tid] += b[tid + s];
    }
    __syncthreads();
  }
  if (tid == 0) sums[0] = a[0], sums[1] = b[0];
}

template <class T>
__global__ void channel_remaining_scatter_kernel(::netdeconv::detail::channel_spec spec, image_view<const T> x,
                                                 vector_view<const T> scalars, const double* sums, image_view<T> dx,
                                                 const int* keep, long long count) {
  if (*keep == 0) return;
  NETDECONV_FOR_ELEMENTS(count) channel_remaining_vjp_element(spec, x, scalars, sums, dx, e);
}

#undef NETDECONV_FOR_ELEMENTS

/// Scratch of a layer call, in this order: moments [count | mean | scatter]; the batch covariance,
/// the batch D and the evaluation D (S, F, F of T each); the batch mean (S, F); the batch and the
/// evaluation reports (S each); the decision; 4 scalars (the channel layer's batch and applied
/// mean and variance); then what block_moments and inverse_sqrt need.
template <class T>
struct layer_layout {
  std::size_t count, mean, scatter, cov, D, eval_D, batch_mean, reports, eval_reports, decision, scalars, inner, total;
  layer_layout(const cuda_policy& policy, const block_plan& p, std::size_t moments_workspace) {
    const std::size_t S = std::size_t(p.count()), F = std::size_t(p.features());
    count = align_up(sizeof(index_t) * S);
    mean = align_up(sizeof(double) * S * F);
    scatter = align_up(sizeof(double) * S * F * F);
    cov = D = eval_D = align_up(sizeof(T) * S * F * F);
    batch_mean = align_up(sizeof(T) * S * F);
    reports = eval_reports = align_up(sizeof(isqrt_report) * S);
    decision = align_up(sizeof(layer_decision));
    scalars = align_up(sizeof(T) * 4);
    inner = align_up(std::max(moments_workspace, inverse_sqrt_workspace<T>(policy, p.count(), p.features())));
    total = count + mean + scatter + cov + D + eval_D + batch_mean + reports + eval_reports + decision + scalars + inner;
  }
};

/// The scratch of one layer call as views.
template <class T>
struct layer_scratch {
  moments_view<double> m;
  tensor_view<T, 3> cov, D, eval_D;
  matrix_view<T> mean;
  vector_view<isqrt_report> reports, eval_reports;
  layer_decision* decision;
  T* scalars;
  cuda_policy inner;

  layer_scratch(const cuda_policy& policy, const scratch& ws, const layer_layout<T>& l, const block_plan& p) {
    const index_t S = p.count(), F = p.features();
    std::size_t at = 0;
    const auto next = [&](std::size_t bytes) { return (at += bytes) - bytes; };
    const std::size_t c = next(l.count), mu = next(l.mean), sc = next(l.scatter);
    m = contiguous_moments<double>(ws.at<index_t>(c), ws.at<double>(mu), ws.at<double>(sc), S, F);
    cov = {ws.at<T>(next(l.cov)), {S, F, F}, {F * F, F, 1}};
    D = {ws.at<T>(next(l.D)), {S, F, F}, {F * F, F, 1}};
    eval_D = {ws.at<T>(next(l.eval_D)), {S, F, F}, {F * F, F, 1}};
    mean = {ws.at<T>(next(l.batch_mean)), {S, F}, {F, 1}};
    reports = {ws.at<isqrt_report>(next(l.reports)), {S}, {1}};
    eval_reports = {ws.at<isqrt_report>(next(l.eval_reports)), {S}, {1}};
    decision = ws.at<layer_decision>(next(l.decision));
    scalars = ws.at<T>(next(l.scalars));
    inner = with_workspace(policy, ws.at<char>(next(l.inner)), l.inner);
  }
};

/// The layer's device state, with the options CUDA supports (no statistics_reduction).
template <class T>
const running_state_view<T>& check_layer(const char* fn, const ::netdeconv::detail::deconv_core<T>& core) {
  const running_state_view<T>& st = core.device_state(fn);
  const failure_policy f = core.options().on_failure;
  NETDECONV_REQUIRE(f == failure_policy::throw_error || f == failure_policy::keep_previous, fn,
                    "on_failure exact_fallback and raise_eps need the host; a cuda_policy layer takes throw_error or "
                    "keep_previous");
  NETDECONV_REQUIRE(core.reduction() == nullptr, fn,
                    "a layer with a statistics_reduction (data-parallel sync) steps with the CPU policies only");
  return st;
}

/// The reports of a view in device memory, on the host (synchronises).
inline std::vector<isqrt_report> read_reports(const cuda_policy& policy, const vector_view<const isqrt_report>& reports) {
  std::vector<isqrt_report> host(std::size_t(reports.shape[0]));
  for (index_t s = 0; s < reports.shape[0]; ++s)
    NETDECONV_CUDA_CHECK(cudaMemcpyAsync(&host[std::size_t(s)], &reports(s), sizeof(isqrt_report), cudaMemcpyDeviceToHost,
                                         policy.stream));
  NETDECONV_CUDA_CHECK(cudaStreamSynchronize(policy.stream));
  return host;
}

/// The training statistics of a step (see file comment) into mean, D, reports, then the decision
/// and the update. batch_scalars: the channel layer's remaining statistics (device), else null.
template <class T, class Source>
void train_statistics(const ::netdeconv::detail::deconv_core<T>& core, const Source& source, const layer_scratch<T>& w,
                      const matrix_view<T>& mean, const tensor_view<T, 3>& D, const vector_view<isqrt_report>& reports,
                      const T* batch_scalars) {
  const running_state_view<T>& st = core.device_state("train_step");
  const layer_options& o = core.options();
  const block_plan& p = core.plan();
  const cudaStream_t stream = w.inner.stream;
  const long long count = p.count() * p.features() * p.features();
  ::netdeconv::block_moments(w.inner, source, p, w.m);
  layer_covariance_kernel<T><<<grid_for(count, 256), 256, 0, stream>>>(moments_view<const double>(w.m), core.eps(),
                                                                        o.relative_eps, core.uncentred(), w.cov, mean, count);
  NETDECONV_CUDA_CHECK_LAUNCH("layer_covariance_kernel");
  ::netdeconv::inverse_sqrt(w.inner, tensor_view<const T, 3>(w.cov), D, core.isqrt(), reports);
  vector_view<const isqrt_report> eval_reports{};
  if (needs_evaluation(o)) {
    ::netdeconv::inverse_sqrt(w.inner, tensor_view<const T, 3>(st.cov), w.eval_D, core.isqrt(), w.eval_reports);
    eval_reports = w.eval_reports;
  }
  layer_decide_kernel<T><<<1, 1, 0, stream>>>(o, st.counters, vector_view<const isqrt_report>(reports), eval_reports,
                                               batch_scalars, core.eps(), st.remaining, w.scalars + 2, w.decision);
  NETDECONV_CUDA_CHECK_LAUNCH("layer_decide_kernel");
  layer_update_kernel<T><<<grid_for(count, 256), 256, 0, stream>>>(w.decision, o, st, mean, D, tensor_view<const T, 3>(w.cov),
                                                                    tensor_view<const T, 3>(w.eval_D), reports, eval_reports,
                                                                    count);
  NETDECONV_CUDA_CHECK_LAUNCH("layer_update_kernel");
}

/// throw_error: synchronises and throws numerical_error when the step failed (the state is unchanged).
template <class T>
void raise_failure(const ::netdeconv::detail::deconv_core<T>& core, const layer_scratch<T>& w,
                   const vector_view<const isqrt_report>& reports, bool channel) {
  if (core.options().on_failure != failure_policy::throw_error) return;
  const cudaStream_t stream = w.inner.stream;
  layer_decision d{};
  T batch[2] = {};
  NETDECONV_CUDA_CHECK(cudaMemcpyAsync(&d, w.decision, sizeof d, cudaMemcpyDeviceToHost, stream));
  if (channel) NETDECONV_CUDA_CHECK(cudaMemcpyAsync(batch, w.scalars, sizeof batch, cudaMemcpyDeviceToHost, stream));
  NETDECONV_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (channel && !core.device_state("train_step").remaining.empty() && remaining_failed(batch, core.eps()))
    throw numerical_error("netdeconv: channel layer statistics failed: the remaining channels' mean "
                          "or variance is not finite, or variance + eps is 0");
  if (d.failed)
    throw numerical_error("netdeconv: layer statistics failed:" +
                          ::netdeconv::detail::describe_failures(read_reports(w.inner, reports)));
  if (d.eval_failed)
    throw numerical_error("netdeconv: the running covariance has no inverse square root:" +
                          ::netdeconv::detail::describe_failures(read_reports(w.inner, w.eval_reports)));
}

/// The evaluation D with average_covariance: the running covariance's inverse square root (or,
/// before any step, the running D) into w.eval_D.
template <class T>
tensor_view<const T, 3> evaluation_D(const ::netdeconv::detail::deconv_core<T>& core, const layer_scratch<T>& w) {
  const running_state_view<T>& st = core.device_state("eval");
  const long long count = core.plan().count() * core.plan().features() * core.plan().features();
  ::netdeconv::inverse_sqrt(w.inner, tensor_view<const T, 3>(st.cov), w.eval_D, core.isqrt(), w.eval_reports);
  evaluation_kernel<T><<<grid_for(count, 256), 256, 0, w.inner.stream>>>(st, w.eval_D, count);
  NETDECONV_CUDA_CHECK_LAUNCH("evaluation_kernel");
  return w.eval_D;
}

/// After evaluation_D: synchronises, and throws numerical_error when a step has been taken and
/// the running covariance has no inverse square root.
template <class T>
void check_evaluation(const ::netdeconv::detail::deconv_core<T>& core, const layer_scratch<T>& w) {
  index_t steps = 0;
  NETDECONV_CUDA_CHECK(cudaMemcpyAsync(&steps, &core.device_state("eval").counters(0), sizeof steps, cudaMemcpyDeviceToHost,
                                       w.inner.stream));
  const std::vector<isqrt_report> reports = read_reports(w.inner, w.eval_reports);
  const std::string failures = ::netdeconv::detail::describe_failures(reports);
  if (steps > 0 && !failures.empty())
    throw numerical_error("netdeconv: the running covariance has no inverse square root:" + failures);
}

template <class T>
void check_state_memory(const char* fn, const running_state_view<T>& st) {
  check_device_memory(fn, "mean", st.mean);
  check_device_memory(fn, "D", st.D);
  check_device_memory(fn, "cov", st.cov);
  check_device_memory(fn, "counters", st.counters);
  check_device_memory(fn, "remaining", st.remaining);
}

/// Scratch of the channel layer's backward: dL/dD (1, B, B), sum dy and dL/dmu (1, B), all T,
/// the remaining channels' two sums (double), then covariance_backward's.
template <class T>
struct channel_vjp_layout {
  std::size_t matrix, vec, sums, backward, total;
  channel_vjp_layout(const cuda_policy& policy, const ::netdeconv::detail::channel_samples<T>& samples, const block_plan& p) {
    const std::size_t B = std::size_t(p.features());
    matrix = align_up(sizeof(T) * B * B);
    vec = align_up(sizeof(T) * B);
    sums = align_up(sizeof(double) * 2);
    backward = backward_layout<T>(policy, samples, p).total;
    total = matrix + 2 * vec + sums + backward;
  }
};

/// The layer's last step decision, in device memory (attach allocates it, every step writes it,
/// the backward reads its use_batch: whether the step folded the batch's statistics).
template <class T>
const int* step_used_batch(const ::netdeconv::detail::deconv_core<T>& core) {
  return &static_cast<const layer_decision*>(core.backend_memory())->use_batch;
}

template <class T>
void keep_decision(const ::netdeconv::detail::deconv_core<T>& core, const layer_scratch<T>& w) {
  NETDECONV_CUDA_CHECK(cudaMemcpyAsync(core.backend_memory(), w.decision, sizeof(layer_decision), cudaMemcpyDeviceToDevice,
                                       w.inner.stream));
}

/// What a layer's backward differentiates (the CUDA layers take throw_error or keep_previous only).
template <class T>
backward_rule layer_backward_rule(const ::netdeconv::detail::deconv_core<T>& core) {
  return {core.eps(), core.options().relative_eps, core.uncentred(), core.isqrt()};
}

}  // namespace cuda::detail

namespace detail {

template <>
struct layer_backend<cuda_policy, void> {
  /// Copies the (host) state into `state` in device memory and keeps it there (synchronises).
  template <class T>
  static void attach(const cuda_policy& policy, deconv_core<T>& core, const running_state_view<T>& state) {
    constexpr const char* fn = "attach_state";
    core.check_attachable(fn, state);
    cuda::detail::check_state_memory(fn, state);
    const running_state_view<T>& host = core.host_state(fn);
    const index_t S = core.plan().count(), F = core.plan().features();
    const index_t remaining = host.remaining.empty() ? 0 : host.remaining.shape[0];
    std::vector<T> packed;
    for (index_t s = 0; s < S; ++s)
      for (index_t i = 0; i < F; ++i) packed.push_back(host.mean(s, i));
    for (const tensor_view<T, 3>* m : {&host.D, &host.cov})
      if (!m->empty())
        for (index_t s = 0; s < S; ++s)
          for (index_t i = 0; i < F; ++i)
            for (index_t j = 0; j < F; ++j) packed.push_back((*m)(s, i, j));
    for (index_t k = 0; k < remaining; ++k) packed.push_back(host.remaining(k));
    const index_t counters[3] = {host.counters(0), host.counters(1), host.counters(2)};
    const std::size_t bytes = cuda::detail::align_up(sizeof(T) * packed.size());
    cuda::detail::scratch ws(policy, bytes + sizeof counters, fn);
    NETDECONV_CUDA_CHECK(cudaMemcpyAsync(ws.at<T>(0), packed.data(), sizeof(T) * packed.size(), cudaMemcpyHostToDevice,
                                         policy.stream));
    NETDECONV_CUDA_CHECK(cudaMemcpyAsync(ws.at<index_t>(bytes), counters, sizeof counters, cudaMemcpyHostToDevice, policy.stream));
    const long long count = (long long)packed.size();
    cuda::detail::state_unpack_kernel<T><<<cuda::detail::grid_for(count, 256), 256, 0, policy.stream>>>(
        ws.at<const T>(0), ws.at<const index_t>(bytes), state, count);
    NETDECONV_CUDA_CHECK_LAUNCH("state_unpack_kernel");
    if (core.backend_memory() == nullptr) {
      void* decision = nullptr;
      NETDECONV_CUDA_CHECK(cudaMalloc(&decision, sizeof(cuda::detail::layer_decision)));
      core.keep_backend_memory(std::shared_ptr<void>(decision, [](void* p) { (void)cudaFree(p); }));
    }
    NETDECONV_CUDA_CHECK(cudaMemsetAsync(core.backend_memory(), 0, sizeof(cuda::detail::layer_decision), policy.stream));
    NETDECONV_CUDA_CHECK(cudaStreamSynchronize(policy.stream));  // `packed` is freed on return
    core.attach_device(state);
  }

  /// A conv or linear training step into out (device memory; see the file comment).
  template <class T, class Source>
  static void step(const cuda_policy& policy, deconv_core<T>& core, const Source& source, const image_view<const T>& weight,
                   const vector_view<const T>& bias, const statistics_step_outputs<T, 4>& out) {
    namespace d = cuda::detail;
    constexpr const char* fn = "train_step";
    d::check_layer(fn, core);
    d::check_source_memory(fn, source);
    d::check_device_memory(fn, "weight", weight);
    d::check_device_memory(fn, "bias", bias);
    d::check_device_memory(fn, "out.mean", out.mean);
    d::check_device_memory(fn, "out.D", out.D);
    d::check_device_memory(fn, "out.weight", out.weight);
    d::check_device_memory(fn, "out.bias", out.bias);
    d::check_device_memory(fn, "out.reports", out.reports);
    check_block_moments(fn, source, core.plan());
    const d::layer_layout<T> l(policy, core.plan(), block_moments_workspace(policy, source, core.plan()));
    const d::scratch ws(policy, l.total, fn);
    const d::layer_scratch<T> w(policy, ws, l, core.plan());
    d::train_statistics(core, source, w, out.mean, out.D, out.reports, static_cast<const T*>(nullptr));
    d::keep_decision(core, w);
    ::netdeconv::fold(policy, block_statistics_view<const T>{core.plan(), out.mean, out.D}, weight, bias, out.weight,
                      out.bias);
    d::raise_failure(core, w, vector_view<const isqrt_report>(out.reports), false);
  }

  /// The backward of a conv or linear step (statistics_step_vjp.cuh): the step's outcome is read
  /// on the device (step_used_batch), so `step` is not; a frozen or kept step, or mode constants,
  /// treats mu and D as constants.
  template <class T>
  static void conv_backward(const cuda_policy& policy, const deconv_core<T>& core, const image_view<const T>& x,
                            const image_view<const T>& weight, const conv_geometry& geometry, index_t sampling_stride,
                            const block_statistics_view<const T>& stats, const step_diagnostic&, statistics_gradient mode,
                            const image_view<const T>& grad_weight, const vector_view<const T>& grad_bias,
                            const statistics_step_gradients<T, 4>& out) {
    namespace d = cuda::detail;
    constexpr const char* fn = "backward";
    d::check_layer(fn, core);
    d::check_vjp_memory(fn, x, weight, {}, stats, grad_weight, grad_bias, out);
    const patch_sampler<T> source(x, geometry, sampling_stride);
    check_block_moments(fn, source, core.plan());
    const patch_map map = make_patch_map(fn, x.shape, geometry, sampling_stride, true);
    d::statistics_step_vjp(policy, source, d::weight_inputs(stats, weight, grad_weight, grad_bias), d::layer_backward_rule(core),
                           out, out.weight, d::patch_target<T>{map, out.x}, mode == statistics_gradient::constants,
                           d::step_used_batch(core));
  }

  template <class T>
  static void linear_backward(const cuda_policy& policy, const deconv_core<T>& core, const matrix_view<const T>& x,
                              const matrix_view<const T>& weight, const block_statistics_view<const T>& stats,
                              const step_diagnostic&, statistics_gradient mode, const matrix_view<const T>& grad_weight,
                              const vector_view<const T>& grad_bias, const statistics_step_gradients<T, 2>& out) {
    namespace d = cuda::detail;
    constexpr const char* fn = "backward";
    d::check_layer(fn, core);
    d::check_vjp_memory(fn, x, as_conv_weight(weight), {}, stats, as_conv_weight(grad_weight), grad_bias, out);
    const matrix_rows<T> source(x);
    check_block_moments(fn, source, core.plan());
    d::statistics_step_vjp(policy, source, d::weight_inputs(stats, as_conv_weight(weight), as_conv_weight(grad_weight), grad_bias),
                           d::layer_backward_rule(core), out, as_conv_weight(out.weight), d::row_target<T>{out.x},
                           mode == statistics_gradient::constants, d::step_used_batch(core));
  }

  /// eval()'s W' and b' into the caller's device tensors; synchronises with average_covariance.
  template <class T>
  static void export_weights(const cuda_policy& policy, const deconv_core<T>& core, const image_view<const T>& weight,
                             const vector_view<const T>& bias, const image_view<T>& weight_out,
                             const vector_view<T>& bias_out) {
    namespace d = cuda::detail;
    const running_state_view<T>& st = d::check_layer("export_weights", core);
    if (!core.options().average_covariance) {
      ::netdeconv::fold(policy, block_statistics_view<const T>{core.plan(), st.mean, st.D}, weight, bias, weight_out,
                        bias_out);
      return;
    }
    const d::layer_layout<T> l(policy, core.plan(), 0);
    const d::scratch ws(policy, l.total, "export_weights");
    const d::layer_scratch<T> w(policy, ws, l, core.plan());
    ::netdeconv::fold(policy, block_statistics_view<const T>{core.plan(), st.mean, d::evaluation_D(core, w)}, weight, bias,
                      weight_out, bias_out);
    d::check_evaluation(core, w);
  }

  /// The channel layer's training step: y from x (both device memory, y not x).
  template <class T>
  static void channel_train(const cuda_policy& policy, deconv_core<T>& core, const channel_spec& spec,
                            const image_view<const T>& x, const image_view<T>& y) {
    channel_step(policy, core, spec, x, y, static_cast<const channel_statistics_view<T>*>(nullptr), {});
  }

  /// The same, writing the statistics the step used and its report (device memory; backward takes them).
  template <class T>
  static void channel_train(const cuda_policy& policy, deconv_core<T>& core, const channel_spec& spec,
                            const image_view<const T>& x, const image_view<T>& y, const channel_statistics_view<T>& used,
                            const vector_view<isqrt_report>& reports) {
    cuda::detail::check_device_memory("train_step", "used.mean", used.mean);
    cuda::detail::check_device_memory("train_step", "used.D", used.D);
    cuda::detail::check_device_memory("train_step", "used.remaining", used.remaining);
    cuda::detail::check_device_memory("train_step", "reports", reports);
    channel_step(policy, core, spec, x, y, &used, reports);
  }

  /// The channel layer's backward (layer_state.hpp's channel_backward), all in device memory: the
  /// direct part, then (unless the step folded constant statistics, read on the device, or mode is
  /// constants) the covariance's gradient through the channel samples and the remaining channels'.
  template <class T>
  static void channel_backward(const cuda_policy& policy, const deconv_core<T>& core, const channel_spec& spec,
                               const image_view<const T>& x, const channel_statistics_view<const T>& used,
                               const step_diagnostic&, statistics_gradient mode, const image_view<const T>& dy,
                               const image_view<T>& dx, const vector_view<isqrt_report>& reports) {
    namespace d = cuda::detail;
    constexpr const char* fn = "backward";
    d::check_layer(fn, core);
    d::check_device_memory(fn, "x", x);
    d::check_device_memory(fn, "used.mean", used.mean);
    d::check_device_memory(fn, "used.D", used.D);
    d::check_device_memory(fn, "used.remaining", used.remaining);
    d::check_device_memory(fn, "dy", dy);
    d::check_device_memory(fn, "dx", dx);
    d::check_device_memory(fn, "reports", reports);
    const channel_samples<T> samples = make_channel_samples(spec, x);
    const block_plan& p = core.plan();
    check_block_moments(fn, samples, p);
    const index_t B = spec.block;
    const d::channel_vjp_layout<T> l(policy, samples, p);
    const d::scratch ws(policy, l.total, fn);
    d::scratch_parts parts(ws);
    const tensor_view<T, 3> dD = parts.matrices<T>(l.matrix, 1, B);
    const matrix_view<T> dy_sum = parts.vectors<T>(l.vec, 1, B), dmu = parts.vectors<T>(l.vec, 1, B);
    double* sums = reinterpret_cast<double*>(parts.take(l.sums));
    const cudaStream_t stream = policy.stream;
    d::launch("channel_direct_vjp_kernel", d::channel_direct_vjp_kernel<T>, x.size(), stream, spec, dy, used.D, used.remaining, dx);
    if (mode == statistics_gradient::constants) {
      d::launch("constant_reports_kernel", d::constant_reports_kernel<>, 1, stream, reports, static_cast<const int*>(nullptr));
      return;
    }
    d::launch("channel_sums_vjp_kernel", d::channel_sums_vjp_kernel<T>, B * B, stream, spec, x, dy, used.mean, dD, dy_sum);
    d::launch("weight_vjp_mean_kernel", d::weight_vjp_mean_kernel<T>, B, stream, used.D, matrix_view<const T>(dy_sum), dmu,
              vector_view<const T>{}, vector_view<T>{});
    const int* keep = d::step_used_batch(core);
    d::covariance_backward(d::with_workspace(policy, parts.take(l.backward), l.backward), samples, p, d::layer_backward_rule(core),
                           tensor_view<const T, 3>(dD), matrix_view<const T>(dmu), reports, d::channel_target<T>{samples, dx},
                           keep);
    if (spec.whitened == spec.channels) return;
    d::channel_remaining_vjp_kernel<T><<<1, d::remaining_threads, 0, stream>>>(spec, x, dy, used.remaining, sums);
    NETDECONV_CUDA_CHECK_LAUNCH("channel_remaining_vjp_kernel");
    d::launch("channel_remaining_scatter_kernel", d::channel_remaining_scatter_kernel<T>,
              x.shape[0] * spec.remaining_per_image(x.shape), stream, spec, x, used.remaining, static_cast<const double*>(sums), dx,
              keep);
  }

  /// The channel layer's evaluation: y from x with the running statistics; synchronises with
  /// average_covariance.
  template <class T>
  static void channel_eval(const cuda_policy& policy, const deconv_core<T>& core, const channel_spec& spec,
                           const image_view<const T>& x, const image_view<T>& y) {
    namespace d = cuda::detail;
    const running_state_view<T>& st = d::check_layer("eval", core);
    check_channel_memory("eval", x, y);
    if (!core.options().average_covariance) {
      apply<T>(policy, spec, x, y, st.mean, st.D, st.remaining);
      return;
    }
    const d::layer_layout<T> l(policy, core.plan(), 0);
    const d::scratch ws(policy, l.total, "eval");
    const d::layer_scratch<T> w(policy, ws, l, core.plan());
    apply<T>(policy, spec, x, y, st.mean, d::evaluation_D(core, w), st.remaining);
    d::check_evaluation(core, w);
  }

 private:
  /// A channel training step; with `used`, the statistics it folded and its report go there.
  template <class T>
  static void channel_step(const cuda_policy& policy, deconv_core<T>& core, const channel_spec& spec, const image_view<const T>& x,
                           const image_view<T>& y, const channel_statistics_view<T>* used, const vector_view<isqrt_report>& reports) {
    namespace d = cuda::detail;
    constexpr const char* fn = "train_step";
    d::check_layer(fn, core);
    check_channel_memory(fn, x, y);
    const channel_samples<T> source = make_channel_samples(spec, x);
    check_block_moments(fn, source, core.plan());
    const d::layer_layout<T> l(policy, core.plan(), block_moments_workspace(policy, source, core.plan()));
    const d::scratch ws(policy, l.total, fn);
    const d::layer_scratch<T> w(policy, ws, l, core.plan());
    const bool remaining = spec.whitened < spec.channels;
    if (remaining) {
      d::remaining_kernel<T><<<1, d::remaining_threads, 0, policy.stream>>>(spec, x, w.scalars);
      NETDECONV_CUDA_CHECK_LAUNCH("remaining_kernel");
    }
    const matrix_view<T> mean = used ? used->mean : w.mean;
    const tensor_view<T, 3> D = used ? used->D : w.D;
    const vector_view<isqrt_report> r = used ? reports : w.reports;
    d::train_statistics(core, source, w, mean, D, r, remaining ? static_cast<const T*>(w.scalars) : nullptr);
    d::keep_decision(core, w);
    const vector_view<T> applied = remaining ? vector_view<T>{w.scalars + 2, {2}, {1}} : vector_view<T>{};
    apply<T>(policy, spec, x, y, mean, D, applied);
    if (used && remaining)
      for (index_t k = 0; k < 2; ++k)
        NETDECONV_CUDA_CHECK(cudaMemcpyAsync(&used->remaining(k), &applied(k), sizeof(T), cudaMemcpyDeviceToDevice, policy.stream));
    d::raise_failure(core, w, vector_view<const isqrt_report>(r), true);
  }
  template <class T>
  static void check_channel_memory(const char* fn, const image_view<const T>& x, const image_view<T>& y) {
    cuda::detail::check_device_memory(fn, "x", x);
    cuda::detail::check_device_memory(fn, "y", y);
    check_disjoint(fn, "y", y, "x", x);
  }
  template <class T>
  static void apply(const cuda_policy& policy, const channel_spec& spec, const image_view<const T>& x, const image_view<T>& y,
                    const matrix_view<const T>& mean, const tensor_view<const T, 3>& D, const vector_view<const T>& scalars) {
    const long long count = x.size();
    cuda::detail::channel_apply_kernel<T><<<cuda::detail::grid_for(count, 256), 256, 0, policy.stream>>>(spec, x, y, mean, D,
                                                                                                        scalars, count);
    NETDECONV_CUDA_CHECK_LAUNCH("channel_apply_kernel");
  }
};

}  // namespace detail
}  // namespace netdeconv
