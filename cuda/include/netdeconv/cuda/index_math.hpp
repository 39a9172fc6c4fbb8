// SPDX-License-Identifier: MIT
#pragma once
// Index and blocking maths of the CUDA backend, as __host__ __device__ functions that compile as
// plain C++ without nvcc (NETDECONV_HD is empty there), so that tests/test_cuda_index_math.cpp
// checks them on the host against the CPU headers (block_plan::column, patch_sampler, im2col).
// No Eigen, no CUDA runtime: device code and host tests both include this file.
//
//   device_view<T, R>   pointer + shape + strides in elements (the device twin of tensor_view)
//   geometry            conv_geometry's fields (kernel, stride, padding, dilation per axis)
//   plan                block_plan's fields; column(s, g, f) is the same map (docs/method.md §3)
//   sampler             sampled patch rows (docs/method.md §2): locate(r, j) -> pixel (n, c, y, x) or padding
//   upper_tile          k -> (ti, tj), ti <= tj: the upper-triangle tiles of an F x F statistic
//   chunking            how the rows of a statistic are split across grid.z

#include <cstdint>
#include <type_traits>

#ifdef __CUDACC__
#define NETDECONV_HD __host__ __device__
#else
#define NETDECONV_HD
#endif

namespace netdeconv::cuda {

using index_t = std::int64_t;

NETDECONV_HD constexpr index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }
NETDECONV_HD constexpr index_t min_index(index_t a, index_t b) { return a < b ? a : b; }
NETDECONV_HD constexpr index_t max_index(index_t a, index_t b) { return a > b ? a : b; }

/// Rank-R strided view of device (or, in host tests, host) memory. Never owns.
template <class T, int R>
struct device_view {
  T* data = nullptr;
  index_t shape[R] = {};
  index_t stride[R] = {};

  NETDECONV_HD index_t offset(const index_t (&idx)[R]) const {
    index_t o = 0;
    for (int a = 0; a < R; ++a) o += idx[a] * stride[a];
    return o;
  }
  template <class... I>
  NETDECONV_HD T& operator()(I... i) const {
    static_assert(sizeof...(I) == R, "wrong number of indices");
    const index_t idx[R] = {static_cast<index_t>(i)...};
    return data[offset(idx)];
  }
  NETDECONV_HD bool empty() const { return data == nullptr; }
  NETDECONV_HD index_t size() const {
    index_t n = 1;
    for (int a = 0; a < R; ++a) n *= shape[a];
    return n;
  }
  /// Views of T convert to views of const T.
  template <class U = T, std::enable_if_t<!std::is_const_v<U>, int> = 0>
  NETDECONV_HD operator device_view<const U, R>() const {
    device_view<const T, R> v;
    v.data = data;
    for (int a = 0; a < R; ++a) {
      v.shape[a] = shape[a];
      v.stride[a] = stride[a];
    }
    return v;
  }
};

/// conv_geometry's fields, same meaning (im2col.hpp).
struct geometry {
  index_t kernel_h = 1, kernel_w = 1;
  index_t stride_h = 1, stride_w = 1;
  index_t pad_h = 0, pad_w = 0;
  index_t dilation_h = 1, dilation_w = 1;

  NETDECONV_HD index_t kernel_area() const { return kernel_h * kernel_w; }
  NETDECONV_HD bool is_pointwise() const { return kernel_h == 1 && kernel_w == 1; }
  NETDECONV_HD static index_t out_size(index_t n, index_t k, index_t s, index_t p, index_t d) {
    const index_t span = n + 2 * p - d * (k - 1) - 1;
    return span < 0 ? 0 : span / s + 1;
  }
  NETDECONV_HD index_t out_h(index_t h) const { return out_size(h, kernel_h, stride_h, pad_h, dilation_h); }
  NETDECONV_HD index_t out_w(index_t w) const { return out_size(w, kernel_w, stride_w, pad_w, dilation_w); }
};

