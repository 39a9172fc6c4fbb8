// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <netdeconv/eigen.hpp>
#include <netdeconv/fold.hpp>

#include "oracle.hpp"

using namespace netdeconv;

namespace {

struct fold_case {
  block_layout layout;
  index_t C, block, groups;
};

/// Random statistics for a plan: means and symmetric D (SPD, so D = D^T as the iteration's limit).
template <class T>
block_statistics<T> random_statistics(const block_plan& plan, std::mt19937_64& rng) {
  block_statistics<T> stats{plan, {}, {}};
  std::normal_distribution<double> normal;
  for (index_t s = 0; s < plan.count(); ++s) {
    Eigen::Matrix<T, Eigen::Dynamic, 1> mu(plan.features());
    for (auto& v : mu) v = T(normal(rng));
    stats.mean.push_back(mu);
    stats.D.push_back(oracle::random_spd(plan.features(), 50, rng).cast<T>());
  }
  return stats;
}

/// y = Z W^T + b where Z is the whitened patch matrix: Z[r, piece] = (X[r, piece] - mu_s) D_s for each piece
/// (s, g) of patch columns (oracle::piece_columns, from the layouts' definition).
/// W is expanded to a dense (Cout, C*K) matrix with zeros outside each output's group.
template <class T>
std::vector<double> conv_on_whitened_patches(const oracle::MatrixXd& X, const block_statistics<T>& stats,
                                             const std::vector<double>& W, const std::vector<double>& b, index_t cout,
                                             index_t Ho, index_t Wo) {
  const block_plan& plan = stats.plan;
  oracle::MatrixXd Z = oracle::MatrixXd::Zero(X.rows(), X.cols());
  const auto pieces = oracle::piece_columns(plan);
  for (std::size_t s = 0; s < pieces.size(); ++s)
    for (index_t g = 0; g < pieces[s].rows(); ++g)
      for (index_t r = 0; r < X.rows(); ++r) {
        const auto col = [&](index_t f) { return index_t(pieces[s](g, f)); };
        Eigen::RowVectorXd piece(pieces[s].cols());
        for (index_t f = 0; f < piece.size(); ++f) piece[f] = X(r, col(f)) - double(stats.mean[s][f]);
        const Eigen::RowVectorXd white = piece * stats.D[s].template cast<double>();
        for (index_t f = 0; f < piece.size(); ++f) Z(r, col(f)) = white[f];
      }
  const index_t group_cols = X.cols() / plan.groups;
  oracle::MatrixXd Wd = oracle::MatrixXd::Zero(cout, X.cols());
  for (index_t o = 0; o < cout; ++o)
    for (index_t j = 0; j < group_cols; ++j) Wd(o, (o / (cout / plan.groups)) * group_cols + j) = W[o * group_cols + j];
  const oracle::MatrixXd Y = Z * Wd.transpose();  // rows (n, oy, ox), columns o
  std::vector<double> y(Y.size());
  const index_t per_image = Ho * Wo;
  for (index_t r = 0; r < Y.rows(); ++r)
    for (index_t o = 0; o < cout; ++o)
      y[((r / per_image) * cout + o) * per_image + r % per_image] = Y(r, o) + (b.empty() ? 0.0 : b[o]);
  return y;
}

}  // namespace

