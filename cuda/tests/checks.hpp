// SPDX-License-Identifier: MIT
#pragma once
// Comparisons of a CUDA backend B with the CPU oracle (netdeconv::seq) on random shapes: every
// block layout, odd sizes, several tiles and row chunks, batched blocks, NCHW and NHWC, float and
// double. B is cuda::emulate::backend (host emulation of the kernels, always run) or the GPU
// wrappers (test_cuda.cpp, run when a GPU is visible). Plain C++ + doctest + Eigen.

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <doctest/doctest.h>
#include <Eigen/Core>

#include <netdeconv/eigen.hpp>
#include <netdeconv/blocks.hpp>
#include <netdeconv/covariance.hpp>
#include <netdeconv/fold.hpp>
#include <netdeconv/im2col.hpp>
#include <netdeconv/inverse_sqrt.hpp>
#include <netdeconv/moments.hpp>
#include <netdeconv/whiten.hpp>
#include <netdeconv/cuda/index_math.hpp>

#include "tf32_model.hpp"

namespace netdeconv::cuda::checks {

using rng_t = std::mt19937_64;

inline index_t uniform(rng_t& rng, index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); }

template <class T>
std::vector<T> random_vector(rng_t& rng, std::size_t n, double offset = 0, double scale = 1) {
  std::normal_distribution<double> d(offset, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = T(d(rng));
  return v;
}

/// A random image (N, C, H, W) in NCHW or NHWC memory, or with padded (non-contiguous) strides.
template <class T>
struct image_case {
  std::vector<T> data;
  index_t N, C, H, W;
  std::array<index_t, 4> stride;
  image_view<const T> cpu() const { return {data.data(), {N, C, H, W}, stride}; }
  device_view<const T, 4> dev() const { return {data.data(), {N, C, H, W}, {stride[0], stride[1], stride[2], stride[3]}}; }
};

template <class T>
image_case<T> random_image(rng_t& rng, index_t N, index_t C, index_t H, index_t W, double offset = 0) {
  image_case<T> c{{}, N, C, H, W, {}};
  switch (uniform(rng, 0, 2)) {
    case 0: c.stride = {C * H * W, H * W, W, 1}; break;                          // NCHW
    case 1: c.stride = {H * W * C, 1, W * C, C}; break;                          // NHWC
    default: c.stride = {C * H * (W + 3), H * (W + 3), W + 3, 1}; break;         // padded rows
  }
  c.data = random_vector<T>(rng, std::size_t(std::max<index_t>(N * c.stride[0], 1)), offset);
  return c;
}

inline conv_geometry random_geometry(rng_t& rng) {
  conv_geometry g;
  g.kernel_h = uniform(rng, 1, 4);
  g.kernel_w = uniform(rng, 1, 4);
  g.stride_h = uniform(rng, 1, 2);
  g.stride_w = uniform(rng, 1, 3);
  g.pad_h = uniform(rng, 0, 2);
  g.pad_w = uniform(rng, 0, 1);
  g.dilation_h = uniform(rng, 1, 2);
  g.dilation_w = uniform(rng, 1, 2);
  return g;
}

template <class T>
double tol() {
  return std::is_same_v<T, float> ? 2e-4 : 1e-11;
}

/// max |a - b| / max(1, max |b|)
template <class A, class B>
double rel_diff(const A& a, const B& b) {
  double diff = 0, scale = 1;
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < std::size_t(a.size()); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return diff / scale;
}

template <class B, class T>
void check_im2col(rng_t& rng) {
  for (int trial = 0; trial < 25; ++trial) {
    const conv_geometry g = random_geometry(rng);
    const auto x = random_image<T>(rng, uniform(rng, 1, 2), uniform(rng, 1, 5), uniform(rng, 1, 9), uniform(rng, 1, 9));
    const index_t rows = x.N * g.out_h(x.H) * g.out_w(x.W), cols = x.C * g.kernel_area();
    std::vector<T> expected(std::size_t(rows * cols));
    im2col(seq, x.cpu(), g, row_major(expected.data(), rows, cols));
    CAPTURE(trial);
    CHECK(B::template im2col<T>(x.dev(), x.data.size(), to_geometry(g)) == expected);

    const std::vector<T> y = random_vector<T>(rng, expected.size());
    std::vector<T> back(std::size_t(x.N * x.C * x.H * x.W));
    col2im(seq, row_major<const T>(y.data(), rows, cols), g, nchw(back.data(), x.N, x.C, x.H, x.W));
    CHECK(rel_diff(B::template col2im<T>(y, x.N, x.C, x.H, x.W, to_geometry(g)), back) < tol<T>());
  }
}

template <class Moments>
void check_moments(const Moments& got, const std::vector<moments<double>>& expected, double tolerance) {
  REQUIRE(got.statistics == index_t(expected.size()));
  const index_t F = got.features;
  for (index_t s = 0; s < got.statistics; ++s) {
    CAPTURE(s);
    CHECK(got.count[s] == expected[s].count());
    const Eigen::Map<const Eigen::VectorXd> mean(got.mean.data() + s * F, F);
    const Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> M(got.scatter.data() + s * F * F, F, F);
    const Eigen::MatrixXd M_ref = expected[s].scatter().selfadjointView<Eigen::Lower>();
    const double n = double(expected[s].count());
    CHECK((mean - expected[s].mean()).cwiseAbs().maxCoeff() <= tolerance * (1 + expected[s].mean().cwiseAbs().maxCoeff()));
    CHECK((M - M_ref).cwiseAbs().maxCoeff() / n <= tolerance * (1 + M_ref.cwiseAbs().maxCoeff() / n));
    CHECK((M - M.transpose()).cwiseAbs().maxCoeff() == 0.0);
  }
}

/// Random plan of `layout` for C channels and kernel area K (block sizes that exercise the
/// adjustment rule, one or several tiles, batched statistics).
inline block_plan random_plan(rng_t& rng, block_layout layout, index_t C, index_t K) {
  if (layout == block_layout::grouped) {
    std::vector<index_t> divisors;
    for (index_t d = 2; d <= C; ++d)
      if (C % d == 0) divisors.push_back(d);
    return make_block_plan(layout, C, K, 1, divisors[std::size_t(uniform(rng, 0, index_t(divisors.size()) - 1))]);
  }
  if (layout == block_layout::independent) {
    std::vector<index_t> divisors;
    for (index_t d = 1; d <= C; ++d)
      if (C % d == 0) divisors.push_back(d);
    return make_block_plan(layout, C, K, divisors[std::size_t(uniform(rng, 0, index_t(divisors.size()) - 1))]);
  }
  return make_block_plan(layout, C, K, uniform(rng, 1, C + 2));
}

/// The random cases of the block-moments checks: 24 sampled images (conv layouts, both sampling
/// rules, one or several 64-feature tiles, NCHW/NHWC/padded) passed to image(x, g, S, plan, trial),
/// then 8 matrices X (n rows of Fin features, row stride Fin + 1, up to 3000 rows: several row
/// chunks; contiguous_shared and independent) passed to matrix(X, n, Fin, plan).
template <class T, class Image, class Matrix>
void for_each_moments_case(rng_t& rng, Image&& image, Matrix&& matrix) {
  const block_layout conv_layouts[] = {block_layout::interleaved_shared, block_layout::grouped, block_layout::independent};
  for (int trial = 0; trial < 24; ++trial) {
    const block_layout layout = conv_layouts[trial % 3];
    conv_geometry g = random_geometry(rng);
    if (trial % 4 == 0) g.kernel_h = g.kernel_w = 1;  // pointwise sampling rule
    const bool wide = trial % 5 == 0;                   // several 64-feature tiles
    const index_t C = layout == block_layout::grouped ? 2 * uniform(rng, 1, 4) : uniform(rng, 1, wide ? 24 : 7);
    const index_t S = uniform(rng, 1, 3);
    const auto x = random_image<T>(rng, uniform(rng, 1, 3), C, uniform(rng, 4, 17), uniform(rng, 4, 15), 3.0);
    const patch_sampler<T> sampler(x.cpu(), g, S);
    const block_plan plan = random_plan(rng, layout, C, g.kernel_area());
    if (sampler.rows() * plan.rows_per_patch() < 2) continue;
    CAPTURE(trial);
    CAPTURE(layout);
    CAPTURE(plan.block);
    image(x, g, S, plan, trial);
  }
  for (int trial = 0; trial < 8; ++trial) {  // matrix rows: contiguous_shared and independent, many rows (chunks)
    const index_t Fin = uniform(rng, 1, 70), n = uniform(rng, 2, 3000);
    const block_layout layout = trial % 2 ? block_layout::contiguous_shared : block_layout::independent;
    const block_plan plan = random_plan(rng, layout, Fin, 1);
    const std::vector<T> X = random_vector<T>(rng, std::size_t(n * (Fin + 1)), -2.0);
    CAPTURE(trial);
    matrix(X, n, Fin, plan);
  }
}

template <class B, class T>
void check_block_moments(rng_t& rng) {
  for_each_moments_case<T>(
      rng,
      [](const image_case<T>& x, const conv_geometry& g, index_t S, const block_plan& bp, int trial) {
        const auto expected = block_moments(seq, patch_sampler<T>(x.cpu(), g, S), bp);
        check_moments(B::template block_moments_image<T>(x.dev(), x.data.size(), to_geometry(g), S, to_plan(bp), trial % 2),
                      expected, tol<T>());
      },
      [](const std::vector<T>& X, index_t n, index_t Fin, const block_plan& bp) {
        const auto expected = block_moments(seq, netdeconv::matrix_rows<T>(matrix_view<const T>{X.data(), {n, Fin}, {Fin + 1, 1}}), bp);
        check_moments(B::template block_moments_matrix<T>(device_view<const T, 2>{X.data(), {n, Fin}, {Fin + 1, 1}}, X.size(),
                                                          to_plan(bp)),
                      expected, tol<T>());
      });
}

/// TF32 moments (cov_precision::tf32) against the float64 oracle. Tolerance of entry (i, j) of M/n:
/// the kernel forms sum_q a~_q b~_q over the shifted samples a_q = x_qi - c_i, b_q = x_qj - c_j
/// (c: the statistic's first sample, shift(s, i)), with a~ = a (1 + e_a), |e_a| <= u = 2^-11 (TF32
/// unit roundoff: nearest, 10 explicit mantissa bits), so each product errs by <= (2u + u^2)|a b|
/// and the sum by <= (2u + u^2) sqrt(S_ii S_jj) (Cauchy-Schwarz), S_ii = sum_q a_q^2 =
/// M_ii + n (mean_i - c_i)^2; divided by n, plus the FP32 path's accumulation allowance
/// tol<float>() (1 + max |M/n|). The means (FP32 sums of unrounded samples) keep tol<float>().
template <class Moments, class Shift>
void check_moments_tf32(const Moments& got, const std::vector<moments<double>>& expected, Shift&& shift) {
  REQUIRE(got.statistics == index_t(expected.size()));
  const index_t F = got.features;
  const double u = std::ldexp(1.0, -11), product = 2 * u + u * u;
  for (index_t s = 0; s < got.statistics; ++s) {
    CAPTURE(s);
    CHECK(got.count[s] == expected[s].count());
    const Eigen::Map<const Eigen::VectorXd> mean(got.mean.data() + s * F, F);
    const Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> M(got.scatter.data() + s * F * F, F, F);
    const Eigen::MatrixXd M_ref = expected[s].scatter().selfadjointView<Eigen::Lower>();
    const Eigen::VectorXd mu = expected[s].mean();
    const double n = double(expected[s].count());
    CHECK((mean - mu).cwiseAbs().maxCoeff() <= tol<float>() * (1 + mu.cwiseAbs().maxCoeff()));
    Eigen::VectorXd S(F);
    for (index_t i = 0; i < F; ++i) S[i] = M_ref(i, i) + n * (mu[i] - shift(s, i)) * (mu[i] - shift(s, i));
    const double allowance = tol<float>() * (1 + M_ref.cwiseAbs().maxCoeff() / n);
    double worst = 0;  // largest error / tolerance
    for (index_t i = 0; i < F; ++i)
      for (index_t j = 0; j < F; ++j)
        worst = std::max(worst, std::abs(M(i, j) - M_ref(i, j)) / n / (product * std::sqrt(S[i] * S[j]) / n + allowance));
    CHECK(worst <= 1.0);
    CHECK((M - M.transpose()).cwiseAbs().maxCoeff() == 0.0);
  }
}

template <class B>
void check_block_moments_tf32(rng_t& rng) {
  for_each_moments_case<float>(
      rng,
      [](const image_case<float>& x, const conv_geometry& g, index_t S, const block_plan& bp, int) {
        const plan p = to_plan(bp);
        const image_rows<float> src{x.dev(), sampler::make(x.N, x.C, x.H, x.W, to_geometry(g), S, true)};
        check_moments_tf32(B::block_moments_image_tf32(x.dev(), x.data.size(), to_geometry(g), S, p),
                           block_moments(seq, patch_sampler<float>(x.cpu(), g, S), bp), [&](index_t s, index_t f) {
                             const sample_entry e = locate_sample(p, s, 0, f);
                             return src.value<double>(e.row, e.column);
                           });
      },
      [](const std::vector<float>& X, index_t n, index_t Fin, const block_plan& bp) {
        const plan p = to_plan(bp);
        const matrix_rows<float> src{device_view<const float, 2>{X.data(), {n, Fin}, {Fin + 1, 1}}};
        check_moments_tf32(B::block_moments_matrix_tf32(src.x, X.size(), p),
                           block_moments(seq, netdeconv::matrix_rows<float>(matrix_view<const float>{X.data(), {n, Fin}, {Fin + 1, 1}}), bp),
                           [&](index_t s, index_t f) {
                             const sample_entry e = locate_sample(p, s, 0, f);
                             return src.value<double>(e.row, e.column);
                           });
      });
}

/// The factors are rounded to TF32, both of them: row 0 of an n x 2 matrix is (0, 0) (the shift),
/// rows 1 .. n-1 are (v_0, v_1) = (1 + 3*2^-12, 1 - 3*2^-13), whose nearest TF32 values are
/// r_0 = 1 + 2^-10 and r_1 = 1 - 2^-11. With the sums in FP32 on unrounded samples,
///   M_ij = (n-1) r_i r_j - (n-1)^2 v_i v_j / n    (TF32)   vs   (n-1) v_i v_j - (n-1)^2 v_i v_j / n.
/// For n = 1000 the two differ by >= 0.12 in every entry (M ~ 1), and rounding only one factor
/// misses by >= 0.12 too. The FP32 sums of v are exact (k v_i needs <= 22 bits), and the cross sums
/// of the 3 row chunks (<= 334 rows, partial sums < 512: half an ulp <= 2^-15) round once per k = 8
/// step, 42 times per chunk: < 3 * 42 * 2^-15 < 0.004 in all, under the 0.01 tolerance.
template <class B>
void check_tf32_rounding() {
  const index_t n = 1000;
  const double v[2] = {1 + std::ldexp(3.0, -12), 1 - std::ldexp(3.0, -13)};
  const double r[2] = {1 + std::ldexp(1.0, -10), 1 - std::ldexp(1.0, -11)};
  for (int i = 0; i < 2; ++i) REQUIRE(double(test_model::tf32_round(float(v[i]))) == r[i]);
  std::vector<float> X(std::size_t(2 * n));
  for (index_t q = 1; q < n; ++q) X[std::size_t(2 * q)] = float(v[0]), X[std::size_t(2 * q + 1)] = float(v[1]);
  const plan p{plan::independent, 2, 1, 1, 2};
  const auto got = B::block_moments_matrix_tf32(device_view<const float, 2>{X.data(), {n, 2}, {2, 1}}, X.size(), p);
  const double m = double(n - 1);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      CAPTURE(i);
      CAPTURE(j);
      const double tf32 = m * r[i] * r[j] - m * m * v[i] * v[j] / double(n);
      const double fp32 = m * v[i] * v[j] - m * m * v[i] * v[j] / double(n);
      REQUIRE(std::abs(tf32 - fp32) >= 0.12);
      CHECK(std::abs(got.scatter[std::size_t(i * 2 + j)] - tf32) < 0.01);
    }
}

