// SPDX-License-Identifier: MIT
#pragma once
// Block layouts of the patch matrix (docs/method.md §3): which patch column feeds which feature of
// which covariance statistic. Eigen-free.
//
// A patch row has C*K columns (K = kh*kw, channel-major). A plan has count() statistics of
// F = K*B features each; every patch row contributes rows_per_patch() rows of length F to every
// statistic; row g of statistic s takes feature f from patch column column(s, g, f):
//   interleaved_shared  1 statistic, G = C/B rows per patch:       column = f*G + g
//   contiguous_shared   1 statistic, G = C/B rows per patch (K=1): column = g*B + f
//   grouped             `groups` statistics (B = C/groups), 1 row: column = s*F + f
//   independent         C/B statistics, 1 row:                     column = s*F + f
// Output channel o of a conv with `groups` groups reads columns [group(o)*C*K/groups, ...), so the
// (s, g) pieces that lie in that range are the ones that fold into its weights (see fold.hpp).

#include <algorithm>
#include <numeric>
#include <iterator>
#include <ostream>
#include <vector>

#include "config.hpp"
#include "error.hpp"

namespace netdeconv {

enum class block_layout {
  interleaved_shared,  ///< reference conv layers (groups == 1): strided channel interleave, one shared statistic
  contiguous_shared,   ///< reference linear layer: consecutive chunks of B features, one shared statistic
  grouped,             ///< one statistic per conv group (B = C/groups)
  independent,         ///< contiguous channel blocks, each with its own statistic (the paper's text)
};

inline std::ostream& operator<<(std::ostream& os, block_layout layout) {
  constexpr const char* names[] = {"interleaved_shared", "contiguous_shared", "grouped", "independent"};
  const auto i = static_cast<std::size_t>(layout);
  if (i >= std::size(names)) return os << "block_layout(" << static_cast<int>(layout) << ")";
  return os << names[i];
}

/// A patch column's place in a plan: statistic s, row g of the patch's rows (rows_per_patch), feature f.
struct column_coord {
  index_t s, g, f;
};

struct block_plan {
  block_layout layout = block_layout::independent;
  index_t channels = 0;     ///< C (input features for a linear layer)
  index_t kernel_area = 1;  ///< K = kh*kw (1 for a linear layer)
  index_t groups = 1;       ///< conv groups
  index_t block = 0;        ///< B after adjustment

