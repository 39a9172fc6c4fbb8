// SPDX-License-Identifier: MIT
// Softmax regression on the 8x8 digits trained three ways with plain SGD (paper §5, Fig. 5,
// Ye et al., ICLR 2020): raw inputs, per-feature standardisation, linear deconvolution layer.
//
//   train_softmax [--data DIGITS_CSV_GZ] [--out DIR] [--batch N] [--steps N] [--lr A,B,...]
//                 [--loss softmax|l2] [--isqrt N|exact] [--seed N]
//
// Data: the 1797 digits of UCI / scikit-learn (digits.csv.gz: 64 pixel values 0..16 and the label
// per line), shipped by Debian's python3-sklearn; pixels are divided by 16 ("raw" = values in [0, 1]).
// A seeded shuffle puts 1437 digits (80 %) in the training set and 360 in the test set.
//
// Model: y = x W^T + b, W (10 x 64) and b start at 0; loss --loss softmax (default): mean
// cross-entropy of softmax(y); --loss l2: (1/2n) sum |y - onehot|^2 (the paper's Fig. 5(a)).
// Training: mini-batch SGD, --batch 128 by default (--batch 0: full batch), --steps 100, the same
// batch sequence for every method and learning rate (--lr, default 1,0.1,0.01). The loss printed
// for step k is the loss of batch k in the training forward, before that step's update.
//   raw:          z = x
//   standardised: z = (x - mu_B) / sqrt(var_B + 1e-5) per feature with the batch's mean and biased
//                 variance (batch norm without gamma/beta); running mean/variance (momentum 0.1,
//                 unbiased variance, as PyTorch) for evaluation
//   deconv:       netdeconv::linear_deconv_layer<float> in reference-compatible mode (block 64 = all
//                 features, eps 1e-5, 5 Newton-Schulz steps unless --isqrt, momentum 0.1); its
//                 train_step folds the batch's mu, D into W' = W D, b' = b - W' mu and the forward is
//                 y = x W'^T + b' = (x - mu) D W^T + b, i.e. z = (x - mu) D.
// Gradient (all three): dL/dW = dL/dy^T z, dL/db = column sums of dL/dy, with the statistics (mu,
// var, D) held constant. The paper (§4.2, A.8) back-propagates through D with autograd; for this
// one-layer model that changes nothing: mu and D are functions of the data batch only, not of W or
// b, so dL/dW = dL/dy^T (x - mu) D is the exact gradient; train_step returns the mu and D it folded
// with, so z = (x - mu) D.
// Evaluation: eval-mode weights (running statistics; deconv: layer.eval) on the training and the test
// set, printed as loss and accuracy after the last step.
// Output: the loss table on stdout, DIR/losses.csv (step, one column per method and learning rate) and
// DIR/loss.png (one panel per learning rate, the three methods' loss vs step, log scale).
//
// Observed (Debian 12, g++ 12, float, seed 1, 100 steps, deconv with 5 Newton-Schulz steps;
// scripts/train-example reproduces them). Loss of the batch at step 5 / step 100 (training forward):
//
//   loss, batch        lr     raw               standardised      deconv
//   softmax, 128       1      1.722 / 0.359     0.534 / 0.131     1.032 / 0.169
//                      0.1    2.231 / 1.171     1.704 / 0.364     2.109 / 0.551
//                      0.01   2.295 / 2.124     2.232 / 1.216     2.283 / 1.838
//   l2, full batch     1      7e6 / diverged    1e5 / diverged    0.156 / 0.154
//                      0.1    0.385 / 0.187     0.240 / 0.154     0.310 / 0.155
//                      0.01   0.462 / 0.325     0.433 / 0.190     0.475 / 0.209
//   l2, 128            1      8e6 / diverged    1.5e5 / diverged  0.239 / 0.215
//
// - The paper's claim holds for the L2 loss (its Fig. 5(a)): raw and standardised inputs diverge at
//   learning rate 1 (their stability limits 2/lambda_max are about 0.19 and 0.27: raw diverges at
//   0.2, standardised at 0.3), deconvolution is stable up to lr < 2 (diverges at 2.1) and at lr 1
//   is at 0.156 after 4 updates (step 5), 2 % above the least-squares optimum of 0.1533; with the
//   exact inverse square root (--isqrt exact) one update reaches 0.1536 (Proposition 1). The 5
//   Newton-Schulz steps under-whiten the ~14 covariance directions with eigenvalue < 1e-3 (the
//   covariance's condition number is ~4e5), which is the slow remainder. With mini-batches of 128 a
//   step of lr 1 jumps to each batch's own least-squares fit (65 parameters per output for 128
//   rows), so the loss stalls at ~0.21 while lr 0.1 reaches 0.17 on the same batches.
// - It does not hold for softmax cross-entropy (Fig. 5(b)) here: no method diverges at any rate
//   tried (0.01 to 30; the cross-entropy gradient is bounded), and at rates 0.01 to 3 per-feature
//   standardisation is the fastest, deconvolution second, raw last (at 10 and 30, full batch,
//   deconvolution leads over the first 5-20 steps, standardisation by step 100). Whitening gives
//   every direction unit variance, while the correlated standardised pixels keep a top eigenvalue
//   of ~7.3, along which the first, largest decrease of the loss happens; lr 1 is no "optimal
//   rate" for this loss.
// - Evaluation with the running statistics (compatible mode: running D averaged from I with
//   momentum 0.1) gives softmax test accuracies of 94.2 % (raw), 96.7 % and 96.7 % at lr 1, batch 128.

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <zlib.h>

