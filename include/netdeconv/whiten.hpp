// SPDX-License-Identifier: MIT
#pragma once
// ZCA whitening of an arbitrary matrix (docs/method.md §8).
//
// X: n x F with rows as samples (or F x n with columns_are_samples), any strides.
//   mu = column mean, Cov = (X - mu)^T (X - mu) / n + eps I, D = Cov^(-1/2) (symmetric),
//   output = (X - mu) D, same orientation as X.
// With block = B > 0 the features are split into F/B contiguous blocks, each whitened on its own
// (block-diagonal D). The exact method (the default; options.isqrt selects Newton-Schulz)'s output has covariance Cov0 (Cov0 + eps I)^-1 ~ I, where
// Cov0 is the covariance without eps.
//
//   auto w = netdeconv::whiten(netdeconv::par, netdeconv::view(X));     // X: Eigen n x F matrix
//   w.data;                       // whitened n x F (row-major)
//   netdeconv::apply_whitening(netdeconv::par, w.statistics, view(X_new), view_mut(out));

#include <algorithm>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "blocks.hpp"
#include "checks.hpp"
#include "covariance.hpp"
#include "eigen.hpp"
#include "error.hpp"
#include "execution.hpp"
#include "fold.hpp"
#include "inverse_sqrt.hpp"
#include "statistics_step.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

struct whiten_options {
  double eps = 1e-5;
  isqrt_options isqrt = isqrt_options::exact();  ///< or Newton-Schulz, fixed or converged
  index_t block = 0;                             ///< 0: one block of all features
  bool columns_are_samples = false;
};

template <class T>
struct whitening : estimated_statistics<T> {
  /// Whitened data, same orientation as the input (n x F, or F x n with columns_are_samples).
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> data;
};

/// out = (X - mu_s) D_s block by block, with the statistics of a previous whiten() (or any
/// block_statistics with K = 1). X and out have the same shape and orientation; X is not modified
/// unless out is X exactly (whitening in place is allowed; any other overlap is not).
template <class Policy, class T>
void apply_whitening(const Policy& policy, const block_statistics<T>& stats, matrix_view<const T> X, matrix_view<T> out,
                     bool columns_are_samples = false) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  constexpr const char* fn = "apply_whitening";
  if (columns_are_samples) {
    X = detail::transposed(X);
    out = detail::transposed(out);
  }
  detail::check_statistics(fn, stats);
  detail::check_whitening_data(fn, stats.plan, X, out, true);
  const auto x = as_eigen(X);
  auto y = as_eigen(out);
  const index_t n = X.shape[0], F = stats.plan.features();
  // Pieces of rows, one thread each: the centred piece (rows x F) stays in cache, and each thread's
  // product runs in that thread.
  constexpr index_t piece_rows = 256;
  const index_t pieces = (n + piece_rows - 1) / piece_rows;
  const int threads = detail::policy_threads(policy);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1 && pieces > 1)
#endif
  {
    detail::keep_eigen_in_thread();
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> centred;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (index_t p = 0; p < pieces; ++p) {
      const auto rows = Eigen::seqN(p * piece_rows, std::min(piece_rows, n - p * piece_rows));
      for (index_t s = 0; s < stats.plan.count(); ++s) {
        const auto cols = Eigen::seqN(s * F, F);
        centred = x(rows, cols).rowwise() - stats.mean[s].transpose();
        y(rows, cols).noalias() = centred * stats.D[s];
      }
    }
  }
}

/// The same with the statistics in caller memory (mean (S, F), D (S, F, F); S is T or const T),
/// which out must not overlap.
template <class Policy, class S, class T>
void apply_whitening(const Policy& policy, const block_statistics_view<S>& stats, matrix_view<const T> X,
                     matrix_view<T> out, bool columns_are_samples = false) {
  static_assert(std::is_same_v<std::remove_const_t<S>, T>, "statistics and data must have the same scalar type");
  detail::check_apply_whitening("apply_whitening", block_statistics_view<const T>(stats),
                                columns_are_samples ? detail::transposed(X) : X,
                                columns_are_samples ? detail::transposed(out) : out, true);
  apply_whitening(policy, detail::load_statistics(stats), X, out, columns_are_samples);
}

/// Whitens X (see file comment); returns the data, mu and D per block, and the isqrt reports.
template <class Policy, class T>
whitening<T> whiten(const Policy& policy, matrix_view<const T> X, const whiten_options& options = {}) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  constexpr const char* fn = "whiten";
  detail::check_view(fn, "X", X);
  NETDECONV_REQUIRE(options.eps >= 0, fn, "eps must be >= 0, got ", options.eps);
  NETDECONV_REQUIRE(options.block >= 0, fn, "block must be >= 0, got ", options.block);
  const matrix_view<const T> samples = options.columns_are_samples ? detail::transposed(X) : X;
  const index_t F = samples.shape[1];
  NETDECONV_REQUIRE(F >= 1, fn, "X has no features");
  const block_plan plan = make_block_plan(block_layout::independent, F, 1, options.block == 0 ? F : options.block);
  whitening<T> out{estimate_statistics<T>(policy, matrix_rows<T>(samples), plan, options.eps, options.isqrt), {}};
  out.data.resize(X.shape[0], X.shape[1]);
  apply_whitening(policy, out.statistics, X, view_mut(out.data), options.columns_are_samples);
  return out;
}

}  // namespace netdeconv
