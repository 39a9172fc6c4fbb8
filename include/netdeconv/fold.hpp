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
#include <vector>

#include "block_statistics.hpp"
#include "blocks.hpp"
#include "error.hpp"
#include "execution.hpp"
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

/// Checks that weight (Cout, C/groups, kh, kw) and bias (Cout or empty) fit the plan.
template <class T>
void check_weight(const char* fn, const block_plan& plan, const image_view<const T>& weight,
                  const vector_view<const T>& bias) {
  check_view(fn, "weight", weight);
  check_view(fn, "bias", bias);
  const index_t cout = weight.shape[0];
  NETDECONV_REQUIRE(cout >= 1 && cout % plan.groups == 0, fn, "weight has Cout=", cout,
                    ", which must be a positive multiple of groups=", plan.groups);
  NETDECONV_REQUIRE(weight.shape[1] * plan.groups == plan.channels, fn, "weight has ", weight.shape[1],
                    " input channels per group, the plan needs C/groups = ", plan.channels, "/", plan.groups);
  NETDECONV_REQUIRE(weight.shape[2] * weight.shape[3] == plan.kernel_area, fn, "weight kernel ", weight.shape[2], "x",
                    weight.shape[3], " does not match the plan's kernel area ", plan.kernel_area);
  if (!bias.empty())
    NETDECONV_REQUIRE(bias.shape[0] == cout, fn, "bias has ", bias.shape[0], " entries, weight has Cout=", cout);
}

/// View of a linear weight (Cout, Fin) as a conv weight (Cout, Fin, 1, 1).
template <class T>
image_view<T> as_conv_weight(const matrix_view<T>& w) {
  return {w.data, {w.shape[0], w.shape[1], 1, 1}, {w.stride[0], w.stride[1], 0, 0}};
}

}  // namespace netdeconv::detail

#include "sequential/fold.hpp"
#include "simd/fold.hpp"

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
  detail::check_output_view(fn, "weight_out", weight_out);
  detail::check_output_view(fn, "bias_out", bias_out);
  detail::check_disjoint(fn, "weight_out", weight_out, "weight", weight, true);
  detail::check_disjoint(fn, "weight_out", weight_out, "bias", bias);
  detail::check_disjoint(fn, "bias_out", bias_out, "bias", bias, true);
  detail::check_disjoint(fn, "bias_out", bias_out, "weight", weight);
  detail::check_disjoint(fn, "bias_out", bias_out, "weight_out", weight_out);
  NETDECONV_REQUIRE(weight_out.shape == weight.shape, fn, "weight_out must have weight's shape");
  NETDECONV_REQUIRE(bias_out.shape[0] == weight.shape[0], fn, "bias_out has ", bias_out.shape[0],
                    " entries, weight has Cout=", weight.shape[0]);
  detail::fold_impl(policy, stats, weight, bias, weight_out, bias_out);
}

/// W' and b' in new contiguous buffers.
template <class T>
struct folded_weights {
  std::vector<T> weight;  ///< W', contiguous in the weight's logical shape (OIHW, or (Cout, Fin))
  std::vector<T> bias;    ///< b', Cout entries
};

/// Returning form of fold: W' (contiguous OIHW) and b'.
template <class Policy, class T>
folded_weights<T> fold(const Policy& policy, const block_statistics<T>& stats, image_view<const T> weight,
                       vector_view<const T> bias) {
  detail::check_statistics("fold", stats);
  detail::check_weight("fold", stats.plan, weight, bias);
  const auto& s = weight.shape;
  folded_weights<T> out{std::vector<T>(std::max<index_t>(weight.size(), 0)), std::vector<T>(std::max<index_t>(s[0], 0))};
  fold(policy, stats, weight, bias, nchw(out.weight.data(), s[0], s[1], s[2], s[3]), contiguous(out.bias.data(), s[0]));
  return out;
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
