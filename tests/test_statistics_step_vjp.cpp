// SPDX-License-Identifier: MIT
// The statistics step's backward (statistics_step_vjp.hpp) against float64 central finite
// differences of the forward (conv_statistics_step / linear_statistics_step, themselves checked
// against float64 oracles and the PyTorch goldens) on random layouts, groups, geometry, sampling
// strides and memory layouts: L = <G, W'> + <g, b'>, perturbed in x (dL/dx_stats: W' and b'
// depend on x only through mu and Cov), W and b.

#include <doctest/doctest.h>

#include <netdeconv/statistics_step.hpp>
#include <netdeconv/statistics_step_vjp.hpp>

#include "flat_statistics.hpp"
#include "oracle.hpp"

using namespace netdeconv;

namespace {

using rng_t = std::mt19937_64;

index_t uniform(rng_t& rng, index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); }

std::vector<double> normal_vector(rng_t& rng, std::size_t n, double offset = 0) {
  std::normal_distribution<double> d(offset, 1.0);
  std::vector<double> v(n);
  for (double& e : v) e = d(rng);
  return v;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

/// |analytic - central difference| over a few random entries of `values`, relative to the
/// largest analytic entry; L() is evaluated with values[i] +- h.
template <class Loss>
double worst_difference(std::vector<double>& values, const std::vector<double>& analytic, Loss&& L, rng_t& rng) {
  double scale = 1e-300, worst = 0;
  for (const double a : analytic) scale = std::max(scale, std::abs(a));
  for (int k = 0; k < 6; ++k) {
    const std::size_t i = std::size_t(uniform(rng, 0, index_t(values.size()) - 1));
    const double keep = values[i], h = 1e-6 * std::max(1.0, std::abs(keep));
    values[i] = keep + h;
    const double up = L();
    values[i] = keep - h;
    const double down = L();
    values[i] = keep;
    worst = std::max(worst, std::abs(analytic[i] - (up - down) / (2 * h)) / scale);
  }
  return worst;
}

}  // namespace

