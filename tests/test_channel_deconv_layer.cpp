// SPDX-License-Identifier: MIT
// Behaviour of the channel-only layer from its definition; parity with the reference's numbers is
// in test_layer_parity.cpp.
#include <doctest/doctest.h>

#include <netdeconv/channel_deconv_layer.hpp>

#include "oracle.hpp"

using namespace netdeconv;

namespace {

/// The B feature rows of the whitened output (row f = channels [f*c/B, (f+1)*c/B), each in (n,y,x) order).
oracle::MatrixXd feature_rows(const oracle::image<double>& y, index_t B, index_t c) {
  const auto& s = y.view.shape;
  const index_t per_row = c / B, plane = s[0] * s[2] * s[3];
  oracle::MatrixXd rows(B, per_row * plane);
  for (index_t f = 0; f < B; ++f)
    for (index_t cc = 0; cc < per_row; ++cc)
      for (index_t p = 0; p < plane; ++p)
        rows(f, cc * plane + p) = y(p / (s[2] * s[3]), f * per_row + cc, (p / s[3]) % s[2], p % s[3]);
  return rows;
}

}  // namespace

TEST_CASE("centred, exact, unsampled: the whitened rows have identity covariance; the rest is standardised") {
  std::mt19937_64 rng(81);
  const index_t N = 3, C = 7, H = 5, W = 4, B = 3, c = 6;
  oracle::image<double> x(N, C, H, W, 1), y(N, C, H, W, 2);
  oracle::fill_normal(x, rng, 1.5);
  for (index_t n = 0; n < N; ++n)  // correlate channels 0 and 2 (rows 0 and 1 of the feature matrix)
    for (index_t yy = 0; yy < H; ++yy)
      for (index_t xx = 0; xx < W; ++xx) x(n, 2, yy, xx) += 0.8 * x(n, 0, yy, xx);
  channel_deconv_config cfg{B, 1, 0.0, isqrt_options::exact(), false};
  channel_deconv_layer<double> layer(C, cfg);
  layer.train_step(seq, x.cview(), y.view);
  const oracle::MatrixXd rows = feature_rows(y, B, c);
  const oracle::MatrixXd cov = oracle::covariance(rows.transpose(), 0.0);
  CHECK((cov - oracle::MatrixXd::Identity(B, B)).norm() < 1e-10);
  CHECK(rows.rowwise().mean().norm() < 1e-12);
  double sum = 0, sq = 0;
  const index_t count = N * H * W;
  for (index_t n = 0; n < N; ++n)
    for (index_t yy = 0; yy < H; ++yy)
      for (index_t xx = 0; xx < W; ++xx) sum += y(n, 6, yy, xx), sq += y(n, 6, yy, xx) * y(n, 6, yy, xx);
  CHECK(std::abs(sum / double(count)) < 1e-12);
  CHECK(std::abs(sq / double(count - 1) - 1.0) < 1e-12);  // unbiased variance 1 (eps = 0)
  // the first step copies: evaluation on the same batch reproduces the training output
  oracle::image<double> y_eval(N, C, H, W, 0);
  layer.eval(seq, x.cview(), y_eval.view);
  CHECK(oracle::rel_err(feature_rows(y_eval, B, c), rows) < 1e-12);
}

TEST_CASE("the reference quirk: the B x B matrix is the uncentred second moment") {
  std::mt19937_64 rng(82);
  oracle::image<double> x(2, 4, 6, 6, 0), y(2, 4, 6, 6, 0);
  oracle::fill_normal(x, rng, 3.0);
  channel_deconv_config quirk{2, 1, 0.0, isqrt_options::exact(), true};
  channel_deconv_layer<double> layer(4, quirk);
  layer.train_step(seq, x.cview(), y.view);
  const oracle::MatrixXd raw = feature_rows(x, 2, 4);
  const oracle::MatrixXd second = raw * raw.transpose() / double(raw.cols());
  Eigen::MatrixXd D;
  inverse_sqrt_exact(second, D);
  CHECK(oracle::rel_err(layer.running().D[0], D) < 1e-12);  // first-step copy
  const oracle::MatrixXd centred = raw.colwise() - raw.rowwise().mean();
  CHECK(oracle::rel_err(feature_rows(y, 2, 4), oracle::MatrixXd(D * centred)) < 1e-12);
}

