// SPDX-License-Identifier: MIT
#pragma once
// Host emulation of the CUDA kernels: the same per-thread functions (cuda/include/netdeconv/cuda/
// bodies/), run for every block and thread id, phase by phase where the kernel has __syncthreads,
// with the grid shapes the .cuh launchers use, and composed as the launchers compose them. It has
// the backend interface of tests/backend_checks.hpp (plus the TF32 moments), so the same
// comparisons with the CPU oracle run on the host (always) and on the GPU (when there is one).

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <netdeconv/cuda/bodies/covariance.hpp>
#include <netdeconv/cuda/bodies/fold.hpp>
#include <netdeconv/cuda/bodies/im2col.hpp>
#include <netdeconv/cuda/bodies/inverse_sqrt.hpp>
#include <netdeconv/cuda/bodies/inverse_sqrt_vjp.hpp>
#include <netdeconv/cuda/bodies/layer_state.hpp>
#include <netdeconv/cuda/bodies/moments.hpp>
#include <netdeconv/cuda/bodies/statistics_step_vjp.hpp>
#include <netdeconv/cuda/bodies/whiten.hpp>

#include "../../tests/backend_checks.hpp"
#include "tf32_model.hpp"

namespace netdeconv::cuda::emulate {

using checks::host_isqrt;
using checks::host_moments;
using checks::host_step;
using checks::host_fold_vjp;
using checks::host_step_vjp;
using checks::host_layer_trace;

struct backend : checks::step_vjp_forms<backend> {
  template <class T>
  static std::vector<T> im2col(image_view<const T> x, std::size_t, const conv_geometry& g) {
    const patch_map map = ::netdeconv::detail::make_patch_map("im2col", x.shape, g, 1, false);
    std::vector<T> cols(std::size_t(map.rows * map.width));
    const matrix_view<T> c = row_major(cols.data(), map.rows, map.width);
    for (index_t e = 0; e < map.rows * map.width; ++e) detail::im2col_element(map, x, c, e);
    return cols;
  }

