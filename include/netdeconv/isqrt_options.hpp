// SPDX-License-Identifier: MIT
#pragma once
// The inverse square root's vocabulary, shared by every backend: method, scaling, options,
// statuses and reports (the recurrence and the statuses' meaning: inverse_sqrt.hpp,
// docs/method.md §5). Eigen-free.

#include <cstddef>
#include <iterator>
#include <ostream>

#include "error.hpp"

namespace netdeconv {

enum class isqrt_method { newton_schulz, exact };
enum class isqrt_scaling { frobenius, trace };
enum class isqrt_status { ok, not_converged, non_finite, not_positive_definite };

inline std::ostream& operator<<(std::ostream& os, isqrt_status s) {
  constexpr const char* names[] = {"ok", "not_converged", "non_finite", "not_positive_definite"};
  const auto i = static_cast<std::size_t>(s);
  if (i >= std::size(names)) return os << "isqrt_status(" << static_cast<int>(s) << ")";
  return os << names[i];
}

/// The most Newton-Schulz steps a call may ask for (fixed steps, or the converged mode's cap).
inline constexpr int isqrt_max_iterations = 10000;

struct isqrt_options {
  isqrt_method method = isqrt_method::newton_schulz;
  int iterations = 5;      ///< fixed mode: the step count; converged mode: the cap
  double tolerance = 0.0;  ///< 0: fixed mode; > 0: stop when residual <= tolerance
  isqrt_scaling scaling = isqrt_scaling::frobenius;
  /// Fixed mode: false skips what only the final residual needs (the last Y and Z Y products, 2 of
  /// the 3n + 1); D is unchanged and the report's residual is NaN. Ignored in converged mode.
  bool final_residual = true;

  static isqrt_options fixed(int iterations) { return {isqrt_method::newton_schulz, iterations, 0.0}; }
  static isqrt_options converged(double tolerance, int max_iterations = 100) {
    return {isqrt_method::newton_schulz, max_iterations, tolerance};
  }
  /// The float64 eigendecomposition path (inverse_sqrt_exact).
  static isqrt_options exact() { return {isqrt_method::exact, 0, 0.0}; }
};

struct isqrt_report {
  int iterations = 0;      ///< Newton-Schulz steps taken (0 for the exact path)
  double residual = 0.0;   ///< ||I - Z Y||_F / sqrt(F) (exact path: ||D A D - I||_F / sqrt(F))
  isqrt_status status = isqrt_status::ok;
};

namespace detail {

inline void check_isqrt_options(const char* fn, const isqrt_options& o) {
  NETDECONV_REQUIRE(o.iterations >= 0, fn, "iterations (n_iter) must be >= 0, got ", o.iterations);
  NETDECONV_REQUIRE(o.iterations <= isqrt_max_iterations, fn, "iterations (n_iter) must be <= ", isqrt_max_iterations,
                    ", got ", o.iterations);
  NETDECONV_REQUIRE(o.tolerance >= 0, fn, "tolerance must be >= 0, got ", o.tolerance);
}

}  // namespace detail
}  // namespace netdeconv
