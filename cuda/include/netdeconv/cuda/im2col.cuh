// SPDX-License-Identifier: MIT
#pragma once
// CUDA im2col and col2im (docs/method.md §2; same semantics as netdeconv/im2col.hpp) on device views.
// One thread per output element; col2im gathers the kernel taps of each pixel (no atomics, so the
// result is deterministic). Geometry is any object with conv_geometry's fields (netdeconv::conv_geometry
// or netdeconv::cuda::geometry).
//
//   netdeconv::im2col(netdeconv::cuda_policy{stream}, device_nchw<const float>(x, N, C, H, W),
//                     netdeconv::cuda::geometry{3, 3, 1, 1, 1, 1, 1, 1}, device_row_major(cols, rows, C*9));

#include "execution.cuh"
#include "kernel_bodies.hpp"
#include "tensor_view.cuh"

namespace netdeconv {
namespace cuda::detail {

template <class T>
__global__ void im2col_kernel(sampler s, device_view<const T, 4> x, device_view<T, 2> cols, long long count) {
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    im2col_element(s, x, cols, e);
}

template <class T>
__global__ void col2im_kernel(sampler s, device_view<const T, 2> cols, device_view<T, 4> x, long long count) {
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    col2im_pixel(s, cols, x, e);
}

inline void check_geometry(const char* fn, const geometry& g) {
  NETDECONV_REQUIRE(g.kernel_h >= 1 && g.kernel_w >= 1, fn, "kernel must be >= 1, got ", g.kernel_h, "x", g.kernel_w);
  NETDECONV_REQUIRE(g.stride_h >= 1 && g.stride_w >= 1, fn, "stride must be >= 1, got ", g.stride_h, "x", g.stride_w);
  NETDECONV_REQUIRE(g.pad_h >= 0 && g.pad_w >= 0, fn, "padding must be >= 0, got ", g.pad_h, "x", g.pad_w);
  NETDECONV_REQUIRE(g.dilation_h >= 1 && g.dilation_w >= 1, fn, "dilation must be >= 1, got ", g.dilation_h, "x",
                    g.dilation_w);
}

/// Sampler of x under g (validated; sizes overflow-checked).
template <class T>
sampler make_sampler(const char* fn, const device_view<const T, 4>& x, const geometry& g, index_t sampling_stride,
                     bool allow_pointwise) {
  check_geometry(fn, g);
  check_device_view(fn, "x", x);
  NETDECONV_REQUIRE(sampling_stride >= 1, fn, "sampling_stride must be >= 1, got ", sampling_stride);
  using ::netdeconv::detail::checked_mul;
  using ::netdeconv::detail::checked_product;
  checked_product(fn, "patch columns C*kh*kw", x.shape[1], g.kernel_h, g.kernel_w);
  checked_mul(fn, "effective stride", sampling_stride, g.stride_h);
  checked_mul(fn, "effective stride", sampling_stride, g.stride_w);
  const sampler s = sampler::make(x.shape[0], x.shape[1], x.shape[2], x.shape[3], g, sampling_stride, allow_pointwise);
  checked_mul(fn, "patch matrix size", s.rows, s.width);
  return s;
}

}  // namespace cuda::detail

/// cols[(n,oy,ox), (c,ky,kx)] = x[n, c, oy*s - p + ky*d, ox*s - p + kx*d] (0 outside the image);
/// cols is (N*Ho*Wo) x (C*kh*kw), any strides; every entry is written.
template <class T, class Geometry>
void im2col(const cuda_policy& policy, device_image_view<const T> x, const Geometry& geometry, device_matrix_view<T> cols) {
  namespace d = cuda::detail;
  constexpr const char* fn = "im2col";
  const cuda::sampler s = d::make_sampler(fn, x, cuda::to_geometry(geometry), 1, false);
  d::check_device_view(fn, "cols", cols);
  NETDECONV_REQUIRE(cols.shape[0] == s.rows && cols.shape[1] == s.width, fn, "cols is ", cols.shape[0], "x",
                    cols.shape[1], " but the patch matrix is ", s.rows, "x", s.width);
  const long long count = s.rows * s.width;
  if (count == 0) return;
  d::im2col_kernel<T><<<d::grid_for(count, 256), 256, 0, policy.stream>>>(s, x, cols, count);
  NETDECONV_CUDA_CHECK_LAUNCH("im2col_kernel");
}

/// Adjoint of im2col: x[n,c,y,x] = sum of the cols entries im2col reads from that pixel (x is overwritten).
template <class T, class Geometry>
void col2im(const cuda_policy& policy, device_matrix_view<const T> cols, const Geometry& geometry, device_image_view<T> x) {
  namespace d = cuda::detail;
  constexpr const char* fn = "col2im";
  const cuda::sampler s = d::make_sampler(fn, device_image_view<const T>(x), cuda::to_geometry(geometry), 1, false);
  d::check_device_view(fn, "cols", cols);
  NETDECONV_REQUIRE(cols.shape[0] == s.rows && cols.shape[1] == s.width, fn, "cols is ", cols.shape[0], "x",
                    cols.shape[1], " but the patch matrix of x is ", s.rows, "x", s.width);
  const long long count = x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3];
  if (count == 0) return;
  d::col2im_kernel<T><<<d::grid_for(count, 256), 256, 0, policy.stream>>>(s, cols, x, count);
  NETDECONV_CUDA_CHECK_LAUNCH("col2im_kernel");
}

}  // namespace netdeconv
