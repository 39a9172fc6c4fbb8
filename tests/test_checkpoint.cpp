// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <cstring>
#include <limits>

#include <netdeconv/channel_deconv_layer.hpp>
#include <netdeconv/conv_deconv_layer.hpp>
#include <netdeconv/linear_deconv_layer.hpp>

using namespace netdeconv;

namespace {

conv_deconv_config conv_config() {
  conv_deconv_config c;
  c.geometry = conv_geometry::square(3, 1, 1);
  c.sampling_stride = 1;
  return c;
}

/// A conv layer after two training steps on deterministic data.
conv_deconv_layer<float> trained_layer() {
  conv_deconv_layer<float> layer(4, conv_config());
  std::vector<float> x(2 * 4 * 6 * 6), W(3 * 4 * 9);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(0.37 * double(i * i % 101)) + 0.01 * double(i % 7));
  for (std::size_t i = 0; i < W.size(); ++i) W[i] = float(std::cos(0.1 * double(i)));
  for (int k = 0; k < 2; ++k) layer.train_step(seq, nchw<const float>(x.data(), 2, 4, 6, 6), nchw<const float>(W.data(), 3, 4, 3, 3), {});
  return layer;
}

/// Rewrites the trailing CRC-32 so that only the deliberate change is wrong.
void reseal(std::vector<std::uint8_t>& bytes) {
  const std::uint32_t crc = detail::crc32(bytes.data(), bytes.size() - 4);
  for (int i = 0; i < 4; ++i) bytes[bytes.size() - 4 + i] = std::uint8_t(crc >> (8 * i));
}

}  // namespace

TEST_CASE("the format is explicit: magic, little-endian version/kind/scalar size, CRC-32 of the rest") {
  const auto bytes = trained_layer().state();
  REQUIRE(bytes.size() > 20);
  CHECK(std::string(bytes.begin(), bytes.begin() + 4) == "NDCV");
  CHECK(bytes[4] == checkpoint_version);
  CHECK(bytes[8] == std::uint8_t(layer_kind::conv));
  CHECK(bytes[12] == 4);
  const std::uint32_t crc = detail::crc32(bytes.data(), bytes.size() - 4);
  CHECK(bytes[bytes.size() - 4] == std::uint8_t(crc));
  CHECK(detail::crc32(reinterpret_cast<const std::uint8_t*>("123456789"), 9) == 0xCBF43926u);  // the CRC-32 check value
}

TEST_CASE("a checkpoint round-trips and restores the running statistics") {
  const auto layer = trained_layer();
  conv_deconv_layer<float> fresh(4, conv_config());
  fresh.load_state(layer.state());
  CHECK(fresh.running().D[0] == layer.running().D[0]);
  CHECK(fresh.running().mean[0] == layer.running().mean[0]);
  CHECK(fresh.steps() == 2);
  CHECK(fresh.state() == layer.state());
}

TEST_CASE("corrupt or mismatched checkpoints are refused with a clear error and change nothing") {
  const auto good = trained_layer().state();
  conv_deconv_layer<float> target(4, conv_config());
  const auto before = target.state();
  auto refuse = [&](const std::vector<std::uint8_t>& bytes, const char* message) {
    CAPTURE(message);
    CHECK_THROWS_WITH_AS(target.load_state(bytes), doctest::Contains(message), checkpoint_error);
    CHECK(target.state() == before);
  };
  SUBCASE("truncated") {
    refuse(std::vector<std::uint8_t>(good.begin(), good.begin() + 10), "is truncated: 10 bytes");
    auto cut = std::vector<std::uint8_t>(good.begin(), good.end() - 40);
    reseal(cut);
    refuse(cut, "truncated at byte");
  }
  SUBCASE("flipped byte") {
    for (const std::size_t at : {std::size_t(0), std::size_t(17), good.size() / 2, good.size() - 1}) {
      auto bad = good;
      bad[at] ^= 0x10;
      refuse(bad, "is corrupt: checksum");
    }
  }
  SUBCASE("wrong version") {
    auto bad = good;
    bad[4] = std::uint8_t(checkpoint_version + 1);
    reseal(bad);
    refuse(bad, "has format version 3, this build reads version 2");
  }
  SUBCASE("wrong magic") {
    auto bad = good;
    bad[0] = 'X';
    reseal(bad);
    refuse(bad, "bad magic");
  }
  SUBCASE("wrong shape: another channel count, block or eps") {
    conv_deconv_layer<float> wider(8, conv_config());
    CHECK_THROWS_WITH_AS(wider.load_state(good), doctest::Contains("channels = 4, this layer has 8"), checkpoint_error);
    auto cfg = conv_config();
    cfg.eps = 1e-3;
    conv_deconv_layer<float> other_eps(4, cfg);
    CHECK_THROWS_WITH_AS(other_eps.load_state(good), doctest::Contains("eps"), checkpoint_error);
    cfg = conv_config();
    cfg.layout = block_layout::independent;
    cfg.block = 2;
    conv_deconv_layer<float> other_layout(4, cfg);
    CHECK_THROWS_WITH_AS(other_layout.load_state(good), doctest::Contains("block layout"), checkpoint_error);
  }
  SUBCASE("another layer kind or scalar type") {
    conv_deconv_layer<double> dbl(4, conv_config());
    CHECK_THROWS_WITH_AS(dbl.load_state(good), doctest::Contains("holds 4-byte scalars, this layer has 8-byte"),
                         checkpoint_error);
    linear_deconv_layer<float> lin(36, linear_deconv_config{});
    CHECK_THROWS_WITH_AS(lin.load_state(good), doctest::Contains("holds layer kind 1, this layer is kind 2"),
                         checkpoint_error);
    channel_deconv_layer<float> ch(4, channel_deconv_config{2});
    CHECK_THROWS_WITH_AS(ch.load_state(good), doctest::Contains("kind 1, this layer is kind 3"), checkpoint_error);
  }
}

