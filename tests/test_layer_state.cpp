// SPDX-License-Identifier: MIT
// The training rule shared by the layers (layer_state.hpp): momentum, first-step copy, the
// reference freeze counter, running covariance, relative eps, failure policies, resume.
#include <doctest/doctest.h>

#include <algorithm>
#include <limits>

#include <netdeconv/eigen.hpp>
#include <netdeconv/conv_deconv_layer.hpp>
#include <netdeconv/linear_deconv_layer.hpp>
#include <netdeconv/statistics_step_vjp.hpp>

#include "oracle.hpp"

using namespace netdeconv;

namespace {

template <class T>
std::vector<T> random_vector(index_t n, std::mt19937_64& rng, double mean = 0.0) {
  std::normal_distribution<double> normal(mean, 1.0);
  std::vector<T> v(n);
  for (auto& e : v) e = T(normal(rng));
  return v;
}

struct linear_fixture {
  static constexpr index_t rows = 64, fin = 6, cout = 3;
  std::mt19937_64 rng{71};
  std::vector<float> W = random_vector<float>(cout * fin, rng), b = random_vector<float>(cout, rng);
  matrix_view<const float> weight() const { return row_major<const float>(W.data(), cout, fin); }
  vector_view<const float> bias() const { return contiguous<const float>(b.data(), cout); }
  std::vector<float> batch(double mean = 0.0) { return random_vector<float>(rows * fin, rng, mean); }
  static matrix_view<const float> view_of(const std::vector<float>& x) { return row_major<const float>(x.data(), rows, fin); }
};

linear_deconv_config small_linear() {
  linear_deconv_config c;
  c.block = 6;
  return c;
}

}  // namespace

TEST_CASE("running statistics: r <- (1 - m) r + m value from (0, I), or a copy on the first step") {
  linear_fixture f;
  const auto x = f.batch(2.0);
  const auto step = linear_statistics_step(seq, f.view_of(x), f.weight(), f.bias(), small_linear());
  linear_deconv_layer<float> reference(6, small_linear());
  const auto wb = reference.train_step(seq, f.view_of(x), f.weight(), f.bias());
  CHECK(wb.weight == step.weight);  // training folds with the batch statistics
  const Eigen::MatrixXf I = Eigen::MatrixXf::Identity(6, 6);
  CHECK(oracle::rel_err(reference.running().mean[0], 0.1f * step.statistics.mean[0]) < 1e-6);
  CHECK(oracle::rel_err(reference.running().D[0], 0.9f * I + 0.1f * step.statistics.D[0]) < 1e-6);
  layer_options copy;
  copy.first_step_copy = true;
  linear_deconv_layer<float> copying(6, small_linear(), copy);
  copying.train_step(seq, f.view_of(x), f.weight(), f.bias());
  CHECK(copying.running().mean[0] == step.statistics.mean[0]);
  CHECK(copying.running().D[0] == step.statistics.D[0]);
  const auto x2 = f.batch(-1.0);
  const auto step2 = linear_statistics_step(seq, f.view_of(x2), f.weight(), f.bias(), small_linear());
  copying.train_step(seq, f.view_of(x2), f.weight(), f.bias());
  CHECK(oracle::rel_err(copying.running().mean[0], 0.9f * step.statistics.mean[0] + 0.1f * step2.statistics.mean[0]) < 1e-6);
}

TEST_CASE("reference freeze counter: frozen while counter > freeze_iter, wrapping at 10 * freeze_iter") {
  std::mt19937_64 rng(72);
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(3, 1, 1);
  cfg.sampling_stride = 1;
  layer_options options;
  options.freeze = true;
  options.freeze_iter = 2;
  conv_deconv_layer<double> layer(3, cfg, options);
  const auto W = random_vector<double>(4 * 27, rng);
  const auto Wv = nchw<const double>(W.data(), 4, 3, 3, 3);
  for (int k = 0; k < 24; ++k) {
    CAPTURE(k);
    const auto x = random_vector<double>(2 * 3 * 6 * 6, rng);
    const auto before = layer.running();
    const auto wb = layer.train_step(seq, nchw<const double>(x.data(), 2, 3, 6, 6), Wv, {});
    const bool frozen = k % 20 > 2;  // counter before step k is k mod 20
    CHECK(layer.freeze_counter() == (k + 1) % 20);
    CHECK(layer.diagnostic().outcome == (frozen ? step_outcome::frozen : step_outcome::computed));
    if (frozen) {
      CHECK(layer.running().D[0] == before.D[0]);
      CHECK(wb.weight == layer.eval(seq, Wv, {}).weight);
    } else {
      CHECK(layer.running().D[0] != before.D[0]);
    }
  }
}

