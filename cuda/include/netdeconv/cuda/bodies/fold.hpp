// SPDX-License-Identifier: MIT
#pragma once
// What each thread of the CUDA fold kernel computes (../fold.cuh), with the output channel and
// thread id passed in. Plain C++ without nvcc (cuda/tests/emulator.hpp runs it on the host).

#include <netdeconv/blocks.hpp>
#include <netdeconv/config.hpp>
#include <netdeconv/statistics_view.hpp>
#include <netdeconv/tensor_view.hpp>

namespace netdeconv::cuda::detail {

/// Output o of fold, thread tid of `threads`: writes W'[o, column(s, g, f)] = sum_k W[o, column(s, g, k)] D_s[k, f]
/// for its f of every piece (s, g) in o's input group, and returns its share of sum (W' . mu_s);
/// the block sums the shares and writes b'[o] = b[o] - total.
template <class T>
NETDECONV_HOST_DEVICE T fold_output_part(const block_statistics_view<const T>& st, const image_view<const T>& w,
                                         const image_view<T>& w_out, index_t o, int tid, int threads) {
  const block_plan& p = st.plan;
  const index_t cout = w.shape[0], K = p.kernel_area, kw = w.shape[3];
  const index_t group_cols = w.shape[1] * K, F = p.features();
  const index_t base = (o / (cout / p.groups)) * group_cols;
  const index_t G = p.rows_per_patch();
  T part = T(0);
  for (index_t s = 0; s < p.count(); ++s)
    for (index_t g = 0; g < G; ++g) {
      const index_t first = p.column(s, g, 0);
      if (first < base || first >= base + group_cols) continue;
      for (index_t f = tid; f < F; f += threads) {
        T v = T(0);
        for (index_t k = 0; k < F; ++k) {
          const index_t local = p.column(s, g, k) - base, c = local / K, kk = local % K;
          v += w(o, c, kk / kw, kk % kw) * st.D(s, k, f);
        }
        const index_t local = p.column(s, g, f) - base, c = local / K, kk = local % K;
        w_out(o, c, kk / kw, kk % kw) = v;
        part += v * st.mean(s, f);
      }
    }
  return part;
}

}  // namespace netdeconv::cuda::detail
