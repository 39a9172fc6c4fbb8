// SPDX-License-Identifier: MIT
#pragma once
// What the three deconvolution layers share on every backend (docs/method.md §7), free of Eigen so
// that nvcc compiles it: the options, the failure policies, the running state (in memory the layer
// owns, or in views its caller attaches: host or device) and its checkpoint format.
//
// One training step (running mean r_mu, running D r_D per statistic, momentum m):
//   frozen = freeze && counter > freeze_iter;  counter = (counter + 1) mod (10 * freeze_iter)
//   frozen:      fold with the evaluation statistics; nothing else changes
//   otherwise:   moments of the batch -> Cov_s = M_s/n + eps_s I -> D_s = Cov_s^(-1/2)
//                on failure (NaN/Inf, not positive definite, not converged) apply options.on_failure
//                r <- (1 - m) r + m value for mu and D (and Cov, with average_covariance);
//                r <- value on the first step with first_step_copy
// A step that throws leaves the state exactly as it was. The step itself is the backend's:
// layer_state.hpp (CPU policies), cuda/layer_state.cuh (cuda_policy), both
// detail::layer_backend<Policy>.

#include <array>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <memory>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "blocks.hpp"
#include "checkpoint.hpp"
#include "checks.hpp"
#include "error.hpp"
#include "isqrt_options.hpp"
#include "statistics_view.hpp"
#include "tensor_view.hpp"

namespace netdeconv {

/// What a layer does when a step's statistics fail (NaN/Inf, not positive definite, not converged).
enum class failure_policy {
  throw_error,     ///< throw numerical_error; the state is unchanged
  keep_previous,   ///< fold with the running statistics; do not update them
  exact_fallback,  ///< recompute the failed blocks with the exact float64 path (then keep_previous); CPU only
  raise_eps,       ///< multiply eps by 10 and retry, at most max_eps_raises times (then keep_previous); CPU only
};

enum class step_outcome { computed, frozen, kept_previous, exact_fallback, eps_raised };

inline std::ostream& operator<<(std::ostream& os, step_outcome o) {
  constexpr const char* names[] = {"computed", "frozen", "kept_previous", "exact_fallback", "eps_raised"};
  const auto i = static_cast<std::size_t>(o);
  if (i >= std::size(names)) return os << "step_outcome(" << static_cast<int>(o) << ")";
  return os << names[i];
}

/// Thrown by failure_policy::throw_error.
class numerical_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Layer options. The defaults are the reference layers' behaviour (reference-compatible mode);
/// improved() turns on the documented improvements.
struct layer_options {
  double momentum = 0.1;
  bool freeze = false;
  index_t freeze_iter = 100;
  /// Copy the first step's statistics into the running ones instead of averaging with (0, I).
  /// The reference does this only in the channel layer.
  bool first_step_copy = false;
  /// Keep a running average of Cov instead of D; evaluation takes the inverse square root of it.
  bool average_covariance = false;
  /// eps_s = eps * tr(Cov0_s)/F (scale-free) instead of eps.
  bool relative_eps = false;
  failure_policy on_failure = failure_policy::throw_error;
  int max_eps_raises = 3;

