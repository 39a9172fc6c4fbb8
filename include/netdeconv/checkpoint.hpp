// SPDX-License-Identifier: MIT
#pragma once
// Byte format of layer checkpoints: explicit little-endian fields, versioned, CRC-32 protected.
//
//   offset 0   "NDCV"                   magic
//          4   u32 format version       (checkpoint_version)
//          8   u32 layer kind           (conv 1, linear 2, channel 3)
//         12   u32 scalar size          (4 float, 8 double)
//         16   payload                  i64 / f64 / u32 fields and arrays, little-endian, as the layer writes them
//        end-4 u32 CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320) of every preceding byte
//
// Readers check the checksum first, then magic, version, kind and scalar size, then every shape
// against the layer's own configuration; any mismatch throws checkpoint_error naming what differs.

#include <bit>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "error.hpp"

namespace netdeconv {

inline constexpr std::uint32_t checkpoint_version = 2;

/// A checkpoint that cannot be loaded: corrupt, truncated, another version, or another layer's.
class checkpoint_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class layer_kind : std::uint32_t { conv = 1, linear = 2, channel = 3 };

namespace detail {

inline std::uint32_t crc32(const std::uint8_t* data, std::size_t n) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) {
    crc ^= data[i];
    for (int b = 0; b < 8; ++b) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

class byte_writer {
 public:
  byte_writer(layer_kind kind, std::size_t scalar_size) {
    for (char c : {'N', 'D', 'C', 'V'}) bytes_.push_back(std::uint8_t(c));
    u32(checkpoint_version);
    u32(std::uint32_t(kind));
    u32(std::uint32_t(scalar_size));
  }
  void u32(std::uint32_t v) { put(v, 4); }
  void i64(std::int64_t v) { put(std::uint64_t(v), 8); }
  void f64(double v) { put(std::bit_cast<std::uint64_t>(v), 8); }
  template <class T>
  void scalars(const T* p, index_t n) {
    static_assert(std::is_floating_point_v<T>);
    i64(n);
    for (index_t i = 0; i < n; ++i) {
      if constexpr (sizeof(T) == 4)
        put(std::bit_cast<std::uint32_t>(p[i]), 4);
      else
        put(std::bit_cast<std::uint64_t>(p[i]), 8);
    }
  }
  /// The bytes with the trailing checksum.
  std::vector<std::uint8_t> finish() {
    const std::uint32_t crc = crc32(bytes_.data(), bytes_.size());
    u32(crc);
    return std::move(bytes_);
  }

 private:
  void put(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes_.push_back(std::uint8_t(v >> (8 * i)));
  }
  std::vector<std::uint8_t> bytes_;
};

class byte_reader {
 public:
  byte_reader(const std::vector<std::uint8_t>& bytes, layer_kind kind, std::size_t scalar_size) : bytes_(bytes) {
    if (bytes.size() < 20) fail("is truncated: ", bytes.size(), " bytes, a header alone has 20");
    end_ = bytes.size();
    pos_ = end_ - 4;
    const std::uint32_t stored = u32(), computed = crc32(bytes.data(), end_ - 4);
    if (stored != computed) fail("is corrupt: checksum ", computed, " does not match the stored ", stored);
    end_ -= 4;
    if (std::memcmp(bytes.data(), "NDCV", 4) != 0) fail("is not a netdeconv checkpoint (bad magic)");
    pos_ = 4;
    if (const auto v = u32(); v != checkpoint_version)
      fail("has format version ", v, ", this build reads version ", checkpoint_version);
    if (const auto k = u32(); k != std::uint32_t(kind))
      fail("holds layer kind ", k, ", this layer is kind ", std::uint32_t(kind));
    if (const auto s = u32(); s != scalar_size)
      fail("holds ", s, "-byte scalars, this layer has ", scalar_size, "-byte scalars");
  }
  std::uint32_t u32() { return std::uint32_t(get(4)); }
  std::int64_t i64() { return std::int64_t(get(8)); }
  double f64() { return std::bit_cast<double>(get(8)); }
  /// Reads an array written by byte_writer::scalars; its length must be `expected`.
  template <class T>
  void scalars(T* p, index_t expected, const char* what) {
    const index_t n = i64();
    if (n != expected) fail("has ", n, " values for ", what, ", the layer needs ", expected);
    for (index_t i = 0; i < n; ++i) {
      if constexpr (sizeof(T) == 4)
        p[i] = std::bit_cast<T>(std::uint32_t(get(4)));
      else
        p[i] = std::bit_cast<T>(get(8));
    }
  }
  /// A configuration field that must equal the layer's own value.
  void expect_i64(std::int64_t expected, const char* what) {
    if (const auto v = i64(); v != expected) fail("was saved with ", what, " = ", v, ", this layer has ", expected);
  }
  void expect_f64(double expected, const char* what) {
    if (const auto v = f64(); v != expected) fail("was saved with ", what, " = ", v, ", this layer has ", expected);
  }
  /// Throws checkpoint_error: "netdeconv::load_state: the checkpoint <parts>".
  template <class... Parts>
  [[noreturn]] void fail(const Parts&... parts) const {
    std::ostringstream message;
    message << "netdeconv::load_state: the checkpoint ";
    (message << ... << parts);
    throw checkpoint_error(message.str());
  }
  void expect_end() const {
    if (pos_ != end_) fail("has ", end_ - pos_, " unread bytes before its checksum");
  }

 private:
  std::uint64_t get(int n) {
    if (pos_ + std::size_t(n) > end_) fail("is truncated at byte ", pos_);
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= std::uint64_t(bytes_[pos_ + i]) << (8 * i);
    pos_ += std::size_t(n);
    return v;
  }
  const std::vector<std::uint8_t>& bytes_;
  std::size_t pos_ = 0, end_ = 0;
};

}  // namespace detail
}  // namespace netdeconv
