// SPDX-License-Identifier: MIT
// The bad-input census of issue 14 (docs/bad-input.md): the classes of bad input that the other
// test files do not cover. The table in docs/bad-input.md names, for every class, the test that
// covers it, here or elsewhere.
#include <doctest/doctest.h>

#include <sys/mman.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <netdeconv/netdeconv.hpp>

#include "oracle.hpp"

using namespace netdeconv;

// A stand-in for a backend whose layer state lives in device memory: its attach does what
// cuda/layer_state.cuh's does once it has copied the state to the device (deconv_core::attach_device),
// so the host side of the device-memory checks runs without a GPU. It is not an execution policy.
struct device_state_policy {};

template <>
struct netdeconv::detail::layer_backend<device_state_policy, void> {
  template <class T>
  static void attach(const device_state_policy&, deconv_core<T>& core, const running_state_view<T>& state) {
    core.attach_device(state);
  }
};

namespace {

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_f = std::numeric_limits<float>::infinity();

std::vector<float> normal_floats(std::size_t n, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  std::vector<float> v(n);
  for (auto& e : v) e = float(normal(rng));
  return v;
}

/// ||a - b|| / ||b|| in double (||a - b|| when b is 0).
template <class A, class B>
double rel(const A& a, const B& b) {
  REQUIRE(std::size_t(a.size()) == std::size_t(b.size()));
  double num = 0, den = 0;
  for (std::size_t i = 0; i < std::size_t(b.size()); ++i) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

/// Runs f(policy) for every CPU policy: the scalar oracle, OpenMP on 2 threads, and SIMD + OpenMP.
template <class F>
void for_each_cpu_policy(F&& f) {
  f(seq);
  f(omp_policy{{}, 2});
  f(par);
}

/// n floats whose first one lies `shift` floats past a 64-byte boundary.
struct floats_at {
  std::vector<float> storage;
  float* data;
  floats_at(std::size_t n, std::size_t shift) : storage(n + 16 + shift) {
    const auto address = reinterpret_cast<std::uintptr_t>(storage.data());
    data = storage.data() + (64 - address % 64) % 64 / sizeof(float) + shift;
  }
};

/// An anonymous private mapping that reserves no memory: its untouched pages read as zero and
/// cost nothing, so a view can have offsets beyond 2^31 elements without 8 GB of RAM.
struct sparse_mapping {
  std::size_t bytes;
  void* base;
  explicit sparse_mapping(std::size_t n)
      : bytes(n), base(mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)) {}
  ~sparse_mapping() {
    if (base != MAP_FAILED) munmap(base, bytes);
  }
  sparse_mapping(const sparse_mapping&) = delete;
  sparse_mapping& operator=(const sparse_mapping&) = delete;
};

}  // namespace

