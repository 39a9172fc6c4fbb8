// SPDX-License-Identifier: MIT
// The layers' state objects: ConvDeconvLayer, LinearDeconvLayer and ChannelDeconvLayer over
// conv_deconv_layer, linear_deconv_layer and channel_deconv_layer of float32 or float64.
//
// Each object is one C++ layer and a mutex: calls on one object from several Python threads run
// one at a time (the mutex is taken after the GIL is released), calls on different objects run
// concurrently. attach_state keeps the caller's arrays alive for as long as the layer uses them.
#include <mutex>
#include <variant>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.hpp"

namespace netdeconv::python {

namespace {

using nb::arg;

/// The element type of Layer<T>.
template <class L>
struct element;
template <template <class> class L, class T>
struct element<L<T>> {
  using type = T;
};
template <class L>
using element_t = typename element<L>::type;

bool is_float32(const std::string& dtype) {
  if (dtype == "float32") return true;
  if (dtype == "float64") return false;
  type_error("layer", "dtype must be 'float32' or 'float64', got '", dtype, "'");
}

nb::bytes to_bytes(const std::vector<std::uint8_t>& b) { return nb::bytes(reinterpret_cast<const char*>(b.data()), b.size()); }

std::vector<std::uint8_t> from_bytes(nb::bytes b) {
  const auto* p = static_cast<const std::uint8_t*>(b.data());
  return {p, p + b.size()};
}

/// A Python callable kept by C++: released with the GIL held, whichever thread drops it last.
std::shared_ptr<nb::object> keep_callable(nb::handle f) {
  return {new nb::object(nb::borrow(f)), [](nb::object* o) {
            nb::gil_scoped_acquire gil;
            delete o;
          }};
}

/// shape[i] == want[i] for an array a reduction callback returned.
void check_returned(const char* what, const array_in& a, std::initializer_list<index_t> want) {
  bool same = a.array.ndim() == want.size();
  std::size_t i = 0;
  for (const index_t w : want) same = same && index_t(a.array.shape(i++)) == w;
  if (!same) value_error("reduction", "the ", what, " returned has shape ", a.shape(), ", expected that of the argument");
}

/// The statistics reduction (statistics_reduction.hpp) of Python callables, run with the GIL taken:
///   moments(count int64 (S,), mean (S, F), scatter (S, F, F)) -> (count, mean, scatter) of the whole batch
///   gradients(dcov (S, F, F), dmean (S, F)) -> (dcov, dmean) summed over the processes
/// The arguments are new float64 NumPy arrays; the results may be any arrays of the same shapes.
std::shared_ptr<statistics_reduction> python_reduction(nb::handle moments_fn, nb::handle gradients_fn) {
  auto r = std::make_shared<statistics_reduction>();
  r->moments = [f = keep_callable(moments_fn)](std::vector<moments<double>>& m) {
    nb::gil_scoped_acquire gil;
    const index_t S = index_t(m.size()), F = m.front().features();
    array_out<index_t, 1> count(framework::numpy, {S});
    array_out<double, 2> mean(framework::numpy, {S, F});
    array_out<double, 3> scatter(framework::numpy, {S, F, F});
    for (index_t s = 0; s < S; ++s) {
      const moments<double>& ms = m[std::size_t(s)];
      count.view()(s) = ms.count();
      for (index_t i = 0; i < F; ++i) {
        mean.view()(s, i) = ms.mean()[i];
        for (index_t j = 0; j < F; ++j) scatter.view()(s, i, j) = i >= j ? ms.scatter()(i, j) : ms.scatter()(j, i);
      }
    }
    const nb::object returned = (*f)(count.result(), mean.result(), scatter.result());
    nb::tuple out;
    if (!nb::try_cast(returned, out))
      type_error("reduction", "moments must return a tuple (count, mean, scatter), got ", python_type_name(returned));
    if (out.size() != 3) value_error("reduction", "moments must return (count, mean, scatter), got ", out.size(), " items");
    const array_in ca = input("reduction", "count", out[0], true), ma = input("reduction", "mean", out[1]),
                   sa = input("reduction", "scatter", out[2]);
    check_returned("count", ca, {S});
    check_returned("mean", ma, {S, F});
    check_returned("scatter", sa, {S, F, F});
    const auto c = view_of<index_t, 1>("reduction", "count", ca, "(S,)");
    const auto mv = view_of<double, 2>("reduction", "mean", ma, "(S, F)");
    const auto sv = view_of<double, 3>("reduction", "scatter", sa, "(S, F, F)");
    for (index_t s = 0; s < S; ++s) {
      Eigen::VectorXd mu(F);
      Eigen::MatrixXd sc(F, F);
      for (index_t i = 0; i < F; ++i) {
        mu[i] = mv(s, i);
        for (index_t j = 0; j < F; ++j) sc(i, j) = sv(s, i, j);
      }
      m[std::size_t(s)] = moments<double>(c(s), std::move(mu), std::move(sc));
    }
  };
  r->gradients = [f = keep_callable(gradients_fn)](std::vector<Eigen::MatrixXd>& dcov, std::vector<Eigen::VectorXd>& dmu) {
    nb::gil_scoped_acquire gil;
    const index_t S = index_t(dcov.size()), F = index_t(dmu.front().size());
    array_out<double, 3> dc(framework::numpy, {S, F, F});
    array_out<double, 2> dm(framework::numpy, {S, F});
    for (index_t s = 0; s < S; ++s)
      for (index_t i = 0; i < F; ++i) {
        dm.view()(s, i) = dmu[std::size_t(s)][i];
        for (index_t j = 0; j < F; ++j) dc.view()(s, i, j) = dcov[std::size_t(s)](i, j);
      }
    const nb::object returned = (*f)(dc.result(), dm.result());
    nb::tuple out;
    if (!nb::try_cast(returned, out))
      type_error("reduction", "gradients must return a tuple (dcov, dmean), got ", python_type_name(returned));
    if (out.size() != 2) value_error("reduction", "gradients must return (dcov, dmean), got ", out.size(), " items");
    const array_in ca = input("reduction", "dcov", out[0]), ma = input("reduction", "dmean", out[1]);
    check_returned("dcov", ca, {S, F, F});
    check_returned("dmean", ma, {S, F});
    const auto cv = view_of<double, 3>("reduction", "dcov", ca, "(S, F, F)");
    const auto mv = view_of<double, 2>("reduction", "dmean", ma, "(S, F)");
    for (index_t s = 0; s < S; ++s)
      for (index_t i = 0; i < F; ++i) {
        dmu[std::size_t(s)][i] = mv(s, i);
        for (index_t j = 0; j < F; ++j) dcov[std::size_t(s)](i, j) = cv(s, i, j);
      }
  };
  return r;
}

/// What every layer object shares: the C++ layer of float or double, its lock and the caller arrays
/// its state is attached to.
template <template <class> class Layer>
class layer_object {
 public:
  template <class... Args>
  layer_object(bool single, const Args&... args) : layer_(make(single, args...)) {}

