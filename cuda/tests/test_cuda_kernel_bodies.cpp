// SPDX-License-Identifier: MIT
// The CUDA kernels' per-thread code (kernel_bodies.hpp) run on the host by cuda/tests/emulator.hpp
// for every block and thread id, against the CPU oracle. Needs no GPU and no nvcc: always runs.

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
