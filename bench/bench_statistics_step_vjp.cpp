// SPDX-License-Identifier: MIT
// Forward + backward of the statistics path of a reference conv deconvolution layer (interleaved-
// shared blocks, padding k/2, stride 1, eps 1e-5, 5 Newton-Schulz steps) on every shape of
// docs/method.md §9, against PyTorch autograd through the reference layer's statistics, all
// measured in this run, interleaved, medians of --reps:
//   ours     conv_statistics_step (writing form) + conv_statistics_step_vjp, netdeconv::par on
//            --threads threads, and the backward's parts: the recomputed block_moments, the
//            inverse square root's gradient, the weight side and the scatter to dL/dx;
//   PyTorch  bench/torch_reference.py --backward: unfold, covariance, 5 coupled steps, fold, then
//            autograd from the same kind of upstream dL/dW', dL/db' (same thread count, OpenBLAS
//            checked), run as a subprocess in the middle of the row's rounds.
// The same step from the public pieces, the forward keeping Cov for the backward (block_moments,
// covariance, inverse_sqrt, fold; then fold_vjp, inverse_sqrt_vjp, conv_covariance_vjp: no
// recomputed moments), as a framework's autograd function can: columns marked '.
// Also the peak extra heap memory of our forward and of our backward (outputs in caller memory).
// Prints a table, then one `BENCH_JSON {...}` line per row.
//   bench_statistics_step_vjp [--threads 2] [--batch 16] [--reps 5] [--only ROW]

#include "common.hpp"

#include <cmath>
#include <iostream>

#include <netdeconv/netdeconv.hpp>

using namespace netdeconv;

namespace {

struct row_result {
  bench::layer_shape shape;
  index_t F = 0, G = 0;
  double forward = 0, backward = 0, moments = 0, isqrt = 0, weight = 0, scatter = 0, forward_saved = 0, backward_saved = 0,
         torch = NAN;
  long long peak_forward = 0, peak_backward = 0, peak_moments = 0, peak_isqrt = 0, peak_weight = 0, peak_scatter = 0,
            peak_backward_saved = 0;
};

std::vector<float> normal(std::mt19937& rng, std::size_t n, float scale, float offset = 0) {
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& e : v) e = offset + scale * d(rng);
  return v;
}

