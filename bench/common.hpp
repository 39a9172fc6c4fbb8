// SPDX-License-Identifier: MIT
#pragma once
// Shared pieces of the benchmarks: the layer shapes of docs/method.md §9, interleaved median timing, OpenBLAS
// baselines, the machine's sgemm rate, a memory read-bandwidth probe, and heap accounting (malloc
// is wrapped, so every allocation of the process counts: Eigen, std::vector, xsimd).
// Include from exactly one translation unit per executable (it defines malloc and friends).

#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <cblas.h>
#include <cerrno>

#ifdef _OPENMP
#include <omp.h>
#endif

// ---- heap accounting: glibc's allocator behind a counter of live bytes and its peak ----
extern "C" {
void* __libc_malloc(std::size_t);
void __libc_free(void*);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
}

namespace bench {
inline std::atomic<long long> live_bytes{0}, peak_bytes{0};
inline void count_alloc(void* p) {
  if (!p) return;
  const auto size = static_cast<long long>(malloc_usable_size(p));
  const long long now = live_bytes.fetch_add(size) + size;
  long long peak = peak_bytes.load();
  while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {
  }
}
inline void count_free(void* p) {
  if (p) live_bytes.fetch_sub(static_cast<long long>(malloc_usable_size(p)));
}
/// Peak of live heap bytes above the level at the call, while f runs.
template <class F>
long long peak_extra_bytes(F&& f) {
  const long long base = live_bytes.load();
  peak_bytes.store(base);
  f();
  return peak_bytes.load() - base;
}
}  // namespace bench

extern "C" {
void* malloc(std::size_t n) noexcept {
  void* p = __libc_malloc(n);
  bench::count_alloc(p);
  return p;
}
void free(void* p) noexcept {
  bench::count_free(p);
  __libc_free(p);
}
void* calloc(std::size_t n, std::size_t s) noexcept {
  void* p = __libc_calloc(n, s);
  bench::count_alloc(p);
  return p;
}
void* realloc(void* old, std::size_t n) noexcept {
  bench::count_free(old);
  void* p = __libc_realloc(old, n);
  bench::count_alloc(p ? p : (n == 0 ? nullptr : old));
  return p;
}
void* memalign(std::size_t a, std::size_t n) noexcept {
  void* p = __libc_memalign(a, n);
  bench::count_alloc(p);
  return p;
}
void* aligned_alloc(std::size_t a, std::size_t n) noexcept { return memalign(a, n); }
int posix_memalign(void** out, std::size_t a, std::size_t n) noexcept {
  *out = memalign(a, n);
  return *out ? 0 : ENOMEM;
}
}

namespace bench {

using clock = std::chrono::steady_clock;

inline double seconds_of(const std::function<void()>& f) {
  const auto t0 = clock::now();
  f();
  return std::chrono::duration<double>(clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

/// Runs every named function once per round, `rounds` rounds in turn (interleaved: the machine's
/// load drifts over all of them alike), after one warm-up call each; returns the median per function.
inline std::vector<double> interleaved_medians(const std::vector<std::function<void()>>& fs, int rounds,
                                               const std::function<void(int)>& between = {}) {
  for (const auto& f : fs) f();
  std::vector<std::vector<double>> t(fs.size());
  for (int r = 0; r < rounds; ++r) {
    for (std::size_t i = 0; i < fs.size(); ++i) t[i].push_back(seconds_of(fs[i]));
    if (between) between(r);
  }
  std::vector<double> out;
  for (auto& ti : t) out.push_back(median(ti));
  return out;
}

/// docs/method.md §9 rows: (H, W, Cin, Cout, channel blocks C/B, k, S).
struct layer_shape {
  int H, W, C, Cout, blocks, k, S;
};
inline const std::vector<layer_shape> spec_shapes = {
    {256, 256, 3, 64, 1, 3, 3},    {128, 128, 64, 128, 1, 3, 3},  {64, 64, 128, 256, 2, 3, 3},
    {32, 32, 256, 512, 4, 3, 3},   {16, 16, 512, 512, 8, 3, 3},   {128, 128, 64, 128, 64, 3, 3},
    {64, 64, 128, 256, 128, 3, 3}, {32, 32, 256, 512, 256, 3, 3}, {16, 16, 512, 512, 512, 3, 3},
    {128, 128, 64, 128, 32, 3, 3}, {256, 256, 3, 64, 1, 3, 5},    {128, 128, 64, 128, 1, 3, 5},
    {256, 256, 3, 64, 1, 7, 3},    {256, 256, 3, 64, 1, 7, 5},    {256, 256, 3, 64, 1, 11, 3},
};

/// "(H,W,C,Co,blk,k,S)" of a row.
inline std::string shape_text(const layer_shape& s) {
  std::string t = "(";
  for (const int v : {s.H, s.W, s.C, s.Cout, s.blocks, s.k, s.S}) t += std::to_string(v) + ",";
  t.back() = ')';
  return t;
}

inline void set_blas_threads(int threads) { openblas_set_num_threads(threads); }

/// C (F x F) = X^T X of a row-major n x F matrix by ssyrk (upper triangle).
inline void blas_syrk(const float* X, long n, long F, float* C) {
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(F), int(n), 1.0f, X, int(F), 0.0f, C, int(F));
}
/// C (F x F) = X^T X by sgemm.
inline void blas_gemm_xtx(const float* X, long n, long F, float* C) {
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(F), int(F), int(n), 1.0f, X, int(F), X, int(F), 0.0f, C, int(F));
}
/// C = A B, all F x F.
inline void blas_gemm(const float* A, const float* B, long F, float* C) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(F), int(F), int(F), 1.0f, A, int(F), B, int(F), 0.0f, C, int(F));
}