#include <Eigen/Core>
#include <netdeconv/netdeconv.hpp>

// stb initialises structs partially (-Wextra); Meson includes it as a system header anyway.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#pragma GCC diagnostic pop

#ifndef NETDECONV_DIGITS_CSV
#define NETDECONV_DIGITS_CSV "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz"
#endif

namespace {

namespace nd = netdeconv;
using nd::index_t;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using row_vector = Eigen::RowVectorXf;

constexpr index_t features = 64, classes = 10;
constexpr double bn_eps = 1e-5, momentum = 0.1;

enum class method { raw, standardised, deconv };
constexpr std::array<method, 3> methods{method::raw, method::standardised, method::deconv};
const char* name(method m) {
  constexpr const char* names[] = {"raw", "standardised", "deconv"};
  return names[static_cast<int>(m)];
}

enum class loss_kind { softmax, l2 };

struct options {
  std::string data = NETDECONV_DIGITS_CSV;
  std::string out = "demo-output/train_softmax";
  index_t batch = 128;  // 0: full batch
  index_t steps = 100;
  std::vector<double> lrs{1.0, 0.1, 0.01};
  loss_kind loss = loss_kind::softmax;
  std::string isqrt = "5";
  std::uint32_t seed = 1;
};

struct dataset {
  matrix x;  // n x 64, values in [0, 1]
  std::vector<int> label;
  index_t size() const { return index_t(label.size()); }
};

// ---------------------------------------------------------------- data

dataset read_digits(const std::string& path) {
  if (!std::filesystem::exists(path))
    throw std::runtime_error(
        "digits data not found at " + path +
        "\n  it ships with Debian's python3-sklearn: sudo apt-get install python3-sklearn (or scripts/install-deps),"
        "\n  or pass --data PATH to sklearn's datasets/data/digits.csv.gz (plain .csv works too)");
  gzFile f = gzopen(path.c_str(), "rb");  // reads gzip and, transparently, uncompressed files
  if (f == nullptr) throw std::runtime_error("cannot open " + path);
  std::vector<float> values;
  std::vector<int> labels;
  std::array<char, 4096> line{};
  index_t line_no = 0;
  while (gzgets(f, line.data(), int(line.size())) != nullptr) {
    ++line_no;
    const char* p = line.data();
    while (*p == ' ' || *p == '\t') ++p;
    if (*p == '\n' || *p == '\r' || *p == '\0') continue;
    std::array<double, features + 1> row{};
    for (index_t i = 0; i <= features; ++i) {
      char* end = nullptr;
      row[std::size_t(i)] = std::strtod(p, &end);
      if (end == p) {
        gzclose(f);
        throw std::runtime_error(path + ":" + std::to_string(line_no) + ": expected 65 comma-separated numbers");
      }
      p = end;
      while (*p == ',' || *p == ' ') ++p;
    }
    for (index_t i = 0; i < features; ++i) values.push_back(float(row[std::size_t(i)] / 16.0));
    const double l = row[std::size_t(features)];
    if (l < 0 || l >= classes || l != std::floor(l)) {
      gzclose(f);
      throw std::runtime_error(path + ":" + std::to_string(line_no) + ": label " + std::to_string(l) + " not in 0..9");
    }
    labels.push_back(int(l));
  }
  gzclose(f);
  if (labels.size() < 20) throw std::runtime_error(path + ": only " + std::to_string(labels.size()) + " digits");
  dataset d;
  d.label = std::move(labels);
  d.x = Eigen::Map<const matrix>(values.data(), d.size(), features);
  return d;
}

/// Fisher-Yates with mt19937's raw output (the same order with every standard library).
std::vector<index_t> permutation(index_t n, std::mt19937& rng) {
  std::vector<index_t> p(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) p[std::size_t(i)] = i;
  for (index_t i = n - 1; i > 0; --i) std::swap(p[std::size_t(i)], p[std::size_t(rng() % std::uint32_t(i + 1))]);
  return p;
}

dataset subset(const dataset& d, const std::vector<index_t>& rows) {
  dataset s;
  s.x.resize(index_t(rows.size()), features);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    s.x.row(index_t(i)) = d.x.row(rows[i]);
    s.label.push_back(d.label[std::size_t(rows[i])]);
  }
  return s;
}

