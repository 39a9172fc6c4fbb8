// SPDX-License-Identifier: MIT
// What only the CUDA kernels have, checked on the host without a GPU or nvcc: the tiling and
// chunking maths of the covariance kernels (bodies/covariance.hpp), the TF32 rounding model, and
// the TF32 covariance emulated (cuda/tests/emulator.hpp) within its bound of the CPU oracle. The
// emulated kernels' checks shared with every backend are in tests/test_backends.cpp.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "emulator.hpp"
#include "tf32_checks.hpp"

namespace nd = netdeconv;
namespace d = netdeconv::cuda::detail;
using netdeconv::cuda::emulate::backend;
namespace checks = netdeconv::checks;

TEST_CASE("upper_tile enumerates each tile pair ti <= tj once, row by row") {
  for (nd::index_t nt = 1; nt <= 12; ++nt) {
    nd::index_t k = 0;
    for (nd::index_t ti = 0; ti < nt; ++ti)
      for (nd::index_t tj = ti; tj < nt; ++tj, ++k) {
        const d::tile_pair t = d::upper_tile(k, nt);
        CHECK(t.ti == ti);
        CHECK(t.tj == tj);
      }
    CHECK(k == d::upper_tile_count(nt));
  }
}

TEST_CASE("TF32 covariance: the warps' WMMA fragments cover the tile once; cov_gather matches cov_accumulate's layout") {
    constexpr int side = d::cov_tile / d::cov_fragment;
  static_assert(d::cov_warps * d::cov_fragments_per_warp == side * side, "every fragment needs a warp");
  static_assert(d::cov_rows % d::cov_fragment_k == 0, "a stage is whole k steps");
  std::vector<int> owner(side * side, 0);
  for (int w = 0; w < d::cov_warps; ++w) {
    const d::cov_warp_tile t = d::cov_warp_tile_of(w);
    for (int f = 0; f < d::cov_fragments_per_warp; ++f) {
      REQUIRE(t.row >= 0);
      REQUIRE(t.row < side);
      REQUIRE(t.col0 + f < side);
      ++owner[std::size_t(t.row * side + t.col0 + f)];
    }
  }
  for (int o : owner) CHECK(o == 1);

  // cov_gather hands thread (ty, tx) the tile entries (ty + 16u, tx + 16v) that cov_store writes
  // for acc[u*4 + v]; together the threads read every entry once.
  std::vector<float> tile(std::size_t(d::cov_tile * d::cov_tile));
  for (std::size_t e = 0; e < tile.size(); ++e) tile[e] = float(e);
  std::vector<int> read(tile.size(), 0);
  for (int tid = 0; tid < d::cov_threads; ++tid) {
    float acc[16];
    d::cov_gather(tile.data(), acc, tid);
    for (int u = 0; u < 4; ++u)
      for (int v = 0; v < 4; ++v) {
        const int i = tid / 16 + 16 * u, j = tid % 16 + 16 * v;
        CHECK(acc[u * 4 + v] == float(i * d::cov_tile + j));
        ++read[std::size_t(acc[u * 4 + v])];
      }
  }
  for (int r : read) CHECK(r == 1);
}

TEST_CASE("chunking covers every sample once and respects its bounds") {
  for (nd::index_t n : {2, 3, 255, 256, 257, 1000, 65536, 65537, 1000000, 10000000})
    for (nd::index_t blocks : {1, 6, 45, 528, 4000}) {
      const d::chunking ch = d::chunking::make(n, blocks);
      CAPTURE(n);
      CAPTURE(blocks);
      CHECK(ch.chunks >= 1);
      CHECK(ch.chunks <= 256);
      CHECK(ch.begin(0) == 0);
      CHECK(ch.end(ch.chunks - 1, n) == n);
      for (nd::index_t z = 0; z < ch.chunks; ++z) {
        CHECK(ch.end(z, n) > ch.begin(z));
        if (z + 1 < ch.chunks) CHECK(ch.end(z, n) == ch.begin(z + 1));
      }
      if (n <= 256 * 65536) CHECK(ch.length <= 65536);
      if (n >= 2 * 256) CHECK(ch.chunks * blocks >= std::min<nd::index_t>({528, blocks * (n / 256), blocks * 256}) / 2);
    }
}

TEST_CASE("TF32 rounding model: 10 explicit mantissa bits, nearest, ties away from zero") {
  using netdeconv::cuda::test_model::tf32_round;
  const auto p = [](int e) { return std::ldexp(1.0f, e); };
  CHECK(tf32_round(1.0f) == 1.0f);
  CHECK(tf32_round(1 + p(-10)) == 1 + p(-10));                 // representable
  CHECK(tf32_round(1 + p(-11) - p(-23)) == 1.0f);              // below half an ulp (2^-10)
  CHECK(tf32_round(1 + p(-11)) == 1 + p(-10));                 // tie: away from zero
  CHECK(tf32_round(-(1 + p(-11))) == -(1 + p(-10)));
  CHECK(tf32_round(2 - p(-12)) == 2.0f);                       // carry into the exponent
  CHECK(tf32_round(p(-136) + p(-149)) == p(-136));             // subnormals: TF32 spacing 2^-136
  CHECK(tf32_round(p(-138)) == 0.0f);
  CHECK(std::isinf(tf32_round(std::numeric_limits<float>::max())));
  CHECK(std::isinf(tf32_round(-std::numeric_limits<float>::infinity())));
  CHECK(std::isnan(tf32_round(std::numeric_limits<float>::quiet_NaN())));
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-100, 100);
  for (int t = 0; t < 100000; ++t) {
    const float x = (t % 2 ? -1.0f : 1.0f) * std::ldexp(mantissa(rng), exponent(rng));
    const float r = tf32_round(x);
    std::uint32_t bits;
    std::memcpy(&bits, &r, sizeof bits);
    CHECK((bits & 0x1fffu) == 0u);
    const double err = std::abs(double(r) - double(x)), ulp = std::ldexp(1.0, std::ilogb(x) - 10);
    CHECK(err <= ulp / 2);  // nearest (both neighbours are within one ulp)
    CHECK(err <= std::ldexp(1.0, -11) * std::abs(double(x)));
  }
}

TEST_CASE("emulated CUDA TF32 block moments are within the TF32 bound of the CPU oracle") {
  checks::rng_t rng(8);
  checks::check_block_moments_tf32<backend>(rng);
}

TEST_CASE("emulated CUDA TF32 moments round both factors") {
  checks::check_tf32_rounding<backend>();
}
