// SPDX-License-Identifier: MIT
#pragma once
// Statistics in caller memory, for every backend (host or device pointers): the mergeable moments
// of a block plan's statistics, and the mu and D that folding and whitening consume. Eigen-free.
// They are what the view forms of block_moments, merge, covariance, inverse_sqrt, fold,
// apply_whitening and the statistics steps read and write, so that the results land in a
// framework's tensors with no copy.
//
//   S = plan.count() statistics of F = plan.features() features:
//   moments_view:          count (S), mean (S, F), scatter (S, F, F): M_s = sum (x - mu_s)(x - mu_s)^T,
//                          full and symmetric, in double (docs/method.md §4)
//   block_statistics_view: mean (S, F) = mu_s, D (S, F, F) = D_s ~ Cov_s^(-1/2)
//
//   std::vector<netdeconv::index_t> count(S); std::vector<double> mean(S * F), scatter(S * F * F);
//   auto m = netdeconv::contiguous_moments(count.data(), mean.data(), scatter.data(), S, F);

#include <type_traits>

#include "blocks.hpp"
#include "config.hpp"
#include "error.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

/// Moments of S statistics of F features (see file comment). D is double or const double.
template <class D = double>
struct moments_view {
  static_assert(std::is_same_v<std::remove_const_t<D>, double>, "moments are kept in double");
  using count_type = std::conditional_t<std::is_const_v<D>, const index_t, index_t>;

  vector_view<count_type> count;   ///< (S): samples per statistic
  matrix_view<D> mean;             ///< (S, F)
  tensor_view<D, 3> scatter;       ///< (S, F, F), full symmetric

  NETDECONV_HOST_DEVICE index_t statistics() const { return mean.shape[0]; }
  NETDECONV_HOST_DEVICE index_t features() const { return mean.shape[1]; }

  template <class U = D, class = std::enable_if_t<!std::is_const_v<U>>>
  NETDECONV_HOST_DEVICE operator moments_view<const U>() const {
    return {count, mean, scatter};
  }
};

/// Contiguous moments: count[s], mean[s*F + i], scatter[(s*F + i)*F + j].
template <class D>
moments_view<D> contiguous_moments(typename moments_view<D>::count_type* count, D* mean, D* scatter, index_t S, index_t F) {
  constexpr const char* fn = "contiguous_moments";
  return {{count, {S}, {1}},
          {mean, {S, F}, {F, 1}},
          {scatter, {S, F, F}, {detail::checked_mul(fn, "statistic stride F*F", F, F), F, 1}}};
}

/// mu_s and D_s of the statistics of `plan` (see file comment). T may be const.
template <class T>
struct block_statistics_view {
  block_plan plan;
  matrix_view<T> mean;    ///< (S, F)
  tensor_view<T, 3> D;    ///< (S, F, F)

  template <class U = T, class = std::enable_if_t<!std::is_const_v<U>>>
  operator block_statistics_view<const U>() const {
    return {plan, mean, D};
  }
};

namespace detail {

/// Checks the three views of moments and that their shapes agree: count (S), mean (S, F), scatter (S, F, F).
template <class D>
void check_moments_view(const char* fn, const char* name, const moments_view<D>& m) {
  check_view(fn, name, m.count);
  check_view(fn, name, m.mean);
  check_view(fn, name, m.scatter);
  const index_t S = m.mean.shape[0], F = m.mean.shape[1];
  NETDECONV_REQUIRE(m.count.shape[0] == S && m.scatter.shape[0] == S && m.scatter.shape[1] == F && m.scatter.shape[2] == F,
                    fn, name, " must hold count (S), mean (S, F) and scatter (S, F, F); got count (", m.count.shape[0],
                    "), mean (", S, ", ", F, "), scatter (", m.scatter.shape[0], ", ", m.scatter.shape[1], ", ",
                    m.scatter.shape[2], ")");
}

/// check_moments_view, and the shape the plan gives: S = plan.count(), F = plan.features().
template <class D>
void check_moments_view(const char* fn, const char* name, const moments_view<D>& m, const block_plan& plan) {
  check_moments_view(fn, name, m);
  NETDECONV_REQUIRE(m.statistics() == plan.count() && m.features() == plan.features(), fn, name, " holds ",
                    m.statistics(), " statistics of ", m.features(), " features, the plan needs ", plan.count(), " of ",
                    plan.features());
}

/// An output moments view: check_moments_view with the plan, no element sharing memory, and the
/// three parts disjoint.
template <class D>
void check_output_moments(const char* fn, const char* name, const moments_view<D>& m, const block_plan& plan) {
  check_moments_view(fn, name, m, plan);
  check_output_view(fn, name, m.count);
  check_output_view(fn, name, m.mean);
  check_output_view(fn, name, m.scatter);
  check_disjoint(fn, "the mean", m.mean, "the count", m.count);
  check_disjoint(fn, "the scatter", m.scatter, "the count", m.count);
  check_disjoint(fn, "the scatter", m.scatter, "the mean", m.mean);
}

/// Checks a statistics view: a valid plan, mean (S, F) and D (S, F, F) for it.
template <class T>
void check_statistics_view(const char* fn, const block_statistics_view<T>& st) {
  check_plan(fn, st.plan);
  check_view(fn, "mean", st.mean);
  check_view(fn, "D", st.D);
  const index_t S = st.plan.count(), F = st.plan.features();
  NETDECONV_REQUIRE(st.mean.shape[0] == S && st.mean.shape[1] == F, fn, "mean is (", st.mean.shape[0], ", ",
                    st.mean.shape[1], "), the plan needs (", S, ", ", F, ")");
  NETDECONV_REQUIRE(st.D.shape[0] == S && st.D.shape[1] == F && st.D.shape[2] == F, fn, "D is (", st.D.shape[0], ", ",
                    st.D.shape[1], ", ", st.D.shape[2], "), the plan needs (", S, ", ", F, ", ", F, ")");
}

}  // namespace detail
}  // namespace netdeconv