// ---------------------------------------------------------------- model

/// Loss of logits y (n x 10) against labels; G = dL/dy. Non-finite y gives a non-finite loss.
double loss_and_gradient(loss_kind kind, const matrix& y, const std::vector<int>& label, matrix& G) {
  const index_t n = y.rows();
  G.resize(n, classes);
  double total = 0;
  for (index_t i = 0; i < n; ++i) {
    const int t = label[std::size_t(i)];
    if (kind == loss_kind::softmax) {
      const double m = y.row(i).maxCoeff();
      double s = 0;
      for (index_t c = 0; c < classes; ++c) s += std::exp(double(y(i, c)) - m);
      total += m + std::log(s) - double(y(i, t));
      for (index_t c = 0; c < classes; ++c)
        G(i, c) = float((std::exp(double(y(i, c)) - m) / s - (c == t ? 1.0 : 0.0)) / double(n));
    } else {
      for (index_t c = 0; c < classes; ++c) {
        const double r = double(y(i, c)) - (c == t ? 1.0 : 0.0);
        total += 0.5 * r * r;
        G(i, c) = float(r / double(n));
      }
    }
  }
  return total / double(n);
}

double accuracy(const matrix& y, const std::vector<int>& label) {
  index_t right = 0;
  for (index_t i = 0; i < y.rows(); ++i) {
    index_t arg = 0;
    y.row(i).maxCoeff(&arg);
    right += arg == label[std::size_t(i)];
  }
  return double(right) / double(y.rows());
}

nd::isqrt_options isqrt_from(const std::string& s) {
  if (s == "exact") return nd::isqrt_options::exact();
  const int n = std::atoi(s.c_str());
  if (n < 1 || std::to_string(n) != s) throw std::runtime_error("--isqrt wants a step count >= 1 or 'exact', got " + s);
  return nd::isqrt_options::fixed(n);
}

struct run_result {
  method m;
  double lr;
  std::vector<double> loss;  // per step (training forward, before the update)
  double train_loss = 0, train_accuracy = 0, test_loss = 0, test_accuracy = 0;  // eval mode, after training
  double fold_check = 0;  // deconv: max |x W'^T + b' - (z W^T + b)| over the steps
  index_t failures = 0;   // deconv: steps whose statistics failed (kept previous)
};