TEST_CASE("average_covariance: evaluation takes the inverse square root of the running covariance") {
  linear_fixture f;
  layer_options options;
  options.average_covariance = true;
  auto cfg = small_linear();
  cfg.isqrt = isqrt_options::exact();
  linear_deconv_layer<float> layer(6, cfg, options);
  Eigen::MatrixXd running = Eigen::MatrixXd::Identity(6, 6);
  for (int k = 0; k < 3; ++k) {
    const auto x = f.batch(1.0);
    layer.train_step(seq, f.view_of(x), f.weight(), f.bias());
    oracle::MatrixXd X(f.rows, f.fin);
    for (index_t i = 0; i < X.size(); ++i) X(i / f.fin, i % f.fin) = x[i];
    running = 0.9 * running + 0.1 * oracle::covariance(X, cfg.eps);
  }
  Eigen::MatrixXd D;
  inverse_sqrt_exact(running, D);
  const auto ev = layer.eval(seq, f.weight(), {});
  const Eigen::MatrixXd W = as_eigen(f.weight()).cast<double>();
  const Eigen::Map<const Eigen::Matrix<float, -1, -1, Eigen::RowMajor>> got(ev.weight.data(), 3, 6);
  CHECK(oracle::rel_err(got, W * D) < 1e-5);
}

TEST_CASE("relative eps makes the layer scale-free: D(c x) = D(x) / c") {
  linear_fixture f;
  layer_options options;
  options.relative_eps = true;
  auto x = f.batch();
  linear_deconv_layer<double> a(6, small_linear(), options), b(6, small_linear(), options);
  std::vector<double> xd(x.begin(), x.end()), xs(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) xs[i] = 1000.0 * xd[i];
  const std::vector<double> W(f.W.begin(), f.W.end());
  const auto Wv = row_major<const double>(W.data(), 3, 6);
  a.train_step(seq, row_major<const double>(xd.data(), 64, 6), Wv, {});
  b.train_step(seq, row_major<const double>(xs.data(), 64, 6), Wv, {});
  const Eigen::MatrixXd I = Eigen::MatrixXd::Identity(6, 6);
  // running D = 0.9 I + 0.1 D_batch
  CHECK(oracle::rel_err(Eigen::MatrixXd((b.running().D[0] - 0.9 * I) * 1000.0), Eigen::MatrixXd(a.running().D[0] - 0.9 * I)) < 1e-9);
}