  const char* dtype() const { return layer_.index() == 0 ? "float32" : "float64"; }

  /// f(layer) with the GIL held and the lock taken (for calls that touch Python objects only
  /// before and after).
  template <class F>
  auto locked(F&& f) {
    std::unique_lock lock(mutex_, std::defer_lock);
    {
      nb::gil_scoped_release release;
      lock.lock();
    }
    return std::visit(f, layer_);
  }

  /// Runs f() without the GIL, holding the lock m.
  template <class F>
  static void compute(std::mutex& m, F&& f) {
    nb::gil_scoped_release release;
    std::lock_guard lock(m);
    f();
  }

  std::mutex& mutex() { return mutex_; }
  std::variant<Layer<float>, Layer<double>>& layer() { return layer_; }
  void keep(std::vector<nb::object> arrays) { attached_ = std::move(arrays); }

 private:
  template <class... Args>
  static std::variant<Layer<float>, Layer<double>> make(bool single, const Args&... args) {
    if (single) return std::variant<Layer<float>, Layer<double>>(std::in_place_index<0>, args...);
    return std::variant<Layer<float>, Layer<double>>(std::in_place_index<1>, args...);
  }

  std::variant<Layer<float>, Layer<double>> layer_;
  std::mutex mutex_;
  std::vector<nb::object> attached_;
};

/// Runs f(layer) on the layer of element type T, TypeError when the layer has the other one.
template <class T, template <class> class Layer, class F>
void on_layer(const char* fn, layer_object<Layer>& o, F&& f) {
  Layer<T>* layer = std::get_if<Layer<T>>(&o.layer());
  if (!layer) type_error(fn, "the layer is ", o.dtype(), ", the arrays are ", dtype_name(nb::dtype<T>()));
  layer_object<Layer>::compute(o.mutex(), [&] { f(*layer); });
}

/// The running statistics (mean (S, F), D (S, F, F)) as NumPy arrays.
template <template <class> class Layer>
nb::object running(layer_object<Layer>& o) {
  return o.locked([&](auto& layer) -> nb::object {
    using T = element_t<std::decay_t<decltype(layer)>>;
    const block_statistics<T> s = layer.running();
    const index_t S = s.plan.count(), F = s.plan.features();
    array_out<T, 2> mean(framework::numpy, {S, F});
    array_out<T, 3> D(framework::numpy, {S, F, F});
    detail::store_statistics(s, mean.view(), D.view());
    return nb::make_tuple(mean.result(), D.result());
  });
}

/// The caller's state arrays for attach_state; `shapes` come from the layer.
template <class T>
struct attached_state {
  array_out<T, 2> mean;
  array_out<T, 3> D;
  std::optional<array_out<T, 3>> cov;
  array_out<index_t, 1> counters;
  std::optional<array_out<T, 1>> remaining;

