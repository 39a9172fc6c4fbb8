// SPDX-License-Identifier: MIT
#pragma once
// SIMD + OpenMP blocked moments of float32 sources, fused with the patch gather: the patch matrix is
// never formed. Each thread takes a contiguous range of the source and walks it in tiles, packing
// each statistic's samples shifted by c_s (x - c_s, float) in one of two layouts:
//
//   sample-major panels (F > 32, and matrix rows): per tile of source rows, the samples of
//     statistic s go into panels of MR features (panel p holds features [p*MR, (p+1)*MR) of every
//     sample, contiguous; features F..Fp zero), read in place through a per-statistic offset table
//     (patches inside the image, matrix rows) or from a gathered row (patches across the border);
//     sum (x - c) and the upper triangle of sum (x - c)(x - c)^T come from an xsimd
//     register-blocked micro-kernel (MR x NR accumulators);
//   feature-major rows (F <= 32, kernel > 1): per tile of whole sampled output rows, each feature's
//     samples are contiguous, packed by SIMD gathers through offset / keep-mask tables, and 3 x 3
//     feature blocks are accumulated across the samples in the SIMD lanes
//     (accumulate_feature_major below).
//
// Sums are float over at most ~2048 samples (one tile, or a chunk of one) and then added to double
// accumulators. The shift c_s is the float64 mean of the thread's first tile, so x - c is O(spread)
// and the float tile sums keep their accuracy whatever the offset of the data. At the end, in double:
//   n, mu = c + S1/n, M = S2 - S1 S1^T / n      (S1 = sum (x - c), S2 = sum (x - c)(x - c)^T)
// and the per-thread moments are merged in thread order (Chan), deterministic for a thread count.
// Extra memory per thread: the double accumulators (count * Fp^2 * 8 bytes), one tile and the
// offset tables. Sources of other scalar types use the OpenMP backend.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "../blocks.hpp"
#include "../execution.hpp"
#include "../geometry.hpp"
#include "../matrix_rows.hpp"
#include "../moments.hpp"
#include "../omp/covariance.hpp"
#include "../row_reader.hpp"

namespace netdeconv {
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
  const row_reader<Source> reader(source);
  std::vector<float> row_buffer(width_in);
  std::vector<float, xsimd::aligned_allocator<float, 64>> packed(tile_samples * Fp, 0.0f);
  // per statistic: column(s, g, f) (into a gathered row) and its offset from base(r) (in place)
  std::vector<index_t> column(plan.count() * G * F), offset(column.size());
  for (index_t s = 0; s < plan.count(); ++s)
    for (index_t g = 0; g < G; ++g)
      for (index_t f = 0; f < F; ++f) {
        const index_t e = (s * G + g) * F + f;
        column[e] = plan.column(s, g, f);
        offset[e] = reader.offset(column[e]);
      }
  std::vector<float> shift_f(F);
  std::vector<float, xsimd::aligned_allocator<float, 64>> t1(MR);
  for (index_t s = 0; s < plan.count(); ++s) {
    sums[s].shift.assign(F, 0.0);
    sums[s].s1.assign(F, 0.0);
    sums[s].s2.assign(Fp * Fp, 0.0);
  }
  for (index_t r0 = begin; r0 < end; r0 += tile_rows) {
    const index_t m_rows = std::min(tile_rows, end - r0), m = m_rows * G;
    for (index_t s = 0; s < plan.count(); ++s) {
      shifted_sums& acc = sums[s];
      const bool first = r0 == begin;
      for (index_t f = 0; f < F; ++f) shift_f[f] = first ? 0.0f : float(acc.shift[f]);
      // pack x - c into panels (panel p holds features [p MR, (p + 1) MR) of every sample and
      // starts at p MR m); the padding features F..Fp stay 0
      for (index_t i = 0; i < m_rows; ++i) {
        const float* src = reader.base(r0 + i);
        const index_t* idx = offset.data() + s * G * F;
        if (!src) {
          reader.gather(r0 + i, row_buffer.data());
          src = row_buffer.data();
          idx = column.data() + s * G * F;
        }
        for (index_t g = 0; g < G; ++g) {
          const index_t r = i * G + g;
          for (index_t f0 = 0; f0 < F; f0 += MR) {
            float* dst = packed.data() + f0 * m + r * MR;
            const index_t q_end = std::min(MR, F - f0);
            for (index_t q = 0; q < q_end; ++q) dst[q] = src[idx[g * F + f0 + q]] - shift_f[f0 + q];
          }
        }
      }
      if (first) {  // shift = float64 mean of the first tile, applied to the packed tile
        for (index_t f = 0; f < F; ++f) {
          float* col = packed.data() + (f / MR) * m * MR + f % MR;
          double t = 0;
          for (index_t r = 0; r < m; ++r) t += double(col[r * MR]);
          shift_f[f] = float(t / double(m));
          acc.shift[f] = double(shift_f[f]);
          for (index_t r = 0; r < m; ++r) col[r * MR] -= shift_f[f];
        }
      }
      for (index_t p = 0; p < Fp / MR; ++p) {  // S1 += column sums of the panel (float over one tile)
        const float* panel = packed.data() + p * m * MR;
        for (index_t v = 0; v < MR; v += width) {
          batch t(0.0f);
          for (index_t r = 0; r < m; ++r) t += batch::load_aligned(panel + r * MR + v);
          t.store_aligned(t1.data() + v);
        }
        for (index_t f = p * MR; f < std::min(F, (p + 1) * MR); ++f) acc.s1[f] += double(t1[f % MR]);
      }
      if (MR == width)
        tile_product<1>(packed.data(), m, F, Fp, acc.s2.data());
      else
        tile_product<2>(packed.data(), m, F, Fp, acc.s2.data());
      acc.count += m;
    }
  }
}

