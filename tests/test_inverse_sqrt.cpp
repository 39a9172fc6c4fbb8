// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <netdeconv/inverse_sqrt.hpp>

#include "oracle.hpp"

using namespace netdeconv;
using oracle::MatrixXd;

namespace {

/// ||D A D - I||_F / sqrt(F), in float64.
template <class T>
double whitening_residual(const square_matrix<T>& D, const MatrixXd& A) {
  const MatrixXd d = D.template cast<double>();
  return (d * A * d - MatrixXd::Identity(A.rows(), A.cols())).norm() / std::sqrt(double(A.rows()));
}

}  // namespace

TEST_CASE("fixed iterations reproduce the float64 recurrence (float32 rounding only)") {
  std::mt19937_64 rng(31);
  struct tolerance_case {
    int iterations;
    double tol;  // measured float32 rounding of this recurrence: ~1e-6 (5 steps), ~1.4e-4 (15 steps)
  };
  for (const tolerance_case tc : {tolerance_case{5, 1e-5}, tolerance_case{15, 5e-4}})
    for (const index_t F : {1, 9, 64, 150, 576})
      for (const double cond : {1.0, 1e2, 1e4}) {
        if (F == 576 && cond < 1e4) continue;  // keep the largest size to the hardest case
        CAPTURE(tc.iterations);
        CAPTURE(F);
        CAPTURE(cond);
        const MatrixXd A = oracle::random_spd(F, cond, rng, 3.0);
        const MatrixXd ref = oracle::newton_schulz(A, tc.iterations);
        square_matrix<float> Df;
        const auto rf = inverse_sqrt(seq, square_matrix<float>(A.cast<float>()), Df, isqrt_options::fixed(tc.iterations));
        CHECK(rf.status == isqrt_status::ok);
        CHECK(rf.iterations == tc.iterations);
        CHECK(oracle::rel_err(Df, ref) < tc.tol);
        square_matrix<double> Dd;
        inverse_sqrt(seq, A, Dd, isqrt_options::fixed(tc.iterations));
        CHECK(oracle::rel_err(Dd, ref) < 1e-12);
      }
}

TEST_CASE("the truncated reference iteration is not the exact root; the converged mode is") {
  std::mt19937_64 rng(32);
  const MatrixXd A = oracle::random_spd(40, 1e4, rng);
  square_matrix<double> D5, Dconv;
  const auto r5 = inverse_sqrt(seq, A, D5, isqrt_options::fixed(5));
  const auto rc = inverse_sqrt(seq, A, Dconv, isqrt_options::converged(1e-12));
  CHECK(r5.residual > 0.1);  // small eigenvalues far from converged after 5 steps
  CHECK(whitening_residual(D5, A) > 0.1);
  CHECK(rc.status == isqrt_status::ok);
  CHECK(rc.iterations > 5);
  CHECK(rc.residual <= 1e-12);
}

TEST_CASE_TEMPLATE("converged mode whitens: ||D Cov D - I||_F / sqrt(F) within the documented bounds", T, float, double) {
  std::mt19937_64 rng(33);
  const bool single = std::is_same_v<T, float>;
  for (const index_t F : {2, 27, 100, 200})
    for (const double cond : {1.0, 1e2, 1e4})
      for (const auto scaling : {isqrt_scaling::frobenius, isqrt_scaling::trace}) {
        CAPTURE(F);
        CAPTURE(cond);
        const MatrixXd A = oracle::random_spd(F, cond, rng, 0.01);
        isqrt_options options = isqrt_options::converged(single ? 1e-5 : 1e-12, 40);
        options.scaling = scaling;
        square_matrix<T> D;
        const auto report = inverse_sqrt(seq, square_matrix<T>(A.cast<T>()), D, options);
        const double bound = single ? (cond <= 1e2 ? 2e-5 : 3e-4) : 1e-10;
        const double res = whitening_residual(D, A.cast<T>().template cast<double>());
        CHECK(res <= bound);
        CHECK(report.residual <= options.tolerance + (report.status == isqrt_status::not_converged));
        CHECK((report.status == isqrt_status::ok || (single && report.status == isqrt_status::not_converged)));
      }
}

