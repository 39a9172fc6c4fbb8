// SPDX-License-Identifier: MIT
#pragma once
// The GPU backend of tests/backend_checks.hpp: host functions around the CUDA calls, compiled by
// nvcc (cuda_wrappers.cu) and called from the g++ test (test_cuda.cpp), which holds Eigen and the
// CPU oracle. Inputs are views over host memory (`span` elements reachable from the pointer);
// each wrapper copies them to the device, runs the public call with a cuda_policy on a
// non-default stream, synchronises and copies the results back. Plain C++.

#include <cstddef>
#include <string>
#include <vector>

#include <netdeconv/blocks.hpp>
#include <netdeconv/geometry.hpp>
#include <netdeconv/channel_samples.hpp>
#include <netdeconv/isqrt_options.hpp>
#include <netdeconv/layer_core.hpp>
#include <netdeconv/statistics_step_config.hpp>
#include <netdeconv/tensor_view.hpp>

#include "../../tests/host_results.hpp"

namespace netdeconv::cuda::test {

using checks::host_isqrt;
using checks::host_layer_trace;
using checks::host_moments;
using checks::host_step;
using checks::host_fold_vjp;
using checks::host_step_vjp;

/// GPUs visible to the CUDA runtime (0 when there is no device or no driver).
int device_count();
std::string device_name();

template <class T>
std::vector<T> im2col(image_view<const T> x, std::size_t span, const conv_geometry& g);
template <class T>
std::vector<T> col2im(const std::vector<T>& cols, index_t N, index_t C, index_t H, index_t W, const conv_geometry& g);
/// use_workspace: pass a caller workspace of the queried size instead of letting the call allocate.
template <class T>
host_moments block_moments_image(image_view<const T> x, std::size_t span, const conv_geometry& g, index_t sampling_stride,
                                 const block_plan& p, bool use_workspace);
template <class T>
host_moments block_moments_matrix(matrix_view<const T> x, std::size_t span, const block_plan& p);
/// The same with cuda::cov_precision::tf32 (float only).
host_moments block_moments_image_tf32(image_view<const float> x, std::size_t span, const conv_geometry& g,
                                      index_t sampling_stride, const block_plan& p);
host_moments block_moments_matrix_tf32(matrix_view<const float> x, std::size_t span, const block_plan& p);
/// wmma::__float_to_tf32 of each value, on the device.
std::vector<float> float_to_tf32(const std::vector<float>& x);
host_moments merge(const host_moments& a, const host_moments& b);
/// Cov (S*F*F) followed by the means (S*F), in T.
template <class T>
std::vector<T> covariance(const host_moments& m, double eps);
template <class T>
host_isqrt<T> inverse_sqrt(const std::vector<T>& A, index_t batch, index_t F, const isqrt_options& options);
/// dA (in host_isqrt::D) of D = inverse_sqrt(A) given G = dL/dD.
template <class T>
host_isqrt<T> inverse_sqrt_vjp(const std::vector<T>& A, const std::vector<T>& G, index_t batch, index_t F,
                               const isqrt_options& options);
/// weight: (Cout, C/groups, kh, kw) host view; bias empty for none. Returns W' (contiguous OIHW) then b'.
template <class T>
std::vector<T> fold(const block_plan& p, const std::vector<T>& mean, const std::vector<T>& D, image_view<const T> weight,
                    std::size_t span, const std::vector<T>& bias);
/// out: same logical shape as X, contiguous row-major.
template <class T>
std::vector<T> apply_whitening(const block_plan& p, const std::vector<T>& mean, const std::vector<T>& D,
                               matrix_view<const T> X, std::size_t span, bool columns_are_samples);
/// The statistics steps; w contiguous, W' returned contiguous. use_workspace as block_moments_image.
template <class T>
host_step<T> conv_step(image_view<const T> x, std::size_t span, image_view<const T> w, const std::vector<T>& bias,
                       const conv_deconv_config& config);
template <class T>
host_step<T> linear_step(matrix_view<const T> x, std::size_t span, matrix_view<const T> w, const std::vector<T>& bias,
                         const linear_deconv_config& config);

/// The steps' backward given the forward's statistics; gw (w's shape, contiguous) = dL/dW', gb = dL/db'.
template <class T>
host_step_vjp<T> conv_step_vjp(image_view<const T> x, std::size_t span, image_view<const T> w, const std::vector<T>& bias,
                               const conv_deconv_config& config, const host_step<T>& forward, const std::vector<T>& gw,
                               const std::vector<T>& gb);
template <class T>
host_step_vjp<T> linear_step_vjp(matrix_view<const T> x, std::size_t span, matrix_view<const T> w, const std::vector<T>& bias,
                                 const linear_deconv_config& config, const host_step<T>& forward, const std::vector<T>& gw,
                                 const std::vector<T>& gb);

/// The layers' trajectories over the batches xs (each of `span` elements), their state attached
/// in device memory (backend_checks.hpp's conv_layer, linear_layer, channel_layer).
template <class T>
host_layer_trace<T> conv_layer(const std::vector<image_view<const T>>& xs, std::size_t span, image_view<const T> w,
                               const std::vector<T>& bias, const conv_deconv_config& config, const layer_options& options);
template <class T>
host_layer_trace<T> linear_layer(const std::vector<matrix_view<const T>>& xs, std::size_t span, matrix_view<const T> w,
                                 const std::vector<T>& bias, const linear_deconv_config& config, const layer_options& options);
template <class T>
host_layer_trace<T> channel_layer(const std::vector<image_view<const T>>& xs, std::size_t span,
                                  const channel_deconv_config& config, const layer_options& options);

/// The data-parallel pieces: fold_vjp (dL/dW, dL/db, dL/dD_s, dL/dmu_s) and conv_covariance_vjp
/// (a shard's dL/dx from the merged moments, added to zeros).
template <class T>
host_fold_vjp<T> fold_vjp(const block_plan& p, const std::vector<T>& mean, const std::vector<T>& D, image_view<const T> w,
                          std::size_t span, const std::vector<T>& bias, const std::vector<T>& gw, const std::vector<T>& gb);
template <class T>
std::vector<T> conv_covariance_vjp(image_view<const T> x, std::size_t span, const conv_deconv_config& config,
                                   const host_moments& moments, const std::vector<T>& dcov, const std::vector<T>& dmean);

/// The layers' backward after every step, their state in device memory (backend_checks.hpp's
/// conv_layer_backward, linear_layer_backward, channel_layer_backward).
template <class T>
std::vector<host_step_vjp<T>> conv_layer_backward(const std::vector<image_view<const T>>& xs, std::size_t span,
                                                  image_view<const T> w, const std::vector<T>& bias,
                                                  const conv_deconv_config& config, const layer_options& options,
                                                  const std::vector<T>& gw, const std::vector<T>& gb, bool constants);
template <class T>
std::vector<host_step_vjp<T>> linear_layer_backward(const std::vector<matrix_view<const T>>& xs, std::size_t span,
                                                    matrix_view<const T> w, const std::vector<T>& bias,
                                                    const linear_deconv_config& config, const layer_options& options,
                                                    const std::vector<T>& gw, const std::vector<T>& gb, bool constants);
template <class T>
std::vector<host_step_vjp<T>> channel_layer_backward(const std::vector<image_view<const T>>& xs, std::size_t span,
                                                     const channel_deconv_config& config, const layer_options& options,
                                                     const std::vector<std::vector<T>>& dys, bool constants);

/// The README's CUDA snippet (the conv statistics step with the reference defaults and a 3x3
/// kernel, padding 1) run verbatim on x (N, C, H, W) and w (Cout, C, 3, 3), b (Cout), contiguous.
host_step<float> readme_snippet(const std::vector<float>& x, index_t N, index_t C, index_t H, index_t W,
                                const std::vector<float>& w, const std::vector<float>& b, index_t Cout);

/// Messages of the error paths: a failing CUDA call, a too small workspace, TF32 asked for double
/// rows, a view over pageable host memory.
std::string failing_call_message();
std::string small_workspace_message();
std::string tf32_double_message();
std::string host_pointer_message();
/// Messages of the CUDA layers' refusals: [0] a cuda_policy step on a host state, [1] a host
/// accessor on a device state, [2] on_failure exact_fallback with a cuda_policy, [3] the channel
/// layer's y = x, [4] attaching host memory with a cuda_policy.
std::vector<std::string> layer_refusal_messages();

}  // namespace netdeconv::cuda::test
