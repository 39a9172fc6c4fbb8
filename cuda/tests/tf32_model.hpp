// SPDX-License-Identifier: MIT
#pragma once
// Host model of the TF32 rounding that the tensor-core covariance applies to its factors
// (wmma::__float_to_tf32, PTX cvt.rna.tf32.f32): used by the host emulation of that kernel
// (emulator.hpp) and by the checks that predict its results (checks.hpp). Plain C++.

#include <cstdint>
#include <cstring>

namespace netdeconv::cuda::test_model {

/// x rounded to TF32 (sign, 8-bit exponent, 10 explicit mantissa bits): to nearest, ties away from
/// zero, returned as a float whose 13 low mantissa bits are 0. NaN and infinities pass unchanged;
/// finite values beyond the largest TF32 become infinities. Unit roundoff 2^-11.
inline float tf32_round(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;
  // Adding half of the dropped 2^13 to the magnitude bits carries into the kept ones exactly when
  // the dropped part is >= half of a TF32 ulp (a carry out of the mantissa bumps the exponent).
  u = (u + 0x1000u) & ~std::uint32_t(0x1fff);
  std::memcpy(&x, &u, sizeof x);
  return x;
}

}  // namespace netdeconv::cuda::test_model
