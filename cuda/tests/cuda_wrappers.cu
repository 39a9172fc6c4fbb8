// SPDX-License-Identifier: MIT
// nvcc side of the GPU tests: see cuda_wrappers.hpp.

#include "cuda_wrappers.hpp"

#include <netdeconv/cuda.cuh>

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

template <class T, int R>
device_view<T, R> rebind(device_view<const T, R> v, T* data) {
  device_view<T, R> out;
  out.data = data;
  for (int a = 0; a < R; ++a) {
    out.shape[a] = v.shape[a];
    out.stride[a] = v.stride[a];
  }
  return out;
}

host_moments download(const device_moments& m) {
  host_moments h;
  h.statistics = m.statistics;
  h.features = m.features;
  h.count.resize(m.statistics);
  h.mean.resize(m.statistics * m.features);
  h.scatter.resize(m.statistics * m.features * m.features);
  NETDECONV_CUDA_CHECK(cudaMemcpy(h.count.data(), m.count, h.count.size() * sizeof(long long), cudaMemcpyDeviceToHost));
  NETDECONV_CUDA_CHECK(cudaMemcpy(h.mean.data(), m.mean, h.mean.size() * sizeof(double), cudaMemcpyDeviceToHost));
  NETDECONV_CUDA_CHECK(cudaMemcpy(h.scatter.data(), m.scatter, h.scatter.size() * sizeof(double), cudaMemcpyDeviceToHost));
  return h;
}