TEST_CASE("conv statistics step backward matches finite differences (float64)") {
  rng_t rng(1201);
  const block_layout layouts[] = {block_layout::interleaved_shared, block_layout::grouped, block_layout::independent};
  for (int trial = 0; trial < 12; ++trial) {
    conv_deconv_config cfg;
    cfg.layout = layouts[trial % 3];
    cfg.geometry = trial % 4 == 3 ? conv_geometry{} : conv_geometry::square(uniform(rng, 2, 3), uniform(rng, 1, 2), 1);
    cfg.geometry.dilation_w = trial % 5 == 1 ? 2 : 1;
    const index_t C = cfg.layout == block_layout::grouped ? 2 * uniform(rng, 1, 2) : uniform(rng, 1, 4);
    cfg.groups = cfg.layout == block_layout::grouped || (cfg.layout == block_layout::independent && C % 2 == 0) ? 2 : 1;
    cfg.block = cfg.layout == block_layout::independent ? (trial % 2 ? 1 : C / cfg.groups) : uniform(rng, 1, 3);
    cfg.sampling_stride = uniform(rng, 1, 2);
    cfg.eps = 1e-1;
    cfg.isqrt = trial % 3 == 2 ? isqrt_options::exact() : isqrt_options::fixed(uniform(rng, 1, 5));
    if (trial % 4 == 1) cfg.isqrt.scaling = isqrt_scaling::trace;
    const index_t N = 2, H = uniform(rng, 5, 7), W = uniform(rng, 5, 7), kh = cfg.geometry.kernel_h, kw = cfg.geometry.kernel_w;
    const index_t cout = cfg.groups * uniform(rng, 1, 2);
    const bool channels_last = trial % 2 == 0, with_bias = trial % 3 != 1;
    std::vector<double> x = normal_vector(rng, std::size_t(N * C * H * W), 0.5), w = normal_vector(rng, std::size_t(cout * (C / cfg.groups) * kh * kw)),
                        b = with_bias ? normal_vector(rng, std::size_t(cout)) : std::vector<double>{};
    const std::vector<double> gw = normal_vector(rng, w.size()), gb = normal_vector(rng, std::size_t(cout));
    const auto xv = [&] { return channels_last ? netdeconv::nhwc<const double>(x.data(), N, H, W, C) : nchw<const double>(x.data(), N, C, H, W); };
    const auto wv = [&] { return nchw<const double>(w.data(), cout, C / cfg.groups, kh, kw); };
    const auto bv = [&] { return with_bias ? contiguous<const double>(b.data(), cout) : vector_view<const double>{}; };
    const auto loss = [&] {
      const auto step = conv_statistics_step(seq, xv(), wv(), bv(), cfg);
      return dot(step.weight, gw) + dot(step.bias, gb);
    };
    CAPTURE(trial);
    CAPTURE(cfg.layout);
    const auto step = conv_statistics_step(seq, xv(), wv(), bv(), cfg);
    const block_plan plan = conv_statistics_plan(C, cfg);
    const index_t S = plan.count();
    const checks::flat_statistics<double> flat(step.statistics);
    const block_statistics_view<const double>& stats = flat.view;
    std::vector<double> dw(w.size()), db(b.size()), dx(x.size()), pw(w.size()), pb(b.size()), px(x.size());
    const auto backward = [&](const auto& policy, std::vector<double>& gx, std::vector<double>& gwt, std::vector<double>& gbias) {
      std::vector<isqrt_report> reports(static_cast<std::size_t>(S));
      const statistics_step_gradients<double, 4> out{
          nchw(gwt.data(), cout, C / cfg.groups, kh, kw), with_bias ? contiguous(gbias.data(), cout) : vector_view<double>{},
          channels_last ? netdeconv::nhwc(gx.data(), N, H, W, C) : nchw(gx.data(), N, C, H, W), contiguous(reports.data(), S)};
      conv_statistics_step_vjp(policy, xv(), wv(), bv(), cfg, stats, nchw<const double>(gw.data(), cout, C / cfg.groups, kh, kw),
                               contiguous<const double>(gb.data(), cout), out);
      for (const isqrt_report& r : reports) REQUIRE(r.status == isqrt_status::ok);
    };
    backward(seq, dx, dw, db);
    CHECK(worst_difference(x, dx, loss, rng) < 1e-6);
    CHECK(worst_difference(w, dw, loss, rng) < 1e-6);
    if (with_bias) CHECK(db == gb);
    // par (tiled scatter, the symmetric iteration's gradient) against seq: float64 rounding apart
    backward(par, px, pw, pb);
    CHECK(oracle::rel_err(px, dx) < 1e-12);
    CHECK(oracle::rel_err(pw, dw) < 1e-12);
    CHECK(pb == db);
  }
}