  template <class T>
  static std::vector<T> col2im(const std::vector<T>& cols, index_t N, index_t C, index_t H, index_t W, const conv_geometry& g) {
    const patch_map map = ::netdeconv::detail::make_patch_map("col2im", {N, C, H, W}, g, 1, false);
    std::vector<T> x(std::size_t(N * C * H * W));
    const matrix_view<const T> c = row_major(cols.data(), map.rows, map.width);
    for (index_t e = 0; e < N * C * H * W; ++e) detail::col2im_pixel(map, c, nchw(x.data(), N, C, H, W), e);
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
  static host_moments moments(const Source& src, const block_plan& p, bool tf32 = false) {
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
    host_moments out = host_moments::zeros(S, F);
    const auto v = out.view();
    for (index_t e = 0; e < S * F * F; ++e)
      cov_finalize_element<Acc>(src, p, ch, samples, sums.data(), cross.data(), v, e / (F * F), (e / F) % F, e % F);
    return out;
  }

  template <class T>
  static host_moments block_moments_image(image_view<const T> x, std::size_t, const conv_geometry& g, index_t S,
                                          const block_plan& p, bool) {
    return moments<T>(patch_sampler<T>(x, g, S), p);
  }

  template <class T>
  static host_moments block_moments_matrix(matrix_view<const T> x, std::size_t, const block_plan& p) {
    return moments<T>(matrix_rows<T>(x), p);
  }

  static host_moments block_moments_image_tf32(image_view<const float> x, std::size_t, const conv_geometry& g, index_t S,
                                               const block_plan& p) {
    return moments<float>(patch_sampler<float>(x, g, S), p, true);
  }

  static host_moments block_moments_matrix_tf32(matrix_view<const float> x, std::size_t, const block_plan& p) {
    return moments<float>(matrix_rows<float>(x), p, true);
  }

  static host_moments merge(const host_moments& a, const host_moments& b) {
    host_moments out = host_moments::zeros(a.statistics, a.features);
    const index_t F = a.features;
    for (index_t e = 0; e < a.statistics * F * F; ++e)
      detail::merge_element(a.view(), b.view(), out.view(), e / (F * F), (e / F) % F, e % F);
    return out;
  }

  template <class T>
  static std::vector<T> covariance(const host_moments& m, double eps) {
    const index_t S = m.statistics, F = m.features;
    std::vector<T> out(std::size_t(S * F * F + S * F));
    const tensor_view<T, 3> cov{out.data(), {S, F, F}, {F * F, F, 1}};
    for (index_t e = 0; e < S * F * F; ++e)
      detail::covariance_element(m.view(), eps, cov, row_major(out.data() + S * F * F, S, F), e / (F * F), (e / F) % F, e % F);
    return out;
  }

  /// run_newton_schulz with the GPU's elementwise bodies and Eigen products in place of cuBLAS;
  /// the block reductions (scale, residual, finiteness) as plain loops.
  template <class T>
  struct ns_ops {
    using M = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    tensor_view<const T, 3> A;
    tensor_view<T, 3> D;
    isqrt_options options;
    std::vector<T> Y, Z, P, Tk, W;
    std::vector<double> scale;
    std::vector<int> done, converged;
    detail::ns_state st;
    index_t batch() const { return A.shape[0]; }
    index_t F() const { return A.shape[1]; }
    Eigen::Map<M> mat(std::vector<T>& v, index_t b) { return Eigen::Map<M>(v.data() + b * F() * F(), F(), F()); }
    void gemm(std::vector<T>& a, std::vector<T>& b, std::vector<T>& c) {
      for (index_t i = 0; i < batch(); ++i) mat(c, i).noalias() = mat(a, i) * mat(b, i);
    }
    void init() {  // ns_scale_kernel (with the Cholesky screen), ns_init_kernel
      const index_t n = batch() * F() * F();
      for (auto* v : {&Y, &Z, &P, &Tk, &W}) v->assign(std::size_t(n), T(0));
      scale.assign(std::size_t(batch()), 0.0);
      std::vector<double> chol(static_cast<std::size_t>(n));
      for (index_t b = 0; b < batch(); ++b) {
        double acc = 0;
        bool bad = false, refused = false;
        for (index_t i = 0; i < F(); ++i)
          for (index_t j = 0; j < F(); ++j) {
            const double a = double(A(b, i, j));
            bad |= !std::isfinite(a);
            acc += options.scaling == isqrt_scaling::trace ? (i == j ? a : 0.0) : a * a;
          }
        if (!bad) {  // the Cholesky screen, phase by phase as the kernel's threads run it
          const double tau = detail::ns_shift(A, b);
          for (index_t e = 0; e < F() * F(); ++e) detail::ns_cholesky_load(A, tau, chol.data(), b, e);
          for (index_t k = 0; k < F() && !refused; ++k) {
            refused = !(chol[std::size_t(b * F() * F() + k * F() + k)] > 0);
            if (refused) break;
            for (index_t i = k + 1; i < F(); ++i) detail::ns_cholesky_column(chol.data(), F(), b, k, i);
            for (index_t i = k + 1; i < F(); ++i)
              for (index_t j = k + 1; j <= i; ++j) detail::ns_cholesky_update(chol.data(), F(), b, k, i, j);
          }
        }
        scale[b] = options.scaling == isqrt_scaling::trace ? acc : std::sqrt(acc);
        detail::ns_start(st, scale[b], bad, refused, std::numeric_limits<double>::quiet_NaN(), b);
      }
      for (index_t e = 0; e < n; ++e)
        detail::ns_init_element(A, scale.data(), Y.data(), Z.data(), F(), e / (F() * F()), e % (F() * F()));
    }
    void copy_P_from_Y() { P = Y; }
    void gemm_P() { gemm(Z, Y, P); }
    void residual(int k, bool last, double tolerance) {
      for (index_t b = 0; b < batch(); ++b) {
        double acc = 0;
        for (index_t e = 0; e < F() * F(); ++e) {
          const double r = (e / F() == e % F() ? 1.0 : 0.0) - double(P[b * F() * F() + e]);
          acc += r * r;
        }
        detail::ns_record(st, std::sqrt(acc) / std::sqrt(double(F())), k, last, tolerance, b);
      }
    }
    bool all_done() {
      return std::all_of(done.begin(), done.end(), [](int d) { return d != 0; });
    }
    void update_T() {
      for (index_t e = 0; e < batch() * F() * F(); ++e)
        detail::ns_T_element(P.data(), done.data(), Tk.data(), F(), e / (F() * F()), e % (F() * F()));
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
    void finalize(double tolerance, bool have_residual) {  // ns_finalize_kernel
      const double nan = std::numeric_limits<double>::quiet_NaN();
      for (index_t b = 0; b < batch(); ++b) {
        bool finite = true;
        for (index_t e = 0; e < F() * F(); ++e) {
          const T d = detail::ns_result_element(Z.data(), scale.data(), F(), b, e);
          D(b, e / F(), e % F()) = d;
          finite &= std::isfinite(double(d));
        }
        if (detail::ns_finish(st, options.iterations, tolerance, have_residual, finite, nan, b))
          for (index_t e = 0; e < F() * F(); ++e) D(b, e / F(), e % F()) = std::numeric_limits<T>::quiet_NaN();
      }
    }
  };

  /// The launcher's composition: the iteration on views A, D and reports (check_interval 5).
  template <class T>
  static void inverse_sqrt(tensor_view<const T, 3> A, tensor_view<T, 3> D, const isqrt_options& o,
                           vector_view<isqrt_report> reports) {
    ns_ops<T> ops{A, D, o, {}, {}, {}, {}, {}, {}, std::vector<int>(std::size_t(A.shape[0])),
                  std::vector<int>(std::size_t(A.shape[0])), {}};
    ops.st = {reports, ops.done.data(), ops.converged.data()};
    detail::run_newton_schulz(ops, o.iterations, o.tolerance, o.final_residual, 5);
  }

  template <class T>
  static host_isqrt<T> inverse_sqrt(const std::vector<T>& A, index_t batch, index_t F, const isqrt_options& o) {
    host_isqrt<T> out{std::vector<T>(A.size()), std::vector<isqrt_report>(std::size_t(batch))};
    inverse_sqrt<T>({A.data(), {batch, F, F}, {F * F, F, 1}}, {out.D.data(), {batch, F, F}, {F * F, F, 1}}, o,
                    contiguous(out.reports.data(), batch));
    return out;
  }

  /// run_newton_schulz over the VJP's operations (inverse_sqrt_vjp.cuh): ns_ops with the tangent.
  template <class T>
  struct ns_vjp_ops {
    ns_ops<T> primal;
    tensor_view<const T, 3> G;
    tensor_view<T, 3> dA;
    std::vector<T> Yd{}, Zd{}, Pd{}, Td{}, Wd{};
    std::vector<double> norm{};
    index_t batch() const { return primal.batch(); }
    index_t F() const { return primal.F(); }
    void gemm2(std::vector<T>& a, std::vector<T>& b, std::vector<T>& c, std::vector<T>& d, std::vector<T>& out) {
      for (index_t i = 0; i < batch(); ++i) {
        primal.mat(out, i).noalias() = primal.mat(a, i) * primal.mat(b, i);
        primal.mat(out, i).noalias() += primal.mat(c, i) * primal.mat(d, i);
      }
    }
    void init() {  // ns_scale_kernel, nsv_gradient_kernel, nsv_init_kernel
      primal.init();
      const index_t n = batch() * F() * F();
      for (auto* v : {&Yd, &Zd, &Pd, &Td, &Wd}) v->assign(std::size_t(n), T(0));
      norm.assign(std::size_t(batch()), 0.0);
      for (index_t b = 0; b < batch(); ++b) {
        double acc = 0;
        bool finite = true;
        for (index_t e = 0; e < F() * F(); ++e) {
          const double g = double(G(b, e / F(), e % F()));
          finite &= std::isfinite(g);
          acc += g * g;
        }
        norm[std::size_t(b)] = std::sqrt(acc) / std::sqrt(primal.scale[std::size_t(b)]);
        detail::nsv_screen_gradient(primal.st, finite, b);
      }
      for (index_t e = 0; e < n; ++e)
        detail::nsv_init_element(G, primal.scale.data(), Yd.data(), Zd.data(), F(), e / (F() * F()), e % (F() * F()));
    }
    void copy_P_from_Y() {
      primal.copy_P_from_Y();
      Pd = Yd;
    }
    void gemm_P() {
      gemm2(Zd, primal.Y, primal.Z, Yd, Pd);
      primal.gemm_P();
    }
    void residual(int k, bool last, double tolerance) {  // nsv_residual_kernel
      for (index_t b = 0; b < batch(); ++b) {
        double acc = 0, tangent = 0;
        for (index_t e = 0; e < F() * F(); ++e) {
          const std::size_t o = std::size_t(b * F() * F() + e);
          const double r = (e / F() == e % F() ? 1.0 : 0.0) - double(primal.P[o]), d = double(Pd[o]);
          acc += r * r;
          tangent += d * d;
        }
        const double nb = norm[std::size_t(b)];
        detail::nsv_record(primal.st, std::sqrt(acc) / std::sqrt(double(F())), nb > 0 ? std::sqrt(tangent) / nb : 0.0, k,
                           last, tolerance, b);
      }
    }
    bool all_done() { return primal.all_done(); }
    void update_T() {
      for (index_t e = 0; e < batch() * F() * F(); ++e)
        detail::nsv_T_element(primal.P.data(), Pd.data(), primal.done.data(), primal.Tk.data(), Td.data(), F(),
                              e / (F() * F()), e % (F() * F()));
    }
    void gemm_Y() {
      gemm2(Yd, primal.Tk, primal.Y, Td, Wd);
      std::swap(Yd, Wd);
      primal.gemm_Y();
    }
    void copy_Z_from_T() {
      primal.copy_Z_from_T();
      Zd = Td;
    }
    void gemm_Z() {
      gemm2(Td, primal.Z, primal.Tk, Zd, Wd);
      std::swap(Zd, Wd);
      primal.gemm_Z();
    }
    void finalize(double tolerance, bool) {  // nsv_finalize_kernel
      const double nan = std::numeric_limits<double>::quiet_NaN();
      const bool trace = primal.options.scaling == isqrt_scaling::trace;
      for (index_t b = 0; b < batch(); ++b) {
        double gz = 0, za = 0;
        for (index_t e = 0; e < F() * F(); ++e) {
          const std::size_t o = std::size_t(b * F() * F() + e);
          gz += double(G(b, e / F(), e % F())) * double(primal.Z[o]);
          za += double(Zd[o]) * double(primal.A(b, e / F(), e % F()));
        }
        const double sb = detail::nsv_scale_adjoint(primal.scale[std::size_t(b)], gz, za);
        bool finite = true;
        for (index_t e = 0; e < F() * F(); ++e) {
          const T d = detail::nsv_result_element(primal.A, Zd.data(), primal.scale.data(), sb, trace, F(), b, e);
          dA(b, e / F(), e % F()) = d;
          finite &= std::isfinite(double(d));
        }
        if (detail::ns_finish(primal.st, primal.options.iterations, tolerance, true, finite, nan, b))
          for (index_t e = 0; e < F() * F(); ++e) dA(b, e / F(), e % F()) = std::numeric_limits<T>::quiet_NaN();
      }
    }
  };

  /// The launcher's composition (check_interval 5).
  template <class T>
  static void inverse_sqrt_vjp(tensor_view<const T, 3> A, tensor_view<const T, 3> G, tensor_view<T, 3> dA,
                               const isqrt_options& o, vector_view<isqrt_report> reports) {
    const std::size_t batch = std::size_t(A.shape[0]);
    ns_vjp_ops<T> ops{{A, {}, o, {}, {}, {}, {}, {}, {}, std::vector<int>(batch), std::vector<int>(batch), {}}, G, dA};
    ops.primal.st = {reports, ops.primal.done.data(), ops.primal.converged.data()};
    detail::run_newton_schulz(ops, o.iterations, o.tolerance, true, 5);
  }

  template <class T>
  static host_isqrt<T> inverse_sqrt_vjp(const std::vector<T>& A, const std::vector<T>& G, index_t batch, index_t F,
                                        const isqrt_options& o) {
    host_isqrt<T> out{std::vector<T>(A.size()), std::vector<isqrt_report>(std::size_t(batch))};
    inverse_sqrt_vjp<T>({A.data(), {batch, F, F}, {F * F, F, 1}}, {G.data(), {batch, F, F}, {F * F, F, 1}},
                        {out.D.data(), {batch, F, F}, {F * F, F, 1}}, o, contiguous(out.reports.data(), batch));
    return out;
  }

  /// fold_kernel: one block of 128 threads per output, then the bias reduction.
  template <class T>
  static void fold(const block_statistics_view<const T>& st, image_view<const T> w, vector_view<const T> bias,
                   image_view<T> wo, vector_view<T> bo) {
    constexpr int threads = 128;
    for (index_t o = 0; o < w.shape[0]; ++o) {
      std::vector<T> part(threads);
      for (int t = 0; t < threads; ++t) part[t] = detail::fold_output_part(st, w, wo, o, t, threads);
      for (int s = threads / 2; s > 0; s /= 2)
        for (int t = 0; t < s; ++t) part[t] += part[t + s];
      bo(o) = (bias.empty() ? T(0) : bias(o)) - part[0];
    }
  }

  template <class T>
  static std::vector<T> fold(const block_plan& plan, const std::vector<T>& mean, const std::vector<T>& D,
                             image_view<const T> w, std::size_t, const std::vector<T>& bias) {
    const auto& s = w.shape;
    std::vector<T> out(std::size_t(s[0] * s[1] * s[2] * s[3] + s[0]));
    fold<T>(checks::cpu_backend<sequential_policy>::statistics(plan, mean, D), w,
            bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), s[0]), nchw(out.data(), s[0], s[1], s[2], s[3]),
            contiguous(out.data() + s[0] * s[1] * s[2] * s[3], s[0]));
    return out;
  }

