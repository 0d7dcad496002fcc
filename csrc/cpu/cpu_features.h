// What this CPU and OS support, read with cpuid and xgetbv. Not __builtin_cpu_supports: its
// data comes from the compiler's runtime library, and the one zig links (wheel builds,
// docs/wheels.md) leaves it empty, so every CPU looked like it had no AVX2.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

#include <cstdint>

namespace dk {
namespace {

struct X86Features {
  bool avx2 = false, fma = false, avx512f = false, avx512vl = false, avx512dq = false;
};

inline X86Features read_x86_features() {
  X86Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12);
  if (!osxsave || !avx) return f;
  uint32_t xcr0_lo, xcr0_hi;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));  // no -mxsave needed
  const bool ymm_state = (xcr0_lo & 0x6) == 0x6;    // the OS saves XMM and YMM registers
  const bool zmm_state = (xcr0_lo & 0xE6) == 0xE6;  // ... and opmask and ZMM registers
  if (!ymm_state || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  f.fma = fma;
  f.avx2 = b & (1u << 5);
  if (zmm_state) {
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512vl = b & (1u << 31);
  }
  return f;
}

inline const X86Features& x86_features() {
  static const X86Features f = read_x86_features();
  return f;
}

}  // namespace
}  // namespace dk
#endif