TEST_CASE("linear statistics step backward matches finite differences (float64)") {
  rng_t rng(1202);
  for (int trial = 0; trial < 6; ++trial) {
    linear_deconv_config cfg;
    cfg.layout = trial % 2 ? block_layout::contiguous_shared : block_layout::independent;
    cfg.block = uniform(rng, 1, 3);
    const index_t Fin = cfg.block * uniform(rng, 1, 3), rows = uniform(rng, 12, 40), cout = uniform(rng, 1, 3);
    cfg.eps = 1e-1;
    cfg.isqrt = trial % 3 == 2 ? isqrt_options::converged(1e-12, 200) : isqrt_options::fixed(5);
    std::vector<double> x = normal_vector(rng, std::size_t(rows * (Fin + 1)), 0.5), w = normal_vector(rng, std::size_t(cout * Fin)),
                        b = normal_vector(rng, std::size_t(cout));
    const std::vector<double> gw = normal_vector(rng, w.size()), gb = normal_vector(rng, b.size());
    const auto xv = [&] { return matrix_view<const double>{x.data(), {rows, Fin}, {Fin + 1, 1}}; };  // padded rows
    const auto forward_cfg = [&] {  // converged mode's finite differences use the exact root (no iteration-count jumps)
      linear_deconv_config f = cfg;
      if (f.isqrt.tolerance > 0) f.isqrt = isqrt_options::exact();
      return f;
    };
    const auto loss = [&] {
      const auto step = linear_statistics_step(seq, xv(), row_major<const double>(w.data(), cout, Fin),
                                               contiguous<const double>(b.data(), cout), forward_cfg());
      return dot(step.weight, gw) + dot(step.bias, gb);
    };
    CAPTURE(trial);
    const auto step = linear_statistics_step(seq, xv(), row_major<const double>(w.data(), cout, Fin),
                                             contiguous<const double>(b.data(), cout), cfg);
    const block_plan plan = linear_statistics_plan(Fin, cfg);
    const index_t S = plan.count();
    const checks::flat_statistics<double> flat(step.statistics);
    const block_statistics_view<const double>& stats = flat.view;
    std::vector<double> dw(w.size()), db(b.size()), dx(x.size(), 99.0), pw(w.size()), pb(b.size()), px(x.size(), 99.0);
    const auto backward = [&](const auto& policy, std::vector<double>& gx, std::vector<double>& gwt, std::vector<double>& gbias) {
      std::vector<isqrt_report> reports(static_cast<std::size_t>(S));
      const statistics_step_gradients<double, 2> out{row_major(gwt.data(), cout, Fin), contiguous(gbias.data(), cout),
                                                     {gx.data(), {rows, Fin}, {Fin + 1, 1}}, contiguous(reports.data(), S)};
      linear_statistics_step_vjp(policy, xv(), row_major<const double>(w.data(), cout, Fin), contiguous<const double>(b.data(), cout),
                                 cfg, stats, row_major<const double>(gw.data(), cout, Fin),
                                 contiguous<const double>(gb.data(), cout), out);
      for (const isqrt_report& r : reports) REQUIRE(r.status == isqrt_status::ok);
    };
    backward(seq, dx, dw, db);
    backward(par, px, pw, pb);
    CHECK(oracle::rel_err(px, dx) < 1e-12);  // par against seq: float64 rounding apart
    CHECK(oracle::rel_err(pw, dw) < 1e-12);
    CHECK(pb == db);
    for (index_t r = 0; r < rows; ++r) {  // the padding is untouched, and L does not depend on it
      CHECK(dx[std::size_t(r * (Fin + 1) + Fin)] == 99.0);
      dx[std::size_t(r * (Fin + 1) + Fin)] = 0.0;
    }
    CHECK(worst_difference(x, dx, loss, rng) < 1e-6);
    CHECK(worst_difference(w, dw, loss, rng) < 1e-6);
    CHECK(db == gb);
  }
}

TEST_CASE("statistics step backward refuses mismatched gradients and outputs") {
  const index_t rows = 8, Fin = 4, cout = 2;
  std::vector<double> x(rows * Fin, 1.0), w(cout * Fin, 0.5), b(cout), gw(w.size()), gb(cout), mean(Fin), D(Fin * Fin),
      dw(w.size()), db(cout), dx(x.size());
  for (index_t i = 0; i < rows * Fin; ++i) x[std::size_t(i)] = double(i % 7) - 0.3 * double(i % 3);
  linear_deconv_config cfg;
  cfg.block = 4;
  const block_plan plan = linear_statistics_plan(Fin, cfg);
  std::vector<isqrt_report> reports(1);
  const block_statistics_view<const double> stats{plan, row_major<const double>(mean.data(), 1, Fin),
                                                  {D.data(), {1, Fin, Fin}, {Fin * Fin, Fin, 1}}};
  const auto call = [&](matrix_view<const double> g, const statistics_step_gradients<double, 2>& out) {
    linear_statistics_step_vjp(seq, row_major<const double>(x.data(), rows, Fin), row_major<const double>(w.data(), cout, Fin),
                               contiguous<const double>(b.data(), cout), cfg, stats, g, contiguous<const double>(gb.data(), cout),
                               out);
  };
  const statistics_step_gradients<double, 2> good{row_major(dw.data(), cout, Fin), contiguous(db.data(), cout),
                                                  row_major(dx.data(), rows, Fin), contiguous(reports.data(), 1)};
  CHECK_THROWS_WITH_AS(call(row_major<const double>(gw.data(), 1, Fin), good), doctest::Contains("grad_weight must have the weight's shape"),
                       invalid_argument);
  statistics_step_gradients<double, 2> bad = good;
  bad.x = row_major(dx.data(), rows - 1, Fin);
  CHECK_THROWS_WITH_AS(call(row_major<const double>(gw.data(), cout, Fin), bad), doctest::Contains("out.x must have x's shape"),
                       invalid_argument);
  bad = good;
  bad.weight = row_major(gw.data(), cout, Fin);
  CHECK_THROWS_WITH_AS(call(row_major<const double>(gw.data(), cout, Fin), bad), doctest::Contains("out.weight overlaps grad_weight"),
                       invalid_argument);
  bad = good;
  bad.x = row_major(x.data(), rows, Fin);
  CHECK_THROWS_WITH_AS(call(row_major<const double>(gw.data(), cout, Fin), bad), doctest::Contains("out.x overlaps x"),
                       invalid_argument);
}

