// SPDX-License-Identifier: MIT
#pragma once
// Convolution geometry, the patch-matrix indexing it defines and the sampled patch rows that the
// statistics use (docs/method.md §2). Eigen-free.
//
// Patch matrix of x (axes (N, C, H, W), any layout) under g: (N*Ho*Wo) x (C*kh*kw); row
// r = (n, oy, ox) in raster order, column j = c*kh*kw + ky*kw + kx (the order of
// torch.nn.functional.unfold), value x[n, c, oy*s_h - p_h + ky*d_h, ox*s_w - p_w + kx*d_w] or 0
// outside the image.

#include <array>

#include "config.hpp"
#include "error.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

/// Convolution geometry per axis: kernel, stride, zero padding, dilation.
struct conv_geometry {
  index_t kernel_h = 1, kernel_w = 1;
  index_t stride_h = 1, stride_w = 1;
  index_t pad_h = 0, pad_w = 0;
  index_t dilation_h = 1, dilation_w = 1;

  /// Same kernel, stride, padding and dilation on both axes.
  static conv_geometry square(index_t kernel, index_t stride = 1, index_t pad = 0, index_t dilation = 1) {
    return {kernel, kernel, stride, stride, pad, pad, dilation, dilation};
  }
  index_t kernel_area() const { return detail::checked_mul("conv_geometry", "kernel area kh*kw", kernel_h, kernel_w); }
  NETDECONV_HOST_DEVICE bool is_pointwise() const { return kernel_h == 1 && kernel_w == 1; }
  /// Ho = floor((H + 2p - d(k-1) - 1)/s) + 1; 0 when the dilated kernel does not fit. Throws
  /// invalid_argument when an intermediate leaves index_t (e.g. padding 2^62).
  index_t out_h(index_t h) const { return out_size(h, kernel_h, stride_h, pad_h, dilation_h); }
  index_t out_w(index_t w) const { return out_size(w, kernel_w, stride_w, pad_w, dilation_w); }

 private:
  static index_t out_size(index_t n, index_t k, index_t s, index_t p, index_t d) {
    constexpr const char* fn = "conv_geometry";
    const index_t padded = detail::checked_add(fn, "padded extent H + 2p", n, detail::checked_mul(fn, "padding 2p", 2, p));
    const index_t reach = detail::checked_mul(fn, "dilated kernel d(k-1)", d, detail::checked_add(fn, "k - 1", k, -1));
    const index_t span = detail::checked_add(fn, "H + 2p - d(k-1) - 1", padded, -detail::checked_add(fn, "d(k-1) + 1", reach, 1));
    return span < 0 ? 0 : span / s + 1;
  }
};

namespace detail {

inline void check_geometry(const char* function, const conv_geometry& g) {
  NETDECONV_REQUIRE(g.kernel_h >= 1 && g.kernel_w >= 1, function, "kernel must be >= 1, got ", g.kernel_h, "x", g.kernel_w);
  NETDECONV_REQUIRE(g.stride_h >= 1 && g.stride_w >= 1, function, "stride must be >= 1, got ", g.stride_h, "x", g.stride_w);
  NETDECONV_REQUIRE(g.pad_h >= 0 && g.pad_w >= 0, function, "padding must be >= 0, got ", g.pad_h, "x", g.pad_w);
  NETDECONV_REQUIRE(g.dilation_h >= 1 && g.dilation_w >= 1, function, "dilation must be >= 1, got ", g.dilation_h, "x",
                    g.dilation_w);
}

/// Rows and columns of the patch matrix of x under g, overflow-checked.
template <class T>
std::array<index_t, 2> patch_matrix_shape(const char* function, const image_view<T>& x, const conv_geometry& g) {
  check_geometry(function, g);
  check_view(function, "x", x);
  const index_t rows = checked_product(function, "patch rows N*Ho*Wo", x.shape[0], g.out_h(x.shape[2]), g.out_w(x.shape[3]));
  const index_t cols = checked_product(function, "patch columns C*kh*kw", x.shape[1], g.kernel_h, g.kernel_w);
  return {rows, cols};
}

/// Calls f(j, n, c, y, x, inside) for the C*kh*kw entries of patch row r = (n, oy, ox) of x under g
/// (Ho x Wo output positions per image), j = (c*kh + ky)*kw + kx in order; inside says whether
/// pixel (y, x) lies in the image (else the entry is zero padding).
template <class T, class F>
void visit_patch_row(const image_view<T>& x, const conv_geometry& g, index_t out_h, index_t out_w, index_t r, F&& f) {
  const index_t C = x.shape[1], H = x.shape[2], W = x.shape[3];
  const index_t n = r / (out_h * out_w), oy = (r / out_w) % out_h, ox = r % out_w;
  index_t j = 0;
  for (index_t c = 0; c < C; ++c)
    for (index_t ky = 0; ky < g.kernel_h; ++ky) {
      const index_t y = oy * g.stride_h - g.pad_h + ky * g.dilation_h;
      for (index_t kx = 0; kx < g.kernel_w; ++kx, ++j) {
        const index_t xx = ox * g.stride_w - g.pad_w + kx * g.dilation_w;
        f(j, n, c, y, xx, y >= 0 && y < H && xx >= 0 && xx < W);
      }
    }
}

}  // namespace detail

