// SPDX-License-Identifier: MIT
#pragma once
// The channel layer's sampling rule (docs/method.md §7, last bullet), shared by its CPU and CUDA
// steps. Eigen-free; compiles in __host__ __device__ code.
//
// With c = floor(C/B)*B, the first c channels form B feature rows: row f is channels
// [f*c/B, (f+1)*c/B) concatenated, each in (n, y, x) order, so one "sample" is the B values at the
// same position of channel f*c/B + cc for f = 0..B-1. Statistics use every S^2-th sample when
// H >= S and W >= S (else all): sample r is position j = r*step of the concatenated rows. The
// remaining C - c channels' statistics read every step-th value of the flattened (C-c, H, W)
// block of each image.

#include <type_traits>

#include "config.hpp"
#include "isqrt_options.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

struct channel_deconv_config {
  index_t block = 16;
  index_t sampling_stride = 3;
  double eps = 1e-2;
  isqrt_options isqrt = isqrt_options::fixed(5);
  bool uncentred_covariance = true;  ///< the reference's quirk; false: centred covariance
};

/// The statistics a channel layer's training step used, in caller views: the whitened channels'
/// mean (1, B) and D (1, B, B), and the remaining channels' mean and variance (2; empty when C is a
/// multiple of B).
template <class T>
struct channel_statistics_view {
  matrix_view<T> mean;
  tensor_view<T, 3> D;
  vector_view<T> remaining;

  template <class U = T, class = std::enable_if_t<!std::is_const_v<U>>>
  operator channel_statistics_view<const U>() const {
    return {mean, D, remaining};
  }
};

namespace detail {

/// A channel layer's shape: C channels, the first `whitened` = floor(C/B)*B of them in B rows.
struct channel_spec {
  index_t channels, whitened, block, sampling_stride;
  double eps;

  NETDECONV_HOST_DEVICE index_t per_row() const { return whitened / block; }
  /// Sample step: S^2 when H >= S and W >= S (S > 1), else 1.
  NETDECONV_HOST_DEVICE index_t step(const index_array<4>& shape) const {
    const index_t S = sampling_stride;
    return S > 1 && shape[2] >= S && shape[3] >= S ? S * S : 1;
  }
  /// Values of one image the remaining channels' statistics read.
  NETDECONV_HOST_DEVICE index_t remaining_per_image(const index_array<4>& shape) const {
    const index_t length = (channels - whitened) * shape[2] * shape[3];
    return length == 0 ? 0 : (length - 1) / step(shape) + 1;
  }
  /// Value k (< remaining_per_image) of image n of the remaining channels.
  template <class T>
  NETDECONV_HOST_DEVICE T remaining_value(const image_view<const T>& x, index_t n, index_t k) const {
    const index_t H = x.shape[2], W = x.shape[3], e = k * step(x.shape);
    return x(n, whitened + e / (H * W), (e / W) % H, e % W);
  }
};

/// The row source of the whitened channels' statistics (B features per row; see file comment).
template <class T>
struct channel_samples {
  using value_type = T;
  image_view<const T> x;
  index_t per_row, block, step;

  NETDECONV_HOST_DEVICE const image_view<const T>& image() const { return x; }
  NETDECONV_HOST_DEVICE index_t rows() const {
    const index_t length = per_row * x.shape[0] * x.shape[2] * x.shape[3];
    return length == 0 ? 0 : (length - 1) / step + 1;
  }
  NETDECONV_HOST_DEVICE index_t width() const { return block; }
  /// Feature f of sample r.
  template <class Out>
  NETDECONV_HOST_DEVICE Out value(index_t r, index_t f) const {
    const index_t j = r * step, plane = x.shape[0] * x.shape[2] * x.shape[3], p = j % plane;
    const index_t cc = j / plane, n = p / (x.shape[2] * x.shape[3]), yy = (p / x.shape[3]) % x.shape[2],
                  xx = p % x.shape[3];
    return static_cast<Out>(x(n, f * per_row + cc, yy, xx));
  }
  template <class Out>
  void gather(index_t r, Out* out) const {
    for (index_t f = 0; f < block; ++f) out[f] = value<Out>(r, f);
  }
};

/// add(r, v) adds v[f] (f < B) to the pixel of feature f of sample r of a channel_samples over an
/// image of dx's shape (host code); every sample is its own chunk (no two touch the same pixel).
template <class T>
struct channel_row_adder {
  channel_samples<T> layout;  // the sampling; its x is not read
  image_view<T> dx;

  index_t chunk_rows() const { return 1; }
  template <class V>
  void operator()(index_t r, const V* v) const {
    const index_t j = r * layout.step, plane = dx.shape[0] * dx.shape[2] * dx.shape[3], p = j % plane, cc = j / plane;
    const index_t n = p / (dx.shape[2] * dx.shape[3]), yy = (p / dx.shape[3]) % dx.shape[2], xx = p % dx.shape[3];
    for (index_t f = 0; f < layout.block; ++f) dx(n, f * layout.per_row + cc, yy, xx) += T(v[f]);
  }
};

template <class T>
channel_samples<T> make_channel_samples(const channel_spec& spec, const image_view<const T>& x) {
  return {x, spec.per_row(), spec.block, spec.step(x.shape)};
}

}  // namespace detail
}  // namespace netdeconv
