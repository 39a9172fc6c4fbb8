// SPDX-License-Identifier: MIT
#pragma once
// Non-owning strided views over caller memory (pointer + shape + strides in elements), so that a
// tensor of any framework (PyTorch, JAX, NumPy via DLPack; Eigen) is read in place, without copies.
//
//   image_view<const float> x = nchw(ptr, N, C, H, W);    // logical axes are always (N, C, H, W)
//   image_view<const float> y = nhwc(ptr, N, H, W, C);    // channels-last memory, same logical axes
//   auto v = strided<const float, 4>(ptr, t.sizes(), t.strides());   // any framework's tensor
// Eigen-free (host and device code); the Eigen adapters are in eigen.hpp.

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <type_traits>
#include <utility>

#include "config.hpp"
#include "error.hpp"

namespace netdeconv {

/// R extents or strides: a plain aggregate (no std::array), so that device code can index it.
template <int R>
struct index_array {
  index_t values[R];

  NETDECONV_HOST_DEVICE constexpr index_t& operator[](int axis) { return values[axis]; }
  NETDECONV_HOST_DEVICE constexpr const index_t& operator[](int axis) const { return values[axis]; }
  static constexpr std::size_t size() { return std::size_t(R); }
  constexpr const index_t* begin() const { return values; }
  constexpr const index_t* end() const { return values + R; }
  friend constexpr bool operator==(const index_array&, const index_array&) = default;
};

/// Rank-R strided view. `shape[i] >= 0`; strides may be any value (including 0 or negative).
/// An empty view (`data == nullptr`, all extents 0) stands for "argument not given" where a
/// function documents it (e.g. an absent bias).
template <class T, int Rank>
struct tensor_view {
  static_assert(Rank >= 1, "tensor_view needs rank >= 1");
  using value_type = T;
  static constexpr int rank = Rank;

  T* data = nullptr;
  index_array<Rank> shape{};
  index_array<Rank> stride{};

  template <class... I>
  NETDECONV_HOST_DEVICE T& operator()(I... i) const {
    static_assert(sizeof...(I) == Rank, "wrong number of indices");
    const index_t idx[Rank] = {static_cast<index_t>(i)...};
    index_t offset = 0;
    for (int a = 0; a < Rank; ++a) offset += idx[a] * stride[a];
    return data[offset];
  }

  NETDECONV_HOST_DEVICE index_t extent(int axis) const { return shape[axis]; }
  NETDECONV_HOST_DEVICE bool empty() const { return data == nullptr; }

  /// Number of elements, checked against index_t overflow.
  index_t size() const {
    index_t n = 1;
    for (int a = 0; a < Rank; ++a) n = detail::checked_mul("tensor_view::size", "element count", n, shape[a]);
    return n;
  }

