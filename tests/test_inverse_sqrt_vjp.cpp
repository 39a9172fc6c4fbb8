// SPDX-License-Identifier: MIT
// The inverse square root's vector-Jacobian product (inverse_sqrt_vjp.hpp) against float64 central
// finite differences of independent forwards: the oracle's Newton-Schulz recurrence (Frobenius or
// trace scaling, n steps) for fixed mode, and the eigendecomposition root for converged and exact
// mode.

#include <doctest/doctest.h>

#include <netdeconv/inverse_sqrt_vjp.hpp>

#include "oracle.hpp"

using namespace netdeconv;
using oracle::MatrixXd;

namespace {

MatrixXd true_root(const MatrixXd& A) {
  const Eigen::SelfAdjointEigenSolver<MatrixXd> eig(A);
  return eig.eigenvectors() * eig.eigenvalues().cwiseSqrt().cwiseInverse().asDiagonal() * eig.eigenvectors().transpose();
}

MatrixXd random_matrix(index_t F, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  MatrixXd M(F, F);
  for (index_t i = 0; i < M.size(); ++i) M.data()[i] = normal(rng);
  return M;
}

/// max over 3 random symmetric directions E of |<dA, E> - (L(A + hE) - L(A - hE)) / 2h| relative
/// to ||dA||_F ||E||_F, for L(A) = <G, forward(A)>. The bound the tests use, 1e-7, is far above
/// the error of the differences (~1e-8 relative) and far below any wrong term of the chain.
template <class Forward>
double finite_difference_error(const MatrixXd& A, const MatrixXd& G, const MatrixXd& dA, Forward&& forward,
                               std::mt19937_64& rng) {
  double worst = 0;
  for (int d = 0; d < 3; ++d) {
    MatrixXd E = random_matrix(A.rows(), rng);
    E = (E + E.transpose()).eval();
    // a step well inside the smallest eigenvalue: truncation O((h/w_min)^2) ~ 1e-8, rounding ~ 1e-12
    const double h = 1e-4 * Eigen::SelfAdjointEigenSolver<MatrixXd>(A).eigenvalues().minCoeff() / E.norm();
    const double fd = (G.cwiseProduct(forward(A + h * E)).sum() - G.cwiseProduct(forward(A - h * E)).sum()) / (2 * h);
    worst = std::max(worst, std::abs(dA.cwiseProduct(E).sum() - fd) / (dA.norm() * E.norm()));
  }
  return worst;
}

}  // namespace

TEST_CASE("fixed mode: the gradient of the truncated iteration matches finite differences (float64)") {
  std::mt19937_64 rng(1101);
  for (const isqrt_scaling scaling : {isqrt_scaling::frobenius, isqrt_scaling::trace})
    for (const int n : {0, 1, 3, 5, 12})
      for (const index_t F : {1, 2, 5, 9}) {
        CAPTURE(scaling);
        CAPTURE(n);
        CAPTURE(F);
        const MatrixXd A = oracle::random_spd(F, 1e2, rng, 3.0);
        const MatrixXd G = random_matrix(F, rng);
        isqrt_options o = isqrt_options::fixed(n);
        o.scaling = scaling;
        square_matrix<double> dA, dA_par;
        const isqrt_report r = inverse_sqrt_vjp(seq, A, G, dA, o);
        REQUIRE(r.status == isqrt_status::ok);
        CHECK(r.iterations == n);
        CHECK(finite_difference_error(A, G, dA, [&](const MatrixXd& a) { return oracle::newton_schulz(a, n, scaling); }, rng) <
              1e-7);
        // par differentiates its symmetric iterates (Y_k = Y_0 Z_k, no transposes): the same gradient
        const isqrt_report rp = inverse_sqrt_vjp(simd_threads(2), A, G, dA_par, o);
        REQUIRE(rp.status == isqrt_status::ok);
        CHECK(rp.iterations == n);
        CHECK(std::abs(rp.residual - r.residual) <= 1e-12 * std::max(1.0, r.residual));
        CHECK(oracle::rel_err(dA_par, dA) < 1e-12);
      }
}

TEST_CASE("converged and exact mode: the gradient of the true root matches finite differences (float64)") {
  std::mt19937_64 rng(1102);
  for (const index_t F : {1, 3, 8})
    for (const double cond : {1.0, 1e3}) {
      CAPTURE(F);
      CAPTURE(cond);
      // cond 1 with F > 1 has equal eigenvalues: K's divided differences must not divide by w_i - w_j
      const MatrixXd A = oracle::random_spd(F, cond, rng, 2.0);
      const MatrixXd G = random_matrix(F, rng);
      for (const isqrt_options o : {isqrt_options::converged(1e-10, 100), isqrt_options::exact()}) {
        square_matrix<double> dA;
        const isqrt_report r = inverse_sqrt_vjp(seq, A, G, dA, o);
        REQUIRE(r.status == isqrt_status::ok);
        CHECK(r.residual < 1e-12);
        CHECK(finite_difference_error(A, G, dA, true_root, rng) < 1e-7);
      }
    }
}