run_result train(method m, double lr, const dataset& tr, const dataset& te,
                 const std::vector<std::vector<index_t>>& batches, const options& opt) {
  run_result r{m, lr, {}};
  matrix W = matrix::Zero(classes, features);
  row_vector b = row_vector::Zero(classes);
  // standardised: running statistics; deconv: the layer (its state holds the running statistics)
  row_vector run_mean = row_vector::Zero(features), run_var = row_vector::Ones(features);
  nd::linear_deconv_config cfg;
  cfg.block = features;
  cfg.eps = bn_eps;
  cfg.isqrt = isqrt_from(opt.isqrt);
  nd::layer_options lopt;  // reference-compatible defaults (momentum 0.1, running D from I) ...
  lopt.on_failure = nd::failure_policy::keep_previous;  // ... but a failed batch does not stop training
  nd::linear_deconv_layer<float> layer(features, cfg, lopt);

  matrix x, z, y, G;
  std::vector<int> label;
  bool finite = true;
  for (const auto& rows : batches) {
    const index_t n = index_t(rows.size());
    x.resize(n, features);
    label.clear();
    for (index_t i = 0; i < n; ++i) {
      x.row(i) = tr.x.row(rows[std::size_t(i)]);
      label.push_back(tr.label[std::size_t(rows[std::size_t(i)])]);
    }
    if (!finite) {  // diverged: the loss stays non-finite
      r.loss.push_back(std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    switch (m) {
      case method::raw:
        z = x;
        y = (z * W.transpose()).rowwise() + b;
        break;
      case method::standardised: {
        const row_vector mu = x.colwise().mean();
        const row_vector var = (x.rowwise() - mu).array().square().colwise().mean();
        z = (x.rowwise() - mu).array().rowwise() / (var.array() + float(bn_eps)).sqrt();
        y = (z * W.transpose()).rowwise() + b;
        const float unbiased = n > 1 ? float(n) / float(n - 1) : 1.0f;
        run_mean = (1 - float(momentum)) * run_mean + float(momentum) * mu;
        run_var = (1 - float(momentum)) * run_var + float(momentum) * unbiased * var;
        break;
      }
      case method::deconv: {
        const auto step = layer.train_step(nd::seq, nd::view(x), nd::view(W),
                                           nd::contiguous<const float>(b.data(), classes));
        const Eigen::Map<const matrix> Wf(step.weight.data(), classes, features);
        const Eigen::Map<const row_vector> bf(step.bias.data(), classes);
        y = (x * Wf.transpose()).rowwise() + bf;  // x W'^T + b'
        z = (x.rowwise() - step.statistics.mean[0].transpose()) * step.statistics.D[0];  // (x - mu) D
        r.fold_check = std::max(r.fold_check, double((y - ((z * W.transpose()).rowwise() + b)).cwiseAbs().maxCoeff()));
        break;
      }
    }
    const double loss = loss_and_gradient(opt.loss, y, label, G);
    r.loss.push_back(loss);
    if (!std::isfinite(loss) || !y.allFinite()) {
      finite = false;
      continue;
    }
    W -= float(lr) * (G.transpose() * z);
    b -= float(lr) * G.colwise().sum();
  }
  if (m == method::deconv) r.failures = layer.diagnostic().failures;

  // eval mode: weights that act on raw x
  matrix We = W;
  row_vector be = b;
  if (m == method::standardised) {
    const row_vector scale = (run_var.array() + float(bn_eps)).rsqrt();
    We = W.array().rowwise() * scale.array();
    be = b - run_mean * We.transpose();
  } else if (m == method::deconv) {
    const auto e = layer.eval(nd::seq, nd::view(W), nd::contiguous<const float>(b.data(), classes));
    We = Eigen::Map<const matrix>(e.weight.data(), classes, features);
    be = Eigen::Map<const row_vector>(e.bias.data(), classes);
  }
  const auto evaluate = [&](const dataset& d, double& loss, double& acc) {
    const matrix out = (d.x * We.transpose()).rowwise() + be;
    matrix unused;
    loss = loss_and_gradient(opt.loss, out, d.label, unused);
    acc = accuracy(out, d.label);
  };
  evaluate(tr, r.train_loss, r.train_accuracy);
  evaluate(te, r.test_loss, r.test_accuracy);
  return r;
}

// ---------------------------------------------------------------- plot

/// 5x7 glyphs (rows top to bottom, bit 4 = left column) for the labels; lower case prints as upper.
struct glyph {
  char c;
  std::array<std::uint8_t, 7> rows;
};
constexpr glyph font[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'A', {0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11}}, {'B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}},
    {'C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}}, {'D', {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}},
    {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}}, {'F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}},
    {'G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}}, {'H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
    {'I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}},
    {'K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}}, {'L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}},
    {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}}, {'N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}},
    {'O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}},
    {'Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}}, {'R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}},
    {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}}, {'T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
    {'U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}},
    {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}}, {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}},
    {'Y', {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}}, {'Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}}, {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}},
    {'=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00}}, {':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}},
    {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}}, {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
    {',', {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}}, {'/', {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00}},
    {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}},
};

struct rgb {
  std::uint8_t r, g, b;
};
constexpr rgb method_colour[] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44}};  // raw, standardised, deconv

