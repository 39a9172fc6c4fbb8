// SPDX-License-Identifier: MIT
#pragma once
// Host emulation of the CUDA kernels: the same per-thread functions (kernel_bodies.hpp), run for
// every block and thread id, phase by phase where the kernel has __syncthreads, with the grid
// shapes the .cuh launchers use. Same interface as cuda_wrappers.hpp, so checks.hpp runs the same
// comparisons with the CPU oracle on the host (always) and on the GPU (when there is one).

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <netdeconv/cuda/kernel_bodies.hpp>

#include "tf32_model.hpp"

namespace netdeconv::cuda::emulate {

struct host_moments {
  index_t statistics = 0, features = 0;
  std::vector<long long> count;
  std::vector<double> mean, scatter;
  detail::moments_view view() {
    return {statistics, features, count.data(), mean.data(), scatter.data()};
  }
};

template <class T>
struct host_isqrt {
  std::vector<T> D;
  std::vector<int> iterations, status;
  std::vector<double> residual;
};

struct backend {
  template <class T>
  static std::vector<T> im2col(device_view<const T, 4> x, std::size_t, const geometry& g) {
    const sampler s = sampler::make(x.shape[0], x.shape[1], x.shape[2], x.shape[3], g, 1, false);
    std::vector<T> cols(std::size_t(s.rows * s.width));
    const device_view<T, 2> c{cols.data(), {s.rows, s.width}, {s.width, 1}};
    for (index_t e = 0; e < s.rows * s.width; ++e) detail::im2col_element(s, x, c, e);
    return cols;
  }

  template <class T>
  static std::vector<T> col2im(const std::vector<T>& cols, index_t N, index_t C, index_t H, index_t W, const geometry& g) {
    const sampler s = sampler::make(N, C, H, W, g, 1, false);
    std::vector<T> x(std::size_t(N * C * H * W));
    const device_view<const T, 2> c{cols.data(), {s.rows, s.width}, {s.width, 1}};
    const device_view<T, 4> xv{x.data(), {N, C, H, W}, {C * H * W, H * W, W, 1}};
    for (index_t e = 0; e < N * C * H * W; ++e) detail::col2im_pixel(s, c, xv, e);
    return x;
  }

  /// Phase 2's products of the TF32 kernel (covariance_sm80.cuh) for one warp, modelled: for each
  /// of its fragments (cov_warp_tile_of) and each k = 8 step, the exact sum of the 8 products of
  /// TF32-rounded factors is added to the FP32 accumulator with one rounding (the order inside the
  /// tensor cores is not specified, so only the rounding of the factors is modelled exactly).
  /// tile: the block's cov_tile x cov_tile accumulators, row-major.
  static void tf32_warp_products(const detail::cov_shared<float>& sh, int warp, float* tile) {
    using namespace detail;
    const cov_warp_tile wt = cov_warp_tile_of(warp);
    for (int f = 0; f < cov_fragments_per_warp; ++f)
      for (int m = 0; m < cov_fragment; ++m)
        for (int n = 0; n < cov_fragment; ++n) {
          const int i = wt.row * cov_fragment + m, j = (wt.col0 + f) * cov_fragment + n;
          float& c = tile[i * cov_tile + j];
          for (int k0 = 0; k0 < cov_rows; k0 += cov_fragment_k) {
            double dot = 0;
            for (int k = k0; k < k0 + cov_fragment_k; ++k)
              dot += double(test_model::tf32_round(sh.a[k][i])) * double(test_model::tf32_round(sh.b[k][j]));
            c = float(double(c) + dot);
          }
        }
  }

