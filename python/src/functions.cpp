// SPDX-License-Identifier: MIT
// The stateless functions: whitening, the inverse square root, moments, the statistics steps, the
// fold and their backward. Each parses its arguments with the GIL held, computes without it, and
// hands new arrays to the framework of its first array.
#include <algorithm>
#include <chrono>
#include <optional>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>

#include "bindings.hpp"

namespace netdeconv::python {

namespace {

using nb::arg;

/// Moments from a Python (count, mean, scatter) triple (netdeconv.Moments or any sequence).
struct moments_in {
  array_in count, mean, scatter;
  moments_view<const double> view;
};

moments_in moments_arg(const char* fn, const char* name, nb::handle obj) {
  nb::sequence seq;
  if (!nb::try_cast(obj, seq) || nb::len(obj) != 3)
    type_error(fn, name, " must be netdeconv.Moments (count, mean, scatter), got ", python_type_name(obj));
  moments_in m{input(fn, name, obj[0], true), input(fn, name, obj[1]), input(fn, name, obj[2]), {}};
  m.view.count = view_of<index_t, 1>(fn, "moments.count", m.count, "(S,)");
  m.view.mean = view_of<double, 2>(fn, "moments.mean", m.mean, "(S, F)");
  m.view.scatter = view_of<double, 3>(fn, "moments.scatter", m.scatter, "(S, F, F)");
  return m;
}

/// New moments outputs for S statistics of F features.
struct moments_out {
  array_out<index_t, 1> count;
  array_out<double, 2> mean;
  array_out<double, 3> scatter;
  moments_out(framework fw, index_t S, index_t F) : count(fw, {S}), mean(fw, {S, F}), scatter(fw, {S, F, F}) {}
  moments_view<double> view() const { return {count.view(), mean.view(), scatter.view()}; }
  nb::object result() { return result_type("Moments")(count.result(), mean.result(), scatter.result()); }
};

template <class T>
struct statistics_arrays {
  array_out<T, 2> mean;
  array_out<T, 3> D;
};

/// whiten / apply_whitening: rows (or columns) of x as samples.
template <class T>
matrix_view<const T> samples_of(const matrix_view<const T>& x, bool columns) {
  return columns ? matrix_view<const T>{x.data, {x.shape[1], x.shape[0]}, {x.stride[1], x.stride[0]}} : x;
}

nb::object whiten(nb::handle x_obj, double eps, const isqrt_options& isqrt, index_t block, bool columns_are_samples,
                  nb::handle out, bool check) {
  constexpr const char* fn = "whiten";
  const array_in xa = input(fn, "x", x_obj);
  return dispatch(xa, [&](auto t) -> nb::object {
    using T = decltype(t);
    const matrix_view<const T> X = view_of<T, 2>(fn, "x", xa, "(n, F)");
    NETDECONV_REQUIRE(eps >= 0, fn, "eps must be >= 0, got ", eps);
    NETDECONV_REQUIRE(block >= 0, fn, "block must be >= 0, got ", block);
    const matrix_view<const T> samples = samples_of(X, columns_are_samples);
    const index_t F = samples.shape[1];
    NETDECONV_REQUIRE(F >= 1, fn, "x has no features");
    const block_plan plan = make_block_plan(block_layout::independent, F, 1, block == 0 ? F : block);
    auto data = output<T, 2>(fn, "out", out, xa.fw, X.shape);
    detail::check_disjoint(fn, "out", data.view(), "x", X);
    statistics_arrays<T> st{{xa.fw, {plan.count(), plan.features()}}, {xa.fw, {plan.count(), plan.features(), plan.features()}}};
    estimated_statistics<T> e;
    {
      nb::gil_scoped_release release;
      e = estimate_statistics<T>(policy(), matrix_rows<T>(samples), plan, eps, isqrt);
    }
    check_reports(fn, e.reports, check);
    {
      nb::gil_scoped_release release;
      apply_whitening(policy(), e.statistics, X, data.view(), columns_are_samples);
      detail::store_statistics(e.statistics, st.mean.view(), st.D.view());
    }
    return result_type("Whitening")(data.result(), st.mean.result(), st.D.result(), report_list(e.reports), e.samples);
  });
}

nb::object apply_whitening(nb::handle x_obj, nb::handle mean_obj, nb::handle D_obj, bool columns_are_samples,
                           nb::handle out) {
  constexpr const char* fn = "apply_whitening";
  const array_in xa = input(fn, "x", x_obj), ma = input(fn, "mean", mean_obj), Da = input(fn, "D", D_obj);
  return dispatch(xa, [&](auto t) -> nb::object {
    using T = decltype(t);
    const matrix_view<const T> X = view_of<T, 2>(fn, "x", xa, "(n, F)");
    const block_statistics_view<const T> stats{{}, view_of<T, 2>(fn, "mean", ma, "(S, F)"), view_of<T, 3>(fn, "D", Da, "(S, F, F)")};
    const index_t features = samples_of(X, columns_are_samples).shape[1];
    NETDECONV_REQUIRE(stats.D.shape[1] >= 1 && stats.D.shape[0] * stats.D.shape[1] == features, fn,
                      "x has ", features, " features; mean and D are ", stats.D.shape[0], " blocks of ", stats.D.shape[1]);
    const block_statistics_view<const T> planned{make_block_plan(block_layout::independent, features, 1, stats.D.shape[1]),
                                                 stats.mean, stats.D};
    auto data = output<T, 2>(fn, "out", out, xa.fw, X.shape);
    {
      nb::gil_scoped_release release;
      netdeconv::apply_whitening(policy(), planned, X, data.view(), columns_are_samples);
    }
    return data.result();
  });
}

/// A (F, F) or (B, F, F) argument as a (B, F, F) view.
template <class T>
tensor_view<const T, 3> matrices(const char* fn, const char* name, const array_in& a) {
  if (a.array.ndim() == 2) {
    const auto m = view_of<T, 2>(fn, name, a, "(F, F) or (B, F, F)");
    return {m.data, {1, m.shape[0], m.shape[1]}, {0, m.stride[0], m.stride[1]}};
  }
  return view_of<T, 3>(fn, name, a, "(F, F) or (B, F, F)");
}

/// A (F, F) or (B, F, F) output shaped as the input `single` or not (new, or the caller's `out`),
/// and its (B, F, F) view.
template <class T>
struct matrices_out {
  std::optional<array_out<T, 2>> one;
  std::optional<array_out<T, 3>> many;

