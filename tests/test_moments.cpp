// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <netdeconv/moments.hpp>

#include "oracle.hpp"

using namespace netdeconv;
using rows_matrix = moments<double>::rows_matrix;

namespace {

rows_matrix random_rows(index_t n, index_t F, std::mt19937_64& rng, double offset = 0.0) {
  std::normal_distribution<double> normal;
  rows_matrix X(n, F);
  for (index_t i = 0; i < X.size(); ++i) X.data()[i] = offset + normal(rng);
  // correlate the features
  const rows_matrix mix = rows_matrix::Random(F, F);
  return X * (rows_matrix::Identity(F, F) + 0.5 * mix);
}

}  // namespace

TEST_CASE("tile-by-tile accumulation equals the two-pass float64 covariance") {
  std::mt19937_64 rng(1);
  const rows_matrix X = random_rows(1000, 7, rng, 3.0);
  moments<double> m(7);
  for (index_t r = 0; r < X.rows(); r += 97) m.add(X.middleRows(r, std::min<index_t>(97, X.rows() - r)));
  CHECK(m.count() == 1000);
  CHECK(oracle::rel_err(m.mean(), oracle::MatrixXd(X).colwise().mean().transpose()) < 1e-13);
  CHECK(oracle::rel_err(m.covariance(0.25), oracle::covariance(X, 0.25)) < 1e-13);
}

TEST_CASE("merging shards equals the moments of the whole, in any order, with empty shards") {
  std::mt19937_64 rng(2);
  const rows_matrix X = random_rows(600, 5, rng, -2.0);
  moments<double> whole(5);
  whole.add(X);
  const index_t cuts[] = {0, 0, 1, 250, 251, 600};  // shards of 0, 1, 249, 1, 349 rows
  std::vector<moments<double>> shards;
  for (int i = 0; i + 1 < 6; ++i) {
    shards.emplace_back(5);
    shards.back().add(X.middleRows(cuts[i], cuts[i + 1] - cuts[i]));
  }
  moments<double> forward(5), backward(5);
  for (const auto& s : shards) forward.merge(s);
  for (auto it = shards.rbegin(); it != shards.rend(); ++it) backward.merge(*it);
  for (const auto* m : {&forward, &backward}) {
    CHECK(m->count() == 600);
    CHECK(oracle::rel_err(m->mean(), whole.mean()) < 1e-14);
    CHECK(oracle::rel_err(m->covariance(0.0), whole.covariance(0.0)) < 1e-13);
  }
}

TEST_CASE("a covariance needs at least two samples") {
  moments<double> m(3);
  CHECK_THROWS_WITH_AS(m.covariance(0.0), doctest::Contains("needs >= 2 samples, got 0"), invalid_argument);
  m.add(rows_matrix::Ones(1, 3));
  CHECK_THROWS_WITH_AS(m.covariance(0.0), doctest::Contains("got 1"), invalid_argument);
}

TEST_CASE("moments of another width are refused, not read out of bounds (issue 9)") {
  moments<double> m(3), other(4);
  CHECK_THROWS_WITH_AS(m.add(rows_matrix::Ones(2, 4)), doctest::Contains("samples have 4 features, the moments have 3"),
                       invalid_argument);
  m.add(rows_matrix::Ones(2, 3));
  other.add(rows_matrix::Ones(2, 4));
  CHECK_THROWS_WITH_AS(m.merge(other), doctest::Contains("moments of 4 features cannot merge into moments of 3"),
                       invalid_argument);
  CHECK(m.count() == 2);
  CHECK_THROWS_WITH_AS(moments<double>(2, moments<double>::vector::Zero(3), moments<double>::matrix::Zero(3, 2)),
                       doctest::Contains("scatter is 3x2 but the mean has 3 features"), invalid_argument);
  CHECK_THROWS_WITH_AS(moments<double>(-1, moments<double>::vector::Zero(3), moments<double>::matrix::Zero(3, 3)),
                       doctest::Contains("count must be >= 0, got -1"), invalid_argument);
}

TEST_CASE("moments: negative widths and counts that overflow are refused") {
  CHECK_THROWS_WITH_AS(moments<double>(-1), doctest::Contains("features must be >= 0, got -1"), invalid_argument);
  moments<double> a(std::numeric_limits<index_t>::max() - 1, moments<double>::vector::Zero(2), moments<double>::matrix::Zero(2, 2));
  CHECK_THROWS_WITH_AS(a.merge(a), doctest::Contains("sample count"), invalid_argument);
}
