// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <netdeconv/eigen.hpp>
#include <netdeconv/whiten.hpp>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>
#pragma GCC diagnostic pop

#include "oracle.hpp"

using namespace netdeconv;
using oracle::MatrixXd;

namespace {

template <class T>
using rows_t = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Correlated random samples: n x F, rows are samples, features mixed and offset.
MatrixXd correlated(index_t n, index_t F, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  MatrixXd Z(n, F);
  for (index_t i = 0; i < Z.size(); ++i) Z.data()[i] = normal(rng);
  const MatrixXd mix = oracle::random_spd(F, 1e2, rng);
  return (Z * mix).rowwise() + Eigen::RowVectorXd::LinSpaced(F, -3.0, 5.0);
}

/// What the exact method's output covariance must be: Cov0 (Cov0 + eps I)^-1, Cov0 without eps.
MatrixXd expected_output_covariance(const MatrixXd& X, double eps) {
  const MatrixXd cov0 = oracle::covariance(X, 0.0);
  return cov0 * (cov0 + eps * MatrixXd::Identity(cov0.rows(), cov0.cols())).inverse();
}

/// The shipped natural image as 5x5 RGB patches (F = 75), values in [0, 1], every 2nd position.
MatrixXd image_patches() {
  int w = 0, h = 0, channels = 0;
  unsigned char* pixels = stbi_load(NETDECONV_DATA_DIR "/raccoon_face_256x192.png", &w, &h, &channels, 3);
  REQUIRE_MESSAGE(pixels != nullptr, "cannot read " NETDECONV_DATA_DIR "/raccoon_face_256x192.png");
  oracle::image<double> x(1, 3, h, w, 1);
  for (index_t i = 0; i < index_t(w) * h * 3; ++i) x.storage[i] = pixels[i] / 255.0;  // NHWC memory
  stbi_image_free(pixels);
  return oracle::sampled_rows(x, conv_geometry::square(5), 2);
}

}  // namespace

TEST_CASE_TEMPLATE("exact whitening gives output covariance Cov0 (Cov0 + eps I)^-1 on random data", T, float, double) {
  std::mt19937_64 rng(61);
  for (const double eps : {0.0, 1e-3}) {
    const MatrixXd X = correlated(2000, 12, rng);
    const rows_t<T> Xt = X.cast<T>();
    const auto w = whiten(seq, view(Xt), whiten_options{eps});
    CHECK(w.reports[0].status == isqrt_status::ok);
    const MatrixXd out = w.data.template cast<double>();
    const double err = oracle::rel_err(oracle::covariance(out, 0.0), expected_output_covariance(Xt.template cast<double>(), eps));
    CAPTURE(eps);
    CHECK(err < 1e-4);
    CHECK(oracle::rel_err(w.statistics.D[0], w.statistics.D[0].transpose()) < 1e-6);  // ZCA: D symmetric
  }
}

TEST_CASE_TEMPLATE("exact whitening decorrelates patches of the shipped natural image", T, float, double) {
  const MatrixXd X = image_patches();
  // float32: D rounded to float carries ~1e-7 relative error, amplified by the condition number of
  // Cov + eps I; eps 1e-4 (pixel variances are ~0.05) keeps it well inside the bound (measured:
  // 1.5e-5 float32, 4e-13 float64; with eps 1e-5 float32 reaches 8.7e-5)
  const double eps = 1e-4;
  const rows_t<T> Xt = X.cast<T>();
  const auto w = whiten(par, view(Xt), whiten_options{eps});
  CHECK(w.reports[0].status == isqrt_status::ok);
  const double err = oracle::rel_err(oracle::covariance(w.data.template cast<double>(), 0.0),
                                     expected_output_covariance(Xt.template cast<double>(), eps));
  MESSAGE("natural-image patches (" << X.rows() << " x " << X.cols() << "): output covariance error " << err);
  CHECK(err < 1e-4);
  // the patches are strongly correlated to begin with
  const MatrixXd c = oracle::covariance(X, 0.0);
  CHECK(c(0, 1) / std::sqrt(c(0, 0) * c(1, 1)) > 0.8);
}

TEST_CASE("columns as samples, strided input and apply_whitening on new data") {
  std::mt19937_64 rng(62);
  const MatrixXd X = correlated(300, 6, rng);
  const auto by_rows = whiten(seq, view(X));
  const MatrixXd Xt = X.transpose();  // F x n, columns are samples
  whiten_options cols;
  cols.columns_are_samples = true;
  const auto by_cols = whiten(seq, view(Xt), cols);
  CHECK(by_cols.data.rows() == 6);
  CHECK(oracle::rel_err(MatrixXd(by_cols.data.transpose()), MatrixXd(by_rows.data)) < 1e-12);
  // a strided view: every other row of a larger matrix
  MatrixXd big(600, 6);
  for (index_t r = 0; r < 300; ++r) big.row(2 * r) = X.row(r);
  const matrix_view<const double> strided{big.data(), {300, 6}, {2, 600}};
  CHECK(oracle::rel_err(MatrixXd(whiten(seq, strided).data), MatrixXd(by_rows.data)) < 1e-12);
  // reuse on new data: (X_new - mu) D
  const MatrixXd X_new = correlated(50, 6, rng);
  MatrixXd out(50, 6);
  apply_whitening(seq, by_rows.statistics, view(X_new), view_mut(out));
  const MatrixXd ref = (X_new.rowwise() - by_rows.statistics.mean[0].transpose()) * by_rows.statistics.D[0];
  CHECK(oracle::rel_err(out, ref) < 1e-13);
}