  /// First-step copy, running covariance, trace-relative eps, keep previous statistics on failure.
  static layer_options improved() {
    layer_options o;
    o.first_step_copy = true;
    o.average_covariance = true;
    o.relative_eps = true;
    o.on_failure = failure_policy::keep_previous;
    return o;
  }
};

/// What a layer's backward differentiates: mu and D as functions of x (full), or as constants
/// (the cheap stop-gradient; frozen and kept steps always are).
enum class statistics_gradient { full, constants };

/// What the last training step did (host state only).
struct step_diagnostic {
  step_outcome outcome = step_outcome::computed;
  std::vector<isqrt_report> reports;  ///< one per statistic, as finally used (empty when frozen)
  int eps_raises = 0;                 ///< tenfold eps increases this step (raise_eps)
  std::vector<index_t> exact_blocks;  ///< statistics that exact_fallback recomputed with the exact root
  index_t failures = 0;               ///< steps so far whose statistics failed (saved in checkpoints)
};

/// A layer's running state in memory its caller owns (a framework's buffers, e.g. PyTorch
/// register_buffer tensors, so that its own checkpoint holds them), on the host or, attached with
/// a cuda_policy, on the device. S = plan().count(), F = plan().features(); any strides.
template <class T>
struct running_state_view {
  matrix_view<T> mean;            ///< (S, F) running means
  tensor_view<T, 3> D;            ///< (S, F, F) running D
  tensor_view<T, 3> cov;          ///< (S, F, F) running covariance with average_covariance, else empty
  vector_view<index_t> counters;  ///< (3): training steps, freeze counter, failed steps
  vector_view<T> remaining;       ///< channel layer with unwhitened channels: their mean and variance (2), else empty
};

// Defined by the CPU backend (block_statistics.hpp, fold.hpp, layer_state.hpp): the layers' host
// returning forms use them.
template <class T>
struct block_statistics;
template <class T>
struct folded_weights;
template <class T>
struct layer_step;
struct statistics_reduction;  // statistics_reduction.hpp (CPU policies)

namespace detail {

/// The training step, evaluation and attachment of a layer on Policy's backend.
template <class Policy, class = void>
struct layer_backend;

/// " block s <status> (residual r after k iterations)" for every report that is not ok.
inline std::string describe_failures(const std::vector<isqrt_report>& reports) {
  std::ostringstream os;
  for (std::size_t s = 0; s < reports.size(); ++s)
    if (reports[s].status != isqrt_status::ok)
      os << " block " << s << ' ' << reports[s].status << " (residual " << reports[s].residual << " after "
         << reports[s].iterations << " iterations)";
  return os.str();
}

/// Where a layer's state lives.
enum class state_memory { host, device };

/// Running statistics of one plan, the counters and the checkpoint; every layer has one. The state
/// is always read and written through state(): views of memory this object owns, or the caller's
/// (attach). The step logic is the backend's (layer_backend).
template <class T>
class deconv_core {
 public:
  deconv_core(const block_plan& plan, double eps, const isqrt_options& isqrt, const layer_options& options,
              bool uncentred = false, index_t remaining = 0)
      : plan_(plan), eps_(eps), isqrt_(isqrt), options_(options), uncentred_(uncentred), remaining_(remaining) {
    constexpr const char* fn = "layer";
    NETDECONV_REQUIRE(eps >= 0, fn, "eps must be >= 0, got ", eps);
    check_isqrt_options(fn, isqrt);
    NETDECONV_REQUIRE(options.momentum >= 0 && options.momentum <= 1, fn, "momentum must be in [0, 1], got ",
                      options.momentum);
    NETDECONV_REQUIRE(options.freeze_iter >= 1 && options.freeze_iter <= std::numeric_limits<index_t>::max() / 10, fn,
                      "freeze_iter must be in [1, 2^63/10] (the counter wraps at 10*freeze_iter), got ",
                      options.freeze_iter);
    NETDECONV_REQUIRE(options.max_eps_raises >= 0 && options.max_eps_raises <= 30, fn,
                      "max_eps_raises must be in [0, 30] (eps x 10^30 at most), got ", options.max_eps_raises);
    const index_t S = plan.count(), F = plan.features();
    // S*F + S*F*F (twice with a running Cov) + remaining entries, each product checked.
    const char* what = "running state entries";
    const index_t squares = checked_mul(fn, what, checked_mul(fn, what, F, F), options.average_covariance ? 2 : 1);
    const index_t entries = checked_add(fn, what, checked_mul(fn, what, S, checked_add(fn, what, F, squares)), remaining);
    values_.assign(std::size_t(entries), T(0));
    counters_.assign(3, 0);
    bind_owned();
    for (index_t s = 0; s < S; ++s)
      for (index_t i = 0; i < F; ++i) {
        state_.D(s, i, i) = T(1);
        if (options.average_covariance) state_.cov(s, i, i) = T(1);
      }
    if (remaining == 2) state_.remaining(1) = T(1);  // mean 0, variance 1
  }
  deconv_core(const deconv_core& o)
      : plan_(o.plan_), eps_(o.eps_), isqrt_(o.isqrt_), options_(o.options_), uncentred_(o.uncentred_),
        remaining_(o.remaining_), values_(o.values_), counters_(o.counters_), state_(o.state_), memory_(o.memory_),
        attached_(o.attached_), diagnostic_(o.diagnostic_), backend_memory_(o.backend_memory_),
        reduction_(o.reduction_) {
    if (!attached_) bind_owned();
  }
  deconv_core& operator=(const deconv_core& o) {
    deconv_core copy(o);
    std::swap(values_, copy.values_);
    std::swap(counters_, copy.counters_);
    plan_ = o.plan_, eps_ = o.eps_, isqrt_ = o.isqrt_, options_ = o.options_, uncentred_ = o.uncentred_;
    remaining_ = o.remaining_, state_ = o.state_, memory_ = o.memory_, attached_ = o.attached_;
    diagnostic_ = o.diagnostic_, backend_memory_ = o.backend_memory_, reduction_ = o.reduction_;
    if (!attached_) bind_owned();
    return *this;
  }

