// SPDX-License-Identifier: MIT
#pragma once
// Sequential blocked moments: gather a tile of rows, scatter it into each statistic's sample tile,
// accumulate the tile with moments::add (centred rank update, then Chan merge).

#include <algorithm>
#include <vector>

#include "../blocks.hpp"
#include "../execution.hpp"
#include "../moments.hpp"

namespace netdeconv::detail {

/// Accumulates rows [begin, end) of `source` into `stats` (one per statistic of plan).
template <class Source>
void accumulate_rows(const Source& source, const block_plan& plan, index_t begin, index_t end,
                     std::vector<moments<double>>& stats) {
  using rows_matrix = moments<double>::rows_matrix;
  const index_t G = plan.rows_per_patch(), F = plan.features();
  const index_t tile = std::max<index_t>(1, 256 / G);
  rows_matrix patches(tile, source.width());
  rows_matrix samples(tile * G, F);
  for (index_t r0 = begin; r0 < end; r0 += tile) {
    const index_t m = std::min(tile, end - r0);
    for (index_t i = 0; i < m; ++i) source.gather(r0 + i, patches.row(i).data());
    for (index_t s = 0; s < plan.count(); ++s) {
      for (index_t i = 0; i < m; ++i)
        for (index_t g = 0; g < G; ++g)
          for (index_t f = 0; f < F; ++f) samples(i * G + g, f) = patches(i, plan.column(s, g, f));
      stats[s].add(m == tile ? samples : rows_matrix(samples.topRows(m * G)));
    }
  }
}

template <class Source>
std::vector<moments<double>> block_moments_impl(const sequential_policy&, const Source& source, const block_plan& plan) {
  std::vector<moments<double>> stats(plan.count(), moments<double>(plan.features()));
  accumulate_rows(source, plan, 0, source.rows(), stats);
  return stats;
}

}  // namespace netdeconv::detail
