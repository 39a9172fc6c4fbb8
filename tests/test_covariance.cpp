// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <netdeconv/covariance.hpp>

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
  // the naive float32 formula E[xx^T] - mu mu^T would lose it completely: the scale of the cancellation
  CHECK(1e4 * 1e4 * std::numeric_limits<float>::epsilon() > 1.0);
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
