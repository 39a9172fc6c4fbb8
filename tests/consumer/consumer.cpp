// SPDX-License-Identifier: MIT
// A program from "another project": it sees netdeconv only through its public umbrella header and
// the build flags of the installed pkg-config file or of the Meson subproject (tests/consumer/run.sh).
// Whitens correlated data with eps = 0 and the exact inverse square root, so the whitened
// covariance (1/n) (Y - mean)^T (Y - mean) must be the identity up to rounding.

#include <cstdio>
#include <random>

#include <Eigen/Core>
#include <netdeconv/netdeconv.hpp>

int main() {
  const Eigen::Index n = 500, F = 8;
  std::mt19937 rng(12345);
  std::normal_distribution<double> normal;
  Eigen::MatrixXd Z(n, F), A(F, F);
  for (Eigen::Index i = 0; i < Z.size(); ++i) Z(i) = normal(rng);
  for (Eigen::Index i = 0; i < A.size(); ++i) A(i) = normal(rng);
  const Eigen::MatrixXd X = (Z * A).rowwise() + Eigen::RowVectorXd::LinSpaced(F, -3.0, 4.0);  // correlated, off-centre

  netdeconv::whiten_options options;
  options.eps = 0.0;
  options.isqrt = netdeconv::isqrt_options::exact();
  const auto w = netdeconv::whiten(netdeconv::par, netdeconv::view(X), options);

  const auto covariance = [n](const Eigen::MatrixXd& Y) -> Eigen::MatrixXd {
    const Eigen::MatrixXd centred = Y.rowwise() - Y.colwise().mean();
    return centred.transpose() * centred / double(n);
  };
  const Eigen::MatrixXd Y = w.data;
  const Eigen::MatrixXd I = Eigen::MatrixXd::Identity(F, F);
  const double before = (covariance(X) - I).norm();
  const double after = (covariance(Y) - I).norm();
  const double mean = Y.colwise().mean().norm();
  const bool ok = Y.rows() == n && Y.cols() == F && after < 1e-6 && mean < 1e-9 && before > 1.0;
  std::printf("consumer: whiten %tdx%td, ||cov - I||_F %.3g -> %.3g, ||mean||_2 %.3g: %s\n", n, F, before, after,
              mean, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
