// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <netdeconv/eigen.hpp>
#include <netdeconv/linear_deconv_layer.hpp>

#include "oracle.hpp"

using namespace netdeconv;

TEST_CASE("linear layer: exported weights reproduce the whitened layer on new data") {
  std::mt19937_64 rng(92);
  std::normal_distribution<double> normal;
  const index_t rows = 200, fin = 8, cout = 3;
  linear_deconv_config cfg;
  cfg.block = 4;
  cfg.isqrt = isqrt_options::converged(1e-13);
  layer_options options;
  options.first_step_copy = true;  // running = batch after one step
  linear_deconv_layer<double> layer(fin, cfg, options);
  Eigen::Matrix<double, -1, -1, Eigen::RowMajor> X(rows, fin), W(cout, fin), Xnew(7, fin);
  for (auto* m : {&X, &W, &Xnew})
    for (index_t i = 0; i < m->size(); ++i) m->data()[i] = normal(rng) + 0.5;
  X.col(3) += 2.0 * X.col(1);
  const Eigen::VectorXd b = Eigen::VectorXd::Random(cout);
  layer.train_step(seq, view(X), view(W), contiguous<const double>(b.data(), cout));
  Eigen::Matrix<double, -1, -1, Eigen::RowMajor> Wout(cout, fin);
  Eigen::VectorXd bout(cout);
  layer.export_weights(seq, view(W), contiguous<const double>(b.data(), cout), view_mut(Wout), contiguous(bout.data(), cout));
  // explicit: whiten the chunks of 4 features of each row with the shared (mu, D), then W
  const block_statistics<double> running = layer.running();
  const auto& mu = running.mean[0];
  const auto& D = running.D[0];
  Eigen::MatrixXd Z(Xnew.rows(), fin);
  for (index_t c = 0; c < 2; ++c) Z.middleCols(4 * c, 4) = (Xnew.middleCols(4 * c, 4).rowwise() - mu.transpose()) * D;
  const Eigen::MatrixXd ref = (Z * W.transpose()).rowwise() + b.transpose();
  const Eigen::MatrixXd got = (Xnew * Wout.transpose()).rowwise() + bout.transpose();
  CHECK(oracle::rel_err(got, ref) < 1e-12);
  // and D whitens the stacked chunks of the training batch
  oracle::MatrixXd stacked(2 * rows, 4);
  for (index_t r = 0; r < rows; ++r) stacked.row(2 * r) = X.row(r).head(4), stacked.row(2 * r + 1) = X.row(r).tail(4);
  CHECK((D * oracle::covariance(stacked, cfg.eps) * D - Eigen::MatrixXd::Identity(4, 4)).norm() < 1e-10);
}

TEST_CASE("linear layer rejects mismatched shapes") {
  linear_deconv_layer<float> layer(10, linear_deconv_config{});
  CHECK(layer.plan().block == 10);  // min(512, 10)
  std::vector<float> x(40), W(30);
  CHECK_THROWS_WITH_AS(layer.train_step(seq, row_major<const float>(x.data(), 4, 10), row_major<const float>(W.data(), 3, 9), {}),
                       doctest::Contains("weight has 9 input channels per group, the plan needs C/groups = 10/1"), invalid_argument);
  CHECK_THROWS_WITH_AS(layer.train_step(seq, row_major<const float>(x.data(), 5, 8), row_major<const float>(W.data(), 3, 10), {}),
                       doctest::Contains("x has 8 features, the layer has 10"), invalid_argument);
}

TEST_CASE("linear train_step into caller views equals the returning form") {
  std::mt19937_64 rng(94);
  std::normal_distribution<double> normal;
  const index_t rows = 50, fin = 6, cout = 3;
  linear_deconv_config cfg;
  cfg.block = 3;
  linear_deconv_layer<double> returning(fin, cfg), writing(fin, cfg);
  const index_t S = writing.plan().count(), F = writing.plan().features();
  std::vector<double> W(cout * fin), b(cout), mean(S * F), D(S * F * F), w_out(cout * fin), b_out(cout);
  std::vector<isqrt_report> reports(S);
  for (auto* v : {&W, &b})
    for (auto& e : *v) e = normal(rng);
  const statistics_step_outputs<double, 2> out{row_major(mean.data(), S, F), {D.data(), {S, F, F}, {F * F, F, 1}},
                                               {w_out.data(), {cout, fin}, {1, cout}},  // column-major W'
                                               contiguous(b_out.data(), cout), contiguous(reports.data(), S)};
  for (int k = 0; k < 3; ++k) {
    std::vector<double> x(rows * fin);
    for (auto& e : x) e = normal(rng) + 0.5 * k;
    const auto xv = row_major<const double>(x.data(), rows, fin);
    const auto expected = returning.train_step(seq, xv, row_major<const double>(W.data(), cout, fin),
                                               contiguous<const double>(b.data(), cout));
    writing.train_step(seq, xv, row_major<const double>(W.data(), cout, fin), contiguous<const double>(b.data(), cout), out);
    for (index_t o = 0; o < cout; ++o)
      for (index_t f = 0; f < fin; ++f) CHECK(out.weight(o, f) == expected.weight[o * fin + f]);
    CHECK(b_out == expected.bias);
    for (index_t s = 0; s < S; ++s) CHECK(Eigen::Map<const Eigen::VectorXd>(mean.data() + s * F, F) == expected.statistics.mean[s]);
    CHECK(writing.state() == returning.state());
  }
}
