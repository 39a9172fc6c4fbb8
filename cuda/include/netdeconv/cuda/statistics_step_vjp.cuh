// SPDX-License-Identifier: MIT
#pragma once
// The backward of the statistics step on the GPU: netdeconv/statistics_step_vjp.hpp's calls
// (conv_statistics_step_vjp, linear_statistics_step_vjp, and the data-parallel pieces fold_vjp,
// conv_covariance_vjp, linear_covariance_vjp) with a cuda_policy, checked by the same
// netdeconv::detail checks, every view in device memory. The whole backward is enqueued on
// policy.stream with no host synchronisation (except tolerance mode's convergence checks):
//   fold_vjp (dL/dW, dL/db, dL/dD_s, dL/dmu_s) -> block_moments -> Cov_s = M_s/n_s + eps I
//   -> inverse_sqrt_vjp (inverse_sqrt_vjp.cuh, reports into out.reports)
//   -> the covariance's gradient scattered to dL/dx_stats
// One thread per output entry (bodies/statistics_step_vjp.hpp has the recurrences), sums in T.
// The scatter gives every entry of the sampled patch rows a thread, which adds its gradient to
// the pixel it came from with atomicAdd: overlapping patches make dL/dx_stats vary from run to
// run in its last bits. Differences from the CPU, from not reading the device on the host: the
// moments passed to the covariance pieces are not checked for counts >= 1 or finite values (a
// count of 0 gives Inf/NaN), and the exact method is CPU-only (invalid_argument).
// Scratch: policy.workspace when it is set, else stream-ordered allocations; the *_workspace
// queries give its size.
//
//   netdeconv::statistics_step_gradients<float, 4> grads{dW, db, dx_stats, reports};   // device views
//   netdeconv::conv_statistics_step_vjp(netdeconv::cuda_policy{stream}, x, W, b, cfg, stats, dL_dWf, dL_dbf, grads);

#include <algorithm>
#include <cmath>
#include <cstddef>

#include <netdeconv/checks.hpp>
#include <netdeconv/geometry.hpp>
#include <netdeconv/matrix_rows.hpp>
#include <netdeconv/statistics_step_config.hpp>
#include <netdeconv/statistics_view.hpp>

#include "bodies/layer_state.hpp"
#include "bodies/statistics_step_vjp.hpp"
#include "covariance.cuh"
#include "execution.cuh"
#include "inverse_sqrt_vjp.cuh"
#include "moments.cuh"