TEST_CASE("channel layer: bad arguments and non-finite remaining channels") {
  std::vector<float> x(2 * 5 * 4 * 4, 0.5f), y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(0.91 * double(i * i % 97)));
  CHECK_THROWS_WITH_AS(channel_deconv_layer<float>(5, channel_deconv_config{6}), doctest::Contains("block 6 is larger than C=5"),
                       invalid_argument);
  channel_deconv_layer<float> layer(5, channel_deconv_config{2});
  CHECK_THROWS_WITH_AS(layer.train_step(seq, nchw<const float>(x.data(), 2, 4, 5, 4), nchw(y.data(), 2, 4, 5, 4)),
                       doctest::Contains("x has C=4, the layer has 5"), invalid_argument);
  CHECK_THROWS_WITH_AS(layer.train_step(seq, nchw<const float>(x.data(), 2, 5, 4, 4), nchw(y.data(), 2, 5, 2, 8)),
                       doctest::Contains("y must have x's shape"), invalid_argument);
  x[4 * 16 + 9] = std::numeric_limits<float>::infinity();  // channel 4 of image 0 (remaining), a sampled value
  CHECK_THROWS_AS(layer.train_step(seq, nchw<const float>(x.data(), 2, 5, 4, 4), nchw(y.data(), 2, 5, 4, 4)),
                  numerical_error);
  CHECK(layer.steps() == 0);
  layer_options keep = channel_deconv_layer<float>::reference_options();
  keep.on_failure = failure_policy::keep_previous;
  channel_deconv_layer<float> tolerant(5, channel_deconv_config{2}, keep);
  tolerant.train_step(seq, nchw<const float>(x.data(), 2, 5, 4, 4), nchw(y.data(), 2, 5, 4, 4));
  CHECK(tolerant.diagnostic().outcome == step_outcome::kept_previous);
  CHECK(tolerant.running_remaining_var() == 1.0f);
}

TEST_CASE("channel layer: an empty batch or image is an argument error, not a numerical one (issue 9)") {
  std::vector<float> x(2 * 5 * 4 * 4, 0.5f), y(x.size());
  channel_deconv_layer<float> layer(5, channel_deconv_config{2});
  CHECK_THROWS_WITH_AS(layer.train_step(seq, nchw<const float>(x.data(), 0, 5, 4, 4), nchw(y.data(), 0, 5, 4, 4)),
                       doctest::Contains("statistics need >= 2 samples, got 0"), invalid_argument);
  CHECK_THROWS_WITH_AS(layer.train_step(seq, nchw<const float>(x.data(), 2, 5, 0, 0), nchw(y.data(), 2, 5, 0, 0)),
                       doctest::Contains("statistics need >= 2 samples, got 0"), invalid_argument);
  // one 1x1 image: 2 samples for the whitened rows (2 channels per row), 1 value for the remaining channel
  CHECK_THROWS_WITH_AS(layer.train_step(seq, nchw<const float>(x.data(), 1, 5, 1, 1), nchw(y.data(), 1, 5, 1, 1)),
                       doctest::Contains("the remaining channels' variance needs >= 2 samples, got 1"), invalid_argument);
  CHECK(layer.steps() == 0);
  CHECK_NOTHROW(layer.train_step(seq, nchw<const float>(x.data(), 2, 5, 1, 1), nchw(y.data(), 2, 5, 1, 1)));
  CHECK(layer.steps() == 1);
  // evaluation of an empty batch writes nothing and is fine
  CHECK_NOTHROW(layer.eval(seq, nchw<const float>(x.data(), 0, 5, 4, 4), nchw(y.data(), 0, 5, 4, 4)));
}

TEST_CASE("channel layer: no freeze, a dead remaining channel with eps = 0 is a failed step, in place equals out of place") {
  layer_options frozen = channel_deconv_layer<float>::reference_options();
  frozen.freeze = true;
  CHECK_THROWS_WITH_AS(channel_deconv_layer<float>(5, channel_deconv_config{2}, frozen),
                       doctest::Contains("the channel layer has no freeze"), invalid_argument);
  std::vector<float> x(2 * 5 * 6 * 6), y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(0.37 * double(i * i % 89)));
  for (std::size_t i = 0; i < 36; ++i) x[4 * 36 + i] = x[5 * 36 + 4 * 36 + i] = 0.0f;  // channel 4 (remaining) dead
  channel_deconv_config config{2};
  config.eps = 0.0;
  channel_deconv_layer<float> layer(5, config);
  CHECK_THROWS_WITH_AS(layer.train_step(seq, nchw<const float>(x.data(), 2, 5, 6, 6), nchw(y.data(), 2, 5, 6, 6)),
                       doctest::Contains("variance + eps is 0"), numerical_error);
  layer_options keep = channel_deconv_layer<float>::reference_options();
  keep.on_failure = failure_policy::keep_previous;
  channel_deconv_layer<float> tolerant(5, config, keep);
  tolerant.train_step(seq, nchw<const float>(x.data(), 2, 5, 6, 6), nchw(y.data(), 2, 5, 6, 6));
  CHECK(tolerant.diagnostic().outcome == step_outcome::kept_previous);
  CHECK(std::all_of(y.begin(), y.end(), [](float v) { return std::isfinite(v); }));
  // in place (y is x) gives what a separate y gets
  channel_deconv_layer<float> a(5, channel_deconv_config{2}), b(5, channel_deconv_config{2});
  x[4 * 36 + 7] = 0.5f;
  a.train_step(seq, nchw<const float>(x.data(), 2, 5, 6, 6), nchw(y.data(), 2, 5, 6, 6));
  auto inplace = x;
  b.train_step(seq, nchw<const float>(inplace.data(), 2, 5, 6, 6), nchw(inplace.data(), 2, 5, 6, 6));
  CHECK(inplace == y);
  CHECK_THROWS_WITH_AS(b.eval(seq, nchw<const float>(x.data(), 2, 5, 6, 6), nchw(x.data() + 1, 2, 5, 6, 6)),
                       doctest::Contains("y overlaps x"), invalid_argument);
}

