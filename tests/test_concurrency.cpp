// SPDX-License-Identifier: MIT
// Thread safety (docs/hardening.md, "Threads"): the stateless functions called from several
// threads at once, on shared read-only inputs and on their own ones, give the bits of the same
// calls made one after another; const calls on one layer object run concurrently too (eval,
// state, running, diagnostic). scripts/sanitize runs this under ASan and UBSan, and ThreadSanitizer
// runs its sequential-policy cases (libgomp is not instrumented, so TSan would report OpenMP's own
// synchronisation in the par cases).
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include <netdeconv/netdeconv.hpp>

using namespace netdeconv;

namespace {

constexpr int threads = 4, rounds = 3;

/// x (N, C, H, W) and a 3x3 weight (cout, C, 3, 3) of normal values.
struct thread_inputs {
  static constexpr index_t N = 2, C = 8, H = 9, W = 9, cout = 4;
  std::vector<float> x, w;
  explicit thread_inputs(unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    x.resize(std::size_t(N * C * H * W));
    w.resize(std::size_t(cout * C * 9));
    for (float& v : x) v = normal(rng);
    for (float& v : w) v = normal(rng);
  }
};

conv_deconv_config thread_config() {
  conv_deconv_config c;
  c.geometry = conv_geometry::square(3, 1, 1);
  c.block = 4;
  c.sampling_stride = 1;
  return c;
}

/// Every stateless kernel once: the conv statistics step (covariance, inverse square root, fold),
/// im2col and whiten; their outputs concatenated.
template <class Policy>
std::vector<float> work(const Policy& policy, const thread_inputs& in) {
  constexpr index_t N = thread_inputs::N, C = thread_inputs::C, H = thread_inputs::H, W = thread_inputs::W,
                    cout = thread_inputs::cout;
  const image_view<const float> x = nchw<const float>(in.x.data(), N, C, H, W);
  const auto step = conv_statistics_step(policy, x, nchw<const float>(in.w.data(), cout, C, 3, 3), {}, thread_config());
  std::vector<float> out = step.weight;
  std::vector<float> cols(std::size_t(N * H * W * C * 9));
  im2col(policy, x, conv_geometry::square(3, 1, 1), row_major(cols.data(), N * H * W, C * 9));
  out.insert(out.end(), cols.begin(), cols.end());
  const auto white = whiten(policy, row_major<const float>(in.x.data(), N * H * W, C));
  out.insert(out.end(), white.data.data(), white.data.data() + white.data.size());
  return out;
}

template <class Policy>
void check_concurrent_calls(const Policy& policy) {
  const thread_inputs shared(7);
  std::vector<thread_inputs> own;
  std::vector<std::vector<float>> expected_own;
  for (int t = 0; t < threads; ++t) own.emplace_back(100 + unsigned(t));
  const std::vector<float> expected_shared = work(policy, shared);
  for (int t = 0; t < threads; ++t) expected_own.push_back(work(policy, own[std::size_t(t)]));
  std::vector<int> mismatches(threads, 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int r = 0; r < rounds; ++r) {
        mismatches[std::size_t(t)] += work(policy, shared) != expected_shared;
        mismatches[std::size_t(t)] += work(policy, own[std::size_t(t)]) != expected_own[std::size_t(t)];
      }
    });
  for (std::thread& t : pool) t.join();
  for (int t = 0; t < threads; ++t) CHECK(mismatches[std::size_t(t)] == 0);
}

}  // namespace

TEST_CASE("stateless functions from several threads give the sequential calls' results (seq)") {
  check_concurrent_calls(seq);
}

TEST_CASE("stateless functions from several threads give the sequential calls' results (par, simd)") {
  check_concurrent_calls(omp_policy{{}, 2});
  check_concurrent_calls(simd_threads(2));
}

TEST_CASE("const calls on one trained layer from several threads (seq)") {
  constexpr index_t N = thread_inputs::N, C = thread_inputs::C, H = thread_inputs::H, W = thread_inputs::W,
                    cout = thread_inputs::cout;
  const thread_inputs in(3);
  conv_deconv_layer<float> layer(C, thread_config());
  const image_view<const float> w = nchw<const float>(in.w.data(), cout, C, 3, 3);
  layer.train_step(seq, nchw<const float>(in.x.data(), N, C, H, W), w, {});
  const std::vector<float> weight = layer.eval(seq, w, {}).weight;
  const std::vector<std::uint8_t> state = layer.state();
  std::vector<int> mismatches(threads, 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int r = 0; r < rounds; ++r) {
        mismatches[std::size_t(t)] += layer.eval(seq, w, {}).weight != weight;
        mismatches[std::size_t(t)] += layer.state() != state;
        mismatches[std::size_t(t)] += layer.diagnostic().reports.size() != 1;
        mismatches[std::size_t(t)] += layer.steps() != 1;
      }
    });
  for (std::thread& t : pool) t.join();
  for (int t = 0; t < threads; ++t) CHECK(mismatches[std::size_t(t)] == 0);
}