  running_state_view<T> view() const {
    return {mean.view(), D.view(), cov ? cov->view() : tensor_view<T, 3>{}, counters.view(),
            remaining ? remaining->view() : vector_view<T>{}};
  }
};

template <class T>
attached_state<T> attach_args(const char* fn, index_t S, index_t F, nb::handle mean, nb::handle D, nb::handle counters,
                              nb::handle cov, nb::handle remaining) {
  attached_state<T> a{array_out<T, 2>(fn, "mean", mean, {S, F}), array_out<T, 3>(fn, "D", D, {S, F, F}), {},
                      array_out<index_t, 1>(fn, "counters", counters, {3}), {}};
  if (!cov.is_none()) a.cov.emplace(fn, "cov", cov, index_array<3>{S, F, F});
  if (!remaining.is_none()) a.remaining.emplace(fn, "remaining", remaining, index_array<1>{2});
  return a;
}

std::vector<nb::object> kept(nb::handle mean, nb::handle D, nb::handle counters, nb::handle cov, nb::handle remaining) {
  return {nb::borrow(mean), nb::borrow(D), nb::borrow(counters), nb::borrow(cov), nb::borrow(remaining)};
}

void bind_diagnostic(nb::module_& m) {
  nb::class_<step_diagnostic>(m, "StepDiagnostic", "what a layer's training step did (Layer.diagnostic)")
      .def_ro("outcome", &step_diagnostic::outcome)
      .def_prop_ro("reports", [](const step_diagnostic& d) { return report_list(d.reports); },
                   "one IsqrtReport per statistic, as finally used (empty when frozen)")
      .def_ro("eps_raises", &step_diagnostic::eps_raises, "tenfold eps increases this step (FailurePolicy.raise_eps)")
      .def_ro("exact_blocks", &step_diagnostic::exact_blocks, "statistics recomputed with the exact root")
      .def_ro("failures", &step_diagnostic::failures, "steps so far whose statistics failed");
}

// ---- conv and linear: one class template over the weight's rank ------------------------------

template <int R>
struct folding_kind;

template <>
struct folding_kind<4> {
  template <class T>
  using layer = conv_deconv_layer<T>;
  using config = conv_deconv_config;
  static constexpr const char* x_axes = "(N, C, H, W)";
  static constexpr const char* w_axes = "(Cout, C/groups, kh, kw)";
  template <class T>
  static index_t samples(const tensor_view<const T, 4>& x, const layer<T>& l, const config& c) {
    return patch_sampler<T>(x, c.geometry, c.sampling_stride).rows() * l.plan().rows_per_patch();
  }
};

template <>
struct folding_kind<2> {
  template <class T>
  using layer = linear_deconv_layer<T>;
  using config = linear_deconv_config;
  static constexpr const char* x_axes = "(n, Fin)";
  static constexpr const char* w_axes = "(Fout, Fin)";
  template <class T>
  static index_t samples(const tensor_view<const T, 2>& x, const layer<T>& l, const config&) {
    return x.shape[0] * l.plan().rows_per_patch();
  }
};

template <int R>
class folding_object : public layer_object<folding_kind<R>::template layer> {
  using kind = folding_kind<R>;
  using base = layer_object<kind::template layer>;

