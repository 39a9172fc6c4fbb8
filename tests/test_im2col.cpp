// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <netdeconv/eigen.hpp>
#include <netdeconv/im2col.hpp>

#include "oracle.hpp"

using namespace netdeconv;

namespace {

struct random_case {
  index_t N, C, H, W;
  conv_geometry g;
};

random_case draw(std::mt19937_64& rng) {
  auto uni = [&](index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); };
  random_case c{};
  c.g = {uni(1, 7), uni(1, 7), uni(1, 3), uni(1, 3), uni(0, 3), uni(0, 3), uni(1, 3), uni(1, 3)};
  c.N = uni(1, 3);
  c.C = uni(1, 4);
  // at least one output position on each axis
  c.H = std::max<index_t>(c.g.dilation_h * (c.g.kernel_h - 1) + 1 - 2 * c.g.pad_h, 1) + uni(0, 6);
  c.W = std::max<index_t>(c.g.dilation_w * (c.g.kernel_w - 1) + 1 - 2 * c.g.pad_w, 1) + uni(0, 6);
  return c;
}

template <class T>
Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> run_im2col(const oracle::image<T>& x,
                                                                             const conv_geometry& g) {
  const index_t rows = x.view.shape[0] * g.out_h(x.view.shape[2]) * g.out_w(x.view.shape[3]);
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> cols(rows, x.view.shape[1] * g.kernel_area());
  im2col(seq, x.cview(), g, view_mut(cols));
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> threaded(cols.rows(), cols.cols());
  im2col(omp_policy{{}, 2}, x.cview(), g, view_mut(threaded));
  CHECK(threaded == cols);
  return cols;
}

}  // namespace

TEST_CASE_TEMPLATE("im2col (sequential and OpenMP) equals the definition on random geometries, in every memory layout", T, float, double) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 60; ++trial) {
    const random_case c = draw(rng);
    CAPTURE(trial);
    oracle::image<T> x0(c.N, c.C, c.H, c.W, 0);
    oracle::fill_normal(x0, rng);
    const oracle::MatrixXd ref = oracle::im2col(x0, c.g);
    REQUIRE(ref.rows() == c.N * c.g.out_h(c.H) * c.g.out_w(c.W));
    for (int layout = 0; layout < 3; ++layout) {
      oracle::image<T> x(c.N, c.C, c.H, c.W, layout);
      for (index_t n = 0; n < c.N; ++n)
        for (index_t ch = 0; ch < c.C; ++ch)
          for (index_t y = 0; y < c.H; ++y)
            for (index_t xx = 0; xx < c.W; ++xx) x(n, ch, y, xx) = x0(n, ch, y, xx);
      const auto storage_before = x.storage;
      const auto cols = run_im2col(x, c.g);
      CHECK(cols.template cast<double>() == ref);  // a pure copy: exact
      CHECK(x.storage == storage_before);
    }
  }
}

TEST_CASE("im2col writes into a strided (column-major) output view") {
  std::mt19937_64 rng(3);
  oracle::image<double> x(2, 3, 6, 5, 0);
  oracle::fill_normal(x, rng);
  const auto g = conv_geometry::square(3, 2, 1, 1);
  Eigen::MatrixXd cols(2 * g.out_h(6) * g.out_w(5), 27);
  im2col(seq, x.cview(), g, view_mut(cols));
  CHECK(cols == oracle::im2col(x, g));
}

TEST_CASE_TEMPLATE("col2im (sequential and OpenMP) is the adjoint of im2col: <im2col(x), Y> == <x, col2im(Y)>", T, float, double) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 40; ++trial) {
    const random_case c = draw(rng);
    CAPTURE(trial);
    oracle::image<T> x(c.N, c.C, c.H, c.W, trial % 3);
    oracle::fill_normal(x, rng);
    const auto cols = run_im2col(x, c.g);
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> Y(cols.rows(), cols.cols());
    std::normal_distribution<double> normal;
    for (index_t i = 0; i < Y.size(); ++i) Y.data()[i] = T(normal(rng));
    oracle::image<T> back(c.N, c.C, c.H, c.W, (trial + 1) % 3);
    oracle::fill_normal(back, rng);  // garbage that col2im must overwrite
    col2im(seq, view(Y), c.g, back.view);
    oracle::image<T> threaded(c.N, c.C, c.H, c.W, trial % 3);
    col2im(omp_policy{{}, 2}, view(Y), c.g, threaded.view);
    for (index_t n = 0; n < c.N; ++n)
      for (index_t ch = 0; ch < c.C; ++ch)
        for (index_t y = 0; y < c.H; ++y)
          for (index_t xx = 0; xx < c.W; ++xx) CHECK(threaded(n, ch, y, xx) == back(n, ch, y, xx));
    double lhs = 0, rhs = 0, scale = 0;
    for (index_t i = 0; i < Y.size(); ++i) {
      lhs += double(cols.data()[i]) * double(Y.data()[i]);
      scale += std::abs(double(cols.data()[i]) * double(Y.data()[i]));
    }
    for (index_t n = 0; n < c.N; ++n)
      for (index_t ch = 0; ch < c.C; ++ch)
        for (index_t y = 0; y < c.H; ++y)
          for (index_t xx = 0; xx < c.W; ++xx) rhs += double(x(n, ch, y, xx)) * double(back(n, ch, y, xx));
    // float: each col2im sum rounds in T; the bound is a few ulps of the absolute sum
    CHECK(std::abs(lhs - rhs) <= 64 * std::numeric_limits<T>::epsilon() * scale);
  }
}

