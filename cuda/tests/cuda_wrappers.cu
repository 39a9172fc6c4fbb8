// SPDX-License-Identifier: MIT
// nvcc side of the GPU tests: see cuda_wrappers.hpp.

#include "cuda_wrappers.hpp"

#include <netdeconv/cuda.cuh>

/// The part of PyTorch that the README's CUDA snippet uses, over device memory.
namespace at {
struct Tensor {
  float* ptr = nullptr;
  std::vector<std::int64_t> shape, stride;
  template <class T>
  T* data_ptr() const {
    return ptr;
  }
  const std::vector<std::int64_t>& sizes() const { return shape; }
  const std::vector<std::int64_t>& strides() const { return stride; }
};
namespace cuda {
struct CUDAStream {
  cudaStream_t s;
  cudaStream_t stream() const { return s; }
};
inline cudaStream_t current_stream = nullptr;
inline CUDAStream getCurrentCUDAStream() { return {current_stream}; }
}  // namespace cuda
}  // namespace at

namespace netdeconv::cuda::test {
namespace {

template <class T>
class buffer {
 public:
  explicit buffer(std::size_t n) : n_(n) {
    if (n) NETDECONV_CUDA_CHECK(cudaMalloc(&p_, n * sizeof(T)));
  }
  buffer(const T* host, std::size_t n) : buffer(n) {
    if (n) NETDECONV_CUDA_CHECK(cudaMemcpy(p_, host, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
  ~buffer() {
    if (p_) (void)cudaFree(p_);
  }
  T* get() const { return p_; }
  std::vector<T> download() const {
    std::vector<T> out(n_);
    if (n_) NETDECONV_CUDA_CHECK(cudaMemcpy(out.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
  }

 private:
  T* p_ = nullptr;
  std::size_t n_;
};

/// A non-default stream, so that the tests exercise the policy's stream.
class stream {
 public:
  stream() { NETDECONV_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~stream() { (void)cudaStreamDestroy(s_); }
  cudaStream_t get() const { return s_; }
  void sync() const { NETDECONV_CUDA_CHECK(cudaStreamSynchronize(s_)); }

 private:
  cudaStream_t s_{};
};

/// The view v with its pointer moved to `data` (same shape and strides).
template <class T, int R>
tensor_view<const T, R> rebind(tensor_view<const T, R> v, const T* data) {
  v.data = data;
  return v;
}

/// Moments in device memory: three buffers and their view.
struct device_moments {
  buffer<index_t> count;
  buffer<double> mean, scatter;
  index_t S, F;
  device_moments(index_t S, index_t F)
      : count(std::size_t(S)), mean(std::size_t(S * F)), scatter(std::size_t(S * F * F)), S(S), F(F) {}
  explicit device_moments(const host_moments& h)
      : count(h.count.data(), h.count.size()), mean(h.mean.data(), h.mean.size()),
        scatter(h.scatter.data(), h.scatter.size()), S(h.statistics), F(h.features) {}
  moments_view<double> view() const { return contiguous_moments<double>(count.get(), mean.get(), scatter.get(), S, F); }
  host_moments download() const { return {S, F, count.download(), mean.download(), scatter.download()}; }
};

template <class T>
host_moments moments_of(const cuda_policy& policy, const T& source, const block_plan& p, cov_precision precision) {
  device_moments m(p.count(), p.features());
  block_moments(policy, source, p, m.view(), precision);
  NETDECONV_CUDA_CHECK(cudaStreamSynchronize(policy.stream));
  return m.download();
}

template <class T>
host_moments moments_image(image_view<const T> x, std::size_t span, const conv_geometry& g, index_t sampling_stride,
                           const block_plan& p, bool use_workspace, cov_precision precision) {
  buffer<T> dx(x.data, span);
  stream st;
  cuda_policy policy{st.get()};
  const patch_sampler<T> rows(rebind(x, dx.get()), g, sampling_stride);
  const std::size_t bytes = block_moments_workspace(policy, rows, p);
  buffer<char> ws{use_workspace ? bytes : 0};
  if (use_workspace) policy.workspace = {ws.get(), bytes};
  return moments_of(policy, rows, p, precision);
}

template <class T>
host_moments moments_matrix(matrix_view<const T> x, std::size_t span, const block_plan& p, cov_precision precision) {
  buffer<T> dx(x.data, span);
  stream st;
  return moments_of(cuda_policy{st.get()}, matrix_rows<T>(rebind(x, dx.get())), p, precision);
}

__global__ void float_to_tf32_kernel(const float* x, float* out, long long n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    out[i] = nvcuda::wmma::__float_to_tf32(x[i]);
#endif
}

/// Statistics of a plan in device memory.
template <class T>
struct device_statistics {
  buffer<T> mean, D;
  block_plan plan;
  device_statistics(const block_plan& p, const std::vector<T>& m, const std::vector<T>& d)
      : mean(m.data(), m.size()), D(d.data(), d.size()), plan(p) {}
  block_statistics_view<const T> view() const {
    const index_t S = plan.count(), F = plan.features();
    return {plan, row_major<const T>(mean.get(), S, F), {D.get(), {S, F, F}, {F * F, F, 1}}};
  }
};

/// A step's outputs in device memory for S statistics of F features and a weight of `size`
/// elements with Cout outputs.
template <class T>
struct device_step {
  buffer<T> mean, D, weight, bias;
  buffer<isqrt_report> reports;
  device_step(index_t S, index_t F, index_t size, index_t cout)
      : mean(std::size_t(S * F)), D(std::size_t(S * F * F)), weight(std::size_t(size)), bias(std::size_t(cout)),
        reports(std::size_t(S)) {}
  host_step<T> download() const { return {mean.download(), D.download(), weight.download(), bias.download(), reports.download()}; }
};

template <class T>
tensor_view<T, 3> cube(T* data, index_t S, index_t F) {
  return {data, {S, F, F}, {F * F, F, 1}};
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_name() {
  cudaDeviceProp prop{};
  NETDECONV_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  return prop.name;
}

template <class T>
std::vector<T> im2col(image_view<const T> x, std::size_t span, const conv_geometry& g) {
  buffer<T> dx(x.data, span);
  const patch_map map = ::netdeconv::detail::make_patch_map("im2col", x.shape, g, 1, false);
  buffer<T> cols{std::size_t(map.rows * map.width)};
  stream st;
  netdeconv::im2col(cuda_policy{st.get()}, rebind(x, dx.get()), g, row_major(cols.get(), map.rows, map.width));
  st.sync();
  return cols.download();
}

template <class T>
std::vector<T> col2im(const std::vector<T>& cols, index_t N, index_t C, index_t H, index_t W, const conv_geometry& g) {
  const patch_map map = ::netdeconv::detail::make_patch_map("col2im", {N, C, H, W}, g, 1, false);
  buffer<T> dcols(cols.data(), cols.size());
  buffer<T> x{std::size_t(N * C * H * W)};
  stream st;
  netdeconv::col2im(cuda_policy{st.get()}, row_major<const T>(dcols.get(), map.rows, map.width), g, nchw(x.get(), N, C, H, W));
  st.sync();
  return x.download();
}

template <class T>
host_moments block_moments_image(image_view<const T> x, std::size_t span, const conv_geometry& g, index_t sampling_stride,
                                 const block_plan& p, bool use_workspace) {
  return moments_image(x, span, g, sampling_stride, p, use_workspace, cov_precision::full);
}

template <class T>
host_moments block_moments_matrix(matrix_view<const T> x, std::size_t span, const block_plan& p) {
  return moments_matrix(x, span, p, cov_precision::full);
}

host_moments block_moments_image_tf32(image_view<const float> x, std::size_t span, const conv_geometry& g,
                                      index_t sampling_stride, const block_plan& p) {
  return moments_image(x, span, g, sampling_stride, p, false, cov_precision::tf32);
}

host_moments block_moments_matrix_tf32(matrix_view<const float> x, std::size_t span, const block_plan& p) {
  return moments_matrix(x, span, p, cov_precision::tf32);
}

std::vector<float> float_to_tf32(const std::vector<float>& x) {
  buffer<float> dx(x.data(), x.size()), out{x.size()};
  float_to_tf32_kernel<<<detail::grid_for((long long)x.size(), 256), 256>>>(dx.get(), out.get(), (long long)x.size());
  NETDECONV_CUDA_CHECK_LAUNCH("float_to_tf32_kernel");
  NETDECONV_CUDA_CHECK(cudaDeviceSynchronize());
  return out.download();
}

host_moments merge(const host_moments& a, const host_moments& b) {
  const device_moments da(a), db(b);
  device_moments out(a.statistics, a.features);
  stream st;
  netdeconv::merge(cuda_policy{st.get()}, da.view(), db.view(), out.view());
  st.sync();
  return out.download();
}

template <class T>
std::vector<T> covariance(const host_moments& m, double eps) {
  const index_t S = m.statistics, F = m.features;
  const device_moments dm(m);
  buffer<T> cov{std::size_t(S * F * F + S * F)};
  stream st;
  netdeconv::covariance(cuda_policy{st.get()}, moments_view<const double>(dm.view()), eps, cube(cov.get(), S, F),
                        row_major(cov.get() + S * F * F, S, F));
  st.sync();
  return cov.download();
}

template <class T>
host_isqrt<T> inverse_sqrt(const std::vector<T>& A, index_t batch, index_t F, const isqrt_options& options) {
  buffer<T> dA(A.data(), A.size()), dD(A.size());
  buffer<isqrt_report> reports{std::size_t(batch)};
  stream st;
  cublasHandle_t handle{};
  NETDECONV_CUBLAS_CHECK(cublasCreate(&handle));
  cuda_policy policy{st.get()};
  policy.blas = handle;
  netdeconv::inverse_sqrt(policy, tensor_view<const T, 3>(cube(dA.get(), batch, F)), cube(dD.get(), batch, F), options,
                          contiguous(reports.get(), batch));
  st.sync();
  (void)cublasDestroy(handle);
  return {dD.download(), reports.download()};
}

template <class T>
host_isqrt<T> inverse_sqrt_vjp(const std::vector<T>& A, const std::vector<T>& G, index_t batch, index_t F,
                               const isqrt_options& options) {
  buffer<T> dA(A.data(), A.size()), dG(G.data(), G.size()), out(A.size());
  buffer<isqrt_report> reports{std::size_t(batch)};
  stream st;
  netdeconv::inverse_sqrt_vjp(cuda_policy{st.get()}, tensor_view<const T, 3>(cube(dA.get(), batch, F)),
                              tensor_view<const T, 3>(cube(dG.get(), batch, F)), cube(out.get(), batch, F), options,
                              contiguous(reports.get(), batch));
  st.sync();
  return {out.download(), reports.download()};
}

template <class T>
std::vector<T> fold(const block_plan& p, const std::vector<T>& mean, const std::vector<T>& D, image_view<const T> weight,
                    std::size_t span, const std::vector<T>& bias) {
  const device_statistics<T> stats(p, mean, D);
  buffer<T> dw(weight.data, span), db(bias.data(), bias.size());
  const auto& s = weight.shape;
  buffer<T> wout{std::size_t(weight.size())}, bout{std::size_t(s[0])};
  stream st;
  const vector_view<const T> b = bias.empty() ? vector_view<const T>{} : contiguous<const T>(db.get(), s[0]);
  netdeconv::fold(cuda_policy{st.get()}, stats.view(), rebind(weight, dw.get()), b, nchw(wout.get(), s[0], s[1], s[2], s[3]),
                  contiguous(bout.get(), s[0]));
  st.sync();
  std::vector<T> out = wout.download();
  const std::vector<T> bo = bout.download();
  out.insert(out.end(), bo.begin(), bo.end());
  return out;
}

template <class T>
std::vector<T> apply_whitening(const block_plan& p, const std::vector<T>& mean, const std::vector<T>& D,
                               matrix_view<const T> X, std::size_t span, bool columns_are_samples) {
  const device_statistics<T> stats(p, mean, D);
  buffer<T> dx(X.data, span);
  buffer<T> out{std::size_t(X.size())};
  stream st;
  netdeconv::apply_whitening(cuda_policy{st.get()}, stats.view(), rebind(X, dx.get()),
                             row_major(out.get(), X.shape[0], X.shape[1]), columns_are_samples);
  st.sync();
  return out.download();
}

template <class T>
host_step<T> conv_step(image_view<const T> x, std::size_t span, image_view<const T> w, const std::vector<T>& bias,
                       const conv_deconv_config& config) {
  const block_plan p = conv_statistics_plan(x.shape[1], config);
  const index_t S = p.count(), F = p.features(), cout = w.shape[0];
  buffer<T> dx(x.data, span), dw(w.data, std::size_t(w.size())), db(bias.data(), bias.size());
  device_step<T> out(S, F, w.size(), cout);
  stream st;
  const auto& s = w.shape;
  const statistics_step_outputs<T, 4> views{row_major(out.mean.get(), S, F), cube(out.D.get(), S, F),
                                            nchw(out.weight.get(), s[0], s[1], s[2], s[3]), contiguous(out.bias.get(), cout),
                                            contiguous(out.reports.get(), S)};
  conv_statistics_step(cuda_policy{st.get()}, rebind(x, dx.get()), nchw<const T>(dw.get(), s[0], s[1], s[2], s[3]),
                       bias.empty() ? vector_view<const T>{} : contiguous<const T>(db.get(), cout), config, views);
  st.sync();
  return out.download();
}

template <class T>
host_step<T> linear_step(matrix_view<const T> x, std::size_t span, matrix_view<const T> w, const std::vector<T>& bias,
                         const linear_deconv_config& config) {
  const block_plan p = linear_statistics_plan(x.shape[1], config);
  const index_t S = p.count(), F = p.features(), cout = w.shape[0];
  buffer<T> dx(x.data, span), dw(w.data, std::size_t(w.size())), db(bias.data(), bias.size());
  device_step<T> out(S, F, w.size(), cout);
  stream st;
  const statistics_step_outputs<T, 2> views{row_major(out.mean.get(), S, F), cube(out.D.get(), S, F),
                                            row_major(out.weight.get(), cout, w.shape[1]), contiguous(out.bias.get(), cout),
                                            contiguous(out.reports.get(), S)};
  linear_statistics_step(cuda_policy{st.get()}, rebind(x, dx.get()), row_major<const T>(dw.get(), cout, w.shape[1]),
                         bias.empty() ? vector_view<const T>{} : contiguous<const T>(db.get(), cout), config, views);
  st.sync();
  return out.download();
}

template <class T>
host_fold_vjp<T> fold_vjp(const block_plan& p, const std::vector<T>& mean, const std::vector<T>& D, image_view<const T> w,
                          std::size_t span, const std::vector<T>& bias, const std::vector<T>& gw, const std::vector<T>& gb) {
  const index_t S = p.count(), F = p.features(), cout = w.shape[0];
  const device_statistics<T> stats(p, mean, D);
  buffer<T> dw(w.data, span), db(bias.data(), bias.size()), dgw(gw.data(), gw.size()), dgb(gb.data(), gb.size());
  buffer<T> out_w{std::size_t(w.size())}, out_b{bias.size()}, out_D{std::size_t(S * F * F)}, out_mean{std::size_t(S * F)};
  stream st;
  netdeconv::fold_vjp(cuda_policy{st.get()}, stats.view(), rebind(w, dw.get()),
                      bias.empty() ? vector_view<const T>{} : contiguous<const T>(db.get(), cout),
                      ::netdeconv::checks::contiguous_like<const T>(dgw.get(), w), contiguous<const T>(dgb.get(), cout),
                      ::netdeconv::checks::contiguous_like(out_w.get(), w),
                      bias.empty() ? vector_view<T>{} : contiguous(out_b.get(), cout), cube(out_D.get(), S, F),
                      row_major(out_mean.get(), S, F));
  st.sync();
  return {out_w.download(), out_b.download(), out_D.download(), out_mean.download()};
}

template <class T>
std::vector<T> conv_covariance_vjp(image_view<const T> x, std::size_t span, const conv_deconv_config& config,
                                   const host_moments& moments, const std::vector<T>& dcov, const std::vector<T>& dmean) {
  const index_t S = moments.statistics, F = moments.features;
  const device_moments m(moments);
  buffer<T> dx(x.data, span), ddcov(dcov.data(), dcov.size()), ddmean(dmean.data(), dmean.size()), out{std::size_t(x.size())};
  stream st;
  NETDECONV_CUDA_CHECK(cudaMemsetAsync(out.get(), 0, sizeof(T) * std::size_t(x.size()), st.get()));
  netdeconv::conv_covariance_vjp(cuda_policy{st.get()}, rebind(x, dx.get()), config, moments_view<const double>(m.view()),
                                 tensor_view<const T, 3>(cube(ddcov.get(), S, F)), row_major<const T>(ddmean.get(), S, F),
                                 ::netdeconv::checks::contiguous_like(out.get(), x));
  st.sync();
  return out.download();
}

/// The backward of a step (conv: R = 4, linear: R = 2) on device copies of its arguments.
template <class T, int R, class Config>
host_step_vjp<T> step_vjp(tensor_view<const T, R> x, std::size_t span, tensor_view<const T, R> w, const std::vector<T>& bias,
                          const Config& config, const block_plan& p, const host_step<T>& forward, const std::vector<T>& gw,
                          const std::vector<T>& gb) {
  const index_t S = p.count(), cout = w.shape[0];
  const device_statistics<T> stats(p, forward.mean, forward.D);
  buffer<T> dx(x.data, span), dw(w.data, std::size_t(w.size())), db(bias.data(), bias.size()), dgw(gw.data(), gw.size()),
      dgb(gb.data(), gb.size());
  buffer<T> out_w{std::size_t(w.size())}, out_b{bias.size()}, out_x{std::size_t(x.size())};
  buffer<isqrt_report> reports{std::size_t(S)};
  stream st;
  const statistics_step_gradients<T, R> out{::netdeconv::checks::contiguous_like(out_w.get(), w),
                                            bias.empty() ? vector_view<T>{} : contiguous(out_b.get(), cout),
                                            ::netdeconv::checks::contiguous_like(out_x.get(), x), contiguous(reports.get(), S)};
  const tensor_view<const T, R> wv = ::netdeconv::checks::contiguous_like<const T>(dw.get(), w),
                                gwv = ::netdeconv::checks::contiguous_like<const T>(dgw.get(), w);
  const vector_view<const T> bv = bias.empty() ? vector_view<const T>{} : contiguous<const T>(db.get(), cout);
  if constexpr (R == 4)
    conv_statistics_step_vjp(cuda_policy{st.get()}, rebind(x, dx.get()), wv, bv, config, stats.view(), gwv,
                             contiguous<const T>(dgb.get(), cout), out);
  else
    linear_statistics_step_vjp(cuda_policy{st.get()}, rebind(x, dx.get()), wv, bv, config, stats.view(), gwv,
                               contiguous<const T>(dgb.get(), cout), out);
  st.sync();
  return {out_w.download(), out_b.download(), out_x.download(), reports.download()};
}

template <class T>
host_step_vjp<T> conv_step_vjp(image_view<const T> x, std::size_t span, image_view<const T> w, const std::vector<T>& bias,
                               const conv_deconv_config& config, const host_step<T>& forward, const std::vector<T>& gw,
                               const std::vector<T>& gb) {
  return step_vjp<T, 4>(x, span, w, bias, config, conv_statistics_plan(x.shape[1], config), forward, gw, gb);
}

template <class T>
host_step_vjp<T> linear_step_vjp(matrix_view<const T> x, std::size_t span, matrix_view<const T> w, const std::vector<T>& bias,
                                 const linear_deconv_config& config, const host_step<T>& forward, const std::vector<T>& gw,
                                 const std::vector<T>& gb) {
  return step_vjp<T, 2>(x, span, w, bias, config, linear_statistics_plan(x.shape[1], config), forward, gw, gb);
}

namespace {

/// A layer state in device memory, filled by attach_state from the layer's initial state, and
/// read back into a trace.
template <class T>
struct device_state {
  buffer<T> mean, D, cov, remaining;
  buffer<index_t> counters;
  index_t S, F;
  device_state(index_t s, index_t f, bool covariance, bool rest)
      : mean(std::size_t(s * f)), D(std::size_t(s * f * f)), cov(covariance ? std::size_t(s * f * f) : 0),
        remaining(rest ? 2 : 0), counters(3), S(s), F(f) {}
  running_state_view<T> view() const {
    return {row_major(mean.get(), S, F), cube(D.get(), S, F),
            cov.get() ? cube(cov.get(), S, F) : tensor_view<T, 3>{}, contiguous(counters.get(), 3),
            remaining.get() ? contiguous(remaining.get(), 2) : vector_view<T>{}};
  }
  void download(host_layer_trace<T>& t) const {
    t.mean = mean.download(), t.D = D.download(), t.cov = cov.download(), t.remaining = remaining.download();
    t.counters = counters.download();
  }
};

template <class T, int R, class Layer, class X>
host_layer_trace<T> folding_layer(Layer layer, const layer_options& o, const std::vector<X>& xs, std::size_t span,
                                  tensor_view<const T, R> w, const std::vector<T>& bias) {
  const block_plan p = layer.plan();
  const index_t S = p.count(), F = p.features(), cout = w.shape[0];
  stream st;
  const cuda_policy policy{st.get()};
  device_state<T> state(S, F, o.average_covariance, false);
  layer.attach_state(policy, state.view());
  buffer<T> dw(w.data, std::size_t(w.size())), db(bias.data(), bias.size());
  const tensor_view<const T, R> wv = checks::contiguous_like<const T>(dw.get(), w);
  const vector_view<const T> bv = bias.empty() ? vector_view<const T>{} : contiguous<const T>(db.get(), cout);
  host_layer_trace<T> t;
  for (const X& x : xs) {
    buffer<T> dx(x.data, span);
    device_step<T> out(S, F, w.size(), cout);
    const statistics_step_outputs<T, R> views{row_major(out.mean.get(), S, F), cube(out.D.get(), S, F),
                                              checks::contiguous_like(out.weight.get(), w), contiguous(out.bias.get(), cout),
                                              contiguous(out.reports.get(), S)};
    try {
      layer.train_step(policy, rebind(x, dx.get()), wv, bv, views);
      t.threw.push_back(0);
    } catch (const numerical_error&) {
      t.threw.push_back(1);
    }
    st.sync();
    t.steps.push_back(out.download());
  }
  buffer<T> evaluated(std::size_t(w.size() + cout));
  layer.export_weights(policy, wv, bv, checks::contiguous_like(evaluated.get(), w), contiguous(evaluated.get() + w.size(), cout));
  st.sync();
  t.evaluated = evaluated.download();
  state.download(t);
  return t;
}

/// A layer's steps on its device state, each followed by its backward (backend_checks.hpp's
/// conv_layer_backward); `step` is the host diagnostic, which a cuda_policy backward does not read.
template <class T, int R, class Layer, class X>
std::vector<host_step_vjp<T>> folding_layer_backward(Layer layer, const layer_options& o, const std::vector<X>& xs,
                                                     std::size_t span, tensor_view<const T, R> w, const std::vector<T>& bias,
                                                     const std::vector<T>& gw, const std::vector<T>& gb, bool constants) {
  const block_plan p = layer.plan();
  const index_t S = p.count(), F = p.features(), cout = w.shape[0];
  stream st;
  const cuda_policy policy{st.get()};
  device_state<T> state(S, F, o.average_covariance, false);
  layer.attach_state(policy, state.view());
  buffer<T> dw(w.data, std::size_t(w.size())), db(bias.data(), bias.size()), dgw(gw.data(), gw.size()), dgb(gb.data(), gb.size());
  const tensor_view<const T, R> wv = checks::contiguous_like<const T>(dw.get(), w), gwv = checks::contiguous_like<const T>(dgw.get(), w);
  const vector_view<const T> bv = bias.empty() ? vector_view<const T>{} : contiguous<const T>(db.get(), cout);
  std::vector<host_step_vjp<T>> result;
  for (const X& x : xs) {
    buffer<T> dx(x.data, span);
    device_step<T> out(S, F, w.size(), cout);
    const statistics_step_outputs<T, R> views{row_major(out.mean.get(), S, F), cube(out.D.get(), S, F),
                                              checks::contiguous_like(out.weight.get(), w), contiguous(out.bias.get(), cout),
                                              contiguous(out.reports.get(), S)};
    try {
      layer.train_step(policy, rebind(x, dx.get()), wv, bv, views);
    } catch (const numerical_error&) {
      result.emplace_back();
      continue;
    }
    buffer<T> gx{std::size_t(x.size())}, gwo{std::size_t(w.size())}, gbo{bias.size()};
    buffer<isqrt_report> reports{std::size_t(S)};
    const statistics_step_gradients<T, R> grads{checks::contiguous_like(gwo.get(), w),
                                                bias.empty() ? vector_view<T>{} : contiguous(gbo.get(), cout),
                                                checks::contiguous_like(gx.get(), x), contiguous(reports.get(), S)};
    layer.backward(policy, rebind(x, dx.get()), wv, bv,
                   block_statistics_view<const T>{p, row_major<const T>(out.mean.get(), S, F), cube<const T>(out.D.get(), S, F)},
                   step_diagnostic{}, gwv, contiguous<const T>(dgb.get(), cout), grads,
                   constants ? statistics_gradient::constants : statistics_gradient::full);
    st.sync();
    result.push_back({gwo.download(), gbo.download(), gx.download(), reports.download()});
  }
  return result;
}

}  // namespace

template <class T>
std::vector<host_step_vjp<T>> conv_layer_backward(const std::vector<image_view<const T>>& xs, std::size_t span,
                                                  image_view<const T> w, const std::vector<T>& bias,
                                                  const conv_deconv_config& config, const layer_options& options,
                                                  const std::vector<T>& gw, const std::vector<T>& gb, bool constants) {
  return folding_layer_backward<T, 4>(conv_deconv_layer<T>(xs[0].shape[1], config, options), options, xs, span, w, bias, gw, gb,
                                      constants);
}

template <class T>
std::vector<host_step_vjp<T>> linear_layer_backward(const std::vector<matrix_view<const T>>& xs, std::size_t span,
                                                    matrix_view<const T> w, const std::vector<T>& bias,
                                                    const linear_deconv_config& config, const layer_options& options,
                                                    const std::vector<T>& gw, const std::vector<T>& gb, bool constants) {
  return folding_layer_backward<T, 2>(linear_deconv_layer<T>(xs[0].shape[1], config, options), options, xs, span, w, bias, gw,
                                      gb, constants);
}

template <class T>
std::vector<host_step_vjp<T>> channel_layer_backward(const std::vector<image_view<const T>>& xs, std::size_t span,
                                                     const channel_deconv_config& config, const layer_options& options,
                                                     const std::vector<std::vector<T>>& dys, bool constants) {
  const index_t C = xs[0].shape[1], B = config.block;
  channel_deconv_layer<T> layer(C, config, options);
  stream st;
  const cuda_policy policy{st.get()};
  device_state<T> state(1, B, options.average_covariance, C % B != 0);
  layer.attach_state(policy, state.view());
  std::vector<host_step_vjp<T>> result;
  for (std::size_t k = 0; k < xs.size(); ++k) {
    const image_view<const T>& x = xs[k];
    buffer<T> dx(x.data, span), y{std::size_t(x.size())}, mean{std::size_t(B)}, D{std::size_t(B * B)},
        remaining{C % B ? std::size_t(2) : 0};
    buffer<isqrt_report> reports{1};
    const channel_statistics_view<T> used{row_major(mean.get(), 1, B), cube(D.get(), 1, B),
                                          remaining.get() ? contiguous(remaining.get(), 2) : vector_view<T>{}};
    try {
      layer.train_step(policy, rebind(x, dx.get()), checks::contiguous_like(y.get(), x), used, contiguous(reports.get(), 1));
    } catch (const numerical_error&) {
      result.emplace_back();
      continue;
    }
    buffer<T> dy(dys[k].data(), dys[k].size()), gx{std::size_t(x.size())};
    buffer<isqrt_report> greports{1};
    layer.backward(policy, rebind(x, dx.get()), channel_statistics_view<const T>(used), step_diagnostic{},
                   checks::contiguous_like<const T>(dy.get(), x), checks::contiguous_like(gx.get(), x),
                   contiguous(greports.get(), 1), constants ? statistics_gradient::constants : statistics_gradient::full);
    st.sync();
    result.push_back({{}, {}, gx.download(), greports.download()});
  }
  return result;
}

template <class T>
host_layer_trace<T> conv_layer(const std::vector<image_view<const T>>& xs, std::size_t span, image_view<const T> w,
                               const std::vector<T>& bias, const conv_deconv_config& config, const layer_options& options) {
  return folding_layer<T, 4>(conv_deconv_layer<T>(xs[0].shape[1], config, options), options, xs, span, w, bias);
}

template <class T>
host_layer_trace<T> linear_layer(const std::vector<matrix_view<const T>>& xs, std::size_t span, matrix_view<const T> w,
                                 const std::vector<T>& bias, const linear_deconv_config& config, const layer_options& options) {
  return folding_layer<T, 2>(linear_deconv_layer<T>(xs[0].shape[1], config, options), options, xs, span, w, bias);
}

template <class T>
host_layer_trace<T> channel_layer(const std::vector<image_view<const T>>& xs, std::size_t span,
                                  const channel_deconv_config& config, const layer_options& options) {
  const index_t C = xs[0].shape[1], B = config.block;
  channel_deconv_layer<T> layer(C, config, options);
  stream st;
  const cuda_policy policy{st.get()};
  device_state<T> state(1, B, options.average_covariance, C % B != 0);
  layer.attach_state(policy, state.view());
  host_layer_trace<T> t;
  for (const image_view<const T>& x : xs) {
    buffer<T> dx(x.data, span), dy(std::size_t(x.size()));
    try {
      layer.train_step(policy, rebind(x, dx.get()), checks::contiguous_like(dy.get(), x));
      t.threw.push_back(0);
    } catch (const numerical_error&) {
      t.threw.push_back(1);
    }
    st.sync();
    checks::host_step<T> h;
    h.weight = dy.download();
    t.steps.push_back(std::move(h));
  }
  buffer<T> dx(xs.back().data, span), dy(std::size_t(xs.back().size()));
  layer.eval(policy, rebind(xs.back(), dx.get()), checks::contiguous_like(dy.get(), xs.back()));
  st.sync();
  t.evaluated = dy.download();
  state.download(t);
  return t;
}

host_step<float> readme_snippet(const std::vector<float>& x_host, index_t N, index_t C, index_t H, index_t W,
                                const std::vector<float>& w_host, const std::vector<float>& b_host, index_t Cout) {
  stream st;
  at::cuda::current_stream = st.get();
  const index_t count = conv_statistics_plan(C, conv_deconv_config{}).count();
  const index_t features = C * 9 / count;  // the snippet's plan: reference defaults, 3x3 kernel
  buffer<float> dx(x_host.data(), x_host.size()), dw(w_host.data(), w_host.size()), db(b_host.data(), b_host.size());
  device_step<float> o(count, features, Cout * C * 9, Cout);
  const at::Tensor x{dx.get(), {N, C, H, W}, {C * H * W, H * W, W, 1}}, w{dw.get(), {Cout, C, 3, 3}, {C * 9, 9, 3, 1}},
      b{db.get(), {Cout}, {1}}, mean{o.mean.get(), {count, features}, {features, 1}},
      D{o.D.get(), {count, features, features}, {features * features, features, 1}}, w_out{o.weight.get(), {}, {}},
      b_out{o.bias.get(), {}, {}};
  isqrt_report* reports_ptr = o.reports.get();
  // README snippet begin
  netdeconv::cuda_policy policy{at::cuda::getCurrentCUDAStream().stream()};  // Python: torch.cuda.current_stream().cuda_stream
  netdeconv::conv_deconv_config cfg;                                 // reference defaults: block 64, S = 3, 5 iterations
  cfg.geometry = netdeconv::conv_geometry::square(3, 1, 1);
  const netdeconv::block_plan plan = netdeconv::conv_statistics_plan(C, cfg);
  const netdeconv::index_t S = plan.count(), F = plan.features();   // statistics, features per statistic
  auto xv = netdeconv::strided<const float, 4>(x.data_ptr<float>(), x.sizes(), x.strides());
  netdeconv::statistics_step_outputs<float, 4> out{
      netdeconv::row_major(mean.data_ptr<float>(), S, F),            // mu (S, F)
      netdeconv::strided<float, 3>(D.data_ptr<float>(), D.sizes(), D.strides()),   // D (S, F, F)
      netdeconv::nchw(w_out.data_ptr<float>(), Cout, C, 3, 3),       // W'
      netdeconv::contiguous(b_out.data_ptr<float>(), Cout),          // b'
      netdeconv::contiguous(reports_ptr, S)};                        // netdeconv::isqrt_report[S] in device memory
  netdeconv::conv_statistics_step(policy, xv, netdeconv::nchw<const float>(w.data_ptr<float>(), Cout, C, 3, 3),
                                  netdeconv::contiguous<const float>(b.data_ptr<float>(), Cout), cfg, out);
  // enqueued on the stream, no synchronisation: then torch's conv2d(x, w_out, b_out)
  // README snippet end
  st.sync();
  return o.download();
}

std::string failing_call_message() {
  try {
    void* p = nullptr;
    NETDECONV_CUDA_CHECK(cudaMalloc(&p, std::size_t(1) << 62));
  } catch (const cuda_error& e) {
    (void)cudaGetLastError();
    return e.what();
  }
  return {};
}

std::string small_workspace_message() {
  std::vector<float> x(2 * 3 * 5 * 5, 1.0f);
  buffer<float> dx(x.data(), x.size());
  buffer<char> ws{16};
  cuda_policy policy{};
  policy.workspace = {ws.get(), 16};
  const block_plan p{block_layout::independent, 3, 9, 1, 3};
  device_moments m(p.count(), p.features());
  try {
    block_moments(policy, patch_sampler<float>(nchw<const float>(dx.get(), 2, 3, 5, 5), conv_geometry::square(3), 1), p,
                  m.view());
  } catch (const netdeconv::invalid_argument& e) {
    return e.what();
  }
  return {};
}

std::string tf32_double_message() {
  std::vector<double> x(2 * 3, 1.0);
  buffer<double> dx(x.data(), x.size());
  const block_plan p{block_layout::independent, 3, 1, 1, 3};
  device_moments m(p.count(), p.features());
  try {
    block_moments(cuda_policy{}, matrix_rows<double>(row_major<const double>(dx.get(), 2, 3)), p, m.view(),
                  cov_precision::tf32);
  } catch (const netdeconv::invalid_argument& e) {
    return e.what();
  }
  return {};
}

std::string host_pointer_message() {
  std::vector<double> x(4 * 3, 1.0);
  const block_plan p{block_layout::independent, 3, 1, 1, 3};
  device_moments m(p.count(), p.features());
  try {
    block_moments(cuda_policy{}, matrix_rows<double>(row_major<const double>(x.data(), 4, 3)), p, m.view());
  } catch (const netdeconv::invalid_argument& e) {
    return e.what();
  }
  return {};
}

std::vector<std::string> layer_refusal_messages() {
  const auto message = [](auto&& call) -> std::string {
    try {
      call();
    } catch (const netdeconv::invalid_argument& e) {
      return e.what();
    }
    return {};
  };
  stream st;
  const cuda_policy policy{st.get()};
  linear_deconv_config cfg;
  cfg.block = 2;
  const index_t S = 1, F = 2, rows = 8;
  buffer<float> x(static_cast<std::size_t>(rows * F)), w(static_cast<std::size_t>(F)), out(64);
  buffer<isqrt_report> reports(1);
  device_state<float> state(S, F, false, false), exact_state(S, F, false, false);
  const matrix_view<const float> xv = row_major<const float>(x.get(), rows, F), wv = row_major<const float>(w.get(), 1, F);
  const statistics_step_outputs<float, 2> views{row_major(out.get(), S, F), cube(out.get() + 2, S, F),
                                                row_major(out.get() + 6, 1, F), contiguous(out.get() + 8, 1),
                                                contiguous(reports.get(), 1)};
  std::vector<std::string> m;
  linear_deconv_layer<float> host_layer(F, cfg);
  m.push_back(message([&] { host_layer.train_step(policy, xv, wv, {}, views); }));
  linear_deconv_layer<float> device_layer(F, cfg);
  device_layer.attach_state(policy, state.view());
  m.push_back(message([&] { (void)device_layer.steps(); }));
  layer_options exact;
  exact.on_failure = failure_policy::exact_fallback;
  linear_deconv_layer<float> exact_layer(F, cfg, exact);
  exact_layer.attach_state(policy, exact_state.view());
  m.push_back(message([&] { exact_layer.train_step(policy, xv, wv, {}, views); }));
  channel_deconv_config ccfg;
  ccfg.block = 2;
  channel_deconv_layer<float> channel(2, ccfg);
  device_state<float> cstate(1, 2, false, false);
  channel.attach_state(policy, cstate.view());
  buffer<float> image(std::size_t(2 * 2 * 4 * 4));
  const image_view<float> iv = nchw(image.get(), 2, 2, 4, 4);
  m.push_back(message([&] { channel.train_step(policy, image_view<const float>(iv), iv); }));
  std::vector<float> host_mean(2), host_D(4);
  std::vector<index_t> host_counters(3);
  linear_deconv_layer<float> pageable(F, cfg);
  m.push_back(message([&] {
    pageable.attach_state(policy, {row_major(host_mean.data(), 1, 2), cube(host_D.data(), 1, 2), {},
                                   contiguous(host_counters.data(), 3), {}});
  }));
  return m;
}

#define NETDECONV_INSTANTIATE(T)                                                                                       \
  template std::vector<T> im2col<T>(image_view<const T>, std::size_t, const conv_geometry&);                           \
  template std::vector<T> col2im<T>(const std::vector<T>&, index_t, index_t, index_t, index_t, const conv_geometry&);  \
  template host_moments block_moments_image<T>(image_view<const T>, std::size_t, const conv_geometry&, index_t,         \
                                               const block_plan&, bool);                                               \
  template host_moments block_moments_matrix<T>(matrix_view<const T>, std::size_t, const block_plan&);                 \
  template std::vector<T> covariance<T>(const host_moments&, double);                                                  \
  template host_isqrt<T> inverse_sqrt<T>(const std::vector<T>&, index_t, index_t, const isqrt_options&);               \
  template host_isqrt<T> inverse_sqrt_vjp<T>(const std::vector<T>&, const std::vector<T>&, index_t, index_t,          \
                                             const isqrt_options&);                                                    \
  template host_fold_vjp<T> fold_vjp<T>(const block_plan&, const std::vector<T>&, const std::vector<T>&,             \
                                        image_view<const T>, std::size_t, const std::vector<T>&, const std::vector<T>&, \
                                        const std::vector<T>&);                                                        \
  template std::vector<T> conv_covariance_vjp<T>(image_view<const T>, std::size_t, const conv_deconv_config&,          \
                                                 const host_moments&, const std::vector<T>&, const std::vector<T>&);   \
  template host_step_vjp<T> conv_step_vjp<T>(image_view<const T>, std::size_t, image_view<const T>, const std::vector<T>&, \
                                             const conv_deconv_config&, const host_step<T>&, const std::vector<T>&,    \
                                             const std::vector<T>&);                                                   \
  template host_step_vjp<T> linear_step_vjp<T>(matrix_view<const T>, std::size_t, matrix_view<const T>,                \
                                               const std::vector<T>&, const linear_deconv_config&, const host_step<T>&, \
                                               const std::vector<T>&, const std::vector<T>&);                          \
  template std::vector<T> fold<T>(const block_plan&, const std::vector<T>&, const std::vector<T>&, image_view<const T>, \
                                  std::size_t, const std::vector<T>&);                                                 \
  template std::vector<T> apply_whitening<T>(const block_plan&, const std::vector<T>&, const std::vector<T>&,          \
                                             matrix_view<const T>, std::size_t, bool);                                 \
  template host_step<T> conv_step<T>(image_view<const T>, std::size_t, image_view<const T>, const std::vector<T>&,     \
                                     const conv_deconv_config&);                                                       \
  template host_step<T> linear_step<T>(matrix_view<const T>, std::size_t, matrix_view<const T>, const std::vector<T>&, \
                                       const linear_deconv_config&);                                                   \
  template host_layer_trace<T> conv_layer<T>(const std::vector<image_view<const T>>&, std::size_t, image_view<const T>, \
                                             const std::vector<T>&, const conv_deconv_config&, const layer_options&);  \
  template host_layer_trace<T> linear_layer<T>(const std::vector<matrix_view<const T>>&, std::size_t,                  \
                                               matrix_view<const T>, const std::vector<T>&, const linear_deconv_config&, \
                                               const layer_options&);                                                  \
  template std::vector<host_step_vjp<T>> conv_layer_backward<T>(const std::vector<image_view<const T>>&, std::size_t,   \
                                                                image_view<const T>, const std::vector<T>&,             \
                                                                const conv_deconv_config&, const layer_options&,        \
                                                                const std::vector<T>&, const std::vector<T>&, bool);    \
  template std::vector<host_step_vjp<T>> linear_layer_backward<T>(const std::vector<matrix_view<const T>>&, std::size_t, \
                                                                  matrix_view<const T>, const std::vector<T>&,          \
                                                                  const linear_deconv_config&, const layer_options&,    \
                                                                  const std::vector<T>&, const std::vector<T>&, bool);  \
  template std::vector<host_step_vjp<T>> channel_layer_backward<T>(const std::vector<image_view<const T>>&, std::size_t, \
                                                                   const channel_deconv_config&, const layer_options&,  \
                                                                   const std::vector<std::vector<T>>&, bool);           \
  template host_layer_trace<T> channel_layer<T>(const std::vector<image_view<const T>>&, std::size_t,                  \
                                                const channel_deconv_config&, const layer_options&);

NETDECONV_INSTANTIATE(float)
NETDECONV_INSTANTIATE(double)

}  // namespace netdeconv::cuda::test
