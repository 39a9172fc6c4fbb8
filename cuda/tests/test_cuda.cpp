// SPDX-License-Identifier: MIT
// Every CUDA primitive against the CPU oracle (checks.hpp) on the GPU, through the nvcc-compiled
// wrappers. Exits 77 (Meson: SKIP) when no GPU is visible.

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "checks.hpp"
#include "cuda_wrappers.hpp"

namespace checks = netdeconv::cuda::checks;
namespace gpu_api = netdeconv::cuda::test;

struct gpu {
  template <class T, class... A> static auto im2col(A&&... a) { return gpu_api::im2col<T>(a...); }
  template <class T, class... A> static auto col2im(A&&... a) { return gpu_api::col2im<T>(a...); }
  template <class T, class... A> static auto block_moments_image(A&&... a) { return gpu_api::block_moments_image<T>(a...); }
  template <class T, class... A> static auto block_moments_matrix(A&&... a) { return gpu_api::block_moments_matrix<T>(a...); }
  template <class... A> static auto merge(A&&... a) { return gpu_api::merge(a...); }
  template <class T, class... A> static auto covariance(A&&... a) { return gpu_api::covariance<T>(a...); }
  template <class T, class... A> static auto inverse_sqrt(A&&... a) { return gpu_api::inverse_sqrt<T>(a...); }
  template <class T, class... A> static auto fold(A&&... a) { return gpu_api::fold<T>(a...); }
  template <class T, class... A> static auto apply_whitening(A&&... a) { return gpu_api::apply_whitening<T>(a...); }
};

TEST_CASE_TEMPLATE("CUDA im2col and col2im match the CPU", T, float, double) {
  checks::rng_t rng(1);
  checks::check_im2col<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA block moments (fused sampled im2col + tiled covariance) match the CPU", T, float, double) {
  checks::rng_t rng(2);
  checks::check_block_moments<gpu, T>(rng);
}

TEST_CASE("CUDA moments keep float covariance under a large mean") {
  checks::rng_t rng(3);
  checks::check_large_offset<gpu>(rng);
}

TEST_CASE_TEMPLATE("CUDA merge and covariance match the CPU", T, float, double) {
  checks::rng_t rng(4);
  checks::check_merge_and_covariance<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA batched Newton-Schulz matches the CPU", T, float, double) {
  checks::rng_t rng(5);
  checks::check_inverse_sqrt<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA fold matches the CPU", T, float, double) {
  checks::rng_t rng(6);
  checks::check_fold<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA whitening matches the CPU", T, float, double) {
  checks::rng_t rng(7);
  checks::check_apply_whitening<gpu, T>(rng);
}

TEST_CASE("CUDA errors carry the error string and the call site; small workspaces are refused") {
  const std::string failing = gpu_api::failing_call_message();
  CHECK(failing.find("cudaMalloc") != std::string::npos);
  CHECK(failing.find("cudaErrorMemoryAllocation") != std::string::npos);
  CHECK(failing.find("cuda_wrappers.cu:") != std::string::npos);
  CHECK(gpu_api::small_workspace_message().find("workspace has 16 bytes") != std::string::npos);
}

int main(int argc, char** argv) {
  if (gpu_api::device_count() == 0) {
    std::puts("test_cuda: no CUDA device visible, skipping (exit 77)");
    return 77;
  }
  std::printf("test_cuda: running on %s\n", gpu_api::device_name().c_str());
  doctest::Context context(argc, argv);
  return context.run();
}
