// SPDX-License-Identifier: MIT
#pragma once
// Blocked moments of sampled patches on the GPU: netdeconv/covariance.hpp's block_moments with a
// cuda_policy, the same row sources (patch_sampler, matrix_rows) over device memory and the same
// checks (netdeconv::detail::check_block_moments), writing into a moments_view in device memory.
// The sampled im2col is fused into a tiled covariance: the patch matrix is never formed.
//
// Grid (tile k, statistic s, row chunk z); 256 threads own a 64 x 64 tile of the upper triangle
// (ti <= tj) of Cov_s, loading 16 samples x 64 features of each side per shared-memory stage
// straight from the image (bodies/covariance.hpp: cov_load_stage), shifted by sample 0 of the
// statistic. Accumulation is in the input type: FP32 for float, FP64 for double; float inputs can
// opt in to TF32 tensor-core products with FP32 accumulation (cuda::cov_precision::tf32, sm_80+,
// covariance_sm80.cuh, where the error bound is derived). Each chunk holds at most 65536 samples,
// and chunks are merged in double with Chan's update, so float inputs with a large mean keep their
// covariance (the shift removes the mean, the chunking bounds the rounding of the FP32 sums).
//
//   netdeconv::patch_sampler<float> rows(x, geometry, /*sampling stride*/ 3);   // x: device image view
//   auto plan = netdeconv::make_block_plan(...);
//   netdeconv::block_moments(policy, rows, plan, moments);     // moments: moments_view over device memory
//   netdeconv::block_moments(policy, rows, plan, moments, netdeconv::cuda::cov_precision::tf32);  // opt-in
//
// Workspace: block_moments_workspace(policy, rows, plan) bytes (the chunks' FP32/FP64 partial sums).

#include <cstddef>
#include <type_traits>

#include <netdeconv/blocks.hpp>
#include <netdeconv/checks.hpp>
#include <netdeconv/geometry.hpp>
#include <netdeconv/matrix_rows.hpp>
#include <netdeconv/statistics_view.hpp>

#include "bodies/covariance.hpp"
#include "covariance_sm80.cuh"
#include "execution.cuh"

namespace netdeconv {

namespace cuda {
/// Products of the fused covariance (block_moments).
///   full: products and sums in the input type (FP32 for float, FP64 for double); the default.
///   tf32: float inputs only: products of TF32-rounded shifted samples on tensor cores, FP32
///         accumulation; per covariance entry about 2^-10 sqrt(C_ii C_jj) (covariance_sm80.cuh).
///         Needs a build for compute capability >= 8.0 (nvcc_arch); double inputs are rejected.
enum class cov_precision { full, tf32 };
}  // namespace cuda

namespace cuda::detail {

template <class Acc, class Source>
__global__ void __launch_bounds__(cov_threads) covariance_tiles_kernel(Source src, block_plan p, chunking ch, index_t samples,
                                                                      Acc* sums, Acc* cross) {
  __shared__ cov_shared<Acc> sh;
  const cov_block b = make_cov_block(p, ch, samples, blockIdx.x, blockIdx.y, blockIdx.z);
  const int tid = static_cast<int>(threadIdx.x);
  cov_load_shift<Acc>(src, p, b, sh, tid);
  __syncthreads();
  Acc acc[16] = {};
  Acc sum = Acc(0);
  for (index_t q = b.q0; q < b.q1; q += cov_rows) {
    cov_load_stage<Acc>(src, p, b, sh, q, tid, cov_threads);
    __syncthreads();
    cov_accumulate<Acc>(sh, b, acc, sum, tid);
    __syncthreads();
  }
  cov_store<Acc>(p, b, acc, sum, sums, cross, tid);
}

template <class Acc, class Source>
__global__ void covariance_finalize_kernel(Source src, block_plan p, chunking ch, index_t samples, const Acc* sums,
                                           const Acc* cross, moments_view<double> out, long long count) {
  const long long F = p.features();
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count; e += (long long)gridDim.x * blockDim.x)
    cov_finalize_element<Acc>(src, p, ch, samples, sums, cross, out, e / (F * F), (e / F) % F, e % F);
}

/// Launch shape of block_moments for a source of `rows` rows under plan p.
struct moments_launch {
  index_t samples, tiles;
  chunking ch;
  std::size_t sums_bytes, cross_bytes;
};

template <class Acc>
moments_launch plan_moments(index_t rows, const block_plan& p) {
  moments_launch l{};
  l.samples = rows * p.rows_per_patch();
  const index_t nt = ceil_div(p.features(), cov_tile);
  l.tiles = upper_tile_count(nt);
  l.ch = chunking::make(l.samples, l.tiles * p.count());
  l.sums_bytes = align_up(sizeof(Acc) * std::size_t(l.ch.chunks * p.count() * p.features()));
  l.cross_bytes = align_up(sizeof(Acc) * std::size_t(l.ch.chunks * p.count() * p.features() * p.features()));
  return l;
}

/// Refuses row sources over ordinary host memory.
template <class Source>
void check_source_memory(const char* fn, const Source& source) {
  if constexpr (requires { source.image(); })
    check_device_memory(fn, "the image", source.image());
  else
    check_device_memory(fn, "the matrix", source.matrix());
}

}  // namespace cuda::detail