TEST_CASE("channel layer state in caller memory: the same outputs, the remaining channels' scalars included") {
  std::mt19937_64 rng(84);
  const index_t N = 2, C = 11, H = 5, W = 4, B = 4;
  channel_deconv_config cfg;
  cfg.block = B;
  channel_deconv_layer<float> owned(C, cfg), attached(C, cfg);
  std::vector<float> mean(B), D(B * B), remaining(2);
  std::vector<index_t> counters(3);
  const running_state_view<float> state{row_major(mean.data(), 1, B), {D.data(), {1, B, B}, {B * B, B, 1}}, {},
                                        contiguous(counters.data(), 3), contiguous(remaining.data(), 2)};
  CHECK_THROWS_WITH_AS(attached.attach_state({state.mean, state.D, {}, state.counters, {}}),
                       doctest::Contains("remaining must have 2 entries"), invalid_argument);
  attached.attach_state(state);
  CHECK(remaining == std::vector<float>{0.0f, 1.0f});
  std::normal_distribution<double> normal(0.5, 2.0);
  for (int k = 0; k < 4; ++k) {
    std::vector<float> x(N * C * H * W), y1(x.size()), y2(x.size());
    for (auto& v : x) v = float(normal(rng));
    owned.train_step(seq, nchw<const float>(x.data(), N, C, H, W), nchw(y1.data(), N, C, H, W));
    attached.train_step(seq, nchw<const float>(x.data(), N, C, H, W), nchw(y2.data(), N, C, H, W));
    CHECK(y1 == y2);
    CHECK(remaining[0] == owned.running_remaining_mean());
    CHECK(remaining[1] == owned.running_remaining_var());
    CHECK(attached.state() == owned.state());
  }
  remaining[1] = -1.0f;
  std::vector<float> x(N * C * H * W, 1.0f), y(x.size());
  CHECK_THROWS_WITH_AS(attached.eval(seq, nchw<const float>(x.data(), N, C, H, W), nchw(y.data(), N, C, H, W)),
                       doctest::Contains("remaining-channel mean"), invalid_argument);
}

TEST_CASE("channel layer backward matches finite differences (float64), par agrees with seq") {
  // L = <G, y(x)> with y the training output of a fresh layer; the gradient through mu, D (centred or
  // the reference's uncentred second moment; fixed and exact roots) and the remaining channels'
  // mean and unbiased variance, at every entry of x. Central differences with h = 1e-6: error
  // ~1e-9 relative; checked at 1e-6 of the largest entry (a wrong sign of the variance's term
  // fails it). par (images in parallel, tiled scatter) against seq at 1e-12.
  std::mt19937_64 rng(1301);
  for (int trial = 0; trial < 8; ++trial) {
    const index_t B = 1 + trial % 3, N = 2, H = 3 + trial % 3, W = 4, C = B * (1 + trial % 2) + (trial % 4 < 2 ? 1 : 0);
    channel_deconv_config cfg{B, index_t(1 + trial % 3), 0.1, trial % 3 == 1 ? isqrt_options::exact() : isqrt_options::fixed(5),
                              trial % 2 == 0};
    CAPTURE(trial);
    oracle::image<double> x(N, C, H, W, trial % 3), G(N, C, H, W, 0);
    oracle::fill_normal(x, rng, 0.5);
    oracle::fill_normal(G, rng);
    const bool remaining = C % B != 0;
    const auto loss = [&] {
      channel_deconv_layer<double> layer(C, cfg);
      oracle::image<double> y(N, C, H, W, 0);
      layer.train_step(seq, x.cview(), y.view);
      double s = 0;
      for (std::size_t i = 0; i < y.storage.size(); ++i) s += y.storage[i] * G.storage[i];
      return s;
    };
    const auto backward = [&](const auto& policy, oracle::image<double>& dx) {
      channel_deconv_layer<double> layer(C, cfg);
      std::vector<double> mean(static_cast<std::size_t>(B)), D(static_cast<std::size_t>(B * B)), rest(remaining ? 2 : 0);
      std::vector<isqrt_report> reports(1), back(1);
      const channel_statistics_view<double> used{row_major(mean.data(), 1, B), {D.data(), {1, B, B}, {B * B, B, 1}},
                                                 remaining ? contiguous(rest.data(), 2) : vector_view<double>{}};
      oracle::image<double> y(N, C, H, W, 0);
      layer.train_step(policy, x.cview(), y.view, used, contiguous(reports.data(), 1));
      REQUIRE(reports[0].status == isqrt_status::ok);
      layer.backward(policy, x.cview(), used, layer.diagnostic(), G.cview(), dx.view, contiguous(back.data(), 1));
      REQUIRE(back[0].status == isqrt_status::ok);
    };
    oracle::image<double> dx(N, C, H, W, 0), dx_par(N, C, H, W, 0);
    backward(seq, dx);
    backward(par, dx_par);
    double scale = 0, worst = 0;
    for (const double v : dx.storage) scale = std::max(scale, std::abs(v));
    for (index_t n = 0; n < N; ++n)  // every entry: the sampled ones carry the statistics' terms
      for (index_t c = 0; c < C; ++c)
        for (index_t yy = 0; yy < H; ++yy)
          for (index_t xx = 0; xx < W; ++xx) {
            const double keep = x(n, c, yy, xx), h = 1e-6;
            x(n, c, yy, xx) = keep + h;
            const double up = loss();
            x(n, c, yy, xx) = keep - h;
            const double down = loss();
            x(n, c, yy, xx) = keep;
            worst = std::max(worst, std::abs(dx(n, c, yy, xx) - (up - down) / (2 * h)) / scale);
          }
    CHECK(worst < 1e-6);
    CHECK(oracle::rel_err(dx_par.storage, dx.storage) < 1e-12);
  }
}