TEST_CASE("block-diagonal whitening whitens each block and leaves cross-block correlation") {
  std::mt19937_64 rng(63);
  const MatrixXd X = correlated(3000, 8, rng);
  whiten_options options;
  options.block = 4;
  options.eps = 0.0;
  const auto w = whiten(seq, view(X), options);
  REQUIRE(w.statistics.D.size() == 2);
  const MatrixXd c = oracle::covariance(MatrixXd(w.data), 0.0);
  CHECK((c.topLeftCorner(4, 4) - MatrixXd::Identity(4, 4)).norm() < 1e-10);
  CHECK((c.bottomRightCorner(4, 4) - MatrixXd::Identity(4, 4)).norm() < 1e-10);
  CHECK(c.topRightCorner(4, 4).norm() > 0.05);
}

TEST_CASE_TEMPLATE("Newton-Schulz whitening reaches the exact result", T, float, double) {
  std::mt19937_64 rng(64);
  const rows_t<T> X = correlated(1000, 10, rng).cast<T>();
  whiten_options options;
  options.eps = 1e-4;
  options.isqrt = isqrt_options::converged(std::is_same_v<T, float> ? 1e-5 : 1e-12);
  const auto ns = whiten(seq, view(X), options);
  const auto exact = whiten(seq, view(X), whiten_options{1e-4});
  CHECK(ns.reports[0].iterations > 0);
  CHECK(oracle::rel_err(ns.data, exact.data) < (std::is_same_v<T, float> ? 1e-4 : 1e-9));
}

TEST_CASE("whiten reports rank deficiency and rejects bad arguments") {
  std::mt19937_64 rng(65);
  MatrixXd X = correlated(100, 5, rng);
  X.col(4) = X.col(0) + X.col(1);
  whiten_options options;
  options.eps = 0.0;
  const auto w = whiten(seq, view(X), options);
  CHECK(w.reports[0].status == isqrt_status::not_positive_definite);
  CHECK(w.data.array().isNaN().all());  // never silent garbage
  CHECK_THROWS_WITH_AS(whiten(seq, view(X), whiten_options{-1.0}), doctest::Contains("eps must be >= 0, got -1"),
                       invalid_argument);
  options.block = 2;
  CHECK_THROWS_WITH_AS(whiten(seq, view(X), options), doctest::Contains("block 2 does not divide C/groups=5"),
                       invalid_argument);
  const MatrixXd one = MatrixXd::Ones(1, 5);
  CHECK_THROWS_WITH_AS(whiten(seq, view(one)), doctest::Contains(">= 2 samples, got 1"), invalid_argument);
  MatrixXd out(3, 5);
  CHECK_THROWS_WITH_AS(apply_whitening(seq, w.statistics, view(X), view_mut(out)), doctest::Contains("out is 3x5 but X is 100x5"),
                       invalid_argument);
}

TEST_CASE("apply_whitening validates the statistics it is given (issue 9)") {
  std::mt19937_64 rng(66);
  const MatrixXd X = correlated(50, 6, rng);
  MatrixXd out(50, 6);
  const auto w = whiten(seq, view(X));
  auto bad = w.statistics;
  bad.D[0] = Eigen::MatrixXd::Identity(5, 5);  // wrong size: an Eigen assertion before
  CHECK_THROWS_WITH_AS(apply_whitening(seq, bad, view(X), view_mut(out)), doctest::Contains("D 5x5, the plan needs F=6"),
                       invalid_argument);
  bad = w.statistics;
  bad.mean.clear();  // missing means: a read of freed memory before
  CHECK_THROWS_WITH_AS(apply_whitening(seq, bad, view(X), view_mut(out)), doctest::Contains("0 means and 1 D"),
                       invalid_argument);
  bad = w.statistics;
  bad.plan.block = 0;
  CHECK_THROWS_WITH_AS(apply_whitening(par, bad, view(X), view_mut(out)), doctest::Contains("block=0"), invalid_argument);
  CHECK_NOTHROW(apply_whitening(par, w.statistics, view(X), view_mut(out)));
  CHECK(out.isApprox(w.data.cast<double>()));
}

TEST_CASE("apply_whitening in place equals the out-of-place result; partial overlap is refused") {
  std::mt19937_64 rng(67);
  const MatrixXd X = correlated(40, 6, rng);
  const auto w = whiten(seq, view(X));
  MatrixXd inplace = X;
  apply_whitening(par, w.statistics, view(inplace), view_mut(inplace));
  CHECK(oracle::rel_err(inplace, MatrixXd(w.data.cast<double>())) < 1e-14);
  MatrixXd big(41, 6);
  big.topRows(40) = X;
  const auto in = matrix_view<const double>{big.data(), {40, 6}, {1, 41}};
  const auto shifted = matrix_view<double>{big.data() + 1, {40, 6}, {1, 41}};
  CHECK_THROWS_WITH_AS(apply_whitening(seq, w.statistics, in, shifted), doctest::Contains("out overlaps X"), invalid_argument);
}