namespace netdeconv {
namespace cuda::detail {

#define NETDECONV_FOR_ELEMENTS(count) \
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < (count); e += (long long)gridDim.x * blockDim.x)

/// A layer step's covariance (eps or trace-relative eps, centred or uncentred), and its backward's.
template <class T>
__global__ void layer_covariance_kernel(moments_view<const double> m, double eps, bool relative, bool uncentred,
                                        tensor_view<T, 3> cov, matrix_view<T> mean, long long count) {
  const long long F = cov.shape[1];
  NETDECONV_FOR_ELEMENTS(count) layer_covariance_element(m, eps, relative, uncentred, cov, mean, e / (F * F), (e / F) % F, e % F);
}

template <class T>
__global__ void weight_vjp_kernel(weight_vjp_inputs<T> in, image_view<T> out, long long count) {
  NETDECONV_FOR_ELEMENTS(count) weight_vjp_element(in, out, e);
}

template <class T>
__global__ void weight_vjp_D_kernel(weight_vjp_inputs<T> in, tensor_view<T, 3> dD, long long count) {
  const long long F = dD.shape[1];
  NETDECONV_FOR_ELEMENTS(count) dD(e / (F * F), (e / F) % F, e % F) = weight_vjp_D_element(in, e / (F * F), (e / F) % F, e % F);
}

template <class T>
__global__ void weight_vjp_u_kernel(weight_vjp_inputs<T> in, matrix_view<T> u, long long count) {
  const long long F = u.shape[1];
  NETDECONV_FOR_ELEMENTS(count) u(e / F, e % F) = weight_vjp_u_element(in, e / F, e % F);
}

template <class T>
__global__ void weight_vjp_mean_kernel(tensor_view<const T, 3> D, matrix_view<const T> u, matrix_view<T> dmu, vector_view<const T> g,
                                       vector_view<T> db, long long count) {
  const long long F = u.shape[1];
  NETDECONV_FOR_ELEMENTS(count) dmu(e / F, e % F) = weight_vjp_mean_element(D, u, e / F, e % F);
  if (!db.empty()) NETDECONV_FOR_ELEMENTS(db.shape[0]) db(e) = g(e);  // dL/db = dL/db'
}

template <class T>
__global__ void covariance_vjp_trace_kernel(tensor_view<const T, 3> dcov, T* trace, long long count) {
  NETDECONV_FOR_ELEMENTS(count) trace[e] = covariance_vjp_trace(dcov, e);
}

template <class T>
__global__ void covariance_vjp_sym_kernel(moments_view<const double> m, tensor_view<const T, 3> dcov, const T* trace, double eps_F,
                                          tensor_view<T, 3> sym, long long count) {
  const long long F = sym.shape[1];
  NETDECONV_FOR_ELEMENTS(count) covariance_vjp_sym_element(m, dcov, trace, eps_F, sym, e / (F * F), (e / F) % F, e % F);
}

template <class T>
__global__ void covariance_vjp_shift_kernel(moments_view<const double> m, matrix_view<const T> dmean, bool uncentred,
                                            matrix_view<T> mean, matrix_view<T> dmu, long long count) {
  const long long F = mean.shape[1];
  NETDECONV_FOR_ELEMENTS(count) covariance_vjp_shift_element(m, dmean, uncentred, mean, dmu, e / F, e % F);
}

template <class T, class Source, class Target>
__global__ void covariance_vjp_scatter_kernel(Source src, block_plan p, tensor_view<const T, 3> sym, matrix_view<const T> mean,
                                              matrix_view<const T> dmu, Target target, const int* keep, long long count) {
  if (keep != nullptr && *keep == 0) return;
  const long long width = src.width();
  NETDECONV_FOR_ELEMENTS(count) {
    T* at = target.at(e / width, e % width);
    if (at != nullptr) atomicAdd(at, covariance_vjp_entry(src, p, sym, mean, dmu, e / width, e % width));
  }
}

template <class T, int R>
__global__ void zero_kernel(tensor_view<T, R> v, long long count) {
  NETDECONV_FOR_ELEMENTS(count) zero_element(v, e);
}

#undef NETDECONV_FOR_ELEMENTS

/// Launches `kernel` over `count` elements on `stream` (nothing when count is 0).
template <class Kernel, class... Args>
void launch(const char* name, Kernel kernel, long long count, cudaStream_t stream, Args... args) {
  if (count == 0) return;
  kernel<<<grid_for(count, 256), 256, 0, stream>>>(args..., count);
  const cudaError_t err = cudaGetLastError();  // NETDECONV_CUDA_CHECK_LAUNCH with the name at run time
  if (err != cudaSuccess) throw_cuda(err, name, __FILE__, __LINE__);
}

/// fold_vjp on checked arguments, u_s in `u` (S, F scratch).
template <class T>
void fold_vjp(cudaStream_t stream, const weight_vjp_inputs<T>& in, const image_view<T>& out_weight, const vector_view<T>& out_bias,
              const tensor_view<T, 3>& grad_D, const matrix_view<T>& grad_mean, const matrix_view<T>& u) {
  launch("weight_vjp_kernel", weight_vjp_kernel<T>, out_weight.size(), stream, in, out_weight);
  launch("weight_vjp_D_kernel", weight_vjp_D_kernel<T>, grad_D.size(), stream, in, grad_D);
  launch("weight_vjp_u_kernel", weight_vjp_u_kernel<T>, u.size(), stream, in, u);
  launch("weight_vjp_mean_kernel", weight_vjp_mean_kernel<T>, grad_mean.size(), stream, in.D, matrix_view<const T>(u), grad_mean,
         in.grad_bias, out_bias);
}

/// Scratch of the covariance's backward: sym (S, F, F), mean and dmu (S, F), trace (S), all T.
template <class T>
struct covariance_vjp_layout {
  std::size_t sym, vec, trace, total;
  explicit covariance_vjp_layout(const block_plan& p) {
    const std::size_t S = std::size_t(p.count()), F = std::size_t(p.features());
    sym = align_up(sizeof(T) * S * F * F);
    vec = align_up(sizeof(T) * S * F);
    trace = align_up(sizeof(T) * S);
    total = sym + 2 * vec + trace;
  }
};

/// Adds the covariance's gradient to `target` (see bodies/statistics_step_vjp.hpp), with the
/// scratch at `ws` (covariance_vjp_layout); nothing when keep is set and *keep is 0.
template <class T, class Source, class Target>
void covariance_vjp(cudaStream_t stream, char* ws, const Source& src, const block_plan& p, const moments_view<const double>& m,
                    const tensor_view<const T, 3>& dcov, const matrix_view<const T>& dmean, double eps_F, bool uncentred,
                    const Target& target, const int* keep = nullptr) {
  const covariance_vjp_layout<T> l(p);
  const index_t S = p.count(), F = p.features();
  const tensor_view<T, 3> sym{reinterpret_cast<T*>(ws), {S, F, F}, {F * F, F, 1}};
  const matrix_view<T> mean = row_major(reinterpret_cast<T*>(ws + l.sym), S, F),
                       dmu = row_major(reinterpret_cast<T*>(ws + l.sym + l.vec), S, F);
  T* trace = reinterpret_cast<T*>(ws + l.sym + 2 * l.vec);
  launch("covariance_vjp_trace_kernel", covariance_vjp_trace_kernel<T>, S, stream, dcov, trace);
  launch("covariance_vjp_sym_kernel", covariance_vjp_sym_kernel<T>, sym.size(), stream, m, dcov, static_cast<const T*>(trace),
         eps_F, sym);
  launch("covariance_vjp_shift_kernel", covariance_vjp_shift_kernel<T>, mean.size(), stream, m, dmean, uncentred, mean, dmu);
  launch("covariance_vjp_scatter_kernel", covariance_vjp_scatter_kernel<T, Source, Target>, src.rows() * src.width(), stream,
         src, p, tensor_view<const T, 3>(sym), matrix_view<const T>(mean), matrix_view<const T>(dmu), target, keep);
}

/// Reports of 0 iterations, residual NaN, ok (a backward through constant statistics), unless
/// keep is set and *keep is 1.
template <class = void>
__global__ void constant_reports_kernel(vector_view<isqrt_report> reports, const int* keep, long long count) {
  if (keep != nullptr && *keep != 0) return;
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    reports(e) = isqrt_report{0, double(NAN), isqrt_status::ok};
}

/// Scratch of covariance_backward: moments [count | mean | scatter], Cov_s and dL/dCov_s (S, F, F
/// of T), mu_s (S, F of T), the scatter's (covariance_vjp_layout), then the larger of what
/// block_moments and inverse_sqrt_vjp need.
template <class T>
struct backward_layout {
  std::size_t count, mean, scatter, matrix, vec, cov_vjp, inner, total;
  template <class Source>
  backward_layout(const cuda_policy& policy, const Source& source, const block_plan& p) {
    const std::size_t S = std::size_t(p.count()), F = std::size_t(p.features());
    count = align_up(sizeof(index_t) * S);
    mean = align_up(sizeof(double) * S * F);
    scatter = align_up(sizeof(double) * S * F * F);
    matrix = align_up(sizeof(T) * S * F * F);
    vec = align_up(sizeof(T) * S * F);
    cov_vjp = covariance_vjp_layout<T>(p).total;
    inner = align_up(std::max(block_moments_workspace(policy, source, p),
                              inverse_sqrt_vjp_workspace<T>(policy, p.count(), p.features())));
    total = count + mean + scatter + 2 * matrix + vec + cov_vjp + inner;
  }
};

/// Consecutive parts of a scratch.
class scratch_parts {
 public:
  explicit scratch_parts(const scratch& ws) : ws_(ws) {}
  char* take(std::size_t bytes) {
    char* where = ws_.at<char>(at_);
    at_ += bytes;
    return where;
  }
  template <class T>
  tensor_view<T, 3> matrices(std::size_t bytes, index_t S, index_t F) {
    return {reinterpret_cast<T*>(take(bytes)), {S, F, F}, {F * F, F, 1}};
  }
  template <class T>
  matrix_view<T> vectors(std::size_t bytes, index_t S, index_t F) {
    return row_major(reinterpret_cast<T*>(take(bytes)), S, F);
  }

