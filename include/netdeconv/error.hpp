// SPDX-License-Identifier: MIT
#pragma once
// Index type, argument errors and overflow-checked size arithmetic shared by every header.

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace netdeconv {

/// Signed 64-bit index used for every size, stride and offset.
using index_t = std::int64_t;

/// Thrown for invalid arguments; the message names the argument and its value.
class invalid_argument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

template <class... Parts>
[[noreturn]] void fail(const char* function, const Parts&... parts) {
  std::ostringstream message;
  message << "netdeconv::" << function << ": ";
  (message << ... << parts);
  throw invalid_argument(message.str());
}

/// a * b, throwing when the product leaves index_t (`what` names the quantity).
inline index_t checked_mul(const char* function, const char* what, index_t a, index_t b) {
  index_t product = 0;
  if (__builtin_mul_overflow(a, b, &product))
    fail(function, what, " = ", a, " * ", b, " overflows a 64-bit index");
  return product;
}

/// a + b, throwing when the sum leaves index_t.
inline index_t checked_add(const char* function, const char* what, index_t a, index_t b) {
  index_t sum = 0;
  if (__builtin_add_overflow(a, b, &sum)) fail(function, what, " = ", a, " + ", b, " overflows a 64-bit index");
  return sum;
}

template <class... Rest>
index_t checked_product(const char* function, const char* what, index_t first, Rest... rest) {
  index_t product = first;
  ((product = checked_mul(function, what, product, rest)), ...);
  return product;
}

}  // namespace detail
}  // namespace netdeconv

/// Throws netdeconv::invalid_argument from `function` with the streamed message parts unless `cond`.
#define NETDECONV_REQUIRE(cond, function, ...) \
  do {                                         \
    if (!(cond)) ::netdeconv::detail::fail(function, __VA_ARGS__); \
  } while (false)
