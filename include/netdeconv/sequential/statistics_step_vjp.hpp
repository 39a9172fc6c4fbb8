// SPDX-License-Identifier: MIT
#pragma once
// Sequential scatter of the statistics step's backward (../statistics_step_vjp.hpp): the oracle,
// row by row in double.

#include <vector>

#include <Eigen/Core>

#include "../blocks.hpp"
#include "../eigen.hpp"
#include "../execution.hpp"

namespace netdeconv::detail {

/// What the scatter adds for every sampled row r and piece (s, g) of statistic s:
///   dL/dX_r = sym_s (X_r - mean_s) + dmu_s,  sym_s = (2/n_s) sym(dL/dCov_s),  dmu_s = dL/dmu_s / n_s.
struct patch_gradient {
  std::vector<square_matrix<double>> sym;
  std::vector<Eigen::VectorXd> mean, dmu;
};

/// For every sampled row r: the gradient of its patch entries (every column belongs to exactly one
/// piece), then add(r, row).
template <class Source, class Adder>
void scatter_patch_gradient(const sequential_policy&, const Source& source, const block_plan& plan,
                            const patch_gradient& grad, const Adder& add) {
  const index_t F = plan.features();
  std::vector<double> row(static_cast<std::size_t>(source.width())), out(row.size());
  Eigen::VectorXd xr(F), v(F);
  for (index_t r = 0; r < source.rows(); ++r) {
    source.gather(r, row.data());
    for (index_t s = 0; s < plan.count(); ++s)
      for (index_t g = 0; g < plan.rows_per_patch(); ++g) {
        for (index_t f = 0; f < F; ++f) xr[f] = row[std::size_t(plan.column(s, g, f))] - grad.mean[std::size_t(s)][f];
        v.noalias() = grad.sym[std::size_t(s)] * xr;  // sym_s is symmetric: (x - mu)^T sym_s = sym_s (x - mu)
        v += grad.dmu[std::size_t(s)];
        for (index_t f = 0; f < F; ++f) out[std::size_t(plan.column(s, g, f))] = v[f];
      }
    add(r, out.data());
  }
}

}  // namespace netdeconv::detail
