// SPDX-License-Identifier: MIT
#pragma once
// Execution policies: every entry point takes one as its first argument and the policy's *type*
// selects the backend at compile time (Thrust style). Policies inherit from the one they fall back
// to, so a backend that lacks a kernel uses its ancestor's through ordinary overload resolution:
//
//   sequential_policy            scalar reference code: the oracle every other backend is tested against
//                                (netdeconv starts no threads; Eigen's own GEMM may, if built with OpenMP)
//     └─ omp_policy              OpenMP threads over rows / blocks, Eigen products (omp/): fast fixed-step
//          │                     inverse square root, GEMM fold (falls back to sequential)
//          └─ simd_policy        xsimd kernels + OpenMP (simd/): fused covariance;
//                                `par`, the default fast path (falls back to OpenMP)
//
// The public headers only validate arguments and dispatch. The CUDA backend (cuda/) adds
// cuda_policy, which derives from none of these, and its own overloads of the view-form calls.
//
//   netdeconv::inverse_sqrt(netdeconv::seq, A, D, options);   // single-threaded reference
//   netdeconv::inverse_sqrt(netdeconv::par, A, D, options);   // SIMD + OpenMP

#include <type_traits>

#include "error.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace netdeconv {

struct sequential_policy {};

/// OpenMP backend. `threads == 0` uses the OpenMP default (OMP_NUM_THREADS or all cores); at most
/// max_policy_threads (a call with more, or with a negative count, throws invalid_argument).
struct omp_policy : sequential_policy {
  int threads = 0;
};

/// The most threads a policy may ask for.
inline constexpr int max_policy_threads = 1024;

/// SIMD (xsimd, instruction set chosen at compile time by -march) + OpenMP. `threads` as omp_policy.
struct simd_policy : omp_policy {};

/// simd_policy with `threads` threads (0: the OpenMP default).
inline simd_policy simd_threads(int threads) {
  simd_policy p;
  p.threads = threads;
  return p;
}

inline constexpr sequential_policy seq{};
inline constexpr simd_policy par{};

template <class Policy>
inline constexpr bool is_execution_policy_v = std::is_base_of_v<sequential_policy, Policy>;

namespace detail {

/// Number of threads an omp_policy region runs with (1 without OpenMP); checks policy.threads.
inline int thread_count(const omp_policy& policy) {
  NETDECONV_REQUIRE(policy.threads >= 0 && policy.threads <= max_policy_threads, "execution policy",
                    "threads must be in [0, ", max_policy_threads, "] (0: the OpenMP default), got ", policy.threads);
#ifdef _OPENMP
  return policy.threads > 0 ? policy.threads : omp_get_max_threads();
#else
  (void)policy;
  return 1;
#endif
}

/// The threads a policy runs on: 1 for seq, thread_count for the OpenMP policies.
inline int policy_threads(const sequential_policy&) { return 1; }
inline int policy_threads(const omp_policy& policy) { return thread_count(policy); }

/// This thread's index in its OpenMP team and the team's size ({0, 1} outside a region or without OpenMP).
struct team_position {
  int thread = 0, threads = 1;
};
inline team_position this_team_position() {
#ifdef _OPENMP
  return {omp_get_thread_num(), omp_get_num_threads()};
#else
  return {};
#endif
}

/// Called first in each thread of a region of ours that runs Eigen products: keeps them in that
/// thread. In a team of one, Eigen would otherwise run a large product on omp_get_max_threads()
/// threads, more than the policy asked for. (The setting ends with the region.)
inline void keep_eigen_in_thread() {
#ifdef _OPENMP
  omp_set_num_threads(1);
#endif
}

}  // namespace detail
}  // namespace netdeconv