TEST_CASE("failure policies: throw, keep previous, exact fallback, raise eps") {
  linear_fixture f;
  auto good = f.batch();
  auto nan_batch = f.batch();
  nan_batch[7] = std::numeric_limits<float>::quiet_NaN();

  SUBCASE("throw_error leaves the state exactly as before") {
    linear_deconv_layer<float> layer(6, small_linear());
    layer.train_step(seq, f.view_of(good), f.weight(), f.bias());
    const auto saved = layer.state();
    CHECK_THROWS_WITH_AS(layer.train_step(seq, f.view_of(nan_batch), f.weight(), f.bias()),
                         doctest::Contains("block 0 non_finite"), numerical_error);
    CHECK(layer.state() == saved);
    CHECK(layer.steps() == 1);
  }
  for (const auto policy : {failure_policy::keep_previous, failure_policy::exact_fallback, failure_policy::raise_eps}) {
    CAPTURE(int(policy));
    layer_options options;
    options.on_failure = policy;
    linear_deconv_layer<float> layer(6, small_linear(), options);
    layer.train_step(seq, f.view_of(good), f.weight(), f.bias());
    const auto running = layer.running();
    const auto wb = layer.train_step(seq, f.view_of(nan_batch), f.weight(), f.bias());  // NaN: nothing can fix it
    CHECK(layer.diagnostic().outcome == step_outcome::kept_previous);
    CHECK(layer.diagnostic().failures == 1);
    CHECK(layer.running().D[0] == running.D[0]);
    CHECK(layer.running().mean[0] == running.mean[0]);
    CHECK(wb.weight == layer.eval(seq, f.weight(), f.bias()).weight);
    CHECK(layer.steps() == 2);
  }
  SUBCASE("exact_fallback repairs a Newton-Schulz run that misses its tolerance") {
    layer_options options;
    options.on_failure = failure_policy::exact_fallback;
    auto cfg = small_linear();
    cfg.isqrt = isqrt_options::converged(1e-12, 2);  // unreachable in 2 steps
    linear_deconv_layer<double> layer(6, cfg, options);
    const std::vector<double> x(good.begin(), good.end()), W(f.W.begin(), f.W.end());
    const auto wb = layer.train_step(seq, row_major<const double>(x.data(), 64, 6), row_major<const double>(W.data(), 3, 6), {});
    CHECK(layer.diagnostic().outcome == step_outcome::exact_fallback);
    CHECK(layer.diagnostic().reports[0].status == isqrt_status::ok);
    auto exact_cfg = small_linear();
    exact_cfg.isqrt = isqrt_options::exact();
    const auto ref = linear_statistics_step(seq, row_major<const double>(x.data(), 64, 6),
                                            row_major<const double>(W.data(), 3, 6), {}, exact_cfg);
    CHECK(oracle::rel_err(Eigen::Map<const Eigen::VectorXd>(wb.weight.data(), 18),
                          Eigen::Map<const Eigen::VectorXd>(ref.weight.data(), 18)) < 1e-12);
  }
  SUBCASE("raise_eps retries a rank-deficient batch with 10x, 100x, ... eps") {
    layer_options options;
    options.on_failure = failure_policy::raise_eps;
    options.max_eps_raises = 10;
    auto cfg = small_linear();
    cfg.eps = 1e-12;
    // a singular covariance passes the screen (fixed steps would use it, as the reference does);
    // the converged iteration cannot reach its tolerance in 15 steps until eps lifts the null space
    cfg.isqrt = isqrt_options::converged(1e-4, 15);
    linear_deconv_layer<float> layer(6, cfg, options);
    auto deficient = good;
    for (index_t r = 0; r < 64; ++r) deficient[r * 6 + 5] = deficient[r * 6 + 0];  // duplicate feature
    layer.train_step(seq, f.view_of(deficient), f.weight(), f.bias());
    CHECK(layer.diagnostic().outcome == step_outcome::eps_raised);
    CHECK(layer.diagnostic().eps_raises >= 1);
    CHECK(layer.diagnostic().reports[0].status == isqrt_status::ok);
    options.max_eps_raises = 1;  // too few raises: the step keeps the previous statistics
    linear_deconv_layer<float> capped(6, cfg, options);
    capped.train_step(seq, f.view_of(deficient), f.weight(), f.bias());
    CHECK(capped.diagnostic().outcome == step_outcome::kept_previous);
    CHECK(capped.running().D[0] == Eigen::MatrixXf::Identity(6, 6));
  }
}

