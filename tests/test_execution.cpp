// SPDX-License-Identifier: MIT
// Execution policies (execution.hpp): thread counts are checked before any work.
#include <doctest/doctest.h>

#include <vector>

#include <netdeconv/covariance.hpp>
#include <netdeconv/im2col.hpp>

using namespace netdeconv;

TEST_CASE("a policy's thread count must be in [0, max_policy_threads]") {
  std::vector<float> x(2 * 3 * 5 * 5, 1.0f), cols(2 * 9 * 27, -1.0f);
  const auto xv = nchw<const float>(x.data(), 2, 3, 5, 5);
  const auto g = conv_geometry::square(3, 1, 0);
  for (const int threads : {-1, max_policy_threads + 1, 1 << 30}) {
    CAPTURE(threads);
    CHECK_THROWS_WITH_AS(im2col(omp_policy{{}, threads}, xv, g, row_major(cols.data(), 18, 27)),
                         doctest::Contains("threads must be in [0, 1024]"), invalid_argument);
    CHECK(cols[0] == -1.0f);  // refused before any work
    CHECK_THROWS_AS(block_moments(simd_threads(threads), patch_sampler<float>(xv, g, 1),
                                  make_block_plan(block_layout::independent, 3, 9, 3)),
                    invalid_argument);
  }
  for (const int threads : {0, 1, 3}) {  // 0: the OpenMP default; more threads than cores is allowed
    im2col(omp_policy{{}, threads}, xv, g, row_major(cols.data(), 18, 27));
    CHECK(cols[0] == 1.0f);
  }
}
