// SPDX-License-Identifier: MIT
// The statistics path of a reference conv deconvolution layer (interleaved-shared blocks, padding
// k/2, stride 1, eps 1e-5, 5 Newton-Schulz steps) on every shape of docs/method.md §9, ours against the
// baselines a user would otherwise pick, all measured in this run, interleaved, medians of --reps:
//   ours      block_moments (fused sampled im2col + covariance), inverse_sqrt, fold, and the whole
//             conv_statistics_step, with netdeconv::par (SIMD + OpenMP) on --threads threads;
//   OpenBLAS  ssyrk and sgemm of X^T X on a pre-built sampled, blocked patch matrix X (building X
//             not counted), 15 sgemm of F x F (what the reference's 5 steps multiply);
//   PyTorch   the reference layer's statistics path (bench/torch_reference.py, same thread count,
//             OpenBLAS checked), run as a subprocess in the middle of the row's rounds;
//   peak      OpenBLAS sgemm 1152^3, measured before and after the rows.
// Prints a table, then one `BENCH_JSON {...}` line per row.
//   bench_statistics_step [--threads 2] [--batch 16] [--reps 5] [--memory-batch 128] [--only ROW]

#include "common.hpp"

#include <cmath>
#include <iostream>

#include <netdeconv/netdeconv.hpp>

using namespace netdeconv;

namespace {

struct row_result {
  bench::layer_shape shape;
  index_t F = 0, G = 0, samples = 0;
  double cov = 0, isqrt = 0, fold = 0, stats = 0, syrk = 0, gemm = 0, isqrt15 = 0, torch = NAN;
  long long peak_extra = 0, peak_extra_memory_batch = -1;
  double x_bytes = 0;
};

struct layer_data {
  std::vector<float> x, w, b;
  conv_deconv_config cfg;
  block_plan plan;
  layer_data(const bench::layer_shape& s, int batch, std::mt19937& rng) {
    std::normal_distribution<float> normal;
    x.resize(std::size_t(batch) * s.C * s.H * s.W);
    for (auto& v : x) v = normal(rng) + 0.5f;
    w.resize(std::size_t(s.Cout) * s.C * s.k * s.k);
    for (auto& v : w) v = normal(rng) / std::sqrt(float(s.C * s.k * s.k));
    b.resize(s.Cout);
    for (auto& v : b) v = normal(rng);
    cfg.geometry = conv_geometry::square(s.k, 1, s.k / 2);
    cfg.block = s.C / s.blocks;
    cfg.sampling_stride = s.S;
    plan = make_block_plan(cfg.layout, s.C, s.k * s.k, cfg.block);
  }
  image_view<const float> xv(const bench::layer_shape& s, int batch) const { return nchw<const float>(x.data(), batch, s.C, s.H, s.W); }
  image_view<const float> wv(const bench::layer_shape& s) const { return nchw<const float>(w.data(), s.Cout, s.C, s.k, s.k); }
  vector_view<const float> bv() const { return contiguous<const float>(b.data(), index_t(b.size())); }
};

row_result run_row(const bench::layer_shape& s, const bench::options& o, std::string& torch_blas) {
  std::mt19937 rng(7);
  const simd_policy pol = simd_threads(o.threads);
  row_result res;
  res.shape = s;
  layer_data d(s, o.batch, rng);
  const auto x = d.xv(s, o.batch);
  res.x_bytes = double(d.x.size()) * sizeof(float);
  const patch_sampler<float> sampler(x, d.cfg.geometry, d.cfg.sampling_stride);
  const block_plan& plan = d.plan;
  res.F = plan.features();
  res.G = plan.rows_per_patch();
  res.samples = sampler.rows() * res.G;
  // the baselines' pre-built X: sampled rows, blocked (samples x F, row-major); not timed
  std::vector<float> X(std::size_t(res.samples) * res.F), row(sampler.width());
  for (index_t r = 0; r < sampler.rows(); ++r) {
    sampler.gather(r, row.data());
    for (index_t g = 0; g < res.G; ++g)
      for (index_t f = 0; f < res.F; ++f) X[(r * res.G + g) * res.F + f] = row[plan.column(0, g, f)];
  }
  const index_t F = res.F;
  std::vector<float> C(F * F), P(F * F), Q(F * F), R(F * F);
  const auto m = block_moments(pol, sampler, plan);
  const Eigen::MatrixXf cov = m[0].covariance<float>(d.cfg.eps);
  for (index_t i = 0; i < F * F; ++i) P[i] = cov.data()[i];
  Eigen::MatrixXf D;
  const auto est = estimate_statistics<float>(pol, sampler, plan, d.cfg.eps, d.cfg.isqrt);
  std::vector<float> wout(d.w.size()), bout(d.b.size());
  bench::set_blas_threads(o.threads);

  const std::vector<std::function<void()>> fs = {
      [&] { block_moments(pol, sampler, plan); },
      [&] { inverse_sqrt(pol, cov, D, d.cfg.isqrt); },
      [&] { fold(pol, est.statistics, d.wv(s), d.bv(), nchw(wout.data(), s.Cout, s.C, s.k, s.k), contiguous(bout.data(), s.Cout)); },
      [&] { conv_statistics_step(pol, x, d.wv(s), d.bv(), d.cfg); },
      [&] { bench::blas_syrk(X.data(), res.samples, F, C.data()); },
      [&] { bench::blas_gemm_xtx(X.data(), res.samples, F, C.data()); },
      [&] {
        for (int i = 0; i < 15; ++i) bench::blas_gemm(i % 2 ? Q.data() : P.data(), P.data(), F, i % 2 ? R.data() : Q.data());
      },
  };
  const auto t = bench::interleaved_medians(fs, o.reps, [&](int round) {
    if (round == o.reps / 2) res.torch = bench::run_torch_reference(bench::torch_reference_command(s, o), torch_blas);
  });
  res.cov = t[0];
  res.isqrt = t[1];
  res.fold = t[2];
  res.stats = t[3];
  res.syrk = t[4];
  res.gemm = t[5];
  res.isqrt15 = t[6];
  X = {};
  res.peak_extra = bench::peak_extra_bytes([&] { conv_statistics_step(pol, x, d.wv(s), d.bv(), d.cfg); });
  return res;
}

long long peak_at_batch(const bench::layer_shape& s, int batch, int threads) {
  std::mt19937 rng(8);
  layer_data d(s, batch, rng);
  return bench::peak_extra_bytes([&] { conv_statistics_step(simd_threads(threads), d.xv(s, batch), d.wv(s), d.bv(), d.cfg); });
}

}  // namespace

