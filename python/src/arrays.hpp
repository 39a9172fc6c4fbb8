// SPDX-License-Identifier: MIT
// Arrays from Python as netdeconv views, and results back as arrays of the caller's framework.
//
// Inputs: any object with __dlpack__ (NumPy, PyTorch, JAX, CuPy) or the buffer protocol, float32 or
// float64, any strides; read in place (no copy) and never written (taken as const: JAX's and old
// producers' DLPack do not flag read-only memory). Outputs: new arrays allocated here (64-byte
// aligned, so that every framework imports them without a copy) and handed to the framework of the
// call's first array after the computation, or caller arrays (`out=`) written in place.
#pragma once

#include <netdeconv/netdeconv.hpp>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <array>
#include <cstdlib>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

namespace netdeconv::python {

namespace nb = nanobind;

enum class framework { numpy, torch, jax, cupy, other };

/// "float32", "int64", ...: the DLPack dtype's NumPy name.
std::string dtype_name(nb::dlpack::dtype d);

template <class... Parts>
[[noreturn]] void type_error(const char* fn, const Parts&... parts) {
  std::ostringstream os;
  os << fn << ": ";
  (os << ... << parts);
  throw nb::type_error(os.str().c_str());
}

template <class... Parts>
[[noreturn]] void value_error(const char* fn, const Parts&... parts) {
  std::ostringstream os;
  os << fn << ": ";
  (os << ... << parts);
  throw nb::value_error(os.str().c_str());
}

std::string python_type_name(nb::handle obj);
framework framework_of(nb::handle obj);

/// An input array, read in place: the DLPack tensor nanobind imported, and the caller's framework.
struct array_in {
  nb::ndarray<nb::ro> array;
  framework fw = framework::other;

  bool is_float() const { return array.dtype() == nb::dtype<float>(); }
  std::string shape() const;
};

/// `obj` as an input array: TypeError for what is not an array, for a device other than the CPU
/// and for a dtype other than float32/float64 (int64 with `integer`).
array_in input(const char* fn, const char* name, nb::handle obj, bool integer = false);

/// The views over an input, checked for rank (ValueError naming `axes`, e.g. "(N, C, H, W)").
template <class T, int R>
tensor_view<const T, R> view_of(const char* fn, const char* name, const array_in& a, const char* axes) {
  if (a.array.dtype() != nb::dtype<T>())
    type_error(fn, name, " has dtype ", dtype_name(a.array.dtype()), ", expected ", dtype_name(nb::dtype<T>()),
               std::is_floating_point_v<T> ? " (a call's arrays share the dtype of its first)" : "");
  if (a.array.ndim() != std::size_t(R))
    value_error(fn, name, " must have ", R, " dimensions ", axes, ", got ", a.array.ndim(), " with shape ", a.shape());
  tensor_view<const T, R> v;
  v.data = static_cast<const T*>(a.array.data());
  for (int i = 0; i < R; ++i) {
    v.shape[i] = index_t(a.array.shape(std::size_t(i)));
    v.stride[i] = a.array.stride(std::size_t(i));
  }
  return v;
}

/// An optional input (None: an empty view).
template <class T, int R>
tensor_view<const T, R> optional_view(const char* fn, const char* name, nb::handle obj, const char* axes,
                                      std::optional<array_in>& keep) {
  if (obj.is_none()) return {};
  keep = input(fn, name, obj);
  return view_of<T, R>(fn, name, *keep, axes);
}

/// An output: new memory in the caller's framework, or a caller array written in place.
template <class T, int R>
class array_out {
 public:
  /// New contiguous (row-major) memory of `shape`, handed to `fw` by result().
  array_out(framework fw, const index_array<R>& shape) : fw_(fw) {
    index_t n = 1;  // the bytes, checked: shapes come from the caller's arrays and arguments
    for (int i = 0; i < R; ++i) n = detail::checked_mul("array_out", "output elements", n, shape[i]);
    const index_t padded = detail::checked_add("array_out", "output bytes",
                                               detail::checked_mul("array_out", "output bytes", n, index_t(sizeof(T))), 63);
    const std::size_t bytes = std::size_t(padded) / 64 * 64;
    memory_.reset(static_cast<T*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes)));
    if (!memory_) throw std::bad_alloc();
    view_.data = memory_.get();
    view_.shape = shape;
    index_t stride = 1;
    for (int i = R - 1; i >= 0; --i) {
      view_.stride[i] = stride;
      stride *= shape[i];
    }
  }

  /// The caller's array `obj`, which must have exactly `shape` and dtype T, be writable and
  /// on the CPU (ValueError / TypeError otherwise).
  array_out(const char* fn, const char* name, nb::handle obj, const index_array<R>& shape);

  const tensor_view<T, R>& view() const { return view_; }
  /// Elements of new memory (contiguous).
  std::size_t size() const {
    std::size_t n = 1;
    for (int i = 0; i < R; ++i) n *= std::size_t(view_.shape[i]);
    return n;
  }

  /// The array to return: the new one as the framework's array (after the computation), or the
  /// caller's own object.
  nb::object result();

 private:
  struct free_memory {
    void operator()(T* p) const { std::free(p); }
  };
  framework fw_ = framework::other;
  std::unique_ptr<T, free_memory> memory_;
  nb::object caller_;
  nb::ndarray<> keep_;
  tensor_view<T, R> view_;
};