TEST_CASE_TEMPLATE("batched inverse square roots equal the looped ones, sequential and OpenMP", T, float, double) {
  // OpenMP: converged and exact mode run the sequential iteration per block (bit-identical);
  // fixed mode runs its own products (omp/inverse_sqrt.hpp): float32 / float64 rounding apart.
  const double fixed_tol = std::is_same_v<T, float> ? 1e-4 : 1e-11;
  std::mt19937_64 rng(34);
  std::vector<square_matrix<T>> A;
  for (const index_t F : {5, 27, 27, 1, 64, 9, 9}) A.push_back(oracle::random_spd(F, 1e3, rng).cast<T>());
  for (const auto& options : {isqrt_options::fixed(7), isqrt_options::converged(1e-4), isqrt_options::exact()}) {
    std::vector<square_matrix<T>> Dseq, Dpar;
    const auto rseq = inverse_sqrt(seq, A, Dseq, options);
    const auto rpar = inverse_sqrt(omp_policy{{}, 2}, A, Dpar, options);
    REQUIRE(Dseq.size() == A.size());
    for (std::size_t i = 0; i < A.size(); ++i) {
      square_matrix<T> D;
      const auto r = inverse_sqrt(seq, A[i], D, options);
      CHECK(Dseq[i] == D);  // same code, same inputs: bit-identical
      if (options.tolerance == 0 && options.method == isqrt_method::newton_schulz)
        CHECK(oracle::rel_err(Dpar[i], D) < fixed_tol);
      else
        CHECK(Dpar[i] == D);
      CHECK(rseq[i].iterations == r.iterations);
      CHECK(rpar[i].status == r.status);
    }
  }
}

TEST_CASE("the exact float64 path is D = V diag(w^-1/2) V^T") {
  std::mt19937_64 rng(35);
  const MatrixXd A = oracle::random_spd(50, 1e6, rng, 2.0);
  square_matrix<double> D;
  const auto r = inverse_sqrt_exact(A, D);
  CHECK(r.status == isqrt_status::ok);
  CHECK(r.residual < 1e-10);
  CHECK(whitening_residual(D, A) < 1e-10);
  CHECK((D - D.transpose()).norm() < 1e-12 * D.norm());
  // and it agrees with the converged iteration
  square_matrix<double> Dns;
  inverse_sqrt(seq, A, Dns, isqrt_options::converged(1e-13));
  CHECK(oracle::rel_err(Dns, D) < 1e-8);
}

TEST_CASE("the uncoupled iteration diverges where the coupled one stays bounded (paper, appendix A.3)") {
  std::mt19937_64 rng(36);
  const index_t F = 20;
  const MatrixXd A = oracle::random_spd(F, 1e3, rng);
  // uncoupled Newton-Schulz for A^(-1/2): Z <- (3Z - Z^3 A)/2 on A/||A||, Z_0 = I
  const MatrixXd As = A / A.norm();
  MatrixXd Z = MatrixXd::Identity(F, F);
  int blew_up_at = -1;
  for (int k = 1; k <= 200 && blew_up_at < 0; ++k) {
    Z = 0.5 * (3.0 * Z - Z * Z * Z * As);
    if (!Z.allFinite() || Z.norm() > 1e6) blew_up_at = k;
  }
  MESSAGE("uncoupled iteration blew up at step " << blew_up_at);
  CHECK(blew_up_at > 0);
  square_matrix<double> D;
  const auto r = inverse_sqrt(seq, A, D, isqrt_options::fixed(2000));
  CHECK(r.status == isqrt_status::ok);
  CHECK(r.residual < 1e-12);
  CHECK(whitening_residual(D, A) < 1e-10);
}

