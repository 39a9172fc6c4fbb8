// SPDX-License-Identifier: MIT
#pragma once
// OpenMP batched inverse square root: blocks in parallel, each with the sequential iteration.

#include <vector>

#include "../execution.hpp"
#include "../sequential/inverse_sqrt.hpp"

namespace netdeconv::detail {

template <class T>
std::vector<isqrt_report> inverse_sqrt_batched_impl([[maybe_unused]] const omp_policy& policy, const std::vector<square_matrix<T>>& A,
                                                    std::vector<square_matrix<T>>& D, const isqrt_options& options) {
  std::vector<isqrt_report> reports(A.size());
  const index_t count = static_cast<index_t>(A.size());
#ifdef _OPENMP
#pragma omp parallel for num_threads(thread_count(policy)) schedule(dynamic)
#endif
  for (index_t i = 0; i < count; ++i) reports[i] = inverse_sqrt_impl<T>(seq, A[i], D[i], options);
  return reports;
}

}  // namespace netdeconv::detail

