// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

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
    bad[4] = 2;
    reseal(bad);
    refuse(bad, "has format version 2, this build reads version 1");
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