struct canvas {
  int width, height;
  std::vector<std::uint8_t> pixels;
  canvas(int w, int h) : width(w), height(h), pixels(std::size_t(w * h * 3), 255) {}
  void set(int x, int y, rgb c) {
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    auto* p = &pixels[std::size_t((y * width + x) * 3)];
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
  }
  void rect(int x0, int y0, int x1, int y1, rgb c) {
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) set(x, y, c);
  }
  /// Line of width 2 (Bresenham), clipped to [cx0, cx1] x [cy0, cy1].
  void line(double xa, double ya, double xb, double yb, rgb c, int cx0, int cy0, int cx1, int cy1) {
    int x0 = int(std::lround(xa)), y0 = int(std::lround(ya)), x1 = int(std::lround(xb)), y1 = int(std::lround(yb));
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    for (int err = dx + dy;;) {
      for (int oy = 0; oy < 2; ++oy)
        for (int ox = 0; ox < 2; ++ox)
          if (x0 + ox >= cx0 && x0 + ox <= cx1 && y0 + oy >= cy0 && y0 + oy <= cy1) set(x0 + ox, y0 + oy, c);
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) err += dy, x0 += sx;
      if (e2 <= dx) err += dx, y0 += sy;
    }
  }
  /// Text with 5x7 glyphs magnified by `scale`; returns the width drawn.
  int text(int x, int y, const std::string& s, rgb c, int scale = 1) {
    int cx = x;
    for (char ch : s) {
      const char u = char(std::toupper(static_cast<unsigned char>(ch)));
      for (const auto& g : font)
        if (g.c == u)
          for (int row = 0; row < 7; ++row)
            for (int col = 0; col < 5; ++col)
              if (g.rows[std::size_t(row)] & (0x10 >> col))
                rect(cx + col * scale, y + row * scale, cx + (col + 1) * scale - 1, y + (row + 1) * scale - 1, c);
      cx += 6 * scale;
    }
    return cx - x;
  }
};

std::string short_number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

