// SPDX-License-Identifier: MIT
// Data-parallel layers (statistics_reduction.hpp): P threads, each a "process" with its own layer and
// shard of one batch, combine their statistics through an in-process all-gather. Their W', b',
// running statistics and dL/dx must equal one layer's on the whole batch, and their dL/dW sum to
// its dL/dW (the whole batch's loss is the sum of the shards'), within 1e-12 in double: the same
// float64 sums in another order.
#include <doctest/doctest.h>

#include <barrier>
#include <thread>

#include <netdeconv/conv_deconv_layer.hpp>
#include <netdeconv/linear_deconv_layer.hpp>
#include <netdeconv/statistics_reduction.hpp>

#include "oracle.hpp"

using namespace netdeconv;

namespace {

/// All-gather among P threads: each publishes its value, every thread reads all P in rank order
/// (so every thread combines them in the same order, as a collective does).
template <class V>
struct all_gather {
  explicit all_gather(int P) : values(std::size_t(P)), sync(P) {}
  std::vector<V> operator()(int rank, V v) {
    values[std::size_t(rank)] = std::move(v);
    sync.arrive_and_wait();
    std::vector<V> all = values;
    sync.arrive_and_wait();
    return all;
  }
  std::vector<V> values;
  std::barrier<> sync;
};

struct communicator {
  explicit communicator(int P) : moments(P), gradients(P) {}
  all_gather<std::vector<netdeconv::moments<double>>> moments;
  all_gather<std::pair<std::vector<Eigen::MatrixXd>, std::vector<Eigen::VectorXd>>> gradients;

  std::shared_ptr<statistics_reduction> reduction(int rank) {
    auto r = std::make_shared<statistics_reduction>();
    r->moments = [this, rank](std::vector<netdeconv::moments<double>>& m) {
      const auto all = moments(rank, m);
      for (std::size_t s = 0; s < m.size(); ++s) {
        m[s] = all[0][s];
        for (std::size_t p = 1; p < all.size(); ++p) m[s].merge(all[p][s]);
      }
    };
    r->gradients = [this, rank](std::vector<Eigen::MatrixXd>& dcov, std::vector<Eigen::VectorXd>& dmu) {
      const auto all = gradients(rank, {dcov, dmu});
      for (std::size_t s = 0; s < dcov.size(); ++s) {
        dcov[s] = all[0].first[s], dmu[s] = all[0].second[s];
        for (std::size_t p = 1; p < all.size(); ++p) dcov[s] += all[p].first[s], dmu[s] += all[p].second[s];
      }
    };
    return r;
  }
};

std::vector<double> normal(std::size_t n, std::mt19937_64& rng, double shift = 0) {
  std::vector<double> v(n);
  for (double& e : v) e = std::normal_distribution<double>()(rng) + shift;
  return v;
}

struct step_out {
  std::vector<double> weight, bias, dx, dweight, running_mean;
};

}  // namespace

