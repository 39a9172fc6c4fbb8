// SPDX-License-Identifier: MIT
// Parity with the reference layers' training forward and backward pass: the golden files of tests/reference/goldens
// (written by tests/reference/generate_goldens.py, an independent float64 PyTorch implementation of
// docs/method.md §2-7) hold x, W, b and the reference mean, D, W', b' and layer output y. The statistics step
// of the library, run in float32 and float64 with the matching configuration (interleaved_shared for
// groups == 1, grouped for groups > 1, contiguous_shared for linear layers), must reproduce them,
// and its backward (statistics_step_vjp.hpp) the goldens' autograd gradients dL/dx, dL/dW, dL/db.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <netdeconv/statistics_step.hpp>
#include <netdeconv/statistics_step_vjp.hpp>

#include "golden_file.hpp"
#include "flat_statistics.hpp"
#include "oracle.hpp"

#ifndef NETDECONV_GOLDEN_DIR
#error "NETDECONV_GOLDEN_DIR must name the goldens directory (see tests/meson.build)"
#endif

using namespace netdeconv;

namespace {

using golden_file::golden;
using golden_file::parse;

/// Number of cases generate_goldens.py writes; update both together.
constexpr std::size_t expected_golden_count = 16;

std::vector<golden> load_reference_goldens() {
  const std::filesystem::path dir(NETDECONV_GOLDEN_DIR);
  REQUIRE_MESSAGE(std::filesystem::is_directory(dir), "goldens directory ", dir.string(),
                  " is missing: run tests/reference/generate_goldens.py");
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".txt") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::vector<golden> out;
  for (const auto& f : files) out.push_back(parse(f));
  return out;
}

const std::vector<golden>& reference_goldens() {
  static const std::vector<golden> all = load_reference_goldens();
  return all;
}

template <class T, class U>
std::vector<T> converted(const std::vector<U>& v) {
  return std::vector<T>(v.begin(), v.end());
}

/// Exact float32 check of an input array (the generator rounds its inputs to float32).
bool float32_exact(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double a) { return double(float(a)) == a; });
}

/// Largest relative error seen per (type, quantity), reported at the end of each type's run.
template <class T>
std::map<std::string, double>& worst_error() {
  static std::map<std::string, double> m;
  return m;
}

template <class T>
void compare(const golden& g, const std::string& quantity, const std::vector<double>& out, double tol) {
  const auto& ref = g.array(quantity);
  CAPTURE(quantity);
  REQUIRE(out.size() == ref.size());
  const double err = oracle::rel_err(out, ref);
  auto& w = worst_error<T>()[quantity];
  w = std::max(w, err);
  CHECK_MESSAGE(err <= tol, g.name(), ": ", quantity, " relative error ", err, " > ", tol);
}

template <class T>
void compare_step(const golden& g, const statistics_step_result<T>& step, double tol) {
  CHECK(step.statistics.plan.block == g.get("block_adjusted"));
  CHECK(step.statistics.plan.count() == g.get("statistics"));
  CHECK(step.statistics.plan.features() == g.get("features"));
  CHECK(step.samples == g.get("samples"));
  REQUIRE(step.reports.size() == std::size_t(g.get("statistics")));
  for (const auto& r : step.reports) {
    CHECK(r.status == isqrt_status::ok);
    CHECK(r.iterations == g.get("n_iter"));
  }
  std::vector<double> mean, D;
  for (const auto& m : step.statistics.mean)
    for (index_t i = 0; i < m.size(); ++i) mean.push_back(double(m[i]));
  for (const auto& d : step.statistics.D)
    for (index_t i = 0; i < d.rows(); ++i)
      for (index_t j = 0; j < d.cols(); ++j) D.push_back(double(d(i, j)));
  compare<T>(g, "mean", mean, tol);
  compare<T>(g, "D", D, tol);
  compare<T>(g, "weight_folded", converted<double>(step.weight), tol);
  compare<T>(g, "bias_folded", converted<double>(step.bias), tol);
}

template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, float> ? 1e-4 : 1e-9;
}

/// The backward against PyTorch autograd: measured at most 1.8e-15 (float64) and 7.4e-7 (float32,
/// from float32 inputs) over the 16 cases, so 1e-12 and 1e-5 leave 500x and 13x headroom.
template <class T>
constexpr double backward_tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

