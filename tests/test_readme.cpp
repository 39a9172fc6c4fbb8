// SPDX-License-Identifier: MIT
// The README's C++ snippets, run. The lines between "README snippet begin/end" markers are the
// README's (tests/readme_snippets.py checks that README.md holds them verbatim); they run on a mock
// of the part of at::Tensor they use, in contiguous, channels_last and sliced memory, on post-ReLU
// activations with a dead channel (N = 4, 12x12, C = 64: the case issue 9 found failing).
#include <doctest/doctest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <stdexcept>
#include <vector>

#include <netdeconv/netdeconv.hpp>

#include "oracle.hpp"

namespace mock {

/// data_ptr<T>(), sizes() and strides() (in elements) of a float tensor, as at::Tensor has them.
struct tensor {
  std::shared_ptr<std::vector<float>> storage;
  std::int64_t offset = 0;
  std::vector<std::int64_t> shape, stride;

  template <class T>
  T* data_ptr() const {
    return storage->data() + offset;
  }
  const std::vector<std::int64_t>& sizes() const { return shape; }
  const std::vector<std::int64_t>& strides() const { return stride; }
  float& at(std::int64_t i0, std::int64_t i1 = 0, std::int64_t i2 = 0, std::int64_t i3 = 0) const {
    const std::int64_t idx[4] = {i0, i1, i2, i3};
    std::int64_t o = offset;
    for (std::size_t a = 0; a < shape.size(); ++a) o += idx[a] * stride[a];
    return (*storage)[std::size_t(o)];
  }
};

/// A rank-4 (N, C, H, W) tensor in memory layout 0 contiguous, 1 channels_last, 2 the slice
/// big[:, 1:, 1:H+1, ::2] of a contiguous (N, C+1, H+2, 2W) tensor; rank-1 tensors are contiguous
/// (layout 0) or every other entry of a longer one.
inline tensor make(std::vector<std::int64_t> shape, int layout) {
  tensor t;
  t.shape = shape;
  if (shape.size() == 1) {
    t.storage = std::make_shared<std::vector<float>>(std::size_t(2 * shape[0] + 1));
    t.stride = {layout == 0 ? 1 : 2};
    return t;
  }
  const std::int64_t N = shape[0], C = shape[1], H = shape[2], W = shape[3];
  if (layout == 0) {
    t.storage = std::make_shared<std::vector<float>>(std::size_t(N * C * H * W));
    t.stride = {C * H * W, H * W, W, 1};
  } else if (layout == 1) {
    t.storage = std::make_shared<std::vector<float>>(std::size_t(N * C * H * W));
    t.stride = {H * W * C, 1, W * C, C};
  } else {
    const std::int64_t Cb = C + 1, Hb = H + 2, Wb = 2 * W;
    t.storage = std::make_shared<std::vector<float>>(std::size_t(N * Cb * Hb * Wb), -7.0f);
    t.stride = {Cb * Hb * Wb, Hb * Wb, Wb, 2};
    t.offset = Hb * Wb + Wb;
  }
  return t;
}

}  // namespace mock

namespace {

netdeconv::statistics_step_result<float> readme_statistics_step(const mock::tensor& x, const mock::tensor& w,
                                                                const mock::tensor& b) {
  // README snippet begin
  netdeconv::conv_deconv_config cfg;
  cfg.geometry = netdeconv::conv_geometry::square(/*kernel*/ 3, /*stride*/ 1, /*pad*/ 1);
  auto step = netdeconv::conv_statistics_step(
      netdeconv::par,
      netdeconv::strided<const float, 4>(x.data_ptr<float>(), x.sizes(), x.strides()),  // any layout
      netdeconv::strided<const float, 4>(w.data_ptr<float>(), w.sizes(), w.strides()),
      netdeconv::strided<const float, 1>(b.data_ptr<float>(), b.sizes(), b.strides()),  // or {} for no bias
      cfg);
  for (const auto& report : step.reports)  // a failed block has NaN statistics: check before use
    if (report.status != netdeconv::isqrt_status::ok) throw std::runtime_error("netdeconv statistics failed");
  // step.weight (OIHW) and step.bias are W' and b': run the framework's own conv with them.
  // step.statistics.mean / .D are mu and D per block; step.reports[i] = {iterations, residual, status}.
  // README snippet end
  return step;
}

struct layer_outputs {
  netdeconv::layer_step<float> wb;
  netdeconv::folded_weights<float> ev;
  std::vector<float> exported_weight, exported_bias;
  netdeconv::step_outcome outcome;
};

layer_outputs readme_layer(const mock::tensor& input, const mock::tensor& weight, const mock::tensor& bias,
                           const mock::tensor& weight_out, const mock::tensor& bias_out) {
  netdeconv::conv_deconv_config cfg;
  cfg.geometry = netdeconv::conv_geometry::square(3, 1, 1);
  // README snippet begin
  const auto x = netdeconv::strided<const float, 4>(input.data_ptr<float>(), input.sizes(), input.strides());
  const auto W = netdeconv::strided<const float, 4>(weight.data_ptr<float>(), weight.sizes(), weight.strides());
  const auto b = netdeconv::strided<const float, 1>(bias.data_ptr<float>(), bias.sizes(), bias.strides());
  const auto W_out = netdeconv::strided<float, 4>(weight_out.data_ptr<float>(), weight_out.sizes(), weight_out.strides());
  const auto b_out = netdeconv::strided<float, 1>(bias_out.data_ptr<float>(), bias_out.sizes(), bias_out.strides());

  netdeconv::conv_deconv_layer<float> layer(/*in_channels*/ 64, cfg);         // reference-compatible
  auto wb = layer.train_step(netdeconv::par, x, W, b);   // training forward: conv(x, wb.weight, wb.bias)
  auto ev = layer.eval(netdeconv::par, W, b);            // evaluation: an ordinary conv
  layer.export_weights(netdeconv::par, W, b, W_out, b_out);   // plain conv weights for any runtime
  std::vector<std::uint8_t> ckpt = layer.state();        // versioned, little-endian, CRC-32
  layer.load_state(ckpt);                                // refuses corrupt or mismatched checkpoints
  layer.diagnostic();                                    // last step: outcome, isqrt reports, failures so far
  // README snippet end
  layer_outputs out{std::move(wb), std::move(ev), {}, {}, layer.diagnostic().outcome};
  for (std::int64_t o = 0; o < W_out.shape[0]; ++o) {
    out.exported_bias.push_back(b_out(o));
    for (std::int64_t c = 0; c < W_out.shape[1]; ++c)
      for (std::int64_t k = 0; k < 9; ++k) out.exported_weight.push_back(W_out(o, c, k / 3, k % 3));
  }
  return out;
}

constexpr std::int64_t N = 4, C = 64, H = 12, Cout = 8;

/// Post-ReLU input with channel 5 dead, the weights and the bias, in the given layout.
struct inputs {
  mock::tensor x, w, b;
  inputs(int layout, std::uint64_t seed) : x(mock::make({N, C, H, H}, layout)), w(mock::make({Cout, C, 3, 3}, layout)),
                                           b(mock::make({Cout}, layout == 0 ? 0 : 1)) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t y = 0; y < H; ++y)
          for (std::int64_t xx = 0; xx < H; ++xx) x.at(n, c, y, xx) = c == 5 ? 0.0f : std::max(0.0f, normal(rng) + 0.2f);
    for (std::int64_t o = 0; o < Cout; ++o) {
      b.at(o) = normal(rng);
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t k = 0; k < 9; ++k) w.at(o, c, k / 3, k % 3) = normal(rng);
    }
  }
};

