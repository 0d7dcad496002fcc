// Eight-lane float vectors through GCC/Clang vector extensions: AVX2 registers when the
// translation unit is built with -mavx2, pairs of SSE/NEON registers otherwise.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__FMA__)
#include <immintrin.h>
#endif

namespace dk {

typedef float v8f __attribute__((vector_size(32)));
constexpr int kLanes = 8;

// Unaligned moves (memcpy compiles to one vmovups): basis rows live in std::vector storage.
inline v8f vload(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void vstore(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }
inline v8f vsplat(float x) { return v8f{x, x, x, x, x, x, x, x}; }
inline v8f vzero() { return v8f{0, 0, 0, 0, 0, 0, 0, 0}; }

// Encode side only: a fused multiply-add where the CPU has one (SPEC 2 allows any rounding
// there). Decode never calls this; it writes the multiply and the add as separate operations,
// and the build uses -ffp-contract=off so the compiler cannot fuse them either.
inline v8f vfma(v8f a, v8f b, v8f c) {
#if defined(__FMA__)
  return (v8f)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

inline int round_up_lanes(int n) { return (n + kLanes - 1) / kLanes * kLanes; }

}  // namespace dk
