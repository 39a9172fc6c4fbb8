// SPDX-License-Identifier: MIT
#pragma once
// Device views: pointer + shape + strides in elements over device memory (a framework's device
// tensor, read in place). The type differs from the host tensor_view, so a device pointer cannot
// reach a CPU kernel by mistake; the logical axes are those of the CPU views.
//
//   auto x = netdeconv::device_nchw<const float>(ptr, N, C, H, W);   // PyTorch: x.data_ptr()
//   auto y = netdeconv::device_nhwc<const float>(ptr, N, H, W, C);   // channels-last memory
//   auto v = netdeconv::as_device(netdeconv::nchw(ptr, N, C, H, W)); // any host-typed view whose pointer is on the device

#include <type_traits>

#include <netdeconv/error.hpp>

#include "index_math.hpp"

namespace netdeconv {

using cuda::device_view;
template <class T> using device_vector_view = device_view<T, 1>;
template <class T> using device_matrix_view = device_view<T, 2>;
/// Axes (N, C, H, W) for images, (Cout, C/groups, kh, kw) for conv weights.
template <class T> using device_image_view = device_view<T, 4>;

template <class T>
device_image_view<T> device_nchw(T* data, cuda::index_t n, cuda::index_t c, cuda::index_t h, cuda::index_t w) {
  return {data, {n, c, h, w}, {c * h * w, h * w, w, 1}};
}

template <class T>
device_image_view<T> device_nhwc(T* data, cuda::index_t n, cuda::index_t h, cuda::index_t w, cuda::index_t c) {
  return {data, {n, c, h, w}, {h * w * c, 1, w * c, c}};
}

template <class T>
device_matrix_view<T> device_row_major(T* data, cuda::index_t rows, cuda::index_t cols) {
  return {data, {rows, cols}, {cols, 1}};
}

template <class T>
device_vector_view<T> device_contiguous(T* data, cuda::index_t n) {
  return {data, {n}, {1}};
}

/// Device view with the pointer, shape and strides of any view type that has data, shape[] and
/// stride[] (netdeconv::tensor_view included): the caller asserts that the pointer is device memory.
template <class V>
auto as_device(const V& v) {
  using T = std::remove_pointer_t<decltype(v.data)>;
  constexpr int R = static_cast<int>(sizeof(v.shape) / sizeof(v.shape[0]));
  device_view<T, R> d;
  d.data = v.data;
  for (int a = 0; a < R; ++a) {
    d.shape[a] = v.shape[a];
    d.stride[a] = v.stride[a];
  }
  return d;
}

namespace cuda::detail {

template <class T, int R>
void check_device_view(const char* function, const char* name, const device_view<T, R>& v) {
  long long n = 1;
  for (int a = 0; a < R; ++a) {
    NETDECONV_REQUIRE(v.shape[a] >= 0, function, name, " has negative extent ", v.shape[a], " on axis ", a);
    n = ::netdeconv::detail::checked_mul(function, "element count", n, v.shape[a]);
  }
  NETDECONV_REQUIRE(n == 0 || v.data != nullptr, function, name, " is null but has ", n, " elements");
}

}  // namespace cuda::detail
}  // namespace netdeconv
