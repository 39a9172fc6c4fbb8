// SPDX-License-Identifier: MIT
#pragma once
// What each thread of the CUDA covariance kernels computes (../covariance.cuh,
// ../covariance_sm80.cuh), with thread and block ids passed in, never read inside: plain C++
// without nvcc, so that cuda/tests/emulator.hpp runs every block and thread on the host, phase by
// phase between the kernels' __syncthreads. A source is a patch_sampler or matrix_rows (their
// value(r, j) reads one entry) over device memory.

#include <netdeconv/blocks.hpp>
#include <netdeconv/config.hpp>
#include <netdeconv/statistics_view.hpp>

namespace netdeconv::cuda::detail {

NETDECONV_HOST_DEVICE constexpr index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }
NETDECONV_HOST_DEVICE constexpr index_t min_index(index_t a, index_t b) { return a < b ? a : b; }
NETDECONV_HOST_DEVICE constexpr index_t max_index(index_t a, index_t b) { return a > b ? a : b; }

/// Sample q of statistic s of a plan (q = r*G + g over source rows r), feature f: its source entry.
struct sample_entry {
  index_t row, column;
};
NETDECONV_HOST_DEVICE inline sample_entry locate_sample(const block_plan& p, index_t s, index_t q, index_t f) {
  const index_t G = p.rows_per_patch();
  return {q / G, p.column(s, q % G, f)};
}

/// The k-th tile of the upper triangle (ti <= tj) of an nt x nt tile grid, row by row:
/// k = ti*nt - ti*(ti-1)/2 + (tj - ti).
struct tile_pair {
  index_t ti, tj;
};
NETDECONV_HOST_DEVICE constexpr index_t upper_tile_count(index_t nt) { return nt * (nt + 1) / 2; }
NETDECONV_HOST_DEVICE inline tile_pair upper_tile(index_t k, index_t nt) {
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

  NETDECONV_HOST_DEVICE static chunking make(index_t n, index_t blocks_per_chunk, index_t target_blocks = 528,
                                             index_t min_rows = 256, index_t max_rows = 65536, index_t max_chunks = 256) {
    index_t c = max_index(ceil_div(target_blocks, max_index(blocks_per_chunk, 1)), ceil_div(n, max_rows));
    c = min_index(c, max_index(n / min_rows, 1));
    c = max_index(1, min_index(c, max_chunks));
    chunking out;
    out.length = ceil_div(max_index(n, 1), c);
    out.chunks = ceil_div(max_index(n, 1), out.length);
    return out;
  }
  NETDECONV_HOST_DEVICE index_t begin(index_t z) const { return z * length; }
  NETDECONV_HOST_DEVICE index_t end(index_t z, index_t n) const { return min_index(n, (z + 1) * length); }
};

// Tiled covariance (docs/method.md §3-4): block (k, s, z) owns tile upper_tile(k) of statistic s and the
// samples of row chunk z. With shift c = sample 0 of the statistic, it accumulates in Acc
//   sum_i = sum_q (x_qi - c_i)            (diagonal tiles only)
//   cross_ij = sum_q (x_qi - c_i)(x_qj - c_j)
// from stages of cov_rows samples loaded into shared memory; cov_finalize_element turns the chunks'
// (n_z, sum, cross) into centred moments (mean, M = cross - sum sum^T/n) and merges them in double
// with Chan's update (moments.hpp).

inline constexpr int cov_tile = 64;     ///< features per tile side
inline constexpr int cov_rows = 16;     ///< samples per shared-memory stage
inline constexpr int cov_threads = 256; ///< 16 x 16 threads, 4 x 4 outputs each

template <class Acc>
struct cov_shared {
  Acc a[cov_rows][cov_tile];
  Acc b[cov_rows][cov_tile];
  Acc shift_a[cov_tile];
  Acc shift_b[cov_tile];
};

/// What one covariance block works on.
struct cov_block {
  index_t s, ti, tj, q0, q1, z;
};

