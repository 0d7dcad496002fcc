// Where chunk c of a tensor lives, and how its elements load and store (SPEC section 1).
#pragma once

#include <cstdint>
#include <cstring>

#include "../include/distro_kernels.h"

// Internal linkage on purpose: this header is compiled once per instruction set (encode.cpp,
// decode.cpp built with and without -mavx2), and shared linkage would let the linker keep one
// set's copy of these inline functions for both.
namespace dk {
namespace {

struct ChunkSite {
  int64_t offset;  // element offset of the chunk's (0, 0) in the tensor
  int64_t stride;  // elements between chunk rows (the tensor's row length n)
};

inline int64_t n_chunks(const dk_geometry& g) { return g.batch * g.chunks_m * g.chunks_n; }

inline ChunkSite chunk_site(const dk_geometry& g, int64_t c) {
  const int64_t per_batch = g.chunks_m * g.chunks_n;
  const int64_t b = c / per_batch, r = (c / g.chunks_n) % g.chunks_m, q = c % g.chunks_n;
  const int64_t n = g.chunks_n * g.cn, m = g.chunks_m * g.cm;
  return {(b * m + r * g.cm) * n + q * g.cn, n};
}

inline bool geometry_ok(const dk_geometry* g) {
  return g && g->batch >= 1 && g->chunks_m >= 1 && g->chunks_n >= 1 && g->cm >= 1 &&
         g->cn >= 1 && g->cm <= DK_MAX_CHUNK && g->cn <= DK_MAX_CHUNK;
}

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float f16_to_float(uint16_t h) {  // exact IEEE binary16 -> binary32
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000 | (mantissa << 13);
  } else if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int shift = 0;
      while (!(mantissa & 0x400)) { mantissa <<= 1; ++shift; }
      bits = sign | ((113 - shift) << 23) | ((mantissa & 0x3ff) << 13);
    }
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Asks for a chunk's rows ahead of use: chunk rows sit a whole tensor row apart, a pattern the
// hardware prefetcher does not follow, so without this each chunk waits on ~cm * cn / 16 misses.
inline void prefetch_chunk(const void* base, int element_bytes, const ChunkSite& site, int rows,
                           int cols) {
  const char* p = static_cast<const char*>(base);
  const int64_t row_bytes = static_cast<int64_t>(cols) * element_bytes;
  for (int i = 0; i < rows; ++i) {
    const char* row = p + (site.offset + i * site.stride) * element_bytes;
    for (int64_t at = 0; at < row_bytes; at += 64) __builtin_prefetch(row + at, 0, 2);
  }
}

inline int dtype_bytes(int32_t dtype) { return dtype == DK_F32 ? 4 : 2; }

// Loads `count` elements of dtype `dtype` starting at element `at` as float32.
inline void load_row(const void* base, int32_t dtype, int64_t at, int count, float* out) {
  if (dtype == DK_F32) {
    std::memcpy(out, static_cast<const float*>(base) + at, sizeof(float) * count);
  } else if (dtype == DK_BF16) {
    const uint16_t* p = static_cast<const uint16_t*>(base) + at;
    for (int j = 0; j < count; ++j) out[j] = bf16_to_float(p[j]);
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(base) + at;
    for (int j = 0; j < count; ++j) out[j] = f16_to_float(p[j]);
  }
}

}  // namespace
}  // namespace dk