/// Few features (F <= feature_major_max, kernel > 1 patches): the sampled patch matrix of a tile of
/// whole sampled output rows q = (n, oy) is packed feature-major, P[f][r] = x(sample r, f) - c_f,
/// with the samples r = ((q - q0) G + g) out_w + ox of every piece g and column ox. A row is packed
/// by SIMD gathers through a table of int32 offsets and keep-masks (0 where the tap falls into the
/// zero padding) per (f, g, ox): one table for the rows whose patches lie inside the image
/// vertically (offsets from image row y0), one per other row oy (offsets from the image). Then
/// acc(i, j) = sum_r P[i][r] P[j][r] over 3 x 3 feature blocks of the upper block triangle, the
/// samples across SIMD lanes (features padded to a multiple of 3 with zero rows). No padding of F
/// to the SIMD width, no row buffer.
inline constexpr index_t feature_major_max = 32;
/// At most this many samples per sampled row (pieces x columns), so that a tile stays small.
inline constexpr index_t feature_major_row_samples = 16384;

/// Whether the feature-major path applies: few features, kernel > 1, int32 offsets in one image.
inline bool feature_major(const patch_sampler<float>& source, const block_plan& plan) {
  const image_view<const float>& x = source.image();
  const index_t span = x.shape[1] * std::abs(x.stride[1]) + x.shape[2] * std::abs(x.stride[2]) +
                       x.shape[3] * std::abs(x.stride[3]);
  const conv_geometry& geo = source.sampling_geometry();
  return plan.features() <= feature_major_max && !geo.is_pointwise() && span < index_t(1) << 31 &&
         plan.rows_per_patch() * geo.out_w(x.shape[3]) <= feature_major_row_samples;
}