TEST_CASE("the truncated gradient converges to the true one as the iteration does") {
  std::mt19937_64 rng(1103);
  const MatrixXd A = oracle::random_spd(7, 10.0, rng);
  const MatrixXd G = random_matrix(7, rng);
  square_matrix<double> truncated, root;
  REQUIRE(inverse_sqrt_vjp(seq, A, G, truncated, isqrt_options::fixed(40)).status == isqrt_status::ok);
  REQUIRE(inverse_sqrt_vjp(seq, A, G, root, isqrt_options::exact()).status == isqrt_status::ok);
  CHECK(oracle::rel_err(truncated, root) < 1e-9);
  square_matrix<double> five;
  REQUIRE(inverse_sqrt_vjp(seq, A, G, five, isqrt_options::fixed(5)).status == isqrt_status::ok);
  CHECK(oracle::rel_err(five, root) > 1e-3);  // 5 steps are far from converged at cond 10: a different gradient
}

TEST_CASE("float32 fixed-mode gradient is the float64 one within float32 rounding") {
  std::mt19937_64 rng(1104);
  for (const index_t F : {4, 16, 64, 200}) {
    CAPTURE(F);
    const MatrixXd A = oracle::random_spd(F, 1e2, rng);
    const MatrixXd G = random_matrix(F, rng);
    square_matrix<double> d64;
    square_matrix<float> d32;
    REQUIRE(inverse_sqrt_vjp(seq, A, G, d64, isqrt_options::fixed(5)).status == isqrt_status::ok);
    const square_matrix<float> a = A.cast<float>(), g = G.cast<float>();
    REQUIRE(inverse_sqrt_vjp(seq, a, g, d32, isqrt_options::fixed(5)).status == isqrt_status::ok);
    // measured 1.4e-7 (F = 4) to 4.9e-7 (F = 64) at condition 1e2: 20x headroom
    CHECK(oracle::rel_err(d32.cast<double>().eval(), d64) < 1e-5);
    // par: half products split over 2 threads (F = 64 and 200), the symmetric iterates' gradient
    REQUIRE(inverse_sqrt_vjp(simd_threads(2), a, g, d32, isqrt_options::fixed(5)).status == isqrt_status::ok);
    CHECK(oracle::rel_err(d32.cast<double>().eval(), d64) < 1e-5);
  }
}

TEST_CASE_TEMPLATE("the batched view form equals the single form, on strided views", T, float, double) {
  std::mt19937_64 rng(1105);
  const index_t batch = 3, F = 5, pad = 2;
  std::vector<T> A(std::size_t(batch * F * (F + pad))), G(A.size()), dA(A.size(), T(-7));
  const tensor_view<T, 3> av{A.data(), {batch, F, F}, {F * (F + pad), F + pad, 1}}, gv{G.data(), av.shape, av.stride},
      dv{dA.data(), av.shape, av.stride};
  std::vector<square_matrix<T>> a, g;
  for (index_t b = 0; b < batch; ++b) {
    a.push_back(oracle::random_spd(F, 50.0, rng).cast<T>());
    g.push_back(random_matrix(F, rng).cast<T>());
    for (index_t i = 0; i < F; ++i)
      for (index_t j = 0; j < F; ++j) av(b, i, j) = a.back()(i, j), gv(b, i, j) = g.back()(i, j);
  }
  for (const isqrt_options o : {isqrt_options::fixed(5), isqrt_options::exact()}) {
    std::vector<isqrt_report> reports(static_cast<std::size_t>(batch));
    inverse_sqrt_vjp(seq, tensor_view<const T, 3>(av), tensor_view<const T, 3>(gv), dv, o, contiguous(reports.data(), batch));
    for (index_t b = 0; b < batch; ++b) {
      square_matrix<T> single;
      const isqrt_report r = inverse_sqrt_vjp(seq, a[std::size_t(b)], g[std::size_t(b)], single, o);
      CHECK(reports[std::size_t(b)].status == r.status);
      CHECK(reports[std::size_t(b)].iterations == r.iterations);
      for (index_t i = 0; i < F; ++i)
        for (index_t j = 0; j < F; ++j) CHECK(dv(b, i, j) == single(i, j));
    }
    // par: 3 matrices on 2 threads (matrices in parallel) and on 4 (one after the other, threaded products)
    for (const int threads : {2, 4}) {
      inverse_sqrt_vjp(simd_threads(threads), tensor_view<const T, 3>(av), tensor_view<const T, 3>(gv), dv, o,
                       contiguous(reports.data(), batch));
      for (index_t b = 0; b < batch; ++b) {
        square_matrix<T> single, got(F, F);
        const isqrt_report r = inverse_sqrt_vjp(seq, a[std::size_t(b)], g[std::size_t(b)], single, o);
        CHECK(reports[std::size_t(b)].status == r.status);
        for (index_t i = 0; i < F; ++i)
          for (index_t j = 0; j < F; ++j) got(i, j) = dv(b, i, j);
        CHECK(oracle::rel_err(got.template cast<double>().eval(), single.template cast<double>().eval()) <
              (std::is_same_v<T, float> ? 1e-5 : 1e-12));
      }
    }
  }
  for (index_t b = 0; b < batch; ++b)  // the padding is not written
    for (index_t i = 0; i < F; ++i) CHECK(dA[std::size_t(b * F * (F + pad) + i * (F + pad) + F)] == T(-7));
}