TEST_CASE("statistics step backward on 1 and 2 threads agrees within rounding (float32)") {
  // The scatter's result does not depend on the thread count; the parallel block_moments merges
  // its row ranges in another order (double rounding of Cov) and the products of the inverse
  // square root's gradient split their columns over the threads (float rounding). par against
  // seq adds the float tiled products and the symmetric iterates' gradient. Both checked at
  // 1e-5, the float32 bound of the inverse square root's gradient.
  rng_t rng(1203);
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(3, 1, 1);
  cfg.block = 8;
  cfg.sampling_stride = 1;
  const index_t N = 4, C = 16, H = 12, W = 12, cout = 5;
  const auto to_float = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  const std::vector<float> x = to_float(normal_vector(rng, std::size_t(N * C * H * W), 0.5)),
                           w = to_float(normal_vector(rng, std::size_t(cout * C * 9))),
                           b = to_float(normal_vector(rng, std::size_t(cout))), gw = to_float(normal_vector(rng, w.size())),
                           gb = to_float(normal_vector(rng, b.size()));
  const auto xv = nchw<const float>(x.data(), N, C, H, W);
  const auto wv = nchw<const float>(w.data(), cout, C, 3, 3);
  const auto step = conv_statistics_step(seq, xv, wv, contiguous<const float>(b.data(), cout), cfg);
  const block_plan plan = conv_statistics_plan(C, cfg);
  const index_t S = plan.count();
  const checks::flat_statistics<float> flat(step.statistics);
  const block_statistics_view<const float>& stats = flat.view;
  const auto run = [&](const auto& policy) {
    std::vector<float> dw(w.size()), db(b.size()), dx(x.size());
    std::vector<isqrt_report> reports(static_cast<std::size_t>(S));
    conv_statistics_step_vjp(policy, xv, wv, contiguous<const float>(b.data(), cout), cfg, stats,
                             nchw<const float>(gw.data(), cout, C, 3, 3), contiguous<const float>(gb.data(), cout),
                             {nchw(dw.data(), cout, C, 3, 3), contiguous(db.data(), cout), nchw(dx.data(), N, C, H, W),
                              contiguous(reports.data(), S)});
    dw.insert(dw.end(), dx.begin(), dx.end());
    return std::vector<double>(dw.begin(), dw.end());
  };
  const std::vector<double> one = run(simd_threads(1)), two = run(simd_threads(2)), reference = run(seq);
  const double err = oracle::rel_err(two, one), off = oracle::rel_err(two, reference);
  MESSAGE("1 against 2 threads: relative difference ", err, "; par against seq: ", off);
  CHECK(err < 1e-5);
  CHECK(off < 1e-5);
  CHECK(run(simd_threads(2)) == two);  // the same thread count is deterministic
}