 public:
  folding_object(index_t in, const typename kind::config& config, const std::optional<layer_options>& options,
                 const std::string& dtype)
      : base(is_float32(dtype), in, config, options.value_or(layer_options{})), config_(config) {}

  std::pair<index_t, index_t> plan() {
    const block_plan p = block_plan_copy();
    return std::pair(p.count(), p.features());
  }

  nb::object train_step(nb::handle x_obj, nb::handle w_obj, nb::handle b_obj, nb::handle out) {
    constexpr const char* fn = "train_step";
    const array_in xa = input(fn, "x", x_obj), wa = input(fn, "weight", w_obj);
    std::optional<array_in> ba;
    return dispatch(xa, [&](auto t) -> nb::object {
      using T = decltype(t);
      const tensor_view<const T, R> x = view_of<T, R>(fn, "x", xa, kind::x_axes);
      const tensor_view<const T, R> w = view_of<T, R>(fn, "weight", wa, kind::w_axes);
      const vector_view<const T> b = optional_view<T, 1>(fn, "bias", b_obj, "(Cout,)", ba);
      step_out<T, R> o(fn, out, xa.fw, w.shape, block_plan_copy());
      index_t samples = 0;
      on_layer<T>(fn, *this, [&](auto& l) {
        l.train_step(policy(), x, w, b, o.view());
        samples = kind::samples(x, l, config_);
      });
      return o.result(samples);
    });
  }

  nb::object eval(nb::handle w_obj, nb::handle b_obj, nb::handle out) {
    constexpr const char* fn = "eval";
    const array_in wa = input(fn, "weight", w_obj);
    std::optional<array_in> ba;
    return dispatch(wa, [&](auto t) -> nb::object {
      using T = decltype(t);
      const tensor_view<const T, R> w = view_of<T, R>(fn, "weight", wa, kind::w_axes);
      const vector_view<const T> b = optional_view<T, 1>(fn, "bias", b_obj, "(Cout,)", ba);
      auto W = output<T, R>(fn, "out.weight", out_item(fn, out, 0, 2), wa.fw, w.shape);
      auto B = output<T, 1>(fn, "out.bias", out_item(fn, out, 1, 2), wa.fw, {w.shape[0]});
      on_layer<T>(fn, *this, [&](auto& l) { l.export_weights(policy(), w, b, W.view(), B.view()); });
      return nb::make_tuple(W.result(), B.result());
    });
  }

  nb::object backward(nb::handle x_obj, nb::handle w_obj, nb::handle b_obj, nb::handle mean_obj, nb::handle D_obj,
                      nb::handle gw_obj, nb::handle gb_obj, const std::optional<step_diagnostic>& step,
                      statistics_gradient mode) {
    constexpr const char* fn = "backward";
    const array_in xa = input(fn, "x", x_obj), wa = input(fn, "weight", w_obj), ma = input(fn, "mean", mean_obj),
                   Da = input(fn, "D", D_obj), gwa = input(fn, "grad_weight", gw_obj);
    std::optional<array_in> ba, gba;
    return dispatch(xa, [&](auto t) -> nb::object {
      using T = decltype(t);
      const tensor_view<const T, R> x = view_of<T, R>(fn, "x", xa, kind::x_axes);
      const tensor_view<const T, R> w = view_of<T, R>(fn, "weight", wa, kind::w_axes);
      const vector_view<const T> b = optional_view<T, 1>(fn, "bias", b_obj, "(Cout,)", ba);
      const tensor_view<const T, R> gw = view_of<T, R>(fn, "grad_weight", gwa, kind::w_axes);
      const vector_view<const T> gb = optional_view<T, 1>(fn, "grad_bias", gb_obj, "(Cout,)", gba);
      const matrix_view<const T> mean = view_of<T, 2>(fn, "mean", ma, "(S, F)");
      const tensor_view<const T, 3> D = view_of<T, 3>(fn, "D", Da, "(S, F, F)");
      const block_plan plan = block_plan_copy();
      gradients_out<T, R, R> g(xa.fw, w.shape, x.shape, plan.count());
      on_layer<T>(fn, *this, [&](auto& l) {
        l.backward(policy(), x, w, b, {plan, mean, D}, step ? *step : l.diagnostic(), gw, gb,
                   {g.weight.view(), b_obj.is_none() ? vector_view<T>{} : g.bias.view(), g.x.view(),
                    report_view(g.reports)},
                   mode);
      });
      return g.result(!b_obj.is_none());
    });
  }

