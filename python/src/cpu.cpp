// SPDX-License-Identifier: MIT
// The extension module _cpu, compiled for the baseline instruction set: which of the _core_<isa>
// modules this CPU can run, by xsimd's run-time detection (CPUID and the OS's saved state).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <xsimd/xsimd.hpp>

#include <string>
#include <vector>

namespace nb = nanobind;

NB_MODULE(_cpu, m) {
  m.def(
      "supported",
      [] {
        std::vector<std::string> isas;
#if defined(__x86_64__)
        // The avx512 module is compiled with AVX-512 F, CD, DQ and BW; the avx2 module with AVX2 + FMA.
        const auto a = xsimd::available_architectures();
        if (a.avx512f && a.avx512cd && a.avx512dq && a.avx512bw) isas.emplace_back("avx512");
        if (a.fma3_avx2) isas.emplace_back("avx2");
#else
        isas.emplace_back("generic");
#endif
        return isas;
      },
      "the instruction sets of the _core_<isa> modules this CPU runs, best first");
}
