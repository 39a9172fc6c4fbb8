// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <netdeconv/eigen.hpp>
#include <netdeconv/tensor_view.hpp>

using namespace netdeconv;

TEST_CASE("nchw and nhwc views address the same logical element") {
  const index_t N = 2, C = 3, H = 4, W = 5;
  std::vector<int> a(N * C * H * W), b(N * C * H * W);
  for (index_t n = 0; n < N; ++n)
    for (index_t c = 0; c < C; ++c)
      for (index_t y = 0; y < H; ++y)
        for (index_t x = 0; x < W; ++x) {
          const int v = int(((n * 10 + c) * 10 + y) * 10 + x);
          a[((n * C + c) * H + y) * W + x] = v;  // NCHW memory
          b[((n * H + y) * W + x) * C + c] = v;  // NHWC memory
        }
  const auto va = nchw<const int>(a.data(), N, C, H, W);
  const auto vb = nhwc<const int>(b.data(), N, H, W, C);
  CHECK(va.shape == vb.shape);
  for (index_t n = 0; n < N; ++n)
    for (index_t c = 0; c < C; ++c)
      for (index_t y = 0; y < H; ++y)
        for (index_t x = 0; x < W; ++x) CHECK(va(n, c, y, x) == vb(n, c, y, x));
}

TEST_CASE("Eigen adapters view column-major, row-major and strided blocks in place") {
  Eigen::MatrixXd cm = Eigen::MatrixXd::Random(7, 5);
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm = cm;
  const auto block = cm.block(1, 2, 4, 3);
  const auto v_cm = view(cm), v_rm = view(rm), v_block = view(block);
  CHECK(v_cm.data == cm.data());
  CHECK(v_rm.data == rm.data());
  for (index_t i = 0; i < 7; ++i)
    for (index_t j = 0; j < 5; ++j) {
      CHECK(v_cm(i, j) == cm(i, j));
      CHECK(v_rm(i, j) == cm(i, j));
    }
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 3; ++j) CHECK(v_block(i, j) == cm(1 + i, 2 + j));
  CHECK(as_eigen(v_block) == cm.block(1, 2, 4, 3));
  CHECK(as_eigen(v_rm) == cm);

  // a transposed-style view (strides swapped) and a mutable view writing through
  const matrix_view<const double> t{cm.data(), {5, 7}, {7, 1}};
  CHECK(as_eigen(t) == cm.transpose());
  auto m = view_mut(rm);
  m(3, 4) = 42.0;
  CHECK(rm(3, 4) == 42.0);
}

TEST_CASE("views report element counts and reject negative or overflowing shapes") {
  std::vector<float> buf(6);
  const auto v = row_major(buf.data(), 2, 3);
  CHECK(v.size() == 6);
  const matrix_view<const float> cv = v;  // views of T convert to views of const T
  CHECK(cv.data == buf.data());
  const index_t huge = index_t(1) << 40;
  CHECK_THROWS_WITH_AS(row_major(buf.data(), huge, huge).size(), doctest::Contains("overflows"), invalid_argument);
  CHECK_THROWS_WITH_AS(detail::check_view("f", "x", row_major(buf.data(), -1, 3)),
                       doctest::Contains("x has negative extent -1"), invalid_argument);
  CHECK_THROWS_WITH_AS(detail::check_view("f", "x", row_major<float>(nullptr, 2, 3)),
                       doctest::Contains("x is null but has 6 elements"), invalid_argument);
}

TEST_CASE("stride arithmetic is checked before it can overflow (issue 9)") {
  std::vector<float> buf(16);
  const index_t big = index_t(1) << 22;  // C*H*W = 2^66
  CHECK_THROWS_WITH_AS(nchw(buf.data(), 1, big, big, big), doctest::Contains("stride C*H*W"), invalid_argument);
  CHECK_THROWS_WITH_AS(nhwc(buf.data(), 1, big, big, big), doctest::Contains("stride H*W*C"), invalid_argument);
  // a view whose offsets leave index_t although its element count does not
  const image_view<const float> far{buf.data(), {4, 1, 1, 1}, {index_t(1) << 62, 1, 1, 1}};
  CHECK_THROWS_WITH_AS(detail::check_view("f", "x", far), doctest::Contains("offset span of the view"), invalid_argument);
  const image_view<const float> negative{buf.data(), {2, 2, 2, 2}, {-8, -4, -2, -1}};
  CHECK_NOTHROW(detail::check_view("f", "x", negative));
}

TEST_CASE("strided() takes a framework's sizes and strides") {
  std::vector<float> buf(2 * 3 * 4 * 5);
  const std::vector<std::int64_t> sizes{2, 3, 4, 5}, strides{60, 1, 15, 3};  // channels_last
  const auto v = strided<const float, 4>(buf.data(), sizes, strides);
  CHECK(v.shape == index_array<4>{2, 3, 4, 5});
  CHECK(v.stride == index_array<4>{60, 1, 15, 3});
  CHECK(&v(1, 2, 3, 4) == buf.data() + 60 + 2 + 45 + 12);
  CHECK_THROWS_WITH_AS((strided<const float, 4>(buf.data(), std::vector<int>{2, 3}, strides)),
                       doctest::Contains("a rank-4 view needs 4 sizes and strides, got 2 and 4"), invalid_argument);
}

TEST_CASE("output views: elements that share memory are refused; every ordinary layout is accepted") {
  std::vector<float> buf(2 * 3 * 4 * 5);
  CHECK_NOTHROW(detail::check_output_view("f", "y", nchw(buf.data(), 2, 3, 4, 5)));
  CHECK_NOTHROW(detail::check_output_view("f", "y", nhwc(buf.data(), 2, 4, 5, 3)));
  CHECK_NOTHROW(detail::check_output_view("f", "y", image_view<float>{buf.data() + 119, {2, 3, 4, 5}, {-60, -20, -5, -1}}));
  CHECK_NOTHROW(detail::check_output_view("f", "y", image_view<float>{buf.data(), {2, 1, 4, 5}, {60, 0, 5, 1}}));  // extent 1
  CHECK_THROWS_WITH_AS(detail::check_output_view("f", "y", image_view<float>{buf.data(), {2, 3, 4, 5}, {0, 20, 5, 1}}),
                       doctest::Contains("y has elements that share memory"), invalid_argument);
  CHECK_THROWS_WITH_AS(detail::check_output_view("f", "y", matrix_view<float>{buf.data(), {4, 5}, {3, 1}}),
                       doctest::Contains("share memory"), invalid_argument);
  // disjoint halves of one buffer are fine; a shifted copy is not
  const auto first = row_major(buf.data(), 6, 10), second = row_major(buf.data() + 60, 6, 10);
  CHECK_NOTHROW(detail::check_disjoint("f", "out", second, "in", matrix_view<const float>(first)));
  CHECK_THROWS_WITH_AS(detail::check_disjoint("f", "out", row_major(buf.data() + 59, 6, 10), "in", matrix_view<const float>(first)),
                       doctest::Contains("out overlaps in"), invalid_argument);
}