row_result run_row(const bench::layer_shape& s, const bench::options& o, std::string& torch_blas) {
  std::mt19937 rng(7);
  const simd_policy pol = simd_threads(o.threads);
  const index_t N = o.batch, K = s.k * s.k;
  const std::vector<float> x = normal(rng, std::size_t(N) * s.C * s.H * s.W, 1, 0.5f),
                           w = normal(rng, std::size_t(s.Cout) * s.C * K, 1 / std::sqrt(float(s.C * K))),
                           b = normal(rng, std::size_t(s.Cout), 1), gw = normal(rng, w.size(), 1), gb = normal(rng, b.size(), 1);
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(s.k, 1, s.k / 2);
  cfg.block = s.C / s.blocks;
  cfg.sampling_stride = s.S;
  const block_plan plan = conv_statistics_plan(s.C, cfg);
  const index_t S = plan.count(), F = plan.features();
  row_result res;
  res.shape = s;
  res.F = F;
  res.G = plan.rows_per_patch();
  const auto xv = nchw<const float>(x.data(), N, s.C, s.H, s.W);
  const auto wv = nchw<const float>(w.data(), s.Cout, s.C, s.k, s.k), gwv = nchw<const float>(gw.data(), s.Cout, s.C, s.k, s.k);
  const auto bv = contiguous<const float>(b.data(), s.Cout), gbv = contiguous<const float>(gb.data(), s.Cout);
  // forward outputs and backward gradients: caller memory
  std::vector<float> mean(std::size_t(S * F)), D(std::size_t(S * F * F)), wf(w.size()), bf(b.size()), dw(w.size()), db(b.size()),
      dx(x.size());
  std::vector<isqrt_report> reports(static_cast<std::size_t>(S)), breports(reports);
  const statistics_step_outputs<float, 4> fout{row_major(mean.data(), S, F), {D.data(), {S, F, F}, {F * F, F, 1}},
                                               nchw(wf.data(), s.Cout, s.C, s.k, s.k), contiguous(bf.data(), s.Cout),
                                               contiguous(reports.data(), S)};
  const statistics_step_gradients<float, 4> bout{nchw(dw.data(), s.Cout, s.C, s.k, s.k), contiguous(db.data(), s.Cout),
                                                 nchw(dx.data(), N, s.C, s.H, s.W), contiguous(breports.data(), S)};
  const block_statistics_view<const float> stats{plan, fout.mean, fout.D};
  const auto forward = [&] { conv_statistics_step(pol, xv, wv, bv, cfg, fout); };
  const auto backward = [&] { conv_statistics_step_vjp(pol, xv, wv, bv, cfg, stats, gwv, gbv, bout); };
  forward();
  // the backward's parts, on the same data
  const patch_sampler<float> sampler(xv, cfg.geometry, cfg.sampling_stride);
  const block_statistics<float> folded = detail::load_statistics(stats);
  std::vector<square_matrix<double>> dD;
  std::vector<Eigen::VectorXd> dmu;
  detail::weight_vjp<float>(o.threads, plan, wv, folded, gwv, gbv, bout.weight, bout.bias, dD, dmu);
  const detail::statistics_backward how{.eps = cfg.eps, .isqrt = cfg.isqrt};
  const detail::patch_gradient grad = detail::covariance_vjp<simd_policy, float>(pol, sampler, plan, how, std::vector(dD), std::vector(dmu), bout.reports);
  const detail::patch_row_adder<float> add{detail::make_patch_map("bench", xv.shape, cfg.geometry, cfg.sampling_stride, true), bout.x};
  std::vector<square_matrix<float>> cov(static_cast<std::size_t>(S)), gD(cov), dcov;
  const auto m = block_moments(pol, sampler, plan);
  for (index_t i = 0; i < S; ++i) {
    cov[std::size_t(i)] = m[std::size_t(i)].covariance<float>(cfg.eps);
    gD[std::size_t(i)] = dD[std::size_t(i)].cast<float>();
  }
  // The same step from the public pieces, the forward keeping Cov for the backward (no recomputed
  // moments): block_moments, covariance, inverse_sqrt, fold; fold_vjp, inverse_sqrt_vjp, conv_covariance_vjp.
  std::vector<index_t> m_count(static_cast<std::size_t>(S));
  std::vector<double> m_mean(std::size_t(S * F)), m_scatter(std::size_t(S * F * F));
  const moments_view<double> moments = contiguous_moments(m_count.data(), m_mean.data(), m_scatter.data(), S, F);
  std::vector<float> saved_cov(std::size_t(S * F * F)), grad_D(saved_cov.size()), grad_cov(saved_cov.size()),
      grad_mean(std::size_t(S * F));
  const auto cube = [&](std::vector<float>& v) { return tensor_view<float, 3>{v.data(), {S, F, F}, {F * F, F, 1}}; };
  const auto forward_saved = [&] {
    block_moments(pol, sampler, plan, moments);
    covariance(pol, moments, cfg.eps, cube(saved_cov), fout.mean);
    inverse_sqrt(pol, tensor_view<const float, 3>(cube(saved_cov)), fout.D, cfg.isqrt, fout.reports);
    fold(pol, stats, wv, bv, fout.weight, fout.bias);
  };
  const auto backward_saved = [&] {
    fold_vjp(pol, stats, wv, bv, gwv, gbv, bout.weight, bout.bias, cube(grad_D), row_major(grad_mean.data(), S, F));
    inverse_sqrt_vjp(pol, tensor_view<const float, 3>(cube(saved_cov)), tensor_view<const float, 3>(cube(grad_D)),
                     cube(grad_cov), cfg.isqrt, bout.reports);
    std::fill(dx.begin(), dx.end(), 0.0f);
    conv_covariance_vjp(pol, xv, cfg, moments, tensor_view<const float, 3>(cube(grad_cov)),
                        row_major<const float>(grad_mean.data(), S, F), bout.x);
  };
  bench::set_blas_threads(o.threads);
  const std::vector<std::function<void()>> fs = {
      forward,
      backward,
      [&] { block_moments(pol, sampler, plan); },
      [&] { detail::inverse_sqrt_vjp_batched_impl<float>(pol, cov, gD, dcov, cfg.isqrt); },
      [&] { detail::weight_vjp<float>(o.threads, plan, wv, folded, gwv, gbv, bout.weight, bout.bias, dD, dmu); },
      [&] { detail::scatter_patch_gradient(pol, sampler, plan, grad, add); },
      forward_saved,
      backward_saved,
  };
  const auto t = bench::interleaved_medians(fs, o.reps, [&](int round) {
    if (round == o.reps / 2) res.torch = bench::run_torch_reference(bench::torch_reference_command(s, o, " --backward"), torch_blas);
  });
  res.forward = t[0];
  res.backward = t[1];
  res.moments = t[2];
  res.isqrt = t[3];
  res.weight = t[4];
  res.scatter = t[5];
  res.forward_saved = t[6];
  res.backward_saved = t[7];
  res.peak_forward = bench::peak_extra_bytes(forward);
  res.peak_backward = bench::peak_extra_bytes(backward);
  res.peak_moments = bench::peak_extra_bytes(fs[2]);
  res.peak_isqrt = bench::peak_extra_bytes(fs[3]);
  res.peak_weight = bench::peak_extra_bytes(fs[4]);
  res.peak_scatter = bench::peak_extra_bytes(fs[5]);
  res.peak_backward_saved = bench::peak_extra_bytes(backward_saved);
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  const auto o = bench::options::parse(argc, argv);
#ifdef _OPENMP
  omp_set_num_threads(o.threads);
#endif
  std::printf("# netdeconv statistics path forward + backward, %s, %d threads, batch %d, medians of %d interleaved rounds\n",
              bench::cpu_model().c_str(), o.threads, o.batch, o.reps);
  std::vector<row_result> rows;
  std::string torch_blas = "?";
  for (std::size_t i = 0; i < bench::spec_shapes.size(); ++i) {
    if (!o.only.empty() && std::to_string(i) != o.only) continue;
    rows.push_back(run_row(bench::spec_shapes[i], o, torch_blas));
    const auto& r = rows.back();
    std::fprintf(stderr, "row %zu %s done: ours %.4f s, torch %.4f s\n", i, bench::shape_text(r.shape).c_str(), r.forward + r.backward,
                 r.torch);
  }
  std::printf("# PyTorch reference BLAS: %s\n", torch_blas.c_str());
  std::printf("%-26s %5s %3s | %8s %8s | %8s %8s %8s %8s | %8s %8s | %8s %7s %7s | %7s %7s %5s %7s\n", "shape (H,W,C,Co,blk,k,S)", "F",
              "G", "fwd s", "bwd s", "moments", "isqrt", "weight", "scatter", "fwd' s", "bwd' s", "torch s", "xtorch", "xtorch'",
              "fwd MiB", "bwd MiB", "ratio", "bwd' MiB");
  double log_sum = 0, log_sum_saved = 0;
  for (const auto& r : rows) {
    const double x = r.torch / (r.forward + r.backward), xs = r.torch / (r.forward_saved + r.backward_saved);
    log_sum += std::log(x);
    log_sum_saved += std::log(xs);
    std::printf("%-26s %5ld %3ld | %8.4f %8.4f | %8.4f %8.4f %8.4f %8.4f | %8.4f %8.4f | %8.4f %7.2f %7.2f | %7.1f %7.1f %5.2f %7.1f\n",
                bench::shape_text(r.shape).c_str(), long(r.F), long(r.G), r.forward, r.backward, r.moments, r.isqrt, r.weight,
                r.scatter, r.forward_saved, r.backward_saved, r.torch, x, xs, double(r.peak_forward) / (1 << 20),
                double(r.peak_backward) / (1 << 20), double(r.peak_backward) / double(std::max(1LL, r.peak_forward)),
                double(r.peak_backward_saved) / (1 << 20));
  }
  if (!rows.empty())
    std::printf("# torch/ours (forward + backward), geometric mean: %.2f; with the forward's Cov kept (the pieces, '): %.2f\n",
                std::exp(log_sum / double(rows.size())), std::exp(log_sum_saved / double(rows.size())));
  for (const auto& r : rows)
    std::printf(
        "BENCH_JSON {\"shape\": [%d, %d, %d, %d, %d, %d, %d], \"batch\": %d, \"threads\": %d, \"F\": %ld, \"G\": %ld, "
        "\"ours_forward_s\": %.6g, \"ours_backward_s\": %.6g, \"ours_bwd_moments_s\": %.6g, \"ours_bwd_isqrt_s\": %.6g, "
        "\"ours_bwd_weight_s\": %.6g, \"ours_bwd_scatter_s\": %.6g, \"ours_saved_forward_s\": %.6g, "
        "\"ours_saved_backward_s\": %.6g, \"torch_ref_fwd_bwd_s\": %s, \"peak_extra_forward_bytes\": %lld, "
        "\"peak_extra_backward_bytes\": %lld, \"peak_extra_saved_backward_bytes\": %lld, "
        "\"peak_extra_bwd_parts_bytes\": [%lld, %lld, %lld, %lld]}\n",
        r.shape.H, r.shape.W, r.shape.C, r.shape.Cout, r.shape.blocks, r.shape.k, r.shape.S, o.batch, o.threads, long(r.F),
        long(r.G), r.forward, r.backward, r.moments, r.isqrt, r.weight, r.scatter, r.forward_saved, r.backward_saved,
        std::isnan(r.torch) ? "null" : std::to_string(r.torch).c_str(), r.peak_forward, r.peak_backward, r.peak_backward_saved,
        r.peak_moments, r.peak_isqrt, r.peak_weight, r.peak_scatter);
  return 0;
}