 private:
  const scratch& ws_;
  std::size_t at_ = 0;
};

/// From dL/dD_s and dL/dmu_s: Cov_s recomputed from the source (how: eps, relative, uncentred),
/// dL/dCov_s = inverse_sqrt_vjp (reports), and its gradient added into `target`. With `keep` set
/// and *keep 0 (a layer step that folded constant statistics), the scatter adds nothing and the
/// reports are constant ones.
template <class T, class Source, class Target>
void covariance_backward(const cuda_policy& policy, const Source& source, const block_plan& p, const backward_rule& how,
                         const tensor_view<const T, 3>& dD, const matrix_view<const T>& dmu,
                         const vector_view<isqrt_report>& reports, const Target& target, const int* keep) {
  const backward_layout<T> l(policy, source, p);
  const scratch ws(policy, l.total, "statistics backward");
  scratch_parts parts(ws);
  const index_t S = p.count(), F = p.features();
  index_t* count = reinterpret_cast<index_t*>(parts.take(l.count));
  double* mean = reinterpret_cast<double*>(parts.take(l.mean));
  const moments_view<double> m = contiguous_moments<double>(count, mean, reinterpret_cast<double*>(parts.take(l.scatter)), S, F);
  const tensor_view<T, 3> cov = parts.matrices<T>(l.matrix, S, F), dcov = parts.matrices<T>(l.matrix, S, F);
  const matrix_view<T> mu = parts.vectors<T>(l.vec, S, F);
  char* cov_ws = parts.take(l.cov_vjp);
  const cuda_policy inner = with_workspace(policy, parts.take(l.inner), l.inner);
  block_moments(inner, source, p, m);
  launch("layer_covariance_kernel", layer_covariance_kernel<T>, cov.size(), policy.stream, moments_view<const double>(m), how.eps,
         how.relative_eps, how.uncentred, cov, mu);
  inverse_sqrt_vjp(inner, tensor_view<const T, 3>(cov), dD, dcov, how.isqrt, reports);
  covariance_vjp(policy.stream, cov_ws, source, p, moments_view<const double>(m), tensor_view<const T, 3>(dcov), dmu,
                 how.relative_eps ? how.eps / double(F) : 0.0, how.uncentred, target, keep);
  if (keep != nullptr) launch("constant_reports_kernel", constant_reports_kernel<>, S, policy.stream, reports, keep);
}

/// Scratch of statistics_step_vjp: dL/dD_s (S, F, F), dL/dmu_s and u_s (S, F), all T, then covariance_backward's.
template <class T>
struct step_vjp_layout {
  std::size_t matrix, vec, backward, total;
  template <class Source>
  step_vjp_layout(const cuda_policy& policy, const Source& source, const block_plan& p) {
    const std::size_t S = std::size_t(p.count()), F = std::size_t(p.features());
    matrix = align_up(sizeof(T) * S * F * F);
    vec = align_up(sizeof(T) * S * F);
    backward = backward_layout<T>(policy, source, p).total;
    total = matrix + 2 * vec + backward;
  }
};

/// The backward on checked arguments; dL/dx_stats (zeroed first) through `target`; constants: mu
/// and D as constants (dL/dx_stats = 0, constant reports); keep: as covariance_backward's.
template <class T, class Source, class Target, int R>
void statistics_step_vjp(const cuda_policy& policy, const Source& source, const weight_vjp_inputs<T>& in,
                         const backward_rule& how, const statistics_step_gradients<T, R>& out, const image_view<T>& out_weight,
                         const Target& target, bool constants = false, const int* keep = nullptr) {
  const block_plan& p = in.plan;
  const step_vjp_layout<T> l(policy, source, p);
  const scratch ws(policy, l.total, "statistics_step_vjp");
  scratch_parts parts(ws);
  const index_t S = p.count(), F = p.features();
  const tensor_view<T, 3> dD = parts.matrices<T>(l.matrix, S, F);
  const matrix_view<T> dmu = parts.vectors<T>(l.vec, S, F), u = parts.vectors<T>(l.vec, S, F);
  fold_vjp(policy.stream, in, out_weight, out.bias, dD, dmu, u);
  launch("zero_kernel", zero_kernel<T, R>, out.x.size(), policy.stream, out.x);
  if (constants) {
    launch("constant_reports_kernel", constant_reports_kernel<>, S, policy.stream, out.reports, static_cast<const int*>(nullptr));
    return;
  }
  covariance_backward(with_workspace(policy, parts.take(l.backward), l.backward), source, p, how, tensor_view<const T, 3>(dD),
                      matrix_view<const T>(dmu), out.reports, target, keep);
}

template <class T, int R>
void check_vjp_memory(const char* fn, const tensor_view<const T, R>& x, const image_view<const T>& weight,
                      const vector_view<const T>& bias, const block_statistics_view<const T>& stats,
                      const image_view<const T>& grad_weight, const vector_view<const T>& grad_bias,
                      const statistics_step_gradients<T, R>& out) {
  check_device_memory(fn, "x", x);
  check_device_memory(fn, "weight", weight);
  check_device_memory(fn, "bias", bias);
  check_device_memory(fn, "stats.mean", stats.mean);
  check_device_memory(fn, "stats.D", stats.D);
  check_device_memory(fn, "grad_weight", grad_weight);
  check_device_memory(fn, "grad_bias", grad_bias);
  check_device_memory(fn, "out.weight", out.weight);
  check_device_memory(fn, "out.bias", out.bias);
  check_device_memory(fn, "out.x", out.x);
  check_device_memory(fn, "out.reports", out.reports);
}

template <class T, int R>
void check_covariance_vjp_memory(const char* fn, const tensor_view<const T, R>& x, const moments_view<const double>& moments,
                                 const tensor_view<const T, 3>& dcov, const matrix_view<const T>& dmean,
                                 const tensor_view<T, R>& dx) {
  check_moments_memory(fn, moments);
  check_device_memory(fn, "x", x);
  check_device_memory(fn, "dcov", dcov);
  check_device_memory(fn, "dmean", dmean);
  check_device_memory(fn, "dx", dx);
}

}  // namespace cuda::detail