  const block_plan& plan() const { return plan_; }
  double eps() const { return eps_; }
  const isqrt_options& isqrt() const { return isqrt_; }
  const layer_options& options() const { return options_; }
  bool uncentred() const { return uncentred_; }
  state_memory memory() const { return memory_; }

  /// The state in host memory, checked (as a checkpoint is, see check_running) when it is the
  /// caller's; invalid_argument if it is in device memory.
  const running_state_view<T>& host_state(const char* fn) const {
    NETDECONV_REQUIRE(memory_ == state_memory::host, fn,
                      "the layer's state is in device memory (attach_state with a cuda_policy): read the attached views, "
                      "or step with a cuda_policy");
    if (attached_) check_running(state_, [](const auto&... parts) { fail("attach_state", "the attached state ", parts...); });
    return state_;
  }
  /// The state in device memory; invalid_argument if it is on the host.
  const running_state_view<T>& device_state(const char* fn) const {
    NETDECONV_REQUIRE(memory_ == state_memory::device, fn,
                      "a cuda_policy call needs the layer's state in device memory: attach_state(cuda_policy, view) first");
    return state_;
  }

  /// Memory a backend keeps with the layer between calls (cuda/layer_state.cuh: the last step's
  /// decision, in device memory, which the backward reads); copies share it, as an attached state.
  void* backend_memory() const { return backend_memory_.get(); }
  void keep_backend_memory(std::shared_ptr<void> memory) { backend_memory_ = std::move(memory); }

  /// The reduction across processes of the steps and backwards (statistics_reduction.hpp), or null.
  const statistics_reduction* reduction() const { return reduction_.get(); }
  void set_reduction(std::shared_ptr<const statistics_reduction> r) { reduction_ = std::move(r); }

  index_t steps() const { return host_state("steps").counters(0); }
  index_t counter() const { return host_state("freeze_counter").counters(1); }
  /// A copy, so that const calls from several threads never write (docs/hardening.md, "Threads").
  step_diagnostic diagnostic() const {
    step_diagnostic d = diagnostic_;
    d.failures = host_state("diagnostic").counters(2);
    return d;
  }