/// One panel per learning rate: loss (log scale) vs step, one curve per method.
void plot(const std::vector<run_result>& runs, const options& opt, const std::filesystem::path& path) {
  double lo = std::numeric_limits<double>::infinity(), first = 0, hi = 0;
  for (const auto& r : runs) {
    first = std::max(first, r.loss.front());
    for (double v : r.loss) {
      if (std::isfinite(v) && v > 0) lo = std::min(lo, v);
      hi = std::max(hi, std::isfinite(v) ? v : std::numeric_limits<double>::infinity());
    }
  }
  // decades from below the smallest loss to above the initial loss, one more where some loss grows
  // beyond that (divergence), at least two; larger and non-finite losses are drawn on the top edge
  double log_hi = std::ceil(std::log10(first * 1.0001));
  if (hi > std::pow(10.0, log_hi)) log_hi += 1;
  const double log_lo = std::min(std::floor(std::log10(lo)), log_hi - 2);
  const index_t steps = opt.steps;
  index_t tick = 1;
  for (index_t base = 1;; base *= 10) {
    if (steps / base <= 6) {
      tick = base;
      break;
    }
    if (steps / (2 * base) <= 6) {
      tick = 2 * base;
      break;
    }
    if (steps / (5 * base) <= 6) {
      tick = 5 * base;
      break;
    }
  }
  constexpr int pw = 340, ph = 260, left = 56, right = 16, top = 60, bottom = 44;
  const int panels = int(opt.lrs.size());
  canvas cv(panels * (left + pw + right), top + ph + bottom);
  const rgb black{0, 0, 0}, grid{225, 225, 225}, grey{110, 110, 110};
  // legend and title
  int lx = 10;
  cv.text(lx, 8,
          opt.loss == loss_kind::softmax ? "digits: softmax regression, cross-entropy loss"
                                         : "digits: linear regression to one-hot targets, l2 loss",
          black, panels > 1 ? 2 : 1);  // a single panel is too narrow for the large font
  lx = 10;
  for (method m : methods) {
    cv.rect(lx, 36, lx + 20, 38, method_colour[static_cast<int>(m)]);
    lx += 26 + cv.text(lx + 26, 34, name(m), black, 1) + 20;
  }
  cv.text(lx, 34, opt.batch == 0 ? "(full batch)" : "(batch " + std::to_string(opt.batch) + ")", grey, 1);
  for (int p = 0; p < panels; ++p) {
    const int x0 = p * (left + pw + right) + left, y0 = top, x1 = x0 + pw, y1 = y0 + ph;
    const auto px = [&](double step) { return x0 + (step - 1) / double(std::max<index_t>(steps - 1, 1)) * pw; };
    const auto py = [&](double v) {
      const double l = std::isfinite(v) && v > 0 ? std::clamp(std::log10(v), log_lo, log_hi) : log_hi;
      return y1 - (l - log_lo) / (log_hi - log_lo) * ph;
    };
    for (double d = log_lo; d < log_hi - 1e-9; d += 1)  // minor grid: 2..9 x 10^d
      for (int k = 2; k <= 9; ++k) {
        const int y = int(std::lround(py(k * std::pow(10.0, d))));
        cv.rect(x0, y, x0 + 4, y, grey), cv.rect(x1 - 4, y, x1, y, grey);
      }
    for (double d = log_lo; d <= log_hi + 1e-9; d += 1) {  // decades
      const int y = int(std::lround(py(std::pow(10.0, d))));
      cv.rect(x0, y, x1, y, grid);
      const std::string label = short_number(std::pow(10.0, d));
      cv.text(x0 - 6 - 6 * int(label.size()), y - 3, label, black);
    }
    for (index_t s = tick; s <= steps; s += tick) {
      const int x = int(std::lround(px(double(s))));
      cv.rect(x, y0, x, y1, grid);
      const std::string label = std::to_string(s);
      cv.text(x - 3 * int(label.size()), y1 + 6, label, black);
    }
    cv.rect(x0, y0, x1, y0, black), cv.rect(x0, y1, x1, y1, black);
    cv.rect(x0, y0, x0, y1, black), cv.rect(x1, y0, x1, y1, black);
    cv.text(x0 + pw / 2 - 24, y1 + 22, "step", black, 2);
    cv.text(x0 + 4, y0 - 14, "lr = " + short_number(opt.lrs[std::size_t(p)]), black, 1);
    cv.text(x0 - left + 4, y0 - 14, "loss", grey, 1);
    int note_y = y0 + 6;
    for (const auto& r : runs) {
      if (r.lr != opt.lrs[std::size_t(p)]) continue;
      const auto off_scale = [&](double v) { return !std::isfinite(v) || std::log10(v) > log_hi; };
      if (std::any_of(r.loss.begin(), r.loss.end(), off_scale)) {
        const std::size_t at = std::size_t(std::find_if(r.loss.begin(), r.loss.end(), off_scale) - r.loss.begin());
        const std::string what = std::isfinite(r.loss.back()) ? " off scale from step " : " diverged at step ";
        cv.text(x0 + pw / 2 - 40, note_y, std::string(name(r.m)) + what + std::to_string(at + 1),
                method_colour[static_cast<int>(r.m)]);
        note_y += 12;
      }
      for (std::size_t s = 1; s < r.loss.size(); ++s)
        cv.line(px(double(s)), py(r.loss[s - 1]), px(double(s + 1)), py(r.loss[s]),
                method_colour[static_cast<int>(r.m)], x0, y0, x1, y1);
    }
  }
  if (stbi_write_png(path.string().c_str(), cv.width, cv.height, 3, cv.pixels.data(), cv.width * 3) == 0)
    throw std::runtime_error("cannot write " + path.string());
}