/// Scratch bytes conv_statistics_step_vjp needs for x (N, C, H, W) under config.
template <class T>
std::size_t conv_statistics_step_vjp_workspace(const cuda_policy& policy, image_view<const T> x,
                                               const conv_deconv_config& config) {
  const patch_sampler<T> source(x, config.geometry, config.sampling_stride);
  return cuda::detail::step_vjp_layout<T>(policy, source, conv_statistics_plan(x.shape[1], config)).total;
}

/// Scratch bytes linear_statistics_step_vjp needs for x (rows, Fin) under config.
template <class T>
std::size_t linear_statistics_step_vjp_workspace(const cuda_policy& policy, matrix_view<const T> x,
                                                 const linear_deconv_config& config) {
  return cuda::detail::step_vjp_layout<T>(policy, matrix_rows<T>(x), linear_statistics_plan(x.shape[1], config)).total;
}

/// Backward of conv_statistics_step into caller views (statistics_step_vjp.hpp), all in device memory.
template <class T>
void conv_statistics_step_vjp(const cuda_policy& policy, image_view<const T> x, image_view<const T> weight,
                              vector_view<const T> bias, const conv_deconv_config& config,
                              const block_statistics_view<const T>& stats, image_view<const T> grad_weight,
                              vector_view<const T> grad_bias, const statistics_step_gradients<T, 4>& out) {
  namespace d = cuda::detail;
  constexpr const char* fn = "conv_statistics_step_vjp";
  const block_plan plan = ::netdeconv::detail::check_conv_step(fn, x, weight, bias, config);
  ::netdeconv::detail::check_step_vjp(fn, plan, x, weight, bias, stats, grad_weight, grad_bias, out, out.weight);
  d::check_vjp_memory(fn, x, weight, bias, stats, grad_weight, grad_bias, out);
  NETDECONV_REQUIRE(config.isqrt.method == isqrt_method::newton_schulz, fn,
                    "the CUDA path runs Newton-Schulz only (the exact method is CPU-only)");
  const patch_sampler<T> source(x, config.geometry, config.sampling_stride);
  ::netdeconv::detail::check_block_moments(fn, source, plan);
  const patch_map map = ::netdeconv::detail::make_patch_map(fn, x.shape, config.geometry, config.sampling_stride, true);
  d::statistics_step_vjp(policy, source, d::weight_inputs(stats, weight, grad_weight, grad_bias),
                         d::backward_rule{config.eps, false, false, config.isqrt}, out, out.weight,
                         d::patch_target<T>{map, out.x});
}