  /// Checks `state` for this layer (shapes, writable, disjoint): what attach and its CUDA form need.
  void check_attachable(const char* fn, const running_state_view<T>& state) const {
    const index_t S = plan_.count(), F = plan_.features();
    check_statistics_view(fn, block_statistics_view<const T>{plan_, state.mean, state.D});
    check_output_view(fn, "mean", state.mean);
    check_output_view(fn, "D", state.D);
    check_output_view(fn, "counters", state.counters);
    NETDECONV_REQUIRE(state.counters.shape[0] == 3, fn, "counters must have 3 entries (steps, freeze counter, failures), got ",
                      state.counters.shape[0]);
    check_disjoint(fn, "D", state.D, "mean", state.mean);
    check_disjoint(fn, "counters", state.counters, "mean", state.mean);
    check_disjoint(fn, "counters", state.counters, "D", state.D);
    if (options_.average_covariance) {
      check_output_view(fn, "cov", state.cov);
      NETDECONV_REQUIRE(state.cov.shape[0] == S && state.cov.shape[1] == F && state.cov.shape[2] == F, fn, "cov is (",
                        state.cov.shape[0], ", ", state.cov.shape[1], ", ", state.cov.shape[2], "), the layer needs (", S,
                        ", ", F, ", ", F, ") with average_covariance");
      check_disjoint(fn, "cov", state.cov, "mean", state.mean);
      check_disjoint(fn, "cov", state.cov, "D", state.D);
      check_disjoint(fn, "cov", state.cov, "counters", state.counters);
    } else {
      NETDECONV_REQUIRE(state.cov.empty(), fn, "cov must be empty without average_covariance");
    }
    if (remaining_ > 0) {
      check_output_view(fn, "remaining", state.remaining);
      NETDECONV_REQUIRE(state.remaining.shape[0] == remaining_, fn, "remaining must have ", remaining_,
                        " entries (mean, variance), got ", state.remaining.shape[0]);
      check_disjoint(fn, "remaining", state.remaining, "mean", state.mean);
      check_disjoint(fn, "remaining", state.remaining, "D", state.D);
      check_disjoint(fn, "remaining", state.remaining, "cov", state.cov);
      check_disjoint(fn, "remaining", state.remaining, "counters", state.counters);
    } else {
      NETDECONV_REQUIRE(state.remaining.empty(), fn, "remaining must be empty for this layer");
    }
  }

  /// From now on keeps the state in `state`, host memory (see running_state_view): writes the
  /// current one there, and every later call reads it back first (checked as a checkpoint is), so
  /// whatever the caller loads into that memory is the state.
  void attach(const running_state_view<T>& state) {
    constexpr const char* fn = "attach_state";
    check_attachable(fn, state);
    copy_state(host_state(fn), state);
    state_ = state;
    attached_ = true;
  }
  /// Points the state at `state` in device memory, which the CUDA backend has filled.
  void attach_device(const running_state_view<T>& state) {
    state_ = state;
    attached_ = true;
    memory_ = state_memory::device;
  }

  /// Records a finished step: counter = (counter + 1) mod 10 freeze_iter, steps + 1, and its diagnostic.
  void commit(const step_diagnostic& diag) {
    const running_state_view<T>& st = host_state("train_step");
    st.counters(1) = (st.counters(1) + 1) % (10 * options_.freeze_iter);
    st.counters(0) += 1;
    st.counters(2) = diag.failures;
    diagnostic_ = diag;
  }
  /// Records a step whose statistics are not used (e.g. a failed part of a composite layer).
  void keep_previous_step() {
    step_diagnostic diag;
    diag.outcome = step_outcome::kept_previous;
    diag.failures = host_state("train_step").counters(2) + 1;
    commit(diag);
  }

  /// Writes the plan, every option that shapes the trajectory, the counters and the running
  /// statistics (D and Cov column by column). A layer writes its own fields after them.
  void save(byte_writer& w) const {
    const running_state_view<T>& st = host_state("state");
    for (const std::int64_t v : configuration()) w.i64(v);
    w.f64(options_.momentum);
    w.f64(isqrt_.tolerance);
    for (index_t k = 0; k < 3; ++k) w.i64(st.counters(k));
    const index_t F = plan_.features();
    std::vector<T> part(std::size_t(F * F));
    for (index_t s = 0; s < plan_.count(); ++s) {
      for (index_t i = 0; i < F; ++i) part[std::size_t(i)] = st.mean(s, i);
      w.scalars(part.data(), F);
      for (const tensor_view<T, 3>* m : {&st.D, &st.cov}) {
        if (m->empty()) continue;
        for (index_t j = 0; j < F; ++j)
          for (index_t i = 0; i < F; ++i) part[std::size_t(j * F + i)] = (*m)(s, i, j);
        w.scalars(part.data(), F * F);
      }
    }
  }