void upload(const host_moments& h, const device_moments& m) {
  NETDECONV_CUDA_CHECK(cudaMemcpy(m.count, h.count.data(), h.count.size() * sizeof(long long), cudaMemcpyHostToDevice));
  NETDECONV_CUDA_CHECK(cudaMemcpy(m.mean, h.mean.data(), h.mean.size() * sizeof(double), cudaMemcpyHostToDevice));
  NETDECONV_CUDA_CHECK(cudaMemcpy(m.scatter, h.scatter.data(), h.scatter.size() * sizeof(double), cudaMemcpyHostToDevice));
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
std::vector<T> im2col(device_view<const T, 4> x, std::size_t span, const geometry& g) {
  buffer<T> dx(x.data, span);
  const sampler s = sampler::make(x.shape[0], x.shape[1], x.shape[2], x.shape[3], g, 1, false);
  buffer<T> cols{std::size_t(s.rows * s.width)};
  stream st;
  netdeconv::im2col(cuda_policy{st.get()}, device_view<const T, 4>(rebind(x, dx.get())), g,
                    device_row_major(cols.get(), s.rows, s.width));
  st.sync();
  return cols.download();
}

template <class T>
std::vector<T> col2im(const std::vector<T>& cols, index_t N, index_t C, index_t H, index_t W, const geometry& g) {
  const sampler s = sampler::make(N, C, H, W, g, 1, false);
  buffer<T> dcols(cols.data(), cols.size());
  buffer<T> x{std::size_t(N * C * H * W)};
  stream st;
  netdeconv::col2im(cuda_policy{st.get()}, device_row_major<const T>(dcols.get(), s.rows, s.width), g,
                    device_nchw(x.get(), N, C, H, W));
  st.sync();
  return x.download();
}

namespace {

template <class T>
host_moments moments_image(device_view<const T, 4> x, std::size_t span, const geometry& g, index_t sampling_stride,
                           const plan& p, bool use_workspace, cov_precision precision) {
  buffer<T> dx(x.data, span);
  stream st;
  cuda_policy policy{st.get()};
  const auto rows = device_patch_sampler(device_view<const T, 4>(rebind(x, dx.get())), g, sampling_stride);
  const std::size_t bytes = block_moments_workspace(policy, rows, p);
  buffer<char> ws{use_workspace ? bytes : 0};
  if (use_workspace) policy.workspace = {ws.get(), bytes};
  device_moments_buffer m(p.count(), p.features());
  block_moments(policy, rows, p, m.view(), precision);
  st.sync();
  return download(m.view());
}

template <class T>
host_moments moments_matrix(device_view<const T, 2> x, std::size_t span, const plan& p, cov_precision precision) {
  buffer<T> dx(x.data, span);
  stream st;
  device_moments_buffer m(p.count(), p.features());
  block_moments(cuda_policy{st.get()}, device_matrix_rows(device_view<const T, 2>(rebind(x, dx.get()))), p, m.view(),
                precision);
  st.sync();
  return download(m.view());
}

__global__ void float_to_tf32_kernel(const float* x, float* out, long long n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    out[i] = nvcuda::wmma::__float_to_tf32(x[i]);
#endif
}

}  // namespace

template <class T>
host_moments block_moments_image(device_view<const T, 4> x, std::size_t span, const geometry& g, index_t sampling_stride,
                                 const plan& p, bool use_workspace) {
  return moments_image(x, span, g, sampling_stride, p, use_workspace, cov_precision::full);
}

template <class T>
host_moments block_moments_matrix(device_view<const T, 2> x, std::size_t span, const plan& p) {
  return moments_matrix(x, span, p, cov_precision::full);
}

host_moments block_moments_image_tf32(device_view<const float, 4> x, std::size_t span, const geometry& g,
                                      index_t sampling_stride, const plan& p) {
  return moments_image(x, span, g, sampling_stride, p, false, cov_precision::tf32);
}

host_moments block_moments_matrix_tf32(device_view<const float, 2> x, std::size_t span, const plan& p) {
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
  device_moments_buffer da(a.statistics, a.features), db(b.statistics, b.features), out(a.statistics, a.features);
  upload(a, da.view());
  upload(b, db.view());
  stream st;
  netdeconv::merge(cuda_policy{st.get()}, da.view(), db.view(), out.view());
  st.sync();
  return download(out.view());
}

template <class T>
std::vector<T> covariance(const host_moments& m, double eps) {
  device_moments_buffer dm(m.statistics, m.features);
  upload(m, dm.view());
  buffer<T> cov{std::size_t(m.statistics * m.features * m.features + m.statistics * m.features)};
  stream st;
  netdeconv::covariance(cuda_policy{st.get()}, dm.view(), eps, cov.get(), cov.get() + m.statistics * m.features * m.features);
  st.sync();
  return cov.download();
}

template <class T>
host_isqrt<T> inverse_sqrt(const std::vector<T>& A, index_t batch, index_t F, int iterations, double tolerance,
                           bool trace_scaling, bool final_residual) {
  buffer<T> dA(A.data(), A.size()), dD(A.size());
  buffer<int> it{std::size_t(batch)}, status{std::size_t(batch)};
  buffer<double> res{std::size_t(batch)};
  stream st;
  cublasHandle_t handle{};
  NETDECONV_CUBLAS_CHECK(cublasCreate(&handle));
  cuda_policy policy{st.get()};
  policy.blas = handle;
  const device_view<const T, 3> a{dA.get(), {batch, F, F}, {F * F, F, 1}};
  const device_view<T, 3> d{dD.get(), {batch, F, F}, {F * F, F, 1}};
  netdeconv::inverse_sqrt(policy, a, d, isqrt_params{iterations, tolerance, trace_scaling, final_residual},
                          device_isqrt_reports{it.get(), res.get(), status.get()});
  st.sync();
  (void)cublasDestroy(handle);
  return {dD.download(), it.download(), status.download(), res.download()};
}

template <class T>
std::vector<T> fold(const plan& p, const std::vector<T>& mean, const std::vector<T>& D, device_view<const T, 4> weight,
                    std::size_t span, const std::vector<T>& bias) {
  buffer<T> dmean(mean.data(), mean.size()), dD(D.data(), D.size()), dw(weight.data, span), db(bias.data(), bias.size());
  const index_t cout = weight.shape[0], ci = weight.shape[1], kh = weight.shape[2], kw = weight.shape[3];
  buffer<T> wout{std::size_t(cout * ci * kh * kw)}, bout{std::size_t(cout)};
  stream st;
  device_vector_view<const T> b = bias.empty() ? device_vector_view<const T>{} : device_contiguous<const T>(db.get(), cout);
  netdeconv::fold(cuda_policy{st.get()}, device_block_statistics<T>{p, dmean.get(), dD.get()},
                  device_view<const T, 4>(rebind(weight, dw.get())), b, device_nchw(wout.get(), cout, ci, kh, kw),
                  device_contiguous(bout.get(), cout));
  st.sync();
  std::vector<T> out = wout.download();
  const std::vector<T> bo = bout.download();
  out.insert(out.end(), bo.begin(), bo.end());
  return out;
}

template <class T>
std::vector<T> apply_whitening(const plan& p, const std::vector<T>& mean, const std::vector<T>& D,
                               device_view<const T, 2> X, std::size_t span, bool columns_are_samples) {
  buffer<T> dmean(mean.data(), mean.size()), dD(D.data(), D.size()), dx(X.data, span);
  buffer<T> out{std::size_t(X.shape[0] * X.shape[1])};
  stream st;
  netdeconv::apply_whitening(cuda_policy{st.get()}, device_block_statistics<T>{p, dmean.get(), dD.get()},
                             device_view<const T, 2>(rebind(X, dx.get())), device_row_major(out.get(), X.shape[0], X.shape[1]),
                             columns_are_samples);
  st.sync();
  return out.download();
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
  const plan p{plan::independent, 3, 9, 1, 3};
  device_moments_buffer m(p.count(), p.features());
  try {
    block_moments(policy, device_patch_sampler(device_nchw<const float>(dx.get(), 2, 3, 5, 5), geometry{3, 3}, 1), p,
                  m.view());
  } catch (const netdeconv::invalid_argument& e) {
    return e.what();
  }
  return {};
}

std::string tf32_double_message() {
  std::vector<double> x(2 * 3, 1.0);
  buffer<double> dx(x.data(), x.size());
  const plan p{plan::independent, 3, 1, 1, 3};
  device_moments_buffer m(p.count(), p.features());
  try {
    block_moments(cuda_policy{}, device_matrix_rows(device_row_major<const double>(dx.get(), 2, 3)), p, m.view(),
                  cov_precision::tf32);
  } catch (const netdeconv::invalid_argument& e) {
    return e.what();
  }
  return {};
}

#define NETDECONV_INSTANTIATE(T)                                                                                     \
  template std::vector<T> im2col<T>(device_view<const T, 4>, std::size_t, const geometry&);                          \
  template std::vector<T> col2im<T>(const std::vector<T>&, index_t, index_t, index_t, index_t, const geometry&);     \
  template host_moments block_moments_image<T>(device_view<const T, 4>, std::size_t, const geometry&, index_t,        \
                                               const plan&, bool);                                                   \
  template host_moments block_moments_matrix<T>(device_view<const T, 2>, std::size_t, const plan&);                 \
  template std::vector<T> covariance<T>(const host_moments&, double);                                                \
  template host_isqrt<T> inverse_sqrt<T>(const std::vector<T>&, index_t, index_t, int, double, bool, bool);          \
  template std::vector<T> fold<T>(const plan&, const std::vector<T>&, const std::vector<T>&, device_view<const T, 4>, \
                                  std::size_t, const std::vector<T>&);                                               \
  template std::vector<T> apply_whitening<T>(const plan&, const std::vector<T>&, const std::vector<T>&,              \
                                             device_view<const T, 2>, std::size_t, bool);

NETDECONV_INSTANTIATE(float)
NETDECONV_INSTANTIATE(double)

}  // namespace netdeconv::cuda::test
