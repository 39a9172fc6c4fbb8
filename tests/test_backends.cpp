// SPDX-License-Identifier: MIT
// One test suite for every backend (backend_checks.hpp): the OpenMP and SIMD policies through the
// view forms of the public calls, and the CUDA kernels' per-thread bodies emulated on the host
// (cuda/tests/emulator.hpp), each against the CPU oracle netdeconv::seq, in float and double. The
// GPU runs the same checks in cuda/tests/test_cuda.cpp.

#include <doctest/doctest.h>

#include "../cuda/tests/emulator.hpp"
#include "backend_checks.hpp"

namespace checks = netdeconv::checks;

template <class B, class T>
struct on {
  using backend = B;
  using type = T;
};

using omp_backend = checks::cpu_backend<netdeconv::omp_policy>;
using simd_backend = checks::cpu_backend<netdeconv::simd_policy>;
using emulated_cuda = netdeconv::cuda::emulate::backend;

#define NETDECONV_BACKENDS                                                                                   \
  on<omp_backend, float>, on<omp_backend, double>, on<simd_backend, float>, on<simd_backend, double>,       \
      on<emulated_cuda, float>, on<emulated_cuda, double>

TEST_CASE_TEMPLATE("im2col and col2im match the CPU oracle", P, NETDECONV_BACKENDS) {
  checks::rng_t rng(1);
  checks::check_im2col<typename P::backend, typename P::type>(rng);
}

TEST_CASE_TEMPLATE("block moments match the CPU oracle", P, NETDECONV_BACKENDS) {
  checks::rng_t rng(2);
  checks::check_block_moments<typename P::backend, typename P::type>(rng);
}

TEST_CASE_TEMPLATE("float moments keep the covariance under a large mean", B, omp_backend, simd_backend, emulated_cuda) {
  checks::rng_t rng(3);
  checks::check_large_offset<B>(rng);
}

TEST_CASE_TEMPLATE("merge and covariance of moment views match the CPU oracle", P, NETDECONV_BACKENDS) {
  checks::rng_t rng(4);
  checks::check_merge_and_covariance<typename P::backend, typename P::type>(rng);
}

TEST_CASE_TEMPLATE("batched Newton-Schulz on views matches the CPU oracle", P, NETDECONV_BACKENDS) {
  checks::rng_t rng(5);
  checks::check_inverse_sqrt<typename P::backend, typename P::type>(rng);
}

TEST_CASE_TEMPLATE("the batched inverse square root's VJP matches the CPU oracle", P, NETDECONV_BACKENDS) {
  checks::rng_t rng(12);
  checks::check_inverse_sqrt_vjp<typename P::backend, typename P::type>(rng);
}

TEST_CASE_TEMPLATE("fold on statistics views matches the CPU oracle", P, NETDECONV_BACKENDS) {
  checks::rng_t rng(6);
  checks::check_fold<typename P::backend, typename P::type>(rng);
}

TEST_CASE_TEMPLATE("whitening with statistics views matches the CPU oracle", P, NETDECONV_BACKENDS) {
  checks::rng_t rng(7);
  checks::check_apply_whitening<typename P::backend, typename P::type>(rng);
}

TEST_CASE_TEMPLATE("the statistics steps into caller views match the CPU oracle", P, NETDECONV_BACKENDS) {
  checks::rng_t rng(8);
  checks::check_statistics_steps<typename P::backend, typename P::type>(rng);
}

TEST_CASE_TEMPLATE("the statistics steps' backward matches the CPU oracle", P, NETDECONV_BACKENDS) {
  checks::rng_t rng(13);
  checks::check_statistics_step_vjps<typename P::backend, typename P::type>(rng);
}

TEST_CASE_TEMPLATE("the data-parallel backward pieces compose to the whole batch's backward", P, NETDECONV_BACKENDS) {
  checks::rng_t rng(15);
  checks::check_sharded_vjp<typename P::backend, typename P::type>(rng);
}

TEST_CASE_TEMPLATE("the layers' backward after every step matches the CPU layer on seq", P, NETDECONV_BACKENDS) {
  checks::rng_t rng(14);
  checks::check_layer_backward<typename P::backend, typename P::type>(rng);
}

TEST_CASE_TEMPLATE("the layers' trajectories match the CPU layer on seq", P, NETDECONV_BACKENDS) {
  checks::rng_t rng(20261201);
  checks::check_layers<typename P::backend, typename P::type>(rng);
}
