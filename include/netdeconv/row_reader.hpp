// SPDX-License-Identifier: MIT
#pragma once
// Host-side row access of the row sources (geometry.hpp's patch_sampler, matrix_rows.hpp), for
// the fast CPU kernels that read rows in place: base(r) and offset(j) give entry (r, j) as
// base(r)[offset(j)] where the row lies in memory as it is (a matrix row; a patch inside the
// image), and base(r) is null where the row must be gathered (gather(r, out): a patch across the
// border, a 1x1-rule pixel, any other source).

#include <vector>

#include "geometry.hpp"
#include "matrix_rows.hpp"

namespace netdeconv::detail {

/// Row reader: row r of the source either in place, as base(r)[offset(j)] for columns j (a patch
/// row of a kernel > 1 sampler whose patch lies inside the image; a row of a matrix), or, where
/// base(r) is null, gathered into a buffer by gather(r, out).
template <class Source>
class row_reader {
 public:
  using T = typename Source::value_type;
  explicit row_reader(const Source& source) : source_(source) {}
  const T* base(index_t) const { return nullptr; }
  index_t offset(index_t j) const { return j; }
  void gather(index_t r, T* out) const { source_.gather(r, out); }

 private:
  const Source& source_;
};

template <class T>
class row_reader<matrix_rows<T>> {
 public:
  explicit row_reader(const matrix_rows<T>& source) : x_(source.matrix()) {}
  const T* base(index_t r) const { return x_.data + r * x_.stride[0]; }
  index_t offset(index_t j) const { return j * x_.stride[1]; }
  void gather(index_t r, T* out) const {
    for (index_t j = 0; j < x_.shape[1]; ++j) out[j] = x_(r, j);
  }

 private:
  matrix_view<const T> x_;
};

template <class T>
class row_reader<patch_sampler<T>> {
 public:
  explicit row_reader(const patch_sampler<T>& source) : source_(source), x_(source.image()), g_(source.sampling_geometry()) {
    fast_ = !g_.is_pointwise();
    out_h_ = g_.out_h(x_.shape[2]);
    out_w_ = g_.out_w(x_.shape[3]);
    if (!fast_) return;
    for (index_t c = 0; c < x_.shape[1]; ++c)
      for (index_t ky = 0; ky < g_.kernel_h; ++ky)
        for (index_t kx = 0; kx < g_.kernel_w; ++kx) {
          offset_.push_back(c * x_.stride[1] + ky * g_.dilation_h * x_.stride[2] + kx * g_.dilation_w * x_.stride[3]);
          channel_.push_back(c);
          dy_.push_back(ky * g_.dilation_h);
          dx_.push_back(kx * g_.dilation_w);
        }
  }

  const T* base(index_t r) const {
    if (!fast_) return nullptr;
    const index_t n = r / (out_h_ * out_w_), oy = (r / out_w_) % out_h_, ox = r % out_w_;
    const index_t y0 = oy * g_.stride_h - g_.pad_h, x0 = ox * g_.stride_w - g_.pad_w;
    const bool inside = y0 >= 0 && x0 >= 0 && y0 + g_.dilation_h * (g_.kernel_h - 1) < x_.shape[2] &&
                        x0 + g_.dilation_w * (g_.kernel_w - 1) < x_.shape[3];
    return inside ? x_.data + n * x_.stride[0] + y0 * x_.stride[2] + x0 * x_.stride[3] : nullptr;
  }
  index_t offset(index_t j) const { return fast_ ? offset_[j] : j; }
  /// A patch row that crosses the border (zero padding outside the image).
  void gather(index_t r, T* out) const {
    if (!fast_) return source_.gather(r, out);
    const index_t H = x_.shape[2], W = x_.shape[3];
    const index_t n = r / (out_h_ * out_w_), oy = (r / out_w_) % out_h_, ox = r % out_w_;
    const index_t y0 = oy * g_.stride_h - g_.pad_h, x0 = ox * g_.stride_w - g_.pad_w;
    for (index_t j = 0; j < index_t(offset_.size()); ++j) {
      const index_t y = y0 + dy_[j], xx = x0 + dx_[j];
      out[j] = (y >= 0 && y < H && xx >= 0 && xx < W) ? x_(n, channel_[j], y, xx) : T(0);
    }
  }

 private:
  const patch_sampler<T>& source_;
  image_view<const T> x_;
  conv_geometry g_;
  bool fast_ = false;
  index_t out_h_ = 0, out_w_ = 0;
  std::vector<index_t> offset_, channel_, dy_, dx_;  // per patch column
};

}  // namespace netdeconv::detail