TEST_CASE("a run resumed from a checkpoint equals the uninterrupted run, freeze counter included") {
  std::mt19937_64 rng(73);
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(3, 1, 1);
  cfg.sampling_stride = 2;
  layer_options options;
  options.freeze = true;
  options.freeze_iter = 1;  // steps 0, 1 computed, 2..9 frozen, 10 computed again
  std::vector<std::vector<float>> batches;
  for (int k = 0; k < 12; ++k) batches.push_back(random_vector<float>(2 * 4 * 7 * 7, rng));
  const auto W = random_vector<float>(5 * 4 * 9, rng), b = random_vector<float>(5, rng);
  const auto Wv = nchw<const float>(W.data(), 5, 4, 3, 3);
  const auto bv = contiguous<const float>(b.data(), 5);
  auto run = [&](conv_deconv_layer<float>& layer, int from, int to) {
    std::vector<std::vector<float>> out;
    for (int k = from; k < to; ++k) out.push_back(layer.train_step(par, nchw<const float>(batches[k].data(), 2, 4, 7, 7), Wv, bv).weight);
    return out;
  };
  conv_deconv_layer<float> whole(4, cfg, options);
  const auto all = run(whole, 0, 12);
  for (const int k : {1, 3, 9}) {
    CAPTURE(k);
    conv_deconv_layer<float> first(4, cfg, options);
    run(first, 0, k);
    conv_deconv_layer<float> resumed(4, cfg, options);
    resumed.load_state(first.state());
    const auto rest = run(resumed, k, 12);
    for (int i = 0; i < 12 - k; ++i) CHECK(rest[i] == all[k + i]);
    CHECK(resumed.state() == whole.state());
  }
}

TEST_CASE("evaluation of a running covariance whose iteration misses its cap takes the exact root (issue 9 review)") {
  linear_fixture f;
  layer_options options = layer_options::improved();
  options.on_failure = failure_policy::exact_fallback;
  auto cfg = small_linear();
  cfg.isqrt = isqrt_options::converged(1e-7, 3);  // never reached in 3 steps
  linear_deconv_layer<double> layer(6, cfg, options);
  const auto x = f.batch();
  const std::vector<double> xd(x.begin(), x.end()), W(f.W.begin(), f.W.end());
  const auto Wv = row_major<const double>(W.data(), 3, 6);
  layer.train_step(seq, row_major<const double>(xd.data(), 64, 6), Wv, {});
  REQUIRE(layer.diagnostic().outcome == step_outcome::exact_fallback);
  const auto ev = layer.eval(seq, Wv, {});
  // the first step copied Cov: evaluation is the exact root of the batch covariance
  auto exact = small_linear();
  exact.isqrt = isqrt_options::exact();
  linear_deconv_layer<double> reference(6, exact, layer_options::improved());
  reference.train_step(seq, row_major<const double>(xd.data(), 64, 6), Wv, {});
  const auto want = reference.eval(seq, Wv, {});
  CHECK(oracle::rel_err(Eigen::Map<const Eigen::VectorXd>(ev.weight.data(), 18),
                        Eigen::Map<const Eigen::VectorXd>(want.weight.data(), 18)) < 1e-12);
}

TEST_CASE("max_eps_raises is capped at 30") {
  layer_options options;
  options.max_eps_raises = 31;
  CHECK_THROWS_WITH_AS(linear_deconv_layer<float>(6, small_linear(), options), doctest::Contains("max_eps_raises must be in [0, 30]"),
                       invalid_argument);
}

namespace {

/// A framework's buffers for a layer's running state (S statistics of F features).
template <class T>
struct state_buffers {
  std::vector<T> mean, D, cov, remaining;
  std::vector<index_t> counters = std::vector<index_t>(3);
  index_t S, F;
  state_buffers(index_t S, index_t F, bool with_cov, bool with_remaining)
      : mean(S * F), D(S * F * F), cov(with_cov ? S * F * F : 0), remaining(with_remaining ? 2 : 0), S(S), F(F) {}
  running_state_view<T> view() {
    return {row_major(mean.data(), S, F),
            {D.data(), {S, F, F}, {F * F, F, 1}},
            cov.empty() ? tensor_view<T, 3>{} : tensor_view<T, 3>{cov.data(), {S, F, F}, {F * F, F, 1}},
            contiguous(counters.data(), 3),
            remaining.empty() ? vector_view<T>{} : contiguous(remaining.data(), 2)};
  }
};

}  // namespace

