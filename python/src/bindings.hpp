// SPDX-License-Identifier: MIT
// What the binding translation units of one extension module share.
#pragma once

#include <vector>

#include "arrays.hpp"

namespace netdeconv::python {

void bind_types(nb::module_& m);
void bind_functions(nb::module_& m);
void bind_layers(nb::module_& m);
void bind_jax(nb::module_& m);  // with NETDECONV_JAX_FFI (jax_ffi.cpp)

/// The named tuple `name` of netdeconv._types.
nb::object result_type(const char* name);

/// Reports as a list of IsqrtReport.
nb::list report_list(const std::vector<isqrt_report>& reports);

/// With check, NumericalError naming the first statistic whose report is not ok.
void check_reports(const char* fn, const std::vector<isqrt_report>& reports, bool check);

/// The memory of `count` reports (host).
inline vector_view<isqrt_report> report_view(std::vector<isqrt_report>& r) {
  return {r.data(), {index_t(r.size())}, {1}};
}

/// Output slot i of an optional `out` sequence (None when out is None).
inline nb::handle out_item(const char* fn, nb::handle out, std::size_t i, std::size_t n) {
  if (out.is_none()) return nb::none();
  nb::sequence seq;
  if (!nb::try_cast(out, seq) || nb::len(out) != n)
    type_error(fn, "out must be None or a sequence of ", n, " arrays (or None), got ", python_type_name(out));
  return out[i];
}

/// The statistics step's outputs: W' (the weight's shape), b' (Cout), mean (S, F), D (S, F, F).
template <class T, int R>
struct step_out {
  array_out<T, R> weight;
  array_out<T, 1> bias;
  array_out<T, 2> mean;
  array_out<T, 3> D;
  std::vector<isqrt_report> reports;

  step_out(const char* fn, nb::handle out, framework fw, const index_array<R>& w, const block_plan& plan)
      : weight(output<T, R>(fn, "out.weight", out_item(fn, out, 0, 4), fw, w)),
        bias(output<T, 1>(fn, "out.bias", out_item(fn, out, 1, 4), fw, {w[0]})),
        mean(output<T, 2>(fn, "out.mean", out_item(fn, out, 2, 4), fw, {plan.count(), plan.features()})),
        D(output<T, 3>(fn, "out.D", out_item(fn, out, 3, 4), fw, {plan.count(), plan.features(), plan.features()})),
        reports(static_cast<std::size_t>(plan.count())) {}
  statistics_step_outputs<T, R> view() { return {mean.view(), D.view(), weight.view(), bias.view(), report_view(reports)}; }
  nb::object result(index_t samples) {
    return result_type("StatisticsStep")(weight.result(), bias.result(), mean.result(), D.result(), report_list(reports),
                                         samples);
  }
};

/// The step backward's outputs: dL/dW, dL/db, dL/dx and the reports.
template <class T, int R, int RX>
struct gradients_out {
  array_out<T, R> weight;
  array_out<T, 1> bias;
  array_out<T, RX> x;
  std::vector<isqrt_report> reports;

  gradients_out(framework fw, const index_array<R>& w, const index_array<RX>& x, index_t S)
      : weight(fw, w), bias(fw, {w[0]}), x(fw, x), reports(static_cast<std::size_t>(S)) {}
  nb::object result(bool has_bias) {
    return result_type("StepGradients")(weight.result(), has_bias ? bias.result() : nb::none(), x.result(),
                                        report_list(reports));
  }
};

/// The dtype of a call from its first array; the others must match (checked by view_of).
template <class F>
nb::object dispatch(const array_in& first, F&& f) {
  return first.is_float() ? f(float{}) : f(double{});
}

}  // namespace netdeconv::python