// ---------------------------------------------------------------- main

void usage(std::ostream& os) {
  os << "usage: train_softmax [--data DIGITS_CSV_GZ] [--out DIR] [--batch N] [--steps N] [--lr A,B,...]\n"
        "                     [--loss softmax|l2] [--isqrt N|exact] [--seed N]\n"
        "  --data   digits.csv.gz of scikit-learn (default " NETDECONV_DIGITS_CSV
        ")\n"
        "  --out    output directory for losses.csv and loss.png (default demo-output/train_softmax)\n"
        "  --batch  mini-batch size, 0 = full batch (default 128)   --steps  SGD steps (default 100)\n"
        "  --lr     learning rates, comma-separated (default 1,0.1,0.01)\n"
        "  --loss   softmax cross-entropy (default) or l2 to one-hot targets (paper Fig. 5(a))\n"
        "  --isqrt  Newton-Schulz steps of the deconvolution layer (default 5) or exact\n";
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      usage(std::cout);
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::runtime_error("missing value after " + a + " (see --help)");
    const std::string v = argv[++i];
    const auto integer = [&](index_t min) {
      char* end = nullptr;
      const long long n = std::strtoll(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < min)
        throw std::runtime_error(a + " wants an integer >= " + std::to_string(min) + ", got " + v);
      return index_t(n);
    };
    if (a == "--data")
      o.data = v;
    else if (a == "--out")
      o.out = v;
    else if (a == "--batch")
      o.batch = integer(0);
    else if (a == "--steps")
      o.steps = integer(2);
    else if (a == "--seed")
      o.seed = std::uint32_t(integer(0));
    else if (a == "--isqrt")
      o.isqrt = (isqrt_from(v), v);
    else if (a == "--loss") {
      if (v != "softmax" && v != "l2") throw std::runtime_error("--loss wants softmax or l2, got " + v);
      o.loss = v == "l2" ? loss_kind::l2 : loss_kind::softmax;
    } else if (a == "--lr") {
      o.lrs.clear();
      std::stringstream ss(v);
      for (std::string item; std::getline(ss, item, ',');) {
        char* end = nullptr;
        const double lr = std::strtod(item.c_str(), &end);
        if (end == item.c_str() || *end != '\0' || !(lr > 0))
          throw std::runtime_error("--lr wants positive numbers, got " + item);
        o.lrs.push_back(lr);
      }
      if (o.lrs.empty()) throw std::runtime_error("--lr wants at least one learning rate");
    } else
      throw std::runtime_error("unknown argument " + a + " (see --help)");
  }
  return o;
}

std::string cell(double v) {
  if (!std::isfinite(v)) return std::isnan(v) ? "nan" : "inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, std::abs(v) < 1e4 ? "%.4f" : "%.3g", v);
  return buf;
}

