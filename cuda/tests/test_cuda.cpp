// SPDX-License-Identifier: MIT
// The suite every backend runs (tests/backend_checks.hpp) and the TF32 checks, on the GPU through
// the nvcc-compiled wrappers, against the CPU oracle. Exits 77 (Meson: SKIP) when no GPU is visible.

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "cuda_wrappers.hpp"
#include "tf32_checks.hpp"

namespace checks = netdeconv::checks;
namespace gpu_api = netdeconv::cuda::test;

struct gpu {
  template <class T, class... A> static auto im2col(A&&... a) { return gpu_api::im2col<T>(a...); }
  template <class T, class... A> static auto col2im(A&&... a) { return gpu_api::col2im<T>(a...); }
  template <class T, class... A> static auto block_moments_image(A&&... a) { return gpu_api::block_moments_image<T>(a...); }
  template <class T, class... A> static auto block_moments_matrix(A&&... a) { return gpu_api::block_moments_matrix<T>(a...); }
  template <class... A> static auto block_moments_image_tf32(A&&... a) { return gpu_api::block_moments_image_tf32(a...); }
  template <class... A> static auto block_moments_matrix_tf32(A&&... a) { return gpu_api::block_moments_matrix_tf32(a...); }
  template <class... A> static auto merge(A&&... a) { return gpu_api::merge(a...); }
  template <class T, class... A> static auto covariance(A&&... a) { return gpu_api::covariance<T>(a...); }
  template <class T, class... A> static auto inverse_sqrt(A&&... a) { return gpu_api::inverse_sqrt<T>(a...); }
  template <class T, class... A> static auto inverse_sqrt_vjp(A&&... a) { return gpu_api::inverse_sqrt_vjp<T>(a...); }
  template <class T, class... A> static auto fold(A&&... a) { return gpu_api::fold<T>(a...); }
  template <class T, class... A> static auto apply_whitening(A&&... a) { return gpu_api::apply_whitening<T>(a...); }
  template <class T, class... A> static auto conv_step(A&&... a) { return gpu_api::conv_step<T>(a...); }
  template <class T, class... A> static auto linear_step(A&&... a) { return gpu_api::linear_step<T>(a...); }
  template <class T, class... A> static auto conv_step_vjp(A&&... a) { return gpu_api::conv_step_vjp<T>(a...); }
  template <class T, class... A> static auto fold_vjp(A&&... a) { return gpu_api::fold_vjp<T>(a...); }
  template <class T, class... A> static auto conv_covariance_vjp(A&&... a) { return gpu_api::conv_covariance_vjp<T>(a...); }
  template <class T, class... A> static auto linear_step_vjp(A&&... a) { return gpu_api::linear_step_vjp<T>(a...); }
  template <class T, class... A> static auto conv_layer(A&&... a) { return gpu_api::conv_layer<T>(a...); }
  template <class T, class... A> static auto linear_layer(A&&... a) { return gpu_api::linear_layer<T>(a...); }
  template <class T, class... A> static auto channel_layer(A&&... a) { return gpu_api::channel_layer<T>(a...); }
  template <class T, class... A> static auto conv_layer_backward(A&&... a) { return gpu_api::conv_layer_backward<T>(a...); }
  template <class T, class... A> static auto linear_layer_backward(A&&... a) { return gpu_api::linear_layer_backward<T>(a...); }
  template <class T, class... A> static auto channel_layer_backward(A&&... a) { return gpu_api::channel_layer_backward<T>(a...); }
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

TEST_CASE("wmma::__float_to_tf32 rounds as the host TF32 model") {
  // Values with every kind of dropped part: ties, near-ties, carries into the exponent, both
  // signs, subnormals, zeros, the largest floats, infinities, NaN; then random bit patterns.
  std::vector<float> x;
  for (float m : {1.0f, 1.5f, 1.99999988f})
    for (int low : {0, 1, 0xfff, 0x1000, 0x1001, 0x1fff})
      for (float sign : {1.0f, -1.0f}) {
        float v = sign * m;
        std::uint32_t bits;
        std::memcpy(&bits, &v, sizeof bits);
        bits = (bits & ~0x1fffu) | std::uint32_t(low);
        std::memcpy(&v, &bits, sizeof v);
        x.push_back(v);
      }
  for (float v : {0.0f, -0.0f, std::ldexp(1.0f, -136) + std::ldexp(1.0f, -149), std::ldexp(1.0f, -138),
                  std::numeric_limits<float>::max(), std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()})
    x.push_back(v);
  std::mt19937 rng(10);
  for (int i = 0; i < 100000; ++i) {
    std::uint32_t bits = rng();
    float v;
    std::memcpy(&v, &bits, sizeof v);
    x.push_back(v);
  }
  const std::vector<float> got = gpu_api::float_to_tf32(x);
  REQUIRE(got.size() == x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float want = netdeconv::cuda::test_model::tf32_round(x[i]);
    if (std::isnan(want)) {
      CHECK(std::isnan(got[i]));
      continue;
    }
    std::uint32_t g, w;  // tensor cores read the upper 19 bits; compare those
    std::memcpy(&g, &got[i], sizeof g);
    std::memcpy(&w, &want, sizeof w);
    CAPTURE(x[i]);
    CHECK((g & ~0x1fffu) == w);
  }
}

TEST_CASE("CUDA TF32 block moments are within the TF32 bound of the CPU oracle") {
  checks::rng_t rng(8);
  checks::check_block_moments_tf32<gpu>(rng);
}

TEST_CASE("CUDA TF32 moments round both factors") {
  checks::check_tf32_rounding<gpu>();
}

TEST_CASE_TEMPLATE("CUDA merge and covariance match the CPU", T, float, double) {
  checks::rng_t rng(4);
  checks::check_merge_and_covariance<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA batched Newton-Schulz matches the CPU", T, float, double) {
  checks::rng_t rng(5);
  checks::check_inverse_sqrt<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA inverse square root VJP matches the CPU", T, float, double) {
  checks::rng_t rng(12);
  checks::check_inverse_sqrt_vjp<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA fold matches the CPU", T, float, double) {
  checks::rng_t rng(6);
  checks::check_fold<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA whitening matches the CPU", T, float, double) {
  checks::rng_t rng(7);
  checks::check_apply_whitening<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA statistics steps into device views match the CPU", T, float, double) {
  checks::rng_t rng(8);
  checks::check_statistics_steps<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA statistics steps' backward matches the CPU", T, float, double) {
  checks::rng_t rng(13);
  checks::check_statistics_step_vjps<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA layers with their state in device memory match the CPU layers", T, float, double) {
  checks::rng_t rng(9);
  checks::check_layers<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA data-parallel backward pieces compose to the whole batch's backward", T, float, double) {
  checks::rng_t rng(15);
  checks::check_sharded_vjp<gpu, T>(rng);
}

TEST_CASE_TEMPLATE("CUDA layers' backward after every step matches the CPU layers", T, float, double) {
  checks::rng_t rng(14);
  checks::check_layer_backward<gpu, T>(rng);
}

TEST_CASE("the README's CUDA snippet runs and equals the CPU statistics step") {
  std::mt19937_64 rng(9);
  std::normal_distribution<double> normal;
  const netdeconv::index_t N = 2, C = 8, H = 12, W = 12, Cout = 4;
  std::vector<float> x(static_cast<std::size_t>(N * C * H * W)), w(static_cast<std::size_t>(Cout * C * 9)),
      b(static_cast<std::size_t>(Cout));
  for (auto* v : {&x, &w, &b})
    for (float& e : *v) e = float(normal(rng));
  const auto got = gpu_api::readme_snippet(x, N, C, H, W, w, b, Cout);
  netdeconv::conv_deconv_config cfg;
  cfg.geometry = netdeconv::conv_geometry::square(3, 1, 1);
  const auto expected = netdeconv::conv_statistics_step(netdeconv::seq, netdeconv::nchw<const float>(x.data(), N, C, H, W),
                                                        netdeconv::nchw<const float>(w.data(), Cout, C, 3, 3),
                                                        netdeconv::contiguous<const float>(b.data(), Cout), cfg);
  CHECK(checks::rel_diff(got.weight, expected.weight) < 50 * checks::tol<float>());
  CHECK(checks::rel_diff(got.bias, expected.bias) < 50 * checks::tol<float>());
  REQUIRE(got.reports.size() == 1);
  CHECK(got.reports[0].status == expected.reports[0].status);
}

TEST_CASE("CUDA errors carry the error string and the call site; small workspaces, TF32 on double and host pointers are refused") {
  const std::string failing = gpu_api::failing_call_message();
  CHECK(failing.find("cudaMalloc") != std::string::npos);
  CHECK(failing.find("cudaErrorMemoryAllocation") != std::string::npos);
  CHECK(failing.find("cuda_wrappers.cu:") != std::string::npos);
  CHECK(gpu_api::small_workspace_message().find("workspace has 16 bytes") != std::string::npos);
  CHECK(gpu_api::tf32_double_message().find("cov_precision::tf32 applies to float rows") != std::string::npos);
  CHECK(gpu_api::host_pointer_message().find("points at host memory") != std::string::npos);
}

TEST_CASE("CUDA layers refuse host states, host accessors on device states, host-only failure policies and y = x") {
  const std::vector<std::string> m = gpu_api::layer_refusal_messages();
  REQUIRE(m.size() == 5);
  CHECK(m[0].find("needs the layer's state in device memory") != std::string::npos);
  CHECK(m[1].find("the layer's state is in device memory") != std::string::npos);
  CHECK(m[2].find("exact_fallback and raise_eps need the host") != std::string::npos);
  CHECK(m[3].find("y") != std::string::npos);
  CHECK(m[3].find("overlap") != std::string::npos);
  CHECK(m[4].find("points at host memory") != std::string::npos);
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
