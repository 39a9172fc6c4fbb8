// SPDX-License-Identifier: MIT
// The CUDA backend's index and blocking maths (index_math.hpp), compiled as plain C++ and checked
// against the CPU headers. Always runs (no GPU, no nvcc).

#include <doctest/doctest.h>

#include <random>
#include <set>
#include <vector>

#include <netdeconv/blocks.hpp>
#include <netdeconv/im2col.hpp>
#include <netdeconv/cuda/index_math.hpp>
#include <netdeconv/cuda/kernel_bodies.hpp>

namespace nd = netdeconv;
namespace cu = netdeconv::cuda;

TEST_CASE("plan maps the same columns as block_plan for every layout") {
  for (nd::index_t C = 1; C <= 12; ++C)
    for (nd::index_t K : {1, 4, 9})
      for (nd::index_t B = 1; B <= C + 1; ++B)
        for (auto layout : {nd::block_layout::interleaved_shared, nd::block_layout::contiguous_shared,
                            nd::block_layout::grouped, nd::block_layout::independent}) {
          nd::index_t groups = layout == nd::block_layout::grouped ? B : 1;
          if (layout == nd::block_layout::grouped && (groups < 2 || C % groups)) continue;
          if (layout == nd::block_layout::independent && C % B) continue;
          if (layout == nd::block_layout::contiguous_shared && K != 1) continue;
          const nd::block_plan ref = nd::make_block_plan(layout, C, K, B, groups);
          const cu::plan p = cu::to_plan(ref);
          CAPTURE(layout);
          REQUIRE(p.count() == ref.count());
          REQUIRE(p.features() == ref.features());
          REQUIRE(p.rows_per_patch() == ref.rows_per_patch());
          std::set<nd::index_t> seen;
          for (nd::index_t s = 0; s < p.count(); ++s)
            for (nd::index_t g = 0; g < p.rows_per_patch(); ++g)
              for (nd::index_t f = 0; f < p.features(); ++f) {
                CHECK(p.column(s, g, f) == ref.column(s, g, f));
                seen.insert(p.column(s, g, f));
                const cu::sample_entry e = cu::locate_sample(p, s, 7 * p.rows_per_patch() + g, f);
                CHECK(e.row == 7);
                CHECK(e.column == ref.column(s, g, f));
              }
          CHECK(nd::index_t(seen.size()) == C * K);  // every patch column feeds exactly one feature slot
        }
}

TEST_CASE("sampler locates the entries of patch_sampler and im2col") {
  std::mt19937 rng(11);
  auto u = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int trial = 0; trial < 200; ++trial) {
    nd::conv_geometry g{u(1, 4), u(1, 4), u(1, 3), u(1, 3), u(0, 2), u(0, 2), u(1, 2), u(1, 2)};
    if (trial % 5 == 0) g.kernel_h = g.kernel_w = 1;
    const nd::index_t N = u(1, 2), C = u(1, 3), H = u(1, 10), W = u(1, 10), S = u(1, 3);
    std::vector<double> x(std::size_t(N * C * H * W));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = double(i + 1);
    const auto xv = nd::nchw<const double>(x.data(), N, C, H, W);
    const cu::device_view<const double, 4> dv{x.data(), {N, C, H, W}, {C * H * W, H * W, W, 1}};
    CAPTURE(trial);

    const nd::patch_sampler<double> ref(xv, g, S);
    const cu::sampler s = cu::sampler::make(N, C, H, W, cu::to_geometry(g), S, true);
    REQUIRE(s.rows == ref.rows());
    REQUIRE(s.width == ref.width());
    std::vector<double> row(std::size_t(s.width));
    for (nd::index_t r = 0; r < s.rows; ++r) {
      ref.gather(r, row.data());
      for (nd::index_t j = 0; j < s.width; ++j) CHECK(s.value<double>(dv, r, j) == row[std::size_t(j)]);
    }

    const cu::sampler plain = cu::sampler::make(N, C, H, W, cu::to_geometry(g), 1, false);
    const nd::index_t rows = N * g.out_h(H) * g.out_w(W), cols = C * g.kernel_area();
    REQUIRE(plain.rows == rows);
    std::vector<double> expected(std::size_t(rows * cols));
    nd::im2col(nd::seq, xv, g, nd::row_major(expected.data(), rows, cols));
    for (nd::index_t r = 0; r < rows; ++r)
      for (nd::index_t j = 0; j < cols; ++j) CHECK(plain.value<double>(dv, r, j) == expected[std::size_t(r * cols + j)]);

    // col2im's inverse map: every in-image entry (r, j) is found from its pixel and tap.
    for (nd::index_t r = 0; r < rows; ++r)
      for (nd::index_t j = 0; j < cols; ++j) {
        const cu::patch_coord p = plain.locate(r, j);
        if (!p.inside) continue;
        const nd::index_t k = j % g.kernel_area(), ky = k / g.kernel_w, kx = k % g.kernel_w;
        const nd::index_t oy = cu::source_position(p.y, ky, g.stride_h, g.pad_h, g.dilation_h, plain.out_h);
        const nd::index_t ox = cu::source_position(p.x, kx, g.stride_w, g.pad_w, g.dilation_w, plain.out_w);
        CHECK((p.n * plain.out_h + oy) * plain.out_w + ox == r);
      }
  }
}

