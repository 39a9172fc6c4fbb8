// SPDX-License-Identifier: MIT
#pragma once
// Mergeable first and second moments of a set of F-dimensional samples (docs/method.md §4), kept in centred
// form so that large means do not cancel:
//   count n, mean mu = (1/n) sum x, scatter M = sum (x - mu)(x - mu)^T   (lower triangle stored).
// Two sets merge exactly into the moments of their union (Chan, Golub & LeVeque):
//   n = na + nb,  d = mu_b - mu_a,  mu = mu_a + d*nb/n,  M = M_a + M_b + d d^T * na*nb/n.
// covariance(eps) = M/n + eps*I (the biased 1/n estimator of the reference layers).
// The same operations on moments in caller memory (moments_view, statistics_view.hpp), for every
// backend: merge(policy, a, b, out) and covariance(policy, m, eps, cov, mean).

#include <utility>
#include <vector>

#include <Eigen/Core>

#include "checks.hpp"
#include "error.hpp"
#include "execution.hpp"
#include "statistics_view.hpp"
#include "tensor_view.hpp"

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

namespace detail {

/// Writes moments (one per statistic) into a checked view of the same shape.
inline void store_moments(const std::vector<moments<double>>& m, const moments_view<double>& out) {
  for (index_t s = 0; s < out.statistics(); ++s) {
    const moments<double>& ms = m[std::size_t(s)];
    out.count(s) = ms.count();
    for (index_t i = 0; i < out.features(); ++i) {
      out.mean(s, i) = ms.mean()[i];
      for (index_t j = 0; j <= i; ++j) out.scatter(s, i, j) = out.scatter(s, j, i) = ms.scatter()(i, j);
    }
  }
}

/// Statistic s of a moments view as moments<double>.
inline moments<double> load_moments(const moments_view<const double>& m, index_t s) {
  const index_t F = m.features();
  moments<double>::vector mean(F);
  moments<double>::matrix scatter(F, F);
  for (index_t i = 0; i < F; ++i) {
    mean[i] = m.mean(s, i);
    for (index_t j = 0; j < F; ++j) scatter(i, j) = m.scatter(s, i, j);
  }
  return {m.count(s), std::move(mean), std::move(scatter)};
}

}  // namespace detail

/// out = moments of the union of a and b (Chan's update above), statistic by statistic; out must
/// not share memory with a or b. (One implementation for every CPU policy.)
template <class Policy>
void merge(const Policy& policy, const moments_view<const double>& a, const moments_view<const double>& b,
           const moments_view<double>& out) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  (void)policy;
  detail::check_merge("merge", a, b, out);
  std::vector<moments<double>> merged;
  for (index_t s = 0; s < a.statistics(); ++s) {
    merged.push_back(detail::load_moments(a, s));
    merged.back().merge(detail::load_moments(b, s));
  }
  detail::store_moments(merged, out);
}

/// cov[s] = M_s / n_s + eps I in T and, if mean is not empty, mean[s] = mu_s in T: what
/// inverse_sqrt and fold take. cov (S, F, F), mean (S, F). Throws if a count is below 2.
template <class Policy, class T>
void covariance(const Policy& policy, const moments_view<const double>& m, double eps, const tensor_view<T, 3>& cov,
                const matrix_view<T>& mean = {}) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  (void)policy;
  constexpr const char* fn = "covariance";
  detail::check_covariance(fn, m, eps, cov, mean);
  const index_t F = m.features();
  for (index_t s = 0; s < m.statistics(); ++s) {
    NETDECONV_REQUIRE(m.count(s) >= 2, fn, "statistic ", s, " has ", m.count(s), " samples, a covariance needs >= 2");
    for (index_t i = 0; i < F; ++i) {
      for (index_t j = 0; j < F; ++j) cov(s, i, j) = T(m.scatter(s, i, j) / double(m.count(s)) + (i == j ? eps : 0.0));
      if (!mean.empty()) mean(s, i) = T(m.mean(s, i));
    }
  }
}

}  // namespace netdeconv
