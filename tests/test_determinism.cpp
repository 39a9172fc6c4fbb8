// SPDX-License-Identifier: MIT
// Determinism (docs/hardening.md, "Determinism"), for every CPU policy and thread count:
//   - the same inputs on the same thread count give bit-equal results (every output, compared
//     byte for byte, and a layer's checkpoint after a training run);
//   - 1, 2 and 3 threads agree within 1e-12 (float64) and 1e-5 (float32) relative error: the
//     threads split sums differently (covariance rows, the backward's scatter), so only rounding
//     may differ; the measured differences are printed.
// The forward and backward statistics steps (conv and linear), whiten, and the conv and channel
// layers' training loops cover every kernel (covariance, inverse square root, fold, im2col, the
// step's backward).
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <netdeconv/netdeconv.hpp>

#include "flat_statistics.hpp"
#include "oracle.hpp"

using namespace netdeconv;

namespace {

/// A deterministic problem: x (N, C, H, W) of correlated channels, a 3x3 weight, bias, and the
/// upstream gradients of W' and b'.
template <class T>
struct problem {
  static constexpr index_t N = 4, C = 16, H = 10, W = 10, cout = 8;
  std::vector<T> x, w, b, gw, gb;
  conv_deconv_config cfg;
  problem() {
    std::mt19937_64 rng(2026);
    std::normal_distribution<double> normal;
    const auto fill = [&](std::vector<T>& v, std::size_t n) {
      v.resize(n);
      for (T& e : v) e = T(normal(rng));
    };
    fill(x, std::size_t(N * C * H * W));
    for (std::size_t i = std::size_t(H * W); i < x.size(); ++i) x[i] += T(0.6) * x[i - std::size_t(H * W)];
    fill(w, std::size_t(cout * C * 9));
    fill(b, std::size_t(cout));
    fill(gw, w.size());
    fill(gb, b.size());
    cfg.geometry = conv_geometry::square(3, 1, 1);
    cfg.block = 4;
    cfg.sampling_stride = 1;
    cfg.eps = 1e-3;
  }
  image_view<const T> xv() const { return nchw<const T>(x.data(), N, C, H, W); }
  image_view<const T> wv() const { return nchw<const T>(w.data(), cout, C, 3, 3); }
  vector_view<const T> bv() const { return contiguous<const T>(b.data(), cout); }
};

template <class T>
void append(std::vector<T>& out, const std::vector<T>& v) {
  out.insert(out.end(), v.begin(), v.end());
}

/// Everything the stateless functions compute on the problem, concatenated.
template <class T, class Policy>
std::vector<T> stateless_outputs(const Policy& policy, const problem<T>& p) {
  std::vector<T> out;
  const auto step = conv_statistics_step(policy, p.xv(), p.wv(), p.bv(), p.cfg);
  append(out, step.weight);
  append(out, step.bias);
  const checks::flat_statistics<T> flat(step.statistics);
  append(out, flat.mean);
  append(out, flat.D);

  std::vector<T> dw(p.w.size()), db(p.b.size()), dx(p.x.size());
  std::vector<isqrt_report> reports(std::size_t(step.statistics.plan.count()));
  const statistics_step_gradients<T, 4> grads{nchw(dw.data(), p.cout, p.C, 3, 3), contiguous(db.data(), p.cout),
                                              nchw(dx.data(), p.N, p.C, p.H, p.W),
                                              contiguous(reports.data(), index_t(reports.size()))};
  conv_statistics_step_vjp(policy, p.xv(), p.wv(), p.bv(), p.cfg, flat.view,
                           nchw<const T>(p.gw.data(), p.cout, p.C, 3, 3), contiguous<const T>(p.gb.data(), p.cout), grads);
  append(out, dw);
  append(out, dx);

  // The images as (N*C, H*W) rows of a linear layer, and as data to whiten.
  const matrix_view<const T> rows = row_major<const T>(p.x.data(), p.N * p.C, p.H * p.W);
  linear_deconv_config lin;
  lin.block = 25;
  const std::vector<T> lw(p.x.begin(), p.x.begin() + 3 * p.H * p.W);
  const auto linear = linear_statistics_step(policy, rows, row_major<const T>(lw.data(), 3, p.H * p.W), {}, lin);
  append(out, linear.weight);
  const auto white = whiten(policy, row_major<const T>(p.x.data(), p.N * p.H * p.W / 4, 4 * p.C));
  out.insert(out.end(), white.data.data(), white.data.data() + white.data.size());
  return out;
}

/// Six training steps of a conv layer (forward, backward into dx) and of a channel layer; the
/// outputs of the last step of each, and both checkpoints as bytes.
template <class T, class Policy>
std::pair<std::vector<T>, std::vector<std::uint8_t>> training_outputs(const Policy& policy, const problem<T>& p) {
  conv_deconv_layer<T> conv(p.C, p.cfg);
  channel_deconv_layer<T> channel(p.C, {.block = 8, .sampling_stride = 1});
  std::vector<T> out, y(p.x.size()), dw(p.w.size()), db(p.b.size()), dx(p.x.size());
  for (int k = 0; k < 6; ++k) {
    const auto step = conv.train_step(policy, p.xv(), p.wv(), p.bv());
    const checks::flat_statistics<T> flat(step.statistics);
    std::vector<isqrt_report> reports(std::size_t(step.statistics.plan.count()));
    conv.backward(policy, p.xv(), p.wv(), p.bv(), flat.view, conv.diagnostic(),
                  nchw<const T>(p.gw.data(), p.cout, p.C, 3, 3), contiguous<const T>(p.gb.data(), p.cout),
                  {nchw(dw.data(), p.cout, p.C, 3, 3), contiguous(db.data(), p.cout), nchw(dx.data(), p.N, p.C, p.H, p.W),
                   contiguous(reports.data(), index_t(reports.size()))});
    channel.train_step(policy, p.xv(), nchw(y.data(), p.N, p.C, p.H, p.W));
    if (k == 5) append(out, step.weight), append(out, dx), append(out, y);
  }
  std::vector<std::uint8_t> bytes = conv.state(), more = channel.state();
  bytes.insert(bytes.end(), more.begin(), more.end());
  return {out, bytes};
}

template <class T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

/// oracle::rel_err of two outputs.
template <class T>
double rel_err(const std::vector<T>& a, const std::vector<T>& b) {
  using vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  return oracle::rel_err(Eigen::Map<const vector>(a.data(), Eigen::Index(a.size())),
                         Eigen::Map<const vector>(b.data(), Eigen::Index(b.size())));
}

template <class T, class MakePolicy>
void check_policy(const char* name, MakePolicy make) {
  const problem<T> p;
  const double tolerance = sizeof(T) == 8 ? 1e-12 : 1e-5;
  const auto two = stateless_outputs(make(2), p);
  CHECK(bit_equal(stateless_outputs(make(2), p), two));
  const auto [trained, state] = training_outputs(make(2), p);
  const auto [trained_again, state_again] = training_outputs(make(2), p);
  CHECK(bit_equal(trained_again, trained));
  CHECK(state_again == state);
  for (const int threads : {1, 3}) {
    CAPTURE(threads);
    const double stateless = rel_err(stateless_outputs(make(threads), p), two);
    const double training = rel_err(training_outputs(make(threads), p).first, trained);
    MESSAGE(std::string(name), " ", sizeof(T) == 8 ? "float64" : "float32", ": ", threads, " against 2 threads: stateless ",
            stateless, ", training ", training);
    CHECK(stateless <= tolerance);
    CHECK(training <= tolerance);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("the same thread count gives the same bits; other counts agree to rounding", T, float, double) {
  check_policy<T>("omp_policy", [](int n) { return omp_policy{{}, n}; });
  check_policy<T>("simd_policy", [](int n) { return simd_threads(n); });
  // seq has no threads: two runs are bit-equal.
  const problem<T> p;
  CHECK(bit_equal(stateless_outputs(seq, p), stateless_outputs(seq, p)));
}