/// The machine's sgemm rate: OpenBLAS 1152^3, median of `rounds`, in GFLOP/s.
inline double sgemm_peak_gflops(int threads, int rounds = 5) {
  set_blas_threads(threads);
  const long n = 1152;
  std::vector<float> A(n * n, 1.0f), B(n * n, 0.5f), C(n * n);
  const double t = interleaved_medians({[&] { blas_gemm(A.data(), B.data(), n, C.data()); }}, rounds)[0];
  return 2.0 * double(n) * n * n / t / 1e9;
}

/// Memory read bandwidth (GB/s): a threaded sum over 512 MiB, median of `rounds`.
inline double read_bandwidth_gbps(int threads, int rounds = 5) {
  const long n = 128L << 20;  // floats
  std::vector<float> a(n, 1.0f);
  volatile float sink = 0;
  const double t = interleaved_medians({[&] {
                                          float total = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) reduction(+ : total) schedule(static)
#endif
                                          for (long i = 0; i < n; i += 64) {  // 8 independent 8-wide sums
                                            float part[8] = {};
                                            for (int j = 0; j < 64; ++j) part[j % 8] += a[i + j];
                                            for (float p : part) total += p;
                                          }
                                          sink = total;
                                        }},
                                       rounds)[0];
  (void)sink;
  (void)threads;
  return double(n) * sizeof(float) / t / 1e9;
}

inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

/// Arguments shared by the benchmarks: --threads N --batch N --reps N.
struct options {
  int threads = 2, batch = 16, reps = 5, memory_batch = 0;
  std::string only;
  static options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string a = argv[i];
      if (a == "--threads") o.threads = std::atoi(argv[i + 1]);
      else if (a == "--batch") o.batch = std::atoi(argv[i + 1]);
      else if (a == "--reps") o.reps = std::max(1, std::atoi(argv[i + 1]));
      else if (a == "--memory-batch") o.memory_batch = std::atoi(argv[i + 1]);
      else if (a == "--only") o.only = argv[i + 1];
      else {
        std::fprintf(stderr, "unknown argument %s (--threads N --batch N --reps N --memory-batch N --only ROW)\n", a.c_str());
        std::exit(2);
      }
    }
    return o;
  }
};

/// The command line of bench/torch_reference.py for a row (its directory from NETDECONV_BENCH_DIR,
/// else bench/), same threads, batch and rounds; `flags` are appended (e.g. " --backward").
inline std::string torch_reference_command(const layer_shape& s, const options& o, const char* flags = "") {
  const char* dir = std::getenv("NETDECONV_BENCH_DIR");
  return "OPENBLAS_NUM_THREADS=" + std::to_string(o.threads) + " OMP_NUM_THREADS=" + std::to_string(o.threads) +
         " /usr/bin/python3 " + (dir ? std::string(dir) : std::string("bench")) + "/torch_reference.py --shape " +
         std::to_string(s.H) + ' ' + std::to_string(s.W) + ' ' + std::to_string(s.C) + ' ' + std::to_string(s.Cout) + ' ' +
         std::to_string(s.blocks) + ' ' + std::to_string(s.k) + ' ' + std::to_string(s.S) + " --batch " +
         std::to_string(o.batch) + " --threads " + std::to_string(o.threads) + " --reps " + std::to_string(o.reps) + flags;
}

/// Runs a bench/torch_reference.py command line and returns the time of its `TORCH_JSON` line
/// ("stats_s", a median), or NaN (the reason on stderr); blas is set to the BLAS library it reports.
inline double run_torch_reference(const std::string& command, std::string& blas) {
  FILE* p = popen(command.c_str(), "r");
  if (!p) return NAN;
  char buf[4096];
  double t = NAN;
  while (std::fgets(buf, sizeof buf, p)) {
    const std::string line(buf);
    const auto at = line.find("\"stats_s\": ");
    if (line.rfind("TORCH_JSON ", 0) == 0 && at != std::string::npos) {
      t = std::atof(line.c_str() + at + 11);
      const auto b = line.find("\"blas\": \"");
      if (b != std::string::npos) blas = line.substr(b + 9, line.find('"', b + 9) - b - 9);
    }
  }
  if (pclose(p) != 0) std::fprintf(stderr, "torch reference failed for this row\n");
  return t;
}


}  // namespace bench
