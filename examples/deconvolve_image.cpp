// SPDX-License-Identifier: MIT
// Network deconvolution of one image (paper Fig. 2, Fig. 4 and Fig. 10, Ye et al., ICLR 2020).
//
//   deconvolve_image [IMAGE [OUTDIR [SAMPLING_STRIDE]]]
//
// IMAGE: any PNG/JPEG/... stb_image reads (default: the raccoon face shipped in data/).
// OUTDIR: where the PNGs go (default: the current directory; created if missing).
// SAMPLING_STRIDE: every S-th patch position per axis feeds the statistics (default: the smallest odd
// S that keeps at most 100k patches: 1 for 256x192, 3 for 1024x768).
//
// 1. Statistics: X = the valid 15x15 RGB patches of the image (values in [0,1]), F = 3*15*15 = 675
//    columns in channel-major (c, ky, kx) order; mu = mean(X), Cov = (X - mu)^T (X - mu)/n + eps I
//    with eps = 1e-5 x the mean variance trace(Cov0)/F; D = Cov^(-1/2) by the exact float64
//    eigendecomposition.
// 2. deconv_kernels.png: the deconvolution kernels = the columns of D of the three centre pixels
//    (Cov^(-1/2) vec(delta), paper §4.3.2), i.e. 3x3 tiles of 15x15: row = centre pixel's channel,
//    column = the R, G, B part of the kernel; grey = 0, each tile scaled by its own max |value|.
// 3. deconvolved.png: input | deconvolved image. The centre row of D is folded into an ordinary
//    3 -> 3 channel 15x15 conv (netdeconv::fold of the "centre pixel" selector weight: W' = W D,
//    b' = -W' mu), run on the reflect-padded image with netdeconv::im2col + GEMM, so that output
//    pixel (y, x, c) = (patch(y, x) - mu) . D[:, centre_c], the whitened value of the centre pixel.
//    Display: each channel clipped to mean +- 3 sd and mapped to 0..255 (so grey ~ 0).
// 4. Prints the whitening residual, the kurtosis before/after (heavy tails after, Fig. 10) and the
//    time of each stage.

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <netdeconv/netdeconv.hpp>

// stb initialises structs partially (-Wextra); Meson includes it as a system header anyway.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image.h>
#include <stb_image_write.h>
#pragma GCC diagnostic pop

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef NETDECONV_DEFAULT_IMAGE
#define NETDECONV_DEFAULT_IMAGE "data/raccoon_face_256x192.png"
#endif

