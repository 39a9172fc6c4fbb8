// SPDX-License-Identifier: MIT
#pragma once
// SIMD + OpenMP blocked moments of float32 sources, fused with the patch gather: the patch matrix is
// never formed. Each thread takes a contiguous range of source rows and walks it in tiles:
//
//   1. gather the tile's rows (patch_sampler with kernel > 1: an offset table, no bounds checks for
//      patches inside the image) into a row buffer;
//   2. per statistic s, pack its samples shifted by c_s (x - c_s, float) into panels of MR features
//      (panel p holds features [p*MR, (p+1)*MR) of every sample, contiguous; features F..Fp zero);
//   3. accumulate sum (x - c) and the upper triangle of sum (x - c)(x - c)^T with an xsimd
//      register-blocked micro-kernel (MR x NR accumulators, float over one tile of at most
//      tile_samples samples), added to double accumulators after every tile.
//
// The shift c_s is the float64 mean of the thread's first tile, so x - c is O(spread) and the
// float tile sums keep their accuracy whatever the offset of the data. At the end, in double:
//   n, mu = c + S1/n, M = S2 - S1 S1^T / n      (S1 = sum (x - c), S2 = sum (x - c)(x - c)^T)
// and the per-thread moments are merged in thread order (Chan), deterministic for a thread count.
// Extra memory per thread: the double accumulators (count * Fp^2 * 8 bytes) and two tiles.
// Sources of other scalar types use the OpenMP backend.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "../blocks.hpp"
#include "../execution.hpp"
#include "../im2col.hpp"
#include "../moments.hpp"
#include "../omp/covariance.hpp"

namespace netdeconv {
template <class T> class matrix_rows;
}

#ifndef NETDECONV_TILE_FLOATS
#define NETDECONV_TILE_FLOATS 131072
#endif

namespace netdeconv::detail::simd {

using batch = xsimd::batch<float>;
inline constexpr index_t width = index_t(batch::size);

/// Scalar type of a row source we have a fused kernel for (float patch_sampler / matrix_rows).
template <class Source> struct fast_source : std::false_type {};
template <> struct fast_source<patch_sampler<float>> : std::true_type {};
template <> struct fast_source<matrix_rows<float>> : std::true_type {};

/// Row gatherer: patch rows of a kernel > 1 sampler through a precomputed offset table; any other
/// source through its own gather().
template <class Source>
class row_gather {
 public:
  explicit row_gather(const Source& source) : source_(source) {}
  void operator()(index_t r, float* out) const { source_.gather(r, out); }

 private:
  const Source& source_;
};

template <>
class row_gather<patch_sampler<float>> {
 public:
  explicit row_gather(const patch_sampler<float>& source) : source_(source), x_(source.image()), g_(source.sampling_geometry()) {
    fast_ = !g_.is_pointwise();
    if (!fast_) return;
    out_h_ = g_.out_h(x_.shape[2]);
    out_w_ = g_.out_w(x_.shape[3]);
    const index_t C = x_.shape[1];
    for (index_t c = 0; c < C; ++c)
      for (index_t ky = 0; ky < g_.kernel_h; ++ky)
        for (index_t kx = 0; kx < g_.kernel_w; ++kx) {
          offset_.push_back(c * x_.stride[1] + ky * g_.dilation_h * x_.stride[2] + kx * g_.dilation_w * x_.stride[3]);
          channel_.push_back(c);
          dy_.push_back(ky * g_.dilation_h);
          dx_.push_back(kx * g_.dilation_w);
        }
  }

  void operator()(index_t r, float* out) const {
    if (!fast_) return source_.gather(r, out);
    const index_t H = x_.shape[2], W = x_.shape[3];
    const index_t n = r / (out_h_ * out_w_), oy = (r / out_w_) % out_h_, ox = r % out_w_;
    const index_t y0 = oy * g_.stride_h - g_.pad_h, x0 = ox * g_.stride_w - g_.pad_w;
    const index_t count = index_t(offset_.size());
    const bool inside = y0 >= 0 && x0 >= 0 && y0 + g_.dilation_h * (g_.kernel_h - 1) < H &&
                        x0 + g_.dilation_w * (g_.kernel_w - 1) < W;
    if (inside) {
      const float* base = x_.data + n * x_.stride[0] + y0 * x_.stride[2] + x0 * x_.stride[3];
      for (index_t j = 0; j < count; ++j) out[j] = base[offset_[j]];
      return;
    }
    for (index_t j = 0; j < count; ++j) {
      const index_t y = y0 + dy_[j], xx = x0 + dx_[j];
      out[j] = (y >= 0 && y < H && xx >= 0 && xx < W) ? x_(n, channel_[j], y, xx) : 0.0f;
    }
  }

