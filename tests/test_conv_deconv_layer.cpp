// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <netdeconv/conv_deconv_layer.hpp>

#include "oracle.hpp"

using namespace netdeconv;

TEST_CASE_TEMPLATE("conv layer: training folds the batch statistics, eval and export fold the running ones", T, float,
                   double) {
  std::mt19937_64 rng(91);
  for (const auto layout : {block_layout::interleaved_shared, block_layout::grouped, block_layout::independent}) {
    CAPTURE(layout);
    conv_deconv_config cfg;
    cfg.geometry = conv_geometry::square(3, 2, 1);
    cfg.layout = layout;
    cfg.groups = layout == block_layout::grouped ? 2 : 1;
    cfg.block = 2;
    cfg.sampling_stride = 1;
    oracle::image<T> x(2, 4, 9, 8, 1);
    oracle::fill_normal(x, rng);
    std::vector<T> W(6 * (4 / cfg.groups) * 9), b(6);
    for (auto& v : W) v = T(std::normal_distribution<double>()(rng));
    for (auto& v : b) v = T(std::normal_distribution<double>()(rng));
    const auto Wv = nchw<const T>(W.data(), 6, 4 / cfg.groups, 3, 3);
    const auto bv = contiguous<const T>(b.data(), 6);
    conv_deconv_layer<T> layer(4, cfg);
    const auto wb = layer.train_step(seq, x.cview(), Wv, bv);
    const auto step = conv_statistics_step(seq, x.cview(), Wv, bv, cfg);
    CHECK(wb.weight == step.weight);
    CHECK(wb.bias == step.bias);
    for (std::size_t s = 0; s < step.statistics.D.size(); ++s) {  // the statistics a backward pass needs
      CHECK(wb.statistics.D[s] == step.statistics.D[s]);
      CHECK(wb.statistics.mean[s] == step.statistics.mean[s]);
    }
    // eval folds r_mu = 0.1 mu, r_D = 0.9 I + 0.1 D
    block_statistics<T> running = step.statistics;
    for (std::size_t s = 0; s < running.D.size(); ++s) {
      running.mean[s] *= T(0.1);
      running.D[s] = T(0.9) * square_matrix<T>::Identity(running.D[s].rows(), running.D[s].cols()) + T(0.1) * running.D[s];
    }
    const auto ev = layer.eval(seq, Wv, bv);
    const auto ref = fold(seq, running, Wv, bv);
    const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
    CHECK(oracle::rel_err(std::vector<double>(ev.weight.begin(), ev.weight.end()),
                          std::vector<double>(ref.weight.begin(), ref.weight.end())) < tol);
    std::vector<T> Wout(W.size()), bout(6);
    layer.export_weights(seq, Wv, bv, nchw(Wout.data(), 6, 4 / cfg.groups, 3, 3), contiguous(bout.data(), 6));
    CHECK(Wout == ev.weight);
    CHECK(bout == ev.bias);
  }
}

TEST_CASE("conv layer rejects inputs and weights that do not match its configuration") {
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(3, 1, 1);
  conv_deconv_layer<float> layer(4, cfg);
  std::vector<float> x(2 * 4 * 6 * 6, 1.0f), W(3 * 4 * 25);
  const auto W3 = nchw<const float>(W.data(), 3, 4, 3, 3);
  CHECK_THROWS_WITH_AS(layer.train_step(seq, nchw<const float>(x.data(), 2, 3, 6, 6), W3, {}),
                       doctest::Contains("x has C=3, the layer has 4"), invalid_argument);
  CHECK_THROWS_WITH_AS(layer.eval(seq, nchw<const float>(W.data(), 3, 4, 1, 9), {}),
                       doctest::Contains("weight kernel 1x9 differs from the layer's 3x3"), invalid_argument);
  CHECK_THROWS_WITH_AS(layer.eval(seq, nchw<const float>(W.data(), 3, 2, 3, 3), {}),
                       doctest::Contains("input channels per group"), invalid_argument);
  auto bad = cfg;
  bad.sampling_stride = 0;
  CHECK_THROWS_WITH_AS(conv_deconv_layer<float>(4, bad), doctest::Contains("sampling_stride must be >= 1, got 0"),
                       invalid_argument);
  layer_options options;
  options.momentum = 1.5;
  CHECK_THROWS_WITH_AS(conv_deconv_layer<float>(4, cfg, options), doctest::Contains("momentum must be in [0, 1], got 1.5"),
                       invalid_argument);
  options = {};
  options.freeze_iter = 0;
  CHECK_THROWS_WITH_AS(conv_deconv_layer<float>(4, cfg, options), doctest::Contains("freeze_iter must be in [1, 2^63/10]"),
                       invalid_argument);
}

