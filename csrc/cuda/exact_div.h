// Correctly rounded float32 division by a positive integer count, in integer arithmetic.
// SPEC 4.2 divides the aggregate by n[j] (or P). A float division instruction sequence is
// built from fused multiply-adds on every GPU (FFMA on NVIDIA, v_fma/v_div_fixup on AMD);
// doing it with integer long division keeps every FMA out of the decode kernels, so the
// compile gate can prove "no FMA at all" instead of "FMAs only in the division".
#pragma once

#include "compat.h"

// s / n rounded to nearest even, for n >= 1 and s zero or normal with s / n normal. SPEC 4's
// canonical values make that hold: every value is a multiple of 2^-78 (|v| >= 2^-55 or 0), so
// is every nonzero sum, and n < 2^31, so a nonzero quotient is >= 2^-109 (never subnormal).
DK_DEVICE float dk_div_count(float s, uint32_t n) {
  const uint32_t bits = dk_bits(s);
  const uint32_t sign = bits & 0x80000000u, mag = bits & 0x7fffffffu;
  if (mag == 0 || n == 1) return s;
  const int biased = static_cast<int>(mag >> 23);
  const uint64_t mant = (mag & 0x7fffffu) | 0x800000u;  // 24 bits with the implicit one
  const int n_bits = 32 - dk_clz32(n);
  const int shift = n_bits + 2;  // makes mant * 2^shift / n lie in [2^25, 2^27)
  const uint64_t num = mant << shift;
  uint64_t q = 0, r = 0;
  for (int b = 23 + shift; b >= 0; --b) {  // restoring long division, one bit per step
    r = (r << 1) | ((num >> b) & 1u);
    q <<= 1;
    if (r >= n) { r -= n; q |= 1u; }
  }
  const int drop = (64 - dk_clz64(q)) - 24;  // 2 or 3 bits below the 24 kept
  uint32_t kept = static_cast<uint32_t>(q >> drop);
  const uint32_t rest = static_cast<uint32_t>(q) & ((1u << drop) - 1u), half = 1u << (drop - 1);
  if (rest > half || (rest == half && (r != 0 || (kept & 1u)))) ++kept;
  int exponent = biased + drop - shift;
  if (kept == (1u << 24)) { kept >>= 1; ++exponent; }
  return dk_float(sign | (static_cast<uint32_t>(exponent) << 23) | (kept & 0x7fffffu));
}