TEST_CASE("running state in caller memory: the same trajectory, and a framework checkpoint of it resumes bit for bit") {
  std::mt19937_64 rng(74);
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(3, 1, 1);
  cfg.block = 2;
  cfg.sampling_stride = 2;
  layer_options options = layer_options::improved();
  options.freeze = true;
  options.freeze_iter = 2;
  std::vector<std::vector<float>> batches;
  for (int k = 0; k < 10; ++k) batches.push_back(random_vector<float>(2 * 4 * 7 * 7, rng));
  const auto W = random_vector<float>(5 * 4 * 9, rng), b = random_vector<float>(5, rng);
  const auto Wv = nchw<const float>(W.data(), 5, 4, 3, 3);
  const auto bv = contiguous<const float>(b.data(), 5);
  const auto step = [&](conv_deconv_layer<float>& layer, int k) {
    return layer.train_step(par, nchw<const float>(batches[k].data(), 2, 4, 7, 7), Wv, bv).weight;
  };
  conv_deconv_layer<float> owned(4, cfg, options), attached(4, cfg, options);
  const index_t S = owned.plan().count(), F = owned.plan().features();
  state_buffers<float> buffers(S, F, true, false);
  attached.attach_state(buffers.view());
  CHECK(buffers.D[0] == 1.0f);  // the initial state (0, I) was written into the buffers
  CHECK(buffers.counters == std::vector<index_t>{0, 0, 0});
  state_buffers<float> saved(S, F, true, false);
  for (int k = 0; k < 10; ++k) {
    CAPTURE(k);
    CHECK(step(attached, k) == step(owned, k));
    CHECK(buffers.counters[0] == k + 1);
    CHECK(attached.state() == owned.state());
    if (k == 4) saved = buffers;  // e.g. torch.save(model.state_dict())
  }
  for (index_t s = 0; s < S; ++s) CHECK(Eigen::Map<const Eigen::VectorXf>(buffers.mean.data() + s * F, F) == owned.running().mean[s]);
  // Resume: a fresh layer attached to memory the framework filled from its checkpoint.
  conv_deconv_layer<float> resumed(4, cfg, options);
  state_buffers<float> restored(S, F, true, false);
  resumed.attach_state(restored.view());
  // e.g. model.load_state_dict(...): the checkpoint copied into the same buffers
  std::copy(saved.mean.begin(), saved.mean.end(), restored.mean.begin());
  std::copy(saved.D.begin(), saved.D.end(), restored.D.begin());
  std::copy(saved.cov.begin(), saved.cov.end(), restored.cov.begin());
  std::copy(saved.counters.begin(), saved.counters.end(), restored.counters.begin());
  conv_deconv_layer<float> reference(4, cfg, options);
  for (int k = 0; k < 10; ++k) {
    const auto w = step(reference, k);
    if (k > 4) CHECK(step(resumed, k) == w);
  }
  CHECK(resumed.state() == reference.state());
  // A byte checkpoint loaded into an attached layer lands in the caller's memory.
  conv_deconv_layer<float> loading(4, cfg, options);
  state_buffers<float> target(S, F, true, false);
  loading.attach_state(target.view());
  loading.load_state(reference.state());
  CHECK(target.counters == buffers.counters);
  CHECK(target.D == buffers.D);
}

TEST_CASE("an attached state is checked as a checkpoint is") {
  linear_fixture f;
  linear_deconv_layer<float> layer(6, small_linear());
  state_buffers<float> buffers(1, 6, false, false);
  layer.attach_state(buffers.view());
  const auto x = f.batch();
  layer.train_step(seq, f.view_of(x), f.weight(), f.bias());
  buffers.counters[1] = 7;  // freeze counter != steps mod 10 * freeze_iter
  CHECK_THROWS_WITH_AS(layer.train_step(seq, f.view_of(x), f.weight(), f.bias()),
                       doctest::Contains("the attached state has freeze counter 7, but steps 1"), invalid_argument);
  buffers.counters[1] = 1;
  buffers.D[3] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH_AS(layer.eval(seq, f.weight(), f.bias()), doctest::Contains("non-finite running statistics"),
                       invalid_argument);
  buffers.D[3] = 0.0f;
  CHECK_NOTHROW(layer.train_step(seq, f.view_of(x), f.weight(), f.bias()));
  CHECK(buffers.counters[0] == 2);
  // wrong shapes, a missing or an unexpected running covariance
  state_buffers<float> small(1, 5, false, false);
  CHECK_THROWS_WITH_AS(layer.attach_state(small.view()), doctest::Contains("mean is (1, 5), the plan needs (1, 6)"),
                       invalid_argument);
  state_buffers<float> with_cov(1, 6, true, false);
  CHECK_THROWS_WITH_AS(layer.attach_state(with_cov.view()), doctest::Contains("cov must be empty"), invalid_argument);
  linear_deconv_layer<float> averaging(6, small_linear(), layer_options::improved());
  CHECK_THROWS_WITH_AS(averaging.attach_state(buffers.view()), doctest::Contains("cov is (0, 0, 0)"), invalid_argument);
  auto overlapping = buffers.view();
  overlapping.counters = {reinterpret_cast<index_t*>(buffers.D.data()), {3}, {1}};
  CHECK_THROWS_WITH_AS(layer.attach_state(overlapping), doctest::Contains("overlaps"), invalid_argument);
}