TEST_CASE("patch_sampler yields the sampled rows of docs/method.md §2") {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    random_case c = draw(rng);
    if (trial % 4 == 0) c.g.kernel_h = c.g.kernel_w = 1;  // the pixel-row rule
    const index_t S = 1 + trial % 3;
    CAPTURE(trial);
    oracle::image<float> x(c.N, c.C, c.H, c.W, trial % 3);
    oracle::fill_normal(x, rng);
    const oracle::MatrixXd ref = oracle::sampled_rows(x, c.g, S);
    const patch_sampler<float> sampler(x.cview(), c.g, S);
    REQUIRE(sampler.rows() == ref.rows());
    REQUIRE(sampler.width() == ref.cols());
    Eigen::RowVectorXd row(ref.cols());
    for (index_t r = 0; r < ref.rows(); ++r) {
      sampler.gather(r, row.data());
      CHECK(row == ref.row(r));
    }
  }
}

TEST_CASE("im2col and col2im reject bad arguments with the offending values") {
  std::vector<float> buf(2 * 3 * 5 * 5);
  const auto x = nchw<const float>(buf.data(), 2, 3, 5, 5);
  std::vector<float> out(1000);
  const auto g = conv_geometry::square(3);
  CHECK_THROWS_WITH_AS(im2col(seq, x, g, row_major(out.data(), 17, 27)), doctest::Contains("17x27"), invalid_argument);
  CHECK_THROWS_WITH_AS(im2col(seq, x, conv_geometry::square(0), row_major(out.data(), 50, 0)),
                       doctest::Contains("kernel must be >= 1, got 0x0"), invalid_argument);
  CHECK_THROWS_WITH_AS(im2col(seq, x, conv_geometry::square(3, 0), row_major(out.data(), 18, 27)),
                       doctest::Contains("stride"), invalid_argument);
  CHECK_THROWS_WITH_AS(im2col(seq, x, conv_geometry::square(3, 1, -1), row_major(out.data(), 18, 27)),
                       doctest::Contains("padding"), invalid_argument);
  CHECK_THROWS_WITH_AS(im2col(seq, nchw<const float>(buf.data(), 2, -3, 5, 5), g, row_major(out.data(), 18, 27)),
                       doctest::Contains("negative extent -3"), invalid_argument);
  const index_t huge = index_t(1) << 40;
  CHECK_THROWS_WITH_AS(im2col(seq, nchw<const float>(buf.data(), huge, huge, 5, 5), g, row_major(out.data(), 18, 27)),
                       doctest::Contains("overflows"), invalid_argument);
  CHECK_THROWS_WITH_AS(col2im(seq, row_major<const float>(out.data(), 18, 26), g, nchw(buf.data(), 2, 3, 5, 5)),
                       doctest::Contains("18x26"), invalid_argument);
  CHECK_THROWS_WITH_AS(patch_sampler<float>(x, g, 0), doctest::Contains("sampling_stride must be >= 1, got 0"),
                       invalid_argument);
}

TEST_CASE("geometry arithmetic is checked before it can overflow (issue 9)") {
  const index_t p62 = index_t(1) << 62, p32 = index_t(1) << 32;
  CHECK_THROWS_WITH_AS(conv_geometry::square(3, 1, p62).out_h(8), doctest::Contains("padding 2p"), invalid_argument);
  CHECK_THROWS_WITH_AS((conv_geometry{3, 3, 1, 1, p62 - 1, p62 - 1, 1, 1}.out_w(p62)), doctest::Contains("H + 2p"),
                       invalid_argument);
  CHECK_THROWS_WITH_AS(conv_geometry::square(3, 1, 0, p62).out_h(8), doctest::Contains("dilated kernel"), invalid_argument);
  CHECK_THROWS_WITH_AS(conv_geometry::square(p32).kernel_area(), doctest::Contains("kernel area kh*kw"), invalid_argument);
  std::vector<float> buf(2 * 3 * 5 * 5), out(100);
  const auto x = nchw<const float>(buf.data(), 2, 3, 5, 5);
  CHECK_THROWS_WITH_AS(im2col(seq, x, conv_geometry::square(3, 1, p62), row_major(out.data(), 1, 27)),
                       doctest::Contains("overflows"), invalid_argument);
  CHECK_THROWS_WITH_AS(patch_sampler<float>(x, conv_geometry::square(p32), 1), doctest::Contains("overflows"),
                       invalid_argument);
  // the largest padding whose arithmetic fits still works: the output is just large
  CHECK(conv_geometry::square(3, 1, index_t(1) << 40).out_h(5) == (index_t(1) << 41) + 3);
}

TEST_CASE("im2col and col2im refuse outputs that overlap their input or themselves") {
  std::vector<float> buf(81, 1.0f);
  const auto g = conv_geometry::square(3, 1, 1);
  // cols (9 x 9) over the same memory as x (1 x 1 x 3 x 3): row 0 would overwrite x before rows 1-8 read it
  CHECK_THROWS_WITH_AS(im2col(seq, nchw<const float>(buf.data(), 1, 1, 3, 3), g, row_major(buf.data(), 9, 9)),
                       doctest::Contains("cols overlaps x"), invalid_argument);
  std::vector<float> cols(2 * 9 * 9), x(2 * 9);
  const image_view<float> shared_images{x.data(), {2, 1, 3, 3}, {0, 9, 3, 1}};  // both images in one place
  CHECK_THROWS_WITH_AS(col2im(seq, row_major<const float>(cols.data(), 18, 9), g, shared_images),
                       doctest::Contains("x has elements that share memory"), invalid_argument);
}
