// SPDX-License-Identifier: MIT
// Soak test of the three CPU layers (issue 14): a small model trained for --steps steps on random
// batches, its resident memory sampled, and a run resumed from a checkpoint compared bit for bit
// with the uninterrupted one. A benchmark-style program, not part of the test suite.
//
// Model (float32, netdeconv::par on --threads threads, batch 8 of 3 x 8 x 8 images):
//   conv_deconv_layer (3 -> 10 channels, 3x3, padding 1, block 3: one statistic of 27 features)
//   -> channel_deconv_layer (block 4: 8 channels whitened, 2 standardised)
//   -> global average pool -> linear_deconv_layer (10 -> 4, block 5) -> mean squared error
// against a random target. Each step: the layers' train_step (writing forms), the conv and linear
// products with W', b' (im2col + Eigen), the backward of the loss through every layer (the
// layers' backward for the parts through their statistics), and a plain SGD update of W and b.
// The batch and target of step k come from a generator seeded with k, so a resumed run sees the
// same data.
//
// Run A trains steps [0, steps) and samples RSS (/proc/self/statm) every --every steps; before
// step steps/2 it saves the checkpoint: every layer's state() and the weights' bytes. Run B, a
// model built from another seed, loads that checkpoint and trains steps [steps/2, steps). Their
// final checkpoints (running statistics, counters, weights) and every loss after the resume must
// be equal bit for bit; the computation is deterministic at a fixed thread count.
//
// RSS growth is measured from the sample at --warmup to the last one. The threshold
// (--max-growth-kib, 512 by default) is allocator noise, not a leak: glibc keeps up to
// M_TRIM_THRESHOLD (128 KiB) of free memory at the top of each arena, and OpenMP's threads
// allocate in arenas of their own, so a few hundred KiB can come and go without any leak. A leak of
// one 64-byte block per step over the 9,000 steps after the warm-up (562 KiB) exceeds it.
//
// Prints `soak-cpp: steps=... threads=... rss_first_kib=... rss_start_kib=... rss_end_kib=...
// rss_max_kib=... growth_kib=... threshold_kib=... resume_equal=0|1 seconds=...` and writes
// --csv (step,rss_kib). Exits 1 if the resumed run differs or RSS grew beyond the threshold.
//   soak [--steps 10000] [--threads 2] [--every 100] [--warmup 1000] [--max-growth-kib 512] [--csv FILE]

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <netdeconv/netdeconv.hpp>

using namespace netdeconv;

