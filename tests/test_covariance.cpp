// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <netdeconv/covariance.hpp>
#include <netdeconv/statistics_step.hpp>

#include "oracle.hpp"

using namespace netdeconv;

namespace {

struct layout_case {
  block_layout layout;
  index_t C, block, groups;
};

// Every layout, with shared layouts interleaving (C/B > 1) and the gcd rule (C=6, block 4 -> B=2).
const layout_case conv_cases[] = {
    {block_layout::interleaved_shared, 3, 64, 1}, {block_layout::interleaved_shared, 8, 4, 1},
    {block_layout::interleaved_shared, 6, 4, 1},  {block_layout::grouped, 6, 64, 2},
    {block_layout::grouped, 5, 1, 5},             {block_layout::independent, 8, 2, 1},
    {block_layout::independent, 6, 3, 1},         {block_layout::independent, 8, 2, 2},
};

/// Float64 reference: sampled rows -> blocked sample matrices -> two-pass mean and covariance.
template <class T>
void check_against_oracle(const oracle::image<T>& x, const conv_geometry& g, index_t S, const block_plan& plan,
                          const std::vector<moments<double>>& got, double eps) {
  const auto ref = oracle::blocked(oracle::sampled_rows(x, g, S), plan);
  REQUIRE(index_t(got.size()) == index_t(ref.size()));
  for (std::size_t s = 0; s < ref.size(); ++s) {
    CHECK(got[s].count() == ref[s].rows());
    CHECK(oracle::rel_err(got[s].mean(), oracle::VectorXd(ref[s].colwise().mean())) < 1e-12);
    CHECK(oracle::rel_err(got[s].covariance(eps), oracle::covariance(ref[s], eps)) < 1e-12);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("blocked moments of sampled patches equal the float64 two-pass formula", T, float, double) {
  std::mt19937_64 rng(21);
  for (const auto& lc : conv_cases)
    for (const index_t k : {1, 3})
      for (const index_t S : {1, 2, 3}) {
        const conv_geometry g = conv_geometry::square(k, 1 + (S == 2), k / 2, 1 + (S == 3 && k > 1));
        CAPTURE(lc.layout);
        CAPTURE(lc.C);
        CAPTURE(k);
        CAPTURE(S);
        oracle::image<T> x(2, lc.C, 9, 8, int(S % 3));
        oracle::fill_normal(x, rng, 0.5);
        const block_plan plan = make_block_plan(lc.layout, lc.C, g.kernel_area(), lc.block, lc.groups);
        const patch_sampler<T> sampler(x.cview(), g, S);
        const auto seq_m = block_moments(seq, sampler, plan);
        check_against_oracle(x, g, S, plan, seq_m, 1e-3);
        const auto par_m = block_moments(omp_policy{{}, 2}, sampler, plan);  // shards merged across threads
        for (std::size_t s = 0; s < seq_m.size(); ++s)
          CHECK(oracle::rel_err(par_m[s].covariance(0.0), seq_m[s].covariance(0.0)) < 1e-13);
      }
}

TEST_CASE("a float32 batch with mean offset 1e4 over 10^6 rows keeps its covariance to 1e-3") {
  std::mt19937_64 rng(4);
  const index_t n = 1000000, F = 4;
  std::vector<float> data(n * F);
  std::normal_distribution<double> normal;
  for (index_t r = 0; r < n; ++r) {
    const double a = normal(rng), b = normal(rng);
    const double v[F] = {a, 0.5 * a + b, 0.01 * b, -a + 0.1 * normal(rng)};
    for (index_t j = 0; j < F; ++j) data[r * F + j] = float(1e4 + v[j]);
  }
  const auto plan = make_block_plan(block_layout::independent, F, 1, F);
  const auto got = block_moments(par, matrix_rows<float>(row_major<const float>(data.data(), n, F)), plan);
  // reference: the same float values, two-pass in double
  oracle::MatrixXd X(n, F);
  for (index_t i = 0; i < n * F; ++i) X(i / F, i % F) = double(data[i]);
  const oracle::MatrixXd ref = oracle::covariance(X, 0.0);
  const double err = oracle::rel_err(got[0].covariance<float>(0.0), ref);
  MESSAGE("large-offset covariance relative error (float32 output): " << err);
  CHECK(err < 1e-3);
  // the naive float32 formula E[xx^T] - mu mu^T on the same data loses it: the test can tell
  Eigen::Matrix4f sxx = Eigen::Matrix4f::Zero();
  Eigen::Vector4f sx = Eigen::Vector4f::Zero();
  for (index_t r = 0; r < n; ++r) {
    const Eigen::Map<const Eigen::Vector4f> x(data.data() + r * F);
    sx += x;
    sxx += x * x.transpose();
  }
  const Eigen::Vector4f mu = sx / float(n);
  const Eigen::Matrix4f naive = sxx / float(n) - mu * mu.transpose();
  const double naive_err = oracle::rel_err(naive, ref);
  MESSAGE("naive float32 E[xx^T] - mu mu^T relative error: " << naive_err);
  CHECK(naive_err > 0.1);
}

TEST_CASE("block_moments rejects mismatched plans and too few samples") {
  std::vector<float> buf(2 * 4 * 3 * 3, 1.0f);
  const auto x = nchw<const float>(buf.data(), 2, 4, 3, 3);
  const auto g = conv_geometry::square(3);
  const auto plan_wrong = make_block_plan(block_layout::independent, 2, 9, 2);
  CHECK_THROWS_WITH_AS(block_moments(seq, patch_sampler<float>(x, g, 1), plan_wrong),
                       doctest::Contains("rows have 36 columns but the plan needs C*K = 2*9 = 18"), invalid_argument);
  const auto plan = make_block_plan(block_layout::independent, 4, 9, 2);
  // a 3x3 image with a 3x3 kernel and no padding gives one patch per image: 2 rows with N=2, 1 with N=1
  CHECK(block_moments(seq, patch_sampler<float>(x, g, 1), plan)[0].count() == 2);
  CHECK_THROWS_WITH_AS(block_moments(seq, patch_sampler<float>(nchw<const float>(buf.data(), 1, 4, 3, 3), g, 1), plan),
                       doctest::Contains("statistics need >= 2 samples, got 1"), invalid_argument);
  CHECK_THROWS_WITH_AS(block_moments(seq, patch_sampler<float>(nchw<const float>(buf.data(), 0, 4, 3, 3), g, 1), plan),
                       doctest::Contains("got 0"), invalid_argument);
}

// ---- SIMD fast path (simd_policy, the default `par`) against the sequential oracle ----

TEST_CASE_TEMPLATE("SIMD fused covariance equals the sequential oracle: random shapes, every layout, 1 and 2 threads", T, float,
                   double) {
  std::mt19937_64 rng(41);
  std::uniform_int_distribution<int> pick(0, 1 << 30);
  // F = K*B covers 1, odd sizes and sizes that are not multiples of the SIMD width (4, 8 or 16)
  for (int trial = 0; trial < 40; ++trial) {
    const layout_case lc = conv_cases[trial % std::size(conv_cases)];
    const index_t k = 1 + 2 * (pick(rng) % 3);           // 1, 3, 5
    const index_t S = 1 + pick(rng) % 3;                  // 1..3
    const index_t stride = 1 + pick(rng) % 2, dil = 1 + (k > 1) * (pick(rng) % 2);
    const index_t H = 7 + pick(rng) % 13, W = 6 + pick(rng) % 15, N = 1 + pick(rng) % 3;
    const conv_geometry g{k, k, stride, stride, k / 2, k / 2, dil, dil};
    if (g.out_h(H) < 1 || g.out_w(W) < 1) continue;
    const int memory = trial % 3;
    CAPTURE(trial);
    CAPTURE(lc.layout);
    CAPTURE(lc.C);
    CAPTURE(k);
    CAPTURE(S);
    CAPTURE(memory);
    oracle::image<T> x(N, lc.C, H, W, memory);
    oracle::fill_normal(x, rng, 3.0 * (trial % 4), 0.5 + trial % 3);
    const block_plan plan = make_block_plan(lc.layout, lc.C, g.kernel_area(), lc.block, lc.groups);
    const patch_sampler<T> sampler(x.cview(), g, S);
    if (sampler.rows() * plan.rows_per_patch() < 2) continue;
    const auto ref = block_moments(seq, sampler, plan);
    for (const int threads : {1, 2}) {
      CAPTURE(threads);
      const auto got = block_moments(simd_threads(threads), sampler, plan);
      REQUIRE(got.size() == ref.size());
      for (std::size_t s = 0; s < ref.size(); ++s) {
        CHECK(got[s].count() == ref[s].count());
        CHECK(oracle::rel_err(got[s].mean(), ref[s].mean()) < 1e-5);  // means near 0: relative error of float sums
        CHECK(oracle::rel_err(got[s].covariance(0.0), ref[s].covariance(0.0)) < 1e-5);
      }
    }
  }
}

TEST_CASE("SIMD fused covariance of matrix rows: F from 1 to 70, tiles with partial remainders, 1 and 2 threads") {
  std::mt19937_64 rng(42);
  for (const index_t F : {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 47, 64, 65, 70})
    for (const index_t n : {2, 5, 300, 2049}) {
      CAPTURE(F);
      CAPTURE(n);
      std::normal_distribution<double> normal;
      std::vector<float> data(n * F);
      for (auto& v : data) v = float(10.0 + normal(rng));
      const auto rows = matrix_rows<float>(row_major<const float>(data.data(), n, F));
      for (const auto layout : {block_layout::independent, block_layout::contiguous_shared}) {
        const index_t block = layout == block_layout::independent ? F : std::max<index_t>(1, F / 3);
        const auto plan = make_block_plan(layout, F, 1, block);
        if (n * plan.rows_per_patch() < 2) continue;
        const auto ref = block_moments(seq, rows, plan);
        for (const int threads : {1, 2}) {
          const auto got = block_moments(simd_threads(threads), rows, plan);
          for (std::size_t s = 0; s < ref.size(); ++s) {
            CHECK(got[s].count() == ref[s].count());
            CHECK(oracle::rel_err(got[s].mean(), ref[s].mean()) < 1e-5);  // means near 0: relative error of float sums
            CHECK(oracle::rel_err(got[s].covariance(0.0), ref[s].covariance(0.0)) < 1e-5);
          }
        }
      }
    }
}

TEST_CASE("SIMD fused covariance keeps a large offset when the first tile is zero padding") {
  // NCHW image with mean 1e4 and a 3x3 kernel with padding 2: the first patches are mostly padding.
  // Block 5 (F = 45) takes the sample-major panels, block 1 (F = 9) the feature-major tiles.
  std::mt19937_64 rng(43);
  oracle::image<float> x(2, 5, 40, 33, 1);
  oracle::fill_normal(x, rng, 1e4, 1.0);
  const conv_geometry g = conv_geometry::square(3, 1, 2);
  const patch_sampler<float> sampler(x.cview(), g, 1);
  for (const index_t block : {5, 1}) {
    CAPTURE(block);
    const auto plan = make_block_plan(block_layout::interleaved_shared, 5, 9, block);
    const auto ref = oracle::blocked(oracle::sampled_rows(x, g, 1), plan);
    const auto got = block_moments(simd_threads(2), sampler, plan);
    CHECK(oracle::rel_err(got[0].covariance(0.0), oracle::covariance(ref[0], 0.0)) < 1e-5);
    CHECK(oracle::rel_err(got[0].mean(), ref[0].colwise().mean().transpose().eval()) < 1e-7);
  }
}

TEST_CASE("block_moments checks a patch source's C and K against the plan, not only C*K (issue 9)") {
  // 1 channel with a 3x3 kernel and a plan of 9 channels with K = 1 have the same width 9; the
  // SIMD path decoded the columns with the plan's K and read channels the image does not have
  std::vector<float> buf(2 * 1 * 8 * 8, 1.0f);
  const auto x = nchw<const float>(buf.data(), 2, 1, 8, 8);
  const auto plan = make_block_plan(block_layout::interleaved_shared, 9, 1, 9);
  const patch_sampler<float> rows(x, conv_geometry::square(3), 1);
  REQUIRE(rows.width() == 9);
  CHECK_THROWS_WITH_AS(block_moments(seq, rows, plan), doctest::Contains("the patches have C=1 and K=9, the plan has C=9 and K=1"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(block_moments(par, rows, plan), doctest::Contains("the patches have C=1 and K=9"), invalid_argument);
  CHECK_THROWS_WITH_AS(estimate_statistics<float>(par, rows, plan, 1e-5, isqrt_options{}), doctest::Contains("the patches have"),
                       invalid_argument);
}