TEST_CASE("NaN and Inf in the batch are non_finite statuses on every CPU policy and kernel path, only for their statistic") {
  std::mt19937_64 rng(1401);
  // conv 3x3, grouped (one statistic per group): F = 2*9 = 18 (SIMD feature-major path) and 4*9 = 36 (panels);
  // conv 1x1, independent blocks (the pointwise sampling rule); linear rows, independent blocks.
  for (const index_t C : {4, 8}) {
    const index_t N = 2, H = 6, W = 6, cout = 4;
    conv_deconv_config cfg;
    cfg.geometry = conv_geometry::square(3, 1, 1);
    cfg.groups = 2;
    cfg.layout = block_layout::grouped;
    cfg.block = C / 2;
    cfg.sampling_stride = 1;
    const std::vector<float> clean = normal_floats(std::size_t(N * C * H * W), rng);
    const std::vector<float> w = normal_floats(std::size_t(cout * C / 2 * 9), rng);
    const auto wv = nchw<const float>(w.data(), cout, C / 2, 3, 3);
    for (const float bad : {nan_f, inf_f, -inf_f}) {
      CAPTURE(C);
      CAPTURE(bad);
      std::vector<float> x = clean;
      x[std::size_t(((1 * C + C - 1) * H + 2) * W + 3)] = bad;  // image 1, last channel (group 1)
      for_each_cpu_policy([&](const auto& policy) {
        const auto ref = conv_statistics_step(policy, nchw<const float>(clean.data(), N, C, H, W), wv, {}, cfg);
        const auto r = conv_statistics_step(policy, nchw<const float>(x.data(), N, C, H, W), wv, {}, cfg);
        REQUIRE(r.reports.size() == 2);
        CHECK(r.reports[0].status == isqrt_status::ok);
        CHECK(r.reports[1].status == isqrt_status::non_finite);
        CHECK(!r.statistics.D[1].allFinite());  // a failed statistic is NaN, not a plausible matrix
        CHECK(oracle::rel_err(r.statistics.D[0], ref.statistics.D[0]) < 1e-6);  // group 0 never saw it
      });
    }
  }
  {
    const index_t N = 2, C = 4, H = 5, W = 5;
    conv_deconv_config cfg;
    cfg.geometry = conv_geometry::square(1);
    cfg.layout = block_layout::independent;
    cfg.block = 2;
    cfg.sampling_stride = 1;
    std::vector<float> x = normal_floats(std::size_t(N * C * H * W), rng);
    const std::vector<float> w = normal_floats(3 * 4, rng);
    x[std::size_t(((0 * C + 1) * H + 4) * W + 4)] = nan_f;  // channel 1: block 0
    for_each_cpu_policy([&](const auto& policy) {
      const auto r = conv_statistics_step(policy, nchw<const float>(x.data(), N, C, H, W),
                                          nchw<const float>(w.data(), 3, 4, 1, 1), {}, cfg);
      REQUIRE(r.reports.size() == 2);
      CHECK(r.reports[0].status == isqrt_status::non_finite);
      CHECK(r.reports[1].status == isqrt_status::ok);
    });
  }
  {
    const index_t rows = 50, F = 40;  // linear: independent blocks of 20 (matrix rows, panel path)
    linear_deconv_config cfg;
    cfg.layout = block_layout::independent;
    cfg.block = 20;
    std::vector<float> x = normal_floats(std::size_t(rows * F), rng);
    const std::vector<float> w = normal_floats(std::size_t(3 * F), rng);
    x[std::size_t(17 * F + 33)] = -inf_f;  // feature 33: block 1
    for_each_cpu_policy([&](const auto& policy) {
      const auto r = linear_statistics_step(policy, row_major<const float>(x.data(), rows, F),
                                            row_major<const float>(w.data(), 3, F), {}, cfg);
      REQUIRE(r.reports.size() == 2);
      CHECK(r.reports[0].status == isqrt_status::ok);
      CHECK(r.reports[1].status == isqrt_status::non_finite);
    });
    // whiten (exact float64 eigendecomposition by default): the same status, for the same block
    whiten_options options;
    options.block = 20;
    for_each_cpu_policy([&](const auto& policy) {
      const auto wh = whiten(policy, row_major<const float>(x.data(), rows, F), options);
      REQUIRE(wh.reports.size() == 2);
      CHECK(wh.reports[0].status == isqrt_status::ok);
      CHECK(wh.reports[1].status == isqrt_status::non_finite);
    });
  }
}

