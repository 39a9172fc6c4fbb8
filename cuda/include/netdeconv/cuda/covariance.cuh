// SPDX-License-Identifier: MIT
#pragma once
// Blocked moments of sampled patches on the GPU (docs/method.md §3-4; netdeconv/covariance.hpp), with the
// sampled im2col fused into a tiled covariance: the patch matrix is never formed.
//
// Grid (tile k, statistic s, row chunk z); 256 threads own a 64 x 64 tile of the upper triangle
// (ti <= tj) of Cov_s, loading 16 samples x 64 features of each side per shared-memory stage
// straight from the image (kernel_bodies.hpp: cov_load_stage), shifted by sample 0 of the
// statistic. Accumulation is in the input type: FP32 for float, FP64 for double; float inputs can
// opt in to TF32 tensor-core products with FP32 accumulation (cuda::cov_precision::tf32, sm_80+,
// covariance_sm80.cuh, where the error bound is derived). Each
// chunk holds at most 65536 samples, and chunks are merged in double with Chan's update, so float
// inputs with a large mean keep their covariance (the shift removes the mean, the chunking bounds
// the rounding of the FP32 sums). The result is device_moments (moments.cuh): count, mean, centred scatter.
//
//   auto rows = netdeconv::device_patch_sampler(x, geometry, /*sampling stride*/ 3);   // x: device_image_view<const float>
//   auto plan = netdeconv::cuda::to_plan(netdeconv::make_block_plan(...));          // or fill cuda::plan
//   netdeconv::device_moments_buffer m(plan.count(), plan.features());
//   netdeconv::block_moments(policy, rows, plan, m.view());
//   netdeconv::block_moments(policy, rows, plan, m.view(), netdeconv::cuda::cov_precision::tf32);  // opt-in
//
// Workspace: block_moments_workspace(rows, plan) bytes (the chunks' FP32/FP64 partial sums).

#include <cstddef>

#include <type_traits>

#include "covariance_sm80.cuh"
#include "execution.cuh"
#include "im2col.cuh"
#include "kernel_bodies.hpp"
#include "moments.cuh"
#include "tensor_view.cuh"

namespace netdeconv {

namespace cuda {
/// Products of the fused covariance (block_moments).
///   full: products and sums in the input type (FP32 for float, FP64 for double); the default.
///   tf32: float inputs only: products of TF32-rounded shifted samples on tensor cores, FP32
///         accumulation; per covariance entry about 2^-10 sqrt(C_ii C_jj) (covariance_sm80.cuh).
///         Needs a build for compute capability >= 8.0 (nvcc_arch); double inputs are rejected.
enum class cov_precision { full, tf32 };
}  // namespace cuda

/// Sampled patch rows of x (patch_sampler's rule, docs/method.md §2) as a device row source.
template <class T, class Geometry>
cuda::image_rows<T> device_patch_sampler(device_image_view<const T> x, const Geometry& geometry, cuda::index_t sampling_stride) {
  return {x, cuda::detail::make_sampler("patch_sampler", x, cuda::to_geometry(geometry), sampling_stride, true)};
}

/// The rows of a device matrix (rows are samples) as a row source.
template <class T>
cuda::matrix_rows<T> device_matrix_rows(device_matrix_view<const T> x) {
  cuda::detail::check_device_view("matrix_rows", "x", x);
  return {x};
}

namespace cuda::detail {

template <class Acc, class Source>
__global__ void __launch_bounds__(cov_threads) covariance_tiles_kernel(Source src, plan p, chunking ch, index_t samples,
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
__global__ void covariance_finalize_kernel(Source src, plan p, chunking ch, index_t samples, const Acc* sums,
                                           const Acc* cross, moments_view out, long long count) {
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
moments_launch plan_moments(index_t rows, const plan& p) {
  moments_launch l{};
  l.samples = rows * p.rows_per_patch();
  const index_t nt = ceil_div(p.features(), cov_tile);
  l.tiles = upper_tile_count(nt);
  l.ch = chunking::make(l.samples, l.tiles * p.count());
  l.sums_bytes = align_up(sizeof(Acc) * std::size_t(l.ch.chunks * p.count() * p.features()));
  l.cross_bytes = align_up(sizeof(Acc) * std::size_t(l.ch.chunks * p.count() * p.features() * p.features()));
  return l;
}

inline void check_plan(const char* fn, const plan& p) {
  NETDECONV_REQUIRE(p.layout >= 0 && p.layout <= 3, fn, "unknown block layout ", p.layout);
  NETDECONV_REQUIRE(p.channels >= 1 && p.kernel_area >= 1 && p.groups >= 1 && p.block >= 1, fn, "invalid plan: C=",
                    p.channels, " K=", p.kernel_area, " groups=", p.groups, " block=", p.block);
  NETDECONV_REQUIRE(p.channels % p.block == 0 || p.layout == plan::grouped, fn, "block ", p.block,
                    " does not divide C=", p.channels);
  NETDECONV_REQUIRE(p.layout != plan::grouped || p.block * p.groups == p.channels, fn, "grouped plan needs block = C/groups");
}

}  // namespace cuda::detail

/// Scratch bytes block_moments needs for this source and plan (see cuda_policy::workspace).
template <class Source, class Plan>
std::size_t block_moments_workspace(const cuda_policy&, const Source& source, const Plan& plan) {
  using Acc = typename Source::value_type;
  const auto l = cuda::detail::plan_moments<Acc>(source.rows(), cuda::to_plan(plan));
  return l.sums_bytes + l.cross_bytes;
}

/// Moments of every statistic of plan over the rows of source, into out (count(), F). Asynchronous.
/// Plan is netdeconv::block_plan or cuda::plan. Throws netdeconv::invalid_argument if the width is
/// not C*K, if fewer than 2 samples reach a statistic, if out has the wrong shape, and for
/// precision tf32 with double rows or with a kernel compiled for compute capability < 8.0 (no
/// silent fallback to FP32).
template <class Source, class Plan>
void block_moments(const cuda_policy& policy, const Source& source, const Plan& plan_in, const device_moments& out,
                   cuda::cov_precision precision = cuda::cov_precision::full) {
  namespace d = cuda::detail;
  using Acc = typename Source::value_type;
  constexpr const char* fn = "block_moments";
  const cuda::plan p = cuda::to_plan(plan_in);
  d::check_plan(fn, p);
  const cuda::index_t width = ::netdeconv::detail::checked_mul(fn, "C*K", p.channels, p.kernel_area);
  NETDECONV_REQUIRE(source.width() == width, fn, "rows have ", source.width(), " columns but the plan needs C*K = ",
                    p.channels, "*", p.kernel_area, " = ", width);
  const cuda::index_t samples = ::netdeconv::detail::checked_mul(fn, "samples", source.rows(), p.rows_per_patch());
  NETDECONV_REQUIRE(samples >= 2, fn, "statistics need >= 2 samples, got ", samples);
  d::check_moments(fn, "out", out);
  NETDECONV_REQUIRE(out.statistics == p.count() && out.features == p.features(), fn, "out holds ", out.statistics,
                    " statistics of ", out.features, " features, the plan needs ", p.count(), " of ", p.features());
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
