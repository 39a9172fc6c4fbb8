// SPDX-License-Identifier: MIT
// libFuzzer target: inverse_sqrt (inverse_sqrt.hpp) on arbitrary small matrices: NaN, Inf, huge,
// tiny, non-symmetric, indefinite, singular, ill-conditioned (fuzz_input.hpp picks the entries).
// Properties, for float and double, the sequential and OpenMP policies and every method:
//   - a call either throws invalid_argument (only for a finite non-symmetric A) or reports;
//   - status ok only on a correct result: D finite, A finite and not indefinite (by a float64
//     eigendecomposition, with twice the library's rounding margin), and in converged mode
//     ||D A D - I||_F / sqrt(F) (in long double) within 2*tolerance plus the rounding of D A D;
//   - the two policies agree on the screen's verdicts (non-finite A, not positive definite).


#include <Eigen/Eigenvalues>

#include <netdeconv/inverse_sqrt.hpp>

#include "fuzz_input.hpp"

using namespace netdeconv;

namespace {

/// Byte 0: F = 1 + b % 6 and the construction (b / 6 % 3): 0 symmetrised R, 1 Gram matrix
/// diag(d) R R^T diag(d) (positive semidefinite, any conditioning), 2 R as it is.
Eigen::MatrixXd make_matrix(fuzz::fuzz_input& in) {
  const std::uint8_t b = in.byte();
  const Eigen::Index F = 1 + b % 6;
  Eigen::MatrixXd R(F, F);
  for (Eigen::Index i = 0; i < F * F; ++i) R.data()[i] = in.real();
  switch (b / 6 % 3) {
    case 0: return (R + R.transpose()) / 2;
    case 1: {
      Eigen::VectorXd d(F);
      for (Eigen::Index i = 0; i < F; ++i) d[i] = in.real();
      return d.asDiagonal() * (R * R.transpose()) * d.asDiagonal();
    }
    default: return R;
  }
}

isqrt_options make_options(fuzz::fuzz_input& in) {
  const std::uint8_t b = in.byte();
  isqrt_options o;
  switch (b % 3) {
    case 0: o = isqrt_options::fixed(b / 3 % 20); break;
    case 1: o = isqrt_options::converged(std::ldexp(1.0, -(b / 3 % 40)), 1 + in.byte() % 60); break;
    default: o = isqrt_options::exact(); break;
  }
  if (in.byte() & 1) o.scaling = isqrt_scaling::trace;
  return o;
}

template <class T>
void check(const Eigen::MatrixXd& A64, const isqrt_options& options) {
  const square_matrix<T> A = A64.cast<T>();
  square_matrix<T> D, Dp;
  isqrt_report report, parallel;
  try {
    report = inverse_sqrt(seq, A, D, options);
  } catch (const invalid_argument&) {
    NETDECONV_FUZZ_CHECK(A.allFinite() && !detail::measure_symmetry<T>(A).ok());
    return;
  }
  parallel = inverse_sqrt(omp_policy{{}, 2}, A, Dp, options);
  NETDECONV_FUZZ_CHECK((report.status == isqrt_status::not_positive_definite) ==
             (parallel.status == isqrt_status::not_positive_definite));
  if (!A.allFinite()) NETDECONV_FUZZ_CHECK(report.status == isqrt_status::non_finite && parallel.status == isqrt_status::non_finite);
  if (parallel.status == isqrt_status::ok) NETDECONV_FUZZ_CHECK(Dp.allFinite());
  if (report.status != isqrt_status::ok) return;

  const Eigen::Index F = A.rows();
  NETDECONV_FUZZ_CHECK(D.rows() == F && D.cols() == F && D.allFinite());
  const Eigen::MatrixXd a = A.template cast<double>();
  const double lambda_min = Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(a, Eigen::EigenvaluesOnly).eigenvalues()[0];
  const double eps = double(std::numeric_limits<T>::epsilon()), margin = double(F) * eps * a.diagonal().cwiseAbs().maxCoeff();
  NETDECONV_FUZZ_CHECK(lambda_min >= -2 * margin);
  if (options.method == isqrt_method::newton_schulz && options.tolerance > 0) {
    using L = long double;
    const Eigen::Matrix<L, Eigen::Dynamic, Eigen::Dynamic> d = D.template cast<L>(), al = A.template cast<L>();
    const auto E = (d * al * d - Eigen::Matrix<L, Eigen::Dynamic, Eigen::Dynamic>::Identity(F, F)).eval();
    const double residual = double(E.norm() / std::sqrt(L(F)));
    // D A D in T: each entry of D carries relative rounding eps, so D A D carries about
    // 3 F eps ||D|| ||A|| ||D|| / sqrt(F) beyond the iteration's own residual.
    const double rounding = 3 * double(F) * eps * double(d.norm() * al.norm() * d.norm()) / std::sqrt(double(F));
    NETDECONV_FUZZ_CHECK(residual <= 2 * options.tolerance + rounding);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::fuzz_input in(data, size);
  const Eigen::MatrixXd A = make_matrix(in);
  const isqrt_options options = make_options(in);
  if (in.byte() & 1)
    check<float>(A, options);
  else
    check<double>(A, options);
  return 0;
}
