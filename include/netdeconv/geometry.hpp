// SPDX-License-Identifier: MIT
#pragma once
// Convolution geometry, the patch-matrix indexing it defines and the sampled patch rows that the
// statistics use (docs/method.md §2). Eigen-free.
//
// Patch matrix of x (axes (N, C, H, W), any layout) under g: (N*Ho*Wo) x (C*kh*kw); row
// r = (n, oy, ox) in raster order, column j = c*kh*kw + ky*kw + kx (the order of
// torch.nn.functional.unfold), value x[n, c, oy*s_h - p_h + ky*d_h, ox*s_w - p_w + kx*d_w] or 0
// outside the image.

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

/// Where entry (r, j) of a (sampled) patch matrix comes from: pixel (n, c, y, x) of the image, or
/// zero padding (inside == false).
struct patch_coord {
  index_t n, c, y, x;
  bool inside;
};

/// The index map of a (sampled) patch matrix over images of C x H x W (built and checked by
/// detail::make_patch_map; plain data, so device code can use it):
/// - kernel > 1, or the plain im2col rows: row r = (n, oy, ox) of im2col with strides g.stride_*;
/// - 1x1 sampling rule (pointwise): row r is pixel r*step in (n, y, x) raster order.
struct patch_map {
  index_t C = 0, H = 0, W = 0;
  conv_geometry g;          ///< strides already multiplied by the sampling stride
  bool pointwise = false;
  index_t step = 1;         ///< pointwise: pixel step (S*s_h)*(S*s_w)
  index_t out_h = 0, out_w = 0, rows = 0, width = 0;

  /// Source of entry (r, j), j = (c*kh + ky)*kw + kx.
  NETDECONV_HOST_DEVICE patch_coord locate(index_t r, index_t j) const {
    if (pointwise) {
      const index_t p = r * step;
      return {p / (H * W), j, (p / W) % H, p % W, true};
    }
    const index_t K = g.kernel_h * g.kernel_w, c = j / K, k = j % K, ky = k / g.kernel_w, kx = k % g.kernel_w;
    const patch_coord o = origin(r);
    const index_t y = o.y + ky * g.dilation_h, x = o.x + kx * g.dilation_w;
    return {o.n, c, y, x, y >= 0 && y < H && x >= 0 && x < W};
  }

  /// Kernel > 1 rows: the pixel (n, y, x) of tap (0, 0) of row r's patch (c = 0), and whether the
  /// whole patch lies inside the image (then entry j is at a fixed offset from it).
  NETDECONV_HOST_DEVICE patch_coord origin(index_t r) const {
    const index_t n = r / (out_h * out_w), y = (r / out_w) % out_h * g.stride_h - g.pad_h, x = r % out_w * g.stride_w - g.pad_w;
    return {n, 0, y, x,
            y >= 0 && x >= 0 && y + g.dilation_h * (g.kernel_h - 1) < H && x + g.dilation_w * (g.kernel_w - 1) < W};
  }
};

namespace detail {

/// The map of the sampled rows of docs/method.md §2 over images of `shape` (N, C, H, W) with
/// sampling stride S (sampled = true), or of the plain im2col rows (sampled = false: S = 1, no 1x1
/// rule). Checks the geometry and every size against index_t overflow.
inline patch_map make_patch_map(const char* fn, const index_array<4>& shape, const conv_geometry& g,
                                index_t sampling_stride, bool sampled) {
  check_geometry(fn, g);
  NETDECONV_REQUIRE(sampling_stride >= 1, fn, "sampling_stride must be >= 1, got ", sampling_stride);
  patch_map m;
  m.C = shape[1], m.H = shape[2], m.W = shape[3];
  m.g = g;
  m.g.stride_h = checked_mul(fn, "effective stride", sampling_stride, g.stride_h);
  m.g.stride_w = checked_mul(fn, "effective stride", sampling_stride, g.stride_w);
  m.pointwise = sampled && g.is_pointwise();
  m.width = checked_product(fn, "patch columns C*kh*kw", shape[1], g.kernel_h, g.kernel_w);
  if (m.pointwise) {
    m.step = checked_mul(fn, "pixel step", m.g.stride_h, m.g.stride_w);
    const index_t pixels = checked_product(fn, "pixels N*H*W", shape[0], shape[2], shape[3]);
    m.rows = pixels == 0 ? 0 : (pixels - 1) / m.step + 1;
  } else {
    m.out_h = m.g.out_h(shape[2]);
    m.out_w = m.g.out_w(shape[3]);
    m.rows = checked_product(fn, "patch rows N*Ho*Wo", shape[0], m.out_h, m.out_w);
  }
  checked_mul(fn, "patch matrix entries", m.rows, m.width);
  return m;
}

}  // namespace detail

/// The rows of the patch matrix that statistics are estimated from, with sampling stride S (docs/method.md §2):
/// - kernel > 1: the rows of im2col run with stride S*s (every (S*s)-th output position per axis);
/// - kernel 1x1: the pixels of x in (n, y, x) raster order, every (S*s_h)*(S*s_w)-th one from row 0.
/// gather(r, out) writes row r (C*kh*kw values, channel-major) to out[0 .. width()); value(r, j)
/// reads one entry (host or device code: a patch_sampler over device memory is the CUDA row source).
template <class T>
class patch_sampler {
 public:
  using value_type = T;

  patch_sampler(image_view<const T> x, const conv_geometry& g, index_t sampling_stride)
      : x_(x), map_((detail::check_view("patch_sampler", "x", x),
                     detail::make_patch_map("patch_sampler", x.shape, g, sampling_stride, true))) {}

  NETDECONV_HOST_DEVICE index_t rows() const { return map_.rows; }
  NETDECONV_HOST_DEVICE index_t width() const { return map_.width; }
  /// The input image and the sampling geometry (stride S*s), for backends with their own gather.
  const image_view<const T>& image() const { return x_; }
  const conv_geometry& sampling_geometry() const { return map_.g; }
  const patch_map& map() const { return map_; }

  /// Entry (r, j), converted to Out (0 for padding).
  template <class Out>
  NETDECONV_HOST_DEVICE Out value(index_t r, index_t j) const {
    const patch_coord p = map_.locate(r, j);
    return p.inside ? static_cast<Out>(x_(p.n, p.c, p.y, p.x)) : Out(0);
  }

  template <class Out>
  void gather(index_t r, Out* out) const {
    if (map_.pointwise) {
      const index_t p = r * map_.step, n = p / (map_.H * map_.W), y = (p / map_.W) % map_.H, xx = p % map_.W;
      for (index_t c = 0; c < map_.C; ++c) out[c] = static_cast<Out>(x_(n, c, y, xx));
      return;
    }
    detail::visit_patch_row(x_, map_.g, map_.out_h, map_.out_w, r,
                            [&](index_t j, index_t n, index_t c, index_t y, index_t xx, bool inside) {
                              out[j] = inside ? static_cast<Out>(x_(n, c, y, xx)) : Out(0);
                            });
  }

 private:
  image_view<const T> x_;
  patch_map map_;
};

}  // namespace netdeconv