/// S(i0 + i, j0 + j) += sum_r P[i0 + i][r] P[j0 + j][r] (3 x 3 block, mp samples, a multiple of
/// width): float sums over chunks of at most 2048 samples, each added to S (column-major, ld) in double.
inline void feature_block(const float* P, index_t mp, index_t i0, index_t j0, double* S, index_t ld) {
  constexpr index_t chunk = 2048;
  const float* a0 = P + i0 * mp;
  const float* b0 = P + j0 * mp;
  for (index_t r0 = 0; r0 < mp; r0 += chunk) {
    batch acc[3][3];
    for (auto& row : acc)
      for (auto& a : row) a = batch(0.0f);
    for (index_t r = r0, r1 = std::min(mp, r0 + chunk); r < r1; r += width) {
      const batch a[3] = {batch::load_aligned(a0 + r), batch::load_aligned(a0 + mp + r), batch::load_aligned(a0 + 2 * mp + r)};
      for (int j = 0; j < 3; ++j) {
        const batch b = batch::load_aligned(b0 + j * mp + r);
        for (int i = 0; i < 3; ++i) acc[i][j] = xsimd::fma(a[i], b, acc[i][j]);
      }
    }
    for (int j = 0; j < 3; ++j)
      for (int i = 0; i < 3; ++i) S[(j0 + j) * ld + i0 + i] += double(xsimd::hadd(acc[i][j]));
  }
}

/// Offsets and keep-masks of the samples r = g out_w + ox of one sampled row, feature-major
/// (F x rp entries, rp = per-row samples rounded up to the SIMD width; the rounding entries keep 0).
struct gather_table {
  std::vector<std::int32_t, xsimd::aligned_allocator<std::int32_t, 64>> offset, keep;
};