/// Float input with a mean 10^4 times its spread: the shifted FP32 sums keep the covariance.
template <class B>
void check_large_offset(rng_t& rng) {
  const index_t n = 200000, F = 3;
  const std::vector<float> X = random_vector<float>(rng, std::size_t(n * F), 1e4, 1.0);
  const block_plan plan = make_block_plan(block_layout::independent, F, 1, F);
  const auto expected = block_moments(seq, netdeconv::matrix_rows<float>(row_major(X.data(), n, F)), plan);
  const auto got = B::template block_moments_matrix<float>(device_view<const float, 2>{X.data(), {n, F}, {F, 1}}, X.size(),
                                                           to_plan(plan));
  const Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> M(got.scatter.data(), F, F);
  const Eigen::MatrixXd cov = M / double(n), cov_ref = expected[0].covariance(0.0);
  CHECK((cov - cov_ref).cwiseAbs().maxCoeff() < 1e-3);  // variances are ~1; naive FP32 E[x^2] - E[x]^2 loses everything
  CHECK(std::abs(got.mean[0] - expected[0].mean()[0]) < 1e-3);
}

template <class B, class T>
void check_merge_and_covariance(rng_t& rng) {
  for (int trial = 0; trial < 6; ++trial) {
    const index_t F = uniform(rng, 1, 20), na = uniform(rng, 2, 300), nb = uniform(rng, 2, 300);
    const block_plan plan = random_plan(rng, block_layout::independent, F, 1);
    const std::vector<T> X = random_vector<T>(rng, std::size_t((na + nb) * F), 1.5);
    const auto dv = [&](index_t first, index_t n) { return device_view<const T, 2>{X.data() + first * F, {n, F}, {F, 1}}; };
    const auto a = B::template block_moments_matrix<T>(dv(0, na), std::size_t(na * F), to_plan(plan));
    const auto b = B::template block_moments_matrix<T>(dv(na, nb), std::size_t(nb * F), to_plan(plan));
    const auto merged = B::merge(a, b);
    const auto expected = block_moments(seq, netdeconv::matrix_rows<T>(row_major(X.data(), na + nb, F)), plan);
    CAPTURE(trial);
    check_moments(merged, expected, tol<T>());
    const double eps = 1e-3;
    const std::vector<T> cov = B::template covariance<T>(merged, eps);
    const index_t Fb = plan.features();
    for (index_t s = 0; s < plan.count(); ++s) {
      const Eigen::Matrix<T, -1, -1> ref = expected[s].template covariance<T>(eps);
      const Eigen::Map<const Eigen::Matrix<T, -1, -1, Eigen::RowMajor>> got(cov.data() + s * Fb * Fb, Fb, Fb);
      CHECK((got - ref).cwiseAbs().maxCoeff() <= tol<T>() * (1 + ref.cwiseAbs().maxCoeff()));
      const Eigen::Map<const Eigen::Matrix<T, -1, 1>> mean(cov.data() + plan.count() * Fb * Fb + s * Fb, Fb);
      CHECK((mean - expected[s].mean().template cast<T>()).cwiseAbs().maxCoeff() <= tol<T>() * (1 + mean.cwiseAbs().maxCoeff()));
    }
  }
}