TEST_CASE("upper_tile enumerates each tile pair ti <= tj once, row by row") {
  for (cu::index_t nt = 1; nt <= 12; ++nt) {
    cu::index_t k = 0;
    for (cu::index_t ti = 0; ti < nt; ++ti)
      for (cu::index_t tj = ti; tj < nt; ++tj, ++k) {
        const cu::tile_pair t = cu::upper_tile(k, nt);
        CHECK(t.ti == ti);
        CHECK(t.tj == tj);
      }
    CHECK(k == cu::upper_tile_count(nt));
  }
}

TEST_CASE("TF32 covariance: the warps' WMMA fragments cover the tile once; cov_gather matches cov_accumulate's layout") {
  namespace d = cu::detail;
  constexpr int side = d::cov_tile / d::cov_fragment;
  static_assert(d::cov_warps * d::cov_fragments_per_warp == side * side, "every fragment needs a warp");
  static_assert(d::cov_rows % d::cov_fragment_k == 0, "a stage is whole k steps");
  std::vector<int> owner(side * side, 0);
  for (int w = 0; w < d::cov_warps; ++w) {
    const d::cov_warp_tile t = d::cov_warp_tile_of(w);
    for (int f = 0; f < d::cov_fragments_per_warp; ++f) {
      REQUIRE(t.row >= 0);
      REQUIRE(t.row < side);
      REQUIRE(t.col0 + f < side);
      ++owner[std::size_t(t.row * side + t.col0 + f)];
    }
  }
  for (int o : owner) CHECK(o == 1);

  // cov_gather hands thread (ty, tx) the tile entries (ty + 16u, tx + 16v) that cov_store writes
  // for acc[u*4 + v]; together the threads read every entry once.
  std::vector<float> tile(std::size_t(d::cov_tile * d::cov_tile));
  for (std::size_t e = 0; e < tile.size(); ++e) tile[e] = float(e);
  std::vector<int> read(tile.size(), 0);
  for (int tid = 0; tid < d::cov_threads; ++tid) {
    float acc[16];
    d::cov_gather(tile.data(), acc, tid);
    for (int u = 0; u < 4; ++u)
      for (int v = 0; v < 4; ++v) {
        const int i = tid / 16 + 16 * u, j = tid % 16 + 16 * v;
        CHECK(acc[u * 4 + v] == float(i * d::cov_tile + j));
        ++read[std::size_t(acc[u * 4 + v])];
      }
  }
  for (int r : read) CHECK(r == 1);
}

TEST_CASE("chunking covers every sample once and respects its bounds") {
  for (cu::index_t n : {2, 3, 255, 256, 257, 1000, 65536, 65537, 1000000, 10000000})
    for (cu::index_t blocks : {1, 6, 45, 528, 4000}) {
      const cu::chunking ch = cu::chunking::make(n, blocks);
      CAPTURE(n);
      CAPTURE(blocks);
      CHECK(ch.chunks >= 1);
      CHECK(ch.chunks <= 256);
      CHECK(ch.begin(0) == 0);
      CHECK(ch.end(ch.chunks - 1, n) == n);
      for (cu::index_t z = 0; z < ch.chunks; ++z) {
        CHECK(ch.end(z, n) > ch.begin(z));
        if (z + 1 < ch.chunks) CHECK(ch.end(z, n) == ch.begin(z + 1));
      }
      if (n <= 256 * 65536) CHECK(ch.length <= 65536);
      if (n >= 2 * 256) CHECK(ch.chunks * blocks >= std::min<cu::index_t>({528, blocks * (n / 256), blocks * 256}) / 2);
    }
}

TEST_CASE("device_view indexes with strides and converts to const") {
  std::vector<int> v(24);
  for (int i = 0; i < 24; ++i) v[std::size_t(i)] = i;
  const cu::device_view<int, 3> a{v.data(), {2, 3, 4}, {12, 4, 1}};
  CHECK(a(1, 2, 3) == 23);
  CHECK(a.size() == 24);
  const cu::device_view<const int, 3> c = a;
  CHECK(c(1, 0, 2) == 14);
  const cu::device_view<int, 2> t{v.data(), {4, 3}, {1, 4}};  // transposed 3x4
  CHECK(t(3, 2) == 11);
}