/// Scratch bytes block_moments needs for this source and plan (see cuda_policy::workspace).
template <class Source>
std::size_t block_moments_workspace(const cuda_policy&, const Source& source, const block_plan& plan) {
  const auto l = cuda::detail::plan_moments<typename Source::value_type>(source.rows(), plan);
  return l.sums_bytes + l.cross_bytes;
}

/// Moments of every statistic of plan over the rows of source, into out (count (S), mean (S, F),
/// scatter (S, F, F) full symmetric, device memory). Asynchronous. Refused as on the CPU (width
/// not C*K, fewer than 2 samples per statistic, wrong out), and for precision tf32 with double rows
/// or with a kernel compiled for compute capability < 8.0 (no silent fallback to FP32).
template <class Source>
void block_moments(const cuda_policy& policy, const Source& source, const block_plan& p, const moments_view<double>& out,
                   cuda::cov_precision precision = cuda::cov_precision::full) {
  namespace d = cuda::detail;
  using Acc = typename Source::value_type;
  constexpr const char* fn = "block_moments";
  const index_t samples = ::netdeconv::detail::check_block_moments(fn, source, p);
  ::netdeconv::detail::check_output_moments(fn, "out", out, p);
  d::check_source_memory(fn, source);
  d::check_device_memory(fn, "out.count", out.count);
  d::check_device_memory(fn, "out.mean", out.mean);
  d::check_device_memory(fn, "out.scatter", out.scatter);
  NETDECONV_REQUIRE(p.count() <= 65535, fn, "at most 65535 statistics per call, got ", p.count());
  constexpr bool is_float = std::is_same_v<Acc, float>;
  const bool tf32 = precision == cuda::cov_precision::tf32;
  NETDECONV_REQUIRE(!tf32 || is_float, fn, "cov_precision::tf32 applies to float rows; double rows ",
                    "accumulate in FP64 (use cov_precision::full)");
  if constexpr (is_float)
    if (tf32) d::check_tf32_kernel<Source>(fn);
  const auto l = d::plan_moments<Acc>(source.rows(), p);
  d::scratch ws(policy, l.sums_bytes + l.cross_bytes, fn);
  Acc* sums = ws.at<Acc>(0);
  Acc* cross = ws.at<Acc>(l.sums_bytes);
  const dim3 grid(static_cast<unsigned>(l.tiles), static_cast<unsigned>(p.count()), static_cast<unsigned>(l.ch.chunks));
  if constexpr (is_float)
    if (tf32) {
      d::covariance_tiles_tf32_kernel<<<grid, d::cov_threads, 0, policy.stream>>>(source, p, l.ch, samples, sums, cross);
      NETDECONV_CUDA_CHECK_LAUNCH("covariance_tiles_tf32_kernel");
    }
  if (!tf32) {
    d::covariance_tiles_kernel<Acc><<<grid, d::cov_threads, 0, policy.stream>>>(source, p, l.ch, samples, sums, cross);
    NETDECONV_CUDA_CHECK_LAUNCH("covariance_tiles_kernel");
  }
  const long long count = p.count() * p.features() * p.features();
  d::covariance_finalize_kernel<Acc><<<d::grid_for(count, 256), 256, 0, policy.stream>>>(source, p, l.ch, samples, sums,
                                                                                         cross, out, count);
  NETDECONV_CUDA_CHECK_LAUNCH("covariance_finalize_kernel");
}

}  // namespace netdeconv