TEST_CASE("bad input: shapes are refused, numerical failures are statuses with NaN gradients") {
  std::mt19937_64 rng(1106);
  const MatrixXd A = oracle::random_spd(4, 10.0, rng), G = random_matrix(4, rng);
  square_matrix<double> dA;
  CHECK_THROWS_WITH_AS(inverse_sqrt_vjp(seq, A, MatrixXd(random_matrix(3, rng)), dA), doctest::Contains("G is 3x3, A is 4x4"),
                       invalid_argument);
  MatrixXd skew = A;
  skew(0, 1) += 1.0;
  CHECK_THROWS_WITH_AS(inverse_sqrt_vjp(seq, skew, G, dA), doctest::Contains("not symmetric"), invalid_argument);
  isqrt_options negative;
  negative.iterations = -1;
  CHECK_THROWS_AS(inverse_sqrt_vjp(seq, A, G, dA, negative), invalid_argument);
  for (const isqrt_options o : {isqrt_options::fixed(5), isqrt_options::exact()}) {
    MatrixXd g = G;
    g(2, 1) = std::numeric_limits<double>::quiet_NaN();
    MatrixXd indefinite = A;
    indefinite(3, 3) = -5.0;
    CHECK(inverse_sqrt_vjp(seq, A, g, dA, o).status == isqrt_status::non_finite);
    CHECK(dA.array().isNaN().all());
    CHECK(inverse_sqrt_vjp(seq, indefinite, G, dA, o).status == isqrt_status::not_positive_definite);
    CHECK(dA.array().isNaN().all());
    CHECK(inverse_sqrt_vjp(par, A, g, dA, o).status == isqrt_status::non_finite);
    CHECK(dA.array().isNaN().all());
    CHECK(inverse_sqrt_vjp(par, indefinite, G, dA, o).status == isqrt_status::not_positive_definite);
    CHECK(dA.array().isNaN().all());
  }
  // singular PSD: the truncated iteration is defined there (as the forward), the true root is not
  const MatrixXd v = random_matrix(4, rng).col(0);
  const MatrixXd singular = v * v.transpose();
  CHECK(inverse_sqrt_vjp(seq, singular, G, dA, isqrt_options::fixed(5)).status == isqrt_status::ok);
  CHECK(dA.allFinite());
  CHECK(inverse_sqrt_vjp(seq, singular, G, dA, isqrt_options::exact()).status == isqrt_status::not_positive_definite);
  // view form: G of the wrong shape, dA over G
  std::vector<double> a(16), g(16), d(16);
  std::vector<isqrt_report> reports(1);
  const tensor_view<const double, 3> av{a.data(), {1, 4, 4}, {16, 4, 1}};
  CHECK_THROWS_WITH_AS(inverse_sqrt_vjp(seq, av, tensor_view<const double, 3>{g.data(), {1, 2, 2}, {4, 2, 1}},
                                        tensor_view<double, 3>{d.data(), {1, 4, 4}, {16, 4, 1}}, isqrt_options::fixed(5),
                                        contiguous(reports.data(), 1)),
                       doctest::Contains("G is (1, 2, 2)"), invalid_argument);
  CHECK_THROWS_WITH_AS(inverse_sqrt_vjp(seq, av, tensor_view<const double, 3>{g.data(), {1, 4, 4}, {16, 4, 1}},
                                        tensor_view<double, 3>{g.data(), {1, 4, 4}, {16, 4, 1}}, isqrt_options::fixed(5),
                                        contiguous(reports.data(), 1)),
                       doctest::Contains("dA overlaps G"), invalid_argument);
}