inline void accumulate_feature_major(const patch_sampler<float>& source, const block_plan& plan, index_t q_begin,
                                     index_t q_end, std::vector<shifted_sums>& sums) {
  using ibatch = xsimd::batch<std::int32_t>;
  const image_view<const float> x = source.image();
  const conv_geometry& geo = source.sampling_geometry();
  const index_t H = x.shape[2], W = x.shape[3], K = plan.kernel_area, kw = geo.kernel_w;
  const index_t out_h = geo.out_h(H), out_w = geo.out_w(W);
  const index_t G = plan.rows_per_patch(), F = plan.features(), F3 = (F + 2) / 3 * 3;
  const index_t per_q = G * out_w, rp = (per_q + width - 1) / width * width;
  const index_t tile_q = std::max<index_t>(1, 2048 / per_q);
  // row stride of P: the samples rounded up to the SIMD width, plus one vector of slack for the
  // last partial vector of a row's gathers
  const auto stride_for = [&](index_t m) { return (m + width - 1) / width * width + width; };
  std::vector<float, xsimd::aligned_allocator<float, 64>> P(F3 * stride_for(tile_q * per_q), 0.0f);
  std::vector<float> shift_f(F);
  const index_t y_span = (geo.kernel_h - 1) * geo.dilation_h;
  gather_table inner;              // rows with 0 <= y0 and y0 + y_span < H: offsets from row y0
  std::vector<gather_table> edge;  // other rows oy (built on first use): offsets from the image
  // fills t for statistic s and sampled row oy (inner: offsets from row y0 and no vertical padding)
  const auto build = [&](gather_table& t, index_t s, index_t oy, bool inner_row) {
    t.offset.assign(F * rp, 0);
    t.keep.assign(F * rp, 0);
    const index_t y0 = oy * geo.stride_h - geo.pad_h;
    for (index_t g = 0; g < G; ++g)
      for (index_t f = 0; f < F; ++f) {
        const index_t col = plan.column(s, g, f), k = col % K;
        const index_t y = (inner_row ? 0 : y0) + (k / kw) * geo.dilation_h;
        if (!inner_row && (y < 0 || y >= H)) continue;
        for (index_t ox = 0; ox < out_w; ++ox) {
          const index_t xx = ox * geo.stride_w - geo.pad_w + (k % kw) * geo.dilation_w;
          if (xx < 0 || xx >= W) continue;
          const index_t e = f * rp + g * out_w + ox;
          t.offset[e] = std::int32_t((col / K) * x.stride[1] + y * x.stride[2] + xx * x.stride[3]);
          t.keep[e] = -1;
        }
      }
  };
  for (index_t s = 0; s < plan.count(); ++s) {
    sums[s].shift.assign(F, 0.0);
    sums[s].s1.assign(F, 0.0);
    sums[s].s2.assign(F3 * F3, 0.0);
  }
  for (index_t s = 0; s < plan.count(); ++s) {
    shifted_sums& acc = sums[s];
    build(inner, s, 0, true);
    edge.assign(out_h, {});
    for (index_t q0 = q_begin; q0 < q_end; q0 += tile_q) {
      const index_t q1 = std::min(q_end, q0 + tile_q), m = (q1 - q0) * per_q, mp = stride_for(m);
      const bool first = q0 == q_begin;
      for (index_t f = 0; f < F; ++f) shift_f[f] = first ? 0.0f : float(acc.shift[f]);
      for (index_t q = q0; q < q1; ++q) {
        const index_t n = q / out_h, oy = q % out_h, y0 = oy * geo.stride_h - geo.pad_h;
        const bool inner_row = y0 >= 0 && y0 + y_span < H;
        if (!inner_row && edge[oy].offset.empty()) build(edge[oy], s, oy, false);
        const gather_table& table = inner_row ? inner : edge[oy];
        const float* base = x.data + n * x.stride[0] + (inner_row ? y0 * x.stride[2] : 0);
        for (index_t f = 0; f < F; ++f) {
          float* dst = P.data() + f * mp + (q - q0) * per_q;
          const std::int32_t* off = table.offset.data() + f * rp;
          const std::int32_t* keep = table.keep.data() + f * rp;
          const batch c(shift_f[f]);
          for (index_t r = 0; r < per_q; r += width) {
            const batch v = batch::gather(base, ibatch::load_aligned(off + r));
            ((v & xsimd::bitwise_cast<batch>(ibatch::load_aligned(keep + r))) - c).store_unaligned(dst + r);
          }
        }
      }
      for (index_t f = 0; f < F3; ++f)  // padding samples (and padding features) stay 0
        std::fill(P.begin() + f * mp + (f < F ? m : 0), P.begin() + (f + 1) * mp, 0.0f);
      if (first) {  // shift = float64 mean of the first tile, applied to the packed tile
        for (index_t f = 0; f < F; ++f) {
          double t = 0;
          for (index_t r = 0; r < m; ++r) t += double(P[f * mp + r]);
          shift_f[f] = float(t / double(m));
          acc.shift[f] = double(shift_f[f]);
          for (index_t r = 0; r < m; ++r) P[f * mp + r] -= shift_f[f];
        }
      }
      for (index_t f = 0; f < F; ++f) {
        batch t(0.0f);
        for (index_t r = 0; r < mp; r += width) t += batch::load_aligned(P.data() + f * mp + r);
        acc.s1[f] += double(xsimd::hadd(t));
      }
      for (index_t i0 = 0; i0 < F3; i0 += 3)
        for (index_t j0 = i0; j0 < F3; j0 += 3) feature_block(P.data(), mp, i0, j0, acc.s2.data(), F3);
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
    bool feature_major = false;
    index_t units = rows, min_units = 64;  // threads split source rows, or sampled output rows q
    if constexpr (std::is_same_v<Source, patch_sampler<float>>) {
      feature_major = simd::feature_major(source, plan);
      if (feature_major) {
        units = rows / source.sampling_geometry().out_w(source.image().shape[3]);
        min_units = 1;
      }
    }
    // no more threads than tiles worth splitting for
    const int threads = int(std::max<index_t>(1, std::min<index_t>(thread_count(policy), units / min_units)));
    std::vector<std::vector<simd::shifted_sums>> partial(threads, std::vector<simd::shifted_sums>(plan.count()));
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1)
#endif
    for (int t = 0; t < threads; ++t) {
      const index_t begin = units * t / threads, end = units * (t + 1) / threads;
      if constexpr (std::is_same_v<Source, patch_sampler<float>>) {
        if (feature_major) {
          simd::accumulate_feature_major(source, plan, begin, end, partial[t]);
          continue;
        }
      }
      simd::accumulate_range(source, plan, begin, end, partial[t]);
    }
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
