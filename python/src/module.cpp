// SPDX-License-Identifier: MIT
// The extension module _core_<isa>: conversions, the vocabulary types, and the module itself.
#include <atomic>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.hpp"

// GCC defines __SANITIZE_ADDRESS__ under -fsanitize=address; clang 14 has __has_feature.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool address_sanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool address_sanitizer = true;
#else
constexpr bool address_sanitizer = false;
#endif
#else
constexpr bool address_sanitizer = false;
#endif

namespace netdeconv::python {

namespace {
/// The OpenMP default of the importing thread (OMP_NUM_THREADS, or what a framework imported
/// before set), fixed at import: OpenMP's own default is per thread (PyTorch sets it to its
/// intra-op count in the thread that imports it, new threads keep the initial one), and the same
/// call from two threads would otherwise run on different thread counts and round differently.
int default_threads() {
#if defined(_OPENMP)
  static const int n = omp_get_max_threads();
#else
  static const int n = 1;
#endif
  return n;
}
std::atomic<int> threads{default_threads()};
}

simd_policy policy() { return simd_threads(threads.load()); }

std::string python_type_name(nb::handle obj) {
  const nb::handle t = obj.type();
  return nb::cast<std::string>(t.attr("__module__")) + "." + nb::cast<std::string>(t.attr("__qualname__"));
}

framework framework_of(nb::handle obj) {
  std::string module;
  if (!nb::try_cast(nb::getattr(obj.type(), "__module__", nb::none()), module)) return framework::other;
  const auto starts = [&](const char* p) { return module.rfind(p, 0) == 0; };
  if (starts("numpy")) return framework::numpy;
  // torch.Size, torch.dtype and torch.device are not tensors: only what DLPack exports is.
  if (starts("torch")) return nb::hasattr(obj, "__dlpack__") ? framework::torch : framework::other;
  if (starts("jax")) return framework::jax;  // jaxlib.xla_extension.ArrayImpl, jax.Array
  if (starts("cupy")) return framework::cupy;
  return framework::other;
}

std::string array_in::shape() const {
  std::ostringstream os;
  os << "(";
  for (std::size_t i = 0; i < array.ndim(); ++i) os << (i ? ", " : "") << array.shape(i);
  os << (array.ndim() == 1 ? ",)" : ")");
  return os.str();
}

std::string dtype_name(nb::dlpack::dtype d) {
  const char* kinds[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  std::ostringstream os;
  if (d.code < std::size(kinds)) os << kinds[d.code];
  else os << "dtype(code " << int(d.code) << ")";
  if (d.code != std::uint8_t(nb::dlpack::dtype_code::Bool)) os << int(d.bits);
  return os.str();
}

array_in input(const char* fn, const char* name, nb::handle obj, bool integer) {
  array_in a;
  a.fw = framework_of(obj);
  nb::object source = nb::borrow(obj);
  if (a.fw == framework::torch) {
    // Devices that DLPack cannot express (meta) would otherwise read as "not an array".
    const std::string device = nb::cast<std::string>(obj.attr("device").attr("type"));
    if (device.rfind("cpu", 0) != 0)
      type_error(fn, name, " is on device ", device, " (", python_type_name(obj),
                 "); this build of netdeconv runs on the CPU only");
    // A tensor that requires grad refuses __dlpack__; its data is read, never written, so detach.
    if (nb::cast<bool>(obj.attr("requires_grad"))) source = obj.attr("detach")();
  }
  if (!nb::try_cast(source, a.array, false)) {
    if (a.fw == framework::jax)
      type_error(fn, name, " is a JAX tracer or an array that cannot be exported (", python_type_name(obj),
                 "); inside jax.jit use netdeconv.jax");
    if (nb::hasattr(source, "__dlpack__"))
      type_error(fn, name, " (", python_type_name(obj), ") cannot be read in place: netdeconv takes arrays in native "
                 "byte order whose strides are whole elements");
    type_error(fn, name, " must be an array (NumPy, PyTorch, JAX, CuPy, or any object with __dlpack__ or the buffer "
               "protocol), got ", python_type_name(obj));
  }
  if (a.array.device_type() != nb::device::cpu::value)
    type_error(fn, name, " is on DLPack device type ", a.array.device_type(), " (", python_type_name(obj),
               "); this build of netdeconv runs on the CPU only");
  const auto d = a.array.dtype();
  if (integer ? d != nb::dtype<index_t>() : d != nb::dtype<float>() && d != nb::dtype<double>())
    type_error(fn, name, " has dtype ", dtype_name(d), " (", python_type_name(obj), "), expected ",
               integer ? "int64" : "float32 or float64");
  // A pointer off its element's alignment is undefined behaviour in C++ (and may meet aligned loads).
  if (a.array.size() > 0 && reinterpret_cast<std::uintptr_t>(a.array.data()) % (d.bits / 8) != 0)
    type_error(fn, name, " (", python_type_name(obj), ") is not aligned to its ", d.bits / 8,
               "-byte elements: pass an aligned copy (NumPy: np.require(a, requirements='A'))");
  return a;
}

nb::object result_type(const char* name) {
  // Leaked: a static nb::object would be released after the interpreter is gone.
  static nb::handle types = nb::module_::import_("netdeconv._types").release();
  return types.attr(name);
}

nb::list report_list(const std::vector<isqrt_report>& reports) {
  nb::list out;
  for (const isqrt_report& r : reports) out.append(nb::cast(r));
  return out;
}

void check_reports(const char* fn, const std::vector<isqrt_report>& reports, bool check) {
  if (!check) return;
  for (std::size_t s = 0; s < reports.size(); ++s)
    if (reports[s].status != isqrt_status::ok) {
      std::ostringstream os;
      os << fn << ": statistic " << s << " of " << reports.size() << " failed: " << reports[s].status << " (residual "
         << reports[s].residual << " after " << reports[s].iterations
         << " iterations); pass check=False to get the reports instead";
      throw numerical_error(os.str());
    }
}

namespace {

conv_geometry geometry(nb::handle kernel, nb::handle stride, nb::handle padding, nb::handle dilation) {
  const auto pair = [](const char* name, nb::handle v) -> std::pair<index_t, index_t> {
    const auto integer = [&](nb::handle e) {
      index_t x = 0;
      if (!nb::isinstance<nb::int_>(e) || !nb::try_cast(e, x))
        type_error("conv_config", name, " must be an int or a pair of ints of 64 bits, got ",
                   nb::cast<std::string>(nb::repr(v)));
      return x;
    };
    if (nb::isinstance<nb::int_>(v)) return {integer(v), integer(v)};
    nb::tuple t;
    if (!nb::try_cast(v, t) || t.size() != 2)
      type_error("conv_config", name, " must be an int or a pair of ints, got ", python_type_name(v));
    return {integer(t[0]), integer(t[1])};
  };
  const auto [kh, kw] = pair("kernel_size", kernel);
  const auto [sh, sw] = pair("stride", stride);
  const auto [ph, pw] = pair("padding", padding);
  const auto [dh, dw] = pair("dilation", dilation);
  return {kh, kw, sh, sw, ph, pw, dh, dw};
}

template <class C>
void bind_isqrt_field(nb::class_<C>& c) {
  c.def_rw("isqrt", &C::isqrt, "inverse square root options (IsqrtOptions)");
}

}  // namespace

void bind_types(nb::module_& m) {
  nb::exception<numerical_error>(m, "NumericalError", PyExc_ArithmeticError);
  nb::exception<checkpoint_error>(m, "CheckpointError", PyExc_ValueError);

  nb::enum_<isqrt_method>(m, "IsqrtMethod", "Newton-Schulz iteration or the float64 eigendecomposition")
      .value("newton_schulz", isqrt_method::newton_schulz)
      .value("exact", isqrt_method::exact);
  nb::enum_<isqrt_scaling>(m, "IsqrtScaling", "scale of A before the iteration: Frobenius norm or trace")
      .value("frobenius", isqrt_scaling::frobenius)
      .value("trace", isqrt_scaling::trace);
  nb::enum_<isqrt_status>(m, "IsqrtStatus")
      .value("ok", isqrt_status::ok)
      .value("not_converged", isqrt_status::not_converged)
      .value("non_finite", isqrt_status::non_finite)
      .value("not_positive_definite", isqrt_status::not_positive_definite);
  nb::enum_<block_layout>(m, "BlockLayout", "how channels are grouped into statistics (docs/method.md, section 3)")
      .value("interleaved_shared", block_layout::interleaved_shared)
      .value("contiguous_shared", block_layout::contiguous_shared)
      .value("grouped", block_layout::grouped)
      .value("independent", block_layout::independent);
  nb::enum_<failure_policy>(m, "FailurePolicy")
      .value("throw_error", failure_policy::throw_error)
      .value("keep_previous", failure_policy::keep_previous)
      .value("exact_fallback", failure_policy::exact_fallback)
      .value("raise_eps", failure_policy::raise_eps);
  nb::enum_<step_outcome>(m, "StepOutcome")
      .value("computed", step_outcome::computed)
      .value("frozen", step_outcome::frozen)
      .value("kept_previous", step_outcome::kept_previous)
      .value("exact_fallback", step_outcome::exact_fallback)
      .value("eps_raised", step_outcome::eps_raised);
  nb::enum_<statistics_gradient>(m, "StatisticsGradient",
                                 "full: the gradient through mu and Cov; constants: mu and D held constant")
      .value("full", statistics_gradient::full)
      .value("constants", statistics_gradient::constants);

  nb::class_<isqrt_report>(m, "IsqrtReport", "the outcome of one inverse square root")
      .def_ro("iterations", &isqrt_report::iterations, "Newton-Schulz steps taken (0 for the exact path)")
      .def_ro("residual", &isqrt_report::residual, "||I - Z Y||_F / sqrt(F) (exact path: ||D A D - I||_F / sqrt(F))")
      .def_ro("status", &isqrt_report::status)
      .def("__repr__", [](const isqrt_report& r) {
        std::ostringstream os;
        os << "IsqrtReport(iterations=" << r.iterations << ", residual=" << r.residual << ", status=" << r.status << ")";
        return os.str();
      });

  nb::class_<isqrt_options>(m, "IsqrtOptions",
                            "Options of the inverse square root: IsqrtOptions.fixed(n), .converged(tol, max), .exact()")
      .def(nb::init<>())
      .def_static("fixed", &isqrt_options::fixed, nb::arg("iterations"), "n coupled Newton-Schulz steps")
      .def_static("converged", &isqrt_options::converged, nb::arg("tolerance"), nb::arg("max_iterations") = 100,
                  "Newton-Schulz until the residual is <= tolerance")
      .def_static("exact", &isqrt_options::exact, "float64 eigendecomposition")
      .def_rw("method", &isqrt_options::method)
      .def_rw("iterations", &isqrt_options::iterations)
      .def_rw("tolerance", &isqrt_options::tolerance)
      .def_rw("scaling", &isqrt_options::scaling)
      .def_rw("final_residual", &isqrt_options::final_residual)
      .def("__repr__", [](const isqrt_options& o) {
        std::ostringstream os;
        if (o.method == isqrt_method::exact) return std::string("IsqrtOptions.exact()");
        os << "IsqrtOptions(iterations=" << o.iterations << ", tolerance=" << o.tolerance
           << ", scaling=" << (o.scaling == isqrt_scaling::trace ? "trace" : "frobenius") << ")";
        return os.str();
      });

  const conv_deconv_config conv0;
  auto conv = nb::class_<conv_deconv_config>(m, "ConvConfig", "a conv layer's statistics step (reference defaults)");
  conv.def(
          "__init__",
          [](conv_deconv_config* c, nb::handle kernel_size, nb::handle stride, nb::handle padding, nb::handle dilation,
             index_t groups, block_layout layout, index_t block, index_t sampling_stride, double eps,
             const isqrt_options& isqrt) {
            new (c) conv_deconv_config{geometry(kernel_size, stride, padding, dilation), groups, layout, block,
                                       sampling_stride, eps, isqrt};
          },
          nb::arg("kernel_size"), nb::kw_only(), nb::arg("stride") = 1, nb::arg("padding") = 0, nb::arg("dilation") = 1,
          nb::arg("groups") = conv0.groups, nb::arg("layout") = conv0.layout, nb::arg("block") = conv0.block,
          nb::arg("sampling_stride") = conv0.sampling_stride, nb::arg("eps") = conv0.eps,
          nb::arg("isqrt") = conv0.isqrt)
      .def_prop_ro("kernel_size", [](const conv_deconv_config& c) { return std::pair(c.geometry.kernel_h, c.geometry.kernel_w); })
      .def_prop_ro("stride", [](const conv_deconv_config& c) { return std::pair(c.geometry.stride_h, c.geometry.stride_w); })
      .def_prop_ro("padding", [](const conv_deconv_config& c) { return std::pair(c.geometry.pad_h, c.geometry.pad_w); })
      .def_prop_ro("dilation",
                   [](const conv_deconv_config& c) { return std::pair(c.geometry.dilation_h, c.geometry.dilation_w); })
      .def_rw("groups", &conv_deconv_config::groups)
      .def_rw("layout", &conv_deconv_config::layout)
      .def_rw("block", &conv_deconv_config::block)
      .def_rw("sampling_stride", &conv_deconv_config::sampling_stride)
      .def_rw("eps", &conv_deconv_config::eps);
  bind_isqrt_field(conv);

  const linear_deconv_config linear0;
  auto linear = nb::class_<linear_deconv_config>(m, "LinearConfig", "a linear layer's statistics step (reference defaults)");
  linear.def(nb::init<block_layout, index_t, double, isqrt_options>(), nb::kw_only(), nb::arg("layout") = linear0.layout,
             nb::arg("block") = linear0.block, nb::arg("eps") = linear0.eps, nb::arg("isqrt") = linear0.isqrt)
      .def_rw("layout", &linear_deconv_config::layout)
      .def_rw("block", &linear_deconv_config::block)
      .def_rw("eps", &linear_deconv_config::eps);
  bind_isqrt_field(linear);

  const channel_deconv_config channel0;
  auto channel = nb::class_<channel_deconv_config>(m, "ChannelConfig", "the channel layer (reference defaults)");
  channel
      .def(nb::init<index_t, index_t, double, isqrt_options, bool>(), nb::kw_only(), nb::arg("block") = channel0.block,
           nb::arg("sampling_stride") = channel0.sampling_stride, nb::arg("eps") = channel0.eps,
           nb::arg("isqrt") = channel0.isqrt, nb::arg("uncentred_covariance") = channel0.uncentred_covariance)
      .def_rw("block", &channel_deconv_config::block)
      .def_rw("sampling_stride", &channel_deconv_config::sampling_stride)
      .def_rw("eps", &channel_deconv_config::eps)
      .def_rw("uncentred_covariance", &channel_deconv_config::uncentred_covariance);
  bind_isqrt_field(channel);

  const layer_options options0;
  nb::class_<layer_options>(m, "LayerOptions", "running statistics and failure handling (reference defaults)")
      .def(nb::init<double, bool, index_t, bool, bool, bool, failure_policy, int>(), nb::kw_only(),
           nb::arg("momentum") = options0.momentum, nb::arg("freeze") = options0.freeze,
           nb::arg("freeze_iter") = options0.freeze_iter, nb::arg("first_step_copy") = options0.first_step_copy,
           nb::arg("average_covariance") = options0.average_covariance, nb::arg("relative_eps") = options0.relative_eps,
           nb::arg("on_failure") = options0.on_failure, nb::arg("max_eps_raises") = options0.max_eps_raises)
      .def_static("improved", &layer_options::improved,
                  "first-step copy, running covariance, trace-relative eps, keep previous statistics on failure")
      .def_rw("momentum", &layer_options::momentum)
      .def_rw("freeze", &layer_options::freeze)
      .def_rw("freeze_iter", &layer_options::freeze_iter)
      .def_rw("first_step_copy", &layer_options::first_step_copy)
      .def_rw("average_covariance", &layer_options::average_covariance)
      .def_rw("relative_eps", &layer_options::relative_eps)
      .def_rw("on_failure", &layer_options::on_failure)
      .def_rw("max_eps_raises", &layer_options::max_eps_raises);

  m.def("set_num_threads", [](int n) {
    NETDECONV_REQUIRE(n >= 0 && n <= max_policy_threads, "set_num_threads", "threads must be in [0, ",
                      max_policy_threads, "] (0: the default), got ", n);
    threads = n == 0 ? default_threads() : n;
  }, nb::arg("threads"),
  "OpenMP threads of every later call, from any Python thread (0: the default, the importing thread's\n"
  "omp_get_max_threads() at import)");
  m.def("get_num_threads", [] { return threads.load(); });
  m.attr("isa") = NETDECONV_ISA;
#if defined(_OPENMP)
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  m.attr("simd_arch") = xsimd::default_arch::name();
  m.attr("compiler") = __VERSION__;
  m.attr("address_sanitizer") = address_sanitizer;  // scripts/sanitize's build
}

}  // namespace netdeconv::python

NB_MODULE(NETDECONV_MODULE, m) {
  // Objects still referenced at interpreter exit (a module's layer in a global, an autograd graph)
  // are alive, not leaked; nanobind would list them on every such exit.
  nanobind::set_leak_warnings(false);
  netdeconv::python::bind_types(m);
  netdeconv::python::bind_functions(m);
  netdeconv::python::bind_layers(m);
#if defined(NETDECONV_JAX_FFI)
  netdeconv::python::bind_jax(m);
#endif
  m.attr("jax_ffi") = bool(NETDECONV_JAX_FFI_ENABLED);
}