TEST_CASE_TEMPLATE("conv(x, W', b') equals the conv of the whitened patches, for every layout", T, float, double) {
  std::mt19937_64 rng(41);
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;  // a few float32 roundings per output
  const fold_case cases[] = {
      {block_layout::interleaved_shared, 6, 64, 1}, {block_layout::interleaved_shared, 8, 2, 1},
      {block_layout::interleaved_shared, 6, 4, 1},  {block_layout::grouped, 6, 64, 2},
      {block_layout::grouped, 6, 1, 6},             {block_layout::independent, 6, 2, 1},
      {block_layout::independent, 8, 2, 2},         {block_layout::independent, 4, 1, 4},
  };
  for (const auto& fc : cases)
    for (const bool with_bias : {true, false}) {
      const conv_geometry g{3, 2, 1, 2, 1, 0, 1, 2};
      const index_t cout = 2 * fc.groups, N = 2, H = 7, W = 8;
      CAPTURE(fc.layout);
      CAPTURE(fc.groups);
      CAPTURE(with_bias);
      const block_plan plan = make_block_plan(fc.layout, fc.C, g.kernel_area(), fc.block, fc.groups);
      const auto stats = random_statistics<T>(plan, rng);
      oracle::image<T> x(N, fc.C, H, W, 1);
      oracle::fill_normal(x, rng);
      std::normal_distribution<double> normal;
      std::vector<T> weight(cout * (fc.C / fc.groups) * g.kernel_area()), bias(with_bias ? cout : 0);
      for (auto& v : weight) v = T(normal(rng));
      for (auto& v : bias) v = T(normal(rng));
      const std::vector<T> weight_before = weight;
      std::vector<T> folded(weight.size()), folded_bias(cout, T(123));
      fold(seq, stats, nchw<const T>(weight.data(), cout, fc.C / fc.groups, g.kernel_h, g.kernel_w),
           with_bias ? contiguous<const T>(bias.data(), cout) : vector_view<const T>{},
           nchw(folded.data(), cout, fc.C / fc.groups, g.kernel_h, g.kernel_w), contiguous(folded_bias.data(), cout));
      CHECK(weight == weight_before);
      const std::vector<double> wd(weight.begin(), weight.end()), bd(bias.begin(), bias.end());
      const std::vector<double> fd(folded.begin(), folded.end()), fbd(folded_bias.begin(), folded_bias.end());
      const auto ref = conv_on_whitened_patches(oracle::im2col(x, g), stats, wd, bd, cout, g.out_h(H), g.out_w(W));
      const auto got = oracle::conv2d(x, fd, fbd, cout, g, fc.groups);
      CHECK(oracle::rel_err(got, ref) < tol);
    }
}

TEST_CASE("linear folding: W' = W viewed as (Cout*Fin/B, B) times D, for shared and independent blocks") {
  std::mt19937_64 rng(42);
  const index_t cout = 3, fin = 8, rows = 5;
  for (const auto layout : {block_layout::contiguous_shared, block_layout::independent}) {
    CAPTURE(layout);
    const block_plan plan = make_block_plan(layout, fin, 1, 4);
    const auto stats = random_statistics<double>(plan, rng);
    const Eigen::MatrixXd Wm = Eigen::MatrixXd::Random(cout, fin), X = Eigen::MatrixXd::Random(rows, fin);
    const Eigen::VectorXd b = Eigen::VectorXd::Random(cout);
    Eigen::MatrixXd Wf(cout, fin);
    Eigen::VectorXd bf(cout);
    fold(seq, stats, view(Wm), contiguous<const double>(b.data(), cout), view_mut(Wf), contiguous(bf.data(), cout));
    // explicit: whiten each chunk of B features of every row, then the ordinary linear layer
    Eigen::MatrixXd Z(rows, fin);
    for (index_t c = 0; c < 2; ++c) {
      const index_t s = layout == block_layout::independent ? c : 0;
      Z.middleCols(4 * c, 4) = (X.middleCols(4 * c, 4).rowwise() - stats.mean[s].transpose()) * stats.D[s];
    }
    const Eigen::MatrixXd ref = (Z * Wm.transpose()).rowwise() + b.transpose();
    const Eigen::MatrixXd got = (X * Wf.transpose()).rowwise() + bf.transpose();
    CHECK(oracle::rel_err(got, ref) < 1e-13);
  }
}

