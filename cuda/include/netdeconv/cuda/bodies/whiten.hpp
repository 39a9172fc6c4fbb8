// SPDX-License-Identifier: MIT
#pragma once
// What each thread of the CUDA whitening kernel computes (../whiten.cuh), with the element index
// passed in. Plain C++ without nvcc (cuda/tests/emulator.hpp runs it on the host).

#include <netdeconv/config.hpp>
#include <netdeconv/statistics_view.hpp>
#include <netdeconv/tensor_view.hpp>

namespace netdeconv::cuda::detail {

/// Element e = r*cols + s*F + f: out(r, s*F + f) = sum_k (X(r, s*F + k) - mu_s[k]) D_s[k, f].
template <class T>
NETDECONV_HOST_DEVICE void whiten_element(const block_statistics_view<const T>& st, const matrix_view<const T>& X,
                                          const matrix_view<T>& out, index_t e) {
  const index_t F = st.plan.features(), cols = X.shape[1], r = e / cols, col = e % cols, s = col / F, f = col % F;
  T v = T(0);
  for (index_t k = 0; k < F; ++k) v += (X(r, s * F + k) - st.mean(s, k)) * st.D(s, k, f);
  out(r, col) = v;
}

}  // namespace netdeconv::cuda::detail