TEST_CASE("channel layer backward: statistics as constants give the direct part only; bad arguments") {
  std::mt19937_64 rng(1302);
  const index_t B = 2, N = 2, C = 5, H = 4, W = 4;
  channel_deconv_layer<double> layer(C, channel_deconv_config{B});
  oracle::image<double> x(N, C, H, W, 0), y(N, C, H, W, 0), G(N, C, H, W, 0), dx(N, C, H, W, 0);
  oracle::fill_normal(x, rng, 0.5);
  oracle::fill_normal(G, rng);
  std::vector<double> mean(2), D(4), rest(2);
  std::vector<isqrt_report> reports(1);
  const channel_statistics_view<double> used{row_major(mean.data(), 1, B), {D.data(), {1, B, B}, {B * B, B, 1}},
                                             contiguous(rest.data(), 2)};
  layer.train_step(seq, x.cview(), y.view, used, contiguous(reports.data(), 1));
  layer.backward(seq, x.cview(), used, layer.diagnostic(), G.cview(), dx.view, contiguous(reports.data(), 1),
                 statistics_gradient::constants);
  CHECK(reports[0].iterations == 0);
  const double inv_sd = 1.0 / std::sqrt(rest[1] + 1e-2);
  double err = 0;
  for (index_t n = 0; n < N; ++n)
    for (index_t yy = 0; yy < H; ++yy)
      for (index_t xx = 0; xx < W; ++xx) {
        for (index_t cc = 0; cc < 2; ++cc)
          for (index_t g = 0; g < B; ++g) {  // dx = D^T dy over the whitened rows (channel g*2 + cc)
            double want = 0;
            for (index_t f = 0; f < B; ++f) want += D[std::size_t(f * B + g)] * G(n, f * 2 + cc, yy, xx);
            err = std::max(err, std::abs(dx(n, g * 2 + cc, yy, xx) - want));
          }
        err = std::max(err, std::abs(dx(n, 4, yy, xx) - G(n, 4, yy, xx) * inv_sd));
      }
  CHECK(err < 1e-14);
  const vector_view<isqrt_report> r = contiguous(reports.data(), 1);
  CHECK_THROWS_WITH_AS(layer.backward(seq, x.cview(), used, layer.diagnostic(), G.cview(), x.view, r),
                       doctest::Contains("dx overlaps x"), invalid_argument);
  const channel_statistics_view<const double> short_rest{used.mean, used.D, contiguous<const double>(rest.data(), 1)};
  CHECK_THROWS_WITH_AS(layer.backward(seq, x.cview(), short_rest, layer.diagnostic(), G.cview(), dx.view, r),
                       doctest::Contains("used.remaining must have 2 entries"), invalid_argument);
  oracle::image<double> small(N, C, H, W - 1, 0);
  CHECK_THROWS_WITH_AS(layer.backward(seq, x.cview(), used, layer.diagnostic(), small.cview(), dx.view, r),
                       doctest::Contains("dy and dx must have x's shape"), invalid_argument);
}
