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

TEST_CASE("sharded statistics: the per-shard backwards, given the merged statistics' gradients, sum to the whole batch's") {
  // Data-parallel training: every shard of the batch (uneven, one empty) computes block_moments and
  // the merged moments give Cov; fold_vjp gives dL/dD and dL/dmu (summed over the processes in
  // practice; here one set of upstream gradients), inverse_sqrt_vjp at the merged Cov gives
  // dL/dCov, and conv_covariance_vjp adds each shard's rows. Their union is
  // conv_statistics_step_vjp on the whole batch. Merging changes the order of the moments' sums,
  // so they agree to float64 rounding: checked at 1e-11.
  rng_t rng(1204);
  const block_layout layouts[] = {block_layout::interleaved_shared, block_layout::grouped, block_layout::independent};
  for (int trial = 0; trial < 3; ++trial) {
    conv_deconv_config cfg;
    cfg.layout = layouts[trial];
    cfg.geometry = conv_geometry::square(3, 1, 1);
    cfg.groups = trial == 0 ? 1 : 2;
    cfg.block = 2;
    cfg.sampling_stride = 2;
    cfg.eps = 1e-1;
    const index_t N = 5, C = 4, H = 6, W = 6, cout = 4, Cg = C / cfg.groups;
    CAPTURE(cfg.layout);
    const std::vector<double> x = normal_vector(rng, std::size_t(N * C * H * W), 0.5), w = normal_vector(rng, std::size_t(cout * Cg * 9)),
                              b = normal_vector(rng, std::size_t(cout)), gw = normal_vector(rng, w.size()),
                              gb = normal_vector(rng, b.size());
    const auto xv = nchw<const double>(x.data(), N, C, H, W);
    const auto wv = nchw<const double>(w.data(), cout, Cg, 3, 3), gwv = nchw<const double>(gw.data(), cout, Cg, 3, 3);
    const auto bv = contiguous<const double>(b.data(), cout), gbv = contiguous<const double>(gb.data(), cout);
    const block_plan plan = conv_statistics_plan(C, cfg);
    const index_t S = plan.count(), F = plan.features();
    const checks::flat_statistics<double> flat(conv_statistics_step(seq, xv, wv, bv, cfg).statistics);
    std::vector<double> dw(w.size()), db(b.size()), dx(x.size());
    std::vector<isqrt_report> reports(static_cast<std::size_t>(S));
    conv_statistics_step_vjp(seq, xv, wv, bv, cfg, flat.view, gwv, gbv,
                             {nchw(dw.data(), cout, Cg, 3, 3), contiguous(db.data(), cout), nchw(dx.data(), N, C, H, W),
                              contiguous(reports.data(), S)});
    // the shards [0, 2), [2, 2), [2, 5) of the batch, their moments merged
    const index_t bounds[] = {0, 2, 2, N};
    const auto shard = [&](int k) { return nchw<const double>(x.data() + bounds[k] * C * H * W, bounds[k + 1] - bounds[k], C, H, W); };
    struct moments_buffers {
      std::vector<index_t> count;
      std::vector<double> mean, scatter;
      moments_view<double> view;
      moments_buffers(index_t S, index_t F)
          : count(static_cast<std::size_t>(S)), mean(static_cast<std::size_t>(S * F)), scatter(static_cast<std::size_t>(S * F * F)),
            view(contiguous_moments(count.data(), mean.data(), scatter.data(), S, F)) {}
    };
    moments_buffers merged(S, F), part(S, F), sum(S, F);
    block_moments(par, patch_sampler<double>(shard(0), cfg.geometry, cfg.sampling_stride), plan, merged.view);
    for (int k = 1; k < 3; ++k) {
      if (bounds[k + 1] == bounds[k])  // an empty shard has no moments (block_moments needs >= 2 samples): count 0
        std::fill(part.count.begin(), part.count.end(), 0), std::fill(part.mean.begin(), part.mean.end(), 0.0),
            std::fill(part.scatter.begin(), part.scatter.end(), 0.0);
      else
        block_moments(par, patch_sampler<double>(shard(k), cfg.geometry, cfg.sampling_stride), plan, part.view);
      merge(par, merged.view, part.view, sum.view);
      std::swap(merged.count, sum.count), std::swap(merged.mean, sum.mean), std::swap(merged.scatter, sum.scatter);
      std::swap(merged.view, sum.view);
    }
    std::vector<double> cov(static_cast<std::size_t>(S * F * F)), gD(cov.size()), dcov(cov.size()), gmean(static_cast<std::size_t>(S * F));
    std::vector<double> dw2(w.size()), db2(b.size()), dx2(x.size(), 0.0);
    const tensor_view<double, 3> cov_v{cov.data(), {S, F, F}, {F * F, F, 1}}, gD_v{gD.data(), {S, F, F}, {F * F, F, 1}},
        dcov_v{dcov.data(), {S, F, F}, {F * F, F, 1}};
    covariance(par, merged.view, cfg.eps, cov_v);
    fold_vjp(par, flat.view, wv, bv, gwv, gbv, nchw(dw2.data(), cout, Cg, 3, 3), contiguous(db2.data(), cout), gD_v,
             row_major(gmean.data(), S, F));
    inverse_sqrt_vjp(par, tensor_view<const double, 3>(cov_v), tensor_view<const double, 3>(gD_v), dcov_v, cfg.isqrt,
                     contiguous(reports.data(), S));
    for (const isqrt_report& r : reports) REQUIRE(r.status == isqrt_status::ok);
    for (int k = 0; k < 3; ++k)
      conv_covariance_vjp(par, shard(k), cfg, merged.view, tensor_view<const double, 3>(dcov_v),
                          row_major<const double>(gmean.data(), S, F),
                          nchw(dx2.data() + bounds[k] * C * H * W, bounds[k + 1] - bounds[k], C, H, W));
    CHECK(oracle::rel_err(dx2, dx) < 1e-11);
    CHECK(oracle::rel_err(dw2, dw) < 1e-12);
    CHECK(db2 == db);
  }
}

TEST_CASE("the backward's pieces refuse bad arguments") {
  const index_t S = 1, F = 2, rows = 4;
  std::vector<double> x(rows * F, 1.0), dx(x.size()), dcov(F * F), dmean(F), mean(F), scatter(F * F);
  std::vector<index_t> count{0};
  linear_deconv_config cfg;
  cfg.block = F;
  const auto m = contiguous_moments<const double>(count.data(), mean.data(), scatter.data(), S, F);
  const auto call = [&](const moments_view<const double>& mv, const matrix_view<double>& out) {
    linear_covariance_vjp(seq, row_major<const double>(x.data(), rows, F), cfg, mv, {dcov.data(), {S, F, F}, {F * F, F, 1}},
                          row_major<const double>(dmean.data(), S, F), out);
  };
  CHECK_THROWS_WITH_AS(call(m, row_major(dx.data(), rows, F)), doctest::Contains("statistic 0 has 0 samples"), invalid_argument);
  count[0] = 4;
  dcov[1] = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(call(m, row_major(dx.data(), rows, F)), doctest::Contains("must be finite"), invalid_argument);
  dcov[1] = 0;
  CHECK_THROWS_WITH_AS(call(m, row_major(x.data(), rows, F)), doctest::Contains("dx overlaps x"), invalid_argument);
  CHECK_THROWS_WITH_AS(call(m, row_major(dx.data(), rows - 1, F)), doctest::Contains("dx must have x's shape"), invalid_argument);
  call(m, row_major(dx.data(), rows, F));  // every row equals the mean: dL/dx = dmean / n = 0 here
  for (const double v : dx) CHECK(v == 0.0);
}
