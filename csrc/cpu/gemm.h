// Small register-blocked products on padded chunk rows, with fused multiply-adds: encode only
// (SPEC 2 allows any rounding there). The decode's exact folds are in exact_fold.h.
//   gemm_fma:       C[r][:] (+)= sum_t A[r][t] * B[t][:]
//   gemm_fma_terms: the same over a few chosen t
#pragma once

#include <cstring>

#include "simd.h"

// Internal linkage on purpose: this header is compiled once per instruction set (encode.cpp,
// decode.cpp built with and without -mavx2), and shared linkage would let the linker keep one
// set's copy of these inline functions for both.
namespace dk {
namespace {

template <int ROWS, int NVB, bool ACCUMULATE>
inline void fma_block(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int K) {
  v8f acc[ROWS][NVB];
  for (int r = 0; r < ROWS; ++r)
    for (int q = 0; q < NVB; ++q) acc[r][q] = ACCUMULATE ? vload(C + r * ldc + q * kLanes) : vzero();
  for (int t = 0; t < K; ++t) {
    v8f b[NVB];
    for (int q = 0; q < NVB; ++q) b[q] = vload(B + t * ldb + q * kLanes);
    for (int r = 0; r < ROWS; ++r) {
      const v8f s = vsplat(A[r * lda + t]);
      for (int q = 0; q < NVB; ++q) acc[r][q] = vfma(s, b[q], acc[r][q]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int q = 0; q < NVB; ++q) vstore(C + r * ldc + q * kLanes, acc[r][q]);
}

template <int ROWS, bool ACCUMULATE>
inline void fma_rows(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int K,
                     int nvb) {
  switch (nvb) {
    case 1: fma_block<ROWS, 1, ACCUMULATE>(A, lda, B, ldb, C, ldc, K); break;
    case 2: fma_block<ROWS, 2, ACCUMULATE>(A, lda, B, ldb, C, ldc, K); break;
    case 3: fma_block<ROWS, 3, ACCUMULATE>(A, lda, B, ldb, C, ldc, K); break;
    default: fma_block<ROWS, 4, ACCUMULATE>(A, lda, B, ldb, C, ldc, K); break;
  }
}

#if defined(__AVX512F__)
// The AVX-512 kernel set multiplies on 16-float registers (simd.h), 4 rows x up to 4 vectors
// at a time (16 accumulators of the 32 registers): half the instructions of the 8-float path.

template <int ROWS, int NVB, bool ACCUMULATE>
inline void fma_block16(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int K) {
  v16f acc[ROWS][NVB];
  for (int r = 0; r < ROWS; ++r)
    for (int q = 0; q < NVB; ++q) acc[r][q] = ACCUMULATE ? vload16(C + r * ldc + q * 16) : v16f{};
  for (int t = 0; t < K; ++t) {
    v16f b[NVB];
    for (int q = 0; q < NVB; ++q) b[q] = vload16(B + t * ldb + q * 16);
    for (int r = 0; r < ROWS; ++r) {
      const v16f s = (v16f)_mm512_set1_ps(A[r * lda + t]);
      for (int q = 0; q < NVB; ++q) acc[r][q] = (v16f)_mm512_fmadd_ps((__m512)s, (__m512)b[q], (__m512)acc[r][q]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int q = 0; q < NVB; ++q) vstore16(C + r * ldc + q * 16, acc[r][q]);
}

template <int ROWS, bool ACCUMULATE>
inline void fma_rows16(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int K, int nvb) {
  switch (nvb) {
    case 1: fma_block16<ROWS, 1, ACCUMULATE>(A, lda, B, ldb, C, ldc, K); break;
    case 2: fma_block16<ROWS, 2, ACCUMULATE>(A, lda, B, ldb, C, ldc, K); break;
    case 3: fma_block16<ROWS, 3, ACCUMULATE>(A, lda, B, ldb, C, ldc, K); break;
    default: fma_block16<ROWS, 4, ACCUMULATE>(A, lda, B, ldb, C, ldc, K); break;
  }
}

template <bool ACCUMULATE>
inline void gemm_fma16(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int R,
                       int K, int width) {
  const int nv = width / 16;
  for (int q0 = 0; q0 < nv; q0 += 4) {
    const int nvb = nv - q0 < 4 ? nv - q0 : 4;
    const float* b = B + q0 * 16;
    float* c = C + q0 * 16;
    int r = 0;
    for (; r + 4 <= R; r += 4) fma_rows16<4, ACCUMULATE>(A + r * lda, lda, b, ldb, c + r * ldc, ldc, K, nvb);
    for (; r < R; ++r) fma_rows16<1, ACCUMULATE>(A + r * lda, lda, b, ldb, c + r * ldc, ldc, K, nvb);
  }
}
#endif

// R rows, K terms, `width` floats per row (a multiple of 8).
template <bool ACCUMULATE>
inline void gemm_fma(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int R,
                     int K, int width) {
#if defined(__AVX512F__)
  if (width % 16 == 0) return gemm_fma16<ACCUMULATE>(A, lda, B, ldb, C, ldc, R, K, width);
#endif
  const int nv = width / kLanes;
  for (int q0 = 0; q0 < nv; q0 += 4) {
    const int nvb = nv - q0 < 4 ? nv - q0 : 4;
    const float* b = B + q0 * kLanes;
    float* c = C + q0 * kLanes;
    int r = 0;
    for (; r + 2 <= R; r += 2)
      fma_rows<2, ACCUMULATE>(A + r * lda, lda, b, ldb, c + r * ldc, ldc, K, nvb);
    if (r < R) fma_rows<1, ACCUMULATE>(A + r * lda, lda, b, ldb, c + r * ldc, ldc, K, nvb);
  }
}

// C[r][:] (+)= sum over s of A[r][terms[s]] * B[terms[s]][:] (fused, encode only): a product
// over a few chosen rows of B, reading A's entries in place instead of gathering them.
template <int ROWS, int NVB, bool ACCUMULATE>
inline void fma_terms_block(const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                            const int* terms, int n_terms) {
  v8f acc[ROWS][NVB];
  for (int r = 0; r < ROWS; ++r)
    for (int q = 0; q < NVB; ++q) acc[r][q] = ACCUMULATE ? vload(C + r * ldc + q * kLanes) : vzero();
  for (int s = 0; s < n_terms; ++s) {
    const int t = terms[s];
    v8f b[NVB];
    for (int q = 0; q < NVB; ++q) b[q] = vload(B + t * ldb + q * kLanes);
    for (int r = 0; r < ROWS; ++r) {
      const v8f a = vsplat(A[r * lda + t]);
      for (int q = 0; q < NVB; ++q) acc[r][q] = vfma(a, b[q], acc[r][q]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int q = 0; q < NVB; ++q) vstore(C + r * ldc + q * kLanes, acc[r][q]);
}

template <int NVB, bool ACCUMULATE>
inline void fma_terms_rows(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int R,
                           const int* terms, int n_terms) {
  int r = 0;
  for (; r + 2 <= R; r += 2)
    fma_terms_block<2, NVB, ACCUMULATE>(A + r * lda, lda, B, ldb, C + r * ldc, ldc, terms, n_terms);
  if (r < R) fma_terms_block<1, NVB, ACCUMULATE>(A + r * lda, lda, B, ldb, C + r * ldc, ldc, terms, n_terms);
}

#if defined(__AVX512F__)
template <int ROWS, int NVB, bool ACCUMULATE>
inline void fma_terms_block16(const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                              const int* terms, int n_terms) {
  v16f acc[ROWS][NVB];
  for (int r = 0; r < ROWS; ++r)
    for (int q = 0; q < NVB; ++q) acc[r][q] = ACCUMULATE ? vload16(C + r * ldc + q * 16) : v16f{};
  for (int s = 0; s < n_terms; ++s) {
    const int t = terms[s];
    v16f b[NVB];
    for (int q = 0; q < NVB; ++q) b[q] = vload16(B + t * ldb + q * 16);
    for (int r = 0; r < ROWS; ++r) {
      const v16f a = (v16f)_mm512_set1_ps(A[r * lda + t]);
      for (int q = 0; q < NVB; ++q) acc[r][q] = (v16f)_mm512_fmadd_ps((__m512)a, (__m512)b[q], (__m512)acc[r][q]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int q = 0; q < NVB; ++q) vstore16(C + r * ldc + q * 16, acc[r][q]);
}

template <int NVB, bool ACCUMULATE>
inline void fma_terms_rows16(const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                             int R, const int* terms, int n_terms) {
  int r = 0;
  for (; r + 4 <= R; r += 4)
    fma_terms_block16<4, NVB, ACCUMULATE>(A + r * lda, lda, B, ldb, C + r * ldc, ldc, terms, n_terms);
  for (; r < R; ++r)
    fma_terms_block16<1, NVB, ACCUMULATE>(A + r * lda, lda, B, ldb, C + r * ldc, ldc, terms, n_terms);
}
#endif

template <bool ACCUMULATE>
inline void gemm_fma_terms(const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                           int R, const int* terms, int n_terms, int width) {
#if defined(__AVX512F__)
  if (width % 16 == 0 && width <= 64) {
    switch (width / 16) {
      case 1: return fma_terms_rows16<1, ACCUMULATE>(A, lda, B, ldb, C, ldc, R, terms, n_terms);
      case 2: return fma_terms_rows16<2, ACCUMULATE>(A, lda, B, ldb, C, ldc, R, terms, n_terms);
      case 3: return fma_terms_rows16<3, ACCUMULATE>(A, lda, B, ldb, C, ldc, R, terms, n_terms);
      default: return fma_terms_rows16<4, ACCUMULATE>(A, lda, B, ldb, C, ldc, R, terms, n_terms);
    }
  }
#endif
  const int nv = width / kLanes;
  for (int q0 = 0; q0 < nv; q0 += 4) {
    const float* b = B + q0 * kLanes;
    float* c = C + q0 * kLanes;
    switch (nv - q0 < 4 ? nv - q0 : 4) {
      case 1: fma_terms_rows<1, ACCUMULATE>(A, lda, b, ldb, c, ldc, R, terms, n_terms); break;
      case 2: fma_terms_rows<2, ACCUMULATE>(A, lda, b, ldb, c, ldc, R, terms, n_terms); break;
      case 3: fma_terms_rows<3, ACCUMULATE>(A, lda, b, ldb, c, ldc, R, terms, n_terms); break;
      default: fma_terms_rows<4, ACCUMULATE>(A, lda, b, ldb, c, ldc, R, terms, n_terms); break;
    }
  }
}

}  // namespace
}  // namespace dk
