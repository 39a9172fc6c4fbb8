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

/// The dtype of a call from its first array; the others must match (checked by view_of).
template <class F>
nb::object dispatch(const array_in& first, F&& f) {
  return first.is_float() ? f(float{}) : f(double{});
}

}  // namespace netdeconv::python
