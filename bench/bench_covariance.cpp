// SPDX-License-Identifier: MIT
// Fused sampled im2col + covariance (block_moments with netdeconv::par) on 1 and on --threads
// threads, for the docs/method.md §9 rows whose covariance is >= 5 GFLOP of useful work at --batch; and the
// sequential oracle once, for scale. Interleaved medians of --reps. Prints `BENCH_JSON` lines:
//   {"bench": "covariance_threads", "shape", "batch", "gflop", "t1_s", "tN_s", "threads", "speedup", "seq_s"}
//   bench_covariance [--threads 2] [--batch 16] [--reps 5]

#include "common.hpp"

#include <cmath>

#include <netdeconv/covariance.hpp>

using namespace netdeconv;

int main(int argc, char** argv) {
  auto o = bench::options::parse(argc, argv);
  std::printf("# block_moments, 1 vs %d threads, batch %d, %s\n", o.threads, o.batch, bench::cpu_model().c_str());
  std::printf("%-28s %8s %9s %9s %9s %8s\n", "shape (H,W,C,Co,blk,k,S)", "GFLOP", "seq s", "1 thr s", "N thr s", "speedup");
  for (const auto& s : bench::spec_shapes) {
    const auto g = conv_geometry::square(s.k, 1, s.k / 2);
    const auto plan = make_block_plan(block_layout::interleaved_shared, s.C, s.k * s.k, s.C / s.blocks);
    std::vector<float> x(std::size_t(o.batch) * s.C * s.H * s.W);
    std::mt19937 rng(3);
    std::normal_distribution<float> normal;
    for (auto& v : x) v = normal(rng);
    const patch_sampler<float> sampler(nchw<const float>(x.data(), o.batch, s.C, s.H, s.W), g, s.S);
    const double gflop = double(sampler.rows() * plan.rows_per_patch()) * plan.features() * (plan.features() + 1) / 1e9;
    if (gflop < 5) continue;
    const auto t = bench::interleaved_medians({[&] { block_moments(simd_threads(1), sampler, plan); },
                                               [&] { block_moments(simd_threads(o.threads), sampler, plan); }},
                                              o.reps);
    const double tseq = bench::seconds_of([&] { block_moments(seq, sampler, plan); });
    std::printf("(%d,%d,%d,%d,%d,%d,%d)%*s %8.2f %9.4f %9.4f %9.4f %8.2f\n", s.H, s.W, s.C, s.Cout, s.blocks, s.k, s.S, 4, "",
                gflop, tseq, t[0], t[1], t[0] / t[1]);
    std::printf("BENCH_JSON {\"bench\": \"covariance_threads\", \"shape\": [%d, %d, %d, %d, %d, %d, %d], \"batch\": %d, "
                "\"gflop\": %.4g, \"t1_s\": %.6g, \"tN_s\": %.6g, \"threads\": %d, \"speedup\": %.4g, \"seq_s\": %.6g}\n",
                s.H, s.W, s.C, s.Cout, s.blocks, s.k, s.S, o.batch, gflop, t[0], t[1], o.threads, t[0] / t[1], tseq);
  }
  return 0;
}