  NETDECONV_HOST_DEVICE index_t features() const { return kernel_area * block; }
  NETDECONV_HOST_DEVICE index_t count() const {
    switch (layout) {
      case block_layout::interleaved_shared:
      case block_layout::contiguous_shared: return 1;
      case block_layout::grouped: return groups;
      case block_layout::independent: return channels / block;
    }
    return 0;
  }
  NETDECONV_HOST_DEVICE index_t rows_per_patch() const {
    const bool shared = layout == block_layout::interleaved_shared || layout == block_layout::contiguous_shared;
    return shared ? channels / block : 1;
  }
  NETDECONV_HOST_DEVICE index_t column(index_t s, index_t g, index_t f) const {
    switch (layout) {
      case block_layout::interleaved_shared: return f * (channels / block) + g;
      case block_layout::contiguous_shared: return g * block + f;
      case block_layout::grouped:
      case block_layout::independent: return s * features() + f;
    }
    return 0;
  }
  /// The inverse of column(): the (s, g, f) of patch column j < C*K.
  NETDECONV_HOST_DEVICE column_coord locate(index_t j) const {
    switch (layout) {
      case block_layout::interleaved_shared: return {0, j % (channels / block), j / (channels / block)};
      case block_layout::contiguous_shared: return {0, j / block, j % block};
      case block_layout::grouped:
      case block_layout::independent: break;
    }
    return {j / features(), 0, j % features()};
  }
};

namespace detail {

/// Checks the invariants every plan must keep (make_block_plan's output keeps them; a hand-built
/// block_plan is checked by every function that takes one): C, K, groups, B >= 1; groups | C;
/// B <= C; for the shared layouts groups == 1 and B | C (contiguous_shared also K == 1); for grouped
/// B == C/groups; for independent B | C/groups; K*B and C*K fit index_t.
inline void check_plan(const char* fn, const block_plan& plan) {
  NETDECONV_REQUIRE(plan.channels >= 1 && plan.kernel_area >= 1 && plan.groups >= 1 && plan.block >= 1, fn,
                    "block_plan needs channels, kernel area, groups and block >= 1, got C=", plan.channels,
                    " K=", plan.kernel_area, " groups=", plan.groups, " block=", plan.block);
  NETDECONV_REQUIRE(plan.channels % plan.groups == 0, fn, "block_plan: groups ", plan.groups, " does not divide C=",
                    plan.channels);
  NETDECONV_REQUIRE(plan.block <= plan.channels, fn, "block_plan: block ", plan.block, " is larger than C=", plan.channels);
  switch (plan.layout) {
    case block_layout::interleaved_shared:
    case block_layout::contiguous_shared:
      NETDECONV_REQUIRE(plan.groups == 1, fn, "block_plan: layout ", plan.layout, " needs groups == 1, got ", plan.groups);
      NETDECONV_REQUIRE(plan.layout == block_layout::interleaved_shared || plan.kernel_area == 1, fn,
                        "block_plan: layout contiguous_shared needs kernel area 1, got ", plan.kernel_area);
      NETDECONV_REQUIRE(plan.channels % plan.block == 0, fn, "block_plan: block ", plan.block, " does not divide C=",
                        plan.channels, " (make_block_plan adjusts it)");
      break;
    case block_layout::grouped:
      // (groups | C is checked above; a product block * groups could overflow)
      NETDECONV_REQUIRE(plan.block == plan.channels / plan.groups, fn, "block_plan: layout grouped needs block = C/groups = ",
                        plan.channels / plan.groups, ", got ", plan.block);
      break;
    case block_layout::independent:
      NETDECONV_REQUIRE((plan.channels / plan.groups) % plan.block == 0, fn, "block ", plan.block,
                        " does not divide C/groups=", plan.channels / plan.groups, " in independent mode");
      break;
    default: fail(fn, "block_plan has an unknown layout ", static_cast<int>(plan.layout));
  }
  checked_mul(fn, "features K*B", plan.kernel_area, plan.block);
  checked_mul(fn, "patch columns C*K", plan.channels, plan.kernel_area);
}

}  // namespace detail

/// Builds the plan for C channels, kernel area K, requested block B and conv groups, applying the
/// adjustment rule of docs/method.md §3: B = min(B, C); B = gcd(B, C) if B does not divide C (shared layouts);
/// B = C/groups for `grouped`. `independent` requires B | (C/groups) and throws otherwise;
/// interleaved_shared and contiguous_shared require groups == 1, grouped requires groups > 1.
inline block_plan make_block_plan(block_layout layout, index_t channels, index_t kernel_area, index_t block,
                                  index_t groups = 1) {
  constexpr const char* fn = "make_block_plan";
  NETDECONV_REQUIRE(channels >= 1, fn, "channels must be >= 1, got ", channels);
  NETDECONV_REQUIRE(kernel_area >= 1, fn, "kernel area must be >= 1, got ", kernel_area);
  NETDECONV_REQUIRE(groups >= 1, fn, "groups must be >= 1, got ", groups);
  NETDECONV_REQUIRE(channels % groups == 0, fn, "groups ", groups, " does not divide C=", channels);
  NETDECONV_REQUIRE(block >= 1, fn, "block must be >= 1, got ", block);
  block_plan plan{layout, channels, kernel_area, groups, std::min(block, channels)};
  switch (layout) {
    case block_layout::interleaved_shared:
    case block_layout::contiguous_shared:
      NETDECONV_REQUIRE(groups == 1, fn, "layout ", layout, " needs groups == 1, got groups=", groups,
                        " (use grouped or independent)");
      NETDECONV_REQUIRE(layout == block_layout::interleaved_shared || kernel_area == 1, fn,
                        "layout contiguous_shared is for linear layers (kernel area 1), got ", kernel_area);
      if (channels % plan.block != 0) plan.block = std::gcd(plan.block, channels);
      break;
    case block_layout::grouped:
      NETDECONV_REQUIRE(groups > 1, fn, "layout grouped needs groups > 1, got groups=", groups);
      plan.block = channels / groups;
      break;
    case block_layout::independent:
      break;
  }
  detail::check_plan(fn, plan);
  return plan;
}

}  // namespace netdeconv