  /// Views of T convert to views of const T.
  template <class U = T, class = std::enable_if_t<!std::is_const_v<U>>>
  NETDECONV_HOST_DEVICE operator tensor_view<const U, Rank>() const {
    return {data, shape, stride};
  }
};

template <class T> using vector_view = tensor_view<T, 1>;
/// (rows, cols).
template <class T> using matrix_view = tensor_view<T, 2>;
/// Logical axes (N, C, H, W) for images, (Cout, C/groups, kh, kw) for conv weights.
template <class T> using image_view = tensor_view<T, 4>;

/// Contiguous NCHW tensor of shape (n, c, h, w).
template <class T>
image_view<T> nchw(T* data, index_t n, index_t c, index_t h, index_t w) {
  constexpr const char* fn = "nchw";
  return {data, {n, c, h, w}, {detail::checked_product(fn, "stride C*H*W", c, h, w), detail::checked_mul(fn, "stride H*W", h, w), w, 1}};
}

/// Contiguous NHWC (channels-last) tensor of memory shape (n, h, w, c), viewed with axes (N, C, H, W).
template <class T>
image_view<T> nhwc(T* data, index_t n, index_t h, index_t w, index_t c) {
  constexpr const char* fn = "nhwc";
  return {data, {n, c, h, w}, {detail::checked_product(fn, "stride H*W*C", h, w, c), 1, detail::checked_mul(fn, "stride W*C", w, c), c}};
}

/// View of rank R over `data` with the extents and strides (in elements) of any two indexable
/// sequences of R integers, such as a PyTorch tensor's t.sizes() and t.strides(): the way to take a
/// framework's tensor whatever its memory layout (channels_last, sliced, transposed).
///   auto xv = netdeconv::strided<const float, 4>(x.data_ptr<float>(), x.sizes(), x.strides());
template <class T, int R, class Sizes, class Strides>
tensor_view<T, R> strided(T* data, const Sizes& sizes, const Strides& strides) {
  NETDECONV_REQUIRE(std::size(sizes) == std::size_t(R) && std::size(strides) == std::size_t(R), "strided", "a rank-", R,
                    " view needs ", R, " sizes and strides, got ", std::size(sizes), " and ", std::size(strides));
  tensor_view<T, R> v{data, {}, {}};
  for (int a = 0; a < R; ++a) {
    v.shape[a] = static_cast<index_t>(sizes[a]);
    v.stride[a] = static_cast<index_t>(strides[a]);
  }
  return v;
}

/// Contiguous row-major matrix.
template <class T>
matrix_view<T> row_major(T* data, index_t rows, index_t cols) {
  return {data, {rows, cols}, {cols, 1}};
}

/// Contiguous vector.
template <class T>
vector_view<T> contiguous(T* data, index_t n) {
  return {data, {n}, {1}};
}

namespace detail {

/// Validates that no extent is negative, that the element count and the span of offsets
/// sum_a (shape[a] - 1) |stride[a]| fit index_t (so no element's offset overflows), and that data
/// is present when there are elements. `name` is the argument's name in the message.
template <class T, int R>
void check_view(const char* function, const char* name, const tensor_view<T, R>& v) {
  for (int a = 0; a < R; ++a)
    NETDECONV_REQUIRE(v.shape[a] >= 0, function, name, " has negative extent ", v.shape[a], " on axis ", a);
  const index_t n = v.size();
  NETDECONV_REQUIRE(n == 0 || v.data != nullptr, function, name, " is null but has ", n, " elements");
  if (n == 0) return;
  index_t span = 0;
  for (int a = 0; a < R; ++a) {
    NETDECONV_REQUIRE(v.stride[a] > std::numeric_limits<index_t>::min(), function, name, " has stride ", v.stride[a],
                      " on axis ", a);
    span = checked_add(function, "offset span of the view", span,
                       checked_mul(function, "offset span of the view", v.shape[a] - 1, v.stride[a] < 0 ? -v.stride[a] : v.stride[a]));
  }
}

/// An output view: check_view, and no two of its elements share memory. Sufficient test: with
/// the axes of extent > 1 ordered by |stride|, each |stride| exceeds the offset span of the axes
/// before it (true of every contiguous, permuted, channels-last or sliced layout).
template <class T, int R>
void check_output_view(const char* function, const char* name, const tensor_view<T, R>& v) {
  check_view(function, name, v);
  if (v.size() == 0) return;
  if constexpr (R == 1) {  // (the general loop trips GCC 12's -Warray-bounds for R = 1)
    NETDECONV_REQUIRE(v.shape[0] <= 1 || v.stride[0] != 0, function, name, " has elements that share memory (stride 0)");
    return;
  }
  const auto magnitude = [&](int a) { return v.stride[a] < 0 ? -v.stride[a] : v.stride[a]; };
  for (int a = 0; a < R; ++a) {
    if (v.shape[a] <= 1) continue;
    index_t inner = 0;  // span of the axes ordered before a (ties by index); fits index_t: check_view
    for (int b = 0; b < R; ++b)
      if (b != a && v.shape[b] > 1 && (magnitude(b) < magnitude(a) || (magnitude(b) == magnitude(a) && b < a)))
        inner += (v.shape[b] - 1) * magnitude(b);
    NETDECONV_REQUIRE(magnitude(a) > inner, function, name, " has elements that share memory (stride ", v.stride[a],
                      " on axis ", a, " does not clear the span ", inner, " of the axes inside it)");
  }
}

/// Byte addresses [first, last) that a non-empty view touches.
template <class T, int R>
std::pair<std::uintptr_t, std::uintptr_t> address_range(const tensor_view<T, R>& v) {
  index_t lo = 0, hi = 0;
  for (int a = 0; a < R; ++a) (v.stride[a] < 0 ? lo : hi) += (v.shape[a] - 1) * v.stride[a];
  const auto base = reinterpret_cast<std::uintptr_t>(v.data);
  return {base + std::uintptr_t(lo) * sizeof(T), base + (std::uintptr_t(hi) + 1) * sizeof(T)};  // hi may be 2^63 - 1
}

/// Throws unless output `out` and input `in` (both checked views) touch disjoint memory, or, with
/// `in_place`, are the same view (an in-place call that the function documents as safe).
template <class A, int RA, class B, int RB>
void check_disjoint(const char* function, const char* out_name, const tensor_view<A, RA>& out, const char* in_name,
                    const tensor_view<B, RB>& in, bool in_place = false) {
  if (out.size() == 0 || in.size() == 0) return;
  if constexpr (RA == RB && std::is_same_v<std::remove_const_t<A>, std::remove_const_t<B>>)
    if (in_place && static_cast<const void*>(out.data) == static_cast<const void*>(in.data) && out.shape == in.shape &&
        out.stride == in.stride)
      return;
  const auto o = address_range(out), i = address_range(in);
  NETDECONV_REQUIRE(o.second <= i.first || i.second <= o.first, function, out_name, " overlaps ", in_name,
                    in_place ? " (only an exact in-place call is allowed)" : " (outputs must not share memory with inputs)");
}

}  // namespace detail

}  // namespace netdeconv