template <class T>
Eigen::Matrix<T, -1, -1> random_spd(rng_t& rng, index_t F) {
  const std::vector<double> g = random_vector<double>(rng, std::size_t(F * (F + 3)));
  const Eigen::Map<const Eigen::MatrixXd> G(g.data(), F, F + 3);
  Eigen::MatrixXd A = G * G.transpose() / double(F + 3);
  A.diagonal().array() += 1e-2;
  return A.cast<T>();
}

template <class B, class T>
void check_inverse_sqrt(rng_t& rng) {
  struct mode {
    int iterations;
    double tolerance;
    bool trace, final_residual;
  };
  const double conv_tol = std::is_same_v<T, float> ? 1e-3 : 1e-9;
  const mode modes[] = {{5, 0, false, true}, {15, 0, false, true}, {5, 0, true, true}, {5, 0, false, false},
                        {100, conv_tol, false, true}, {0, 0, false, true}, {1, 0, false, true}};
  for (const mode& m : modes) {
    const index_t batch = uniform(rng, 1, 5), F = uniform(rng, 1, 40);
    std::vector<Eigen::Matrix<T, -1, -1>> A;
    std::vector<T> packed;
    for (index_t b = 0; b < batch; ++b) {
      A.push_back(random_spd<T>(rng, F));
      const Eigen::Matrix<T, -1, -1, Eigen::RowMajor> r = A.back();
      packed.insert(packed.end(), r.data(), r.data() + F * F);
    }
    isqrt_options o = m.tolerance > 0 ? isqrt_options::converged(m.tolerance, m.iterations) : isqrt_options::fixed(m.iterations);
    o.scaling = m.trace ? isqrt_scaling::trace : isqrt_scaling::frobenius;
    std::vector<Eigen::Matrix<T, -1, -1>> D;
    const auto reports = inverse_sqrt(seq, A, D, o);
    const auto got = B::template inverse_sqrt<T>(packed, batch, F, m.iterations, m.tolerance, m.trace, m.final_residual);
    CAPTURE(m.iterations);
    CAPTURE(m.tolerance);
    CAPTURE(m.trace);
    CAPTURE(F);
    for (index_t b = 0; b < batch; ++b) {
      const Eigen::Map<const Eigen::Matrix<T, -1, -1, Eigen::RowMajor>> d(got.D.data() + b * F * F, F, F);
      CHECK(got.status[b] == int(reports[b].status));
      CHECK(std::abs(got.iterations[b] - reports[b].iterations) <= (m.tolerance > 0 ? 1 : 0));
      if (m.tolerance == 0) CHECK((d - D[b]).cwiseAbs().maxCoeff() <= 50 * tol<T>() * (1 + D[b].cwiseAbs().maxCoeff()));
      if (m.tolerance > 0) CHECK(got.residual[b] <= m.tolerance);
      if (m.final_residual && m.tolerance == 0)
        CHECK(std::abs(got.residual[b] - reports[b].residual) <= 50 * tol<T>() * (1 + reports[b].residual));
      if (!m.final_residual) CHECK(std::isnan(got.residual[b]));
    }
  }
  // Failures: NaN (non_finite) and a non-positive diagonal (not_positive_definite); D is NaN.
  std::vector<T> bad(2 * 9, T(0));
  for (int i = 0; i < 3; ++i) bad[std::size_t(i * 4)] = T(1), bad[std::size_t(9 + i * 4)] = T(1);
  bad[1] = std::numeric_limits<T>::quiet_NaN();
  bad[9 + 4] = T(-1);
  const auto got = B::template inverse_sqrt<T>(bad, 2, 3, 5, 0, false, true);
  CHECK(got.status[0] == int(isqrt_status::non_finite));
  CHECK(got.status[1] == int(isqrt_status::not_positive_definite));
  CHECK(std::all_of(got.D.begin(), got.D.end(), [](T v) { return std::isnan(v); }));
}