  /// The covariance kernel (grid tiles x S x chunks, 256 threads, phases between __syncthreads)
  /// and the finalize kernel. tf32 (Acc = float): the TF32 kernel, its products modelled by
  /// tf32_warp_products, then cov_gather.
  template <class Acc, class Source>
  static host_moments moments(const Source& src, const plan& p, bool tf32 = false) {
    using namespace detail;
    const index_t samples = src.rows() * p.rows_per_patch(), F = p.features(), S = p.count();
    const index_t tiles = upper_tile_count(ceil_div(F, cov_tile));
    const chunking ch = chunking::make(samples, tiles * S);
    std::vector<Acc> sums(std::size_t(ch.chunks * S * F), Acc(-777)), cross(std::size_t(ch.chunks * S * F * F), Acc(-777));
    auto sh = std::make_unique<cov_shared<Acc>>();
    std::vector<std::array<Acc, 16>> acc(cov_threads);
    std::vector<Acc> sum(cov_threads);
    std::vector<Acc> tile(std::size_t(cov_tile * cov_tile));
    for (index_t z = 0; z < ch.chunks; ++z)
      for (index_t s = 0; s < S; ++s)
        for (index_t k = 0; k < tiles; ++k) {
          const cov_block b = make_cov_block(p, ch, samples, k, s, z);
          for (int t = 0; t < cov_threads; ++t) cov_load_shift<Acc>(src, p, b, *sh, t);
          for (int t = 0; t < cov_threads; ++t) {
            acc[t].fill(Acc(0));
            sum[t] = Acc(0);
          }
          std::fill(tile.begin(), tile.end(), Acc(0));
          for (index_t q = b.q0; q < b.q1; q += cov_rows) {
            for (int t = 0; t < cov_threads; ++t) cov_load_stage<Acc>(src, p, b, *sh, q, t, cov_threads);
            if constexpr (std::is_same_v<Acc, float>)
              if (tf32) {
                for (int w = 0; w < cov_warps; ++w) tf32_warp_products(*sh, w, tile.data());
                for (int t = 0; t < cov_threads; ++t) cov_accumulate_sum<Acc>(*sh, b, sum[t], t);
                continue;
              }
            for (int t = 0; t < cov_threads; ++t)
              cov_accumulate<Acc>(*sh, b, reinterpret_cast<Acc(&)[16]>(*acc[t].data()), sum[t], t);
          }
          if (tf32)
            for (int t = 0; t < cov_threads; ++t) cov_gather<Acc>(tile.data(), reinterpret_cast<Acc(&)[16]>(*acc[t].data()), t);
          for (int t = 0; t < cov_threads; ++t)
            cov_store<Acc>(p, b, reinterpret_cast<const Acc(&)[16]>(*acc[t].data()), sum[t], sums.data(), cross.data(), t);
        }
    host_moments out{S, F, std::vector<long long>(S), std::vector<double>(S * F), std::vector<double>(S * F * F)};
    const auto v = out.view();
    for (index_t e = 0; e < S * F * F; ++e)
      cov_finalize_element<Acc>(src, p, ch, samples, sums.data(), cross.data(), v, e / (F * F), (e / F) % F, e % F);
    return out;
  }

  template <class T>
  static host_moments block_moments_image(device_view<const T, 4> x, std::size_t, const geometry& g,
                                          index_t sampling_stride, const plan& p, bool) {
    const image_rows<T> src{x, sampler::make(x.shape[0], x.shape[1], x.shape[2], x.shape[3], g, sampling_stride, true)};
    return moments<T>(src, p);
  }

  template <class T>
  static host_moments block_moments_matrix(device_view<const T, 2> x, std::size_t, const plan& p) {
    return moments<T>(matrix_rows<T>{x}, p);
  }

  static host_moments block_moments_image_tf32(device_view<const float, 4> x, std::size_t, const geometry& g,
                                               index_t sampling_stride, const plan& p) {
    const image_rows<float> src{x, sampler::make(x.shape[0], x.shape[1], x.shape[2], x.shape[3], g, sampling_stride, true)};
    return moments<float>(src, p, true);
  }