namespace {

/// A linear layer step's outputs and what its backward needs (double, one contiguous statistic).
struct backward_case {
  static constexpr index_t rows = 40, fin = 4, cout = 2;
  std::mt19937_64 rng{1301};
  std::vector<double> x = random_vector<double>(rows * fin, rng, 0.5), W = random_vector<double>(cout * fin, rng),
                      b = random_vector<double>(cout, rng), gw = random_vector<double>(cout * fin, rng),
                      gb = random_vector<double>(cout, rng);
  std::vector<double> mean = std::vector<double>(fin), D = std::vector<double>(fin * fin),
                      wf = std::vector<double>(cout * fin), bf = std::vector<double>(cout);
  std::vector<isqrt_report> reports = std::vector<isqrt_report>(1);
  std::vector<double> dw = std::vector<double>(cout * fin), db = std::vector<double>(cout), dx = std::vector<double>(rows * fin);

  matrix_view<const double> xv() const { return row_major<const double>(x.data(), rows, fin); }
  matrix_view<const double> wv() const { return row_major<const double>(W.data(), cout, fin); }
  vector_view<const double> bv() const { return contiguous<const double>(b.data(), cout); }
  block_statistics_view<const double> stats(const block_plan& p) const {
    return {p, row_major<const double>(mean.data(), 1, fin), {D.data(), {1, fin, fin}, {fin * fin, fin, 1}}};
  }
  /// One training step of `layer` on xv() into mean, D, W', b'.
  void step(linear_deconv_layer<double>& layer) {
    layer.train_step(seq, xv(), wv(), bv(),
                     {row_major(mean.data(), 1, fin), {D.data(), {1, fin, fin}, {fin * fin, fin, 1}}, row_major(wf.data(), cout, fin),
                      contiguous(bf.data(), cout), contiguous(reports.data(), 1)});
  }
  void backward(const linear_deconv_layer<double>& layer, const step_diagnostic& diag,
                statistics_gradient mode = statistics_gradient::full) {
    layer.backward(seq, xv(), wv(), bv(), stats(layer.plan()), diag, row_major<const double>(gw.data(), cout, fin),
                   contiguous<const double>(gb.data(), cout),
                   {row_major(dw.data(), cout, fin), contiguous(db.data(), cout), row_major(dx.data(), rows, fin),
                    contiguous(reports.data(), 1)},
                   mode);
  }
  /// dL/dW with mu and D constant: (G_o - g_o mu^T) D^T.
  std::vector<double> constant_statistics_dw() const {
    std::vector<double> out(cout * fin);
    for (index_t o = 0; o < cout; ++o)
      for (index_t k = 0; k < fin; ++k)
        for (index_t f = 0; f < fin; ++f) out[o * fin + k] += (gw[o * fin + f] - gb[o] * mean[f]) * D[k * fin + f];
    return out;
  }
};

}  // namespace

