// SPDX-License-Identifier: MIT
#pragma once
// OpenMP blocked moments: thread t accumulates a contiguous range of rows with the sequential
// kernel; the per-thread moments are merged in thread order (deterministic for a thread count).

#include <vector>

#include "../execution.hpp"
#include "../moments.hpp"
#include "../sequential/covariance.hpp"

namespace netdeconv::detail {

template <class Source>
std::vector<moments<double>> block_moments_impl(const omp_policy& policy, const Source& source, const block_plan& plan) {
  const int threads = thread_count(policy);
  std::vector<std::vector<moments<double>>> partial(threads,
                                                    std::vector<moments<double>>(plan.count(), moments<double>(plan.features())));
  const index_t rows = source.rows();
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1)
#endif
  for (int t = 0; t < threads; ++t)
    accumulate_rows(source, plan, rows * t / threads, rows * (t + 1) / threads, partial[t]);
  for (int t = 1; t < threads; ++t)
    for (index_t s = 0; s < plan.count(); ++s) partial[0][s].merge(partial[t][s]);
  return std::move(partial[0]);
}

}  // namespace netdeconv::detail
