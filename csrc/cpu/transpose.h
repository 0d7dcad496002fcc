// Square-tile transposes of small float blocks held in L1 (the fast DCT's row direction).
#pragma once

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

// Internal linkage on purpose: compiled once per instruction set (see simd.h).
namespace dk {
namespace {

#if defined(__AVX512F__)
constexpr int kTransposeTile = 16;

// dst[j][i] = src[i][j] for a 16 x 16 tile: three rounds of in-lane shuffles, then 128-bit
// lane moves.
inline void transpose_tile(const float* src, int lds, float* dst, int ldd) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xDD);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    _mm512_storeu_ps(dst + i * ldd, _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88));
    _mm512_storeu_ps(dst + (8 + i) * ldd, _mm512_shuffle_f32x4(t[i], t[8 + i], 0xDD));
    _mm512_storeu_ps(dst + (4 + i) * ldd, _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88));
    _mm512_storeu_ps(dst + (12 + i) * ldd, _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xDD));
  }
}
#elif defined(__AVX2__)
constexpr int kTransposeTile = 8;

inline void transpose_tile(const float* src, int lds, float* dst, int ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[4 + i], 0x20));
    _mm256_storeu_ps(dst + (4 + i) * ldd, _mm256_permute2f128_ps(r[i], r[4 + i], 0x31));
  }
}
#else
constexpr int kTransposeTile = 8;

inline void transpose_tile(const float* src, int lds, float* dst, int ldd) {
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) dst[j * ldd + i] = src[i * lds + j];
}
#endif

// dst[j][i] = src[i][j] for i < rows, j < cols; rows and cols are multiples of kTransposeTile.
inline void transpose_block(const float* src, int lds, float* dst, int ldd, int rows, int cols) {
  for (int i = 0; i < rows; i += kTransposeTile)
    for (int j = 0; j < cols; j += kTransposeTile)
      transpose_tile(src + i * lds + j, lds, dst + j * ldd + i, ldd);
}

}  // namespace
}  // namespace dk