TEST_CASE("layer backward of a computed step is the statistics step's backward, relative eps included") {
  backward_case c;
  linear_deconv_config cfg;
  cfg.block = backward_case::fin;
  cfg.eps = 0.05;
  // reference rule: exactly linear_statistics_step_vjp
  linear_deconv_layer<double> layer(backward_case::fin, cfg);
  c.step(layer);
  c.backward(layer, layer.diagnostic());
  std::vector<double> dw(c.dw.size()), db(c.db.size()), dx(c.dx.size());
  std::vector<isqrt_report> reports(1);
  linear_statistics_step_vjp(seq, c.xv(), c.wv(), c.bv(), cfg, c.stats(layer.plan()),
                             row_major<const double>(c.gw.data(), 2, 4), contiguous<const double>(c.gb.data(), 2),
                             {row_major(dw.data(), 2, 4), contiguous(db.data(), 2), row_major(dx.data(), 40, 4),
                              contiguous(reports.data(), 1)});
  CHECK(dw == c.dw);
  CHECK(dx == c.dx);
  CHECK(db == c.db);
  // improved rule (trace-relative eps): against central differences of a fresh layer's first step
  const layer_options improved = layer_options::improved();
  linear_deconv_layer<double> fresh(backward_case::fin, cfg, improved);
  c.step(fresh);
  c.backward(fresh, fresh.diagnostic());
  REQUIRE(c.reports[0].status == isqrt_status::ok);
  const auto loss = [&] {
    linear_deconv_layer<double> l(backward_case::fin, cfg, improved);
    const auto s = l.train_step(seq, c.xv(), c.wv(), c.bv());
    double L = 0;
    for (std::size_t i = 0; i < s.weight.size(); ++i) L += s.weight[i] * c.gw[i];
    for (std::size_t i = 0; i < s.bias.size(); ++i) L += s.bias[i] * c.gb[i];
    return L;
  };
  double scale = 0, worst = 0;
  for (const double v : c.dx) scale = std::max(scale, std::abs(v));
  for (const std::size_t i : {std::size_t(0), std::size_t(17), std::size_t(83), std::size_t(159)}) {
    const double keep = c.x[i], h = 1e-6;
    c.x[i] = keep + h;
    const double up = loss();
    c.x[i] = keep - h;
    const double down = loss();
    c.x[i] = keep;
    worst = std::max(worst, std::abs(c.dx[i] - (up - down) / (2 * h)) / scale);
  }
  CHECK(worst < 1e-6);
  // without the trace term the gradient differs by more than that
  std::vector<double> plain_dx(c.dx.size());
  linear_statistics_step_vjp(seq, c.xv(), c.wv(), c.bv(), cfg, c.stats(fresh.plan()),
                             row_major<const double>(c.gw.data(), 2, 4), contiguous<const double>(c.gb.data(), 2),
                             {row_major(dw.data(), 2, 4), contiguous(db.data(), 2), row_major(plain_dx.data(), 40, 4),
                              contiguous(reports.data(), 1)});
  CHECK(oracle::rel_err(plain_dx, c.dx) > 1e-4);
}

TEST_CASE("layer backward: frozen and kept steps, and statistics as constants, do not differentiate mu and D") {
  backward_case c;
  linear_deconv_config cfg;
  cfg.block = backward_case::fin;
  layer_options frozen;
  frozen.freeze = true;
  frozen.freeze_iter = 1;  // steps 0 and 1 compute, step 2 is frozen
  linear_deconv_layer<double> layer(backward_case::fin, cfg, frozen);
  for (int k = 0; k < 3; ++k) c.step(layer);
  REQUIRE(layer.diagnostic().outcome == step_outcome::frozen);
  std::fill(c.dx.begin(), c.dx.end(), 5.0);
  c.backward(layer, layer.diagnostic());
  CHECK(std::all_of(c.dx.begin(), c.dx.end(), [](double v) { return v == 0.0; }));
  CHECK(c.reports[0].iterations == 0);
  CHECK(std::isnan(c.reports[0].residual));
  CHECK(oracle::rel_err(c.dw, c.constant_statistics_dw()) < 1e-14);
  CHECK(c.db == c.gb);
  // a computed step with statistics_gradient::constants: the same formula
  linear_deconv_layer<double> computed(backward_case::fin, cfg);
  c.step(computed);
  REQUIRE(computed.diagnostic().outcome == step_outcome::computed);
  c.backward(computed, computed.diagnostic(), statistics_gradient::constants);
  CHECK(std::all_of(c.dx.begin(), c.dx.end(), [](double v) { return v == 0.0; }));
  CHECK(oracle::rel_err(c.dw, c.constant_statistics_dw()) < 1e-14);
  // a kept step (NaN batch under keep_previous) folds the running statistics: constants too
  layer_options keep;
  keep.on_failure = failure_policy::keep_previous;
  linear_deconv_layer<double> kept(backward_case::fin, cfg, keep);
  std::fill(c.x.begin(), c.x.end(), std::numeric_limits<double>::quiet_NaN());
  c.step(kept);
  REQUIRE(kept.diagnostic().outcome == step_outcome::kept_previous);
  c.backward(kept, kept.diagnostic());
  CHECK(std::all_of(c.dx.begin(), c.dx.end(), [](double v) { return v == 0.0; }));
  CHECK(oracle::rel_err(c.dw, c.constant_statistics_dw()) < 1e-14);
}

