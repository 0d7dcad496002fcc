// Eight-lane float vectors through GCC/Clang vector extensions: AVX2 registers when the
// translation unit is built with -mavx2, pairs of SSE/NEON registers otherwise.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__FMA__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

// Internal linkage on purpose: this header is compiled once per instruction set (encode.cpp,
// decode.cpp built with and without -mavx2), and shared linkage would let the linker keep one
// set's copy of these inline functions for both.
namespace dk {
namespace {

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

// c - a * b, fused where the CPU can (encode only, like vfma).
inline v8f vfnma(v8f a, v8f b, v8f c) {
#if defined(__FMA__)
  return (v8f)_mm256_fnmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return c - a * b;
#endif
}

#if defined(__AVX512F__)
// Sixteen-lane vectors for the AVX-512 set (products, the fast DCT, the selection scan).
typedef float v16f __attribute__((vector_size(64)));

inline v16f vload16(const float* p) {
  v16f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void vstore16(float* p, v16f v) { std::memcpy(p, &v, sizeof(v)); }
inline v16f vfma(v16f a, v16f b, v16f c) { return (v16f)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
inline v16f vfnma(v16f a, v16f b, v16f c) { return (v16f)_mm512_fnmadd_ps((__m512)a, (__m512)b, (__m512)c); }
#endif

typedef int32_t v8i __attribute__((vector_size(32)));

// (e0 o0 e1 o1 e2 o2 e3 o3) and (e4 o4 ... e7 o7): merges even- and odd-indexed halves.
inline v8f interleave_lo(v8f e, v8f o) {
#if defined(__clang__)
  return __builtin_shufflevector(e, o, 0, 8, 1, 9, 2, 10, 3, 11);
#else
  return __builtin_shuffle(e, o, v8i{0, 8, 1, 9, 2, 10, 3, 11});
#endif
}
inline v8f interleave_hi(v8f e, v8f o) {
#if defined(__clang__)
  return __builtin_shufflevector(e, o, 4, 12, 5, 13, 6, 14, 7, 15);
#else
  return __builtin_shuffle(e, o, v8i{4, 12, 5, 13, 6, 14, 7, 15});
#endif
}

inline v8f reverse_lanes(v8f v) {
#if defined(__clang__)
  return __builtin_shufflevector(v, v, 7, 6, 5, 4, 3, 2, 1, 0);
#else
  return __builtin_shuffle(v, v8i{7, 6, 5, 4, 3, 2, 1, 0});
#endif
}

}  // namespace
}  // namespace dk
