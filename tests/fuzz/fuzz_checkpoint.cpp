// SPDX-License-Identifier: MIT
// libFuzzer target: the checkpoint loader (checkpoint.hpp, layer_core.hpp) of the conv, linear
// and channel layers in float and double. Input: byte 0 picks the layer (b % 3), the scalar type
// (b & 4: double), the options (b & 8: layer_options::improved(), which adds a running Cov) and
// whether to reseal (b & 16: rewrite the trailing CRC-32, so that mutations reach the parser
// behind the checksum); the rest is the checkpoint. Properties:
//   - load_state either succeeds or throws checkpoint_error, and then leaves the state unchanged;
//   - an accepted checkpoint is canonical: state() gives back exactly its bytes;
//   - a layer that accepted one still trains and evaluates to finite weights.
// The seeds (corpus/checkpoint/seed_*) are the states of these layers after two steps:
// NETDECONV_FUZZ_SEEDS=DIR on any run of the target rewrites them into DIR.

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <netdeconv/channel_deconv_layer.hpp>
#include <netdeconv/conv_deconv_layer.hpp>
#include <netdeconv/linear_deconv_layer.hpp>

#include "fuzz_input.hpp"

using namespace netdeconv;
using bytes = std::vector<std::uint8_t>;

namespace {

/// Deterministic data in [-1, 1].
template <class T>
std::vector<T> data(std::size_t n, double phase) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = T(std::sin(0.7 * double(i) + phase));
  return v;
}

template <class T>
bool finite(const std::vector<T>& v) {
  for (const T x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

/// The three layers under test, each with a forward step that must succeed and be finite.
template <class T>
struct conv_case {
  conv_deconv_layer<T> layer;
  explicit conv_case(const layer_options& o) : layer(4, config(), o) {}
  static conv_deconv_config config() {
    conv_deconv_config c;
    c.geometry = conv_geometry::square(3, 1, 1);
    c.block = 2;
    c.sampling_stride = 1;
    return c;
  }
  bool step() {
    const auto x = data<T>(2 * 4 * 5 * 5, 0.1), w = data<T>(3 * 4 * 9, 0.2);
    const auto wb = layer.train_step(seq, nchw<const T>(x.data(), 2, 4, 5, 5), nchw<const T>(w.data(), 3, 4, 3, 3), {});
    const auto ev = layer.eval(seq, nchw<const T>(w.data(), 3, 4, 3, 3), {});
    return finite(wb.weight) && finite(wb.bias) && finite(ev.weight) && finite(ev.bias);
  }
};

template <class T>
struct linear_case {
  linear_deconv_layer<T> layer;
  explicit linear_case(const layer_options& o) : layer(6, config(), o) {}
  static linear_deconv_config config() {
    linear_deconv_config c;
    c.block = 3;
    return c;
  }
  bool step() {
    const auto x = data<T>(8 * 6, 0.3), w = data<T>(2 * 6, 0.4);
    const auto wb = layer.train_step(seq, row_major<const T>(x.data(), 8, 6), row_major<const T>(w.data(), 2, 6), {});
    const auto ev = layer.eval(seq, row_major<const T>(w.data(), 2, 6), {});
    return finite(wb.weight) && finite(wb.bias) && finite(ev.weight) && finite(ev.bias);
  }
};

template <class T>
struct channel_case {
  channel_deconv_layer<T> layer;
  explicit channel_case(const layer_options& o) : layer(5, config(), with_copy(o)) {}
  static channel_deconv_config config() {
    channel_deconv_config c;
    c.block = 2;
    c.sampling_stride = 1;
    return c;
  }
  static layer_options with_copy(layer_options o) {
    o.first_step_copy = true;
    return o;
  }
  bool step() {
    const auto x = data<T>(2 * 5 * 4 * 4, 0.5);
    std::vector<T> y(x.size());
    std::vector<T> z(x.size());
    layer.train_step(seq, nchw<const T>(x.data(), 2, 5, 4, 4), nchw<T>(y.data(), 2, 5, 4, 4));
    layer.eval(seq, nchw<const T>(x.data(), 2, 5, 4, 4), nchw<T>(z.data(), 2, 5, 4, 4));
    return finite(y) && finite(z);
  }
};

layer_options options_of(std::uint8_t selector) { return selector & 8 ? layer_options::improved() : layer_options{}; }

template <class Case>
void check(std::uint8_t selector, const bytes& checkpoint) {
  Case target(options_of(selector));
  NETDECONV_FUZZ_CHECK(target.step());
  const bytes before = target.layer.state();
  try {
    target.layer.load_state(checkpoint);
  } catch (const checkpoint_error&) {
    NETDECONV_FUZZ_CHECK(target.layer.state() == before);
    return;
  }
  NETDECONV_FUZZ_CHECK(target.layer.state() == checkpoint);
  try {
    NETDECONV_FUZZ_CHECK(target.step());
  } catch (const numerical_error&) {
    // A loaded state may make the step's statistics fail: throw_error (the default) says so.
  }
}

template <class T>
void dispatch(std::uint8_t selector, const bytes& checkpoint) {
  switch (selector % 3) {
    case 0: check<conv_case<T>>(selector, checkpoint); break;
    case 1: check<linear_case<T>>(selector, checkpoint); break;
    default: check<channel_case<T>>(selector, checkpoint); break;
  }
}

template <class Case>
void write_seed(const std::string& dir, std::uint8_t selector, const char* name) {
  Case c(options_of(selector));
  c.step();
  c.step();
  bytes out{selector};
  const bytes state = c.layer.state();
  out.insert(out.end(), state.begin(), state.end());
  std::ofstream(dir + "/seed_" + name, std::ios::binary).write(reinterpret_cast<const char*>(out.data()), std::streamsize(out.size()));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("NETDECONV_FUZZ_SEEDS")) {
    write_seed<conv_case<float>>(dir, 0, "conv_float");
    write_seed<linear_case<float>>(dir, 1, "linear_float");
    write_seed<channel_case<float>>(dir, 2, "channel_float");
    write_seed<conv_case<double>>(dir, 4 | 8, "conv_double_improved");
    write_seed<linear_case<double>>(dir, 1 | 4 | 8, "linear_double_improved");
    write_seed<channel_case<double>>(dir, 2 | 4, "channel_double");
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t selector = data[0];
  bytes checkpoint(data + 1, data + size);
  if ((selector & 16) && checkpoint.size() >= 4) {
    const std::uint32_t crc = detail::crc32(checkpoint.data(), checkpoint.size() - 4);
    for (int i = 0; i < 4; ++i) checkpoint[checkpoint.size() - 4 + i] = std::uint8_t(crc >> (8 * i));
  }
  if (selector & 4)
    dispatch<double>(selector, checkpoint);
  else
    dispatch<float>(selector, checkpoint);
  return 0;
}
