// SPDX-License-Identifier: MIT
#pragma once
// Mergeable first and second moments of a set of F-dimensional samples (SPEC §4), kept in centred
// form so that large means do not cancel:
//   count n, mean mu = (1/n) sum x, scatter M = sum (x - mu)(x - mu)^T   (lower triangle stored).
// Two sets merge exactly into the moments of their union (Chan, Golub & LeVeque):
//   n = na + nb,  d = mu_b - mu_a,  mu = mu_a + d*nb/n,  M = M_a + M_b + d d^T * na*nb/n.
// covariance(eps) = M/n + eps*I (the biased 1/n estimator of the reference layers).

#include <Eigen/Core>

#include "error.hpp"

namespace netdeconv {

template <class Acc = double>
class moments {
 public:
  using matrix = Eigen::Matrix<Acc, Eigen::Dynamic, Eigen::Dynamic>;
  using vector = Eigen::Matrix<Acc, Eigen::Dynamic, 1>;
  using rows_matrix = Eigen::Matrix<Acc, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  moments() = default;
  explicit moments(index_t features) : mean_(vector::Zero(features)), scatter_(matrix::Zero(features, features)) {}

  index_t count() const { return count_; }
  index_t features() const { return mean_.size(); }
  const vector& mean() const { return mean_; }
  /// Centred scatter sum (x - mu)(x - mu)^T; only the lower triangle is meaningful.
  const matrix& scatter() const { return scatter_; }

  /// Adds the rows of `samples` (m x F, rows are samples): their own centred moments, then a merge.
  void add(const rows_matrix& samples) {
    if (samples.rows() == 0) return;
    moments tile(features());
    tile.count_ = samples.rows();
    tile.mean_ = samples.colwise().mean().transpose();
    const rows_matrix centred = samples.rowwise() - tile.mean_.transpose();
    tile.scatter_.template selfadjointView<Eigen::Lower>().rankUpdate(centred.transpose());
    merge(tile);
  }

  /// this <- moments of the union of this set and `other`.
  void merge(const moments& other) {
    if (other.count_ == 0) return;
    if (count_ == 0) {
      *this = other;
      return;
    }
    const index_t n = count_ + other.count_;
    const vector delta = other.mean_ - mean_;
    const Acc weight = Acc(count_) * Acc(other.count_) / Acc(n);
    mean_ += delta * (Acc(other.count_) / Acc(n));
    scatter_ += other.scatter_;
    scatter_.template selfadjointView<Eigen::Lower>().rankUpdate(delta, weight);
    count_ = n;
  }

  /// Cov = M/n + eps*I, full symmetric, converted to T.
  template <class T = Acc>
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> covariance(double eps) const {
    NETDECONV_REQUIRE(count_ >= 2, "moments::covariance", "needs >= 2 samples, got ", count_);
    matrix cov = scatter_.template selfadjointView<Eigen::Lower>();
    cov /= Acc(count_);
    cov.diagonal().array() += Acc(eps);
    return cov.template cast<T>();
  }

 private:
  index_t count_ = 0;
  vector mean_;
  matrix scatter_;
};

}  // namespace netdeconv
