// SPDX-License-Identifier: MIT
#pragma once
// What each thread of the CUDA im2col and col2im kernels computes (../im2col.cuh), with the
// element index passed in. Plain C++ without nvcc, so that cuda/tests/emulator.hpp runs it on the
// host for every index. The bodies of each CUDA algorithm live in bodies/<algorithm>.hpp.

#include <netdeconv/config.hpp>
#include <netdeconv/geometry.hpp>
#include <netdeconv/tensor_view.hpp>

namespace netdeconv::cuda::detail {

/// Element e = r*width + j of the patch matrix: cols(r, j) = x at map.locate(r, j) (0 for padding).
template <class T>
NETDECONV_HOST_DEVICE void im2col_element(const patch_map& map, const image_view<const T>& x, const matrix_view<T>& cols,
                                          index_t e) {
  const index_t r = e / map.width, j = e % map.width;
  const patch_coord p = map.locate(r, j);
  cols(r, j) = p.inside ? x(p.n, p.c, p.y, p.x) : T(0);
}

/// Along one axis: the output position o with o*s - p + k*d == y, or -1 if there is none.
NETDECONV_HOST_DEVICE inline index_t source_position(index_t y, index_t k, index_t s, index_t p, index_t d, index_t out) {
  const index_t t = y + p - k * d;
  if (t < 0 || t % s != 0) return -1;
  const index_t o = t / s;
  return o < out ? o : -1;
}

/// Pixel e = ((n*C + c)*H + y)*W + x of col2im: the sum of the cols entries that im2col reads
/// from it (a gather over the kernel taps, ky then kx: no atomics, a fixed order).
template <class T>
NETDECONV_HOST_DEVICE void col2im_pixel(const patch_map& map, const matrix_view<const T>& cols, const image_view<T>& x,
                                        index_t e) {
  const index_t C = map.C, H = map.H, W = map.W;
  const index_t xx = e % W, y = (e / W) % H, c = (e / (W * H)) % C, n = e / (W * H * C);
  const conv_geometry& g = map.g;
  T sum = T(0);
  for (index_t ky = 0; ky < g.kernel_h; ++ky) {
    const index_t oy = source_position(y, ky, g.stride_h, g.pad_h, g.dilation_h, map.out_h);
    if (oy < 0) continue;
    for (index_t kx = 0; kx < g.kernel_w; ++kx) {
      const index_t ox = source_position(xx, kx, g.stride_w, g.pad_w, g.dilation_w, map.out_w);
      if (ox < 0) continue;
      sum += cols((n * map.out_h + oy) * map.out_w + ox, (c * g.kernel_h + ky) * g.kernel_w + kx);
    }
  }
  x(n, c, y, xx) = sum;
}

}  // namespace netdeconv::cuda::detail