  static host_moments block_moments_matrix_tf32(device_view<const float, 2> x, std::size_t, const plan& p) {
    return moments<float>(matrix_rows<float>{x}, p, true);
  }

  static host_moments merge(host_moments a, host_moments b) {
    host_moments out{a.statistics, a.features, std::vector<long long>(a.count.size()),
                     std::vector<double>(a.mean.size()), std::vector<double>(a.scatter.size())};
    const index_t F = a.features;
    for (index_t e = 0; e < a.statistics * F * F; ++e)
      detail::merge_element(a.view(), b.view(), out.view(), e / (F * F), (e / F) % F, e % F);
    return out;
  }

  template <class T>
  static std::vector<T> covariance(host_moments m, double eps) {
    const index_t F = m.features;
    std::vector<T> cov(std::size_t(m.statistics * F * F + m.statistics * F));
    for (index_t e = 0; e < m.statistics * F * F; ++e)
      detail::covariance_element(m.view(), eps, cov.data(), cov.data() + m.statistics * F * F, e / (F * F), (e / F) % F,
                                 e % F);
    return cov;
  }

  /// run_newton_schulz with the GPU's elementwise bodies and Eigen products in place of cuBLAS.
  template <class T>
  struct ns_ops {
    using M = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const std::vector<T>& A;
    index_t batch, F;
    bool trace;
    int iterations;
    std::vector<T> Y, Z, P, Tk, W, scale, D;
    std::vector<int> it, status, done, converged;
    std::vector<double> res;
    detail::ns_state st() { return {it.data(), res.data(), status.data(), done.data(), converged.data()}; }
    Eigen::Map<M> mat(std::vector<T>& v, index_t b) { return Eigen::Map<M>(v.data() + b * F * F, F, F); }
    void gemm(std::vector<T>& a, std::vector<T>& b, std::vector<T>& c) {
      for (index_t i = 0; i < batch; ++i) mat(c, i).noalias() = mat(a, i) * mat(b, i);
    }
    void init() {
      const std::size_t n = std::size_t(batch * F * F);
      for (auto* v : {&Y, &Z, &P, &Tk, &W, &D}) v->assign(n, T(0));
      scale.assign(batch, T(0));
      for (auto* v : {&it, &status, &done, &converged}) v->assign(batch, 0);
      res.assign(batch, 0);
      for (index_t b = 0; b < batch; ++b) {  // ns_scale_kernel
        double acc = 0;
        bool bad = false, nonpos = false;
        for (index_t e = 0; e < F * F; ++e) {
          const double a = double(A[b * F * F + e]);
          bad |= !std::isfinite(a);
          const bool diag = e / F == e % F;
          nonpos |= diag && !(a > 0);
          acc += trace ? (diag ? a : 0.0) : a * a;
        }
        scale[b] = trace ? T(acc) : T(std::sqrt(acc));
        status[b] = bad ? 2 : (nonpos || !(scale[b] > T(0))) ? 3 : 0;
        done[b] = status[b] != 0;
        res[b] = std::numeric_limits<double>::quiet_NaN();
      }
      for (index_t e = 0; e < batch * F * F; ++e)
        detail::ns_init_element(A.data(), scale.data(), Y.data(), Z.data(), F, e / (F * F), e % (F * F));
    }
    void copy_P_from_Y() { P = Y; }
    void gemm_P() { gemm(Z, Y, P); }
    void residual(int k, bool last, double tolerance) {
      for (index_t b = 0; b < batch; ++b) {
        double acc = 0;
        for (index_t e = 0; e < F * F; ++e) {
          const double r = (e / F == e % F ? 1.0 : 0.0) - double(P[b * F * F + e]);
          acc += r * r;
        }
        detail::ns_record(st(), std::sqrt(acc) / std::sqrt(double(F)), k, last, tolerance, b);
      }
    }
    bool all_done() {
      for (int d : done)
        if (!d) return false;
      return true;
    }
    void update_T() {
      for (index_t e = 0; e < batch * F * F; ++e)
        detail::ns_T_element(P.data(), done.data(), Tk.data(), F, e / (F * F), e % (F * F));
    }
    void gemm_Y() {
      gemm(Y, Tk, W);
      std::swap(Y, W);
    }
    void copy_Z_from_T() { Z = Tk; }
    void gemm_Z() {
      gemm(Tk, Z, W);
      std::swap(Z, W);
    }
    void finalize(double tolerance, bool have_residual) {
      for (index_t b = 0; b < batch; ++b) {
        const T root = T(std::sqrt(scale[b]));
        bool finite = true;
        for (index_t e = 0; e < F * F; ++e) {
          D[b * F * F + e] = Z[b * F * F + e] / root;
          finite &= std::isfinite(double(D[b * F * F + e]));
        }
        const auto state = st();
        detail::ns_finish_report(state, iterations, have_residual, std::numeric_limits<double>::quiet_NaN(), b);
        status[b] = detail::ns_final_status(state, tolerance, finite, have_residual, b);
        if (status[b] >= 2) {
          res[b] = std::numeric_limits<double>::quiet_NaN();
          it[b] = 0;
          for (index_t e = 0; e < F * F; ++e) D[b * F * F + e] = std::numeric_limits<T>::quiet_NaN();
        }
      }
    }
  };