template <class B, class T>
void check_fold(rng_t& rng) {
  const block_layout layouts[] = {block_layout::interleaved_shared, block_layout::grouped, block_layout::independent};
  for (int trial = 0; trial < 18; ++trial) {
    const block_layout layout = layouts[trial % 3];
    const index_t C = layout == block_layout::grouped ? 2 * uniform(rng, 1, 4) : uniform(rng, 1, 9);
    const index_t kh = uniform(rng, 1, 3), kw = uniform(rng, 1, 3);
    const block_plan plan = random_plan(rng, layout, C, kh * kw);
    const index_t cout = plan.groups * uniform(rng, 1, 5), ci = C / plan.groups, F = plan.features();
    block_statistics<T> stats{plan, {}, {}};
    std::vector<T> mean, D;
    for (index_t s = 0; s < plan.count(); ++s) {
      const std::vector<T> m = random_vector<T>(rng, std::size_t(F)), d = random_vector<T>(rng, std::size_t(F * F));
      stats.mean.push_back(Eigen::Map<const Eigen::Matrix<T, -1, 1>>(m.data(), F));
      stats.D.push_back(Eigen::Map<const Eigen::Matrix<T, -1, -1, Eigen::RowMajor>>(d.data(), F, F));
      mean.insert(mean.end(), m.begin(), m.end());
      D.insert(D.end(), d.begin(), d.end());
    }
    // weight with a padded output-channel stride (not contiguous)
    const std::array<index_t, 4> stride{ci * kh * kw + 2, kh * kw, kw, 1};
    const std::vector<T> w = random_vector<T>(rng, std::size_t(cout * stride[0]));
    const std::vector<T> bias = trial % 4 == 3 ? std::vector<T>{} : random_vector<T>(rng, std::size_t(cout));
    const image_view<const T> wv{w.data(), {cout, ci, kh, kw}, stride};
    const auto expected = fold(seq, stats, wv, bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), cout));
    const auto got = B::template fold<T>(to_plan(plan), mean, D, device_view<const T, 4>{w.data(), {cout, ci, kh, kw},
                                         {stride[0], stride[1], stride[2], stride[3]}}, w.size(), bias);
    CAPTURE(trial);
    CAPTURE(layout);
    const std::vector<T> got_w(got.begin(), got.end() - cout), got_b(got.end() - cout, got.end());
    CHECK(rel_diff(got_w, expected.weight) < 10 * tol<T>());
    CHECK(rel_diff(got_b, expected.bias) < 10 * tol<T>());
  }
}