TEST_CASE_TEMPLATE("failures are statuses: non-finite, indefinite, singular, not converged", T, float, double) {
  std::mt19937_64 rng(37);
  const square_matrix<T> A = oracle::random_spd(6, 10, rng).cast<T>();
  square_matrix<T> D;
  for (const auto& options : {isqrt_options::fixed(5), isqrt_options::exact()}) {
    square_matrix<T> bad = A;
    bad(2, 3) = std::numeric_limits<T>::quiet_NaN();
    CHECK(inverse_sqrt(seq, bad, D, options).status == isqrt_status::non_finite);
    CHECK(D.array().isNaN().all());
    bad = A;
    bad(1, 1) = std::numeric_limits<T>::infinity();
    CHECK(inverse_sqrt(seq, bad, D, options).status == isqrt_status::non_finite);
    const square_matrix<T> indefinite = A - T(2) * square_matrix<T>::Identity(6, 6) * A.diagonal().maxCoeff();
    CHECK(inverse_sqrt(seq, indefinite, D, options).status == isqrt_status::not_positive_definite);
    CHECK(D.array().isNaN().all());
    // covariance of rank-deficient data, no eps: singular, positive semi-definite. The exact root
    // does not exist; the truncated iteration (a polynomial in A/s) does, as in the reference.
    oracle::MatrixXd X = oracle::MatrixXd::Random(100, 6);
    X.col(5) = X.col(0) - 2.0 * X.col(1);
    const square_matrix<T> singular = oracle::covariance(X, 0.0).cast<T>();
    const auto r = inverse_sqrt(seq, singular, D, options);
    if (options.method == isqrt_method::exact) {
      CHECK(r.status == isqrt_status::not_positive_definite);
    } else {
      CHECK(r.status == isqrt_status::ok);
      CHECK(oracle::rel_err(D, oracle::newton_schulz(singular.template cast<double>(), 5)) < 1e-5);
    }
  }
  const auto r = inverse_sqrt(seq, A, D, isqrt_options::converged(1e-30, 3));
  CHECK(r.status == isqrt_status::not_converged);
  CHECK(r.iterations == 3);
  CHECK(D.allFinite());  // the last iterate is still returned
}