/// A new output when `obj` is None, else the caller's array.
template <class T, int R>
array_out<T, R> output(const char* fn, const char* name, nb::handle obj, framework fw, const index_array<R>& shape) {
  return obj.is_none() ? array_out<T, R>(fw, shape) : array_out<T, R>(fn, name, obj, shape);
}

template <class T, int R>
array_out<T, R>::array_out(const char* fn, const char* name, nb::handle obj, const index_array<R>& shape) {
  const framework fw = framework_of(obj);
  if (fw == framework::jax) type_error(fn, name, " is a JAX array, which is immutable: pass out=None");
  if (fw == framework::torch && nb::cast<bool>(obj.attr("requires_grad")))
    value_error(fn, name, " requires grad; write into a tensor that does not (torch.no_grad() or .detach())");
  const array_in ro = input(fn, name, obj, std::is_integral_v<T>);
  if (!nb::try_cast(obj, keep_, false)) value_error(fn, name, " is read-only");
  if (ro.array.dtype() != nb::dtype<T>())
    type_error(fn, name, " has dtype ", dtype_name(ro.array.dtype()), ", expected ", dtype_name(nb::dtype<T>()));
  bool same = keep_.ndim() == std::size_t(R);
  for (int i = 0; same && i < R; ++i) same = index_t(keep_.shape(std::size_t(i))) == shape[i];
  if (!same) {
    std::ostringstream want;
    want << "(";
    for (int i = 0; i < R; ++i) want << (i ? ", " : "") << shape[i];
    want << (R == 1 ? ",)" : ")");
    value_error(fn, name, " must have shape ", want.str(), ", got ", ro.shape());
  }
  caller_ = nb::borrow(obj);
  view_.data = static_cast<T*>(keep_.data());
  for (int i = 0; i < R; ++i) {
    view_.shape[i] = shape[i];
    view_.stride[i] = keep_.stride(std::size_t(i));
  }
}

template <class Framework, class T, int R>
nb::object export_array(T* data, const index_array<R>& shape, nb::handle owner) {
  std::array<std::size_t, R> sizes{};
  for (int i = 0; i < R; ++i) sizes[std::size_t(i)] = std::size_t(shape[i]);
  return nb::ndarray<Framework, T>(data, R, sizes.data(), owner).cast();
}

template <class T, int R>
nb::object array_out<T, R>::result() {
  if (caller_.is_valid()) return caller_;
  T* data = memory_.release();
  nb::capsule owner(data, [](void* p) noexcept { std::free(p); });
  switch (fw_) {
    case framework::torch: return export_array<nb::pytorch>(data, view_.shape, owner);
    case framework::jax: return export_array<nb::jax>(data, view_.shape, owner);
    case framework::cupy: return export_array<nb::cupy>(data, view_.shape, owner);
    default: return export_array<nb::numpy>(data, view_.shape, owner);
  }
}

/// The execution policy of every call: xsimd kernels + OpenMP on set_num_threads() threads.
simd_policy policy();

}  // namespace netdeconv::python