/// Copies the fields of any conv_geometry-like object (netdeconv::conv_geometry included).
template <class G>
geometry to_geometry(const G& g) {
  return {g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w};
}

/// block_plan's fields and maps (blocks.hpp); layout numbers are those of netdeconv::block_layout.
struct plan {
  enum layout_t : int { interleaved_shared = 0, contiguous_shared = 1, grouped = 2, independent = 3 };
  int layout = independent;
  index_t channels = 0, kernel_area = 1, groups = 1, block = 0;

  NETDECONV_HD index_t features() const { return kernel_area * block; }
  NETDECONV_HD bool shared() const { return layout == interleaved_shared || layout == contiguous_shared; }
  NETDECONV_HD index_t count() const {
    return shared() ? 1 : layout == grouped ? groups : channels / block;
  }
  NETDECONV_HD index_t rows_per_patch() const { return shared() ? channels / block : 1; }
  NETDECONV_HD index_t column(index_t s, index_t g, index_t f) const {
    if (layout == interleaved_shared) return f * (channels / block) + g;
    if (layout == contiguous_shared) return g * block + f;
    return s * features() + f;
  }
};

/// Copies the fields of a netdeconv::block_plan (or any object with the same fields).
template <class P>
plan to_plan(const P& p) {
  return {static_cast<int>(p.layout), p.channels, p.kernel_area, p.groups, p.block};
}

/// Where entry (r, j) of a (sampled) patch matrix comes from.
struct patch_coord {
  index_t n, c, y, x;
  bool inside;
};

/// The sampled patch rows of patch_sampler (docs/method.md §2) over an image (N, C, H, W); with sampling
/// stride 1 and pointwise = false it is plain im2col.
struct sampler {
  index_t N = 0, C = 0, H = 0, W = 0;
  geometry g;  ///< strides already multiplied by the sampling stride
  bool pointwise = false;
  index_t step = 1;  ///< pointwise: pixel step (S*s_h)*(S*s_w)
  index_t out_h = 0, out_w = 0, rows = 0, width = 0;

  /// allow_pointwise = true: patch_sampler's rule (1x1 kernels take every step-th pixel);
  /// false: im2col's rows (im2col and col2im use sampling_stride = 1).
  NETDECONV_HD static sampler make(index_t N, index_t C, index_t H, index_t W, geometry geo, index_t sampling_stride,
                                   bool allow_pointwise) {
    sampler s;
    s.N = N, s.C = C, s.H = H, s.W = W;
    s.pointwise = allow_pointwise && geo.is_pointwise();
    geo.stride_h *= sampling_stride;
    geo.stride_w *= sampling_stride;
    s.g = geo;
    s.width = C * geo.kernel_area();
    if (s.pointwise) {
      s.step = geo.stride_h * geo.stride_w;
      const index_t pixels = N * H * W;
      s.rows = pixels == 0 ? 0 : (pixels - 1) / s.step + 1;
    } else {
      s.out_h = geo.out_h(H);
      s.out_w = geo.out_w(W);
      s.rows = N * s.out_h * s.out_w;
    }
    return s;
  }

  /// Source pixel of entry (r, j), j = (c*kh + ky)*kw + kx.
  NETDECONV_HD patch_coord locate(index_t r, index_t j) const {
    if (pointwise) {
      const index_t p = r * step;
      return {p / (H * W), j, (p / W) % H, p % W, true};
    }
    const index_t K = g.kernel_area(), c = j / K, k = j % K, ky = k / g.kernel_w, kx = k % g.kernel_w;
    const index_t n = r / (out_h * out_w), oy = (r / out_w) % out_h, ox = r % out_w;
    const index_t y = oy * g.stride_h - g.pad_h + ky * g.dilation_h;
    const index_t x = ox * g.stride_w - g.pad_w + kx * g.dilation_w;
    return {n, c, y, x, y >= 0 && y < H && x >= 0 && x < W};
  }