/// Backward of linear_statistics_step: x (rows, Fin), weight (Cout, Fin); as the conv form.
template <class T>
void linear_statistics_step_vjp(const cuda_policy& policy, matrix_view<const T> x, matrix_view<const T> weight,
                                vector_view<const T> bias, const linear_deconv_config& config,
                                const block_statistics_view<const T>& stats, matrix_view<const T> grad_weight,
                                vector_view<const T> grad_bias, const statistics_step_gradients<T, 2>& out) {
  namespace d = cuda::detail;
  using ::netdeconv::detail::as_conv_weight;
  constexpr const char* fn = "linear_statistics_step_vjp";
  const block_plan plan = ::netdeconv::detail::check_linear_step(fn, x, weight, bias, config);
  ::netdeconv::detail::check_step_vjp(fn, plan, x, as_conv_weight(weight), bias, stats, as_conv_weight(grad_weight), grad_bias,
                                      out, as_conv_weight(out.weight));
  d::check_vjp_memory(fn, x, as_conv_weight(weight), bias, stats, as_conv_weight(grad_weight), grad_bias, out);
  NETDECONV_REQUIRE(config.isqrt.method == isqrt_method::newton_schulz, fn,
                    "the CUDA path runs Newton-Schulz only (the exact method is CPU-only)");
  const matrix_rows<T> source(x);
  ::netdeconv::detail::check_block_moments(fn, source, plan);
  d::statistics_step_vjp(policy, source, d::weight_inputs(stats, as_conv_weight(weight), as_conv_weight(grad_weight), grad_bias),
                         d::backward_rule{config.eps, false, false, config.isqrt}, out, as_conv_weight(out.weight),
                         d::row_target<T>{out.x});
}

