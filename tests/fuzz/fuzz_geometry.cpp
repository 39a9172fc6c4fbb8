// SPDX-License-Identifier: MIT
// libFuzzer target: the validation of convolution geometry, block plans and strided views, on
// sizes near the 32- and 64-bit limits (fuzz_input.hpp). Each input is either refused with
// netdeconv::invalid_argument, or everything the validated object computes stays in range and
// agrees with 128-bit arithmetic: patch coordinates (geometry.hpp), plan columns (blocks.hpp),
// view offsets and output aliasing (tensor_view.hpp). Signed overflow anywhere is a UBSan report.

#include <algorithm>
#include <set>
#include <vector>

#include <netdeconv/blocks.hpp>
#include <netdeconv/geometry.hpp>
#include <netdeconv/tensor_view.hpp>

#include "fuzz_input.hpp"

using namespace netdeconv;
__extension__ typedef __int128 wide;  // exact products of two 64-bit sizes

namespace {

/// Some row indices of [0, n): the first, the last and one the input picks.
std::vector<index_t> probes(fuzz::fuzz_input& in, index_t n) {
  const index_t pick = index_t(std::uint64_t(in.integer()) % std::uint64_t(n));
  return {0, n - 1, pick};
}

void fuzz_patch_map(fuzz::fuzz_input& in) {
  const index_array<4> shape{{in.integer(), in.integer(), in.integer(), in.integer()}};
  conv_geometry g;
  g.kernel_h = in.integer(), g.kernel_w = in.integer(), g.stride_h = in.integer(), g.stride_w = in.integer();
  g.pad_h = in.integer(), g.pad_w = in.integer(), g.dilation_h = in.integer(), g.dilation_w = in.integer();
  const index_t sampling = in.integer();
  const bool sampled = in.byte() & 1;
  patch_map m;
  try {
    // As every caller does: the image view first (nchw checks its strides), then the map.
    const image_view<const float> x = nchw(reinterpret_cast<const float*>(std::uintptr_t(64)), shape[0], shape[1],
                                           shape[2], shape[3]);
    detail::check_view("fuzz", "x", x);
    m = detail::make_patch_map("fuzz", shape, g, sampling, sampled);
  } catch (const invalid_argument&) {
    return;
  }
  const index_t N = shape[0], C = shape[1], H = shape[2], W = shape[3];
  NETDECONV_FUZZ_CHECK(m.rows >= 0 && m.width == wide(C) * g.kernel_h * g.kernel_w);
  NETDECONV_FUZZ_CHECK(wide(m.rows) * m.width <= std::numeric_limits<index_t>::max());
  if (m.rows == 0 || m.width == 0) return;
  const wide S = sampling, sh = wide(g.stride_h) * S, sw = wide(g.stride_w) * S;
  for (const index_t r : probes(in, m.rows))
    for (const index_t j : probes(in, m.width)) {
      const patch_coord p = m.locate(r, j);
      NETDECONV_FUZZ_CHECK(p.n >= 0 && p.n < N && p.c >= 0 && p.c < C);
      if (m.pointwise) {
        const wide pixel = wide(r) * sh * sw;
        NETDECONV_FUZZ_CHECK(pixel < wide(N) * H * W && p.c == j && p.inside);
        NETDECONV_FUZZ_CHECK(p.n == pixel / (wide(H) * W) && p.y == pixel / W % H && p.x == pixel % W);
        continue;
      }
      const wide ho = m.out_h, wo = m.out_w, K = wide(g.kernel_h) * g.kernel_w, k = j % K;
      const wide y = r / wo % ho * sh - g.pad_h + k / g.kernel_w * g.dilation_h;
      const wide x = r % wo * sw - g.pad_w + k % g.kernel_w * g.dilation_w;
      NETDECONV_FUZZ_CHECK(p.n == r / (ho * wo) && p.c == j / K && p.y == y && p.x == x);
      NETDECONV_FUZZ_CHECK(p.inside == (y >= 0 && y < H && x >= 0 && x < W));
      // The last output row's patch reaches no further than the padded image.
      NETDECONV_FUZZ_CHECK((ho - 1) * sh + wide(g.dilation_h) * (g.kernel_h - 1) <= wide(H) + 2 * wide(g.pad_h) - 1);
    }
}

/// The plan's columns tile [0, C*K) exactly: locate() and column() are inverse bijections.
void check_columns(fuzz::fuzz_input& in, const block_plan& plan) {
  const wide total = wide(plan.channels) * plan.kernel_area;
  NETDECONV_FUZZ_CHECK(wide(plan.count()) * plan.rows_per_patch() * plan.features() == total);
  for (const index_t j : probes(in, index_t(total))) {
    const column_coord c = plan.locate(j);
    NETDECONV_FUZZ_CHECK(c.s >= 0 && c.s < plan.count() && c.g >= 0 && c.g < plan.rows_per_patch() && c.f >= 0 &&
               c.f < plan.features());
    NETDECONV_FUZZ_CHECK(plan.column(c.s, c.g, c.f) == j);
  }
}

void fuzz_block_plan(fuzz::fuzz_input& in) {
  const auto layout = static_cast<block_layout>(in.byte() % 5);  // 4: not a layout
  const index_t C = in.integer(), K = in.integer(), B = in.integer(), groups = in.integer();
  try {
    check_columns(in, make_block_plan(layout, C, K, B, groups));
  } catch (const invalid_argument&) {
  }
  // A hand-built plan passes check_plan only if it keeps the same invariants.
  const block_plan hand{layout, C, K, groups, B};
  try {
    detail::check_plan("fuzz", hand);
  } catch (const invalid_argument&) {
    return;
  }
  check_columns(in, hand);
}

void fuzz_views(fuzz::fuzz_input& in) {
  tensor_view<float, 3> v{reinterpret_cast<float*>(std::uintptr_t(1) << 40), {}, {}};
  for (int a = 0; a < 3; ++a) v.shape[a] = in.integer(), v.stride[a] = in.integer();
  if (in.byte() & 1) v.data = nullptr;
  try {
    detail::check_view("fuzz", "v", v);
  } catch (const invalid_argument&) {
    return;
  }
  wide count = 1, span = 0;
  for (int a = 0; a < 3; ++a) {
    NETDECONV_FUZZ_CHECK(v.shape[a] >= 0);
    count *= v.shape[a];
    span += wide(v.shape[a] > 0 ? v.shape[a] - 1 : 0) * (v.stride[a] < 0 ? -wide(v.stride[a]) : wide(v.stride[a]));
  }
  NETDECONV_FUZZ_CHECK(count == v.size());
  if (count == 0) return;
  NETDECONV_FUZZ_CHECK(v.data != nullptr && span <= std::numeric_limits<index_t>::max());
  bool output = true;
  try {
    detail::check_output_view("fuzz", "v", v);
  } catch (const invalid_argument&) {
    output = false;
  }
  // An accepted output view has no two elements at one offset (checked by enumeration when small).
  if (output && count <= 4096) {
    std::set<wide> offsets;
    for (index_t i = 0; i < v.shape[0]; ++i)
      for (index_t j = 0; j < v.shape[1]; ++j)
        for (index_t k = 0; k < v.shape[2]; ++k) offsets.insert(wide(i) * v.stride[0] + wide(j) * v.stride[1] + wide(k) * v.stride[2]);
    NETDECONV_FUZZ_CHECK(wide(offsets.size()) == count);
  }
  // check_disjoint: an accepted pair touches disjoint byte ranges.
  tensor_view<const float, 1> w{v.data + (in.integer() % 4096), {in.integer() % 4096}, {in.integer() % 64}};
  try {
    detail::check_view("fuzz", "w", w);
    detail::check_disjoint("fuzz", "v", v, "w", w);
  } catch (const invalid_argument&) {
    return;
  }
  if (w.size() == 0) return;
  wide vlo = 0, vhi = 0, wlo = 0, whi = 0;
  for (int a = 0; a < 3; ++a) (v.stride[a] < 0 ? vlo : vhi) += wide(v.shape[a] - 1) * v.stride[a];
  (w.stride[0] < 0 ? wlo : whi) += wide(w.shape[0] - 1) * w.stride[0];
  const wide base_v = wide(reinterpret_cast<std::uintptr_t>(v.data)), base_w = wide(reinterpret_cast<std::uintptr_t>(w.data));
  const wide v0 = base_v + 4 * vlo, v1 = base_v + 4 * (vhi + 1), w0 = base_w + 4 * wlo, w1 = base_w + 4 * (whi + 1);
  // Views of real memory lie in the address space (address_range's uintptr_t sums do not wrap).
  constexpr wide top = wide(1) << 63;
  if (v0 < 0 || w0 < 0 || v1 > top || w1 > top) return;
  NETDECONV_FUZZ_CHECK(v1 <= w0 || w1 <= v0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::fuzz_input in(data, size);
  switch (in.byte() % 3) {
    case 0: fuzz_patch_map(in); break;
    case 1: fuzz_block_plan(in); break;
    default: fuzz_views(in); break;
  }
  return 0;
}
