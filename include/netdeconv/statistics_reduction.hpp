// SPDX-License-Identifier: MIT
#pragma once
// Statistics shared across data-parallel processes (docs/method.md §7, "Sync across processes"): a
// layer whose steps see one process's shard of the batch combines its statistics with the other
// shards' through a reduction that the framework supplies (PyTorch: torch.distributed all-reduces).
//
//   forward:   block moments of the shard (per statistic s: n_s, mu_s, M_s; n_s may be 0 or 1)
//              -> moments(m): the moments of the whole batch, the same on every process
//              -> Cov_s = M_s/n_s + eps I -> D_s, W', b', running statistics as in a local step.
//   backward:  the same moments call, then per statistic the shard's dL/dCov_s and dL/dmu_s
//              -> gradients(dcov, dmu): their sums over the processes -> dL/dx of the shard's
//              rows through the global mu_s and n_s.
// So the outputs and every gradient equal those of one process on the whole batch (the loss being
// the sum of the shards' losses). Both members run on the calling thread, inside the step, and
// must leave every process with the same values; a throw aborts the step and changes nothing.
// CPU policies only: a layer with a reduction refuses a cuda_policy step.
//
//   auto r = std::make_shared<netdeconv::statistics_reduction>();
//   r->moments = [&](auto& m) { /* all-reduce count, mean, scatter */ };
//   r->gradients = [&](auto& dcov, auto& dmu) { /* all-reduce sums */ };
//   layer.set_reduction(r);

#include <functional>
#include <vector>

#include <Eigen/Core>

#include "checks.hpp"
#include "covariance.hpp"
#include "moments.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

struct statistics_reduction {
  /// In place: the shard's moments (one per statistic) become the whole batch's.
  std::function<void(std::vector<netdeconv::moments<double>>& m)> moments;
  /// In place: the shard's dL/dCov_s (F x F, symmetric) and dL/dmu_s (F) become their sums over the shards.
  std::function<void(std::vector<Eigen::MatrixXd>& dcov, std::vector<Eigen::VectorXd>& dmu)> gradients;
};

/// The moments of the batch `source` belongs to: block_moments(policy, source, plan) without a
/// reduction; with one, the shard's moments (any number of samples) through reduction->moments,
/// which must give >= 2 samples per statistic and the plan's shape.
template <class Policy, class Source>
std::vector<moments<double>> batch_moments(const char* fn, const Policy& policy, const Source& source,
                                           const block_plan& plan, const statistics_reduction* reduction) {
  if (reduction == nullptr) return block_moments(policy, source, plan);
  detail::check_block_moments(fn, source, plan, 0);
  std::vector<moments<double>> m = detail::block_moments_impl(policy, source, plan);
  reduction->moments(m);
  NETDECONV_REQUIRE(m.size() == std::size_t(plan.count()), fn, "the reduction returned ", m.size(),
                    " moments, the plan has ", plan.count(), " statistics");
  for (const moments<double>& s : m) {
    NETDECONV_REQUIRE(s.features() == plan.features(), fn, "the reduction returned moments of ", s.features(),
                      " features, the plan has ", plan.features());
    NETDECONV_REQUIRE(s.count() >= 2, fn, "statistics need >= 2 samples over all processes, got ", s.count());
  }
  return m;
}

}  // namespace netdeconv