  void set_reduction(nb::handle moments_fn, nb::handle gradients_fn) {
    if (moments_fn.is_none() != gradients_fn.is_none())
      value_error("set_reduction", "give both moments and gradients, or neither (local steps)");
    std::shared_ptr<const statistics_reduction> r;
    if (!moments_fn.is_none()) r = python_reduction(moments_fn, gradients_fn);
    this->locked([&](auto& l) { l.set_reduction(r); });
  }

  void attach_state(nb::handle mean, nb::handle D, nb::handle counters, nb::handle cov) {
    constexpr const char* fn = "attach_state";
    const std::pair<index_t, index_t> shape = plan();  // (no structured binding: clang 14 cannot capture one)
    const index_t S = shape.first, F = shape.second;
    std::visit(
        [&](auto& l) {
          using T = element_t<std::decay_t<decltype(l)>>;
          const attached_state<T> a = attach_args<T>(fn, S, F, mean, D, counters, cov, nb::none());
          layer_object<kind::template layer>::compute(this->mutex(), [&] { l.attach_state(a.view()); });
        },
        this->layer());
    this->keep(kept(mean, D, counters, cov, nb::none()));
  }

 private:
  block_plan block_plan_copy() {
    return this->locked([](auto& l) { return l.plan(); });
  }

  typename kind::config config_;
};

template <int R, class Config>
void bind_folding(nb::module_& m, const char* name, const char* doc, const char* in_name) {
  using O = folding_object<R>;
  nb::class_<O>(m, name, doc)
      .def(nb::init<index_t, const Config&, const std::optional<layer_options>&, const std::string&>(), arg(in_name),
           arg("config"), arg("options") = nb::none(), nb::kw_only(), arg("dtype") = "float32")
      .def("train_step", &O::train_step, arg("x"), arg("weight"), arg("bias").none() = nb::none(), nb::kw_only(),
           arg("out") = nb::none(),
           "Training step: the statistics of x (or the running ones when frozen or kept), the running state's update, "
           "and W', b' with the statistics they fold. Returns StatisticsStep(weight, bias, mean (S, F), D (S, F, F), "
           "reports, samples); out=(weight, bias, mean, D) writes into caller arrays. A failure follows "
           "options.on_failure (throw_error: NumericalError, the state unchanged).")
      .def("eval", &O::eval, arg("weight"), arg("bias").none() = nb::none(), nb::kw_only(), arg("out") = nb::none(),
           "(W', b') from the running statistics: the weights of an ordinary layer for inference")
      .def("backward", &O::backward, arg("x"), arg("weight"), arg("bias").none(), arg("mean"), arg("D"),
           arg("grad_weight"), arg("grad_bias").none(), nb::kw_only(), arg("step") = nb::none(),
           arg("mode") = statistics_gradient::full,
           "Backward of a training step: x, weight, bias as in the step; mean, D what it returned; step its "
           "diagnostic (default: the latest step's); grad_weight = dL/dW', grad_bias = dL/db'. Returns "
           "StepGradients(weight = dL/dW, bias = dL/db, x = dL/dx through mu and Cov, reports).")
      .def("running", [](O& o) { return running(o); }, "(mean (S, F), D (S, F, F)): the running statistics, copied")
      .def("set_reduction", &O::set_reduction, arg("moments").none(), arg("gradients").none(),
           "Data-parallel steps (docs/method.md section 7): every later train_step passes its shard's moments to "
           "moments(count int64 (S,), mean (S, F), scatter (S, F, F)), which returns the whole batch's, and every "
           "backward its statistic gradients to gradients(dcov (S, F, F), dmean (S, F)), which returns their sums "
           "over the shards (float64 NumPy arguments; both called with the GIL, inside the step). A shard may then "
           "hold fewer than 2 samples. None, None: local steps again.")
      .def("attach_state", &O::attach_state, arg("mean"), arg("D"), arg("counters"), arg("cov") = nb::none(),
           "Keeps the running state in caller arrays from now on: mean (S, F), D (S, F, F), counters int64 (3,) "
           "(steps, freeze counter, failed steps) and, with options.average_covariance, cov (S, F, F). The current "
           "state is written there first; whatever the caller loads into them later is the state.")
      .def("state", [](O& o) { return o.locked([](auto& l) { return to_bytes(l.state()); }); },
           "the checkpoint bytes")
      .def("load_state",
           [](O& o, nb::bytes b) { o.locked([v = from_bytes(b)](auto& l) { l.load_state(v); }); }, arg("state"),
           "restores state() of a layer with the same configuration (CheckpointError otherwise, the state unchanged)")
      .def_prop_ro("plan", &O::plan, "(S, F): the statistics and the features of each")
      .def_prop_ro("dtype", &O::dtype)
      .def_prop_ro("steps", [](O& o) { return o.locked([](auto& l) { return l.steps(); }); })
      .def_prop_ro("freeze_counter", [](O& o) { return o.locked([](auto& l) { return l.freeze_counter(); }); })
      .def_prop_ro("diagnostic", [](O& o) { return o.locked([](auto& l) { return l.diagnostic(); }); },
                   "StepDiagnostic of the latest training step");
}

// ---- the channel layer -------------------------------------------------------------------

class channel_object : public layer_object<channel_deconv_layer> {
 public:
  channel_object(index_t channels, const channel_deconv_config& config, const std::optional<layer_options>& options,
                 const std::string& dtype)
      : layer_object(is_float32(dtype), channels, config,
                     options.value_or(channel_deconv_layer<float>::reference_options())),
        block_(config.block), remaining_(channels % config.block != 0 ? 2 : 0) {}