NETDECONV_HOST_DEVICE inline cov_block make_cov_block(const block_plan& p, const chunking& ch, index_t samples, index_t tile_k,
                                             index_t s, index_t z) {
  const index_t nt = ceil_div(p.features(), cov_tile);
  const tile_pair t = upper_tile(tile_k, nt);
  return {s, t.ti, t.tj, ch.begin(z), ch.end(z, samples), z};
}

/// Phase 0 (threads 0 .. 2*cov_tile): the shift (sample 0) of the tile's features.
template <class Acc, class Source>
NETDECONV_HOST_DEVICE void cov_load_shift(const Source& src, const block_plan& p, const cov_block& b, cov_shared<Acc>& sh, int tid) {
  if (tid >= 2 * cov_tile) return;
  const int f = tid % cov_tile;
  const index_t feature = (tid < cov_tile ? b.ti : b.tj) * cov_tile + f;
  Acc v = Acc(0);
  if (feature < p.features()) {
    const sample_entry e = locate_sample(p, b.s, 0, feature);
    v = src.template value<Acc>(e.row, e.column);
  }
  (tid < cov_tile ? sh.shift_a : sh.shift_b)[f] = v;
}

/// Phase 1: samples [q, q + cov_rows) of both feature tiles, shifted, into shared memory (0 beyond
/// the chunk or the features).
template <class Acc, class Source>
NETDECONV_HOST_DEVICE void cov_load_stage(const Source& src, const block_plan& p, const cov_block& b, cov_shared<Acc>& sh, index_t q,
                                 int tid, int threads) {
  const index_t F = p.features();
  for (int e = tid; e < 2 * cov_rows * cov_tile; e += threads) {
    const bool second = e >= cov_rows * cov_tile;
    const int rem = e % (cov_rows * cov_tile), i = rem / cov_tile, f = rem % cov_tile;
    const index_t feature = (second ? b.tj : b.ti) * cov_tile + f;
    Acc v = Acc(0);
    if (q + i < b.q1 && feature < F) {
      const sample_entry se = locate_sample(p, b.s, q + i, feature);
      v = src.template value<Acc>(se.row, se.column) - (second ? sh.shift_b : sh.shift_a)[f];
    }
    (second ? sh.b : sh.a)[i][f] = v;
  }
}

/// Phase 2, feature sums: threads < cov_tile of a diagonal tile add the stage's shifted samples
/// of feature ti*cov_tile + tid.
template <class Acc>
NETDECONV_HOST_DEVICE void cov_accumulate_sum(const cov_shared<Acc>& sh, const cov_block& b, Acc& sum, int tid) {
  if (b.ti == b.tj && tid < cov_tile)
    for (int i = 0; i < cov_rows; ++i) sum += sh.a[i][tid];
}

/// Phase 2: thread (ty, tx) = (tid/16, tid%16) accumulates outputs (ty + 16u, tx + 16v), u, v < 4,
/// and its feature sum (cov_accumulate_sum).
template <class Acc>
NETDECONV_HOST_DEVICE void cov_accumulate(const cov_shared<Acc>& sh, const cov_block& b, Acc (&acc)[16], Acc& sum, int tid) {
  const int ty = tid / 16, tx = tid % 16;
  for (int i = 0; i < cov_rows; ++i) {
    Acc av[4], bv[4];
    for (int u = 0; u < 4; ++u) av[u] = sh.a[i][ty + 16 * u];
    for (int v = 0; v < 4; ++v) bv[v] = sh.b[i][tx + 16 * v];
    for (int u = 0; u < 4; ++u)
      for (int v = 0; v < 4; ++v) acc[u * 4 + v] += av[u] * bv[v];
  }
  cov_accumulate_sum(sh, b, sum, tid);
}

// TF32 tensor-core variant (covariance_sm80.cuh): the same phases, with phase 2's products done
// by WMMA m16n16k8 fragments. The 64 x 64 tile is 4 x 4 fragments of 16 x 16; warp w of the
// cov_threads / 32 = 8 accumulates fragment row cov_warp_tile_of(w).row, columns col0 and col0 + 1.
// The fragments are stored row-major into a cov_tile x cov_tile buffer, from which cov_gather
// hands each thread its 16 outputs in cov_accumulate's layout, for cov_store.

