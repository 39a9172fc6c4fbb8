// SPDX-License-Identifier: MIT
#pragma once
// TF32 tensor-core variant of the tiled covariance (covariance.cuh), for sm_80 and newer; chosen
// with block_moments(..., cuda::cov_precision::tf32) on float inputs.
//
// Same grid, shared-memory stages, shift, row chunks and finalize as covariance_tiles_kernel; only
// phase 2 differs: each stage of cov_rows = 16 shifted samples is two k = 8 steps of WMMA
// m16n16k8 products, a = (stage of tile ti)^T (16 features x 8 samples, col-major in sh.a),
// b = stage of tile tj (8 samples x 16 features, row-major in sh.b), with every element rounded
// to TF32 (wmma::__float_to_tf32: cvt.rna, 10 explicit mantissa bits, nearest, ties away from
// zero) and an FP32 accumulator fragment. Warp w owns the fragments of cov_warp_tile_of(w)
// (bodies/covariance.hpp). The feature sums stay FP32 on the unrounded samples (cov_accumulate_sum).
//
// Accuracy: each product of rounded factors has relative error <= (1 + 2^-11)^2 - 1 ~ 2^-10, so
// with a_q = x_qi - c_i, b_q = x_qj - c_j (c: the statistic's first sample),
//   |cross_tf32 - cross| <= 2^-10 sum_q |a_q b_q| <= 2^-10 sqrt(sum_q a_q^2 sum_q b_q^2)
// plus the FP32 accumulation error of the full path. Divided by n: 2^-10 sqrt((C_ii + d_i^2)(C_jj
// + d_j^2)), d = mean - c, i.e. about 1e-3 sqrt(C_ii C_jj) when the first sample lies within a
// standard deviation of the mean (README, CUDA backend).

#include <mma.h>

#include "error.cuh"
#include "bodies/covariance.hpp"

namespace netdeconv::cuda::detail {

template <class Source>
__global__ void __launch_bounds__(cov_threads) covariance_tiles_tf32_kernel(Source src, block_plan p, chunking ch,
                                                                           index_t samples, float* sums, float* cross) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // No TF32 WMMA below sm_80; block_moments refuses to launch this build (check_tf32_kernel).
  __trap();
#else
  namespace wmma = nvcuda::wmma;
  using frag_a = wmma::fragment<wmma::matrix_a, cov_fragment, cov_fragment, cov_fragment_k, wmma::precision::tf32,
                                wmma::col_major>;
  using frag_b = wmma::fragment<wmma::matrix_b, cov_fragment, cov_fragment, cov_fragment_k, wmma::precision::tf32,
                                wmma::row_major>;
  using frag_c = wmma::fragment<wmma::accumulator, cov_fragment, cov_fragment, cov_fragment_k, float>;
  // WMMA loads and stores need 256-bit aligned pointers; every fragment offset below is a multiple of 64 bytes.
  __shared__ __align__(32) cov_shared<float> sh;
  __shared__ __align__(32) float tile[cov_tile * cov_tile];
  const cov_block b = make_cov_block(p, ch, samples, blockIdx.x, blockIdx.y, blockIdx.z);
  const int tid = static_cast<int>(threadIdx.x);
  const cov_warp_tile wt = cov_warp_tile_of(tid / 32);
  cov_load_shift<float>(src, p, b, sh, tid);
  __syncthreads();
  frag_c c[cov_fragments_per_warp];
  for (auto& f : c) wmma::fill_fragment(f, 0.0f);
  float sum = 0.0f;
  for (index_t q = b.q0; q < b.q1; q += cov_rows) {
    cov_load_stage<float>(src, p, b, sh, q, tid, cov_threads);
    __syncthreads();
    for (int k = 0; k < cov_rows; k += cov_fragment_k) {
      frag_a fa;
      wmma::load_matrix_sync(fa, &sh.a[k][wt.row * cov_fragment], cov_tile);
      for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
      for (int f = 0; f < cov_fragments_per_warp; ++f) {
        frag_b fb;
        wmma::load_matrix_sync(fb, &sh.b[k][(wt.col0 + f) * cov_fragment], cov_tile);
        for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
        wmma::mma_sync(c[f], fa, fb, c[f]);
      }
    }
    cov_accumulate_sum<float>(sh, b, sum, tid);
    __syncthreads();
  }
  for (int f = 0; f < cov_fragments_per_warp; ++f)
    wmma::store_matrix_sync(&tile[wt.row * cov_fragment * cov_tile + (wt.col0 + f) * cov_fragment], c[f], cov_tile,
                            wmma::mem_row_major);
  __syncthreads();
  float acc[16];
  cov_gather<float>(tile, acc, tid);
  cov_store<float>(p, b, acc, sum, sums, cross, tid);
#endif
}

/// Throws netdeconv::invalid_argument unless the image of the TF32 kernel that runs on the current
/// device was compiled for compute capability >= 8.0 (its PTX target, cudaFuncAttributes::ptxVersion,
/// is the __CUDA_ARCH__ / 10 it saw). A missing image for the device throws cuda_error.
template <class Source>
void check_tf32_kernel(const char* fn) {
  cudaFuncAttributes attr{};
  NETDECONV_CUDA_CHECK(cudaFuncGetAttributes(&attr, covariance_tiles_tf32_kernel<Source>));
  NETDECONV_REQUIRE(attr.ptxVersion >= 80, fn, "cov_precision::tf32 needs tensor cores of compute capability >= 8.0, but the ",
                    "kernel for this device was compiled for ", attr.ptxVersion / 10, ".", attr.ptxVersion % 10,
                    " (add 8.0 or newer to -Dnvcc_arch, or use cov_precision::full)");
}

}  // namespace netdeconv::cuda::detail
