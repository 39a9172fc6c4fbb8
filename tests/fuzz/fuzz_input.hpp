// SPDX-License-Identifier: MIT
#pragma once
// The fuzz targets' reader of the libFuzzer input: bytes turned into integers and reals biased
// towards the values where arithmetic breaks (0, +-1, the 32- and 64-bit limits, NaN, Inf, huge,
// tiny). Past the end of the input every read returns 0.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <limits>

/// A fuzz target's property: on failure, prints it and aborts (libFuzzer saves the input as a crash).
#define NETDECONV_FUZZ_CHECK(cond)                                                           \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond);      \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

namespace netdeconv::fuzz {

class fuzz_input {
 public:
  fuzz_input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::size_t remaining() const { return size_ - pos_; }
  const std::uint8_t* rest() const { return data_ + pos_; }

  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }

  /// One byte chooses: a boundary value (lead byte < 0x80), a small value lead - 0x80 - 32 in
  /// [-32, 63] (lead < 0xE0), or the next 8 bytes as a raw int64.
  std::int64_t integer() {
    constexpr std::int64_t max = std::numeric_limits<std::int64_t>::max(), min = std::numeric_limits<std::int64_t>::min();
    constexpr std::int64_t edges[] = {0, 1, -1, 2, 3, 4, 7, 8, 64, 65536, (std::int64_t(1) << 31) - 1,
                                      std::int64_t(1) << 31, -(std::int64_t(1) << 31), (std::int64_t(1) << 32) - 1,
                                      std::int64_t(1) << 32, (std::int64_t(1) << 32) + 1, std::int64_t(3037000499),
                                      std::int64_t(3037000500), std::int64_t(1) << 62, max / 2, max / 2 + 1, max - 1,
                                      max, min + 1, min};
    const std::uint8_t lead = byte();
    if (lead < 0x80) return edges[lead % std::size(edges)];
    if (lead < 0xE0) return std::int64_t(lead) - 0x80 - 32;
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t(byte()) << (8 * i);
    std::int64_t out;
    std::memcpy(&out, &v, sizeof out);
    return out;
  }

  /// One byte chooses: a special value (lead < 0x40), a small multiple of 1/8 (lead < 0xC0), or
  /// the next 8 bytes as a raw double.
  double real() {
    constexpr double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
    constexpr double specials[] = {0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-300, -1e-300, 1e300, -1e300, 4.9e-324,
                                   1.2e-38, 3.4e38, 1e-20, 1e20, 1e-8, 1e8, inf, -inf, nan, 1e30, -1e30};
    const std::uint8_t lead = byte();
    if (lead < 0x40) return specials[lead % std::size(specials)];
    if (lead < 0xC0) return (double(lead) - 0x80) / 8.0;
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t(byte()) << (8 * i);
    double out;
    std::memcpy(&out, &v, sizeof out);
    return out;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_, pos_ = 0;
};

}  // namespace netdeconv::fuzz
