// SPDX-License-Identifier: MIT
#pragma once
// The statistics a forward folded (block_statistics), flattened into contiguous mean (S, F) and
// D (S, F, F) buffers with their view, as a backward takes them.

#include <vector>

#include <netdeconv/block_statistics.hpp>
#include <netdeconv/statistics_view.hpp>

namespace netdeconv::checks {

template <class T>
struct flat_statistics {
  std::vector<T> mean, D;
  block_statistics_view<const T> view;
  explicit flat_statistics(const block_statistics<T>& st) {
    const index_t S = st.plan.count(), F = st.plan.features();
    for (index_t s = 0; s < S; ++s)
      for (index_t i = 0; i < F; ++i) {
        mean.push_back(st.mean[s][i]);
        for (index_t j = 0; j < F; ++j) D.push_back(st.D[s](i, j));
      }
    view = {st.plan, row_major<const T>(mean.data(), S, F), {D.data(), {S, F, F}, {F * F, F, 1}}};
  }
};

}  // namespace netdeconv::checks
