// SPDX-License-Identifier: MIT
// GPU statistics path vs cuBLAS in the same process (docs/method.md §9 shapes, smaller batch):
//   covariance: netdeconv::block_moments (sampled im2col fused into the tiled FP32 covariance)
//               vs im2col of the sampled rows + cublasSgemm X^T X (the same 2 n F^2 FLOP);
//   TF32 covariance (sm_80+): block_moments with cov_precision::tf32 vs the same im2col + SGEMM
//               with cuBLAS in CUBLAS_TF32_TENSOR_OP_MATH, printed in separate columns and lines;
//   inverse square root: 5 coupled Newton-Schulz steps (netdeconv::inverse_sqrt, batched)
//               vs the reference's 15 batched SGEMMs of the same size.
// Prints times, the ratios to the baselines, and the covariance's useful FLOP/s: n F (F + 1), a
// multiply and an add per sample for each of the F (F + 1) / 2 entries of the upper triangle, over
// the n = (sampled patch rows) * (C K / F) samples of all statistics. Machine-readable lines:
// "bench_row <row> <key> <value>", keys cov_ms, cov_gflops, cov_tf32_ms, cov_tf32_gflops (TF32
// keys only where the device and the build support it). Usage: bench_cuda_statistics [batch=8] [reps=20]
// [row index into docs/method.md §9, -1 = all]. bench_torch_reference.py runs PyTorch unfold + addmm on the
// same shapes and calls this binary, for the ratio to PyTorch.

#include <cstdio>
#include <cstdlib>
#include <vector>

#include <netdeconv/cuda.cuh>

namespace {

struct shape {
  long long H, W, C, Cout, blocks, k, S;
};
// (H, W, Cin, Cout, channel blocks C/B, k, S), docs/method.md §9
const shape rows[] = {{256, 256, 3, 64, 1, 3, 3},     {128, 128, 64, 128, 1, 3, 3},  {64, 64, 128, 256, 2, 3, 3},
                      {32, 32, 256, 512, 4, 3, 3},    {16, 16, 512, 512, 8, 3, 3},   {128, 128, 64, 128, 64, 3, 3},
                      {64, 64, 128, 256, 128, 3, 3},  {32, 32, 256, 512, 256, 3, 3}, {16, 16, 512, 512, 512, 3, 3},
                      {128, 128, 64, 128, 32, 3, 3},  {256, 256, 3, 64, 1, 3, 5},    {128, 128, 64, 128, 1, 3, 5},
                      {256, 256, 3, 64, 1, 7, 3},     {256, 256, 3, 64, 1, 7, 5},    {256, 256, 3, 64, 1, 11, 3}};

template <class F>
float time_ms(cudaStream_t s, int reps, F&& f) {
  cudaEvent_t a, b;
  NETDECONV_CUDA_CHECK(cudaEventCreate(&a));
  NETDECONV_CUDA_CHECK(cudaEventCreate(&b));
  f();  // warm-up
  NETDECONV_CUDA_CHECK(cudaEventRecord(a, s));
  for (int i = 0; i < reps; ++i) f();
  NETDECONV_CUDA_CHECK(cudaEventRecord(b, s));
  NETDECONV_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  NETDECONV_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  (void)cudaEventDestroy(a);
  (void)cudaEventDestroy(b);
  return ms / float(reps);
}

}  // namespace