TEST_CASE("NaN in a weight or bias is not screened: it reaches only its own output channel's W' and b'") {
  std::mt19937_64 rng(1402);
  const index_t rows = 40, F = 6, cout = 3;
  linear_deconv_config cfg;
  cfg.block = F;
  const std::vector<float> x = normal_floats(std::size_t(rows * F), rng);
  const std::vector<float> w = normal_floats(std::size_t(cout * F), rng), b = normal_floats(std::size_t(cout), rng);
  std::vector<float> w_bad = w, b_bad = b;
  w_bad[std::size_t(1 * F + 2)] = nan_f;  // output channel 1
  b_bad[2] = inf_f;                       // output channel 2
  for_each_cpu_policy([&](const auto& policy) {
    const auto xv = row_major<const float>(x.data(), rows, F);
    const auto ref = linear_statistics_step(policy, xv, row_major<const float>(w.data(), cout, F),
                                            contiguous<const float>(b.data(), cout), cfg);
    const auto r = linear_statistics_step(policy, xv, row_major<const float>(w_bad.data(), cout, F),
                                          contiguous<const float>(b_bad.data(), cout), cfg);
    CHECK(r.reports[0].status == isqrt_status::ok);  // the statistics come from x alone
    CHECK(r.statistics.D[0] == ref.statistics.D[0]);
    for (index_t o = 0; o < cout; ++o)
      for (index_t f = 0; f < F; ++f) {
        const float got = r.weight[std::size_t(o * F + f)];
        if (o == 1) CHECK(std::isnan(got));
        else CHECK(got == ref.weight[std::size_t(o * F + f)]);
      }
    CHECK(r.bias[0] == ref.bias[0]);
    CHECK(std::isnan(r.bias[1]));  // b'_1 = b_1 - W'_1 mu
    CHECK(std::isinf(r.bias[2]));
  });
}