  nb::object train_step(nb::handle x_obj, nb::handle out) {
    constexpr const char* fn = "train_step";
    const array_in xa = input(fn, "x", x_obj);
    return dispatch(xa, [&](auto t) -> nb::object {
      using T = decltype(t);
      const image_view<const T> x = view_of<T, 4>(fn, "x", xa, "(N, C, H, W)");
      auto y = output<T, 4>(fn, "out", out, xa.fw, x.shape);
      array_out<T, 2> mean(xa.fw, {1, block_});
      array_out<T, 3> D(xa.fw, {1, block_, block_});
      array_out<T, 1> remaining(xa.fw, {remaining_});
      std::vector<isqrt_report> report(1);
      on_layer<T>(fn, *this, [&](auto& l) {
        l.train_step(policy(), x, y.view(), {mean.view(), D.view(), remaining_ ? remaining.view() : vector_view<T>{}},
                     report_view(report));
      });
      return result_type("ChannelStep")(y.result(), mean.result(), D.result(),
                                        remaining_ ? remaining.result() : nb::none(), nb::cast(report[0]));
    });
  }

  nb::object eval(nb::handle x_obj, nb::handle out) {
    constexpr const char* fn = "eval";
    const array_in xa = input(fn, "x", x_obj);
    return dispatch(xa, [&](auto t) -> nb::object {
      using T = decltype(t);
      const image_view<const T> x = view_of<T, 4>(fn, "x", xa, "(N, C, H, W)");
      auto y = output<T, 4>(fn, "out", out, xa.fw, x.shape);
      on_layer<T>(fn, *this, [&](auto& l) { l.eval(policy(), x, y.view()); });
      return y.result();
    });
  }

  nb::object backward(nb::handle x_obj, nb::handle mean_obj, nb::handle D_obj, nb::handle rem_obj, nb::handle dy_obj,
                      const std::optional<step_diagnostic>& step, statistics_gradient mode) {
    constexpr const char* fn = "backward";
    const array_in xa = input(fn, "x", x_obj), ma = input(fn, "mean", mean_obj), Da = input(fn, "D", D_obj),
                   dya = input(fn, "dy", dy_obj);
    std::optional<array_in> ra;
    return dispatch(xa, [&](auto t) -> nb::object {
      using T = decltype(t);
      const image_view<const T> x = view_of<T, 4>(fn, "x", xa, "(N, C, H, W)");
      const image_view<const T> dy = view_of<T, 4>(fn, "dy", dya, "(N, C, H, W)");
      const channel_statistics_view<const T> used{view_of<T, 2>(fn, "mean", ma, "(1, B)"),
                                                  view_of<T, 3>(fn, "D", Da, "(1, B, B)"),
                                                  optional_view<T, 1>(fn, "remaining", rem_obj, "(2,)", ra)};
      array_out<T, 4> dx(xa.fw, x.shape);
      std::vector<isqrt_report> report(1);
      on_layer<T>(fn, *this, [&](auto& l) {
        l.backward(policy(), x, used, step ? *step : l.diagnostic(), dy, dx.view(), report_view(report), mode);
      });
      return nb::make_tuple(dx.result(), nb::cast(report[0]));
    });
  }