int main(int argc, char** argv) {
  const auto o = bench::options::parse(argc, argv);
#ifdef _OPENMP
  omp_set_num_threads(o.threads);  // Eigen's own GEMM threads follow this
#endif
  const double peak_before = bench::sgemm_peak_gflops(o.threads);
  const double bandwidth = bench::read_bandwidth_gbps(o.threads);
  std::printf("# netdeconv statistics path, %s, %d threads, batch %d, medians of %d interleaved rounds\n",
              bench::cpu_model().c_str(), o.threads, o.batch, o.reps);
  std::printf("# OpenBLAS sgemm 1152^3: %.1f GFLOP/s (before the rows); memory read bandwidth %.1f GB/s\n", peak_before, bandwidth);
  std::vector<row_result> rows;
  std::string torch_blas = "?";
  for (std::size_t i = 0; i < bench::spec_shapes.size(); ++i) {
    if (!o.only.empty() && std::to_string(i) != o.only) continue;
    rows.push_back(run_row(bench::spec_shapes[i], o, torch_blas));
    if (o.memory_batch > 0) rows.back().peak_extra_memory_batch = peak_at_batch(bench::spec_shapes[i], o.memory_batch, o.threads);
    const auto& r = rows.back();
    std::fprintf(stderr, "row %zu %s done: stats %.4f s, torch %.4f s\n", i, bench::shape_text(r.shape).c_str(), r.stats, r.torch);
  }
  const double peak_after = bench::sgemm_peak_gflops(o.threads);
  const double peak = 0.5 * (peak_before + peak_after);
  std::printf("# OpenBLAS sgemm 1152^3 after the rows: %.1f GFLOP/s; peak reference = mean %.1f GFLOP/s\n", peak_after, peak);
  std::printf("# PyTorch reference BLAS: %s\n", torch_blas.c_str());
  std::printf("%-26s %5s %3s %9s | %8s %8s %8s %8s | %8s %8s %8s %8s | %7s %6s %6s %6s %7s %7s\n", "shape (H,W,C,Co,blk,k,S)", "F",
              "G", "samples", "cov s", "isqrt s", "fold s", "stats s", "syrk s", "gemm s", "15gemm s", "torch s", "GF/s",
              "%peak", "xsyrk", "xisqrt", "xtorch", "MiB");
  for (const auto& r : rows) {
    const double gf = double(r.samples) * r.F * (r.F + 1) / r.cov / 1e9;
    std::printf("%-26s %5ld %3ld %9ld | %8.4f %8.4f %8.5f %8.4f | %8.4f %8.4f %8.4f %8.4f | %7.1f %6.1f %6.2f %6.2f %7.2f %7.1f\n",
                bench::shape_text(r.shape).c_str(), long(r.F), long(r.G), long(r.samples), r.cov, r.isqrt, r.fold, r.stats, r.syrk,
                r.gemm, r.isqrt15, r.torch, gf, 100 * gf / peak, std::min(r.syrk, r.gemm) / r.cov, r.isqrt / r.isqrt15,
                r.torch / r.stats, double(r.peak_extra) / (1 << 20));
  }
  for (const auto& r : rows) {
    const double gf = double(r.samples) * r.F * (r.F + 1) / r.cov / 1e9;
    std::printf(
        "BENCH_JSON {\"shape\": [%d, %d, %d, %d, %d, %d, %d], \"batch\": %d, \"threads\": %d, \"F\": %ld, \"G\": %ld, "
        "\"samples\": %ld, \"ours_cov_s\": %.6g, \"ours_isqrt_s\": %.6g, \"ours_fold_s\": %.6g, \"ours_stats_s\": %.6g, "
        "\"openblas_syrk_s\": %.6g, \"openblas_gemm_s\": %.6g, \"openblas_isqrt15_s\": %.6g, \"torch_ref_stats_s\": %s, "
        "\"useful_gflops_cov\": %.4g, \"sgemm_peak_gflops\": %.4g, \"x_read_gbps\": %.4g, \"mem_read_gbps\": %.4g, "
        "\"peak_extra_bytes\": %lld, \"memory_batch\": %d, \"peak_extra_bytes_memory_batch\": %lld}\n",
        r.shape.H, r.shape.W, r.shape.C, r.shape.Cout, r.shape.blocks, r.shape.k, r.shape.S, o.batch, o.threads, long(r.F),
        long(r.G), long(r.samples), r.cov, r.isqrt, r.fold, r.stats, r.syrk, r.gemm, r.isqrt15, std::isnan(r.torch) ? "null" : std::to_string(r.torch).c_str(), gf, peak,
        r.x_bytes / r.cov / 1e9, bandwidth, r.peak_extra, o.memory_batch, r.peak_extra_memory_batch);
  }
  return 0;
}