  /// Restores what save() wrote; throws checkpoint_error, and changes nothing, when the
  /// configuration differs or the contents make no sense (check_running). `layer_fields(r)` reads
  /// and checks the fields the layer wrote after save()'s (it may throw); the state changes only
  /// after it returns.
  template <class LayerFields>
  void load(byte_reader& r, LayerFields&& layer_fields) {
    const running_state_view<T>& st = host_state("load_state");
    constexpr const char* names[] = {"block layout", "channels", "kernel area", "groups", "block",
                                     "freeze", "freeze_iter", "first_step_copy", "average_covariance",
                                     "relative_eps", "on_failure", "max_eps_raises", "isqrt method",
                                     "isqrt iterations", "isqrt scaling"};
    const auto config = configuration();
    static_assert(std::size(names) == std::tuple_size_v<decltype(config)>);
    for (std::size_t i = 0; i < config.size(); ++i) r.expect_i64(config[i], names[i]);
    r.expect_f64(options_.momentum, "momentum");
    r.expect_f64(isqrt_.tolerance, "isqrt tolerance");
    deconv_core loaded(plan_, eps_, isqrt_, options_, uncentred_, remaining_);
    const running_state_view<T>& ls = loaded.state_;
    for (index_t k = 0; k < 3; ++k) ls.counters(k) = r.i64();
    const index_t F = plan_.features();
    std::vector<T> part(std::size_t(F * F));
    for (index_t s = 0; s < plan_.count(); ++s) {
      r.scalars(part.data(), F, "running mean");
      for (index_t i = 0; i < F; ++i) ls.mean(s, i) = part[std::size_t(i)];
      for (const auto& [m, what] : {std::pair{&ls.D, "running D"}, std::pair{&ls.cov, "running Cov"}}) {
        if (m->empty()) continue;
        r.scalars(part.data(), F * F, what);
        for (index_t j = 0; j < F; ++j)
          for (index_t i = 0; i < F; ++i) (*m)(s, i, j) = part[std::size_t(j * F + i)];
      }
    }
    check_running(ls, [&](const auto&... parts) { r.fail(parts...); });
    layer_fields(r);
    r.expect_end();
    for (index_t k = 0; k < remaining_; ++k) ls.remaining(k) = st.remaining(k);
    copy_state(ls, st);
    diagnostic_ = {};
  }

 private:
  /// Views of values_ and counters_: [mean (S, F) | D (S, F, F) | cov (S, F, F) | remaining].
  void bind_owned() {
    const index_t S = plan_.count(), F = plan_.features();
    T* p = values_.data();
    state_.mean = {p, {S, F}, {F, 1}};
    state_.D = {p + S * F, {S, F, F}, {F * F, F, 1}};
    state_.cov = options_.average_covariance ? tensor_view<T, 3>{p + S * F + S * F * F, {S, F, F}, {F * F, F, 1}}
                                             : tensor_view<T, 3>{};
    state_.remaining = remaining_ > 0 ? vector_view<T>{p + S * F + S * F * F * (options_.average_covariance ? 2 : 1),
                                                       {remaining_}, {1}}
                                      : vector_view<T>{};
    state_.counters = {counters_.data(), {3}, {1}};
  }