/// Scratch bytes fold_vjp needs for a plan.
template <class T>
std::size_t fold_vjp_workspace(const cuda_policy&, const block_plan& plan) {
  return cuda::detail::align_up(sizeof(T) * std::size_t(plan.count() * plan.features()));
}

/// The weight side of the backward (statistics_step_vjp.hpp's fold_vjp), all in device memory.
template <class T>
void fold_vjp(const cuda_policy& policy, const block_statistics_view<const T>& stats, image_view<const T> weight,
              vector_view<const T> bias, image_view<const T> grad_weight, vector_view<const T> grad_bias,
              image_view<T> out_weight, vector_view<T> out_bias, tensor_view<T, 3> grad_D, matrix_view<T> grad_mean) {
  namespace d = cuda::detail;
  constexpr const char* fn = "fold_vjp";
  ::netdeconv::detail::check_fold_vjp_outputs(fn, stats, weight, bias, grad_weight, grad_bias, out_weight, out_bias, grad_D,
                                              grad_mean);
  d::check_device_memory(fn, "weight", weight);
  d::check_device_memory(fn, "grad_weight", grad_weight);
  d::check_device_memory(fn, "bias", bias);
  d::check_device_memory(fn, "grad_bias", grad_bias);
  d::check_device_memory(fn, "stats.mean", stats.mean);
  d::check_device_memory(fn, "stats.D", stats.D);
  d::check_device_memory(fn, "out_weight", out_weight);
  d::check_device_memory(fn, "out_bias", out_bias);
  d::check_device_memory(fn, "grad_D", grad_D);
  d::check_device_memory(fn, "grad_mean", grad_mean);
  const index_t S = stats.plan.count(), F = stats.plan.features();
  d::scratch ws(policy, fold_vjp_workspace<T>(policy, stats.plan), fn);
  d::fold_vjp(policy.stream, d::weight_inputs(stats, weight, grad_weight, grad_bias), out_weight, out_bias, grad_D, grad_mean,
              row_major(ws.at<T>(0), S, F));
}