/// W' and b' of the float64 statistics step on contiguous copies of the inputs.
std::vector<double> reference_weights(const inputs& in, std::vector<double>& bias) {
  std::vector<double> x(std::size_t(N * C * H * H)), w(std::size_t(Cout * C * 9));
  bias.assign(std::size_t(Cout), 0.0);
  std::size_t i = 0;
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t y = 0; y < H; ++y)
        for (std::int64_t xx = 0; xx < H; ++xx) x[i++] = in.x.at(n, c, y, xx);
  i = 0;
  for (std::int64_t o = 0; o < Cout; ++o) {
    bias[std::size_t(o)] = in.b.at(o);
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t k = 0; k < 9; ++k) w[i++] = in.w.at(o, c, k / 3, k % 3);
  }
  netdeconv::conv_deconv_config cfg;
  cfg.geometry = netdeconv::conv_geometry::square(3, 1, 1);
  auto step = netdeconv::conv_statistics_step(netdeconv::seq, netdeconv::nchw<const double>(x.data(), N, C, H, H),
                                              netdeconv::nchw<const double>(w.data(), Cout, C, 3, 3),
                                              netdeconv::contiguous<const double>(bias.data(), Cout), cfg);
  bias = step.bias;
  return step.weight;
}

std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

}  // namespace

TEST_CASE("the README's statistics-step snippet is correct on contiguous, channels_last and sliced tensors") {
  for (const int layout : {0, 1, 2}) {
    CAPTURE(layout);
    const inputs in(layout, 91);  // the same values in every layout
    std::vector<double> ref_bias;
    const auto ref_weight = reference_weights(in, ref_bias);
    const auto step = readme_statistics_step(in.x, in.w, in.b);
    // float32 against float64 of the same 5-step iteration on a covariance with a null space
    // filled by eps only: measured ~1e-6 (tests/test_statistics_step.cpp)
    CHECK(oracle::rel_err(as_double(step.weight), ref_weight) < 1e-5);
    CHECK(oracle::rel_err(as_double(step.bias), ref_bias) < 1e-5);
  }
}

TEST_CASE("the README's layer snippet runs and writes the same weights on contiguous, channels_last and sliced tensors") {
  for (const int layout : {0, 1, 2}) {
    CAPTURE(layout);
    const inputs in(layout, 92);
    const auto w_out = mock::make({Cout, C, 3, 3}, layout), b_out = mock::make({Cout}, layout == 0 ? 0 : 1);
    std::vector<double> ref_bias;
    const auto ref_weight = reference_weights(in, ref_bias);
    const auto out = readme_layer(in.x, in.w, in.b, w_out, b_out);
    CHECK(out.outcome == netdeconv::step_outcome::computed);
    CHECK(oracle::rel_err(as_double(out.wb.weight), ref_weight) < 1e-5);
    CHECK(oracle::rel_err(as_double(out.wb.bias), ref_bias) < 1e-5);
    // after one step from (0, I) with momentum 0.1 the running statistics are not the batch's:
    // export writes eval()'s weights, in the caller's layout
    CHECK(out.exported_weight == out.ev.weight);
    CHECK(out.exported_bias == out.ev.bias);
    CHECK(oracle::rel_err(as_double(out.ev.weight), ref_weight) > 0.1);
  }
}