  void attach_state(nb::handle mean, nb::handle D, nb::handle counters, nb::handle cov, nb::handle remaining) {
    constexpr const char* fn = "attach_state";
    std::visit(
        [&](auto& l) {
          using T = element_t<std::decay_t<decltype(l)>>;
          const attached_state<T> a = attach_args<T>(fn, 1, block_, mean, D, counters, cov, remaining);
          compute(mutex(), [&] { l.attach_state(a.view()); });
        },
        layer());
    keep(kept(mean, D, counters, cov, remaining));
  }

  index_t remaining() const { return remaining_; }

 private:
  index_t block_;
  index_t remaining_;  ///< 2 when some channels are not whitened (their mean and variance), else 0
};

void bind_channel(nb::module_& m) {
  using O = channel_object;
  nb::class_<O>(m, "ChannelDeconvLayer",
                "The channel layer: whitens the first C - C mod B channels in groups of B with one shared (B, B) D, "
                "and standardises the rest with one mean and variance (the reference ChannelDeconv)")
      .def(nb::init<index_t, const channel_deconv_config&, const std::optional<layer_options>&, const std::string&>(),
           arg("channels"), arg("config") = channel_deconv_config{}, arg("options") = nb::none(), nb::kw_only(),
           arg("dtype") = "float32")
      .def("train_step", &O::train_step, arg("x"), nb::kw_only(), arg("out") = nb::none(),
           "Training forward of x (N, C, H, W): ChannelStep(y, mean (1, B), D (1, B, B), remaining (2,) or None, "
           "report); out= (x's shape) receives y and may be x itself")
      .def("eval", &O::eval, arg("x"), nb::kw_only(), arg("out") = nb::none(),
           "evaluation forward with the running statistics")
      .def("backward", &O::backward, arg("x"), arg("mean"), arg("D"), arg("remaining").none(), arg("dy"),
           nb::kw_only(), arg("step") = nb::none(), arg("mode") = statistics_gradient::full,
           "(dL/dx, report) of a training step from its ChannelStep's mean, D, remaining and dy = dL/dy")
      .def("running", [](O& o) { return running(o); }, "(mean (1, B), D (1, B, B)): the running statistics, copied")
      .def_prop_ro("running_remaining",
                   [](O& o) {
                     return o.locked([](auto& l) {
                       return std::pair(double(l.running_remaining_mean()), double(l.running_remaining_var()));
                     });
                   },
                   "(mean, variance) of the unwhitened channels (0 and 1 when every channel is whitened)")
      .def("attach_state", &O::attach_state, arg("mean"), arg("D"), arg("counters"), arg("cov") = nb::none(),
           arg("remaining") = nb::none(),
           "as ConvDeconvLayer.attach_state, with mean (1, B), D (1, B, B) and remaining (2,) when C mod B != 0")
      .def("state", [](O& o) { return o.locked([](auto& l) { return to_bytes(l.state()); }); })
      .def("load_state",
           [](O& o, nb::bytes b) { o.locked([v = from_bytes(b)](auto& l) { l.load_state(v); }); }, arg("state"))
      .def_prop_ro("dtype", &O::dtype)
      .def_prop_ro("has_remaining", [](const O& o) { return o.remaining() != 0; })
      .def_prop_ro("steps", [](O& o) { return o.locked([](auto& l) { return l.steps(); }); })
      .def_prop_ro("diagnostic", [](O& o) { return o.locked([](auto& l) { return l.diagnostic(); }); });
}

}  // namespace

void bind_layers(nb::module_& m) {
  bind_diagnostic(m);
  bind_folding<4, conv_deconv_config>(m, "ConvDeconvLayer",
                                      "A conv layer's deconvolution state (running statistics, counters, checkpoint)",
                                      "in_channels");
  bind_folding<2, linear_deconv_config>(m, "LinearDeconvLayer", "A linear layer's deconvolution state", "in_features");
  bind_channel(m);
}

}  // namespace netdeconv::python