  template <class T>
  static host_isqrt<T> inverse_sqrt(const std::vector<T>& A, index_t batch, index_t F, int iterations, double tolerance,
                                    bool trace_scaling, bool final_residual) {
    ns_ops<T> ops{A, batch, F, trace_scaling, iterations, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
    detail::run_newton_schulz(ops, iterations, tolerance, final_residual, 5);
    return {ops.D, ops.it, ops.status, ops.res};
  }

  /// fold_kernel: one block of 128 threads per output, then the bias reduction.
  template <class T>
  static std::vector<T> fold(const plan& p, const std::vector<T>& mean, const std::vector<T>& D,
                             device_view<const T, 4> weight, std::size_t, const std::vector<T>& bias) {
    const index_t cout = weight.shape[0], ci = weight.shape[1], kh = weight.shape[2], kw = weight.shape[3];
    std::vector<T> out(std::size_t(cout * ci * kh * kw + cout));
    const device_view<T, 4> wo{out.data(), {cout, ci, kh, kw}, {ci * kh * kw, kh * kw, kw, 1}};
    constexpr int threads = 128;
    for (index_t o = 0; o < cout; ++o) {
      std::vector<T> part(threads);
      for (int t = 0; t < threads; ++t) part[t] = detail::fold_output_part(p, weight, mean.data(), D.data(), wo, o, t, threads);
      for (int s = threads / 2; s > 0; s /= 2)
        for (int t = 0; t < s; ++t) part[t] += part[t + s];
      out[std::size_t(cout * ci * kh * kw + o)] = (bias.empty() ? T(0) : bias[o]) - part[0];
    }
    return out;
  }

  template <class T>
  static std::vector<T> apply_whitening(const plan& p, const std::vector<T>& mean, const std::vector<T>& D,
                                        device_view<const T, 2> X, std::size_t, bool columns_are_samples) {
    std::vector<T> out(std::size_t(X.shape[0] * X.shape[1]));
    device_view<T, 2> o{out.data(), {X.shape[0], X.shape[1]}, {X.shape[1], 1}};
    if (columns_are_samples) {
      X = {X.data, {X.shape[1], X.shape[0]}, {X.stride[1], X.stride[0]}};
      o = {o.data, {o.shape[1], o.shape[0]}, {o.stride[1], o.stride[0]}};
    }
    for (index_t e = 0; e < X.shape[0] * X.shape[1]; ++e) detail::whiten_element(X, mean.data(), D.data(), p.features(), o, e);
    return out;
  }
};

}  // namespace netdeconv::cuda::emulate