 private:
  const patch_sampler<float>& source_;
  image_view<const float> x_;
  conv_geometry g_;
  bool fast_ = false;
  index_t out_h_ = 0, out_w_ = 0;
  std::vector<index_t> offset_, channel_, dy_, dx_;
};

/// acc[jj][i] += sum over samples r < m of A(r, i0 + i) * A(r, j0 + jj), for i < MV*width, jj < NR,
/// where A(r, f) = packed[(f / MR) * m * MR + r * MR + f % MR] (MR = MV * width, panel layout).
/// The MR x NR block is then added to the column-major double accumulator S (ld = Fp).
template <int MV, int NR>
void micro_kernel(const float* packed, index_t m, index_t i0, index_t j0, double* S, index_t ld) {
  constexpr index_t MR = MV * width;
  const float* a = packed + (i0 / MR) * m * MR;
  const float* b[NR];
  for (int jj = 0; jj < NR; ++jj) {
    const index_t j = j0 + jj;
    b[jj] = packed + (j / MR) * m * MR + j % MR;
  }
  batch acc[NR][MV];
  for (int jj = 0; jj < NR; ++jj)
    for (int v = 0; v < MV; ++v) acc[jj][v] = batch(0.0f);
  for (index_t r = 0; r < m; ++r) {
    batch av[MV];
    for (int v = 0; v < MV; ++v) av[v] = batch::load_aligned(a + r * MR + v * width);
    for (int jj = 0; jj < NR; ++jj) {
      const batch bj(b[jj][r * MR]);
      for (int v = 0; v < MV; ++v) acc[jj][v] = xsimd::fma(av[v], bj, acc[jj][v]);
    }
  }
  alignas(64) float tmp[MR];
  for (int jj = 0; jj < NR; ++jj) {
    for (int v = 0; v < MV; ++v) acc[jj][v].store_aligned(tmp + v * width);
    double* col = S + (j0 + jj) * ld + i0;
    for (index_t i = 0; i < MR; ++i) col[i] += double(tmp[i]);
  }
}

/// Register blocking per panel width: MR = MV * width rows of the product, NR broadcast columns.
template <int MV>
struct blocking;
template <>
struct blocking<1> {
  static constexpr int nr = width >= 16 ? 16 : 8;
};
template <>
struct blocking<2> {
  static constexpr int nr = width >= 16 ? 12 : 6;
};

/// Upper block triangle of packed^T packed (m samples, Fp features) added to S.
template <int MV>
void tile_product(const float* packed, index_t m, index_t F, index_t Fp, double* S) {
  constexpr index_t MR = MV * width;
  constexpr int NR = blocking<MV>::nr;
  for (index_t i0 = 0; i0 < Fp; i0 += MR) {
    index_t j0 = (i0 / NR) * NR;  // first column block touching j >= i0
    for (; j0 + NR <= F; j0 += NR) micro_kernel<MV, NR>(packed, m, i0, j0, S, Fp);
    for (; j0 < F; ++j0) micro_kernel<MV, 1>(packed, m, i0, j0, S, Fp);  // remaining columns one by one
  }
}

inline index_t panel_width(index_t F) { return F <= 4 * width ? width : 2 * width; }

/// Accumulators of one thread for one statistic.
struct shifted_sums {
  index_t count = 0;
  std::vector<double> shift;  // c (F)
  std::vector<double> s1;     // sum (x - c) (F)
  std::vector<double> s2;     // sum (x - c)(x - c)^T, column-major Fp x Fp, upper triangle
};

template <class Source>
void accumulate_range(const Source& source, const block_plan& plan, index_t begin, index_t end,
                      std::vector<shifted_sums>& sums) {
  const index_t G = plan.rows_per_patch(), F = plan.features(), width_in = source.width();
  const index_t MR = panel_width(F), Fp = (F + MR - 1) / MR * MR;
  // tile: ~128 KiB of packed samples, at least 16 and at most 1024 samples, a multiple of G
  const index_t target = std::clamp<index_t>(NETDECONV_TILE_FLOATS / Fp, 256, 1024);
  const index_t tile_rows = std::max<index_t>(1, target / G);
  const index_t tile_samples = tile_rows * G;
  const row_gather<Source> gather(source);
  std::vector<float> rows(tile_rows * width_in);
  std::vector<float, xsimd::aligned_allocator<float, 64>> packed(tile_samples * Fp, 0.0f);
  std::vector<index_t> column(G * F);
  std::vector<float> shift_f(F);
  for (index_t s = 0; s < plan.count(); ++s) {
    sums[s].shift.assign(F, 0.0);
    sums[s].s1.assign(F, 0.0);
    sums[s].s2.assign(Fp * Fp, 0.0);
  }
  for (index_t r0 = begin; r0 < end; r0 += tile_rows) {
    const index_t m_rows = std::min(tile_rows, end - r0), m = m_rows * G;
    for (index_t i = 0; i < m_rows; ++i) gather(r0 + i, rows.data() + i * width_in);
    for (index_t s = 0; s < plan.count(); ++s) {
      shifted_sums& acc = sums[s];
      for (index_t g = 0; g < G; ++g)
        for (index_t f = 0; f < F; ++f) column[g * F + f] = plan.column(s, g, f);
      if (r0 == begin) {  // shift = float64 mean of the first tile
        for (index_t i = 0; i < m_rows; ++i)
          for (index_t g = 0; g < G; ++g)
            for (index_t f = 0; f < F; ++f) acc.shift[f] += double(rows[i * width_in + column[g * F + f]]);
        for (index_t f = 0; f < F; ++f) acc.shift[f] /= double(m);
      }
      for (index_t f = 0; f < F; ++f) shift_f[f] = float(acc.shift[f]);
      // pack x - c into panels; the padding features F..Fp stay 0
      for (index_t i = 0; i < m_rows; ++i) {
        const float* row = rows.data() + i * width_in;
        for (index_t g = 0; g < G; ++g) {
          const index_t r = i * G + g;
          const index_t* col = column.data() + g * F;
          for (index_t f0 = 0; f0 < F; f0 += MR) {
            float* dst = packed.data() + f0 * m + r * MR;  // panel f0 / MR starts at f0 * m
            const index_t q_end = std::min(MR, F - f0);
            for (index_t q = 0; q < q_end; ++q) dst[q] = row[col[f0 + q]] - shift_f[f0 + q];
          }
        }
      }
      // the shift applied is the float c; record it exactly
      for (index_t f = 0; f < F; ++f) acc.shift[f] = double(shift_f[f]);
      for (index_t p = 0; p < Fp / MR; ++p)
        for (index_t f = p * MR; f < std::min(F, (p + 1) * MR); ++f) {
          double t = 0;
          const float* col = packed.data() + p * m * MR + f % MR;
          for (index_t r = 0; r < m; ++r) t += double(col[r * MR]);
          acc.s1[f] += t;
        }
      if (MR == width)
        tile_product<1>(packed.data(), m, F, Fp, acc.s2.data());
      else
        tile_product<2>(packed.data(), m, F, Fp, acc.s2.data());
      acc.count += m;
    }
  }
}

/// Centred moments from shifted sums: mu = c + S1/n, M = S2 - S1 S1^T / n (lower triangle filled).
inline moments<double> to_moments(const shifted_sums& acc, index_t F) {
  const index_t Fp = index_t(std::sqrt(double(acc.s2.size())) + 0.5);
  moments<double>::vector mean(F);
  moments<double>::matrix scatter(F, F);
  const double n = double(acc.count);
  for (index_t f = 0; f < F; ++f) mean[f] = acc.shift[f] + acc.s1[f] / n;
  for (index_t j = 0; j < F; ++j)
    for (index_t i = 0; i <= j; ++i) {
      const double v = acc.s2[j * Fp + i] - acc.s1[i] * acc.s1[j] / n;
      scatter(j, i) = v;
      scatter(i, j) = v;
    }
  return moments<double>(acc.count, std::move(mean), std::move(scatter));
}

}  // namespace netdeconv::detail::simd

namespace netdeconv::detail {

template <class Source>
std::vector<moments<double>> block_moments_impl(const simd_policy& policy, const Source& source, const block_plan& plan) {
  if constexpr (!simd::fast_source<Source>::value) {
    return block_moments_impl(static_cast<const omp_policy&>(policy), source, plan);
  } else {
    const index_t rows = source.rows(), F = plan.features();
    // no more threads than tiles worth splitting for
    const int threads = int(std::max<index_t>(1, std::min<index_t>(thread_count(policy), rows / 64)));
    std::vector<std::vector<simd::shifted_sums>> partial(threads, std::vector<simd::shifted_sums>(plan.count()));
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1)
#endif
    for (int t = 0; t < threads; ++t)
      simd::accumulate_range(source, plan, rows * t / threads, rows * (t + 1) / threads, partial[t]);
    std::vector<moments<double>> out;
    out.reserve(plan.count());
    for (index_t s = 0; s < plan.count(); ++s) {
      moments<double> m(F);
      for (int t = 0; t < threads; ++t)
        if (partial[t][s].count > 0) m.merge(simd::to_moments(partial[t][s], F));
      out.push_back(std::move(m));
    }
    return out;
  }
}

}  // namespace netdeconv::detail
