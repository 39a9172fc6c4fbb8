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

/// Offsets of the C*kh*kw entries of a kernel > 1 patch of `map` from its origin (patch_map::origin),
/// in a (N, C, H, W) view with strides `stride`.
inline std::vector<index_t> patch_offsets(const patch_map& map, const index_array<4>& stride) {
  std::vector<index_t> offset;
  for (index_t c = 0; c < map.C; ++c)
    for (index_t ky = 0; ky < map.g.kernel_h; ++ky)
      for (index_t kx = 0; kx < map.g.kernel_w; ++kx)
        offset.push_back(c * stride[1] + ky * map.g.dilation_h * stride[2] + kx * map.g.dilation_w * stride[3]);
  return offset;
}

template <class T>
class row_reader<patch_sampler<T>> {
 public:
  explicit row_reader(const patch_sampler<T>& source) : source_(source), x_(source.image()), map_(source.map()) {
    if (map_.pointwise) return;
    offset_ = patch_offsets(map_, x_.stride);
    for (index_t c = 0; c < map_.C; ++c)
      for (index_t ky = 0; ky < map_.g.kernel_h; ++ky)
        for (index_t kx = 0; kx < map_.g.kernel_w; ++kx) {
          channel_.push_back(c);
          dy_.push_back(ky * map_.g.dilation_h);
          dx_.push_back(kx * map_.g.dilation_w);
        }
  }

  const T* base(index_t r) const {
    if (map_.pointwise) return nullptr;
    const patch_coord o = map_.origin(r);
    return o.inside ? x_.data + o.n * x_.stride[0] + o.y * x_.stride[2] + o.x * x_.stride[3] : nullptr;
  }
  index_t offset(index_t j) const { return map_.pointwise ? j : offset_[j]; }
  /// A patch row that crosses the border (zero padding outside the image), or a 1x1-rule pixel.
  void gather(index_t r, T* out) const {
    if (map_.pointwise) return source_.gather(r, out);
    const patch_coord o = map_.origin(r);
    for (std::size_t j = 0; j < offset_.size(); ++j) {
      const index_t y = o.y + dy_[j], xx = o.x + dx_[j];
      out[j] = (y >= 0 && y < map_.H && xx >= 0 && xx < map_.W) ? x_(o.n, channel_[j], y, xx) : T(0);
    }
  }

 private:
  const patch_sampler<T>& source_;
  image_view<const T> x_;
  patch_map map_;
  std::vector<index_t> offset_, channel_, dy_, dx_;  // per patch column, from the patch's origin
};

}  // namespace netdeconv::detail