TEST_CASE("layer backward of repaired steps: the raised eps, and the true root's gradient after exact_fallback") {
  // Each must equal linear_statistics_step_vjp (checked against finite differences) with the
  // configuration the repaired step effectively used.
  const auto reference = [](backward_case& c, const linear_deconv_config& cfg, const block_plan& plan) {
    std::vector<double> dw(c.dw.size()), db(c.db.size()), dx(c.dx.size());
    std::vector<isqrt_report> reports(1);
    linear_statistics_step_vjp(seq, c.xv(), c.wv(), c.bv(), cfg, c.stats(plan), row_major<const double>(c.gw.data(), 2, 4),
                               contiguous<const double>(c.gb.data(), 2),
                               {row_major(dw.data(), 2, 4), contiguous(db.data(), 2), row_major(dx.data(), 40, 4),
                                contiguous(reports.data(), 1)});
    REQUIRE(reports[0].status == isqrt_status::ok);
    CHECK(oracle::rel_err(c.dx, dx) < 1e-14);
    CHECK(oracle::rel_err(c.dw, dw) < 1e-14);
  };
  SUBCASE("raise_eps: eps times 10^eps_raises") {
    backward_case c;
    for (index_t r = 0; r < backward_case::rows; ++r) c.x[std::size_t(r * 4 + 3)] = c.x[std::size_t(r * 4)];  // rank 3
    linear_deconv_config cfg;
    cfg.block = backward_case::fin;
    cfg.eps = 1e-12;
    cfg.isqrt = isqrt_options::converged(1e-4, 15);  // unreachable until eps lifts the null space
    layer_options options;
    options.on_failure = failure_policy::raise_eps;
    options.max_eps_raises = 12;
    linear_deconv_layer<double> layer(backward_case::fin, cfg, options);
    c.step(layer);
    REQUIRE(layer.diagnostic().outcome == step_outcome::eps_raised);
    c.backward(layer, layer.diagnostic());
    CHECK(c.reports[0].status == isqrt_status::ok);
    linear_deconv_config raised = cfg;
    raised.eps = cfg.eps * std::pow(10.0, layer.diagnostic().eps_raises);
    reference(c, raised, layer.plan());
  }
  SUBCASE("exact_fallback: the repaired statistic's gradient is the true root's") {
    backward_case c;
    linear_deconv_config cfg;
    cfg.block = backward_case::fin;
    cfg.isqrt = isqrt_options::converged(1e-14, 2);  // unreachable in 2 steps
    layer_options options;
    options.on_failure = failure_policy::exact_fallback;
    linear_deconv_layer<double> layer(backward_case::fin, cfg, options);
    c.step(layer);
    REQUIRE(layer.diagnostic().outcome == step_outcome::exact_fallback);
    CHECK(layer.diagnostic().exact_blocks == std::vector<index_t>{0});
    c.backward(layer, layer.diagnostic());
    CHECK(c.reports[0].status == isqrt_status::ok);
    linear_deconv_config exact = cfg;
    exact.isqrt = isqrt_options::exact();
    reference(c, exact, layer.plan());
  }
}
