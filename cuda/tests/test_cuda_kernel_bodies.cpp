// SPDX-License-Identifier: MIT
// The CUDA kernels' per-thread code (kernel_bodies.hpp) run on the host by cuda/tests/emulator.hpp
// for every block and thread id, against the CPU oracle; the TF32 covariance with its products
// modelled (tf32_model.hpp). Needs no GPU and no nvcc: always runs.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#include "checks.hpp"
#include "emulator.hpp"

using netdeconv::cuda::emulate::backend;
namespace checks = netdeconv::cuda::checks;

TEST_CASE_TEMPLATE("emulated CUDA im2col and col2im match the CPU", T, float, double) {
  checks::rng_t rng(1);
  checks::check_im2col<backend, T>(rng);
}

TEST_CASE_TEMPLATE("emulated CUDA block moments (fused sampled im2col + tiled covariance) match the CPU", T, float, double) {
  checks::rng_t rng(2);
  checks::check_block_moments<backend, T>(rng);
}

TEST_CASE("emulated CUDA moments keep float covariance under a large mean") {
  checks::rng_t rng(3);
  checks::check_large_offset<backend>(rng);
}

TEST_CASE_TEMPLATE("emulated CUDA merge and covariance match the CPU", T, float, double) {
  checks::rng_t rng(4);
  checks::check_merge_and_covariance<backend, T>(rng);
}

TEST_CASE_TEMPLATE("emulated CUDA batched Newton-Schulz matches the CPU", T, float, double) {
  checks::rng_t rng(5);
  checks::check_inverse_sqrt<backend, T>(rng);
}

TEST_CASE_TEMPLATE("emulated CUDA fold matches the CPU", T, float, double) {
  checks::rng_t rng(6);
  checks::check_fold<backend, T>(rng);
}

TEST_CASE_TEMPLATE("emulated CUDA whitening matches the CPU", T, float, double) {
  checks::rng_t rng(7);
  checks::check_apply_whitening<backend, T>(rng);
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
