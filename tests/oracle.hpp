// SPDX-License-Identifier: MIT
#pragma once
// Test oracles: float64 implementations written directly from docs/method.md, independent of the library's
// loops, plus random data helpers. Every fast or blocked path is compared with these.

#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <Eigen/QR>

#include <netdeconv/eigen.hpp>
#include <netdeconv/blocks.hpp>
#include <netdeconv/im2col.hpp>
#include <netdeconv/isqrt_options.hpp>
#include <netdeconv/tensor_view.hpp>

namespace oracle {

using netdeconv::index_t;
using MatrixXd = Eigen::MatrixXd;
using VectorXd = Eigen::VectorXd;

/// ||out - ref||_F / ||ref||_F.
template <class A, class B>
double rel_err(const A& out, const B& ref) {
  return (out.template cast<double>() - ref.template cast<double>()).norm() / ref.template cast<double>().norm();
}

inline double rel_err(const std::vector<double>& out, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

/// An owned NCHW-logical image in one of three memory layouts:
/// 0 = contiguous NCHW, 1 = contiguous NHWC, 2 = non-contiguous (NCHW with padded row/plane/batch strides).
template <class T>
struct image {
  std::vector<T> storage;
  netdeconv::image_view<T> view;
  image(index_t N, index_t C, index_t H, index_t W, int layout) {
    if (layout == 0) {
      storage.assign(N * C * H * W, T(0));
      view = netdeconv::nchw(storage.data(), N, C, H, W);
    } else if (layout == 1) {
      storage.assign(N * C * H * W, T(0));
      view = netdeconv::nhwc(storage.data(), N, H, W, C);
    } else {
      const index_t sw = 2, sh = W * sw + 3, sc = H * sh + 5, sn = C * sc + 7;
      storage.assign(N * sn, T(0));
      view = {storage.data(), {N, C, H, W}, {sn, sc, sh, sw}};
    }
  }
  netdeconv::image_view<const T> cview() const { return view; }
  T& operator()(index_t n, index_t c, index_t y, index_t x) { return view(n, c, y, x); }
  T operator()(index_t n, index_t c, index_t y, index_t x) const { return view(n, c, y, x); }
};

template <class T>
void fill_normal(image<T>& im, std::mt19937_64& rng, double mean = 0.0, double sd = 1.0) {
  std::normal_distribution<double> normal(mean, sd);
  const auto& s = im.view.shape;
  for (index_t n = 0; n < s[0]; ++n)
    for (index_t c = 0; c < s[1]; ++c)
      for (index_t y = 0; y < s[2]; ++y)
        for (index_t x = 0; x < s[3]; ++x) im(n, c, y, x) = T(normal(rng));
}

/// Patch matrix from the definition: entry (r, j) with r = (n*Ho + oy)*Wo + ox and
/// j = (c*kh + ky)*kw + kx reads x[n, c, oy*s - p + ky*d, ox*s - p + kx*d], or 0 outside.
template <class T>
MatrixXd im2col(const image<T>& x, const netdeconv::conv_geometry& g) {
  const auto& s = x.view.shape;
  const index_t Ho = (s[2] + 2 * g.pad_h - g.dilation_h * (g.kernel_h - 1) - 1) / g.stride_h + 1;
  const index_t Wo = (s[3] + 2 * g.pad_w - g.dilation_w * (g.kernel_w - 1) - 1) / g.stride_w + 1;
  MatrixXd X(s[0] * Ho * Wo, s[1] * g.kernel_h * g.kernel_w);
  for (index_t r = 0; r < X.rows(); ++r)
    for (index_t j = 0; j < X.cols(); ++j) {
      const index_t n = r / (Ho * Wo), oy = (r / Wo) % Ho, ox = r % Wo;
      const index_t c = j / (g.kernel_h * g.kernel_w), ky = (j / g.kernel_w) % g.kernel_h, kx = j % g.kernel_w;
      const index_t y = oy * g.stride_h - g.pad_h + ky * g.dilation_h;
      const index_t xx = ox * g.stride_w - g.pad_w + kx * g.dilation_w;
      const bool inside = y >= 0 && y < s[2] && xx >= 0 && xx < s[3];
      X(r, j) = inside ? double(x(n, c, y, xx)) : 0.0;
    }
  return X;
}

/// Sampled rows of docs/method.md §2: k > 1: im2col with stride S*s; 1x1: every (S*s)^2-th pixel row.
template <class T>
MatrixXd sampled_rows(const image<T>& x, netdeconv::conv_geometry g, index_t S) {
  if (g.kernel_h > 1 || g.kernel_w > 1) {
    g.stride_h *= S;
    g.stride_w *= S;
    return im2col(x, g);
  }
  const auto& s = x.view.shape;
  const index_t step = (S * g.stride_h) * (S * g.stride_w), pixels = s[0] * s[2] * s[3];
  MatrixXd X((pixels + step - 1) / step, s[1]);
  for (index_t r = 0; r < X.rows(); ++r) {
    const index_t p = r * step, n = p / (s[2] * s[3]), y = (p / s[3]) % s[2], xx = p % s[3];
    for (index_t c = 0; c < s[1]; ++c) X(r, c) = double(x(n, c, y, xx));
  }
  return X;
}

/// The sample matrices of each statistic of a block layout, from docs/method.md §3 (reshape semantics of the
/// reference: interleaved = row viewed as (F, G) then transposed to G rows of F).
inline std::vector<MatrixXd> blocked(const MatrixXd& X, const netdeconv::block_plan& plan) {
  using netdeconv::block_layout;
  const index_t C = plan.channels, K = plan.kernel_area, B = plan.block, F = K * B, G = C / B;
  std::vector<MatrixXd> out;
  switch (plan.layout) {
    case block_layout::interleaved_shared: {
      MatrixXd M(X.rows() * G, F);
      for (index_t r = 0; r < X.rows(); ++r)
        for (index_t f = 0; f < F; ++f)
          for (index_t g = 0; g < G; ++g) M(r * G + g, f) = X(r, f * G + g);
      out.push_back(M);
      break;
    }
    case block_layout::contiguous_shared: {
      MatrixXd M(X.rows() * G, B);
      for (index_t r = 0; r < X.rows(); ++r)
        for (index_t g = 0; g < G; ++g) M.row(r * G + g) = X.block(r, g * B, 1, B);
      out.push_back(M);
      break;
    }
    case block_layout::grouped:
    case block_layout::independent:
      for (index_t s = 0; s < C / B; ++s) out.push_back(X.middleCols(s * F, F));
      break;
  }
  return out;
}

/// The patch columns behind each statistic, from the layouts' definition (blocked() of the row
/// 0, 1, ..., C*K-1), not from block_plan::column: pieces[s](g, f) is the patch column that feeds
/// feature f of the g-th row that every patch row gives statistic s.
inline std::vector<MatrixXd> piece_columns(const netdeconv::block_plan& plan) {
  const index_t width = plan.channels * plan.kernel_area;
  return blocked(Eigen::RowVectorXd::LinSpaced(width, 0, double(width - 1)), plan);
}

/// fold from its definition (docs/method.md §6): with D_full the (C*K) x (C*K) block matrix that
/// holds D_s on the columns of each piece and mu_full the means on them, output o's dense weight
/// row w (zero outside o's group) becomes w D_full, and b'[o] = b[o] - (w D_full) . mu_full.
/// W is (Cout, C/groups*K) contiguous; returns W' in the same layout, then b' (Cout).
inline std::pair<std::vector<double>, std::vector<double>> fold(const netdeconv::block_plan& plan,
                                                                const std::vector<VectorXd>& mean,
                                                                const std::vector<MatrixXd>& D, const std::vector<double>& W,
                                                                const std::vector<double>& b, index_t cout) {
  const index_t width = plan.channels * plan.kernel_area, group_cols = width / plan.groups;
  MatrixXd D_full = MatrixXd::Zero(width, width);
  VectorXd mu_full = VectorXd::Zero(width);
  const auto pieces = piece_columns(plan);
  for (std::size_t s = 0; s < pieces.size(); ++s)
    for (index_t g = 0; g < pieces[s].rows(); ++g)
      for (index_t f = 0; f < pieces[s].cols(); ++f) {
        const auto col = [&](index_t k) { return index_t(pieces[s](g, k)); };
        mu_full[col(f)] = mean[s][f];
        for (index_t k = 0; k < pieces[s].cols(); ++k) D_full(col(k), col(f)) = D[s](k, f);
      }
  std::vector<double> weight(W.size()), bias(cout);
  for (index_t o = 0; o < cout; ++o) {
    const index_t base = (o / (cout / plan.groups)) * group_cols;
    Eigen::RowVectorXd w = Eigen::RowVectorXd::Zero(width);
    for (index_t j = 0; j < group_cols; ++j) w[base + j] = W[o * group_cols + j];
    const Eigen::RowVectorXd folded = w * D_full;
    for (index_t j = 0; j < group_cols; ++j) weight[o * group_cols + j] = folded[base + j];
    bias[o] = (b.empty() ? 0.0 : b[o]) - folded.dot(mu_full);
  }
  return {weight, bias};
}

/// Two-pass float64 covariance: mean first, then (1/n) sum (x - mu)(x - mu)^T + eps I.
inline MatrixXd covariance(const MatrixXd& X, double eps) {
  const VectorXd mu = X.colwise().mean();
  const MatrixXd Xc = X.rowwise() - mu.transpose();
  return Xc.transpose() * Xc / double(X.rows()) + eps * MatrixXd::Identity(X.cols(), X.cols());
}

/// The coupled Newton-Schulz recurrence of docs/method.md §5 in float64, n steps, Frobenius (or
/// trace) scaling.
inline MatrixXd newton_schulz(const MatrixXd& A, int n, netdeconv::isqrt_scaling scaling = netdeconv::isqrt_scaling::frobenius) {
  const double s = scaling == netdeconv::isqrt_scaling::frobenius ? A.norm() : A.trace();
  const MatrixXd I = MatrixXd::Identity(A.rows(), A.cols());
  MatrixXd Y = A / s, Z = I;
  for (int k = 0; k < n; ++k) {
    const MatrixXd T = 0.5 * (3.0 * I - Z * Y);
    Y = Y * T;
    Z = T * Z;
  }
  return Z / std::sqrt(s);
}

/// Random SPD matrix with eigenvalues log-spaced in [1/cond, 1] times `scale`.
inline MatrixXd random_spd(index_t F, double cond, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> normal;
  MatrixXd G(F, F);
  for (index_t i = 0; i < G.size(); ++i) G.data()[i] = normal(rng);
  const Eigen::HouseholderQR<MatrixXd> qr(G);
  const MatrixXd Q = qr.householderQ();
  VectorXd w(F);
  for (index_t i = 0; i < F; ++i) w[i] = scale * std::pow(cond, -double(i) / double(std::max<index_t>(F - 1, 1)));
  return Q * w.asDiagonal() * Q.transpose();
}

/// Direct convolution in float64: y[n, o, oy, ox] = b[o] + sum over (c in o's group, ky, kx) of
/// W[o, c_local, ky, kx] * x[n, c, ...] (zero padding). weight is OIHW contiguous.
template <class T>
std::vector<double> conv2d(const image<T>& x, const std::vector<double>& weight, const std::vector<double>& bias,
                           index_t cout, const netdeconv::conv_geometry& g, index_t groups) {
  const auto& s = x.view.shape;
  const index_t cg = s[1] / groups, og = cout / groups;
  const index_t Ho = (s[2] + 2 * g.pad_h - g.dilation_h * (g.kernel_h - 1) - 1) / g.stride_h + 1;
  const index_t Wo = (s[3] + 2 * g.pad_w - g.dilation_w * (g.kernel_w - 1) - 1) / g.stride_w + 1;
  std::vector<double> y(s[0] * cout * Ho * Wo);
  for (index_t n = 0; n < s[0]; ++n)
    for (index_t o = 0; o < cout; ++o)
      for (index_t oy = 0; oy < Ho; ++oy)
        for (index_t ox = 0; ox < Wo; ++ox) {
          double acc = bias.empty() ? 0.0 : bias[o];
          for (index_t cl = 0; cl < cg; ++cl)
            for (index_t ky = 0; ky < g.kernel_h; ++ky)
              for (index_t kx = 0; kx < g.kernel_w; ++kx) {
                const index_t yy = oy * g.stride_h - g.pad_h + ky * g.dilation_h;
                const index_t xx = ox * g.stride_w - g.pad_w + kx * g.dilation_w;
                if (yy < 0 || yy >= s[2] || xx < 0 || xx >= s[3]) continue;
                acc += weight[((o * cg + cl) * g.kernel_h + ky) * g.kernel_w + kx] *
                       double(x(n, (o / og) * cg + cl, yy, xx));
              }
          y[((n * cout + o) * Ho + oy) * Wo + ox] = acc;
        }
  return y;
}

}  // namespace oracle
