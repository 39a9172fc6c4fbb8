// SPDX-License-Identifier: MIT
#pragma once
// Mergeable first and second moments of a set of F-dimensional samples (docs/method.md §4), kept in centred
// form so that large means do not cancel:
//   count n, mean mu = (1/n) sum x, scatter M = sum (x - mu)(x - mu)^T   (lower triangle stored).
// Two sets merge exactly into the moments of their union (Chan, Golub & LeVeque):
//   n = na + nb,  d = mu_b - mu_a,  mu = mu_a + d*nb/n,  M = M_a + M_b + d d^T * na*nb/n.
// covariance(eps) = M/n + eps*I (the biased 1/n estimator of the reference layers).

#include <utility>

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
  explicit moments(index_t features) : mean_(vector::Zero(checked_features(features))), scatter_(matrix::Zero(features, features)) {}
  /// From centred parts: count n, mean mu, scatter M = sum (x - mu)(x - mu)^T (lower triangle read).
  moments(index_t count, vector mean, matrix scatter) : count_(count), mean_(std::move(mean)), scatter_(std::move(scatter)) {
    NETDECONV_REQUIRE(count >= 0, "moments", "count must be >= 0, got ", count);
    NETDECONV_REQUIRE(scatter_.rows() == mean_.size() && scatter_.cols() == mean_.size(), "moments", "scatter is ",
                      scatter_.rows(), "x", scatter_.cols(), " but the mean has ", mean_.size(), " features");
  }

  index_t count() const { return count_; }
  index_t features() const { return mean_.size(); }
  const vector& mean() const { return mean_; }
  /// Centred scatter sum (x - mu)(x - mu)^T; only the lower triangle is meaningful.
  const matrix& scatter() const { return scatter_; }

  /// Adds the rows of `samples` (m x F, rows are samples): the merge above with b = the tile,
  /// in place (M += centred tile scatter + d d^T * na*m/n), no F x F temporary.
  void add(const rows_matrix& samples) {
    NETDECONV_REQUIRE(samples.cols() == features(), "moments::add", "samples have ", samples.cols(),
                      " features, the moments have ", features());
    const index_t m = samples.rows();
    if (m == 0) return;
    const vector tile_mean = samples.colwise().mean().transpose();
    const rows_matrix centred = samples.rowwise() - tile_mean.transpose();
    scatter_.template selfadjointView<Eigen::Lower>().rankUpdate(centred.transpose());
    update_mean(m, tile_mean);
  }

  /// this <- moments of the union of this set and `other`.
  void merge(const moments& other) {
    if (other.count_ == 0) return;
    if (count_ == 0) {
      *this = other;
      return;
    }
    NETDECONV_REQUIRE(other.features() == features(), "moments::merge", "moments of ", other.features(),
                      " features cannot merge into moments of ", features());
    scatter_ += other.scatter_;
    update_mean(other.count_, other.mean_);
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
  static index_t checked_features(index_t features) {
    NETDECONV_REQUIRE(features >= 0, "moments", "features must be >= 0, got ", features);
    return features;
  }

  /// Merges in the count and mean of a set b whose scatter is already added:
  /// d = mu_b - mu, mu += d*nb/n, M += d d^T * na*nb/n.
  void update_mean(index_t count_b, const vector& mean_b) {
    const index_t n = detail::checked_add("moments", "sample count", count_, count_b);
    const vector delta = mean_b - mean_;
    scatter_.template selfadjointView<Eigen::Lower>().rankUpdate(delta, Acc(count_) * Acc(count_b) / Acc(n));
    mean_ += delta * (Acc(count_b) / Acc(n));
    count_ = n;
  }

  index_t count_ = 0;
  vector mean_;
  matrix scatter_;
};

}  // namespace netdeconv