namespace {

namespace nd = netdeconv;
using nd::index_t;
using clock_type = std::chrono::steady_clock;

constexpr index_t kernel = 15, half = kernel / 2, channels = 3;
constexpr index_t area = kernel * kernel, features = channels * area;  // F = 675
constexpr index_t max_statistics_patches = 100000;
constexpr double relative_eps = 1e-5;

/// H x W x 3 floats, channels last.
struct rgb_image {
  index_t height = 0, width = 0;
  std::vector<float> pixels;
  float& at(index_t y, index_t x, index_t c) { return pixels[std::size_t((y * width + x) * channels + c)]; }
  float at(index_t y, index_t x, index_t c) const { return pixels[std::size_t((y * width + x) * channels + c)]; }
};

int openmp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

struct timer {
  clock_type::time_point start = clock_type::now();
  std::vector<std::pair<std::string, double>> stages;
  void lap(const char* name) {
    const auto now = clock_type::now();
    stages.emplace_back(name, std::chrono::duration<double>(now - start).count());
    start = now;
  }
};

rgb_image load_rgb(const std::string& path) {
  int w = 0, h = 0, n = 0;
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &n, int(channels));
  if (data == nullptr) throw std::runtime_error("cannot read image '" + path + "': " + stbi_failure_reason());
  rgb_image img{h, w, std::vector<float>(std::size_t(h) * std::size_t(w) * channels)};
  for (std::size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = float(data[i]) / 255.0f;
  stbi_image_free(data);
  return img;
}

void write_png(const std::filesystem::path& path, index_t width, index_t height, const std::vector<unsigned char>& rgb) {
  if (stbi_write_png(path.string().c_str(), int(width), int(height), int(channels), rgb.data(), int(width * channels)) == 0)
    throw std::runtime_error("cannot write '" + path.string() + "'");
}

/// Reflect (without repeating the edge) i into [0, n).
index_t reflect(index_t i, index_t n) {
  if (n == 1) return 0;
  const index_t period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

/// Smallest odd sampling stride S that keeps the statistics at <= max_statistics_patches patches.
/// Odd, because camera images carry 8x8 (JPEG) and 2x2 (Bayer, chroma subsampling) grids: an even
/// S samples only some phases of the grid and the covariance no longer fits the other pixels
/// (on the 1024x768 raccoon, S = 4 or 6 gives a deconvolved sd of ~1.3 instead of ~1.0).
index_t auto_sampling_stride(index_t out_h, index_t out_w) {
  index_t s = 1;
  while (((out_h + s - 1) / s) * ((out_w + s - 1) / s) > max_statistics_patches) s += 2;
  return s;
}

struct channel_stats {
  std::array<double, channels> mean{}, sd{}, kurtosis{};
};

/// Per channel mean, standard deviation and kurtosis E[(v - m)^4] / var^2 (NOT excess: Gaussian = 3).
channel_stats describe(const rgb_image& img) {
  channel_stats out;
  const index_t n = img.height * img.width;
  for (index_t c = 0; c < channels; ++c) {
    double sum = 0;
    for (index_t p = 0; p < n; ++p) sum += img.pixels[std::size_t(p * channels + c)];
    const double m = sum / double(n);
    double m2 = 0, m4 = 0;
    for (index_t p = 0; p < n; ++p) {
      const double d = img.pixels[std::size_t(p * channels + c)] - m, d2 = d * d;
      m2 += d2;
      m4 += d2 * d2;
    }
    m2 /= double(n);
    m4 /= double(n);
    out.mean[std::size_t(c)] = m;
    out.sd[std::size_t(c)] = std::sqrt(m2);
    out.kurtosis[std::size_t(c)] = m2 > 0 ? m4 / (m2 * m2) : std::nan("");
  }
  return out;
}

/// deconv_kernels.png: 3x3 grid of 15x15 tiles (row: centre channel, column: R/G/B part of the
/// kernel), grey = 0, each tile scaled symmetrically by its max |value|, upscaled `zoom` times.
std::vector<unsigned char> kernel_grid(const Eigen::MatrixXd& D, index_t zoom, index_t gap, index_t& width) {
  const index_t tile = kernel * zoom;
  width = channels * tile + (channels + 1) * gap;
  std::vector<unsigned char> rgb(std::size_t(width * width * channels), 255);
  for (index_t row = 0; row < channels; ++row) {
    const index_t centre = row * area + half * kernel + half;  // column of D for the centre pixel of channel `row`
    for (index_t col = 0; col < channels; ++col) {
      const auto part = D.col(centre).segment(col * area, area);
      const double scale = std::max(part.cwiseAbs().maxCoeff(), 1e-300);
      for (index_t y = 0; y < tile; ++y)
        for (index_t x = 0; x < tile; ++x) {
          const double v = part((y / zoom) * kernel + x / zoom) / scale;  // in [-1, 1]
          const auto grey = static_cast<unsigned char>(std::lround(127.5 + 127.5 * v));
          const index_t py = gap + row * (tile + gap) + y, px = gap + col * (tile + gap) + x;
          for (index_t c = 0; c < channels; ++c) rgb[std::size_t((py * width + px) * channels + c)] = grey;
        }
    }
  }
  return rgb;
}

/// deconvolved.png: input | gap | deconvolved (each channel clipped to mean +- 3 sd, mapped to 0..255).
std::vector<unsigned char> side_by_side(const rgb_image& input, const rgb_image& output, const channel_stats& out_stats,
                                        index_t gap, index_t& width) {
  const index_t W = input.width, H = input.height;
  width = 2 * W + gap;
  std::vector<unsigned char> rgb(std::size_t(width * H * channels), 255);
  for (index_t y = 0; y < H; ++y)
    for (index_t x = 0; x < W; ++x)
      for (index_t c = 0; c < channels; ++c) {
        const auto k = std::size_t(c);
        const double sd = out_stats.sd[k] > 0 ? out_stats.sd[k] : 1.0;
        const double v = (output.at(y, x, c) - out_stats.mean[k]) / (6 * sd) + 0.5;
        rgb[std::size_t((y * width + x) * channels + c)] =
            static_cast<unsigned char>(std::lround(255 * std::clamp(double(input.at(y, x, c)), 0.0, 1.0)));
        rgb[std::size_t((y * width + W + gap + x) * channels + c)] =
            static_cast<unsigned char>(std::lround(255 * std::clamp(v, 0.0, 1.0)));
      }
  return rgb;
}

void print_usage(std::FILE* to, const char* argv0) {
  std::fprintf(to,
      "usage: %s [IMAGE [OUTDIR [SAMPLING_STRIDE]]]\n"
      "  IMAGE            PNG/JPEG to deconvolve (default: %s)\n"
      "  OUTDIR           where deconv_kernels.png and deconvolved.png go (default: .)\n"
      "  SAMPLING_STRIDE  every S-th 15x15 patch per axis feeds the statistics (default: automatic)\n",
      argv0, NETDECONV_DEFAULT_IMAGE);
}

int run(int argc, char** argv) {
  const std::string image_path = argc > 1 ? argv[1] : NETDECONV_DEFAULT_IMAGE;
  const std::filesystem::path out_dir = argc > 2 ? argv[2] : ".";
  timer clock;

  // ---- load --------------------------------------------------------------------------------------
  const rgb_image img = load_rgb(image_path);
  std::filesystem::create_directories(out_dir);
  const index_t H = img.height, W = img.width;
  if (H < kernel || W < kernel)
    throw std::runtime_error("image '" + image_path + "' is " + std::to_string(W) + "x" + std::to_string(H) +
                             ", smaller than the 15x15 patch");
  clock.lap("load image");

  const auto geometry = nd::conv_geometry::square(kernel);  // valid patches only for the statistics
  index_t stride = auto_sampling_stride(geometry.out_h(H), geometry.out_w(W));
  if (argc > 3) {
    char* end = nullptr;
    const long s = std::strtol(argv[3], &end, 10);
    if (end == argv[3] || *end != '\0' || s < 1)
      throw std::runtime_error(std::string("SAMPLING_STRIDE must be a positive integer, got '") + argv[3] + "'");
    stride = s;
  }
  std::printf("netdeconv demo: %s (%td x %td RGB), %d OpenMP thread(s)\n", image_path.c_str(), W, H,
              openmp_threads());

  // ---- statistics: moments of the sampled 15x15x3 patches, Cov + eps I, D = Cov^(-1/2) ------------
  const auto x = nd::nhwc(img.pixels.data(), 1, H, W, channels);
  const nd::patch_sampler<float> sampler(x, geometry, stride);
  const nd::block_plan plan = nd::make_block_plan(nd::block_layout::independent, channels, area, channels);
  const auto moments = nd::block_moments(nd::par, sampler, plan);
  const auto& m = moments.front();
  clock.lap("patch moments");

  const double mean_variance = m.scatter().diagonal().mean() / double(m.count());
  const double eps = relative_eps * (mean_variance > 0 ? mean_variance : 1.0);  // a flat image has no variance
  const Eigen::MatrixXd cov = m.covariance<double>(eps);
  Eigen::MatrixXd D;
  const nd::isqrt_report report = nd::inverse_sqrt_exact(cov, D);
  if (report.status != nd::isqrt_status::ok)
    throw std::runtime_error("inverse square root failed: " + std::string(report.status == nd::isqrt_status::non_finite
                                                                               ? "non_finite"
                                                                               : "not_positive_definite"));
  clock.lap("inverse sqrt (exact, float64)");
  const double residual =
      (D * cov * D - Eigen::MatrixXd::Identity(features, features)).norm() / std::sqrt(double(features));
  clock.lap("residual check");

  // ---- kernels (Fig. 2) ---------------------------------------------------------------------------
  const std::filesystem::path kernels_path = out_dir / "deconv_kernels.png";
  index_t grid_width = 0;
  const auto grid = kernel_grid(D, 8, 6, grid_width);
  write_png(kernels_path, grid_width, grid_width, grid);
  clock.lap("write deconv_kernels.png");

  // ---- deconvolution as a folded conv (Fig. 4) ----------------------------------------------------
  // Selector conv W[o, c, ky, kx] = [c == o, ky == kx == 7]: the identity on the centre pixel; folding
  // gives W'[o] = D[centre_o, :] = D[:, centre_o]^T and b'[o] = -W'[o] . mu.
  nd::block_statistics<float> stats;
  stats.plan = plan;
  stats.mean = {m.mean().cast<float>()};
  stats.D = {D.cast<float>()};
  std::vector<float> selector(std::size_t(channels * features), 0.0f), folded(selector.size()), bias(channels);
  for (index_t o = 0; o < channels; ++o) selector[std::size_t(o * features + o * area + half * kernel + half)] = 1.0f;
  nd::fold(nd::par, stats, nd::nchw<const float>(selector.data(), channels, channels, kernel, kernel),
           nd::vector_view<const float>{}, nd::nchw(folded.data(), channels, channels, kernel, kernel),
           nd::contiguous(bias.data(), channels));
  clock.lap("fold into conv weights");

  // Reflect-pad by 7, then conv = im2col (strips of output rows) x W'^T + b'.
  const index_t Hp = H + 2 * half, Wp = W + 2 * half;
  std::vector<float> padded(std::size_t(Hp * Wp * channels));
  for (index_t y = 0; y < Hp; ++y)
    for (index_t xx = 0; xx < Wp; ++xx)
      for (index_t c = 0; c < channels; ++c)
        padded[std::size_t((y * Wp + xx) * channels + c)] = img.at(reflect(y - half, H), reflect(xx - half, W), c);
  using matrix_rm = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const matrix_rm> Wt(folded.data(), channels, features);
  const Eigen::Map<const Eigen::RowVectorXf> b(bias.data(), channels);
  rgb_image out{H, W, std::vector<float>(img.pixels.size())};
  const index_t strip = std::max<index_t>(1, 2048 / W);  // output rows per im2col call (~2048 patches)
  const index_t strips = (H + strip - 1) / strip;
  // Strips are independent: threads take whole strips, each running the library's im2col on its
  // strip (a view into the padded image, no copy) and one small GEMM.
#ifdef _OPENMP
#pragma omp parallel
#endif
  {
    matrix_rm cols(strip * W, features);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (index_t s = 0; s < strips; ++s) {
      const index_t y0 = s * strip, rows = std::min(strip, H - y0);
      const auto band = nd::nhwc<const float>(padded.data() + y0 * Wp * channels, 1, rows + 2 * half, Wp, channels);
      const auto patches = nd::row_major(cols.data(), rows * W, features);
      nd::im2col(nd::seq, band, geometry, patches);
      Eigen::Map<matrix_rm> dst(out.pixels.data() + y0 * W * channels, rows * W, channels);
      dst.noalias() = cols.topRows(rows * W) * Wt.transpose();
      dst.rowwise() += b;
    }
  }
  clock.lap("deconvolve (reflect pad + im2col + GEMM)");

  // Check the folded conv against the definition (patch - mu) . D[:, centre_c] in double on a grid.
  double max_diff = 0;
  const index_t step_y = std::max<index_t>(1, H / 16), step_x = std::max<index_t>(1, W / 16);
  Eigen::VectorXd patch(features);
  for (index_t y = 0; y < H; y += step_y)
    for (index_t xx = 0; xx < W; xx += step_x) {
      for (index_t c = 0; c < channels; ++c)
        for (index_t ky = 0; ky < kernel; ++ky)
          for (index_t kx = 0; kx < kernel; ++kx)
            patch(c * area + ky * kernel + kx) = padded[std::size_t(((y + ky) * Wp + xx + kx) * channels + c)];
      patch -= m.mean();
      for (index_t c = 0; c < channels; ++c)
        max_diff = std::max(max_diff, std::abs(patch.dot(D.col(c * area + half * kernel + half)) - out.at(y, xx, c)));
    }
  clock.lap("check against (x - mu) . D");

  // ---- kurtosis (Fig. 10) and the side-by-side image ----------------------------------------------
  const channel_stats before = describe(img), after = describe(out);
  clock.lap("statistics before/after");
  const std::filesystem::path deconvolved_path = out_dir / "deconvolved.png";
  index_t pair_width = 0;
  const auto pair = side_by_side(img, out, after, 8, pair_width);
  write_png(deconvolved_path, pair_width, H, pair);
  clock.lap("write deconvolved.png");

  // ---- report -------------------------------------------------------------------------------------
  const index_t Ho = geometry.out_h(H), Wo = geometry.out_w(W);
  std::printf("statistics: %td of %td valid 15x15x3 patches (sampling stride %td), F = %td features\n", m.count(),
              Ho * Wo, stride, features);
  if (mean_variance > 0)
    std::printf("eps = %.0e x mean variance %.4g = %.3g\n", relative_eps, mean_variance, eps);
  else
    std::printf("eps = %.3g (flat image: no variance to scale by)\n", eps);
  if (m.count() < features)
    std::printf("note: fewer patches (%td) than features (%td): the small eigenvalues of Cov are mostly eps\n",
                m.count(), features);
  std::printf("whitening residual ||D Cov D - I||_F / sqrt(F): %.3g (isqrt report), %.3g (recomputed)\n",
              report.residual, residual);
  std::printf("folded conv vs (x - mu) . D[:, centre] on %td pixels: max |diff| %.2g (output sd ~ %.3g)\n",
              ((H + step_y - 1) / step_y) * ((W + step_x - 1) / step_x), max_diff, after.sd[1]);
  std::printf("kurtosis E[(v-m)^4]/var^2 (not excess; Gaussian = 3)   R        G        B\n");
  std::printf("  pixel values before deconvolution               %8.3f %8.3f %8.3f\n", before.kurtosis[0],
              before.kurtosis[1], before.kurtosis[2]);
  std::printf("  after deconvolution                             %8.3f %8.3f %8.3f\n", after.kurtosis[0],
              after.kurtosis[1], after.kurtosis[2]);
  std::printf("  sd after (1 = white)                            %8.3f %8.3f %8.3f\n", after.sd[0], after.sd[1],
              after.sd[2]);
  std::printf("time per stage:\n");
  double total = 0;
  for (const auto& [name, seconds] : clock.stages) {
    std::printf("  %-42s %8.3f s\n", name.c_str(), seconds);
    total += seconds;
  }
  std::printf("  %-42s %8.3f s\n", "total", total);
  std::printf("kernel tiles (row: centre pixel R, G, B; on = centre > 0 > its 4 neighbours, off = reverse):\n");
  for (index_t row = 0; row < channels; ++row) {
    std::printf("  %c:", "RGB"[row]);
    const auto kernel_column = D.col(row * area + half * kernel + half);
    for (index_t col = 0; col < channels; ++col) {
      const auto part = kernel_column.segment(col * area, area);
      const index_t c0 = half * kernel + half;
      const double centre = part(c0), ring = part(c0 - 1) + part(c0 + 1) + part(c0 - kernel) + part(c0 + kernel);
      std::printf("  %c part %-3s", "RGB"[col], centre > 0 && ring < 0 ? "on" : centre < 0 && ring > 0 ? "off" : "-");
    }
    std::printf("\n");
  }
  std::printf("wrote %s (rows: kernel of the R, G, B centre pixel; columns: its R, G, B weights; grey = 0)\n",
              kernels_path.string().c_str());
  std::printf("wrote %s (left: input; right: deconvolved, mean +- 3 sd per channel, grey = 0)\n",
              deconvolved_path.string().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help")) {
    print_usage(stdout, argv[0]);
    return 0;
  }
  if (argc > 4) {
    print_usage(stderr, argv[0]);
    return 1;
  }
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deconvolve_image: error: %s\n", e.what());
    return 1;
  }
}
