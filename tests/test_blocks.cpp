// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <set>

#include <netdeconv/blocks.hpp>
#include <netdeconv/covariance.hpp>
#include <netdeconv/fold.hpp>

#include "oracle.hpp"

using namespace netdeconv;

TEST_CASE("block size adjustment follows docs/method.md §3") {
  SUBCASE("B = min(B, C)") {
    const auto p = make_block_plan(block_layout::interleaved_shared, 3, 9, 64);
    CHECK(p.block == 3);
    CHECK(p.features() == 27);
    CHECK(p.count() == 1);
    CHECK(p.rows_per_patch() == 1);
  }
  SUBCASE("B = gcd(B, C) when B does not divide C") {
    const auto p = make_block_plan(block_layout::interleaved_shared, 6, 9, 4);
    CHECK(p.block == 2);
    CHECK(p.rows_per_patch() == 3);
    CHECK(make_block_plan(block_layout::contiguous_shared, 100, 1, 64).block == 4);
  }
  SUBCASE("grouped: B = C/groups") {
    const auto p = make_block_plan(block_layout::grouped, 12, 9, 64, 4);
    CHECK(p.block == 3);
    CHECK(p.count() == 4);
    CHECK(p.features() == 27);
  }
  SUBCASE("independent: contiguous blocks, one statistic each") {
    const auto p = make_block_plan(block_layout::independent, 12, 9, 4);
    CHECK(p.block == 4);
    CHECK(p.count() == 3);
    CHECK(make_block_plan(block_layout::independent, 12, 1, 100).block == 12);
  }
}

TEST_CASE("every patch column feeds exactly one (statistic, row, feature) slot") {
  for (const auto& p : {make_block_plan(block_layout::interleaved_shared, 12, 4, 3),
                        make_block_plan(block_layout::contiguous_shared, 12, 1, 4),
                        make_block_plan(block_layout::grouped, 12, 4, 1, 3),
                        make_block_plan(block_layout::independent, 12, 4, 6, 2)}) {
    CAPTURE(p.layout);
    std::set<index_t> seen;
    for (index_t s = 0; s < p.count(); ++s)
      for (index_t g = 0; g < p.rows_per_patch(); ++g)
        for (index_t f = 0; f < p.features(); ++f) seen.insert(p.column(s, g, f));
    CHECK(index_t(seen.size()) == p.channels * p.kernel_area);
    CHECK(*seen.begin() == 0);
    CHECK(*seen.rbegin() == p.channels * p.kernel_area - 1);
    // and the slot of each column is the one the layout's definition gives (oracle::blocked)
    const auto pieces = oracle::piece_columns(p);
    REQUIRE(index_t(pieces.size()) == p.count());
    for (index_t s = 0; s < p.count(); ++s) {
      REQUIRE(pieces[s].rows() == p.rows_per_patch());
      for (index_t g = 0; g < p.rows_per_patch(); ++g)
        for (index_t f = 0; f < p.features(); ++f) {
          CHECK(p.column(s, g, f) == index_t(pieces[s](g, f)));
          const column_coord c = p.locate(p.column(s, g, f));  // and locate inverts column
          CHECK(c.s == s);
          CHECK(c.g == g);
          CHECK(c.f == f);
        }
    }
  }
}