template <class B, class T>
void check_apply_whitening(rng_t& rng) {
  for (int trial = 0; trial < 8; ++trial) {
    const index_t F = uniform(rng, 1, 30), n = uniform(rng, 1, 50);
    const block_plan plan = random_plan(rng, block_layout::independent, F, 1);
    const index_t Fb = plan.features();
    block_statistics<T> stats{plan, {}, {}};
    std::vector<T> mean, D;
    for (index_t s = 0; s < plan.count(); ++s) {
      const std::vector<T> m = random_vector<T>(rng, std::size_t(Fb)), d = random_vector<T>(rng, std::size_t(Fb * Fb));
      stats.mean.push_back(Eigen::Map<const Eigen::Matrix<T, -1, 1>>(m.data(), Fb));
      stats.D.push_back(Eigen::Map<const Eigen::Matrix<T, -1, -1, Eigen::RowMajor>>(d.data(), Fb, Fb));
      mean.insert(mean.end(), m.begin(), m.end());
      D.insert(D.end(), d.begin(), d.end());
    }
    const bool columns = trial % 2 == 1;
    const index_t rows = columns ? F : n, cols = columns ? n : F;
    const std::vector<T> X = random_vector<T>(rng, std::size_t(rows * (cols + 1)));
    const matrix_view<const T> xv{X.data(), {rows, cols}, {cols + 1, 1}};
    Eigen::Matrix<T, -1, -1, Eigen::RowMajor> expected(rows, cols);
    apply_whitening(seq, stats, xv, view_mut(expected), columns);
    const auto got = B::template apply_whitening<T>(to_plan(plan), mean, D,
                                                    device_view<const T, 2>{X.data(), {rows, cols}, {cols + 1, 1}},
                                                    X.size(), columns);
    CAPTURE(trial);
    CHECK(rel_diff(got, std::vector<T>(expected.data(), expected.data() + expected.size())) < 10 * tol<T>());
  }
}

}  // namespace netdeconv::cuda::checks