TEST_CASE("invalid arguments throw with their values") {
  square_matrix<float> D;
  CHECK_THROWS_WITH_AS(inverse_sqrt(seq, square_matrix<float>::Identity(3, 4), D), doctest::Contains("A must be square, got 3x4"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(inverse_sqrt(seq, square_matrix<float>(0, 0), D), doctest::Contains("at least 1x1"), invalid_argument);
  CHECK_THROWS_WITH_AS(inverse_sqrt(seq, square_matrix<float>::Identity(3, 3), D, isqrt_options::fixed(-1)),
                       doctest::Contains("iterations (n_iter) must be >= 0, got -1"), invalid_argument);
  CHECK_THROWS_WITH_AS(inverse_sqrt(seq, square_matrix<float>::Identity(3, 3), D, isqrt_options::converged(-1e-3)),
                       doctest::Contains("tolerance must be >= 0"), invalid_argument);
  CHECK_THROWS_WITH_AS(inverse_sqrt_exact(square_matrix<float>(square_matrix<float>::Identity(2, 3)), D), doctest::Contains("2x3"),
                       invalid_argument);
}

// ---- SIMD fast path (simd_policy, the default `par`) against the float64 recurrence ----

TEST_CASE("fast inverse square root (symmetric half products) equals the float64 recurrence to 1e-4, 1 and 2 threads") {
  std::mt19937_64 rng(38);
  for (const int iterations : {0, 1, 2, 5, 15})
    for (const index_t F : {1, 2, 7, 9, 17, 63, 64, 65, 150, 300})
      for (const int threads : {1, 2}) {
        CAPTURE(iterations);
        CAPTURE(F);
        CAPTURE(threads);
        const MatrixXd A = oracle::random_spd(F, 1e3, rng, 2.0);
        const MatrixXd ref = oracle::newton_schulz(A, iterations);
        square_matrix<float> Df, Ds;
        const auto r = inverse_sqrt(simd_threads(threads), square_matrix<float>(A.cast<float>()), Df, isqrt_options::fixed(iterations));
        const auto rs = inverse_sqrt(seq, square_matrix<float>(A.cast<float>()), Ds, isqrt_options::fixed(iterations));
        CHECK(r.status == isqrt_status::ok);
        CHECK(r.iterations == iterations);
        // float32 rounding grows with the step count: 1e-4 up to the reference's 5 steps (half
        // products); 15 steps use full products, like the oracle loop (5e-4, test above)
        const double err = oracle::rel_err(Df, ref), err_seq = oracle::rel_err(Ds, ref);
        CAPTURE(err_seq);
        CHECK(err < (iterations <= 5 ? 1e-4 : 5e-4));
        if (iterations <= 5) {
          CHECK(std::abs(r.residual - rs.residual) <= 1e-4 * std::max(1.0, rs.residual));
          CHECK((Df - Df.transpose()).norm() == 0.0f);  // mirrored: exactly symmetric
        }
        square_matrix<double> Dd;
        inverse_sqrt(simd_threads(threads), A, Dd, isqrt_options::fixed(iterations));
        CHECK(oracle::rel_err(Dd, ref) < 1e-10);
      }
  // the reference layer's largest block (576, 5 steps), and ill-conditioned blocks at 5 and 15 steps
  const MatrixXd A = oracle::random_spd(576, 1e4, rng, 3.0);
  square_matrix<float> D;
  inverse_sqrt(par, square_matrix<float>(A.cast<float>()), D, isqrt_options::fixed(5));
  CHECK(oracle::rel_err(D, oracle::newton_schulz(A, 5)) < 1e-4);
  for (const double cond : {1e4, 1e5, 1e6})
    for (const int iterations : {5, 15}) {
      CAPTURE(cond);
      CAPTURE(iterations);
      const MatrixXd B = oracle::random_spd(27, cond, rng, 2.0);
      inverse_sqrt(par, square_matrix<float>(B.cast<float>()), D, isqrt_options::fixed(iterations));
      CHECK(oracle::rel_err(D, oracle::newton_schulz(B, iterations)) < (iterations <= 5 ? 1e-4 : 1e-3));
    }
}

TEST_CASE_TEMPLATE("fast batched inverse square roots: many blocks (blocks in parallel) and few (products in parallel)", T,
                   float, double) {
  std::mt19937_64 rng(39);
  for (const std::size_t count : {1, 2, 9}) {
    std::vector<square_matrix<T>> A;
    for (std::size_t i = 0; i < count; ++i) A.push_back(oracle::random_spd(1 + index_t(i * 13 % 70), 1e3, rng).cast<T>());
    for (const int threads : {1, 2}) {
      std::vector<square_matrix<T>> D;
      const auto reports = inverse_sqrt(simd_threads(threads), A, D, isqrt_options::fixed(5));
      REQUIRE(D.size() == count);
      for (std::size_t i = 0; i < count; ++i) {
        CHECK(reports[i].status == isqrt_status::ok);
        CHECK(oracle::rel_err(D[i], oracle::newton_schulz(A[i].template cast<double>(), 5)) <
              (std::is_same_v<T, float> ? 1e-4 : 1e-12));
      }
    }
    // converged and exact modes fall back to the sequential iteration per block: bit-identical
    for (const auto& options : {isqrt_options::converged(1e-4), isqrt_options::exact()}) {
      std::vector<square_matrix<T>> Dseq, Dpar;
      inverse_sqrt(seq, A, Dseq, options);
      inverse_sqrt(par, A, Dpar, options);
      for (std::size_t i = 0; i < count; ++i) CHECK(Dpar[i] == Dseq[i]);
    }
  }
}

TEST_CASE_TEMPLATE("fast inverse square root reports the same failures as the oracle", T, float, double) {
  std::mt19937_64 rng(40);
  const square_matrix<T> A = oracle::random_spd(6, 10, rng).cast<T>();
  square_matrix<T> D;
  square_matrix<T> bad = A;
  bad(2, 3) = std::numeric_limits<T>::quiet_NaN();
  CHECK(inverse_sqrt(par, bad, D).status == isqrt_status::non_finite);
  CHECK(D.array().isNaN().all());
  const square_matrix<T> indefinite = A - T(2) * square_matrix<T>::Identity(6, 6) * A.diagonal().maxCoeff();
  CHECK(inverse_sqrt(par, indefinite, D).status == isqrt_status::not_positive_definite);
  CHECK(D.array().isNaN().all());
}

TEST_CASE_TEMPLATE("final_residual = false: the same D, a NaN residual, status ok; failures still reported", T, float, double) {
  std::mt19937_64 rng(41);
  for (const index_t F : {1, 7, 40, 130})
    for (const int n : {0, 1, 2, 5}) {
      CAPTURE(F);
      CAPTURE(n);
      const square_matrix<T> A = oracle::random_spd(F, 1e3, rng, 2.0).cast<T>();
      isqrt_options without = isqrt_options::fixed(n);
      without.final_residual = false;
      square_matrix<T> with_d, without_d;
      for (const int threads : {1, 2}) {
        const auto a = inverse_sqrt(seq, A, with_d, isqrt_options::fixed(n));
        const auto b = inverse_sqrt(seq, A, without_d, without);
        CHECK(std::isfinite(a.residual));
        CHECK(std::isnan(b.residual));
        CHECK(b.status == isqrt_status::ok);
        CHECK(b.iterations == n);
        CHECK(without_d == with_d);  // Z_n does not depend on the skipped products
        const auto c = inverse_sqrt(simd_threads(threads), A, with_d, isqrt_options::fixed(n));
        const auto d = inverse_sqrt(simd_threads(threads), A, without_d, without);
        CHECK(std::isfinite(c.residual));
        CHECK(std::isnan(d.residual));
        CHECK(d.status == isqrt_status::ok);
        CHECK(without_d == with_d);
      }
    }
  const square_matrix<T> A = oracle::random_spd(6, 10, rng).cast<T>();
  isqrt_options without = isqrt_options::fixed(5);
  without.final_residual = false;
  square_matrix<T> D;
  const square_matrix<T> indefinite = A - T(2) * square_matrix<T>::Identity(6, 6) * A.diagonal().maxCoeff();
  CHECK(inverse_sqrt(seq, indefinite, D, without).status == isqrt_status::not_positive_definite);
  CHECK(inverse_sqrt(par, indefinite, D, without).status == isqrt_status::not_positive_definite);
  square_matrix<T> bad = A;
  bad(1, 4) = std::numeric_limits<T>::infinity();
  CHECK(inverse_sqrt(seq, bad, D, without).status == isqrt_status::non_finite);
  CHECK(inverse_sqrt(par, bad, D, without).status == isqrt_status::non_finite);
}

// ---- issue 9: the pre-iteration screen, the scale, symmetry and the step cap ----

namespace {

/// seq, OpenMP and SIMD (1 and 2 threads) on one matrix.
template <class F>
void for_each_policy(F&& f) {
  f(seq);
  f(omp_policy{{}, 2});
  f(simd_threads(1));
  f(simd_threads(2));
}

}  // namespace

TEST_CASE("float32 A + eps I with A positive semi-definite is never rejected, and equals the float64 recurrence") {
  // rank-deficient A (fewer samples than features), zero rows and columns (dead channels), A = 0
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal;
  for (const index_t F : {9, 64, 576})
    for (const double scale : {1.0, 100.0})
      for (const int kind : {0, 1, 2}) {
        CAPTURE(F);
        CAPTURE(scale);
        CAPTURE(kind);
        MatrixXd A = MatrixXd::Zero(F, F);
        if (kind < 2) {
          MatrixXd X(F / 2, F);
          for (index_t i = 0; i < X.size(); ++i) X.data()[i] = scale * std::max(0.0, normal(rng));
          if (kind == 1) X.leftCols(F / 3).setZero();
          A = oracle::covariance(X, 0.0);
        }
        const square_matrix<float> cov = (A + 1e-5 * MatrixXd::Identity(F, F)).cast<float>();
        const MatrixXd ref = oracle::newton_schulz(cov.cast<double>(), 5);
        for_each_policy([&](const auto& policy) {
          square_matrix<float> D;
          const auto r = inverse_sqrt(policy, cov, D, isqrt_options::fixed(5));
          CHECK(r.status == isqrt_status::ok);
          CHECK(D.allFinite());
          // float32 rounding of 5 steps on a matrix whose eigenvalues span scale/eps: measured <= 1e-6
          CHECK(oracle::rel_err(D, ref) < 1e-5);
        });
      }
}

TEST_CASE_TEMPLATE("not_positive_definite is for an eigenvalue below -F*epsilon(T)*max diag, not for singular PSD", T, float,
                   double) {
  std::mt19937_64 rng(43);
  const index_t F = 40;
  const MatrixXd X = MatrixXd::Random(10, F);
  const MatrixXd A = oracle::covariance(X, 0.0);  // rank 9, PSD
  const double tau = double(F) * double(std::numeric_limits<T>::epsilon()) * A.diagonal().maxCoeff();
  for_each_policy([&](const auto& policy) {
    square_matrix<T> D;
    CHECK(inverse_sqrt(policy, square_matrix<T>(A.cast<T>()), D).status == isqrt_status::ok);
    CHECK(oracle::rel_err(D, oracle::newton_schulz(A.cast<T>().template cast<double>(), 5)) <
          (std::is_same_v<T, float> ? 1e-5 : 1e-12));
    const square_matrix<T> just_inside = (A - 0.5 * tau * MatrixXd::Identity(F, F)).cast<T>();
    CHECK(inverse_sqrt(policy, just_inside, D).status == isqrt_status::ok);
    const square_matrix<T> beyond = (A - 4 * tau * MatrixXd::Identity(F, F)).cast<T>();
    CHECK(inverse_sqrt(policy, beyond, D).status == isqrt_status::not_positive_definite);
    CHECK(D.array().isNaN().all());
    CHECK(inverse_sqrt(policy, square_matrix<T>(square_matrix<T>::Zero(F, F)), D).status ==
          isqrt_status::not_positive_definite);
  });
}

TEST_CASE("the scale is taken in double: 1e30 I and 1e-30 I in float are whitened, not zeroed or refused") {
  for (const index_t F : {1, 9, 64})
    for (const double magnitude : {1e30, 1e-30, 1e36, 1e-36})
      for (const auto scaling : {isqrt_scaling::frobenius, isqrt_scaling::trace}) {
        CAPTURE(F);
        CAPTURE(magnitude);
        const MatrixXd A = magnitude * (MatrixXd::Identity(F, F) + 0.1 * MatrixXd::Ones(F, F) / double(F));
        isqrt_options options = isqrt_options::fixed(5);
        options.scaling = scaling;
        // the float64 recurrence on A / magnitude, rescaled: exact in double for these magnitudes
        const MatrixXd unit = A / magnitude;
        const double s = scaling == isqrt_scaling::frobenius ? unit.norm() : unit.trace();
        MatrixXd Y = unit / s, Z = MatrixXd::Identity(F, F);
        for (int k = 0; k < 5; ++k) {
          const MatrixXd Tk = 0.5 * (3.0 * MatrixXd::Identity(F, F) - Z * Y);
          Y = Y * Tk;
          Z = Tk * Z;
        }
        const MatrixXd ref = Z / std::sqrt(s * magnitude);
        for_each_policy([&](const auto& policy) {
          square_matrix<float> D;
          const auto r = inverse_sqrt(policy, square_matrix<float>(A.cast<float>()), D, options);
          CHECK(r.status == isqrt_status::ok);
          CHECK(D.allFinite());
          CHECK(oracle::rel_err(D, ref) < 1e-5);
        });
        square_matrix<float> D;
        CHECK(inverse_sqrt(seq, square_matrix<float>(A.cast<float>()), D, isqrt_options::converged(1e-5)).status ==
              isqrt_status::ok);
        CHECK(oracle::rel_err(D, MatrixXd(Eigen::SelfAdjointEigenSolver<MatrixXd>(A).operatorInverseSqrt())) < 1e-4);
      }
}

TEST_CASE("a non-symmetric A and a step count above the cap are argument errors") {
  square_matrix<float> A = square_matrix<float>::Identity(4, 4), D;
  A(0, 1) = 0.25f;
  for_each_policy([&](const auto& policy) {
    CHECK_THROWS_WITH_AS(inverse_sqrt(policy, A, D), doctest::Contains("A is not symmetric"), invalid_argument);
    std::vector<square_matrix<float>> batch{square_matrix<float>::Identity(3, 3), A}, Ds;
    CHECK_THROWS_WITH_AS(inverse_sqrt(policy, batch, Ds), doctest::Contains("A[1] is not symmetric"), invalid_argument);
  });
  CHECK_THROWS_WITH_AS(inverse_sqrt_exact(A, D), doctest::Contains("A is not symmetric"), invalid_argument);
  // rounding-level asymmetry (a GEMM's X^T X) is accepted
  square_matrix<float> B = square_matrix<float>::Identity(4, 4);
  B(0, 1) = 0.25f;
  B(1, 0) = std::nextafter(0.25f, 1.0f);
  CHECK(inverse_sqrt(seq, B, D).status == isqrt_status::ok);
  const square_matrix<float> I = square_matrix<float>::Identity(3, 3);
  CHECK_THROWS_WITH_AS(inverse_sqrt(seq, I, D, isqrt_options::fixed(isqrt_max_iterations + 1)),
                       doctest::Contains("iterations (n_iter) must be <= 10000"), invalid_argument);
  CHECK_THROWS_WITH_AS(inverse_sqrt(par, I, D, isqrt_options::converged(1e-5, isqrt_max_iterations + 1)),
                       doctest::Contains("must be <= 10000"), invalid_argument);
  CHECK(inverse_sqrt(seq, I, D, isqrt_options::fixed(isqrt_max_iterations)).status == isqrt_status::ok);
}

TEST_CASE("statuses print their names, and out-of-range values their number") {
  std::ostringstream os;
  os << isqrt_status::not_positive_definite << ' ' << static_cast<isqrt_status>(9);
  CHECK(os.str() == "not_positive_definite isqrt_status(9)");
}

TEST_CASE("an indefinite matrix whose entries span the double range is not_positive_definite (fuzz regression)") {
  // [[3.9e-304, 5e299], [5e299, 0]]: unscaled, its Cholesky factor overflows to a NaN pivot, which
  // Eigen's LLT does not see (tests/fuzz/corpus/inverse_sqrt/regression_llt_overflow).
  Eigen::MatrixXd A = Eigen::MatrixXd::Zero(3, 3);
  A(0, 0) = 3.9e-304;
  A(0, 1) = A(1, 0) = 5e299;
  A(2, 2) = 1.0;
  for (const isqrt_options& o : {isqrt_options::fixed(0), isqrt_options::fixed(5), isqrt_options::converged(1e-6)}) {
    Eigen::MatrixXd D;
    CHECK(inverse_sqrt(seq, A, D, o).status == isqrt_status::not_positive_definite);
    CHECK(inverse_sqrt(par, A, D, o).status == isqrt_status::not_positive_definite);
  }
}
