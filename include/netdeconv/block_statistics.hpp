// SPDX-License-Identifier: MIT
#pragma once
// What estimation produces and folding and whitening consume: the mean and D of every statistic
// of a block plan.

#include <vector>

#include <Eigen/Core>

#include "blocks.hpp"

namespace netdeconv {

/// Whitening statistics of a plan: per statistic s, the mean (F) and D_s ~ Cov_s^(-1/2) (F x F).
/// What a conv/linear layer folds into its weights, and what whiten() returns for reuse.
template <class T>
struct block_statistics {
  block_plan plan;
  std::vector<Eigen::Matrix<T, Eigen::Dynamic, 1>> mean;
  std::vector<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>> D;
};

}  // namespace netdeconv
