// SPDX-License-Identifier: MIT
#pragma once
// What each CUDA thread computes, as __host__ __device__ functions with the thread and block ids
// passed in (never read inside), plus the host-side control flow of the batched Newton-Schulz
// iteration as a template over its operations. The .cuh kernels are thin wrappers around these;
// tests/test_cuda_kernel_bodies.cpp runs the same functions on the host, looping over every block
// and thread id (phase by phase where a kernel synchronises), against the CPU oracle (netdeconv::seq).
// Plain C++ without nvcc.

#include <cmath>

#include "index_math.hpp"

namespace netdeconv::cuda::detail {

// ---------------------------------------------------------------------------------------------
// im2col / col2im (docs/method.md §2)

/// cols(r, j) = x at sampler.locate(r, j) (0 for padding).
template <class T>
NETDECONV_HD void im2col_element(const sampler& s, const device_view<const T, 4>& x, const device_view<T, 2>& cols,
                                 index_t e) {
  const index_t r = e / s.width, j = e % s.width;
  cols(r, j) = s.template value<T>(x, r, j);
}

/// x(n, c, y, xx) = sum of the cols entries that im2col reads from that pixel (a gather over the
/// kernel taps, so no atomics and a deterministic order: ky, then kx).
template <class T>
NETDECONV_HD void col2im_pixel(const sampler& s, const device_view<const T, 2>& cols, const device_view<T, 4>& x,
                               index_t e) {
  const index_t C = s.C, H = s.H, W = s.W;
  const index_t xx = e % W, y = (e / W) % H, c = (e / (W * H)) % C, n = e / (W * H * C);
  const geometry& g = s.g;
  T sum = T(0);
  for (index_t ky = 0; ky < g.kernel_h; ++ky) {
    const index_t oy = source_position(y, ky, g.stride_h, g.pad_h, g.dilation_h, s.out_h);
    if (oy < 0) continue;
    for (index_t kx = 0; kx < g.kernel_w; ++kx) {
      const index_t ox = source_position(xx, kx, g.stride_w, g.pad_w, g.dilation_w, s.out_w);
      if (ox < 0) continue;
      sum += cols((n * s.out_h + oy) * s.out_w + ox, (c * g.kernel_h + ky) * g.kernel_w + kx);
    }
  }
  x(n, c, y, xx) = sum;
}

// ---------------------------------------------------------------------------------------------
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

NETDECONV_HD inline cov_block make_cov_block(const plan& p, const chunking& ch, index_t samples, index_t tile_k,
                                             index_t s, index_t z) {
  const index_t nt = ceil_div(p.features(), cov_tile);
  const tile_pair t = upper_tile(tile_k, nt);
  return {s, t.ti, t.tj, ch.begin(z), ch.end(z, samples), z};
}

/// Phase 0 (threads 0 .. 2*cov_tile): the shift (sample 0) of the tile's features.
template <class Acc, class Source>
NETDECONV_HD void cov_load_shift(const Source& src, const plan& p, const cov_block& b, cov_shared<Acc>& sh, int tid) {
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
NETDECONV_HD void cov_load_stage(const Source& src, const plan& p, const cov_block& b, cov_shared<Acc>& sh, index_t q,
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
NETDECONV_HD void cov_accumulate_sum(const cov_shared<Acc>& sh, const cov_block& b, Acc& sum, int tid) {
  if (b.ti == b.tj && tid < cov_tile)
    for (int i = 0; i < cov_rows; ++i) sum += sh.a[i][tid];
}

/// Phase 2: thread (ty, tx) = (tid/16, tid%16) accumulates outputs (ty + 16u, tx + 16v), u, v < 4,
/// and its feature sum (cov_accumulate_sum).
template <class Acc>
NETDECONV_HD void cov_accumulate(const cov_shared<Acc>& sh, const cov_block& b, Acc (&acc)[16], Acc& sum, int tid) {
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

NETDECONV_HD inline cov_warp_tile cov_warp_tile_of(int warp) {
  return {warp / 2, cov_fragments_per_warp * (warp % 2)};
}

/// acc[u*4 + v] = tile[(ty + 16u) * cov_tile + tx + 16v] for thread (ty, tx) = (tid/16, tid%16).
template <class Acc>
NETDECONV_HD void cov_gather(const Acc* tile, Acc (&acc)[16], int tid) {
  const int ty = tid / 16, tx = tid % 16;
  for (int u = 0; u < 4; ++u)
    for (int v = 0; v < 4; ++v) acc[u * 4 + v] = tile[(ty + 16 * u) * cov_tile + tx + 16 * v];
}

/// Phase 3: partial results of chunk z. Layout (Acc): sums[(z*S + s)*F + i], cross[((z*S + s)*F + i)*F + j].
template <class Acc>
NETDECONV_HD void cov_store(const plan& p, const cov_block& b, const Acc (&acc)[16], Acc sum, Acc* sums, Acc* cross,
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

/// Device moments of a plan's S statistics of F features (moments.hpp's form, in double):
/// count[s], mean[s*F + i], scatter[(s*F + i)*F + j] = M_ij (full symmetric).
struct moments_view {
  index_t statistics = 0, features = 0;
  long long* count = nullptr;
  double* mean = nullptr;
  double* scatter = nullptr;
};

/// Element (s, i, j), i <= j, of the merged moments of every chunk; thread (i, i) writes mean_i,
/// thread (0, 0) writes count.
template <class Acc, class Source>
NETDECONV_HD void cov_finalize_element(const Source& src, const plan& p, const chunking& ch, index_t samples,
                                       const Acc* sums, const Acc* cross, const moments_view& out, index_t s,
                                       index_t i, index_t j) {
  if (i > j) return;
  const index_t F = p.features(), S = p.count();
  const sample_entry ei = locate_sample(p, s, 0, i), ej = locate_sample(p, s, 0, j);
  const double ci = double(src.template value<Acc>(ei.row, ei.column));
  const double cj = double(src.template value<Acc>(ej.row, ej.column));
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
  out.scatter[(s * F + i) * F + j] = M;
  out.scatter[(s * F + j) * F + i] = M;
  if (i == j) out.mean[s * F + i] = ci + mi;
  if (i == 0 && j == 0) out.count[s] = static_cast<long long>(samples);
  (void)cj;
}

/// out = moments of the union of a and b (Chan), element (s, i, j); out must not alias a or b.
NETDECONV_HD inline void merge_element(const moments_view& a, const moments_view& b, const moments_view& out,
                                       index_t s, index_t i, index_t j) {
  const index_t F = a.features;
  const double na = double(a.count[s]), nb = double(b.count[s]), n = na + nb;
  const index_t e = (s * F + i) * F + j;
  const double mai = a.mean[s * F + i], maj = a.mean[s * F + j];
  const double di = b.mean[s * F + i] - mai, dj = b.mean[s * F + j] - maj;
  if (nb == 0 || na == 0) {
    const moments_view& src = nb == 0 ? a : b;
    out.scatter[e] = src.scatter[e];
    if (i == j) out.mean[s * F + i] = src.mean[s * F + i];
  } else {
    out.scatter[e] = a.scatter[e] + b.scatter[e] + di * dj * na * nb / n;
    if (i == j) out.mean[s * F + i] = mai + di * nb / n;
  }
  if (i == 0 && j == 0) out.count[s] = a.count[s] + b.count[s];
}

/// cov(s, i, j) = M_ij / n + eps [i == j], converted to T; thread (s, i, i) also writes mean[s*F + i]
/// in T when mean is given.
template <class T>
NETDECONV_HD void covariance_element(const moments_view& m, double eps, T* cov, T* mean, index_t s, index_t i, index_t j) {
  const index_t F = m.features;
  const double v = m.scatter[(s * F + i) * F + j] / double(m.count[s]) + (i == j ? eps : 0.0);
  cov[(s * F + i) * F + j] = static_cast<T>(v);
  if (mean != nullptr && i == j) mean[s * F + i] = static_cast<T>(m.mean[s * F + i]);
}

// ---------------------------------------------------------------------------------------------
// Batched coupled Newton-Schulz (inverse_sqrt.hpp): matrices are row-major F x F, batch b at b*F*F.

/// Per-batch state on the device.
struct ns_state {
  int* iterations = nullptr;   ///< steps taken (report)
  double* residual = nullptr;  ///< ||I - Z Y||_F / sqrt(F) (report)
  int* status = nullptr;       ///< isqrt_status numbering: 0 ok, 1 not_converged, 2 non_finite, 3 not_positive_definite
  int* done = nullptr;         ///< 1: the batch is frozen (converged, failed, or finished)
  int* converged = nullptr;    ///< 1: residual <= tolerance reached
};

/// Y = A/scale, Z = I (element e of batch b).
template <class T>
NETDECONV_HD void ns_init_element(const T* A, const T* scale, T* Y, T* Z, index_t F, index_t b, index_t e) {
  const index_t o = b * F * F + e;
  Y[o] = A[o] / scale[b];
  Z[o] = (e / F == e % F) ? T(1) : T(0);
}

/// T = (3I - P)/2, or I for a frozen batch (then Y T = Y and T Z = Z exactly).
template <class T>
NETDECONV_HD void ns_T_element(const T* P, const int* done, T* Tk, index_t F, index_t b, index_t e) {
  const index_t o = b * F * F + e;
  const bool diag = e / F == e % F;
  Tk[o] = done[b] ? (diag ? T(1) : T(0)) : T(0.5) * ((diag ? T(3) : T(0)) - P[o]);
}

/// After the residual of step k: record it for a live batch, freeze it if converged or last.
NETDECONV_HD inline void ns_record(const ns_state& st, double residual, int k, bool last, double tolerance, index_t b) {
  if (st.done[b]) return;
  st.residual[b] = residual;
  st.iterations[b] = k;
  if (tolerance > 0 && residual <= tolerance) {
    st.done[b] = 1;
    st.converged[b] = 1;
  } else if (last) {
    st.done[b] = 1;
  }
}

/// Without a final residual (fixed mode, final_residual = false) a healthy batch reports all the
/// steps and residual NaN (`nan`: the caller's quiet NaN).
NETDECONV_HD inline void ns_finish_report(const ns_state& st, int iterations, bool have_residual, double nan, index_t b) {
  if (have_residual || st.status[b] != 0) return;
  st.iterations[b] = iterations;
  st.residual[b] = nan;
}

/// Final status of batch b (before the NaN fill of failed batches).
NETDECONV_HD inline int ns_final_status(const ns_state& st, double tolerance, bool finite, bool have_residual,
                                        index_t b) {
  if (st.status[b] != 0) return st.status[b];
  if (!finite || (have_residual && !(st.residual[b] == st.residual[b]))) return 2;
  if (tolerance > 0 && !st.converged[b]) return 1;
  return 0;
}

/// The iteration's control flow; Ops runs each operation on every batch (kernels or cuBLAS on the
/// GPU, loops in the host test). Matches detail::newton_schulz (CPU) step for step, with the exact
/// rewrites: P_0 = Z_0 Y_0 = Y_0 and Z_1 = T_0 Z_0 = T_0 (Z_0 = I), and, without a final residual,
/// no Y update in the last step and no last P.
///   k = 0, 1, ...: P = Z Y; record residual; stop at k == iterations; T = (3I - P)/2; Y = Y T; Z = T Z
/// Tolerance mode asks ops.all_done() (a stream synchronisation) every check_interval steps.
template <class Ops>
void run_newton_schulz(Ops& ops, int iterations, double tolerance, bool final_residual, int check_interval) {
  ops.init();
  const bool need_last_P = tolerance > 0 || final_residual;
  for (int k = 0;; ++k) {
    const bool last = k == iterations;
    if (!last || need_last_P) {
      if (k == 0)
        ops.copy_P_from_Y();
      else
        ops.gemm_P();
      ops.residual(k, last, tolerance);
    }
    if (last) break;
    if (tolerance > 0 && check_interval > 0 && (k + 1) % check_interval == 0 && ops.all_done()) break;
    ops.update_T();
    if (k + 1 < iterations || need_last_P) ops.gemm_Y();
    if (k == 0)
      ops.copy_Z_from_T();
    else
      ops.gemm_Z();
  }
  ops.finalize(tolerance, need_last_P);
}

// ---------------------------------------------------------------------------------------------
// Folding (fold.hpp) and whitening (whiten.hpp)

/// Output o of fold, thread tid of `threads`: writes W'[o, column(s, g, f)] = sum_k W[o, column(s, g, k)] D_s[k, f]
/// for its f of every piece in o's group and returns its share of sum (W' . mu_s); the block sums
/// the shares and writes b'[o] = b[o] - total.
template <class T>
NETDECONV_HD T fold_output_part(const plan& p, const device_view<const T, 4>& w, const T* mean, const T* D,
                                const device_view<T, 4>& w_out, index_t o, int tid, int threads) {
  const index_t cout = w.shape[0], K = p.kernel_area, kw = w.shape[3];
  const index_t group_cols = w.shape[1] * K, F = p.features();
  const index_t base = (o / (cout / p.groups)) * group_cols;
  const index_t G = p.rows_per_patch();
  T part = T(0);
  for (index_t s = 0; s < p.count(); ++s)
    for (index_t g = 0; g < G; ++g) {
      const index_t first = p.column(s, g, 0);
      if (first < base || first >= base + group_cols) continue;
      for (index_t f = tid; f < F; f += threads) {
        T v = T(0);
        for (index_t k = 0; k < F; ++k) {
          const index_t local = p.column(s, g, k) - base, c = local / K, kk = local % K;
          v += w(o, c, kk / kw, kk % kw) * D[(s * F + k) * F + f];
        }
        const index_t local = p.column(s, g, f) - base, c = local / K, kk = local % K;
        w_out(o, c, kk / kw, kk % kw) = v;
        part += v * mean[s * F + f];
      }
    }
  return part;
}

/// out(r, s*F + f) = sum_k (X(r, s*F + k) - mu_s[k]) D_s[k, f]   (element e = r*cols + s*F + f).
template <class T>
NETDECONV_HD void whiten_element(const device_view<const T, 2>& X, const T* mean, const T* D, index_t F,
                                 const device_view<T, 2>& out, index_t e) {
  const index_t cols = X.shape[1], r = e / cols, col = e % cols, s = col / F, f = col % F;
  T v = T(0);
  for (index_t k = 0; k < F; ++k) v += (X(r, s * F + k) - mean[s * F + k]) * D[(s * F + k) * F + f];
  out(r, col) = v;
}

}  // namespace netdeconv::cuda::detail
