// SPDX-License-Identifier: MIT
// XLA FFI handlers (the headers that ship in the jaxlib wheel): whiten and the conv and linear
// statistics steps as custom calls, so that netdeconv.jax can run them inside jax.jit. XLA hands
// dense row-major buffers; the outputs are XLA's, written here. Failures of the data are statuses
// (an int32 per statistic: IsqrtStatus), bad shapes or attributes an XLA error (raised by JAX).
#include <xla/ffi/api/ffi.h>

#include <cstdint>
#include <exception>
#include <string>

#include "bindings.hpp"

namespace netdeconv::python {

namespace {

namespace ffi = xla::ffi;

template <class T, int R, ffi::DataType DT>
tensor_view<T, R> dense(const ffi::Buffer<DT>& b, const char* name) {
  const auto dims = b.dimensions();
  if (dims.size() != std::size_t(R))
    throw std::invalid_argument(std::string("netdeconv.jax: ") + name + " must have " + std::to_string(R) +
                                " dimensions, got " + std::to_string(dims.size()));
  tensor_view<T, R> v;
  v.data = reinterpret_cast<T*>(b.untyped_data());
  index_t stride = 1;
  for (int i = R - 1; i >= 0; --i) {
    v.shape[i] = index_t(dims[std::size_t(i)]);
    v.stride[i] = stride;
    stride *= v.shape[i];
  }
  return v;
}

/// The IsqrtOptions of the attributes isqrt_method (0 Newton-Schulz, 1 exact), isqrt_iterations,
/// isqrt_tolerance (0: a fixed number of steps).
isqrt_options isqrt_of(std::int64_t method, std::int64_t iterations, double tolerance) {
  if (method == 1) return isqrt_options::exact();
  return tolerance > 0 ? isqrt_options::converged(tolerance, int(iterations)) : isqrt_options::fixed(int(iterations));
}

void write_statuses(const std::vector<isqrt_report>& reports, ffi::ResultBuffer<ffi::S32>& status) {
  if (status->element_count() != reports.size())
    throw std::invalid_argument("netdeconv.jax: status must have one entry per statistic");
  for (std::size_t s = 0; s < reports.size(); ++s) status->typed_data()[s] = std::int32_t(reports[s].status);
}

/// Runs f, turning the library's exceptions into XLA errors.
template <class F>
ffi::Error guarded(F&& f) {
  try {
    f();
    return ffi::Error::Success();
  } catch (const std::invalid_argument& e) {
    return ffi::Error::InvalidArgument(e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(e.what());
  }
}

template <ffi::DataType DT>
ffi::Error whiten_ffi(ffi::Buffer<DT> x, ffi::ResultBuffer<DT> data, ffi::ResultBuffer<DT> mean, ffi::ResultBuffer<DT> D,
                      ffi::ResultBuffer<ffi::S32> status, double eps, std::int64_t block, std::int64_t isqrt_method,
                      std::int64_t isqrt_iterations, double isqrt_tolerance) {
  using T = ffi::NativeType<DT>;
  return guarded([&] {
    const matrix_view<const T> X = dense<const T, 2>(x, "x");
    const index_t F = X.shape[1];
    NETDECONV_REQUIRE(F >= 1 && block >= 0, "netdeconv.jax.whiten", "x has ", F, " features, block ", block);
    const block_plan plan = make_block_plan(block_layout::independent, F, 1, block == 0 ? F : block);
    const estimated_statistics<T> e =
        estimate_statistics<T>(policy(), matrix_rows<T>(X), plan, eps, isqrt_of(isqrt_method, isqrt_iterations, isqrt_tolerance));
    apply_whitening(policy(), e.statistics, X, dense<T, 2>(*data, "data"), false);
    detail::store_statistics(e.statistics, dense<T, 2>(*mean, "mean"), dense<T, 3>(*D, "D"));
    write_statuses(e.reports, status);
  });
}

template <ffi::DataType DT>
ffi::Error conv_step_ffi(ffi::Buffer<DT> x, ffi::Buffer<DT> w, ffi::Buffer<DT> b, ffi::ResultBuffer<DT> W,
                         ffi::ResultBuffer<DT> B, ffi::ResultBuffer<DT> mean, ffi::ResultBuffer<DT> D,
                         ffi::ResultBuffer<ffi::S32> status, std::int64_t kernel_h, std::int64_t kernel_w,
                         std::int64_t stride_h, std::int64_t stride_w, std::int64_t pad_h, std::int64_t pad_w,
                         std::int64_t dilation_h, std::int64_t dilation_w, std::int64_t groups, std::int64_t layout,
                         std::int64_t block, std::int64_t sampling_stride, std::int64_t has_bias, double eps,
                         std::int64_t isqrt_method, std::int64_t isqrt_iterations, double isqrt_tolerance) {
  using T = ffi::NativeType<DT>;
  return guarded([&] {
    const conv_deconv_config config{{kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w},
                                    groups,
                                    static_cast<block_layout>(layout),
                                    block,
                                    sampling_stride,
                                    eps,
                                    isqrt_of(isqrt_method, isqrt_iterations, isqrt_tolerance)};
    const index_t S = index_t(status->element_count());
    std::vector<isqrt_report> reports(static_cast<std::size_t>(S));
    netdeconv::conv_statistics_step(
        policy(), dense<const T, 4>(x, "x"), dense<const T, 4>(w, "weight"),
        has_bias ? dense<const T, 1>(b, "bias") : vector_view<const T>{}, config,
        statistics_step_outputs<T, 4>{dense<T, 2>(*mean, "mean"), dense<T, 3>(*D, "D"), dense<T, 4>(*W, "weight"),
                                      dense<T, 1>(*B, "bias"), report_view(reports)});
    write_statuses(reports, status);
  });
}

template <ffi::DataType DT>
ffi::Error linear_step_ffi(ffi::Buffer<DT> x, ffi::Buffer<DT> w, ffi::Buffer<DT> b, ffi::ResultBuffer<DT> W,
                           ffi::ResultBuffer<DT> B, ffi::ResultBuffer<DT> mean, ffi::ResultBuffer<DT> D,
                           ffi::ResultBuffer<ffi::S32> status, std::int64_t layout, std::int64_t block,
                           std::int64_t has_bias, double eps, std::int64_t isqrt_method, std::int64_t isqrt_iterations,
                           double isqrt_tolerance) {
  using T = ffi::NativeType<DT>;
  return guarded([&] {
    const linear_deconv_config config{static_cast<block_layout>(layout), block, eps,
                                      isqrt_of(isqrt_method, isqrt_iterations, isqrt_tolerance)};
    std::vector<isqrt_report> reports(static_cast<std::size_t>(status->element_count()));
    netdeconv::linear_statistics_step(
        policy(), dense<const T, 2>(x, "x"), dense<const T, 2>(w, "weight"),
        has_bias ? dense<const T, 1>(b, "bias") : vector_view<const T>{}, config,
        statistics_step_outputs<T, 2>{dense<T, 2>(*mean, "mean"), dense<T, 3>(*D, "D"), dense<T, 2>(*W, "weight"),
                                      dense<T, 1>(*B, "bias"), report_view(reports)});
    write_statuses(reports, status);
  });
}

}  // namespace

#define NETDECONV_WHITEN_BINDING(DT)                                                                          \
  ffi::Ffi::Bind()                                                                                            \
      .Arg<ffi::Buffer<DT>>()                                                                                 \
      .Ret<ffi::Buffer<DT>>()                                                                                 \
      .Ret<ffi::Buffer<DT>>()                                                                                 \
      .Ret<ffi::Buffer<DT>>()                                                                                 \
      .Ret<ffi::Buffer<ffi::S32>>()                                                                           \
      .Attr<double>("eps")                                                                                    \
      .Attr<std::int64_t>("block")                                                                            \
      .Attr<std::int64_t>("isqrt_method")                                                                     \
      .Attr<std::int64_t>("isqrt_iterations")                                                                 \
      .Attr<double>("isqrt_tolerance")

#define NETDECONV_STEP_RESULTS(DT)                                                                            \
  .Arg<ffi::Buffer<DT>>()                                                                                     \
      .Arg<ffi::Buffer<DT>>()                                                                                 \
      .Arg<ffi::Buffer<DT>>()                                                                                 \
      .Ret<ffi::Buffer<DT>>()                                                                                 \
      .Ret<ffi::Buffer<DT>>()                                                                                 \
      .Ret<ffi::Buffer<DT>>()                                                                                 \
      .Ret<ffi::Buffer<DT>>()                                                                                 \
      .Ret<ffi::Buffer<ffi::S32>>()

#define NETDECONV_CONV_BINDING(DT)                                                                            \
  ffi::Ffi::Bind() NETDECONV_STEP_RESULTS(DT)                                                                 \
      .Attr<std::int64_t>("kernel_h")                                                                         \
      .Attr<std::int64_t>("kernel_w")                                                                         \
      .Attr<std::int64_t>("stride_h")                                                                         \
      .Attr<std::int64_t>("stride_w")                                                                         \
      .Attr<std::int64_t>("pad_h")                                                                            \
      .Attr<std::int64_t>("pad_w")                                                                            \
      .Attr<std::int64_t>("dilation_h")                                                                       \
      .Attr<std::int64_t>("dilation_w")                                                                       \
      .Attr<std::int64_t>("groups")                                                                           \
      .Attr<std::int64_t>("layout")                                                                           \
      .Attr<std::int64_t>("block")                                                                            \
      .Attr<std::int64_t>("sampling_stride")                                                                  \
      .Attr<std::int64_t>("has_bias")                                                                         \
      .Attr<double>("eps")                                                                                    \
      .Attr<std::int64_t>("isqrt_method")                                                                     \
      .Attr<std::int64_t>("isqrt_iterations")                                                                 \
      .Attr<double>("isqrt_tolerance")

#define NETDECONV_LINEAR_BINDING(DT)                                                                          \
  ffi::Ffi::Bind() NETDECONV_STEP_RESULTS(DT)                                                                 \
      .Attr<std::int64_t>("layout")                                                                           \
      .Attr<std::int64_t>("block")                                                                            \
      .Attr<std::int64_t>("has_bias")                                                                         \
      .Attr<double>("eps")                                                                                    \
      .Attr<std::int64_t>("isqrt_method")                                                                     \
      .Attr<std::int64_t>("isqrt_iterations")                                                                 \
      .Attr<double>("isqrt_tolerance")

XLA_FFI_DEFINE_HANDLER(whiten_f32, whiten_ffi<ffi::F32>, NETDECONV_WHITEN_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER(whiten_f64, whiten_ffi<ffi::F64>, NETDECONV_WHITEN_BINDING(ffi::F64));
XLA_FFI_DEFINE_HANDLER(conv_step_f32, conv_step_ffi<ffi::F32>, NETDECONV_CONV_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER(conv_step_f64, conv_step_ffi<ffi::F64>, NETDECONV_CONV_BINDING(ffi::F64));
XLA_FFI_DEFINE_HANDLER(linear_step_f32, linear_step_ffi<ffi::F32>, NETDECONV_LINEAR_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER(linear_step_f64, linear_step_ffi<ffi::F64>, NETDECONV_LINEAR_BINDING(ffi::F64));

void bind_jax(nb::module_& m) {
  m.def(
      "_jax_targets",
      [] {
        nb::dict targets;
        const auto put = [&](const char* name, XLA_FFI_Handler* h) {
          targets[name] = nb::capsule(reinterpret_cast<void*>(h));
        };
        put("netdeconv_whiten_f32", whiten_f32);
        put("netdeconv_whiten_f64", whiten_f64);
        put("netdeconv_conv_step_f32", conv_step_f32);
        put("netdeconv_conv_step_f64", conv_step_f64);
        put("netdeconv_linear_step_f32", linear_step_f32);
        put("netdeconv_linear_step_f64", linear_step_f64);
        return targets;
      },
      "the XLA FFI handlers of netdeconv.jax: {target name: PyCapsule}");
}

}  // namespace netdeconv::python