namespace {

// Offsets in trained_layer()'s checkpoint (format version 2): header 16 bytes, eps, sampling
// stride, 8 geometry fields, 15 configuration fields, momentum, tolerance, then the counters and the
// arrays (each an i64 length and its floats): mean (36), D (36 x 36).
constexpr std::size_t steps_at = 16 + 8 + 8 + 8 * 8 + 15 * 8 + 8 + 8, counter_at = steps_at + 8, failures_at = steps_at + 16;
constexpr std::size_t D_at = failures_at + 8 + 8 + 36 * 4 + 8;

void poke_i64(std::vector<std::uint8_t>& bytes, std::size_t at, std::int64_t v) {
  for (int i = 0; i < 8; ++i) bytes[at + i] = std::uint8_t(std::uint64_t(v) >> (8 * i));
  reseal(bytes);
}

}  // namespace

TEST_CASE("checkpoints with a valid checksum are checked for sense (issue 9)") {
  const auto good = trained_layer().state();
  conv_deconv_layer<float> target(4, conv_config());
  CHECK_NOTHROW(target.load_state(good));
  REQUIRE(target.steps() == 2);
  const auto before = target.state();
  auto refuse = [&](const std::vector<std::uint8_t>& bytes, const char* message) {
    CAPTURE(message);
    CHECK_THROWS_WITH_AS(target.load_state(bytes), doctest::Contains(message), checkpoint_error);
    CHECK(target.state() == before);
  };
  const std::int64_t max = std::numeric_limits<std::int64_t>::max();
  auto bad = good;
  poke_i64(bad, steps_at, max);  // the next step would overflow
  refuse(bad, "has steps = 9223372036854775807");
  bad = good;
  poke_i64(bad, steps_at, -3);
  refuse(bad, "has steps = -3");
  bad = good;
  poke_i64(bad, counter_at, max);  // (counter + 1) overflowed before the modulo
  refuse(bad, "has freeze counter 9223372036854775807, but steps 2 mod 10*freeze_iter = 2");
  bad = good;
  poke_i64(bad, counter_at, -1);
  refuse(bad, "has freeze counter -1");
  bad = good;
  poke_i64(bad, failures_at, -1);
  refuse(bad, "has -1 failed steps");
  bad = good;
  poke_i64(bad, failures_at, 3);
  refuse(bad, "has 3 failed steps, outside [0, steps = 2]");
  bad = good;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (std::size_t i = 0; i < 36 * 36; ++i) std::memcpy(bad.data() + D_at + 4 * i, &nan, 4);
  reseal(bad);
  refuse(bad, "holds non-finite running statistics for block 0");
}

TEST_CASE("a checkpoint of a layer with another geometry or other options is refused (issue 9)") {
  const auto good = trained_layer().state();
  const auto refused_by = [&](const conv_deconv_config& cfg, const layer_options& options, const char* message) {
    CAPTURE(message);
    conv_deconv_layer<float> other(4, cfg, options);
    CHECK_THROWS_WITH_AS(other.load_state(good), doctest::Contains(message), checkpoint_error);
  };
  auto cfg = conv_config();
  cfg.geometry = conv_geometry{1, 9, 1, 1, 0, 4, 1, 1};  // the same kernel area 9
  refused_by(cfg, {}, "kernel_h = 3, this layer has 1");
  cfg = conv_config();
  cfg.geometry.stride_h = cfg.geometry.stride_w = 2;
  refused_by(cfg, {}, "stride_h = 1, this layer has 2");
  cfg = conv_config();
  cfg.isqrt = isqrt_options::fixed(7);
  refused_by(cfg, {}, "isqrt iterations = 5, this layer has 7");
  layer_options options;
  options.relative_eps = true;
  refused_by(conv_config(), options, "relative_eps = 0, this layer has 1");
  options = {};
  options.first_step_copy = true;
  refused_by(conv_config(), options, "first_step_copy = 0, this layer has 1");
  options = {};
  options.momentum = 0.2;
  refused_by(conv_config(), options, "momentum = 0.1, this layer has 0.2");
  options = {};
  options.freeze = true;
  refused_by(conv_config(), options, "freeze = 0, this layer has 1");
  options = {};
  options.on_failure = failure_policy::keep_previous;
  refused_by(conv_config(), options, "on_failure = 0, this layer has 1");
}

TEST_CASE("freeze_iter is bounded so that the counter's wrap 10*freeze_iter cannot overflow") {
  layer_options options;
  options.freeze_iter = std::numeric_limits<index_t>::max() / 5;
  CHECK_THROWS_WITH_AS(conv_deconv_layer<float>(4, conv_config(), options), doctest::Contains("freeze_iter must be in"),
                       invalid_argument);
}