  /// to = from, element by element (two host states of this layer's shapes).
  void copy_state(const running_state_view<T>& from, const running_state_view<T>& to) const {
    const index_t F = plan_.features();
    for (index_t s = 0; s < plan_.count(); ++s)
      for (index_t i = 0; i < F; ++i) {
        to.mean(s, i) = from.mean(s, i);
        for (index_t j = 0; j < F; ++j) {
          to.D(s, i, j) = from.D(s, i, j);
          if (options_.average_covariance) to.cov(s, i, j) = from.cov(s, i, j);
        }
      }
    for (index_t k = 0; k < 3; ++k) to.counters(k) = from.counters(k);
    for (index_t k = 0; k < remaining_; ++k) to.remaining(k) = from.remaining(k);
  }

  /// The integer configuration fields a checkpoint must match, in the order save() writes them.
  std::array<std::int64_t, 15> configuration() const {
    return {std::int64_t(plan_.layout), plan_.channels, plan_.kernel_area, plan_.groups, plan_.block,
            options_.freeze, options_.freeze_iter, options_.first_step_copy, options_.average_covariance,
            options_.relative_eps, std::int64_t(options_.on_failure), options_.max_eps_raises,
            std::int64_t(isqrt_.method), isqrt_.iterations, std::int64_t(isqrt_.scaling)};
  }

  /// Steps a checkpoint may hold: far beyond any run, and far from overflowing the step count.
  static constexpr index_t max_steps = index_t(1) << 62;

  /// Calls fail(message parts...) unless the host state `st` makes sense: 0 <= failures <= steps <
  /// 2^62, counter == steps mod (10 freeze_iter), finite running statistics, and a running
  /// covariance with ||C - C^T||_F <= F epsilon(T) ||C||_F (the inverse square root's symmetry test),
  /// and remaining-channel statistics with a finite mean and a finite variance v >= 0, v + eps > 0.
  template <class Fail>
  void check_running(const running_state_view<T>& st, Fail&& fail) const {
    const index_t wrap = 10 * options_.freeze_iter, steps = st.counters(0), counter = st.counters(1),
                  failures = st.counters(2);
    if (steps < 0 || steps >= max_steps) fail("has steps = ", steps, ", outside [0, 2^62)");
    if (counter != steps % wrap)
      fail("has freeze counter ", counter, ", but steps ", steps, " mod 10*freeze_iter = ", steps % wrap);
    if (failures < 0 || failures > steps) fail("has ", failures, " failed steps, outside [0, steps = ", steps, "]");
    const index_t F = plan_.features();
    for (index_t s = 0; s < plan_.count(); ++s) {
      bool finite = true;
      double asymmetry = 0, norm = 0;
      for (index_t i = 0; i < F; ++i) {
        finite = finite && std::isfinite(st.mean(s, i));
        for (index_t j = 0; j < F; ++j) {
          finite = finite && std::isfinite(st.D(s, i, j));
          if (!options_.average_covariance) continue;
          const double c = double(st.cov(s, i, j)), d = c - double(st.cov(s, j, i));
          finite = finite && std::isfinite(c);
          asymmetry += d * d;
          norm += c * c;
        }
      }
      if (!finite) fail("holds non-finite running statistics for block ", s);
      if (std::sqrt(asymmetry) > double(F) * double(std::numeric_limits<T>::epsilon()) * std::sqrt(norm))
        fail("holds a non-symmetric running covariance for block ", s);
    }
    if (remaining_ > 0) {
      const T mean = st.remaining(0), var = st.remaining(1);
      if (!(std::isfinite(mean) && std::isfinite(var) && var >= T(0) && double(var) + eps_ > 0))
        fail("holds remaining-channel mean ", mean, " and variance ", var,
             " (need finite values, variance >= 0 and variance + eps > 0)");
    }
  }