TEST_CASE("fold rejects weights and statistics that do not fit the plan") {
  const block_plan plan = make_block_plan(block_layout::grouped, 4, 9, 1, 2);
  std::mt19937_64 rng(43);
  auto stats = random_statistics<float>(plan, rng);
  std::vector<float> w(4 * 2 * 9), wo(w.size()), b(4), bo(4);
  const auto W = nchw<const float>(w.data(), 4, 2, 3, 3);
  const auto Wo = nchw(wo.data(), 4, 2, 3, 3);
  CHECK_NOTHROW(fold(seq, stats, W, vector_view<const float>{}, Wo, contiguous(bo.data(), 4)));
  CHECK_THROWS_WITH_AS(fold(seq, stats, nchw<const float>(w.data(), 4, 4, 3, 3), {}, Wo, contiguous(bo.data(), 4)),
                       doctest::Contains("weight has 4 input channels per group, the plan needs C/groups = 4/2"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(fold(seq, stats, nchw<const float>(w.data(), 3, 2, 3, 3), {}, Wo, contiguous(bo.data(), 4)),
                       doctest::Contains("Cout=3"), invalid_argument);
  CHECK_THROWS_WITH_AS(fold(seq, stats, nchw<const float>(w.data(), 4, 2, 2, 3), {}, Wo, contiguous(bo.data(), 4)),
                       doctest::Contains("kernel 2x3 does not match the plan's kernel area 9"), invalid_argument);
  CHECK_THROWS_WITH_AS(fold(seq, stats, W, contiguous<const float>(b.data(), 3), Wo, contiguous(bo.data(), 4)),
                       doctest::Contains("bias has 3 entries"), invalid_argument);
  CHECK_THROWS_WITH_AS(fold(seq, stats, W, {}, Wo, contiguous(bo.data(), 2)), doctest::Contains("bias_out has 2"),
                       invalid_argument);
  stats.D.pop_back();
  CHECK_THROWS_WITH_AS(fold(seq, stats, W, {}, Wo, contiguous(bo.data(), 4)), doctest::Contains("the plan needs 2"),
                       invalid_argument);
}

// ---- SIMD fast path (one GEMM per statistic) against the sequential oracle ----

TEST_CASE_TEMPLATE("SIMD fold equals the sequential fold for every layout, with and without bias, 1 and 2 threads", T, float,
                   double) {
  std::mt19937_64 rng(71);
  const fold_case cases[] = {{block_layout::interleaved_shared, 8, 4, 1}, {block_layout::interleaved_shared, 6, 4, 1},
                             {block_layout::grouped, 6, 64, 2},           {block_layout::grouped, 4, 1, 4},
                             {block_layout::independent, 8, 2, 1},        {block_layout::independent, 9, 3, 3},
                             {block_layout::interleaved_shared, 5, 64, 1}};
  std::normal_distribution<double> normal;
  for (const auto& fc : cases)
    for (const index_t k : {1, 3})
      for (const bool with_bias : {true, false}) {
        CAPTURE(fc.layout);
        CAPTURE(fc.C);
        CAPTURE(k);
        const block_plan plan = make_block_plan(fc.layout, fc.C, k * k, fc.block, fc.groups);
        const auto stats = random_statistics<T>(plan, rng);
        const index_t cout = 2 * fc.groups + 1 + (fc.groups > 1 ? fc.groups : 0);
        const index_t co = cout - cout % fc.groups;
        std::vector<T> w(co * (fc.C / fc.groups) * k * k), b(co);
        for (auto& v : w) v = T(normal(rng));
        for (auto& v : b) v = T(normal(rng));
        const auto wv = nchw<const T>(w.data(), co, fc.C / fc.groups, k, k);
        const auto bv = with_bias ? contiguous<const T>(b.data(), co) : vector_view<const T>{};
        const auto ref = fold(seq, stats, wv, bv);
        for (const int threads : {1, 2}) {
          const auto got = fold(simd_threads(threads), stats, wv, bv);
          const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
          CHECK(oracle::rel_err(Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(got.weight.data(), got.weight.size()),
                                Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(ref.weight.data(), ref.weight.size())) < tol);
          CHECK(oracle::rel_err(Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(got.bias.data(), got.bias.size()),
                                Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(ref.bias.data(), ref.bias.size())) < tol);
        }
      }
}

TEST_CASE("SIMD fold: several row tiles per thread, strided (OHWI) weight and output views") {
  // interleaved_shared with B = 1: F = 9, G = C = 128 pieces per output, 96 * 128 = 12288 rows,
  // more than one tile (65536 / 9 rows) per thread at 1 thread.
  std::mt19937_64 rng(72);
  std::normal_distribution<double> normal;
  const index_t C = 128, cout = 96;
  const block_plan plan = make_block_plan(block_layout::interleaved_shared, C, 9, 1);
  const auto stats = random_statistics<float>(plan, rng);
  std::vector<float> w(cout * C * 9), b(cout);
  for (auto& v : w) v = float(normal(rng));
  for (auto& v : b) v = float(normal(rng));
  const auto wv = nhwc<const float>(w.data(), cout, 3, 3, C);
  const auto ref = fold(seq, stats, wv, contiguous<const float>(b.data(), cout));
  for (const int threads : {1, 2}) {
    std::vector<float> out(w.size(), 0.0f), out_bias(cout, 0.0f);
    fold(simd_threads(threads), stats, wv, contiguous<const float>(b.data(), cout), nhwc(out.data(), cout, 3, 3, C),
         contiguous(out_bias.data(), cout));
    const auto got = nhwc<const float>(out.data(), cout, 3, 3, C);
    double diff = 0, norm = 0;
    for (index_t o = 0; o < cout; ++o)
      for (index_t c = 0; c < C; ++c)
        for (index_t k = 0; k < 9; ++k) {
          const double r = ref.weight[((o * C + c) * 3 + k / 3) * 3 + k % 3];
          diff += (got(o, c, k / 3, k % 3) - r) * (got(o, c, k / 3, k % 3) - r);
          norm += r * r;
        }
    CHECK(std::sqrt(diff / norm) < 1e-5);
    CHECK(oracle::rel_err(Eigen::Map<const Eigen::VectorXf>(out_bias.data(), cout),
                          Eigen::Map<const Eigen::VectorXf>(ref.bias.data(), cout)) < 1e-5);
  }
}

TEST_CASE("fold in place equals fold into new memory; other overlaps and self-overlapping outputs are refused") {
  const block_plan plan = make_block_plan(block_layout::interleaved_shared, 4, 9, 2);
  std::mt19937_64 rng(44);
  const auto stats = random_statistics<float>(plan, rng);
  std::vector<float> w(3 * 4 * 9), b(3);
  std::normal_distribution<float> normal;
  for (auto& v : w) v = normal(rng);
  for (auto& v : b) v = normal(rng);
  const auto Wc = nchw<const float>(w.data(), 3, 4, 3, 3);
  const auto Bc = contiguous<const float>(b.data(), 3);
  for (const int policy : {0, 1}) {
    CAPTURE(policy);
    auto wi = w, bi = b;
    const auto W = nchw(wi.data(), 3, 4, 3, 3);
    const auto B = contiguous(bi.data(), 3);
    const auto expected = policy == 0 ? fold(seq, stats, Wc, Bc) : fold(par, stats, Wc, Bc);
    if (policy == 0)
      fold(seq, stats, image_view<const float>(W), vector_view<const float>(B), W, B);
    else
      fold(par, stats, image_view<const float>(W), vector_view<const float>(B), W, B);
    CHECK(wi == expected.weight);
    CHECK(bi == expected.bias);
  }
  std::vector<float> buf(w.size() + 8, 0.0f), bo(3);
  std::copy(w.begin(), w.end(), buf.begin());
  const auto W = nchw<const float>(buf.data(), 3, 4, 3, 3);
  CHECK_THROWS_WITH_AS(fold(seq, stats, W, {}, nchw(buf.data() + 1, 3, 4, 3, 3), contiguous(bo.data(), 3)),
                       doctest::Contains("weight_out overlaps weight (only an exact in-place call is allowed)"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(fold(seq, stats, W, {}, nchw(buf.data(), 3, 4, 3, 3), contiguous(buf.data() + 5, 3)),
                       doctest::Contains("bias_out overlaps weight"), invalid_argument);
  std::vector<float> wo(w.size());
  const image_view<float> self_overlapping{wo.data(), {3, 4, 3, 3}, {0, 9, 3, 1}};
  CHECK_THROWS_WITH_AS(fold(seq, stats, W, {}, self_overlapping, contiguous(bo.data(), 3)),
                       doctest::Contains("weight_out has elements that share memory"), invalid_argument);
}

TEST_CASE("the returning fold validates before it allocates") {
  const block_plan plan = make_block_plan(block_layout::interleaved_shared, 4, 9, 2);
  std::mt19937_64 rng(45);
  const auto stats = random_statistics<float>(plan, rng);
  float one = 1.0f;
  // 2^40 logical elements over one float (stride 0), and the wrong channel count
  const image_view<const float> huge{&one, {index_t(1) << 16, index_t(1) << 16, index_t(1) << 8, 1}, {0, 0, 0, 0}};
  CHECK_THROWS_WITH_AS(fold(seq, stats, huge, {}), doctest::Contains("the plan needs C/groups = 4/1"), invalid_argument);
}