int main(int argc, char** argv) {
  const long long N = argc > 1 ? std::atoll(argv[1]) : 8;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
  const int only = argc > 3 ? std::atoi(argv[3]) : -1;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::puts("bench_cuda_statistics: no CUDA device");
    return 77;
  }
  cudaDeviceProp prop{};
  NETDECONV_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s, batch %lld, %d reps; times in ms\n", prop.name, N, reps);
  std::printf("%-28s %6s %10s %10s %8s %10s %10s %8s %10s %10s %8s\n", "row (H,W,C,Cout,C/B,k,S)", "F", "cov",
              "im2col+gemm", "ratio", "cov tf32", "gemm tf32", "ratio", "isqrt5", "15 gemm", "ratio");
  cudaStream_t stream;
  NETDECONV_CUDA_CHECK(cudaStreamCreate(&stream));
  cublasHandle_t blas;
  NETDECONV_CUBLAS_CHECK(cublasCreate(&blas));
  NETDECONV_CUBLAS_CHECK(cublasSetStream(blas, stream));
  for (int r = 0; r < int(sizeof(rows) / sizeof(rows[0])); ++r) {
    if (only >= 0 && r != only) continue;
    const shape& sh = rows[r];
    const long long C = sh.C, K = sh.k * sh.k, B = C / sh.blocks;
    const netdeconv::block_plan p = netdeconv::make_block_plan(netdeconv::block_layout::interleaved_shared, C, K, B);
    const netdeconv::conv_geometry g = netdeconv::conv_geometry::square(sh.k, 1, sh.k / 2);  // the reference conv layer
    const long long F = p.features(), count = p.count();
    float* x = nullptr;
    NETDECONV_CUDA_CHECK(cudaMalloc(&x, sizeof(float) * N * C * sh.H * sh.W));
    NETDECONV_CUDA_CHECK(cudaMemset(x, 0, sizeof(float) * N * C * sh.H * sh.W));
    netdeconv::cuda_policy policy{stream};
    policy.blas = blas;
    const auto xv = netdeconv::nchw<const float>(x, N, C, sh.H, sh.W);
    const netdeconv::patch_sampler<float> src(xv, g, sh.S);
    const std::size_t ws_bytes = netdeconv::block_moments_workspace(policy, src, p);
    void* ws = nullptr;
    NETDECONV_CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
    policy.workspace = {ws, ws_bytes};
    netdeconv::index_t* m_count = nullptr;
    double *m_mean = nullptr, *m_scatter = nullptr;
    NETDECONV_CUDA_CHECK(cudaMalloc(&m_count, sizeof(netdeconv::index_t) * count));
    NETDECONV_CUDA_CHECK(cudaMalloc(&m_mean, sizeof(double) * count * F));
    NETDECONV_CUDA_CHECK(cudaMalloc(&m_scatter, sizeof(double) * count * F * F));
    const auto m = netdeconv::contiguous_moments<double>(m_count, m_mean, m_scatter, count, F);
    const float t_cov = time_ms(stream, reps, [&] { netdeconv::block_moments(policy, src, p, m); });

    // Baseline: the sampled patch matrix (im2col with stride S) and one SGEMM X^T X over it viewed
    // as n = rows * C/B samples of F features: the same 2 n F^2 FLOP on the same bytes.
    netdeconv::conv_geometry gs = g;
    gs.stride_h = gs.stride_w = sh.S;
    const long long prow = N * gs.out_h(sh.H) * gs.out_w(sh.W), n = prow * (C * K) / F;
    float *cols = nullptr, *out = nullptr;
    NETDECONV_CUDA_CHECK(cudaMalloc(&cols, sizeof(float) * prow * C * K));
    NETDECONV_CUDA_CHECK(cudaMalloc(&out, sizeof(float) * F * F));
    const float one = 1, zero = 0;
    const auto im2col_gemm = [&] {
      netdeconv::im2col(policy, xv, gs, netdeconv::row_major(cols, prow, C * K));
      NETDECONV_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, int(F), int(F), int(n), &one, cols, int(F), cols,
                                         int(F), &zero, out, int(F)));
    };
    const float t_gemm = time_ms(stream, reps, im2col_gemm);

    // TF32 (sm_80+): refused with a message by builds without an 8.0+ image (block_moments throws).
    float t_tf32 = 0, t_gemm_tf32 = 0;
    bool tf32 = prop.major >= 8;
    if (tf32) {
      try {
        t_tf32 = time_ms(stream, reps, [&] {
          netdeconv::block_moments(policy, src, p, m, netdeconv::cuda::cov_precision::tf32);
        });
      } catch (const netdeconv::invalid_argument& e) {
        std::printf("no TF32: %s\n", e.what());
        tf32 = false;
      }
    }
    if (tf32) {
      NETDECONV_CUBLAS_CHECK(cublasSetMathMode(blas, CUBLAS_TF32_TENSOR_OP_MATH));
      t_gemm_tf32 = time_ms(stream, reps, im2col_gemm);
      NETDECONV_CUBLAS_CHECK(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));
    }
    const double useful_gflop = double(n) * double(F) * double(F + 1) * 1e-9;

    // Inverse square root of the count() covariances, 5 steps, vs 15 batched SGEMMs.
    float *A = nullptr, *D = nullptr, *T3 = nullptr;
    NETDECONV_CUDA_CHECK(cudaMalloc(&A, sizeof(float) * count * F * F));
    NETDECONV_CUDA_CHECK(cudaMalloc(&D, sizeof(float) * count * F * F));
    NETDECONV_CUDA_CHECK(cudaMalloc(&T3, sizeof(float) * count * F * F));
    const netdeconv::tensor_view<float, 3> av{A, {count, F, F}, {F * F, F, 1}}, dv{D, {count, F, F}, {F * F, F, 1}};
    netdeconv::covariance(policy, netdeconv::moments_view<const double>(m), 1e-5, av);
    netdeconv::isqrt_report* reports = nullptr;
    NETDECONV_CUDA_CHECK(cudaMalloc(&reports, sizeof(netdeconv::isqrt_report) * count));
    netdeconv::isqrt_options five = netdeconv::isqrt_options::fixed(5);
    five.final_residual = false;
    netdeconv::cuda_policy ns_policy{stream};
    ns_policy.blas = blas;
    const float t_ns = time_ms(stream, reps, [&] {
      netdeconv::inverse_sqrt(ns_policy, netdeconv::tensor_view<const float, 3>(av), dv, five,
                              netdeconv::contiguous(reports, count));
    });
    const float t_ref = time_ms(stream, reps, [&] {
      for (int i = 0; i < 15; ++i)
        NETDECONV_CUBLAS_CHECK(cublasSgemmStridedBatched(blas, CUBLAS_OP_N, CUBLAS_OP_N, int(F), int(F), int(F), &one, A,
                                                         int(F), F * F, D, int(F), F * F, &zero, T3, int(F), F * F,
                                                         int(count)));
    });
    char name[64];
    std::snprintf(name, sizeof name, "%lld,%lld,%lld,%lld,%lld,%lld,%lld", sh.H, sh.W, sh.C, sh.Cout, sh.blocks, sh.k, sh.S);
    if (tf32)
      std::printf("%-28s %6lld %10.3f %10.3f %8.2f %10.3f %10.3f %8.2f %10.3f %10.3f %8.2f\n", name, F, t_cov, t_gemm,
                  t_gemm / t_cov, t_tf32, t_gemm_tf32, t_gemm_tf32 / t_tf32, t_ns, t_ref, t_ns / t_ref);
    else
      std::printf("%-28s %6lld %10.3f %10.3f %8.2f %10s %10s %8s %10.3f %10.3f %8.2f\n", name, F, t_cov, t_gemm,
                  t_gemm / t_cov, "n/a", "n/a", "n/a", t_ns, t_ref, t_ns / t_ref);
    std::printf("bench_row %d cov_ms %.6f\n", r, t_cov);
    std::printf("bench_row %d cov_gflops %.3f\n", r, useful_gflop / (t_cov * 1e-3));
    if (tf32) {
      std::printf("bench_row %d cov_tf32_ms %.6f\n", r, t_tf32);
      std::printf("bench_row %d cov_tf32_gflops %.3f\n", r, useful_gflop / (t_tf32 * 1e-3));
    }
    for (void* ptr : {(void*)x, ws, (void*)cols, (void*)out, (void*)A, (void*)D, (void*)T3, (void*)reports, (void*)m_count,
                      (void*)m_mean, (void*)m_scatter})
      NETDECONV_CUDA_CHECK(cudaFree(ptr));
  }
  (void)cublasDestroy(blas);
  (void)cudaStreamDestroy(stream);
  return 0;
}
