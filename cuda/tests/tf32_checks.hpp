// SPDX-License-Identifier: MIT
#pragma once
// The TF32 covariance (cov_precision::tf32) checks for the CUDA backends, emulated and on the GPU:
// a backend B with block_moments_image_tf32 / block_moments_matrix_tf32 besides the interface of
// tests/backend_checks.hpp. Plain C++ + doctest + Eigen.

#include <cmath>
#include <vector>

#include "../../tests/backend_checks.hpp"
#include "tf32_model.hpp"

namespace netdeconv::checks {

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

/// Sample 0 of statistic s, feature f (the kernels' shift), from row 0 of the source and the
/// layouts' definition (oracle::blocked), not from the library's column map.
template <class Source>
std::vector<Eigen::MatrixXd> first_samples(const Source& source, const block_plan& plan) {
  std::vector<double> row(std::size_t(source.width()));
  source.gather(0, row.data());
  return oracle::blocked(Eigen::Map<const Eigen::MatrixXd>(row.data(), 1, source.width()), plan);
}

template <class B>
void check_block_moments_tf32(rng_t& rng) {
  for_each_moments_case<float>(
      rng,
      [](const image_case<float>& x, const conv_geometry& g, index_t S, const block_plan& bp, int) {
        const patch_sampler<float> src(x.cpu(), g, S);
        const auto first = first_samples(src, bp);
        check_moments_tf32(B::block_moments_image_tf32(x.cpu(), x.data.size(), g, S, bp), block_moments(seq, src, bp),
                           [&](index_t s, index_t f) { return first[std::size_t(s)](0, f); });
      },
      [](const std::vector<float>& X, index_t n, index_t Fin, const block_plan& bp) {
        const matrix_view<const float> xv{X.data(), {n, Fin}, {Fin + 1, 1}};
        const matrix_rows<float> src(xv);
        const auto first = first_samples(src, bp);
        check_moments_tf32(B::block_moments_matrix_tf32(xv, X.size(), bp), block_moments(seq, src, bp),
                           [&](index_t s, index_t f) { return first[std::size_t(s)](0, f); });
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
  for (int i = 0; i < 2; ++i) REQUIRE(double(cuda::test_model::tf32_round(float(v[i]))) == r[i]);
  std::vector<float> X(std::size_t(2 * n));
  for (index_t q = 1; q < n; ++q) X[std::size_t(2 * q)] = float(v[0]), X[std::size_t(2 * q + 1)] = float(v[1]);
  const block_plan p{block_layout::independent, 2, 1, 1, 2};
  const auto got = B::block_moments_matrix_tf32(matrix_view<const float>{X.data(), {n, 2}, {2, 1}}, X.size(), p);
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

}  // namespace netdeconv::checks