TEST_CASE("non-finite scalar arguments: NaN eps, momentum and tolerance are refused with their value; eps = Inf is non_finite") {
  std::vector<float> x(2 * 4 * 5 * 5, 1.0f), w(4 * 4 * 9, 0.1f);
  const auto xv = nchw<const float>(x.data(), 2, 4, 5, 5);
  const auto wv = nchw<const float>(w.data(), 4, 4, 3, 3);
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(3, 1, 1);
  cfg.eps = std::nan("");
  CHECK_THROWS_WITH_AS(conv_statistics_step(seq, xv, wv, {}, cfg), doctest::Contains("eps must be >= 0, got nan"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(conv_deconv_layer<float>(4, cfg), doctest::Contains("eps must be >= 0, got nan"), invalid_argument);
  whiten_options wo;
  wo.eps = std::nan("");
  CHECK_THROWS_WITH_AS(whiten(seq, row_major<const float>(x.data(), 25, 8), wo), doctest::Contains("eps must be >= 0, got nan"),
                       invalid_argument);
  cfg.eps = 1e-5;
  cfg.isqrt = isqrt_options::converged(std::nan(""), 20);
  CHECK_THROWS_WITH_AS(conv_statistics_step(seq, xv, wv, {}, cfg), doctest::Contains("tolerance must be >= 0, got nan"),
                       invalid_argument);
  cfg.isqrt = isqrt_options::fixed(5);
  layer_options options;
  options.momentum = std::nan("");
  CHECK_THROWS_WITH_AS(conv_deconv_layer<float>(4, cfg, options), doctest::Contains("momentum must be in [0, 1], got nan"),
                       invalid_argument);
  // eps = +Inf passes eps >= 0: Cov + Inf I is not finite, a numerical failure (status, or the layer's policy)
  cfg.eps = std::numeric_limits<double>::infinity();
  std::mt19937_64 rng(1407);
  const std::vector<float> data = normal_floats(x.size(), rng);
  const auto dv = nchw<const float>(data.data(), 2, 4, 5, 5);
  CHECK(conv_statistics_step(seq, dv, wv, {}, cfg).reports[0].status == isqrt_status::non_finite);
  CHECK(conv_statistics_step(par, dv, wv, {}, cfg).reports[0].status == isqrt_status::non_finite);
  conv_deconv_layer<float> layer(4, cfg);
  CHECK_THROWS_WITH_AS(layer.train_step(seq, dv, wv, {}), doctest::Contains("non_finite"), numerical_error);
  CHECK(layer.steps() == 0);
}

TEST_CASE("geometry: dilation and groups below 1 are refused; a kernel larger than the padded image leaves no samples") {
  std::vector<float> x(2 * 4 * 5 * 5, 1.0f), w(4 * 4 * 9, 0.1f), cols(1000);
  const auto xv = nchw<const float>(x.data(), 2, 4, 5, 5);
  const auto wv = nchw<const float>(w.data(), 4, 4, 3, 3);
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(3, 1, 1, 0);
  CHECK_THROWS_WITH_AS(conv_statistics_step(seq, xv, wv, {}, cfg), doctest::Contains("dilation must be >= 1, got 0x0"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(conv_deconv_layer<float>(4, cfg), doctest::Contains("dilation must be >= 1, got 0x0"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(im2col(seq, xv, conv_geometry{3, 3, 1, 1, 0, 0, 1, -2}, row_major(cols.data(), 18, 36)),
                       doctest::Contains("dilation must be >= 1, got 1x-2"), invalid_argument);
  cfg.geometry = conv_geometry::square(3, 1, 1);
  cfg.groups = 0;
  CHECK_THROWS_WITH_AS(conv_statistics_step(seq, xv, wv, {}, cfg), doctest::Contains("groups must be >= 1, got 0"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(conv_deconv_layer<float>(4, cfg), doctest::Contains("groups must be >= 1, got 0"), invalid_argument);
  // 3x3 dilated by 3 reaches 7 pixels: no output position in a 5x5 image without padding
  cfg.groups = 1;
  cfg.geometry = conv_geometry::square(3, 1, 0, 3);
  CHECK_THROWS_WITH_AS(conv_statistics_step(seq, xv, wv, {}, cfg), doctest::Contains("statistics need >= 2 samples, got 0"),
                       invalid_argument);
  conv_deconv_layer<float> layer(4, cfg);
  CHECK_THROWS_WITH_AS(layer.train_step(par, xv, wv, {}), doctest::Contains("statistics need >= 2 samples, got 0"),
                       invalid_argument);
  CHECK(layer.steps() == 0);
}

TEST_CASE("an empty batch given to a conv or linear layer is an argument error, and the state does not change") {
  std::vector<float> x(2 * 4 * 5 * 5, 1.0f), w(3 * 4 * 9, 0.1f);
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(3, 1, 1);
  conv_deconv_layer<float> conv(4, cfg);
  const auto before = conv.state();
  CHECK_THROWS_WITH_AS(conv.train_step(par, nchw<const float>(x.data(), 0, 4, 5, 5), nchw<const float>(w.data(), 3, 4, 3, 3), {}),
                       doctest::Contains("statistics need >= 2 samples, got 0"), invalid_argument);
  CHECK(conv.state() == before);
  linear_deconv_config lcfg;
  lcfg.block = 4;
  linear_deconv_layer<float> linear(4, lcfg);
  const auto lbefore = linear.state();
  for (const index_t rows : {0, 1}) {
    CAPTURE(rows);
    CHECK_THROWS_WITH_AS(linear.train_step(seq, row_major<const float>(x.data(), rows, 4), row_major<const float>(w.data(), 3, 4), {}),
                         doctest::Contains(("statistics need >= 2 samples, got " + std::to_string(rows)).c_str()), invalid_argument);
  }
  CHECK(linear.state() == lbefore);
}

TEST_CASE("offsets near 2^31: the SIMD kernel's int32 gather offsets stop short of 2^31, beyond it the index_t path reads right") {
  // One 1 x 1 x 6 x 6 image whose rows lie `row_stride` floats apart in a sparse mapping. With the
  // padding, the first and last sampled rows are gathered through offsets of up to 5 row strides
  // from the image: about 1.79e9 in the first case (the int32 path), 2^31 + 8 in the second, which
  // int32 cannot hold (the SIMD kernel must take its index_t path there).
  const index_t H = 6, W = 6;
  const conv_geometry g = conv_geometry::square(3, 1, 1);
  const block_plan plan = make_block_plan(block_layout::interleaved_shared, 1, 9, 1);
  std::mt19937_64 rng(1403);
  const std::vector<float> values = normal_floats(std::size_t(H * W), rng);
  const auto compact = nchw<const float>(values.data(), 1, 1, H, W);
  const auto expected = block_moments(seq, patch_sampler<float>(compact, g, 1), plan);
  for (const index_t row_stride : {(index_t(1) << 31) / 6 - 8, (index_t(1) << 31) / 5 + 2}) {
    CAPTURE(row_stride);
    const index_t elements = (H - 1) * row_stride + W;
    sparse_mapping memory(std::size_t(elements) * sizeof(float));
    REQUIRE_MESSAGE(memory.base != MAP_FAILED, "mmap of ", memory.bytes, " bytes (MAP_NORESERVE) failed");
    float* base = static_cast<float*>(memory.base);
    for (index_t y = 0; y < H; ++y)
      for (index_t x = 0; x < W; ++x) base[y * row_stride + x] = values[std::size_t(y * W + x)];
    const image_view<const float> far{base, {1, 1, H, W}, {elements, 1, row_stride, 1}};
    const patch_sampler<float> sampler(far, g, 1);
    const bool int32_path = (H - 1) * row_stride + W < (index_t(1) << 31) - 1;
    CHECK(detail::simd::feature_major(sampler, plan) == int32_path);
    for (const auto& m : {block_moments(seq, sampler, plan), block_moments(omp_policy{{}, 2}, sampler, plan),
                          block_moments(par, sampler, plan)}) {
      REQUIRE(m.size() == 1);
      CHECK(m[0].count() == expected[0].count());
      CHECK(oracle::rel_err(m[0].mean(), expected[0].mean()) < 1e-6);
      // (only the lower triangle of a scatter is meaningful)
      CHECK(oracle::rel_err(oracle::MatrixXd(m[0].scatter().triangularView<Eigen::Lower>()),
                            oracle::MatrixXd(expected[0].scatter().triangularView<Eigen::Lower>())) < 1e-5);
    }
  }
}

TEST_CASE("input views with negative or zero strides are read as the values they describe") {
  std::mt19937_64 rng(1404);
  const index_t N = 2, C = 3, H = 7, W = 7, cout = 4, n = N * C * H * W;
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(3, 1, 1);
  cfg.sampling_stride = 1;
  const std::vector<float> x = normal_floats(std::size_t(n), rng), w = normal_floats(std::size_t(cout * C * 9), rng);
  const auto wv = nchw<const float>(w.data(), cout, C, 3, 3);
  // every axis reversed in memory: element (i, c, y, z) of the view is x's
  const std::vector<float> reversed(x.rbegin(), x.rend());
  const image_view<const float> backwards{reversed.data() + n - 1, {N, C, H, W}, {-C * H * W, -H * W, -W, -1}};
  const std::vector<float> wrev(w.rbegin(), w.rend());
  const image_view<const float> wback{wrev.data() + w.size() - 1, {cout, C, 3, 3}, {-C * 9, -9, -3, -1}};
  // image 0 twice: stride 0 on the batch axis, against an explicit copy
  std::vector<float> twice(x.begin(), x.begin() + C * H * W);
  twice.insert(twice.end(), x.begin(), x.begin() + C * H * W);
  const image_view<const float> broadcast{x.data(), {N, C, H, W}, {0, H * W, W, 1}};
  for_each_cpu_policy([&](const auto& policy) {
    const auto ref = conv_statistics_step(policy, nchw<const float>(x.data(), N, C, H, W), wv, {}, cfg);
    const auto flipped = conv_statistics_step(policy, backwards, wback, {}, cfg);
    CHECK(flipped.reports[0].status == isqrt_status::ok);
    CHECK(oracle::rel_err(flipped.statistics.D[0], ref.statistics.D[0]) < 1e-6);
    CHECK(rel(flipped.weight, ref.weight) < 1e-6);
    CHECK(rel(flipped.bias, ref.bias) < 1e-6);
    const auto copy = conv_statistics_step(policy, nchw<const float>(twice.data(), N, C, H, W), wv, {}, cfg);
    const auto shared = conv_statistics_step(policy, broadcast, wv, {}, cfg);
    CHECK(oracle::rel_err(shared.statistics.D[0], copy.statistics.D[0]) < 1e-6);
    CHECK(rel(shared.weight, copy.weight) < 1e-6);
  });
  // linear rows in reverse order (negative row stride): the same statistics
  const index_t rows = 30, F = 8;
  linear_deconv_config lcfg;
  lcfg.block = F;
  const std::vector<float> lx = normal_floats(std::size_t(rows * F), rng), lw = normal_floats(std::size_t(2 * F), rng);
  const matrix_view<const float> up{lx.data() + (rows - 1) * F, {rows, F}, {-F, 1}};
  for_each_cpu_policy([&](const auto& policy) {
    const auto ref = linear_statistics_step(policy, row_major<const float>(lx.data(), rows, F),
                                            row_major<const float>(lw.data(), 2, F), {}, lcfg);
    const auto got = linear_statistics_step(policy, up, row_major<const float>(lw.data(), 2, F), {}, lcfg);
    CHECK(oracle::rel_err(got.statistics.mean[0], ref.statistics.mean[0]) < 1e-6);
    CHECK(oracle::rel_err(got.statistics.D[0], ref.statistics.D[0]) < 1e-6);
  });
}

TEST_CASE("pointers off SIMD alignment: inputs and outputs 4 or 12 bytes past a 64-byte boundary give the aligned results") {
  std::mt19937_64 rng(1405);
  for (const index_t C : {2, 4}) {  // F = 18 (the SIMD feature-major path) and 36 (panels)
    CAPTURE(C);
    const index_t N = 2, H = 6, W = 6, cout = 3;
    conv_deconv_config cfg;
    cfg.geometry = conv_geometry::square(3, 1, 1);
    cfg.sampling_stride = 1;
    const block_plan plan = conv_statistics_plan(C, cfg);
    const index_t S = plan.count(), F = plan.features();
    const std::vector<float> x = normal_floats(std::size_t(N * C * H * W), rng);
    const std::vector<float> w = normal_floats(std::size_t(cout * C * 9), rng), b = normal_floats(std::size_t(cout), rng);
    // mu, D, W' and b' of the writing form, every input and output `shift` floats past 64 bytes
    const auto run = [&](std::size_t shift) {
      floats_at xs(x.size(), shift), ws(w.size(), shift), bs(b.size(), shift);
      CHECK(reinterpret_cast<std::uintptr_t>(xs.data) % 64 == shift * sizeof(float));
      std::copy(x.begin(), x.end(), xs.data);
      std::copy(w.begin(), w.end(), ws.data);
      std::copy(b.begin(), b.end(), bs.data);
      floats_at mean(std::size_t(S * F), shift), D(std::size_t(S * F * F), shift), wo(w.size(), shift), bo(b.size(), shift);
      std::vector<isqrt_report> reports(static_cast<std::size_t>(S));
      const statistics_step_outputs<float, 4> out{row_major(mean.data, S, F), {D.data, {S, F, F}, {F * F, F, 1}},
                                                  nchw(wo.data, cout, C, 3, 3), contiguous(bo.data, cout),
                                                  contiguous(reports.data(), S)};
      conv_statistics_step(par, nchw<const float>(xs.data, N, C, H, W), nchw<const float>(ws.data, cout, C, 3, 3),
                           contiguous<const float>(bs.data, cout), cfg, out);
      for (const auto& r : reports) CHECK(r.status == isqrt_status::ok);
      return std::vector<std::vector<float>>{{mean.data, mean.data + S * F}, {D.data, D.data + S * F * F},
                                             {wo.data, wo.data + w.size()}, {bo.data, bo.data + b.size()}};
    };
    const auto aligned = run(0);
    for (const std::size_t shift : {1, 3}) {
      CAPTURE(shift);
      const auto shifted = run(shift);
      for (std::size_t k = 0; k < aligned.size(); ++k) CHECK(rel(shifted[k], aligned[k]) < 1e-6);
    }
  }
  // linear rows (F = 40, the SIMD panel path for matrix rows) and apply_whitening, in and out shifted
  const index_t rows = 64, F = 40;
  const std::vector<float> x = normal_floats(std::size_t(rows * F), rng);
  const auto whitened = [&](std::size_t shift) {
    floats_at xs(x.size(), shift), out(x.size(), shift);
    std::copy(x.begin(), x.end(), xs.data);
    const auto w = whiten(par, row_major<const float>(xs.data, rows, F), whiten_options{1e-3, isqrt_options::fixed(8)});
    CHECK(w.reports[0].status == isqrt_status::ok);
    apply_whitening(par, w.statistics, row_major<const float>(xs.data, rows, F), row_major(out.data, rows, F));
    return std::vector<float>(out.data, out.data + x.size());
  };
  const auto aligned = whitened(0);
  CHECK(rel(whitened(1), aligned) < 1e-5);
  CHECK(rel(whitened(3), aligned) < 1e-5);
}

TEST_CASE("a layer state in device memory is refused by the host accessors, checkpoints and the CPU policies' steps") {
  std::mt19937_64 rng(1406);
  linear_deconv_config cfg;
  cfg.block = 6;
  linear_deconv_layer<float> layer(6, cfg);
  const std::vector<float> x = normal_floats(64 * 6, rng), w = normal_floats(3 * 6, rng);
  const auto xv = row_major<const float>(x.data(), 64, 6);
  const auto wv = row_major<const float>(w.data(), 3, 6);
  layer.train_step(seq, xv, wv, {});
  const auto checkpoint = layer.state();
  std::vector<float> mean(6), D(36);
  std::vector<index_t> counters(3);
  const running_state_view<float> device{row_major(mean.data(), 1, 6), {D.data(), {1, 6, 6}, {36, 6, 1}}, {},
                                         contiguous(counters.data(), 3), {}};
  layer.attach_state(device_state_policy{}, device);
  const auto refused = doctest::Contains("the layer's state is in device memory");
  CHECK_THROWS_WITH_AS(layer.train_step(seq, xv, wv, {}), refused, invalid_argument);
  CHECK_THROWS_WITH_AS(layer.train_step(par, xv, wv, {}), refused, invalid_argument);
  CHECK_THROWS_WITH_AS(layer.eval(seq, wv, {}), refused, invalid_argument);
  CHECK_THROWS_WITH_AS(layer.state(), refused, invalid_argument);
  CHECK_THROWS_WITH_AS(layer.load_state(checkpoint), refused, invalid_argument);
  CHECK_THROWS_WITH_AS(layer.running(), refused, invalid_argument);
  CHECK_THROWS_WITH_AS(layer.steps(), refused, invalid_argument);
  CHECK_THROWS_WITH_AS(layer.diagnostic(), refused, invalid_argument);
  std::vector<float> mean2(6), D2(36);
  std::vector<index_t> counters2(3);
  CHECK_THROWS_WITH_AS(layer.attach_state({row_major(mean2.data(), 1, 6), {D2.data(), {1, 6, 6}, {36, 6, 1}}, {},
                                           contiguous(counters2.data(), 3), {}}),
                       refused, invalid_argument);
  CHECK(counters == std::vector<index_t>(3, 0));  // nothing was written through the device views
}