  /// Value of entry (r, j) of image x (0 for padding), converted to Out.
  template <class Out, class T>
  NETDECONV_HD Out value(const device_view<const T, 4>& x, index_t r, index_t j) const {
    const patch_coord p = locate(r, j);
    return p.inside ? static_cast<Out>(x(p.n, p.c, p.y, p.x)) : Out(0);
  }
};

/// Row source over a sampled image (covariance of conv inputs).
template <class T>
struct image_rows {
  using value_type = T;
  device_view<const T, 4> x;
  sampler s;
  NETDECONV_HD index_t rows() const { return s.rows; }
  NETDECONV_HD index_t width() const { return s.width; }
  template <class Out>
  NETDECONV_HD Out value(index_t r, index_t j) const {
    return s.template value<Out>(x, r, j);
  }
};

/// Row source over the rows of a matrix (rows are samples).
template <class T>
struct matrix_rows {
  using value_type = T;
  device_view<const T, 2> x;
  NETDECONV_HD index_t rows() const { return x.shape[0]; }
  NETDECONV_HD index_t width() const { return x.shape[1]; }
  template <class Out>
  NETDECONV_HD Out value(index_t r, index_t j) const {
    return static_cast<Out>(x(r, j));
  }
};

/// Sample q of statistic s of a plan (q = r*G + g over source rows r), feature f: its source entry.
struct sample_entry {
  index_t row, column;
};
NETDECONV_HD inline sample_entry locate_sample(const plan& p, index_t s, index_t q, index_t f) {
  const index_t G = p.rows_per_patch();
  return {q / G, p.column(s, q % G, f)};
}

/// The k-th tile of the upper triangle (ti <= tj) of an nt x nt tile grid, row by row:
/// k = ti*nt - ti*(ti-1)/2 + (tj - ti).
struct tile_pair {
  index_t ti, tj;
};
NETDECONV_HD constexpr index_t upper_tile_count(index_t nt) { return nt * (nt + 1) / 2; }
NETDECONV_HD inline tile_pair upper_tile(index_t k, index_t nt) {
  index_t ti = 0;
  while (k >= nt - ti) {
    k -= nt - ti;
    ++ti;
  }
  return {ti, ti + k};
}

/// Row chunks of one statistic: chunk z holds samples [z*length, min(n, (z+1)*length)).
/// Enough chunks to give the GPU >= target_blocks blocks, at least one per max_rows samples (FP32
/// partial sums stay short), at most one per min_rows samples and at most max_chunks.
struct chunking {
  index_t chunks = 1, length = 0;

  NETDECONV_HD static chunking make(index_t n, index_t blocks_per_chunk, index_t target_blocks = 528,
                                    index_t min_rows = 256, index_t max_rows = 65536, index_t max_chunks = 256) {
    index_t c = max_index(ceil_div(target_blocks, max_index(blocks_per_chunk, 1)), ceil_div(n, max_rows));
    c = min_index(c, max_index(n / min_rows, 1));
    c = max_index(1, min_index(c, max_chunks));
    chunking out;
    out.length = ceil_div(max_index(n, 1), c);
    out.chunks = ceil_div(max_index(n, 1), out.length);
    return out;
  }
  NETDECONV_HD index_t begin(index_t z) const { return z * length; }
  NETDECONV_HD index_t end(index_t z, index_t n) const { return min_index(n, (z + 1) * length); }
};

/// Where col2im finds the contributions to pixel (y, x) along one axis: output position o such that
/// o*s - p + k*d == y, if any (returns -1 otherwise).
NETDECONV_HD inline index_t source_position(index_t y, index_t k, index_t s, index_t p, index_t d, index_t out) {
  const index_t t = y + p - k * d;
  if (t < 0 || t % s != 0) return -1;
  const index_t o = t / s;
  return o < out ? o : -1;
}

}  // namespace netdeconv::cuda