TEST_CASE("train_step into caller views: the returning form's W', b' and statistics, frozen steps included") {
  std::mt19937_64 rng(93);
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(3, 1, 1);
  cfg.block = 2;
  cfg.sampling_stride = 2;
  layer_options options;
  options.freeze = true;
  options.freeze_iter = 1;  // steps 0, 1 computed, 2.. frozen
  conv_deconv_layer<float> returning(4, cfg, options), writing(4, cfg, options);
  const index_t S = writing.plan().count(), F = writing.plan().features();
  std::normal_distribution<double> normal;
  std::vector<float> W(5 * 4 * 9), b(5);
  for (auto& v : W) v = float(normal(rng));
  for (auto& v : b) v = float(normal(rng));
  const auto Wv = nchw<const float>(W.data(), 5, 4, 3, 3);
  const auto bv = contiguous<const float>(b.data(), 5);
  std::vector<float> mean(S * F), D(S * F * F), w_out(W.size()), b_out(5);
  std::vector<isqrt_report> reports(S);
  // W' into a channels_last (OHWI) buffer, as a framework's tensor may be
  const statistics_step_outputs<float, 4> out{row_major(mean.data(), S, F), {D.data(), {S, F, F}, {F * F, F, 1}},
                                              nhwc(w_out.data(), 5, 3, 3, 4), contiguous(b_out.data(), 5),
                                              contiguous(reports.data(), S)};
  for (int k = 0; k < 4; ++k) {
    CAPTURE(k);
    std::vector<float> x(2 * 4 * 7 * 7);
    for (auto& v : x) v = float(normal(rng));
    const auto expected = returning.train_step(par, nchw<const float>(x.data(), 2, 4, 7, 7), Wv, bv);
    writing.train_step(par, nchw<const float>(x.data(), 2, 4, 7, 7), Wv, bv, out);
    for (index_t o = 0; o < 5; ++o)
      for (index_t c = 0; c < 4; ++c)
        for (index_t t = 0; t < 9; ++t) CHECK(out.weight(o, c, t / 3, t % 3) == expected.weight[(o * 4 + c) * 9 + t]);
    CHECK(b_out == expected.bias);
    for (index_t s = 0; s < S; ++s) {
      CHECK(Eigen::Map<const Eigen::VectorXf>(mean.data() + s * F, F) == expected.statistics.mean[s]);
      CHECK(Eigen::Map<const Eigen::Matrix<float, -1, -1, Eigen::RowMajor>>(D.data() + s * F * F, F, F) ==
            expected.statistics.D[s]);
      CHECK(reports[s].status == isqrt_status::ok);
      CHECK(reports[s].iterations == (k < 2 ? 5 : 0));  // frozen steps have no reports of their own
    }
    CHECK(writing.state() == returning.state());
  }
  // the views are checked before the state changes
  const auto steps = writing.steps();
  std::vector<float> x(2 * 4 * 7 * 7, 1.0f);
  auto bad = out;
  bad.reports = contiguous(reports.data(), S + 1);
  CHECK_THROWS_WITH_AS(writing.train_step(par, nchw<const float>(x.data(), 2, 4, 7, 7), Wv, bv, bad),
                       doctest::Contains("reports has"), invalid_argument);
  bad = out;
  bad.weight = nchw(W.data(), 5, 4, 3, 3);  // W' may not be W
  CHECK_THROWS_WITH_AS(writing.train_step(par, nchw<const float>(x.data(), 2, 4, 7, 7), Wv, bv, bad),
                       doctest::Contains("overlaps"), invalid_argument);
  CHECK(writing.steps() == steps);
}