/// Scratch bytes conv_covariance_vjp and linear_covariance_vjp need for a plan.
template <class T>
std::size_t covariance_vjp_workspace(const cuda_policy&, const block_plan& plan) {
  return cuda::detail::covariance_vjp_layout<T>(plan).total;
}

/// The backward of a shard's statistics (statistics_step_vjp.hpp's conv_covariance_vjp), adding
/// to dx; all in device memory (the moments' counts and values are not checked, see file comment).
template <class T>
void conv_covariance_vjp(const cuda_policy& policy, image_view<const T> x, const conv_deconv_config& config,
                         const moments_view<const double>& moments, tensor_view<const T, 3> dcov, matrix_view<const T> dmean,
                         image_view<T> dx) {
  namespace d = cuda::detail;
  constexpr const char* fn = "conv_covariance_vjp";
  ::netdeconv::detail::check_view(fn, "x", x);
  const block_plan plan = conv_statistics_plan(x.shape[1], config);
  ::netdeconv::detail::check_covariance_vjp(fn, plan, x, moments, dcov, dmean, dx);
  d::check_covariance_vjp_memory(fn, x, moments, dcov, dmean, dx);
  const patch_sampler<T> source(x, config.geometry, config.sampling_stride);
  const patch_map map = ::netdeconv::detail::make_patch_map(fn, x.shape, config.geometry, config.sampling_stride, true);
  d::scratch ws(policy, covariance_vjp_workspace<T>(policy, plan), fn);
  d::covariance_vjp(policy.stream, ws.at<char>(0), source, plan, moments, dcov, dmean, 0.0, false, d::patch_target<T>{map, dx});
}

/// The same for a linear layer's rows: x (rows, Fin), dx (rows, Fin).
template <class T>
void linear_covariance_vjp(const cuda_policy& policy, matrix_view<const T> x, const linear_deconv_config& config,
                           const moments_view<const double>& moments, tensor_view<const T, 3> dcov,
                           matrix_view<const T> dmean, matrix_view<T> dx) {
  namespace d = cuda::detail;
  constexpr const char* fn = "linear_covariance_vjp";
  ::netdeconv::detail::check_view(fn, "x", x);
  const block_plan plan = linear_statistics_plan(x.shape[1], config);
  ::netdeconv::detail::check_covariance_vjp(fn, plan, x, moments, dcov, dmean, dx);
  d::check_covariance_vjp_memory(fn, x, moments, dcov, dmean, dx);
  d::scratch ws(policy, covariance_vjp_workspace<T>(policy, plan), fn);
  d::covariance_vjp(policy.stream, ws.at<char>(0), matrix_rows<T>(x), plan, moments, dcov, dmean, 0.0, false,
                    d::row_target<T>{dx});
}

}  // namespace netdeconv
