// SPDX-License-Identifier: MIT
#pragma once
// The argument checks of every entry point, shared by all backends: the CPU headers and the CUDA
// headers call these same functions before they dispatch, so a call is accepted or refused (with
// the same invalid_argument message) whatever the policy. Eigen-free. Each throws
// invalid_argument naming the argument and its value; none reads the data (device pointers are
// checked too), except where it says so.

#include "blocks.hpp"
#include "error.hpp"
#include "geometry.hpp"
#include "isqrt_options.hpp"
#include "statistics_view.hpp"
#include "tensor_view.hpp"

namespace netdeconv::detail {

/// im2col: x (N, C, H, W) and cols (N*Ho*Wo, C*kh*kw), an output disjoint from x. Returns the map.
template <class T>
patch_map check_im2col(const char* fn, const image_view<const T>& x, const conv_geometry& g, const matrix_view<T>& cols) {
  check_view(fn, "x", x);
  const patch_map map = make_patch_map(fn, x.shape, g, 1, false);
  check_output_view(fn, "cols", cols);
  check_disjoint(fn, "cols", cols, "x", x);
  NETDECONV_REQUIRE(cols.shape[0] == map.rows && cols.shape[1] == map.width, fn, "cols is ", cols.shape[0], "x",
                    cols.shape[1], " but the patch matrix is ", map.rows, "x", map.width);
  return map;
}

/// col2im: cols (N*Ho*Wo, C*kh*kw) and x (N, C, H, W), an output disjoint from cols. Returns the map.
template <class T>
patch_map check_col2im(const char* fn, const matrix_view<const T>& cols, const conv_geometry& g, const image_view<T>& x) {
  check_output_view(fn, "x", x);
  const patch_map map = make_patch_map(fn, x.shape, g, 1, false);
  check_view(fn, "cols", cols);
  check_disjoint(fn, "x", x, "cols", cols);
  NETDECONV_REQUIRE(cols.shape[0] == map.rows && cols.shape[1] == map.width, fn, "cols is ", cols.shape[0], "x",
                    cols.shape[1], " but the patch matrix of x is ", map.rows, "x", map.width);
  return map;
}

/// block_moments: a valid plan, rows of width C*K (patch rows: the plan's C and K), and at least
/// min_samples (2: a covariance; 0: a shard of a reduced batch) samples per statistic. Returns the
/// samples per statistic.
template <class Source>
index_t check_block_moments(const char* fn, const Source& source, const block_plan& plan, index_t min_samples = 2) {
  check_plan(fn, plan);
  const index_t width = checked_mul(fn, "C*K", plan.channels, plan.kernel_area);
  NETDECONV_REQUIRE(source.width() == width, fn, "rows have ", source.width(), " columns but the plan needs C*K = ",
                    plan.channels, "*", plan.kernel_area, " = ", width);
  if constexpr (requires { source.sampling_geometry(); }) {  // patch rows: the same C and K, not only C*K
    const index_t C = source.image().shape[1], K = source.sampling_geometry().kernel_area();
    NETDECONV_REQUIRE(C == plan.channels && K == plan.kernel_area, fn, "the patches have C=", C, " and K=", K,
                      ", the plan has C=", plan.channels, " and K=", plan.kernel_area);
  }
  const index_t samples = checked_mul(fn, "samples", source.rows(), plan.rows_per_patch());
  NETDECONV_REQUIRE(samples >= min_samples, fn, "statistics need >= 2 samples, got ", samples, " (", source.rows(),
                    " sampled rows x ", plan.rows_per_patch(), " per row)");
  return samples;
}

/// merge: a, b and out of the same shape; out disjoint from a and b.
inline void check_merge(const char* fn, const moments_view<const double>& a, const moments_view<const double>& b,
                        const moments_view<double>& out) {
  check_moments_view(fn, "a", a);
  check_moments_view(fn, "b", b);
  check_moments_view(fn, "out", out);
  NETDECONV_REQUIRE(a.statistics() == b.statistics() && a.statistics() == out.statistics() &&
                        a.features() == b.features() && a.features() == out.features(),
                    fn, "shapes differ: a ", a.statistics(), "x", a.features(), ", b ", b.statistics(), "x",
                    b.features(), ", out ", out.statistics(), "x", out.features());
  for (const auto* in : {&a, &b}) {
    check_disjoint(fn, "out", out.scatter, "an input", in->scatter);
    check_disjoint(fn, "out", out.mean, "an input", in->mean);
    check_disjoint(fn, "out", out.count, "an input", in->count);
  }
}

/// covariance: eps >= 0, cov (S, F, F) and mean (S, F) or empty, outputs disjoint from the moments.
template <class T>
void check_covariance(const char* fn, const moments_view<const double>& m, double eps, const tensor_view<T, 3>& cov,
                      const matrix_view<T>& mean) {
  check_moments_view(fn, "moments", m);
  NETDECONV_REQUIRE(eps >= 0, fn, "eps must be >= 0, got ", eps);
  const index_t S = m.statistics(), F = m.features();
  check_output_view(fn, "cov", cov);
  NETDECONV_REQUIRE(cov.shape[0] == S && cov.shape[1] == F && cov.shape[2] == F, fn, "cov is (", cov.shape[0], ", ",
                    cov.shape[1], ", ", cov.shape[2], "), the moments need (", S, ", ", F, ", ", F, ")");
  check_disjoint(fn, "cov", cov, "the scatter", m.scatter);
  if (mean.empty()) return;
  check_output_view(fn, "mean", mean);
  NETDECONV_REQUIRE(mean.shape[0] == S && mean.shape[1] == F, fn, "mean is (", mean.shape[0], ", ", mean.shape[1],
                    "), the moments need (", S, ", ", F, ")");
  check_disjoint(fn, "mean", mean, "cov", cov);
  check_disjoint(fn, "mean", mean, "the moments' mean", m.mean);
}

/// Batched inverse_sqrt on views: A and D (batch, F, F) with F >= 1, reports (batch), outputs
/// disjoint from A and from each other; valid options.
template <class T>
void check_inverse_sqrt_batch(const char* fn, const tensor_view<const T, 3>& A, const tensor_view<T, 3>& D,
                              const isqrt_options& options, const vector_view<isqrt_report>& reports) {
  check_isqrt_options(fn, options);
  check_view(fn, "A", A);
  check_output_view(fn, "D", D);
  check_output_view(fn, "reports", reports);
  const index_t batch = A.shape[0], F = A.shape[1];
  NETDECONV_REQUIRE(A.shape[2] == F && F >= 1, fn, "A must hold square matrices of at least 1x1, got ", A.shape[1], "x",
                    A.shape[2]);
  NETDECONV_REQUIRE(D.shape == A.shape, fn, "D is (", D.shape[0], ", ", D.shape[1], ", ", D.shape[2], "), A is (", batch,
                    ", ", F, ", ", F, ")");
  NETDECONV_REQUIRE(reports.shape[0] == batch, fn, "reports has ", reports.shape[0], " entries for ", batch, " matrices");
  check_disjoint(fn, "D", D, "A", A);
  check_disjoint(fn, "reports", reports, "A", A);
  check_disjoint(fn, "reports", reports, "D", D);
}

/// inverse_sqrt_vjp's views: A, D = dA and reports as inverse_sqrt's; G of A's shape; dA apart from G.
template <class T>
void check_inverse_sqrt_vjp_batch(const char* fn, const tensor_view<const T, 3>& A, const tensor_view<const T, 3>& G,
                                  const tensor_view<T, 3>& dA, const isqrt_options& options,
                                  const vector_view<isqrt_report>& reports) {
  check_inverse_sqrt_batch(fn, A, dA, options, reports);
  check_view(fn, "G", G);
  NETDECONV_REQUIRE(G.shape == A.shape, fn, "G is (", G.shape[0], ", ", G.shape[1], ", ", G.shape[2], "), A is (",
                    A.shape[0], ", ", A.shape[1], ", ", A.shape[2], ")");
  check_disjoint(fn, "dA", dA, "G", G);
  check_disjoint(fn, "reports", reports, "G", G);
}

/// weight (Cout, C/groups, kh, kw) and bias (Cout or empty) fit the plan.
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

/// fold's outputs: weight_out of weight's shape, bias_out (Cout); no output overlaps an input or
/// the other output, except that weight_out may be weight (and bias_out bias) exactly when
/// in_place is allowed (the CPU backends allow it; CUDA does not).
template <class T>
void check_fold_outputs(const char* fn, const image_view<const T>& weight, const vector_view<const T>& bias,
                        const image_view<T>& weight_out, const vector_view<T>& bias_out, bool in_place) {
  check_output_view(fn, "weight_out", weight_out);
  check_output_view(fn, "bias_out", bias_out);
  check_disjoint(fn, "weight_out", weight_out, "weight", weight, in_place);
  check_disjoint(fn, "weight_out", weight_out, "bias", bias);
  check_disjoint(fn, "bias_out", bias_out, "bias", bias, in_place);
  check_disjoint(fn, "bias_out", bias_out, "weight", weight);
  check_disjoint(fn, "bias_out", bias_out, "weight_out", weight_out);
  NETDECONV_REQUIRE(weight_out.shape == weight.shape, fn, "weight_out must have weight's shape");
  NETDECONV_REQUIRE(bias_out.shape[0] == weight.shape[0], fn, "bias_out has ", bias_out.shape[0],
                    " entries, weight has Cout=", weight.shape[0]);
}

/// fold on statistics views: valid statistics for a weight and bias that fit their plan, and the
/// outputs of check_fold_outputs; the outputs must not overlap the statistics.
template <class T>
void check_fold(const char* fn, const block_statistics_view<const T>& stats, const image_view<const T>& weight,
                const vector_view<const T>& bias, const image_view<T>& weight_out, const vector_view<T>& bias_out,
                bool in_place) {
  check_statistics_view(fn, stats);
  check_weight(fn, stats.plan, weight, bias);
  check_fold_outputs(fn, weight, bias, weight_out, bias_out, in_place);
  check_disjoint(fn, "weight_out", weight_out, "mean", stats.mean);
  check_disjoint(fn, "weight_out", weight_out, "D", stats.D);
  check_disjoint(fn, "bias_out", bias_out, "mean", stats.mean);
  check_disjoint(fn, "bias_out", bias_out, "D", stats.D);
}

/// apply_whitening's data (X and out already in samples-as-rows orientation) for a valid plan:
/// kernel area 1 and one row per sample, X (n, C) and out of X's shape, out disjoint from X (or
/// X exactly when in_place is allowed: the CPU backends allow it; CUDA does not).
template <class T>
void check_whitening_data(const char* fn, const block_plan& plan, const matrix_view<const T>& X, const matrix_view<T>& out,
                          bool in_place) {
  check_view(fn, "X", X);
  check_output_view(fn, "out", out);
  check_disjoint(fn, "out", out, "X", X, in_place);
  NETDECONV_REQUIRE(out.shape == X.shape, fn, "out is ", out.shape[0], "x", out.shape[1], " but X is ", X.shape[0], "x",
                    X.shape[1]);
  NETDECONV_REQUIRE(plan.kernel_area == 1 && plan.rows_per_patch() == 1, fn,
                    "statistics must come from independent or single-block whitening");
  NETDECONV_REQUIRE(X.shape[1] == plan.channels, fn, "X has ", X.shape[1], " features, the statistics have ",
                    plan.channels);
}

/// apply_whitening on statistics views: check_statistics_view, check_whitening_data, and out
/// disjoint from the statistics.
template <class T>
void check_apply_whitening(const char* fn, const block_statistics_view<const T>& stats, const matrix_view<const T>& X,
                           const matrix_view<T>& out, bool in_place) {
  check_statistics_view(fn, stats);
  check_whitening_data(fn, stats.plan, X, out, in_place);
  check_disjoint(fn, "out", out, "mean", stats.mean);
  check_disjoint(fn, "out", out, "D", stats.D);
}

/// (rows, cols) viewed as (cols, rows).
template <class T>
NETDECONV_HOST_DEVICE matrix_view<T> transposed(const matrix_view<T>& m) {
  return {m.data, {m.shape[1], m.shape[0]}, {m.stride[1], m.stride[0]}};
}

/// View of a linear weight (Cout, Fin) as a conv weight (Cout, Fin, 1, 1).
template <class T>
image_view<T> as_conv_weight(const matrix_view<T>& w) {
  return {w.data, {w.shape[0], w.shape[1], 1, 1}, {w.stride[0], w.stride[1], 0, 0}};
}

}  // namespace netdeconv::detail