TEST_CASE("invalid block configurations are rejected with the offending values") {
  CHECK_THROWS_WITH_AS(make_block_plan(block_layout::independent, 64, 9, 48),
                       doctest::Contains("block 48 does not divide C/groups=64 in independent mode"), invalid_argument);
  CHECK_THROWS_WITH_AS(make_block_plan(block_layout::interleaved_shared, 8, 9, 4, 2),
                       doctest::Contains("needs groups == 1, got groups=2"), invalid_argument);
  CHECK_THROWS_WITH_AS(make_block_plan(block_layout::grouped, 8, 9, 4, 1), doctest::Contains("groups > 1"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(make_block_plan(block_layout::grouped, 8, 9, 4, 3), doctest::Contains("groups 3 does not divide C=8"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(make_block_plan(block_layout::independent, 8, 9, 0), doctest::Contains("block must be >= 1, got 0"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(make_block_plan(block_layout::independent, 0, 9, 4), doctest::Contains("channels must be >= 1, got 0"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(make_block_plan(block_layout::contiguous_shared, 8, 9, 4),
                       doctest::Contains("kernel area 1"), invalid_argument);
  const index_t huge = index_t(1) << 40;
  CHECK_THROWS_WITH_AS(make_block_plan(block_layout::independent, huge, huge, huge), doctest::Contains("overflows"),
                       invalid_argument);
}

TEST_CASE("hand-built plans are checked by every function that takes one (issue 9)") {
  // block_plan is a public aggregate: block 0 (division by zero), independent blocks larger than C
  // (no statistic at all), a shared block that does not divide C (channels dropped)
  struct bad_plan {
    block_plan plan;
    const char* message;
  };
  const bad_plan cases[] = {
      {{block_layout::interleaved_shared, 8, 9, 1, 0}, "block=0"},
      {{block_layout::independent, 4, 1, 1, 8}, "block 8 is larger than C=4"},
      {{block_layout::interleaved_shared, 8, 9, 1, 3}, "block 3 does not divide C=8"},
      {{block_layout::contiguous_shared, 8, 1, 1, 3}, "block 3 does not divide C=8"},
      {{block_layout::grouped, 8, 9, 2, 2}, "block = C/groups = 4, got 2"},
      {{block_layout::independent, 8, 9, 3, 2}, "groups 3 does not divide C=8"},
      {{block_layout::interleaved_shared, 8, 9, 2, 4}, "needs groups == 1"},
      {{static_cast<block_layout>(7), 8, 9, 1, 4}, "unknown layout 7"},
  };
  std::vector<float> x(2 * 8 * 5 * 5, 1.0f), w(4 * 8 * 9, 0.5f), wo(w.size()), bo(4);
  for (const auto& c : cases) {
    CAPTURE(c.message);
    CHECK_THROWS_WITH_AS(detail::check_plan("f", c.plan), doctest::Contains(c.message), invalid_argument);
    const index_t K = c.plan.kernel_area, k = K == 9 ? 3 : 1;
    const auto xs = nchw<const float>(x.data(), 2, 8, 5, 5);
    CHECK_THROWS_WITH_AS(block_moments(seq, patch_sampler<float>(xs, conv_geometry::square(k), 1), c.plan),
                         doctest::Contains(c.message), invalid_argument);
    CHECK_THROWS_WITH_AS(block_moments(par, patch_sampler<float>(xs, conv_geometry::square(k), 1), c.plan),
                         doctest::Contains(c.message), invalid_argument);
    block_statistics<float> stats{c.plan, {Eigen::VectorXf::Zero(9)}, {Eigen::MatrixXf::Identity(9, 9)}};
    const index_t groups = std::max<index_t>(c.plan.groups, 1);
    const auto W = image_view<const float>{w.data(), {4, 8 / groups, k, k}, {8 * K, K, k, 1}};
    const auto Wo = image_view<float>{wo.data(), {4, 8 / groups, k, k}, {8 * K, K, k, 1}};
    CHECK_THROWS_WITH_AS(fold(seq, stats, W, {}, Wo, contiguous(bo.data(), 4)), doctest::Contains(c.message),
                         invalid_argument);
    CHECK_THROWS_WITH_AS(fold(par, stats, W, {}, Wo, contiguous(bo.data(), 4)), doctest::Contains(c.message),
                         invalid_argument);
  }
}

TEST_CASE("check_plan of a hand-built grouped plan does not overflow (fuzz regression)") {
  // tests/fuzz/corpus/geometry/regression_grouped_plan_overflow: block * groups = 2^124 was once
  // computed to compare with C.
  const index_t big = index_t(1) << 62;
  const block_plan plan{block_layout::grouped, big, 1, big, big};
  CHECK_THROWS_WITH_AS(detail::check_plan("test", plan), doctest::Contains("needs block = C/groups = 1"),
                       invalid_argument);
}
