// SPDX-License-Identifier: MIT
#pragma once
// What estimation produces and folding and whitening consume: the mean and D of every statistic
// of a block plan (block_statistics_view in statistics_view.hpp is the same in caller memory).

#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "blocks.hpp"
#include "statistics_view.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

/// Whitening statistics of a plan: per statistic s, the mean (F) and D_s ~ Cov_s^(-1/2) (F x F).
/// What a conv/linear layer folds into its weights, and what whiten() returns for reuse.
template <class T>
struct block_statistics {
  block_plan plan;
  std::vector<Eigen::Matrix<T, Eigen::Dynamic, 1>> mean;
  std::vector<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>> D;
};

namespace detail {

/// A (checked) statistics view copied into block_statistics.
template <class T>
block_statistics<std::remove_const_t<T>> load_statistics(const block_statistics_view<T>& v) {
  using U = std::remove_const_t<T>;
  const index_t F = v.plan.features();
  block_statistics<U> out{v.plan, {}, {}};
  for (index_t s = 0; s < v.plan.count(); ++s) {
    out.mean.emplace_back(F);
    out.D.emplace_back(F, F);
    for (index_t i = 0; i < F; ++i) {
      out.mean.back()[i] = v.mean(s, i);
      for (index_t j = 0; j < F; ++j) out.D.back()(i, j) = v.D(s, i, j);
    }
  }
  return out;
}

/// Writes mu_s and D_s of `stats` into (checked) views mean (S, F) and D (S, F, F).
template <class T>
void store_statistics(const block_statistics<T>& stats, const matrix_view<T>& mean, const tensor_view<T, 3>& D) {
  for (std::size_t s = 0; s < stats.mean.size(); ++s)
    for (index_t i = 0; i < stats.mean[s].size(); ++i) {
      mean(index_t(s), i) = stats.mean[s][i];
      for (index_t j = 0; j < stats.mean[s].size(); ++j) D(index_t(s), i, j) = stats.D[s](i, j);
    }
}

}  // namespace detail
}  // namespace netdeconv