int run(int argc, char** argv) {
  const options opt = parse(argc, argv);
  const dataset all = read_digits(opt.data);
  std::mt19937 rng(opt.seed);
  const auto order = permutation(all.size(), rng);
  const index_t n_train = all.size() * 4 / 5;
  const dataset tr = subset(all, {order.begin(), order.begin() + n_train});
  const dataset te = subset(all, {order.begin() + n_train, order.end()});
  const index_t batch = opt.batch == 0 ? tr.size() : std::min(opt.batch, tr.size());

  // the batch sequence: epochs of a fresh permutation, cut into batches (a short tail is dropped)
  std::vector<std::vector<index_t>> batches;
  for (std::vector<index_t> perm; index_t(batches.size()) < opt.steps;) {
    if (perm.empty() || batch == tr.size()) perm = permutation(tr.size(), rng);
    for (index_t s = 0; s + batch <= tr.size() && index_t(batches.size()) < opt.steps; s += batch)
      batches.emplace_back(perm.begin() + s, perm.begin() + s + batch);
    perm.clear();
  }

  std::cout << "digits: " << all.size() << " (" << tr.size() << " train, " << te.size() << " test) from " << opt.data
            << "\nloss " << (opt.loss == loss_kind::softmax ? "softmax cross-entropy" : "l2 to one-hot")
            << ", plain SGD, " << (batch == tr.size() ? std::string("full batch") : "batch " + std::to_string(batch))
            << ", " << opt.steps << " steps, deconv: " << opt.isqrt
            << (opt.isqrt == "exact" ? "" : " Newton-Schulz steps") << "\n\n";
  std::vector<run_result> runs;
  for (double lr : opt.lrs)
    for (method m : methods) runs.push_back(train(m, lr, tr, te, batches, opt));

  std::filesystem::create_directories(opt.out);
  std::ofstream csv(std::filesystem::path(opt.out) / "losses.csv");
  std::ostringstream head;
  head << "step";
  for (const auto& r : runs) head << ',' << name(r.m) << "@" << r.lr;
  csv << head.str() << '\n';
  std::printf("loss per step (training forward of the batch, before the update)\n%5s", "step");
  for (const auto& r : runs)
    std::printf(" %13s", (std::string(name(r.m)).substr(0, 5) + "@" + short_number(r.lr)).c_str());
  std::printf("\n");
  for (index_t s = 0; s < opt.steps; ++s) {
    std::printf("%5lld", static_cast<long long>(s + 1));
    csv << s + 1;
    for (const auto& r : runs) {
      std::printf(" %13s", cell(r.loss[std::size_t(s)]).c_str());
      csv << ',' << r.loss[std::size_t(s)];
    }
    std::printf("\n");
    csv << '\n';
  }
  if (!csv) throw std::runtime_error("cannot write " + (std::filesystem::path(opt.out) / "losses.csv").string());

  const auto at = [&](const run_result& r, index_t step) {
    return cell(r.loss[std::size_t(std::min(step, opt.steps) - 1)]);
  };
  std::printf("\n%-13s %6s %8s %8s %8s %8s | eval: %10s %9s %10s %9s\n", "method", "lr", "step 1", "step 5", "step 20",
              ("step " + std::to_string(opt.steps)).c_str(), "train loss", "train acc", "test loss", "test acc");
  for (const auto& r : runs)
    std::printf("%-13s %6s %8s %8s %8s %8s | %16s %8.1f%% %10s %8.1f%%\n", name(r.m), short_number(r.lr).c_str(),
                at(r, 1).c_str(), at(r, 5).c_str(), at(r, 20).c_str(), at(r, opt.steps).c_str(),
                cell(r.train_loss).c_str(), 100 * r.train_accuracy, cell(r.test_loss).c_str(), 100 * r.test_accuracy);
  for (const auto& r : runs)
    if (r.m == method::deconv)
      std::printf("deconv lr %s: fold check max|x W'^T + b' - ((x - mu) D W^T + b)| = %.1e; failed steps %lld\n",
                  short_number(r.lr).c_str(), r.fold_check, static_cast<long long>(r.failures));
  const auto png = std::filesystem::path(opt.out) / "loss.png";
  plot(runs, opt, png);
  std::cout << "\nwrote " << (std::filesystem::path(opt.out) / "losses.csv").string() << " and " << png.string()
            << '\n';
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "train_softmax: " << e.what() << '\n';
    return 1;
  }
}