TEST_CASE("data-parallel conv layers equal one layer on the whole batch, empty shards included") {
  constexpr index_t C = 4, H = 7, W = 6, cout = 3;
  conv_deconv_config cfg;
  cfg.geometry = conv_geometry::square(3, 1, 1);
  cfg.block = 2;
  cfg.sampling_stride = 2;
  for (const std::vector<index_t>& shards : std::vector<std::vector<index_t>>{{2, 3}, {0, 1, 3, 1}}) {
    const int P = int(shards.size());
    index_t N = 0;
    for (const index_t n : shards) N += n;
    CAPTURE(P);
    std::mt19937_64 rng(7000 + P);
    const std::vector<double> x = normal(std::size_t(N * C * H * W), rng, 0.5), w = normal(std::size_t(cout * C * 9), rng),
                              b = normal(cout, rng);
    std::vector<std::vector<double>> gw(static_cast<std::size_t>(P)), gb(static_cast<std::size_t>(P));
    std::vector<double> gw_sum(w.size()), gb_sum(cout);
    for (int p = 0; p < P; ++p) {
      gw[std::size_t(p)] = normal(w.size(), rng), gb[std::size_t(p)] = normal(cout, rng);
      for (std::size_t i = 0; i < w.size(); ++i) gw_sum[i] += gw[std::size_t(p)][i];
      for (std::size_t i = 0; i < std::size_t(cout); ++i) gb_sum[i] += gb[std::size_t(p)][i];
    }
    const auto wv = nchw<const double>(w.data(), cout, C, 3, 3);
    const auto bv = contiguous<const double>(b.data(), cout);

    // Runs a step and its backward of `layer` on images [first, first + n) with upstream gradients g, gbias.
    const auto run = [&](conv_deconv_layer<double>& layer, index_t first, index_t n, const std::vector<double>& g,
                         const std::vector<double>& gbias) {
      const auto xv = nchw<const double>(x.data() + first * C * H * W, n, C, H, W);
      const auto wb = layer.train_step(seq, xv, wv, bv);
      const block_plan plan = layer.plan();
      const index_t S = plan.count(), F = plan.features();
      std::vector<double> mean, D;
      for (index_t s = 0; s < S; ++s) {
        mean.insert(mean.end(), wb.statistics.mean[s].data(), wb.statistics.mean[s].data() + F);
        D.insert(D.end(), wb.statistics.D[s].data(), wb.statistics.D[s].data() + F * F);  // symmetric: either order
      }
      step_out out{std::vector<double>(wb.weight.begin(), wb.weight.end()),
                   std::vector<double>(wb.bias.begin(), wb.bias.end()), std::vector<double>(std::size_t(n * C * H * W)),
                   std::vector<double>(w.size()), mean};
      std::vector<double> db(cout);
      std::vector<isqrt_report> reports(static_cast<std::size_t>(S));
      layer.backward(seq, xv, wv, bv, {plan, row_major<const double>(mean.data(), S, F), {D.data(), {S, F, F}, {F * F, F, 1}}},
                     layer.diagnostic(), nchw<const double>(g.data(), cout, C, 3, 3), contiguous<const double>(gbias.data(), cout),
                     {nchw(out.dweight.data(), cout, C, 3, 3), contiguous(db.data(), cout),
                      nchw(out.dx.data(), n, C, H, W), contiguous(reports.data(), S)});
      const auto running = layer.running();
      out.running_mean.clear();
      for (index_t s = 0; s < S; ++s)
        out.running_mean.insert(out.running_mean.end(), running.mean[s].data(), running.mean[s].data() + F);
      return out;
    };

    conv_deconv_layer<double> whole(C, cfg);
    const step_out ref = run(whole, 0, N, gw_sum, gb_sum);

    communicator comm(P);
    std::vector<step_out> outs(static_cast<std::size_t>(P));
    std::vector<std::thread> ranks;
    index_t first = 0;
    for (int p = 0; p < P; ++p) {
      ranks.emplace_back([&, p, first] {
        conv_deconv_layer<double> layer(C, cfg);
        layer.set_reduction(comm.reduction(p));
        outs[std::size_t(p)] = run(layer, first, shards[std::size_t(p)], gw[std::size_t(p)], gb[std::size_t(p)]);
      });
      first += shards[std::size_t(p)];
    }
    for (auto& t : ranks) t.join();

    std::vector<double> dx, dweight(w.size());
    for (int p = 0; p < P; ++p) {
      const step_out& o = outs[std::size_t(p)];
      CHECK(oracle::rel_err(o.weight, ref.weight) < 1e-12);
      CHECK(oracle::rel_err(o.bias, ref.bias) < 1e-12);
      CHECK(oracle::rel_err(o.running_mean, ref.running_mean) < 1e-12);
      dx.insert(dx.end(), o.dx.begin(), o.dx.end());
      for (std::size_t i = 0; i < w.size(); ++i) dweight[i] += o.dweight[i];
    }
    CHECK(oracle::rel_err(dx, ref.dx) < 1e-12);
    CHECK(oracle::rel_err(dweight, ref.dweight) < 1e-12);
  }
}

TEST_CASE("a reduction that leaves fewer than 2 samples, or throws, aborts the step and changes nothing") {
  linear_deconv_config cfg;
  cfg.block = 4;  // one statistic of the 4 features
  linear_deconv_layer<double> layer(4, cfg);
  std::vector<double> x(3 * 4, 1.5), w(2 * 4, 0.5), b(2, 0.0);
  const auto xv = row_major<const double>(x.data(), 3, 4);
  const auto wv = row_major<const double>(w.data(), 2, 4);
  const auto bv = contiguous<const double>(b.data(), 2);
  auto r = std::make_shared<statistics_reduction>();
  r->moments = [](std::vector<moments<double>>& m) {
    for (auto& s : m) s = moments<double>(1, s.mean(), s.scatter());
  };
  layer.set_reduction(r);
  CHECK_THROWS_WITH_AS(layer.train_step(seq, xv, wv, bv),
                       "netdeconv::train_step: statistics need >= 2 samples over all processes, got 1",
                       std::invalid_argument);
  r->moments = [](std::vector<moments<double>>& m) { m.pop_back(); };
  CHECK_THROWS_WITH_AS(layer.train_step(seq, xv, wv, bv),
                       "netdeconv::train_step: the reduction returned 0 moments, the plan has 1 statistics",
                       std::invalid_argument);
  r->moments = [](std::vector<moments<double>>&) { throw std::runtime_error("peer lost"); };
  CHECK_THROWS_WITH_AS(layer.train_step(seq, xv, wv, bv), "peer lost", std::runtime_error);
  CHECK(layer.steps() == 0);
  layer.set_reduction(nullptr);  // local again: a shard of 1 row is refused
  CHECK_THROWS_AS(layer.train_step(seq, row_major<const double>(x.data(), 1, 4), wv, bv), std::invalid_argument);
}
