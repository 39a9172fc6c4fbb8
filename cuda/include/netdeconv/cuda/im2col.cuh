// SPDX-License-Identifier: MIT
#pragma once
// CUDA im2col and col2im: the calls of netdeconv/im2col.hpp with a cuda_policy and device views,
// checked by the same netdeconv::detail::check_im2col / check_col2im. One thread per output element
// (bodies/im2col.hpp); col2im gathers the kernel taps of each pixel (no atomics: deterministic).
//
//   netdeconv::im2col(netdeconv::cuda_policy{stream}, netdeconv::nchw<const float>(x, N, C, H, W),
//                     netdeconv::conv_geometry::square(3, 1, 1), netdeconv::row_major(cols, rows, C * 9));

#include <netdeconv/checks.hpp>
#include <netdeconv/geometry.hpp>
#include <netdeconv/tensor_view.hpp>

#include "bodies/im2col.hpp"
#include "execution.cuh"

namespace netdeconv {
namespace cuda::detail {

template <class T>
__global__ void im2col_kernel(patch_map map, image_view<const T> x, matrix_view<T> cols, long long count) {
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    im2col_element(map, x, cols, e);
}

template <class T>
__global__ void col2im_kernel(patch_map map, matrix_view<const T> cols, image_view<T> x, long long count) {
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    col2im_pixel(map, cols, x, e);
}

}  // namespace cuda::detail

/// cols[(n,oy,ox), (c,ky,kx)] = x[n, c, oy*s - p + ky*d, ox*s - p + kx*d] (0 outside the image), as on
/// the CPU; every entry of cols is written. Asynchronous on policy.stream.
template <class T>
void im2col(const cuda_policy& policy, image_view<const T> x, const conv_geometry& g, matrix_view<T> cols) {
  namespace d = cuda::detail;
  constexpr const char* fn = "im2col";
  const patch_map map = ::netdeconv::detail::check_im2col(fn, x, g, cols);
  d::check_device_memory(fn, "x", x);
  d::check_device_memory(fn, "cols", cols);
  const long long count = map.rows * map.width;
  if (count == 0) return;
  d::im2col_kernel<T><<<d::grid_for(count, 256), 256, 0, policy.stream>>>(map, x, cols, count);
  NETDECONV_CUDA_CHECK_LAUNCH("im2col_kernel");
}

/// Adjoint of im2col: x[n,c,y,x] = sum of the cols entries im2col reads from that pixel; x is
/// overwritten. Asynchronous.
template <class T>
void col2im(const cuda_policy& policy, matrix_view<const T> cols, const conv_geometry& g, image_view<T> x) {
  namespace d = cuda::detail;
  constexpr const char* fn = "col2im";
  const patch_map map = ::netdeconv::detail::check_col2im(fn, cols, g, x);
  d::check_device_memory(fn, "cols", cols);
  d::check_device_memory(fn, "x", x);
  const long long count = x.size();
  if (count == 0) return;
  d::col2im_kernel<T><<<d::grid_for(count, 256), 256, 0, policy.stream>>>(map, cols, x, count);
  NETDECONV_CUDA_CHECK_LAUNCH("col2im_kernel");
}

}  // namespace netdeconv
