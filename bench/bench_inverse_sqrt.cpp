// SPDX-License-Identifier: MIT
// Inverse square root, 5 Newton-Schulz steps (and 15), of F x F covariances for F in {27, 147,
// 288, 363, 576}: netdeconv::par (symmetric half products), the same without the final residual
// (isqrt_options::final_residual = false) and netdeconv::seq (the oracle loop, Eigen GEMM) against
// 15 (resp. 45) OpenBLAS sgemm of the same size, 1 and --threads threads, interleaved medians of
// --reps. `BENCH_JSON` lines:
//   {"bench": "inverse_sqrt", "F", "iterations", "threads", "ours_s", "ours_no_residual_s", "seq_s",
//    "openblas_gemms_s", "ratio", "ratio_no_residual"}
//   bench_inverse_sqrt [--threads 2] [--reps 7]

#include "common.hpp"

#include <netdeconv/inverse_sqrt.hpp>

using namespace netdeconv;

int main(int argc, char** argv) {
  auto o = bench::options::parse(argc, argv);
  std::printf("# inverse_sqrt vs OpenBLAS sgemm, %s\n", bench::cpu_model().c_str());
  std::printf("%5s %5s %7s %10s %10s %10s %12s %8s %8s\n", "F", "iter", "threads", "ours s", "no res s", "seq s", "3n sgemm s",
              "ratio", "no res");
  for (const int threads : {1, o.threads})
    for (const index_t F : {27, 147, 288, 363, 576})
      for (const int iterations : {5, 15}) {
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
        bench::set_blas_threads(threads);
        Eigen::MatrixXf G = Eigen::MatrixXf::Random(F, 2 * F);
        const Eigen::MatrixXf A = G * G.transpose() / float(2 * F) + 1e-3f * Eigen::MatrixXf::Identity(F, F);
        Eigen::MatrixXf D, P = A, Q(F, F), R(F, F);
        isqrt_options no_residual = isqrt_options::fixed(iterations);
        no_residual.final_residual = false;
        const auto t = bench::interleaved_medians(
            {[&] { inverse_sqrt(simd_threads(threads), A, D, isqrt_options::fixed(iterations)); },
             [&] { inverse_sqrt(simd_threads(threads), A, D, no_residual); },
             [&] { inverse_sqrt(seq, A, D, isqrt_options::fixed(iterations)); },
             [&] {
               for (int i = 0; i < 3 * iterations; ++i) bench::blas_gemm(i % 2 ? Q.data() : P.data(), P.data(), F, i % 2 ? R.data() : Q.data());
             }},
            o.reps);
        std::printf("%5ld %5d %7d %10.5f %10.5f %10.5f %12.5f %8.3f %8.3f\n", long(F), iterations, threads, t[0], t[1], t[2],
                    t[3], t[0] / t[3], t[1] / t[3]);
        std::printf("BENCH_JSON {\"bench\": \"inverse_sqrt\", \"F\": %ld, \"iterations\": %d, \"threads\": %d, \"ours_s\": %.6g, "
                    "\"ours_no_residual_s\": %.6g, \"seq_s\": %.6g, \"openblas_gemms_s\": %.6g, \"ratio\": %.4g, "
                    "\"ratio_no_residual\": %.4g}\n",
                    long(F), iterations, threads, t[0], t[1], t[2], t[3], t[0] / t[3], t[1] / t[3]);
      }
  return 0;
}