inline constexpr int cov_fragment = 16;                   ///< WMMA fragment side (m = n = 16)
inline constexpr int cov_fragment_k = 8;                  ///< WMMA k for TF32
inline constexpr int cov_warps = cov_threads / 32;        ///< 8
inline constexpr int cov_fragments_per_warp = 2;          ///< (cov_tile / cov_fragment)^2 / cov_warps

struct cov_warp_tile {
  int row, col0;  ///< fragment row, first of cov_fragments_per_warp consecutive fragment columns
};

NETDECONV_HOST_DEVICE inline cov_warp_tile cov_warp_tile_of(int warp) {
  return {warp / 2, cov_fragments_per_warp * (warp % 2)};
}

/// acc[u*4 + v] = tile[(ty + 16u) * cov_tile + tx + 16v] for thread (ty, tx) = (tid/16, tid%16).
template <class Acc>
NETDECONV_HOST_DEVICE void cov_gather(const Acc* tile, Acc (&acc)[16], int tid) {
  const int ty = tid / 16, tx = tid % 16;
  for (int u = 0; u < 4; ++u)
    for (int v = 0; v < 4; ++v) acc[u * 4 + v] = tile[(ty + 16 * u) * cov_tile + tx + 16 * v];
}

/// Phase 3: partial results of chunk z. Layout (Acc): sums[(z*S + s)*F + i], cross[((z*S + s)*F + i)*F + j].
template <class Acc>
NETDECONV_HOST_DEVICE void cov_store(const block_plan& p, const cov_block& b, const Acc (&acc)[16], Acc sum, Acc* sums, Acc* cross,
                            int tid) {
  const index_t F = p.features(), S = p.count(), base = b.z * S + b.s;
  const int ty = tid / 16, tx = tid % 16;
  for (int u = 0; u < 4; ++u)
    for (int v = 0; v < 4; ++v) {
      const index_t i = b.ti * cov_tile + ty + 16 * u, j = b.tj * cov_tile + tx + 16 * v;
      if (i < F && j < F) cross[(base * F + i) * F + j] = acc[u * 4 + v];
    }
  if (b.ti == b.tj && tid < cov_tile && b.ti * cov_tile + tid < F) sums[base * F + b.ti * cov_tile + tid] = sum;
}

/// Element (s, i, j), i <= j, of the merged moments of every chunk; thread (i, i) writes mean_i,
/// thread (0, 0) writes count.
template <class Acc, class Source>
NETDECONV_HOST_DEVICE void cov_finalize_element(const Source& src, const block_plan& p, const chunking& ch, index_t samples,
                                       const Acc* sums, const Acc* cross, const moments_view<double>& out, index_t s,
                                       index_t i, index_t j) {
  if (i > j) return;
  const index_t F = p.features(), S = p.count();
  const sample_entry ei = locate_sample(p, s, 0, i);
  const double ci = double(src.template value<Acc>(ei.row, ei.column));
  double n = 0, mi = 0, mj = 0, M = 0;
  for (index_t z = 0; z < ch.chunks; ++z) {
    const double nz = double(ch.end(z, samples) - ch.begin(z));
    if (nz <= 0) continue;
    const index_t base = z * S + s;
    const double si = double(sums[base * F + i]), sj = double(sums[base * F + j]);
    const double mzi = si / nz, mzj = sj / nz;
    const double Mz = double(cross[(base * F + i) * F + j]) - si * sj / nz;
    if (n == 0) {
      n = nz, mi = mzi, mj = mzj, M = Mz;
      continue;
    }
    const double total = n + nz, di = mzi - mi, dj = mzj - mj;
    M += Mz + di * dj * n * nz / total;
    mi += di * nz / total;
    mj += dj * nz / total;
    n = total;
  }
  out.scatter(s, i, j) = M;
  out.scatter(s, j, i) = M;
  if (i == j) out.mean(s, i) = ci + mi;
  if (i == 0 && j == 0) out.count(s) = samples;
}

}  // namespace netdeconv::cuda::detail