/// The rows of the patch matrix that statistics are estimated from, with sampling stride S (docs/method.md §2):
/// - kernel > 1: the rows of im2col run with stride S*s (every (S*s)-th output position per axis);
/// - kernel 1x1: the pixels of x in (n, y, x) raster order, every (S*s_h)*(S*s_w)-th one from row 0.
/// gather(r, out) writes row r (C*kh*kw values, channel-major) to out[0 .. width()).
template <class T>
class patch_sampler {
 public:
  patch_sampler(image_view<const T> x, const conv_geometry& g, index_t sampling_stride)
      : x_(x), g_(g), pointwise_(g.is_pointwise()) {
    constexpr const char* fn = "patch_sampler";
    detail::check_geometry(fn, g);
    detail::check_view(fn, "x", x);
    NETDECONV_REQUIRE(sampling_stride >= 1, fn, "sampling_stride must be >= 1, got ", sampling_stride);
    const index_t sh = detail::checked_mul(fn, "effective stride", sampling_stride, g.stride_h);
    const index_t sw = detail::checked_mul(fn, "effective stride", sampling_stride, g.stride_w);
    g_.stride_h = sh;
    g_.stride_w = sw;
    width_ = detail::checked_product(fn, "patch columns C*kh*kw", x.shape[1], g.kernel_h, g.kernel_w);
    if (pointwise_) {
      step_ = detail::checked_mul(fn, "pixel step", sh, sw);
      const index_t pixels = detail::checked_product(fn, "pixels N*H*W", x.shape[0], x.shape[2], x.shape[3]);
      rows_ = pixels == 0 ? 0 : (pixels - 1) / step_ + 1;
    } else {
      out_h_ = g_.out_h(x.shape[2]);
      out_w_ = g_.out_w(x.shape[3]);
      rows_ = detail::checked_product(fn, "sampled rows", x.shape[0], out_h_, out_w_);
    }
  }

  index_t rows() const { return rows_; }
  index_t width() const { return width_; }
  /// The input image and the sampling geometry (stride S*s), for backends with their own gather.
  const image_view<const T>& image() const { return x_; }
  const conv_geometry& sampling_geometry() const { return g_; }

  template <class Out>
  void gather(index_t r, Out* out) const {
    const index_t C = x_.shape[1], H = x_.shape[2], W = x_.shape[3];
    if (pointwise_) {
      const index_t p = r * step_, n = p / (H * W), y = (p / W) % H, xx = p % W;
      for (index_t c = 0; c < C; ++c) out[c] = static_cast<Out>(x_(n, c, y, xx));
      return;
    }
    detail::visit_patch_row(x_, g_, out_h_, out_w_, r, [&](index_t j, index_t n, index_t c, index_t y, index_t xx, bool inside) {
      out[j] = inside ? static_cast<Out>(x_(n, c, y, xx)) : Out(0);
    });
  }

 private:
  image_view<const T> x_;
  conv_geometry g_;
  bool pointwise_;
  index_t width_ = 0, rows_ = 0, step_ = 1, out_h_ = 0, out_w_ = 0;
};

}  // namespace netdeconv