  block_plan plan_;
  double eps_;
  isqrt_options isqrt_;
  layer_options options_;
  bool uncentred_;
  index_t remaining_;  ///< entries of state().remaining: 2 for a channel layer with unwhitened channels, else 0
  std::vector<T> values_;
  std::vector<index_t> counters_;
  running_state_view<T> state_;  ///< views of values_/counters_, or the caller's (attached_)
  state_memory memory_ = state_memory::host;
  bool attached_ = false;
  step_diagnostic diagnostic_;  ///< the last step's; failures read from the counters
  std::shared_ptr<void> backend_memory_;
  std::shared_ptr<const statistics_reduction> reduction_;
};

/// The running statistics of a host state as block_statistics (CPU backend, layer_state.hpp).
template <class T>
block_statistics<T> running_statistics(const deconv_core<T>& core);

/// What conv and linear layers share: the core, accessors, attachment and checkpoints. The
/// configuration fields that shape the statistics beyond the plan (geometry, eps, sampling
/// stride) are saved and checked too.
template <class T, layer_kind Kind>
class folding_layer {
 public:
  /// Running statistics (mean and D per statistic of plan()); host state only.
  block_statistics<T> running() const { return running_statistics(core_); }
  const block_plan& plan() const { return core_.plan(); }
  step_diagnostic diagnostic() const { return core_.diagnostic(); }
  /// Training steps seen, and the reference freeze counter (steps mod 10 * freeze_iter).
  index_t steps() const { return core_.steps(); }
  index_t freeze_counter() const { return core_.counter(); }

  /// Keeps the running state in the caller's host memory from now on (running_state_view;
  /// `remaining` must be empty); the current state is written there first.
  void attach_state(const running_state_view<T>& state) { core_.attach(state); }
  /// The same on Policy's backend: with a cuda_policy, `state` is in device memory, the current
  /// state is copied there (cuda/layer_state.cuh), and the host accessors and checkpoints refuse.
  template <class Policy>
  void attach_state(const Policy& policy, const running_state_view<T>& state) {
    layer_backend<Policy>::attach(policy, core_, state);
  }

  /// Data-parallel training (statistics_reduction.hpp): from now on every step's moments and every
  /// backward's statistic gradients go through `r` (null: local steps again). A step may then see
  /// fewer than 2 samples, even none, as long as the whole batch has 2.
  void set_reduction(std::shared_ptr<const statistics_reduction> r) { core_.set_reduction(std::move(r)); }

  /// Checkpoint bytes (see checkpoint.hpp); host state only.
  std::vector<std::uint8_t> state() const {
    byte_writer w(Kind, sizeof(T));
    w.f64(eps_);
    w.i64(sampling_stride_);
    for (const index_t v : geometry_fields()) w.i64(v);
    core_.save(w);
    return w.finish();
  }
  /// Restores a checkpoint of a layer with the same configuration; throws checkpoint_error, and
  /// changes nothing, otherwise.
  void load_state(const std::vector<std::uint8_t>& bytes) {
    byte_reader r(bytes, Kind, sizeof(T));
    r.expect_f64(eps_, "eps");
    r.expect_i64(sampling_stride_, "sampling_stride");
    constexpr const char* names[] = {"kernel_h", "kernel_w", "stride_h", "stride_w",
                                     "pad_h",    "pad_w",    "dilation_h", "dilation_w"};
    const auto fields = geometry_fields();
    for (std::size_t i = 0; i < fields.size(); ++i) r.expect_i64(fields[i], names[i]);
    core_.load(r, [](byte_reader&) {});
  }

 protected:
  folding_layer(const block_plan& plan, const conv_geometry& geometry, double eps, index_t sampling_stride,
                const isqrt_options& isqrt, const layer_options& options)
      : geometry_(geometry), eps_(eps), sampling_stride_(sampling_stride), core_(plan, eps, isqrt, options) {}

  conv_geometry geometry_;  ///< 1x1 for a linear layer
  double eps_;
  index_t sampling_stride_;
  deconv_core<T> core_;

 private:
  std::array<index_t, 8> geometry_fields() const {
    const conv_geometry& g = geometry_;
    return {g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w};
  }
};

}  // namespace detail
}  // namespace netdeconv
