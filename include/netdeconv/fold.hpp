// SPDX-License-Identifier: MIT
#pragma once
// Implicit deconvolution: fold the whitening into the layer's weights (docs/method.md §6), so that
//   conv(x, W', b') == (X - mu) D W^T + b   for the patch matrix X of x
// (X - mu and D taken block by block as the plan says). For every output o and every piece (s, g)
// of the plan that lies in o's input group, with w = W[o, column(s, g, :)] (length F):
//   W'[o, column(s, g, :)] = w D_s        b'[o] = b[o] - sum over pieces of (w D_s) . mu_s
// Conv weights are (Cout, C/groups, kh, kw); linear weights (Cout, Fin) are the case kh = kw = 1.
// An absent bias (empty view) counts as 0.

#include <algorithm>
#include <type_traits>
#include <vector>

#include "block_statistics.hpp"
#include "blocks.hpp"
#include "checks.hpp"
#include "error.hpp"
#include "execution.hpp"
#include "statistics_view.hpp"
#include "tensor_view.hpp"

namespace netdeconv::detail {

/// Checks that every statistic has a mean of F and a D of F x F for the plan.
template <class T>
void check_statistics(const char* fn, const block_statistics<T>& stats) {
  const block_plan& plan = stats.plan;
  check_plan(fn, plan);
  NETDECONV_REQUIRE(index_t(stats.mean.size()) == plan.count() && index_t(stats.D.size()) == plan.count(), fn,
                    "statistics hold ", stats.mean.size(), " means and ", stats.D.size(), " D, the plan needs ",
                    plan.count());
  for (index_t s = 0; s < plan.count(); ++s)
    NETDECONV_REQUIRE(stats.mean[s].size() == plan.features() && stats.D[s].rows() == plan.features() &&
                          stats.D[s].cols() == plan.features(),
                      fn, "statistic ", s, " has mean ", stats.mean[s].size(), " and D ", stats.D[s].rows(), "x",
                      stats.D[s].cols(), ", the plan needs F=", plan.features());
}

}  // namespace netdeconv::detail

#include "sequential/fold.hpp"
#include "omp/fold.hpp"

namespace netdeconv {

/// W' and b' (see file comment). weight_out has weight's shape, bias_out has Cout entries (always
/// written, also when bias is absent). weight and bias are not modified, unless weight_out is
/// weight (or bias_out is bias) exactly: folding in place is allowed; any other overlap is not.
template <class Policy, class T>
void fold(const Policy& policy, const block_statistics<T>& stats, image_view<const T> weight,
          vector_view<const T> bias, image_view<T> weight_out, vector_view<T> bias_out) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  constexpr const char* fn = "fold";
  detail::check_statistics(fn, stats);
  detail::check_weight(fn, stats.plan, weight, bias);
  detail::check_fold_outputs(fn, weight, bias, weight_out, bias_out, true);
  detail::fold_impl(policy, stats, weight, bias, weight_out, bias_out);
}

/// The same with the statistics in caller memory (mean (S, F), D (S, F, F); S may be T or const T),
/// which the outputs must not overlap.
template <class Policy, class S, class T>
void fold(const Policy& policy, const block_statistics_view<S>& stats, image_view<const T> weight,
          vector_view<const T> bias, image_view<T> weight_out, vector_view<T> bias_out) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  static_assert(std::is_same_v<std::remove_const_t<S>, T>, "statistics and weights must have the same scalar type");
  detail::check_fold("fold", block_statistics_view<const T>(stats), weight, bias, weight_out, bias_out, true);
  detail::fold_impl(policy, detail::load_statistics(stats), weight, bias, weight_out, bias_out);
}

/// Linear form of the view overload: weight (Cout, Fin).
template <class Policy, class S, class T>
void fold(const Policy& policy, const block_statistics_view<S>& stats, matrix_view<const T> weight,
          vector_view<const T> bias, matrix_view<T> weight_out, vector_view<T> bias_out) {
  fold(policy, stats, detail::as_conv_weight(weight), bias, detail::as_conv_weight(weight_out), bias_out);
}

/// W' and b' in new contiguous buffers.
template <class T>
struct folded_weights {
  std::vector<T> weight;  ///< W', contiguous in the weight's logical shape (OIHW, or (Cout, Fin))
  std::vector<T> bias;    ///< b', Cout entries
};

namespace detail {

/// fold into new contiguous buffers, for arguments already checked (check_statistics,
/// check_weight): the returning forms, the statistics steps and the layers.
template <class Policy, class T>
folded_weights<T> folded(const Policy& policy, const block_statistics<T>& stats, const image_view<const T>& weight,
                         const vector_view<const T>& bias) {
  const auto& s = weight.shape;
  folded_weights<T> out{std::vector<T>(std::size_t(weight.size())), std::vector<T>(std::size_t(s[0]))};
  fold_impl(policy, stats, weight, bias, nchw(out.weight.data(), s[0], s[1], s[2], s[3]), contiguous(out.bias.data(), s[0]));
  return out;
}

}  // namespace detail

/// Returning form of fold: W' (contiguous OIHW) and b'.
template <class Policy, class T>
folded_weights<T> fold(const Policy& policy, const block_statistics<T>& stats, image_view<const T> weight,
                       vector_view<const T> bias) {
  static_assert(is_execution_policy_v<Policy>, "first argument must be an execution policy");
  detail::check_statistics("fold", stats);
  detail::check_weight("fold", stats.plan, weight, bias);
  return detail::folded(policy, stats, weight, bias);
}

/// Linear layer form: weight (Cout, Fin).
template <class Policy, class T>
void fold(const Policy& policy, const block_statistics<T>& stats, matrix_view<const T> weight,
          vector_view<const T> bias, matrix_view<T> weight_out, vector_view<T> bias_out) {
  fold(policy, stats, detail::as_conv_weight(weight), bias, detail::as_conv_weight(weight_out), bias_out);
}

/// Returning linear form: W' (contiguous (Cout, Fin)) and b'.
template <class Policy, class T>
folded_weights<T> fold(const Policy& policy, const block_statistics<T>& stats, matrix_view<const T> weight,
                       vector_view<const T> bias) {
  return fold(policy, stats, detail::as_conv_weight(weight), bias);
}

}  // namespace netdeconv
