// SPDX-License-Identifier: MIT
#pragma once
// Host functions around the CUDA primitives, compiled by nvcc (cuda_wrappers.cu) and called from the
// g++ test (test_cuda.cpp), which holds Eigen and the CPU oracle. Inputs are host buffers described
// by device_view objects over host memory (pointer, shape, strides; `span` elements are copied);
// each wrapper copies to the device, runs the primitive on a non-default stream, synchronises and
// copies back. Plain C++.

#include <cstddef>
#include <string>
#include <vector>

#include <netdeconv/cuda/index_math.hpp>

namespace netdeconv::cuda::test {

/// GPUs visible to the CUDA runtime (0 when there is no device or no driver).
int device_count();
std::string device_name();

struct host_moments {
  index_t statistics = 0, features = 0;
  std::vector<long long> count;
  std::vector<double> mean, scatter;
};

template <class T>
struct host_isqrt {
  std::vector<T> D;
  std::vector<int> iterations, status;
  std::vector<double> residual;
};

template <class T>
std::vector<T> im2col(device_view<const T, 4> x, std::size_t span, const geometry& g);
template <class T>
std::vector<T> col2im(const std::vector<T>& cols, index_t N, index_t C, index_t H, index_t W, const geometry& g);
/// use_workspace: pass a caller workspace of the queried size instead of letting the call allocate.
template <class T>
host_moments block_moments_image(device_view<const T, 4> x, std::size_t span, const geometry& g, index_t sampling_stride,
                                 const plan& p, bool use_workspace);
template <class T>
host_moments block_moments_matrix(device_view<const T, 2> x, std::size_t span, const plan& p);
/// The same with cuda::cov_precision::tf32 (float only).
host_moments block_moments_image_tf32(device_view<const float, 4> x, std::size_t span, const geometry& g,
                                      index_t sampling_stride, const plan& p);
host_moments block_moments_matrix_tf32(device_view<const float, 2> x, std::size_t span, const plan& p);
/// wmma::__float_to_tf32 of each value, on the device.
std::vector<float> float_to_tf32(const std::vector<float>& x);
host_moments merge(const host_moments& a, const host_moments& b);
/// Cov (S*F*F) followed by the means (S*F), in T.
template <class T>
std::vector<T> covariance(const host_moments& m, double eps);
template <class T>
host_isqrt<T> inverse_sqrt(const std::vector<T>& A, index_t batch, index_t F, int iterations, double tolerance,
                           bool trace_scaling, bool final_residual);
/// weight: (Cout, C/groups, kh, kw) host view; bias empty for none. Returns W' (contiguous OIHW) then b'.
template <class T>
std::vector<T> fold(const plan& p, const std::vector<T>& mean, const std::vector<T>& D, device_view<const T, 4> weight,
                    std::size_t span, const std::vector<T>& bias);
/// out: same logical shape as X, contiguous row-major.
template <class T>
std::vector<T> apply_whitening(const plan& p, const std::vector<T>& mean, const std::vector<T>& D,
                               device_view<const T, 2> X, std::size_t span, bool columns_are_samples);

/// Messages of the error paths: a failing CUDA call, a too small workspace, TF32 asked for double rows.
std::string failing_call_message();
std::string small_workspace_message();
std::string tf32_double_message();

}  // namespace netdeconv::cuda::test