namespace {

using mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using vec = Eigen::VectorXf;
using const_map = Eigen::Map<const mat>;

constexpr index_t N = 8, C = 3, H = 8, W = 8, HW = H * W, rows = N * HW;  // batch, input channels, image size
constexpr index_t Cc = 10, K = C * 9;  // conv outputs (the channel layer's C), patch width
constexpr index_t B = 4, O = 4;        // channel layer's block, linear outputs
constexpr float learning_rate = 0.01f;

/// Resident set size in KiB: the second field of /proc/self/statm (pages) times the page size.
long rss_kib() {
  long size = 0, resident = 0;
  std::ifstream("/proc/self/statm") >> size >> resident;
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

conv_deconv_config conv_config() {
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(3, 1, 1);
  cfg.block = 3;
  return cfg;
}

linear_deconv_config linear_config() {
  linear_deconv_config cfg;
  cfg.block = 5;
  return cfg;
}

/// The bytes of a matrix or vector of floats.
template <class M>
std::vector<std::uint8_t> bytes_of(const M& m) {
  std::vector<std::uint8_t> b(std::size_t(m.size()) * sizeof(float));
  std::memcpy(b.data(), m.data(), b.size());
  return b;
}

/// What a layer's step wrote and its backward reads: mu (S, F), D (S, F, F), W', b', reports (S).
struct step_buffers {
  step_buffers(const block_plan& plan, index_t weights, index_t outputs)
      : S(plan.count()), F(plan.features()), mean(std::size_t(S * F)), D(std::size_t(S * F * F)),
        weight(std::size_t(weights)), bias(std::size_t(outputs)), reports(std::size_t(S)) {}
  template <int R>
  statistics_step_outputs<float, R> outputs(const tensor_view<float, R>& weight_view) {
    return {row_major(mean.data(), S, F), {D.data(), {S, F, F}, {F * F, F, 1}}, weight_view,
            contiguous(bias.data(), index_t(bias.size())), contiguous(reports.data(), S)};
  }
  block_statistics_view<const float> statistics(const block_plan& plan) const {
    return {plan, row_major<const float>(mean.data(), S, F), {D.data(), {S, F, F}, {F * F, F, 1}}};
  }
  index_t S, F;
  std::vector<float> mean, D, weight, bias;
  std::vector<isqrt_report> reports;
};

/// The model, its weights and every buffer a step uses (allocated once).
class model {
 public:
  /// Weights uniform in +-1/sqrt(fan-in) from `seed`.
  explicit model(unsigned seed)
      : conv_(C, conv_config()), channel_(Cc, channel_deconv_config{B}), linear_(Cc, linear_config()),
        W1_(Cc, K), b1_(Cc), W2_(O, Cc), b2_(O),
        conv_out_(conv_.plan(), Cc * K, Cc), linear_out_(linear_.plan(), O * Cc, O) {
    std::mt19937 rng(seed);
    const auto fill = [&](auto& m, index_t fan_in) {
      std::uniform_real_distribution<float> u(-1.0f / std::sqrt(float(fan_in)), 1.0f / std::sqrt(float(fan_in)));
      for (index_t i = 0; i < m.size(); ++i) m.data()[i] = u(rng);
    };
    fill(W1_, K);
    fill(b1_, K);
    fill(W2_, Cc);
    fill(b2_, Cc);
  }

  /// One training step on batch k; returns its loss.
  float step(const simd_policy& policy, index_t k) {
    draw_batch(k);
    const auto xv = nchw<const float>(x_.data(), N, C, H, W);
    const auto W1v = nchw<const float>(W1_.data(), Cc, C, 3, 3);
    const auto b1v = contiguous<const float>(b1_.data(), Cc);
    // conv: Z (rows, Cc) = P W1'^T + b1', i.e. z in NHWC memory
    conv_.train_step(policy, xv, W1v, b1v, conv_out_.outputs(nchw(conv_out_.weight.data(), Cc, C, 3, 3)));
    im2col(policy, xv, conv_config().geometry, row_major(P_.data(), rows, K));
    Z_.noalias() = P_ * const_map(conv_out_.weight.data(), Cc, K).transpose();
    Z_.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(conv_out_.bias.data(), Cc);
    // channel layer: Y = whitened Z (NHWC), then the pool
    const auto zv = nhwc<const float>(Z_.data(), N, H, W, Cc);
    const channel_statistics_view<float> used{row_major(used_mean_.data(), 1, B),
                                              {used_D_.data(), {1, B, B}, {B * B, B, 1}},
                                              contiguous(used_remaining_.data(), 2)};
    channel_.train_step(policy, zv, nhwc(Y_.data(), N, H, W, Cc), used, contiguous(channel_report_.data(), 1));
    for (index_t n = 0; n < N; ++n) pooled_.row(n) = Y_.middleRows(n * HW, HW).colwise().mean();
    // linear: out = pooled W2'^T + b2', loss = mean (out - target)^2
    const auto pv = row_major<const float>(pooled_.data(), N, Cc);
    const auto W2v = row_major<const float>(W2_.data(), O, Cc);
    const auto b2v = contiguous<const float>(b2_.data(), O);
    linear_.train_step(policy, pv, W2v, b2v, linear_out_.outputs(row_major(linear_out_.weight.data(), O, Cc)));
    const const_map W2f(linear_out_.weight.data(), O, Cc);
    out_.noalias() = pooled_ * W2f.transpose();
    out_.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(linear_out_.bias.data(), O);
    const float loss = (out_ - target_).squaredNorm() / float(N * O);
    // backward: linear (W', b' products, then the layer's part through its statistics)
    dout_ = (out_ - target_) * (2.0f / float(N * O));
    dW_f2_.noalias() = dout_.transpose() * pooled_;
    db_f2_ = dout_.colwise().sum().transpose();
    linear_.backward(policy, pv, W2v, b2v, linear_out_.statistics(linear_.plan()), linear_.diagnostic(),
                     row_major<const float>(dW_f2_.data(), O, Cc), contiguous<const float>(db_f2_.data(), O),
                     {row_major(dW2_.data(), O, Cc), contiguous(db2_.data(), O), row_major(dpooled_.data(), N, Cc),
                      contiguous(grad_reports_.data(), linear_out_.S)});
    dpooled_.noalias() += dout_ * W2f;
    // pool and channel layer (the layer's backward gives the whole dL/dZ)
    for (index_t n = 0; n < N; ++n) dY_.middleRows(n * HW, HW).rowwise() = dpooled_.row(n) / float(HW);
    channel_.backward(policy, zv, channel_statistics_view<const float>(used), channel_.diagnostic(),
                      nhwc<const float>(dY_.data(), N, H, W, Cc), nhwc(dZ_.data(), N, H, W, Cc),
                      contiguous(channel_report_.data(), 1));
    // conv: dW1' = dZ^T P, db1' = column sums of dZ, then the layer's part through its statistics
    dW_f1_.noalias() = dZ_.transpose() * P_;
    db_f1_ = dZ_.colwise().sum().transpose();
    conv_.backward(policy, xv, W1v, b1v, conv_out_.statistics(conv_.plan()), conv_.diagnostic(),
                   nchw<const float>(dW_f1_.data(), Cc, C, 3, 3), contiguous<const float>(db_f1_.data(), Cc),
                   {nchw(dW1_.data(), Cc, C, 3, 3), contiguous(db1_.data(), Cc), nchw(dx_.data(), N, C, H, W),
                    contiguous(grad_reports_.data(), conv_out_.S)});
    W1_ -= learning_rate * dW1_;
    b1_ -= learning_rate * db1_;
    W2_ -= learning_rate * dW2_;
    b2_ -= learning_rate * db2_;
    return loss;
  }

  /// Every layer's state() and the bytes of the weights.
  std::vector<std::vector<std::uint8_t>> checkpoint() const {
    return {conv_.state(), channel_.state(), linear_.state(),
            bytes_of(W1_), bytes_of(b1_), bytes_of(W2_), bytes_of(b2_)};
  }

  /// Loads what checkpoint() returned: the layers' load_state and the weights.
  void restore(const std::vector<std::vector<std::uint8_t>>& parts) {
    conv_.load_state(parts[0]);
    channel_.load_state(parts[1]);
    linear_.load_state(parts[2]);
    std::memcpy(W1_.data(), parts[3].data(), parts[3].size());
    std::memcpy(b1_.data(), parts[4].data(), parts[4].size());
    std::memcpy(W2_.data(), parts[5].data(), parts[5].size());
    std::memcpy(b2_.data(), parts[6].data(), parts[6].size());
  }

 private:
  /// Batch k: x ~ N(0, 1) (NCHW) and target ~ N(0, 1), from a generator seeded with k.
  void draw_batch(index_t k) {
    std::mt19937 rng(static_cast<unsigned>(k));
    std::normal_distribution<float> normal;
    for (float& v : x_) v = normal(rng);
    for (index_t i = 0; i < target_.size(); ++i) target_.data()[i] = normal(rng);
  }

  conv_deconv_layer<float> conv_;
  channel_deconv_layer<float> channel_;
  linear_deconv_layer<float> linear_;
  mat W1_;  // (Cc, C*3*3): OIHW
  vec b1_;
  mat W2_;  // (O, Cc)
  vec b2_;
  step_buffers conv_out_, linear_out_;
  std::vector<float> x_ = std::vector<float>(std::size_t(N * C * HW)), dx_ = x_;
  std::vector<float> used_mean_ = std::vector<float>(B), used_D_ = std::vector<float>(B * B),
                     used_remaining_ = std::vector<float>(2);  // the channel step's statistics
  std::vector<isqrt_report> channel_report_ = std::vector<isqrt_report>(1),
                            grad_reports_ = std::vector<isqrt_report>(1);
  mat P_ = mat(rows, K), Z_ = mat(rows, Cc), Y_ = mat(rows, Cc), dY_ = mat(rows, Cc), dZ_ = mat(rows, Cc);
  mat pooled_ = mat(N, Cc), dpooled_ = mat(N, Cc);
  mat out_ = mat(N, O), target_ = mat(N, O), dout_ = mat(N, O);
  mat dW_f1_ = mat(Cc, K), dW1_ = mat(Cc, K), dW_f2_ = mat(O, Cc), dW2_ = mat(O, Cc);
  vec db_f1_ = vec(Cc), db1_ = vec(Cc), db_f2_ = vec(O), db2_ = vec(O);
};

struct arguments {
  index_t steps = 10000, every = 100, warmup = 1000;
  int threads = 2;
  long max_growth_kib = 512;
  std::string csv;
};

arguments parse(int argc, char** argv) {
  arguments a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--steps") a.steps = std::stoll(value);
    else if (flag == "--threads") a.threads = std::stoi(value);
    else if (flag == "--every") a.every = std::stoll(value);
    else if (flag == "--warmup") a.warmup = std::stoll(value);
    else if (flag == "--max-growth-kib") a.max_growth_kib = std::stol(value);
    else if (flag == "--csv") a.csv = value;
    else throw std::invalid_argument("unknown flag " + flag);
  }
  if (argc % 2 == 0) throw std::invalid_argument(std::string("flag without a value: ") + argv[argc - 1]);
  if (a.steps < 2 || a.every < 1 || a.threads < 1 || a.warmup < 0 || a.warmup >= a.steps)
    throw std::invalid_argument("need steps >= 2, every >= 1, threads >= 1 and 0 <= warmup < steps");
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  arguments args;
  try {
    args = parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "soak: " << e.what() << "\n  soak [--steps 10000] [--threads 2] [--every 100] [--warmup 1000]"
              << " [--max-growth-kib 512] [--csv FILE]\n";
    return 2;
  }
  // The model's own products are tiny, and Eigen's parallel products busy-wait for each other
  // (OMP_WAIT_POLICY does not stop that): on a loaded 2-core machine that cost 20x the step.
  Eigen::setNbThreads(1);
  const simd_policy policy = simd_threads(args.threads);
  const index_t resume_at = args.steps / 2;
  const auto t0 = std::chrono::steady_clock::now();

  // Run A: uninterrupted, RSS sampled, checkpoint before step resume_at.
  std::vector<std::pair<index_t, long>> samples;
  samples.reserve(std::size_t(args.steps / args.every + 2));
  std::vector<float> losses(std::size_t(args.steps));
  std::vector<std::vector<std::uint8_t>> saved;
  model a(1);
  samples.emplace_back(0, rss_kib());
  for (index_t k = 0; k < args.steps; ++k) {
    if (k == resume_at) saved = a.checkpoint();
    losses[std::size_t(k)] = a.step(policy, k);
    if ((k + 1) % args.every == 0 || k + 1 == args.steps) samples.emplace_back(k + 1, rss_kib());
  }

  // Run B: a model from another seed, restored from the checkpoint, to the same end.
  model b(2);
  b.restore(saved);
  bool losses_equal = true;
  for (index_t k = resume_at; k < args.steps; ++k) {
    const float loss = b.step(policy, k);
    losses_equal = losses_equal && std::memcmp(&loss, &losses[std::size_t(k)], sizeof loss) == 0;
  }
  const auto final_a = a.checkpoint(), final_b = b.checkpoint();
  constexpr const char* part_names[] = {"conv state", "channel state", "linear state", "W1", "b1", "W2", "b2"};
  for (std::size_t i = 0; i < final_a.size(); ++i)
    if (final_a[i] != final_b[i]) std::cout << "soak: resumed run differs in " << part_names[i] << "\n";
  if (!losses_equal) std::cout << "soak: resumed run's losses differ\n";
  const bool resume_equal = losses_equal && final_a == final_b;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  long start = samples.front().second, max = 0;
  for (const auto& [step, kib] : samples) {
    if (step <= args.warmup) start = kib;
    if (step >= args.warmup) max = std::max(max, kib);
  }
  const long end = samples.back().second, growth = end - start;
  if (!args.csv.empty()) {
    std::ofstream csv(args.csv);
    csv << "step,rss_kib\n";
    for (const auto& [step, kib] : samples) csv << step << ',' << kib << '\n';
  }
  const index_t window = std::min<index_t>(100, resume_at);
  double first_loss = 0, last_loss = 0;
  for (index_t k = 0; k < window; ++k) {
    first_loss += losses[std::size_t(k)];
    last_loss += losses[std::size_t(args.steps - 1 - k)];
  }
  std::printf("soak-cpp: mean loss of the first %lld steps %.4f, of the last %lld %.4f; resumed at step %lld\n",
              static_cast<long long>(window), first_loss / double(window), static_cast<long long>(window),
              last_loss / double(window), static_cast<long long>(resume_at));
  std::printf("soak-cpp: steps=%lld threads=%d warmup=%lld rss_first_kib=%ld rss_start_kib=%ld rss_end_kib=%ld "
              "rss_max_kib=%ld growth_kib=%ld threshold_kib=%ld resume_equal=%d seconds=%.1f\n",
              static_cast<long long>(args.steps), args.threads, static_cast<long long>(args.warmup),
              samples.front().second, start, end, max, growth, args.max_growth_kib, int(resume_equal), seconds);
  return resume_equal && growth <= args.max_growth_kib ? 0 : 1;
}