  matrices_out(const char* fn, nb::handle out, framework fw, const index_array<3>& shape, bool single) {
    if (single)
      one.emplace(output<T, 2>(fn, "out", out, fw, {shape[1], shape[2]}));
    else
      many.emplace(output<T, 3>(fn, "out", out, fw, shape));
  }
  tensor_view<T, 3> view() const {
    if (many) return many->view();
    const matrix_view<T>& m = one->view();
    return {m.data, {1, m.shape[0], m.shape[1]}, {0, m.stride[0], m.stride[1]}};
  }
  nb::object result() { return many ? many->result() : one->result(); }
};

/// The reports of a (F, F) call as one IsqrtReport, of a (B, F, F) call as a list.
nb::object reports_result(const std::vector<isqrt_report>& reports, bool single) {
  return single ? nb::cast(reports[0]) : nb::object(report_list(reports));
}

nb::object inverse_sqrt(nb::handle A_obj, const isqrt_options& isqrt, nb::handle out, bool check) {
  constexpr const char* fn = "inverse_sqrt";
  const array_in Aa = input(fn, "A", A_obj);
  return dispatch(Aa, [&](auto t) -> nb::object {
    using T = decltype(t);
    const tensor_view<const T, 3> A = matrices<T>(fn, "A", Aa);
    const bool single = Aa.array.ndim() == 2;
    matrices_out<T> D(fn, out, Aa.fw, A.shape, single);
    std::vector<isqrt_report> reports(static_cast<std::size_t>(A.shape[0]));
    {
      nb::gil_scoped_release release;
      netdeconv::inverse_sqrt(policy(), A, D.view(), isqrt, report_view(reports));
    }
    check_reports(fn, reports, check);
    return nb::make_tuple(D.result(), reports_result(reports, single));
  });
}

nb::object inverse_sqrt_vjp(nb::handle A_obj, nb::handle G_obj, const isqrt_options& isqrt, bool check) {
  constexpr const char* fn = "inverse_sqrt_vjp";
  const array_in Aa = input(fn, "A", A_obj), Ga = input(fn, "G", G_obj);
  return dispatch(Aa, [&](auto t) -> nb::object {
    using T = decltype(t);
    const tensor_view<const T, 3> A = matrices<T>(fn, "A", Aa), G = matrices<T>(fn, "G", Ga);
    const bool single = Aa.array.ndim() == 2;
    NETDECONV_REQUIRE(Ga.array.ndim() == Aa.array.ndim(), fn, "G must have A's shape ", Aa.shape(), ", got ", Ga.shape());
    matrices_out<T> dA(fn, nb::none(), Aa.fw, A.shape, single);
    std::vector<isqrt_report> reports(static_cast<std::size_t>(A.shape[0]));
    {
      nb::gil_scoped_release release;
      netdeconv::inverse_sqrt_vjp(policy(), A, G, dA.view(), isqrt, report_view(reports));
    }
    check_reports(fn, reports, check);
    return nb::make_tuple(dA.result(), reports_result(reports, single));
  });
}

template <class Source>
nb::object moments_of(const Source& source, const block_plan& plan, framework fw) {
  moments_out m(fw, plan.count(), plan.features());
  {
    nb::gil_scoped_release release;
    netdeconv::block_moments(policy(), source, plan, m.view());
  }
  return m.result();
}

nb::object moments(nb::handle x_obj, index_t block) {
  constexpr const char* fn = "moments";
  const array_in xa = input(fn, "x", x_obj);
  return dispatch(xa, [&](auto t) {
    using T = decltype(t);
    const matrix_view<const T> X = view_of<T, 2>(fn, "x", xa, "(n, F)");
    NETDECONV_REQUIRE(block >= 0, fn, "block must be >= 0, got ", block);
    NETDECONV_REQUIRE(X.shape[1] >= 1, fn, "x has no features");
    return moments_of(matrix_rows<T>(X), make_block_plan(block_layout::independent, X.shape[1], 1, block == 0 ? X.shape[1] : block),
                      xa.fw);
  });
}

nb::object conv_moments(nb::handle x_obj, const conv_deconv_config& config) {
  constexpr const char* fn = "conv_moments";
  const array_in xa = input(fn, "x", x_obj);
  return dispatch(xa, [&](auto t) {
    using T = decltype(t);
    const image_view<const T> x = view_of<T, 4>(fn, "x", xa, "(N, C, H, W)");
    detail::check_step_config(fn, config);
    return moments_of(patch_sampler<T>(x, config.geometry, config.sampling_stride),
                      conv_statistics_plan(x.shape[1], config), xa.fw);
  });
}

nb::object linear_moments(nb::handle x_obj, const linear_deconv_config& config) {
  constexpr const char* fn = "linear_moments";
  const array_in xa = input(fn, "x", x_obj);
  return dispatch(xa, [&](auto t) {
    using T = decltype(t);
    const matrix_view<const T> x = view_of<T, 2>(fn, "x", xa, "(n, F)");
    detail::check_step_config(fn, config);
    return moments_of(matrix_rows<T>(x), linear_statistics_plan(x.shape[1], config), xa.fw);
  });
}

nb::object merge(nb::handle a_obj, nb::handle b_obj) {
  constexpr const char* fn = "merge";
  const moments_in a = moments_arg(fn, "a", a_obj), b = moments_arg(fn, "b", b_obj);
  moments_out m(a.mean.fw, a.view.statistics(), a.view.features());
  {
    nb::gil_scoped_release release;
    netdeconv::merge(policy(), a.view, b.view, m.view());
  }
  return m.result();
}

nb::object covariance(nb::handle m_obj, double eps, nb::handle dtype_obj) {
  constexpr const char* fn = "covariance";
  const moments_in m = moments_arg(fn, "moments", m_obj);
  const std::string name = dtype_obj.is_none() ? "float64" : nb::cast<std::string>(nb::str(dtype_obj));
  const auto run = [&](auto t) {
    using T = decltype(t);
    const index_t S = m.view.statistics(), F = m.view.features();
    array_out<T, 3> cov(m.mean.fw, {S, F, F});
    array_out<T, 2> mean(m.mean.fw, {S, F});
    {
      nb::gil_scoped_release release;
      netdeconv::covariance(policy(), m.view, eps, cov.view(), mean.view());
    }
    return nb::make_tuple(cov.result(), mean.result());
  };
  // "float32", np.float32 ("<class 'numpy.float32'>"), np.dtype, torch.float32, jnp.float32, ...
  const bool f32 = name.find("float32") != std::string::npos, f64 = name.find("float64") != std::string::npos;
  if (f32 != f64) return f32 ? run(float{}) : run(double{});
  type_error(fn, "dtype must be float32 or float64, got ", name);
}

nb::object conv_statistics_step(nb::handle x_obj, nb::handle w_obj, nb::handle b_obj, const conv_deconv_config& config,
                                nb::handle out, bool check) {
  constexpr const char* fn = "conv_statistics_step";
  const array_in xa = input(fn, "x", x_obj), wa = input(fn, "weight", w_obj);
  std::optional<array_in> ba;
  return dispatch(xa, [&](auto t) -> nb::object {
    using T = decltype(t);
    const image_view<const T> x = view_of<T, 4>(fn, "x", xa, "(N, C, H, W)");
    const image_view<const T> w = view_of<T, 4>(fn, "weight", wa, "(Cout, C/groups, kh, kw)");
    const vector_view<const T> b = optional_view<T, 1>(fn, "bias", b_obj, "(Cout,)", ba);
    const block_plan plan = detail::check_conv_step(fn, x, w, b, config);
    step_out<T, 4> o(fn, out, xa.fw, w.shape, plan);
    {
      nb::gil_scoped_release release;
      netdeconv::conv_statistics_step(policy(), x, w, b, config, o.view());
    }
    check_reports(fn, o.reports, check);
    return o.result(patch_sampler<T>(x, config.geometry, config.sampling_stride).rows() * plan.rows_per_patch());
  });
}

nb::object linear_statistics_step(nb::handle x_obj, nb::handle w_obj, nb::handle b_obj,
                                  const linear_deconv_config& config, nb::handle out, bool check) {
  constexpr const char* fn = "linear_statistics_step";
  const array_in xa = input(fn, "x", x_obj), wa = input(fn, "weight", w_obj);
  std::optional<array_in> ba;
  return dispatch(xa, [&](auto t) -> nb::object {
    using T = decltype(t);
    const matrix_view<const T> x = view_of<T, 2>(fn, "x", xa, "(n, Fin)");
    const matrix_view<const T> w = view_of<T, 2>(fn, "weight", wa, "(Fout, Fin)");
    const vector_view<const T> b = optional_view<T, 1>(fn, "bias", b_obj, "(Fout,)", ba);
    const block_plan plan = detail::check_linear_step(fn, x, w, b, config);
    step_out<T, 2> o(fn, out, xa.fw, w.shape, plan);
    {
      nb::gil_scoped_release release;
      netdeconv::linear_statistics_step(policy(), x, w, b, config, o.view());
    }
    check_reports(fn, o.reports, check);
    return o.result(x.shape[0] * plan.rows_per_patch());
  });
}

/// The block plan of a conv or linear weight under config (ConvConfig or LinearConfig).
template <class T, int R>
block_plan weight_plan(const char* fn, const tensor_view<const T, R>& w, nb::handle config) {
  if constexpr (R == 4) {
    conv_deconv_config c;
    if (!nb::try_cast(config, c)) type_error(fn, "a conv weight needs a ConvConfig, got ", python_type_name(config));
    return conv_statistics_plan(w.shape[1] * c.groups, c);
  } else {
    linear_deconv_config c;
    if (!nb::try_cast(config, c)) type_error(fn, "a linear weight needs a LinearConfig, got ", python_type_name(config));
    return linear_statistics_plan(w.shape[1], c);
  }
}

template <class T>
block_statistics_view<const T> statistics_args(const char* fn, const block_plan& plan, const array_in& ma, const array_in& Da) {
  return {plan, view_of<T, 2>(fn, "mean", ma, "(S, F)"), view_of<T, 3>(fn, "D", Da, "(S, F, F)")};
}

/// fold for a weight of rank R (4: conv, 2: linear).
template <class T, int R>
nb::object fold_rank(const char* fn, const array_in& wa, nb::handle b_obj, const array_in& ma, const array_in& Da,
                     nb::handle config, nb::handle out) {
  std::optional<array_in> ba;
  const tensor_view<const T, R> w = view_of<T, R>(fn, "weight", wa, R == 4 ? "(Cout, C/groups, kh, kw)" : "(Fout, Fin)");
  const vector_view<const T> b = optional_view<T, 1>(fn, "bias", b_obj, "(Cout,)", ba);
  const block_statistics_view<const T> stats = statistics_args<T>(fn, weight_plan(fn, w, config), ma, Da);
  auto W = output<T, R>(fn, "out.weight", out_item(fn, out, 0, 2), wa.fw, w.shape);
  auto B = output<T, 1>(fn, "out.bias", out_item(fn, out, 1, 2), wa.fw, {w.shape[0]});
  {
    nb::gil_scoped_release release;
    netdeconv::fold(policy(), stats, w, b, W.view(), B.view());
  }
  return nb::make_tuple(W.result(), B.result());
}

nb::object fold(nb::handle w_obj, nb::handle b_obj, nb::handle mean_obj, nb::handle D_obj, nb::handle config,
                nb::handle out) {
  constexpr const char* fn = "fold";
  const array_in wa = input(fn, "weight", w_obj), ma = input(fn, "mean", mean_obj), Da = input(fn, "D", D_obj);
  if (wa.array.ndim() != 4 && wa.array.ndim() != 2)
    value_error(fn, "weight must be (Cout, C/groups, kh, kw) or (Fout, Fin), got shape ", wa.shape());
  return dispatch(wa, [&](auto t) {
    using T = decltype(t);
    return wa.array.ndim() == 4 ? fold_rank<T, 4>(fn, wa, b_obj, ma, Da, config, out)
                                : fold_rank<T, 2>(fn, wa, b_obj, ma, Da, config, out);
  });
}

template <class T, int R>
nb::object fold_vjp_rank(const char* fn, const array_in& wa, nb::handle b_obj, const array_in& ma, const array_in& Da,
                         const array_in& gwa, nb::handle gb_obj, nb::handle config) {
  std::optional<array_in> ba, gba;
  const char* axes = R == 4 ? "(Cout, C/groups, kh, kw)" : "(Fout, Fin)";
  const tensor_view<const T, R> w = view_of<T, R>(fn, "weight", wa, axes);
  const vector_view<const T> b = optional_view<T, 1>(fn, "bias", b_obj, "(Cout,)", ba);
  const tensor_view<const T, R> gw = view_of<T, R>(fn, "grad_weight", gwa, axes);
  const vector_view<const T> gb = optional_view<T, 1>(fn, "grad_bias", gb_obj, "(Cout,)", gba);
  const block_statistics_view<const T> stats = statistics_args<T>(fn, weight_plan(fn, w, config), ma, Da);
  const index_t S = stats.plan.count(), F = stats.plan.features();
  array_out<T, R> dW(wa.fw, w.shape);
  array_out<T, 1> db(wa.fw, {w.shape[0]});
  array_out<T, 3> dD(wa.fw, {S, F, F});
  array_out<T, 2> dmean(wa.fw, {S, F});
  const vector_view<T> dbias = b_obj.is_none() ? vector_view<T>{} : db.view();  // dL/db only with a bias
  {
    nb::gil_scoped_release release;
    if constexpr (R == 4) {
      netdeconv::fold_vjp(policy(), stats, w, b, gw, gb, dW.view(), dbias, dD.view(), dmean.view());
    } else {
      netdeconv::fold_vjp(policy(), stats, detail::as_conv_weight(w), b, detail::as_conv_weight(gw), gb,
                          detail::as_conv_weight(dW.view()), dbias, dD.view(), dmean.view());
    }
  }
  return nb::make_tuple(dW.result(), b_obj.is_none() ? nb::none() : db.result(), dD.result(), dmean.result());
}

nb::object fold_vjp(nb::handle w_obj, nb::handle b_obj, nb::handle mean_obj, nb::handle D_obj, nb::handle gw_obj,
                    nb::handle gb_obj, nb::handle config) {
  constexpr const char* fn = "fold_vjp";
  const array_in wa = input(fn, "weight", w_obj), ma = input(fn, "mean", mean_obj), Da = input(fn, "D", D_obj),
                 gwa = input(fn, "grad_weight", gw_obj);
  if (wa.array.ndim() != 4 && wa.array.ndim() != 2)
    value_error(fn, "weight must be (Cout, C/groups, kh, kw) or (Fout, Fin), got shape ", wa.shape());
  return dispatch(wa, [&](auto t) {
    using T = decltype(t);
    return wa.array.ndim() == 4 ? fold_vjp_rank<T, 4>(fn, wa, b_obj, ma, Da, gwa, gb_obj, config)
                                : fold_vjp_rank<T, 2>(fn, wa, b_obj, ma, Da, gwa, gb_obj, config);
  });
}

nb::object conv_statistics_step_vjp(nb::handle x_obj, nb::handle w_obj, nb::handle b_obj,
                                    const conv_deconv_config& config, nb::handle mean_obj, nb::handle D_obj,
                                    nb::handle gw_obj, nb::handle gb_obj, bool check) {
  constexpr const char* fn = "conv_statistics_step_vjp";
  const array_in xa = input(fn, "x", x_obj), wa = input(fn, "weight", w_obj), ma = input(fn, "mean", mean_obj),
                 Da = input(fn, "D", D_obj), gwa = input(fn, "grad_weight", gw_obj);
  std::optional<array_in> ba, gba;
  return dispatch(xa, [&](auto t) -> nb::object {
    using T = decltype(t);
    const image_view<const T> x = view_of<T, 4>(fn, "x", xa, "(N, C, H, W)");
    const image_view<const T> w = view_of<T, 4>(fn, "weight", wa, "(Cout, C/groups, kh, kw)");
    const vector_view<const T> b = optional_view<T, 1>(fn, "bias", b_obj, "(Cout,)", ba);
    const image_view<const T> gw = view_of<T, 4>(fn, "grad_weight", gwa, "(Cout, C/groups, kh, kw)");
    const vector_view<const T> gb = optional_view<T, 1>(fn, "grad_bias", gb_obj, "(Cout,)", gba);
    const block_plan plan = detail::check_conv_step(fn, x, w, b, config);
    gradients_out<T, 4, 4> g(xa.fw, w.shape, x.shape, plan.count());
    {
      nb::gil_scoped_release release;
      netdeconv::conv_statistics_step_vjp(policy(), x, w, b, config, statistics_args<T>(fn, plan, ma, Da), gw, gb,
                                          {g.weight.view(), b_obj.is_none() ? vector_view<T>{} : g.bias.view(),
                                           g.x.view(), report_view(g.reports)});
    }
    check_reports(fn, g.reports, check);
    return g.result(!b_obj.is_none());
  });
}

nb::object linear_statistics_step_vjp(nb::handle x_obj, nb::handle w_obj, nb::handle b_obj,
                                      const linear_deconv_config& config, nb::handle mean_obj, nb::handle D_obj,
                                      nb::handle gw_obj, nb::handle gb_obj, bool check) {
  constexpr const char* fn = "linear_statistics_step_vjp";
  const array_in xa = input(fn, "x", x_obj), wa = input(fn, "weight", w_obj), ma = input(fn, "mean", mean_obj),
                 Da = input(fn, "D", D_obj), gwa = input(fn, "grad_weight", gw_obj);
  std::optional<array_in> ba, gba;
  return dispatch(xa, [&](auto t) -> nb::object {
    using T = decltype(t);
    const matrix_view<const T> x = view_of<T, 2>(fn, "x", xa, "(n, Fin)");
    const matrix_view<const T> w = view_of<T, 2>(fn, "weight", wa, "(Fout, Fin)");
    const vector_view<const T> b = optional_view<T, 1>(fn, "bias", b_obj, "(Fout,)", ba);
    const matrix_view<const T> gw = view_of<T, 2>(fn, "grad_weight", gwa, "(Fout, Fin)");
    const vector_view<const T> gb = optional_view<T, 1>(fn, "grad_bias", gb_obj, "(Fout,)", gba);
    const block_plan plan = detail::check_linear_step(fn, x, w, b, config);
    gradients_out<T, 2, 2> g(xa.fw, w.shape, x.shape, plan.count());
    {
      nb::gil_scoped_release release;
      netdeconv::linear_statistics_step_vjp(policy(), x, w, b, config, statistics_args<T>(fn, plan, ma, Da), gw, gb,
                                            {g.weight.view(), b_obj.is_none() ? vector_view<T>{} : g.bias.view(),
                                             g.x.view(), report_view(g.reports)});
    }
    check_reports(fn, g.reports, check);
    return g.result(!b_obj.is_none());
  });
}

template <int R, class Config>
nb::object covariance_vjp(const char* fn, nb::handle x_obj, const Config& config, nb::handle m_obj, nb::handle dcov_obj,
                          nb::handle dmean_obj) {
  const array_in xa = input(fn, "x", x_obj), ca = input(fn, "dcov", dcov_obj);
  const moments_in m = moments_arg(fn, "moments", m_obj);
  std::optional<array_in> da;
  return dispatch(xa, [&](auto t) {
    using T = decltype(t);
    const tensor_view<const T, R> x = view_of<T, R>(fn, "x", xa, R == 4 ? "(N, C, H, W)" : "(n, F)");
    const tensor_view<const T, 3> dcov = view_of<T, 3>(fn, "dcov", ca, "(S, F, F)");
    // No dmean: the loss does not depend on the mean (zeros of the moments' (S, F)).
    std::vector<T> zeros;
    matrix_view<const T> dmean;
    if (dmean_obj.is_none()) {
      zeros.assign(std::size_t(m.view.mean.size()), T(0));
      dmean = row_major<const T>(zeros.data(), m.view.mean.shape[0], m.view.mean.shape[1]);
    } else {
      dmean = optional_view<T, 2>(fn, "dmean", dmean_obj, "(S, F)", da);
    }
    array_out<T, R> dx(xa.fw, x.shape);
    {
      nb::gil_scoped_release release;
      std::fill_n(dx.view().data, dx.size(), T(0));  // the C++ functions add to dx (shards' sums)
      if constexpr (R == 4)
        netdeconv::conv_covariance_vjp(policy(), x, config, m.view, dcov, dmean, dx.view());
      else
        netdeconv::linear_covariance_vjp(policy(), x, config, m.view, dcov, dmean, dx.view());
    }
    return dx.result();
  });
}

}  // namespace

void bind_functions(nb::module_& m) {
  const whiten_options w0;
  m.def("whiten", &whiten, arg("x"), nb::kw_only(), arg("eps") = w0.eps, arg("isqrt") = w0.isqrt,
        arg("block") = w0.block, arg("columns_are_samples") = w0.columns_are_samples, arg("out") = nb::none(),
        arg("check") = true,
        "ZCA whitening of x (n, F), rows are samples (columns with columns_are_samples): per block of `block`\n"
        "features (0: all F), mu = mean, Cov = (X - mu)^T (X - mu) / n + eps I, D = Cov^(-1/2) (isqrt: exact\n"
        "float64 eigendecomposition by default), data = (X - mu) D. Returns Whitening(data (x's shape),\n"
        "mean (S, F/S), D (S, F/S, F/S), reports, samples). out= (x's shape, x's dtype) receives data.\n"
        "check: NumericalError when a block's root fails; check=False returns the reports instead.");
  m.def("apply_whitening", &apply_whitening, arg("x"), arg("mean"), arg("D"), nb::kw_only(),
        arg("columns_are_samples") = false, arg("out") = nb::none(),
        "(x - mean_s) D_s per block of x (n, F): mean (S, F/S) and D (S, F/S, F/S) from whiten(); returns x's shape");
  m.def("inverse_sqrt", &inverse_sqrt, arg("A"), arg("isqrt") = isqrt_options{}, nb::kw_only(), arg("out") = nb::none(),
        arg("check") = true,
        "D = A^(-1/2) of symmetric positive definite A, (F, F) or a batch (B, F, F). isqrt: IsqrtOptions.fixed(n)\n"
        "(n coupled Newton-Schulz steps Y <- Y T, Z <- T Z, T = (3 I - Z Y) / 2 from Y = A / s, Z = I), .converged(tol),\n"
        ".exact() (float64 eigendecomposition). Returns (D, report): one IsqrtReport for (F, F), a list for (B, F, F).");
  m.def("inverse_sqrt_vjp", &inverse_sqrt_vjp, arg("A"), arg("G"), arg("isqrt") = isqrt_options{}, nb::kw_only(),
        arg("check") = true,
        "dL/dA of D = inverse_sqrt(A, isqrt) for G = dL/dD (A's shape): through the same Newton-Schulz steps, or the\n"
        "exact root's Daleckii-Krein form. Returns (dA, report(s)).");
  m.def("moments", &moments, arg("x"), nb::kw_only(), arg("block") = 0,
        "Mergeable moments of the rows of x (n, F) per block of `block` features (0: all): Moments(count (S,),\n"
        "mean (S, F/S), scatter (S, F/S, F/S)), float64");
  m.def("conv_moments", &conv_moments, arg("x"), arg("config"),
        "Moments of the sampled patches of x (N, C, H, W) under a ConvConfig (its blocks, groups and sampling stride),\n"
        "without forming the patch matrix");
  m.def("linear_moments", &linear_moments, arg("x"), arg("config"),
        "Moments of the rows of x (n, Fin) under a LinearConfig (its blocks)");
  m.def("merge", &merge, arg("a"), arg("b"), "the Moments of the union of two sample sets (Chan et al.'s update)");
  m.def("covariance", &covariance, arg("moments"), arg("eps") = 0.0, nb::kw_only(), arg("dtype") = nb::none(),
        "(Cov (S, F, F), mean (S, F)) of Moments: Cov = scatter / count + eps I, in dtype (default float64)");
  m.def("conv_statistics_step", &conv_statistics_step, arg("x"), arg("weight"), arg("bias").none(), arg("config"),
        nb::kw_only(), arg("out") = nb::none(), arg("check") = true,
        "A conv layer's statistics step on x (N, C, H, W) (any strides: NCHW, NHWC, slices), weight\n"
        "(Cout, C/groups, kh, kw), bias (Cout,) or None: mu and D = Cov^(-1/2) per block of the sampled patches,\n"
        "W' = W D and b' = b - W' mu. Returns StatisticsStep(weight, bias, mean (S, F), D (S, F, F), reports,\n"
        "samples); out=(weight, bias, mean, D) writes into caller arrays.");
  m.def("linear_statistics_step", &linear_statistics_step, arg("x"), arg("weight"), arg("bias").none(),
        arg("config") = linear_deconv_config{}, nb::kw_only(), arg("out") = nb::none(), arg("check") = true,
        "The same for a linear layer: x (n, Fin), weight (Fout, Fin), bias (Fout,) or None");
  m.def("fold", &fold, arg("weight"), arg("bias").none(), arg("mean"), arg("D"), arg("config"), nb::kw_only(),
        arg("out") = nb::none(),
        "(W', b') = (W D, b - W' mu) for a conv weight (Cout, C/groups, kh, kw) with a ConvConfig, or a linear weight\n"
        "(Fout, Fin) with a LinearConfig; mean (S, F), D (S, F, F) as the config's plan gives them");
  m.def("fold_vjp", &fold_vjp, arg("weight"), arg("bias").none(), arg("mean"), arg("D"), arg("grad_weight"),
        arg("grad_bias").none(), arg("config"),
        "(dL/dW, dL/db or None, dL/dD (S, F, F), dL/dmean (S, F)) of fold for grad_weight = dL/dW', grad_bias = dL/db'");
  m.def("conv_statistics_step_vjp", &conv_statistics_step_vjp, arg("x"), arg("weight"), arg("bias").none(),
        arg("config"), arg("mean"), arg("D"), arg("grad_weight"), arg("grad_bias").none(), nb::kw_only(),
        arg("check") = true,
        "Backward of conv_statistics_step: mean and D what it returned, grad_weight = dL/dW', grad_bias = dL/db'.\n"
        "Returns StepGradients(weight = dL/dW, bias = dL/db or None, x = dL/dx through mu and Cov, reports).");
  m.def("linear_statistics_step_vjp", &linear_statistics_step_vjp, arg("x"), arg("weight"), arg("bias").none(),
        arg("config"), arg("mean"), arg("D"), arg("grad_weight"), arg("grad_bias").none(), nb::kw_only(),
        arg("check") = true, "Backward of linear_statistics_step (as conv_statistics_step_vjp)");
  m.def("conv_covariance_vjp",
        [](nb::handle x, const conv_deconv_config& c, nb::handle mo, nb::handle dcov, nb::handle dmean) {
          return covariance_vjp<4>("conv_covariance_vjp", x, c, mo, dcov, dmean);
        },
        arg("x"), arg("config"), arg("moments"), arg("dcov"), arg("dmean").none() = nb::none(),
        "dL/dx (x's shape) of the patch covariance and mean (conv_moments + covariance) for dcov (S, F, F), dmean (S, F)");
  m.def("linear_covariance_vjp",
        [](nb::handle x, const linear_deconv_config& c, nb::handle mo, nb::handle dcov, nb::handle dmean) {
          return covariance_vjp<2>("linear_covariance_vjp", x, c, mo, dcov, dmean);
        },
        arg("x"), arg("config"), arg("moments"), arg("dcov"), arg("dmean").none() = nb::none(),
        "dL/dx of the row covariance and mean (linear_moments + covariance)");
  m.def("conv_statistics_plan",
        [](index_t channels, const conv_deconv_config& c) {
          const block_plan p = conv_statistics_plan(channels, c);
          return std::pair(p.count(), p.features());
        },
        arg("channels"), arg("config"), "(S, F): the statistics and features per statistic of a conv layer");
  m.def("linear_statistics_plan",
        [](index_t features, const linear_deconv_config& c) {
          const block_plan p = linear_statistics_plan(features, c);
          return std::pair(p.count(), p.features());
        },
        arg("features"), arg("config"), "(S, F): the statistics and features per statistic of a linear layer");
  m.def("_time_whiten",
        [](nb::handle x_obj, int repetitions) {
          const array_in xa = input("_time_whiten", "x", x_obj);
          const matrix_view<const double> X = view_of<double, 2>("_time_whiten", "x", xa, "(n, F)");
          NETDECONV_REQUIRE(repetitions >= 1, "_time_whiten", "repetitions must be >= 1, got ", repetitions);
          std::vector<double> ns(static_cast<std::size_t>(repetitions));
          nb::gil_scoped_release release;
          for (double& t : ns) {
            const auto start = std::chrono::steady_clock::now();
            const whitening<double> w = netdeconv::whiten(policy(), X);
            t = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
          }
          std::nth_element(ns.begin(), ns.begin() + ns.size() / 2, ns.end());
          return ns[ns.size() / 2];
        },
        arg("x"), arg("repetitions"),
        "median nanoseconds of the C++ call netdeconv::whiten(policy, x) for float64 x, timed inside the module\n"
        "(the baseline of bench/bench_python.py's call overhead)");
  m.def("_array_info",
        [](nb::handle obj) {
          const array_in a = input("_array_info", "x", obj);
          nb::list strides;
          for (std::size_t i = 0; i < a.array.ndim(); ++i) strides.append(a.array.stride(i));
          return nb::make_tuple(reinterpret_cast<std::uintptr_t>(a.array.data()), strides);
        },
        arg("x"), "(address, strides in elements) of x as every function reads it (the zero-copy tests)");
}

}  // namespace netdeconv::python