/// The backward's outputs against the goldens' autograd: grad_x (logical order), grad_weight, grad_bias.
template <class T>
void compare_backward(const golden& g, const std::vector<double>& dx, const std::vector<T>& dw, const std::vector<T>& db,
                      const std::vector<isqrt_report>& reports, double tol) {
  for (const auto& r : reports) CHECK(r.status == isqrt_status::ok);
  compare<T>(g, "grad_x", dx, tol);
  compare<T>(g, "grad_weight", converted<double>(dw), tol);
  if (g.get("bias") != 0) compare<T>(g, "grad_bias", converted<double>(db), tol);
}

template <class T, class Policy>
void run_conv(const golden& g, const Policy& policy, int layout, double tol) {
  const index_t N = g.get("N"), C = g.get("C"), H = g.get("H"), W = g.get("W"), cout = g.get("Cout");
  const index_t k = g.get("kernel"), groups = g.get("groups");
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(k, g.get("stride"), g.get("padding"), g.get("dilation"));
  cfg.groups = groups;
  cfg.layout = groups == 1 ? block_layout::interleaved_shared : block_layout::grouped;
  cfg.block = g.get("block");
  cfg.sampling_stride = g.get("sampling_stride");
  cfg.eps = g.get_double("eps");
  cfg.isqrt = isqrt_options::fixed(int(g.get("n_iter")));

  const auto& xr = g.array("x");
  REQUIRE(index_t(xr.size()) == N * C * H * W);
  oracle::image<T> x(N, C, H, W, layout);
  for (index_t n = 0, i = 0; n < N; ++n)
    for (index_t c = 0; c < C; ++c)
      for (index_t y = 0; y < H; ++y)
        for (index_t xx = 0; xx < W; ++xx, ++i) x(n, c, y, xx) = T(xr[i]);
  const auto weight = converted<T>(g.array("weight"));
  REQUIRE(index_t(weight.size()) == cout * (C / groups) * k * k);
  const auto bias = (g.get("bias") != 0) ? converted<T>(g.array("bias")) : std::vector<T>{};
  const vector_view<const T> bias_view = bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), cout);

  const auto step = conv_statistics_step(policy, x.cview(), nchw(weight.data(), cout, C / groups, k, k), bias_view, cfg);
  compare_step(g, step, tol);
  // The layer output: the host framework's conv with (W', b'), here the float64 oracle conv.
  const auto y = oracle::conv2d(x, converted<double>(step.weight), converted<double>(step.bias), cout, cfg.geometry, groups);
  compare<T>(g, "y", y, tol);

  // The backward for the goldens' upstream gradients, dL/dx_stats in x's layout.
  const auto gw = converted<T>(g.array("grad_weight_folded")), gb = converted<T>(g.array("grad_bias_folded"));
  const checks::flat_statistics<T> stats(step.statistics);
  oracle::image<T> dx(N, C, H, W, layout);
  std::vector<T> dw(weight.size()), db(bias.size());
  std::vector<isqrt_report> reports(static_cast<std::size_t>(stats.view.plan.count()));
  conv_statistics_step_vjp(policy, x.cview(), nchw(weight.data(), cout, C / groups, k, k), bias_view, cfg, stats.view,
                           nchw(gw.data(), cout, C / groups, k, k), contiguous(gb.data(), cout),
                           {nchw(dw.data(), cout, C / groups, k, k), bias.empty() ? vector_view<T>{} : contiguous(db.data(), cout),
                            dx.view, contiguous(reports.data(), index_t(reports.size()))});
  std::vector<double> dx_logical;
  for (index_t n = 0; n < N; ++n)
    for (index_t c = 0; c < C; ++c)
      for (index_t yy = 0; yy < H; ++yy)
        for (index_t xx = 0; xx < W; ++xx) dx_logical.push_back(double(dx(n, c, yy, xx)));
  compare_backward<T>(g, dx_logical, dw, db, reports, backward_tolerance<T>());
}