  template <class T>
  static std::vector<T> apply_whitening(const block_plan& plan, const std::vector<T>& mean, const std::vector<T>& D,
                                        matrix_view<const T> X, std::size_t, bool columns_are_samples) {
    std::vector<T> out(std::size_t(X.shape[0] * X.shape[1]));
    matrix_view<T> o = row_major(out.data(), X.shape[0], X.shape[1]);
    if (columns_are_samples) {
      X = ::netdeconv::detail::transposed(X);
      o = ::netdeconv::detail::transposed(o);
    }
    const auto st = checks::cpu_backend<sequential_policy>::statistics(plan, mean, D);
    for (index_t e = 0; e < X.shape[0] * X.shape[1]; ++e) detail::whiten_element(st, X, o, e);
    return out;
  }

  /// statistics_step.cuh's composition: block_moments -> covariance (+ mean) -> inverse_sqrt -> fold.
  template <class T, class Source>
  static host_step<T> step(const Source& source, const block_plan& plan, image_view<const T> w, const std::vector<T>& bias,
                           double eps, const isqrt_options& isqrt) {
    const index_t S = plan.count(), F = plan.features(), cout = w.shape[0];
    const host_moments m = moments<T>(source, plan);
    std::vector<T> cov(std::size_t(S * F * F));
    host_step<T> h{std::vector<T>(std::size_t(S * F)), std::vector<T>(std::size_t(S * F * F)), std::vector<T>(std::size_t(w.size())),
                   std::vector<T>(std::size_t(cout)), std::vector<isqrt_report>(std::size_t(S))};
    const tensor_view<T, 3> cv{cov.data(), {S, F, F}, {F * F, F, 1}}, D{h.D.data(), {S, F, F}, {F * F, F, 1}};
    for (index_t e = 0; e < S * F * F; ++e)
      detail::covariance_element(m.view(), eps, cv, row_major(h.mean.data(), S, F), e / (F * F), (e / F) % F, e % F);
    inverse_sqrt<T>(tensor_view<const T, 3>(cv), D, isqrt, contiguous(h.reports.data(), S));
    const auto& s = w.shape;
    fold<T>(checks::cpu_backend<sequential_policy>::statistics(plan, h.mean, h.D), w,
            bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), cout), nchw(h.weight.data(), s[0], s[1], s[2], s[3]),
            contiguous(h.bias.data(), cout));
    return h;
  }

  template <class T>
  static host_step<T> conv_step(image_view<const T> x, std::size_t, image_view<const T> w, const std::vector<T>& bias,
                                const conv_deconv_config& cfg) {
    return step<T>(patch_sampler<T>(x, cfg.geometry, cfg.sampling_stride), conv_statistics_plan(x.shape[1], cfg), w, bias,
                   cfg.eps, cfg.isqrt);
  }

  template <class T>
  static host_step<T> linear_step(matrix_view<const T> x, std::size_t, matrix_view<const T> w, const std::vector<T>& bias,
                                  const linear_deconv_config& cfg) {
    return step<T>(matrix_rows<T>(x), linear_statistics_plan(x.shape[1], cfg), ::netdeconv::detail::as_conv_weight(w), bias,
                   cfg.eps, cfg.isqrt);
  }

  // The backward: statistics_step_vjp.cuh's composition.

  template <class T>
  static void fold_vjp(const detail::weight_vjp_inputs<T>& in, const image_view<T>& out_weight, const vector_view<T>& out_bias,
                       const tensor_view<T, 3>& dD, const matrix_view<T>& dmu) {
    const index_t S = in.plan.count(), F = in.plan.features();
    std::vector<T> u(std::size_t(S * F));
    const matrix_view<T> uv = row_major(u.data(), S, F);
    for (index_t e = 0; e < out_weight.size(); ++e) detail::weight_vjp_element(in, out_weight, e);
    for (index_t e = 0; e < S * F * F; ++e)
      dD(e / (F * F), (e / F) % F, e % F) = detail::weight_vjp_D_element(in, e / (F * F), (e / F) % F, e % F);
    for (index_t e = 0; e < S * F; ++e) uv(e / F, e % F) = detail::weight_vjp_u_element(in, e / F, e % F);
    for (index_t e = 0; e < S * F; ++e) dmu(e / F, e % F) = detail::weight_vjp_mean_element(in.D, matrix_view<const T>(uv), e / F, e % F);
    if (!out_bias.empty())
      for (index_t o = 0; o < out_bias.shape[0]; ++o) out_bias(o) = in.grad_bias(o);
  }

  /// covariance_vjp: trace, sym, shift, then every entry of the sampled rows added in (r, j) order
  /// (nothing when keep is set and *keep is 0).
  template <class T, class Source, class Target>
  static void covariance_vjp(const Source& src, const block_plan& p, const moments_view<const double>& m,
                             const tensor_view<const T, 3>& dcov, const matrix_view<const T>& dmean, double eps_F, bool uncentred,
                             const Target& target, const int* keep) {
    const index_t S = p.count(), F = p.features();
    std::vector<T> sym(static_cast<std::size_t>(S * F * F)), mean(static_cast<std::size_t>(S * F)), dmu(mean),
        trace(static_cast<std::size_t>(S));
    const tensor_view<T, 3> sv{sym.data(), {S, F, F}, {F * F, F, 1}};
    const matrix_view<T> mv = row_major(mean.data(), S, F), dv = row_major(dmu.data(), S, F);
    for (index_t s = 0; s < S; ++s) trace[std::size_t(s)] = detail::covariance_vjp_trace(dcov, s);
    for (index_t e = 0; e < S * F * F; ++e)
      detail::covariance_vjp_sym_element(m, dcov, trace.data(), eps_F, sv, e / (F * F), (e / F) % F, e % F);
    for (index_t e = 0; e < S * F; ++e) detail::covariance_vjp_shift_element(m, dmean, uncentred, mv, dv, e / F, e % F);
    if (keep != nullptr && *keep == 0) return;
    for (index_t r = 0; r < src.rows(); ++r)
      for (index_t j = 0; j < src.width(); ++j)
        if (T* at = target.at(r, j))
          *at += detail::covariance_vjp_entry(src, p, tensor_view<const T, 3>(sv), matrix_view<const T>(mv),
                                              matrix_view<const T>(dv), r, j);
  }

  static void constant_reports(const vector_view<isqrt_report>& reports, const int* keep) {  // constant_reports_kernel
    if (keep != nullptr && *keep != 0) return;
    for (index_t s = 0; s < reports.shape[0]; ++s) reports(s) = {0, std::numeric_limits<double>::quiet_NaN(), isqrt_status::ok};
  }

  /// covariance_backward: moments, the layer covariance, inverse_sqrt_vjp, the scatter.
  template <class T, class Source, class Target>
  static void covariance_backward(const Source& source, const block_plan& p, const detail::backward_rule& how,
                                  const tensor_view<const T, 3>& dD, const matrix_view<const T>& dmu,
                                  const vector_view<isqrt_report>& reports, const Target& target, const int* keep) {
    const index_t S = p.count(), F = p.features();
    std::vector<T> cov(static_cast<std::size_t>(S * F * F)), dcov(cov), mu(static_cast<std::size_t>(S * F));
    const auto matrices = [&](std::vector<T>& v) { return tensor_view<T, 3>{v.data(), {S, F, F}, {F * F, F, 1}}; };
    const host_moments m = moments<T>(source, p);
    for (index_t e = 0; e < S * F * F; ++e)
      detail::layer_covariance_element(m.view(), how.eps, how.relative_eps, how.uncentred, matrices(cov),
                                       row_major(mu.data(), S, F), e / (F * F), (e / F) % F, e % F);
    inverse_sqrt_vjp<T>(tensor_view<const T, 3>(matrices(cov)), dD, matrices(dcov), how.isqrt, reports);
    covariance_vjp(source, p, m.view(), tensor_view<const T, 3>(matrices(dcov)), dmu, how.relative_eps ? how.eps / double(F) : 0.0,
                   how.uncentred, target, keep);
    if (keep != nullptr) constant_reports(reports, keep);
  }

  template <class T, class Source, class Target, int R>
  static void statistics_step_vjp(const Source& source, const detail::weight_vjp_inputs<T>& in, const detail::backward_rule& how,
                                  const statistics_step_gradients<T, R>& out, const image_view<T>& out_weight,
                                  const Target& target, bool constants = false, const int* keep = nullptr) {
    const block_plan& p = in.plan;
    const index_t S = p.count(), F = p.features();
    std::vector<T> dD(static_cast<std::size_t>(S * F * F)), dmu(static_cast<std::size_t>(S * F));
    const tensor_view<T, 3> dDv{dD.data(), {S, F, F}, {F * F, F, 1}};
    fold_vjp(in, out_weight, out.bias, dDv, row_major(dmu.data(), S, F));
    for (index_t e = 0; e < out.x.size(); ++e) detail::zero_element(out.x, e);
    if (constants) return constant_reports(out.reports, nullptr);
    covariance_backward(source, p, how, tensor_view<const T, 3>(dDv), matrix_view<const T>(row_major(dmu.data(), S, F)),
                        out.reports, target, keep);
  }

  /// fold_vjp.cuh's public form: the weight side on its own.
  template <class T>
  static host_fold_vjp<T> fold_vjp(const block_plan& plan, const std::vector<T>& mean, const std::vector<T>& D,
                                   image_view<const T> w, std::size_t, const std::vector<T>& bias, const std::vector<T>& gw,
                                   const std::vector<T>& gb) {
    const index_t S = plan.count(), F = plan.features(), cout = w.shape[0];
    host_fold_vjp<T> h{std::vector<T>(std::size_t(w.size())), std::vector<T>(bias.size()), std::vector<T>(std::size_t(S * F * F)),
                       std::vector<T>(std::size_t(S * F))};
    const auto stats = checks::cpu_backend<sequential_policy>::statistics(plan, mean, D);
    const tensor_view<const T, 4> gwv = checks::contiguous_like(gw.data(), w);
    fold_vjp(detail::weight_inputs(stats, w, gwv, contiguous(gb.data(), cout)), checks::contiguous_like(h.weight.data(), w),
             bias.empty() ? vector_view<T>{} : contiguous(h.bias.data(), cout), {h.D.data(), {S, F, F}, {F * F, F, 1}},
             row_major(h.mean.data(), S, F));
    return h;
  }

  /// conv_covariance_vjp's composition into a zeroed dx (x's shape, contiguous).
  template <class T>
  static std::vector<T> conv_covariance_vjp(image_view<const T> x, std::size_t, const conv_deconv_config& cfg,
                                            const host_moments& m, const std::vector<T>& dcov, const std::vector<T>& dmean) {
    const index_t S = m.statistics, F = m.features;
    std::vector<T> dx(std::size_t(x.size()));
    const patch_map map = ::netdeconv::detail::make_patch_map("conv_covariance_vjp", x.shape, cfg.geometry, cfg.sampling_stride, true);
    covariance_vjp(patch_sampler<T>(x, cfg.geometry, cfg.sampling_stride), conv_statistics_plan(x.shape[1], cfg), m.view(),
                   tensor_view<const T, 3>{dcov.data(), {S, F, F}, {F * F, F, 1}}, row_major(dmean.data(), S, F), 0.0, false,
                   detail::patch_target<T>{map, checks::contiguous_like(dx.data(), x)}, static_cast<const int*>(nullptr));
    return dx;
  }

  template <class T, int R, int RX, class Config>
  static host_step_vjp<T> step_vjp(tensor_view<const T, RX> x, tensor_view<const T, R> w, const std::vector<T>& bias,
                                   const Config& config, const block_plan& plan, const host_step<T>& forward,
                                   const std::vector<T>& gw, const std::vector<T>& gb) {
    using ::netdeconv::detail::as_conv_weight;
    const index_t S = plan.count(), cout = w.shape[0];
    host_step_vjp<T> h{std::vector<T>(std::size_t(w.size())), std::vector<T>(bias.empty() ? 0 : std::size_t(cout)),
                       std::vector<T>(std::size_t(x.size())), std::vector<isqrt_report>(std::size_t(S))};
    const statistics_step_gradients<T, RX> out{checks::contiguous_like(h.weight.data(), w),
                                               bias.empty() ? vector_view<T>{} : contiguous(h.bias.data(), cout),
                                               checks::contiguous_like(h.x.data(), x), contiguous(h.reports.data(), S)};
    const auto stats = checks::cpu_backend<sequential_policy>::statistics(plan, forward.mean, forward.D);
    const tensor_view<const T, R> gwv = checks::contiguous_like(gw.data(), w);
    const detail::backward_rule how{config.eps, false, false, config.isqrt};
    if constexpr (RX == 4) {
      const patch_map map = ::netdeconv::detail::make_patch_map("conv_statistics_step_vjp", x.shape, config.geometry,
                                                                config.sampling_stride, true);
      statistics_step_vjp(patch_sampler<T>(x, config.geometry, config.sampling_stride),
                          detail::weight_inputs(stats, w, gwv, contiguous(gb.data(), cout)), how, out, out.weight,
                          detail::patch_target<T>{map, out.x});
    } else {
      statistics_step_vjp(matrix_rows<T>(x), detail::weight_inputs(stats, as_conv_weight(w), as_conv_weight(gwv), contiguous(gb.data(), cout)),
                          how, out, as_conv_weight(out.weight), detail::row_target<T>{out.x});
    }
    return h;
  }

  // The layers: layer_state.cuh's composition over a host state (initialised as attach_state
  // would copy it there).

  /// train_statistics: moments -> layer covariance -> inverse_sqrt (-> the running covariance's)
  /// -> layer_decide (+ remaining_update) -> layer_update; then raise_failure's throws. Returns
  /// the decision (which the CUDA step keeps for the backward).
  template <class T, class Source>
  static detail::layer_decision layer_train(const Source& source, const block_plan& p, double eps, bool uncentred, const isqrt_options& isqrt,
                          const layer_options& o, const running_state_view<T>& st, const matrix_view<T>& mean,
                          const tensor_view<T, 3>& D, const vector_view<isqrt_report>& reports, const T* batch_scalars,
                          T* apply_scalars) {
    using namespace detail;
    const index_t S = p.count(), F = p.features();
    const host_moments m = moments<T>(source, p);
    std::vector<T> cov(static_cast<std::size_t>(S * F * F)), eval(static_cast<std::size_t>(S * F * F));
    std::vector<isqrt_report> eval_reports(static_cast<std::size_t>(S));
    const tensor_view<T, 3> cv{cov.data(), {S, F, F}, {F * F, F, 1}}, ev{eval.data(), {S, F, F}, {F * F, F, 1}};
    for (index_t e = 0; e < S * F * F; ++e)
      layer_covariance_element(m.view(), eps, o.relative_eps, uncentred, cv, mean, e / (F * F), (e / F) % F, e % F);
    inverse_sqrt<T>(tensor_view<const T, 3>(cv), D, isqrt, reports);
    vector_view<const isqrt_report> er{};
    if (needs_evaluation(o)) {
      inverse_sqrt<T>(tensor_view<const T, 3>(st.cov), ev, isqrt, contiguous(eval_reports.data(), S));
      er = contiguous<const isqrt_report>(eval_reports.data(), S);
    }
    const bool remaining = batch_scalars != nullptr && !st.remaining.empty();
    const bool remaining_bad = remaining && remaining_failed(batch_scalars, eps);
    const layer_decision d = layer_decide(o, st.counters, vector_view<const isqrt_report>(reports), er, remaining_bad);
    if (remaining && commits(d, o.on_failure)) remaining_update(d, o, st.remaining, batch_scalars, apply_scalars);
    for (index_t e = 0; e < S * F * F; ++e)
      layer_update_element(d, o, st, mean, D, tensor_view<const T, 3>(cv), tensor_view<const T, 3>(ev), reports, er,
                           e / (F * F), (e / F) % F, e % F);
    if (o.on_failure != failure_policy::throw_error) return d;
    if (remaining_bad) throw numerical_error("channel layer statistics failed");
    if (d.failed) throw numerical_error("layer statistics failed");
    if (d.eval_failed) throw numerical_error("the running covariance has no inverse square root");
    return d;
  }

  /// evaluation_D and check_evaluation: the evaluation D (the running D without average_covariance).
  template <class T>
  static std::vector<T> evaluation_D(const block_plan& p, const isqrt_options& isqrt, const layer_options& o,
                                     const running_state_view<T>& st) {
    const index_t S = p.count(), F = p.features();
    std::vector<T> D(static_cast<std::size_t>(S * F * F));
    const tensor_view<T, 3> dv{D.data(), {S, F, F}, {F * F, F, 1}};
    if (!o.average_covariance) {
      for (index_t e = 0; e < S * F * F; ++e) dv(e / (F * F), (e / F) % F, e % F) = st.D(e / (F * F), (e / F) % F, e % F);
      return D;
    }
    std::vector<isqrt_report> reports(static_cast<std::size_t>(S));
    inverse_sqrt<T>(tensor_view<const T, 3>(st.cov), dv, isqrt, contiguous(reports.data(), S));
    for (index_t e = 0; e < S * F * F; ++e) detail::evaluation_element(st, dv, e / (F * F), (e / F) % F, e % F);
    for (const isqrt_report& r : reports)
      if (st.counters(0) > 0 && r.status != isqrt_status::ok) throw numerical_error("the running covariance has no inverse square root");
    return D;
  }

  template <class T, int R, class X, class Source>
  static host_layer_trace<T> folding_layer(const block_plan& p, double eps, const isqrt_options& isqrt, const layer_options& o,
                                           const std::vector<X>& xs, Source&& source, tensor_view<const T, R> w,
                                           const std::vector<T>& bias) {
    const index_t S = p.count(), F = p.features(), cout = w.shape[0];
    host_layer_trace<T> t = host_layer_trace<T>::initial(S, F, o.average_covariance, false);
    const running_state_view<T> st = t.state(S, F);
    const vector_view<const T> b = bias.empty() ? vector_view<const T>{} : contiguous(bias.data(), cout);
    const auto conv = [](const auto& v) {  // a linear weight as (Cout, Fin, 1, 1)
      if constexpr (R == 4)
        return v;
      else
        return ::netdeconv::detail::as_conv_weight(v);
    };
    for (const X& x : xs) {
      host_step<T> h{std::vector<T>(std::size_t(S * F)), std::vector<T>(std::size_t(S * F * F)),
                     std::vector<T>(std::size_t(w.size())), std::vector<T>(std::size_t(cout)),
                     std::vector<isqrt_report>(std::size_t(S))};
      const matrix_view<T> mean = row_major(h.mean.data(), S, F);
      const tensor_view<T, 3> D{h.D.data(), {S, F, F}, {F * F, F, 1}};
      try {
        layer_train<T>(source(x), p, eps, false, isqrt, o, st, mean, D, contiguous(h.reports.data(), S), nullptr, nullptr);
        t.threw.push_back(0);
      } catch (const numerical_error&) {
        t.threw.push_back(1);
      }
      fold<T>(block_statistics_view<const T>{p, mean, D}, conv(w), b, conv(checks::contiguous_like(h.weight.data(), w)),
              contiguous(h.bias.data(), cout));
      t.steps.push_back(std::move(h));
    }
    std::vector<T> D = evaluation_D<T>(p, isqrt, o, st);
    t.evaluated.resize(std::size_t(w.size() + cout));
    fold<T>(block_statistics_view<const T>{p, st.mean, {D.data(), {S, F, F}, {F * F, F, 1}}}, conv(w), b,
            conv(checks::contiguous_like(t.evaluated.data(), w)), contiguous(t.evaluated.data() + w.size(), cout));
    return t;
  }

  template <class T>
  static host_layer_trace<T> conv_layer(const std::vector<image_view<const T>>& xs, std::size_t, image_view<const T> w,
                                        const std::vector<T>& bias, const conv_deconv_config& cfg, const layer_options& o) {
    return folding_layer<T, 4>(conv_statistics_plan(xs[0].shape[1], cfg), cfg.eps, cfg.isqrt, o, xs,
                               [&](const image_view<const T>& x) { return patch_sampler<T>(x, cfg.geometry, cfg.sampling_stride); },
                               w, bias);
  }
  template <class T>
  static host_layer_trace<T> linear_layer(const std::vector<matrix_view<const T>>& xs, std::size_t, matrix_view<const T> w,
                                          const std::vector<T>& bias, const linear_deconv_config& cfg,
                                          const layer_options& o) {
    return folding_layer<T, 2>(linear_statistics_plan(xs[0].shape[1], cfg), cfg.eps, cfg.isqrt, o, xs,
                               [](const matrix_view<const T>& x) { return matrix_rows<T>(x); }, w, bias);
  }

  /// The layers' backward after every step (layer_state.cuh: the step keeps its decision, then
  /// conv_backward / linear_backward gate the statistics' gradient with its use_batch), with the
  /// step's outputs as the statistics (mode constants if `constants`). A step that throws has an
  /// empty result.
  template <class T, int R, class X, class Sources, class Targets>
  static std::vector<host_step_vjp<T>> folding_layer_backward(const block_plan& p, double eps, const isqrt_options& isqrt,
                                                              const layer_options& o, const std::vector<X>& xs, Sources&& source,
                                                              Targets&& target, tensor_view<const T, R> w, const std::vector<T>& bias,
                                                              const std::vector<T>& gw, const std::vector<T>& gb, bool constants) {
    const index_t S = p.count(), F = p.features(), cout = w.shape[0];
    host_layer_trace<T> t = host_layer_trace<T>::initial(S, F, o.average_covariance, false);
    const running_state_view<T> st = t.state(S, F);
    const auto conv = [](const auto& v) {  // a linear weight as (Cout, Fin, 1, 1)
      if constexpr (R == 4)
        return v;
      else
        return ::netdeconv::detail::as_conv_weight(v);
    };
    const detail::backward_rule how{eps, o.relative_eps, false, isqrt};
    std::vector<host_step_vjp<T>> out;
    for (const X& x : xs) {
      std::vector<T> mean(static_cast<std::size_t>(S * F)), D(static_cast<std::size_t>(S * F * F));
      std::vector<isqrt_report> reports(static_cast<std::size_t>(S));
      detail::layer_decision d{};
      try {
        d = layer_train<T>(source(x), p, eps, false, isqrt, o, st, row_major(mean.data(), S, F), {D.data(), {S, F, F}, {F * F, F, 1}},
                           contiguous(reports.data(), S), nullptr, nullptr);
      } catch (const numerical_error&) {
        out.emplace_back();
        continue;
      }
      host_step_vjp<T> g{std::vector<T>(std::size_t(w.size())), std::vector<T>(bias.empty() ? 0 : std::size_t(cout)),
                         std::vector<T>(std::size_t(x.size())), std::vector<isqrt_report>(std::size_t(S))};
      const statistics_step_gradients<T, R> views{checks::contiguous_like(g.weight.data(), w),
                                                  bias.empty() ? vector_view<T>{} : contiguous(g.bias.data(), cout),
                                                  checks::contiguous_like(g.x.data(), x), contiguous(g.reports.data(), S)};
      const auto stats = checks::cpu_backend<sequential_policy>::statistics(p, mean, D);
      const tensor_view<const T, R> gwv = checks::contiguous_like(gw.data(), w);
      statistics_step_vjp(source(x), detail::weight_inputs(stats, conv(w), conv(gwv), contiguous(gb.data(), cout)), how, views,
                          conv(views.weight), target(x, views.x), constants, &d.use_batch);
      out.push_back(std::move(g));
    }
    return out;
  }

  template <class T>
  static std::vector<host_step_vjp<T>> conv_layer_backward(const std::vector<image_view<const T>>& xs, std::size_t,
                                                           image_view<const T> w, const std::vector<T>& bias,
                                                           const conv_deconv_config& cfg, const layer_options& o,
                                                           const std::vector<T>& gw, const std::vector<T>& gb, bool constants) {
    return folding_layer_backward<T, 4>(
        conv_statistics_plan(xs[0].shape[1], cfg), cfg.eps, cfg.isqrt, o, xs,
        [&](const image_view<const T>& x) { return patch_sampler<T>(x, cfg.geometry, cfg.sampling_stride); },
        [&](const image_view<const T>& x, const image_view<T>& dx) {
          return detail::patch_target<T>{
              ::netdeconv::detail::make_patch_map("backward", x.shape, cfg.geometry, cfg.sampling_stride, true), dx};
        },
        w, bias, gw, gb, constants);
  }
  template <class T>
  static std::vector<host_step_vjp<T>> linear_layer_backward(const std::vector<matrix_view<const T>>& xs, std::size_t,
                                                             matrix_view<const T> w, const std::vector<T>& bias,
                                                             const linear_deconv_config& cfg, const layer_options& o,
                                                             const std::vector<T>& gw, const std::vector<T>& gb, bool constants) {
    return folding_layer_backward<T, 2>(
        linear_statistics_plan(xs[0].shape[1], cfg), cfg.eps, cfg.isqrt, o, xs,
        [](const matrix_view<const T>& x) { return matrix_rows<T>(x); },
        [](const matrix_view<const T>&, const matrix_view<T>& dx) { return detail::row_target<T>{dx}; }, w, bias, gw, gb,
        constants);
  }

  /// The channel layer's steps (the writing form), each followed by its backward given dys[k]
  /// (x's shape, contiguous; mode constants if `constants`): layer_state.cuh's channel_step and
  /// channel_backward. dL/dx in x.
  template <class T>
  static std::vector<host_step_vjp<T>> channel_layer_backward(const std::vector<image_view<const T>>& xs, std::size_t,
                                                              const channel_deconv_config& cfg, const layer_options& o,
                                                              const std::vector<std::vector<T>>& dys, bool constants) {
    using namespace detail;
    const index_t C = xs[0].shape[1], B = cfg.block;
    const ::netdeconv::detail::channel_spec spec{C, C / B * B, B, cfg.sampling_stride, cfg.eps};
    const block_plan p = make_block_plan(block_layout::independent, B, 1, B);
    host_layer_trace<T> t = host_layer_trace<T>::initial(1, B, o.average_covariance, C % B != 0);
    const running_state_view<T> st = t.state(1, B);
    const backward_rule how{cfg.eps, o.relative_eps, cfg.uncentred_covariance, cfg.isqrt};
    std::vector<host_step_vjp<T>> out;
    for (std::size_t k = 0; k < xs.size(); ++k) {
      const image_view<const T>& x = xs[k];
      std::vector<T> mean(static_cast<std::size_t>(B)), D(static_cast<std::size_t>(B * B));
      std::vector<isqrt_report> reports(1);
      T scalars[4] = {};
      const bool remaining = spec.whitened < C;
      if (remaining) remaining_statistics(spec, x, scalars);
      const auto samples = ::netdeconv::detail::make_channel_samples(spec, x);
      layer_decision d{};
      try {
        d = layer_train<T>(samples, p, cfg.eps, cfg.uncentred_covariance, cfg.isqrt, o, st, row_major(mean.data(), 1, B),
                           {D.data(), {1, B, B}, {B * B, B, 1}}, contiguous(reports.data(), 1), remaining ? scalars : nullptr,
                           scalars + 2);
      } catch (const numerical_error&) {
        out.emplace_back();
        continue;
      }
      const vector_view<const T> used_remaining = remaining ? vector_view<const T>{scalars + 2, {2}, {1}} : vector_view<const T>{};
      const tensor_view<const T, 3> Dv{D.data(), {1, B, B}, {B * B, B, 1}};
      host_step_vjp<T> g{{}, {}, std::vector<T>(std::size_t(x.size())), std::vector<isqrt_report>(1)};
      const image_view<T> dx = checks::contiguous_like(g.x.data(), x);
      const image_view<const T> dy = checks::contiguous_like(dys[k].data(), x);
      for (index_t e = 0; e < x.size(); ++e) channel_direct_vjp_element(spec, dy, Dv, used_remaining, dx, e);
      if (constants) {
        constant_reports(contiguous(g.reports.data(), 1), nullptr);
        out.push_back(std::move(g));
        continue;
      }
      std::vector<T> dD(static_cast<std::size_t>(B * B)), dy_sum(static_cast<std::size_t>(B)), dmu(static_cast<std::size_t>(B));
      const tensor_view<T, 3> dDv{dD.data(), {1, B, B}, {B * B, B, 1}};
      for (index_t e = 0; e < B * B; ++e) {
        dDv(0, e / B, e % B) = channel_D_vjp_element(spec, x, dy, matrix_view<const T>(row_major(mean.data(), 1, B)), e / B, e % B);
        if (e % B == 0) dy_sum[std::size_t(e / B)] = channel_dy_sum_element(spec, dy, e / B);
      }
      for (index_t i = 0; i < B; ++i) dmu[std::size_t(i)] = weight_vjp_mean_element(Dv, matrix_view<const T>(row_major(dy_sum.data(), 1, B)), 0, i);
      covariance_backward(samples, p, how, tensor_view<const T, 3>(dDv), matrix_view<const T>(row_major(dmu.data(), 1, B)),
                          contiguous(g.reports.data(), 1), channel_target<T>{samples, dx}, &d.use_batch);
      if (remaining) {
        double sums[2] = {0, 0};
        for (int tid = 0; tid < 256; ++tid) {  // the kernel's tree reduction, summed in thread order here
          double a, b;
          channel_remaining_vjp_partial(spec, x, dy, double(scalars[2]), tid, 256, a, b);
          sums[0] += a, sums[1] += b;
        }
        if (d.use_batch)
          for (index_t e = 0; e < x.shape[0] * spec.remaining_per_image(x.shape); ++e)
            channel_remaining_vjp_element(spec, x, used_remaining, sums, dx, e);
      }
      out.push_back(std::move(g));
    }
    return out;
  }

  /// remaining_kernel (one block of 256 threads): the remaining channels' batch mean and variance into scalars[0, 2).
  template <class T>
  static void remaining_statistics(const ::netdeconv::detail::channel_spec& spec, const image_view<const T>& x, T* scalars) {
    const double shift = double(spec.remaining_value(x, 0, 0));
    double sum = 0, squares = 0;
    for (int tid = 0; tid < 256; ++tid) {
      double a, b;
      detail::remaining_partial(spec, x, shift, tid, 256, a, b);
      sum += a, squares += b;  // the kernel's tree reduction, summed in thread order here
    }
    detail::remaining_finish(shift, sum, squares, x.shape[0] * spec.remaining_per_image(x.shape), scalars);
  }

  /// channel_train and channel_eval: remaining_kernel (one block of 256 threads), train, apply.
  template <class T>
  static host_layer_trace<T> channel_layer(const std::vector<image_view<const T>>& xs, std::size_t,
                                           const channel_deconv_config& cfg, const layer_options& o) {
    using namespace detail;
    const index_t C = xs[0].shape[1], B = cfg.block;
    const ::netdeconv::detail::channel_spec spec{C, C / B * B, B, cfg.sampling_stride, cfg.eps};
    const block_plan p = make_block_plan(block_layout::independent, B, 1, B);
    host_layer_trace<T> t = host_layer_trace<T>::initial(1, B, o.average_covariance, C % B != 0);
    const running_state_view<T> st = t.state(1, B);
    const auto apply = [&](const image_view<const T>& x, T* y, const matrix_view<const T>& mu, const tensor_view<const T, 3>& D,
                           const vector_view<const T>& scalars) {
      const image_view<T> yv = checks::contiguous_like(y, x);
      for (index_t e = 0; e < x.size(); ++e) channel_apply_element(spec, x, yv, mu, D, scalars, e);
    };
    for (const image_view<const T>& x : xs) {
      host_step<T> h{std::vector<T>(std::size_t(B)), std::vector<T>(std::size_t(B * B)), std::vector<T>(std::size_t(x.size())),
                     {}, std::vector<isqrt_report>(1)};
      T scalars[4] = {};
      const bool remaining = spec.whitened < C;
      if (remaining) remaining_statistics(spec, x, scalars);
      const matrix_view<T> mean = row_major(h.mean.data(), 1, B);
      const tensor_view<T, 3> D{h.D.data(), {1, B, B}, {B * B, B, 1}};
      try {
        layer_train<T>(make_channel_samples(spec, x), p, cfg.eps, cfg.uncentred_covariance, cfg.isqrt, o, st, mean, D,
                       contiguous(h.reports.data(), 1), remaining ? scalars : nullptr, scalars + 2);
        t.threw.push_back(0);
      } catch (const numerical_error&) {
        t.threw.push_back(1);
      }
      apply(x, h.weight.data(), mean, D, remaining ? vector_view<const T>{scalars + 2, {2}, {1}} : vector_view<const T>{});
      t.steps.push_back(std::move(h));
    }
    std::vector<T> D = evaluation_D<T>(p, cfg.isqrt, o, st);
    t.evaluated.resize(std::size_t(xs.back().size()));
    apply(xs.back(), t.evaluated.data(), st.mean, {D.data(), {1, B, B}, {B * B, B, 1}}, st.remaining);
    return t;
  }
};

}  // namespace netdeconv::cuda::emulate