template <class T, class Policy>
void run_linear(const golden& g, const Policy& policy, double tol) {
  const index_t rows = g.get("rows"), fin = g.get("Fin"), cout = g.get("Cout");
  linear_deconv_config cfg;
  cfg.layout = block_layout::contiguous_shared;
  cfg.block = g.get("block");
  cfg.eps = g.get_double("eps");
  cfg.isqrt = isqrt_options::fixed(int(g.get("n_iter")));
  const auto x = converted<T>(g.array("x"));
  const auto weight = converted<T>(g.array("weight"));
  REQUIRE(index_t(x.size()) == rows * fin);
  REQUIRE(index_t(weight.size()) == cout * fin);
  const auto bias = (g.get("bias") != 0) ? converted<T>(g.array("bias")) : std::vector<T>{};
  const vector_view<const T> bias_view = bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), cout);

  const auto step = linear_statistics_step(policy, row_major(x.data(), rows, fin),
                                           row_major(weight.data(), cout, fin), bias_view, cfg);
  compare_step(g, step, tol);
  std::vector<double> y(rows * cout);
  for (index_t r = 0; r < rows; ++r)
    for (index_t o = 0; o < cout; ++o) {
      double acc = double(step.bias[o]);
      for (index_t f = 0; f < fin; ++f) acc += double(x[r * fin + f]) * double(step.weight[o * fin + f]);
      y[r * cout + o] = acc;
    }
  compare<T>(g, "y", y, tol);

  const auto gw = converted<T>(g.array("grad_weight_folded")), gb = converted<T>(g.array("grad_bias_folded"));
  const checks::flat_statistics<T> stats(step.statistics);
  std::vector<T> dx(x.size()), dw(weight.size()), db(bias.size());
  std::vector<isqrt_report> reports(static_cast<std::size_t>(stats.view.plan.count()));
  linear_statistics_step_vjp(policy, row_major(x.data(), rows, fin), row_major(weight.data(), cout, fin), bias_view, cfg,
                             stats.view, row_major(gw.data(), cout, fin), contiguous(gb.data(), cout),
                             {row_major(dw.data(), cout, fin), bias.empty() ? vector_view<T>{} : contiguous(db.data(), cout),
                              row_major(dx.data(), rows, fin), contiguous(reports.data(), index_t(reports.size()))});
  compare_backward<T>(g, converted<double>(dx), dw, db, reports, backward_tolerance<T>());
}



}  // namespace

TEST_CASE("the golden files are all there and well formed") {
  const auto& all = reference_goldens();
  CHECK_MESSAGE(all.size() == expected_golden_count, "found ", all.size(), " golden files in " NETDECONV_GOLDEN_DIR
                ", expected ", expected_golden_count, " (regenerate with tests/reference/generate_goldens.py)");
  for (const auto& g : all) {
    CAPTURE(g.file);
    CHECK(g.file == g.name() + ".txt");
    const std::string kind = g.header.at("kind");
    CHECK((kind == "conv" || kind == "linear"));
    CHECK(float32_exact(g.array("x")));
    CHECK(float32_exact(g.array("weight")));
    CHECK(g.arrays.count("bias") == std::size_t((g.get("bias") != 0)));
    if ((g.get("bias") != 0)) CHECK(float32_exact(g.array("bias")));
    for (const char* key : {"mean", "D", "weight_folded", "bias_folded", "y", "grad_weight_folded", "grad_bias_folded", "grad_x",
                            "grad_weight"})
      CHECK(g.arrays.count(key) == 1);
    CHECK(g.arrays.count("grad_bias") == std::size_t(g.get("bias") != 0));
  }
}

TEST_CASE_TEMPLATE("the statistics step reproduces the reference layers' training forward", T, float, double) {
  const auto& all = reference_goldens();
  REQUIRE_MESSAGE(!all.empty(), "no golden files in " NETDECONV_GOLDEN_DIR);
  worst_error<T>().clear();
  for (const auto& g : all) {
    const std::string name = g.name();
    CAPTURE(name);
    for (int policy = 0; policy < 2; ++policy) {
      CAPTURE(policy);  // 0 = seq, 1 = par
      if (g.header.at("kind") == "conv") {
        for (int layout = 0; layout < 3; ++layout) {
          CAPTURE(layout);  // oracle::image: 0 NCHW, 1 NHWC, 2 strided
          if (policy == 0)
            run_conv<T>(g, seq, layout, tolerance<T>());
          else
            run_conv<T>(g, par, layout, tolerance<T>());
        }
      } else if (policy == 0) {
        run_linear<T>(g, seq, tolerance<T>());
      } else {
        run_linear<T>(g, par, tolerance<T>());
      }
    }
  }
  std::string summary;
  for (const auto& [quantity, err] : worst_error<T>()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.3g", err);
    summary += " " + quantity + "=" + buf;
  }
  MESSAGE((std::is_same_v<T, float> ? "float32" : "float64"), " max relative errors over ", all.size(),
          " cases:", summary);
}
