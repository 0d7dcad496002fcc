// The decode's canonical folds (SPEC 4.3), register-blocked: each product and each sum a
// separately rounded float32 operation, terms in ascending order, accumulators from +0. Every
// lane of every vector runs the same scalar recipe, so the vector width and the blocking change
// no bit. Decode-only on purpose: nothing here may fuse (no vfma; the build has
// -ffp-contract=off, and tests/test_cpu_nofma.py disassembles decode.cpp's objects to check).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "simd.h"

// Internal linkage on purpose: compiled once per instruction set (see simd.h).
namespace dk {
namespace {

template <class V>
inline V exact_load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <class V>
inline V exact_splat(float x) {
  V v;
  for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(float)); ++l) v[l] = x;
  return v;
}

// *p in every lane, as one broadcast load. Left to itself, GCC loads a tile's 4 consecutive
// basis entries as one vector and broadcasts each with 2 shuffles, which compete with the
// multiplies and adds for the FP pipes; and the intrinsic (a read through a float pointer)
// made it store every accumulator to the stack before each broadcast. The asm reads exactly *p.
template <class V>
inline V broadcast_load(const float* p) {
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    __m512 r;
    asm("vbroadcastss %1, %0" : "=v"(r) : "m"(*p));
    return (V)r;
  }
#endif
#if defined(__AVX2__)
  if constexpr (sizeof(V) == 32) {
    __m256 r;
    asm("vbroadcastss %1, %0" : "=x"(r) : "m"(*p));
    return (V)r;
  }
#endif
  return exact_splat<V>(*p);
}

// Stores a whole vector without taking its address (keeps accumulators in registers).
template <class V>
inline void exact_store(float* p, V v) {
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) return _mm512_storeu_ps(p, (__m512)v);
#endif
#if defined(__AVX2__)
  if constexpr (sizeof(V) == 32) return _mm256_storeu_ps(p, (__m256)v);
#endif
  std::memcpy(p, &v, sizeof(V));
}

// One rounded multiply, then one rounded add (SPEC 4.3).
template <class V>
inline V fold_term(V acc, V a, V b) {
  const V product = a * b;
  return acc + product;
}

// out[:] (NV * 8 floats) = fold over the n terms, ascending, of a[t] * basis[v[t]][:]: the first
// stage, one row of T; a row has as many terms as picked coefficients.
template <int NV>
inline void fold_terms_block(const int* v, const float* a, int n, const float* basis, int ldb,
                             float* out) {
  v8f acc[NV];
#pragma GCC unroll 8
  for (int q = 0; q < NV; ++q) acc[q] = vzero();
  for (int t = 0; t < n; ++t) {
    const v8f c = broadcast_load<v8f>(a + t);
    const float* row = basis + v[t] * ldb;
#pragma GCC unroll 8
    for (int q = 0; q < NV; ++q) acc[q] = fold_term(acc[q], c, exact_load<v8f>(row + q * kLanes));
  }
#pragma GCC unroll 8
  for (int q = 0; q < NV; ++q) exact_store(out + q * kLanes, acc[q]);
}

// The same over a whole row of `width` floats (a multiple of 8), in pieces of up to 64.
inline void fold_terms(const int* v, const float* a, int n, const float* basis, int ldb, float* out,
                       int width) {
  for (int j = 0; j < width; j += 64) {
    const float* b = basis + j;
    float* o = out + j;
    switch ((width - j) / kLanes) {
      case 1: fold_terms_block<1>(v, a, n, b, ldb, o); break;
      case 2: fold_terms_block<2>(v, a, n, b, ldb, o); break;
      case 3: fold_terms_block<3>(v, a, n, b, ldb, o); break;
      case 4: fold_terms_block<4>(v, a, n, b, ldb, o); break;
      case 5: fold_terms_block<5>(v, a, n, b, ldb, o); break;
      case 6: fold_terms_block<6>(v, a, n, b, ldb, o); break;
      case 7: fold_terms_block<7>(v, a, n, b, ldb, o); break;
      default: fold_terms_block<8>(v, a, n, b, ldb, o); break;
    }
  }
}

// fold_terms_block with mirrored columns, for a C_n whose rows are even or odd about the
// middle exactly (C_n[v][w-1-j] == (-1)^v C_n[v][j], ChunkBases::cn_mirror): out holds 2 * NV
// vectors; each product A * C_n[v][j] (j < NV * 8) is added at j and, negated for odd v, at
// w-1-j, the same fold term for term (as for fold_tile_mirrored). Half the basis loads and
// multiplies: the first stage reads C_n rows from L2 here.
template <int NV>
inline void fold_terms_mirrored(const int* v, const float* a, int n, const float* basis, int ldb,
                                float* out) {
  typedef int32_t v8i_t __attribute__((vector_size(32)));
  v8f top[NV], bottom[NV];  // bottom[q] lane l: column 2 * NV * 8 - 1 - (q * 8 + l)
#pragma GCC unroll 8
  for (int q = 0; q < NV; ++q) top[q] = bottom[q] = vzero();
  for (int t = 0; t < n; ++t) {
    const v8f c = broadcast_load<v8f>(a + t);
    const float* row = basis + v[t] * ldb;
    const v8i_t flip = v8i_t{} + static_cast<int32_t>(static_cast<uint32_t>(v[t] & 1) << 31);
#pragma GCC unroll 8
    for (int q = 0; q < NV; ++q) {
      const v8f product = c * exact_load<v8f>(row + q * kLanes);
      top[q] = top[q] + product;
      bottom[q] = bottom[q] + (v8f)((v8i_t)product ^ flip);  // -product for odd v: exact
    }
  }
#pragma GCC unroll 8
  for (int q = 0; q < NV; ++q) {
    exact_store(out + q * kLanes, top[q]);
    exact_store(out + (2 * NV - 1 - q) * kLanes, reverse_lanes(bottom[q]));
  }
}

// NV consecutive vectors from p (one tile's slice of a T row).
template <class V, int NV>
inline __attribute__((always_inline)) void load_vectors(const float* p, V (&out)[NV]) {
#pragma GCC unroll 16
  for (int q = 0; q < NV; ++q) out[q] = exact_load<V>(p + q * static_cast<int>(sizeof(V) / sizeof(float)));
}

// The second stage on one tile of R output rows (i0..) x NV vectors (j0..):
// y[i][j] = fold over s = 0..n_rows-1 of basis[s][i] * T[s][j]: T holds the nonzero rows of the
// first stage, compacted in ascending u, and basis the matching rows of C_m (basis[s][i] =
// C_m[u_s][i]), so the loop only steps two pointers (an index list cost 17% here). The basis
// entries are broadcast, T rows are vector loads; R * NV accumulators stay in registers.
// sink(i, j, y) takes each finished vector.
template <class V, int R, int NV, class Sink>
inline __attribute__((always_inline)) void fold_tile(const float* basis, int ldm, int i0, const float* T, int ldt, int j0,
                      int n_rows, Sink& sink) {
  constexpr int L = sizeof(V) / sizeof(float);
  V acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int q = 0; q < NV; ++q) acc[r][q] = V{};  // +0
  for (int s = 0; s < n_rows; ++s) {
    const float* b_row = basis + s * ldm + i0;
    V t[NV];
    load_vectors(T + s * ldt + j0, t);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V c = broadcast_load<V>(b_row + r);
#pragma GCC unroll 16
      for (int q = 0; q < NV; ++q) acc[r][q] = fold_term(acc[r][q], c, t[q]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int q = 0; q < NV; ++q) sink(i0 + r, j0 + q * L, acc[r][q]);
}

// Output rows per tile: 4 x 16 floats (AVX2: 8 accumulators of the 16 ymm registers),
// 4 x 64 (AVX-512: 16 of the 32 zmm). SSE pairs have half the registers: 2 rows there.
#if defined(__AVX2__) || !(defined(__x86_64__) || defined(__i386__))
constexpr int kFoldRows = 4;
#else
constexpr int kFoldRows = 2;
#endif

template <class V, int NV, class Sink>
inline void fold_column_block(const float* basis, int ldm, int cm, const float* T, int ldt, int j0,
                              int n_rows, Sink& sink) {
  int i = 0;
  for (; i + kFoldRows <= cm; i += kFoldRows)
    fold_tile<V, kFoldRows, NV>(basis, ldm, i, T, ldt, j0, n_rows, sink);
  for (; i < cm; ++i) fold_tile<V, 1, NV>(basis, ldm, i, T, ldt, j0, n_rows, sink);
}

// The whole second stage of a cm x width chunk (basis and T compacted as for fold_tile) (width a multiple of 8; columns past the chunk's
// cn reach the sink too, which drops them). n_rows == 0 gives +0 everywhere.
template <class Sink>
inline void fold_columns(const float* basis, int ldm, int cm, const float* T, int ldt, int width,
                         int n_rows, Sink& sink) {
  int j = 0;
#if defined(__AVX512F__)
  for (; j + 64 <= width; j += 64) fold_column_block<v16f, 4>(basis, ldm, cm, T, ldt, j, n_rows, sink);
  for (; j + 16 <= width; j += 16) fold_column_block<v16f, 1>(basis, ldm, cm, T, ldt, j, n_rows, sink);
#else
  for (; j + 16 <= width; j += 16) fold_column_block<v8f, 2>(basis, ldm, cm, T, ldt, j, n_rows, sink);
#endif
  for (; j < width; j += 8) fold_column_block<v8f, 1>(basis, ldm, cm, T, ldt, j, n_rows, sink);
}

// The second stage with mirrored output rows, for a C_m whose rows are even or odd about the
// middle exactly (C_m[u][cm-1-i] == (-1)^u C_m[u][i] in float32, which ChunkBases::cm_mirror
// checks per size): rows i and cm-1-i share each product C_m[u][i] * T[u][:], added to row i
// and, for odd u, subtracted from row cm-1-i. That is the same fold, term for term: the mirror
// row's product is exactly -product (negation commutes with rounding) and acc - p is acc + (-p)
// in IEEE arithmetic (a zero basis entry gives +-0 either way: +0 - (+-0) = +0 + (-+0) = +0).
// Half the multiplies and broadcast loads: per term 2 vector loads, P broadcasts, P * NV
// multiplies, 2 * P * NV adds. The 4-row tile issued 22 operations per 8 adds, at the limit
// of Zen 3's 6-wide dispatch; this one 16 (4096 dense 64x64 chunks, one thread, in L1:
// 30 -> 23.5 ms here). T holds all cm rows in u order, zero rows included (adding a zero
// product changes no bit either), ldt floats apart.
template <class V, int P, int NV, class Sink>
inline __attribute__((always_inline)) void fold_tile_mirrored(const float* basis, int ldm, int i0, int cm,
                                                              const float* T, int ldt, int j0, Sink& sink) {
  constexpr int L = sizeof(V) / sizeof(float);
  V top[P][NV], bottom[P][NV];
#pragma GCC unroll 16
  for (int r = 0; r < P; ++r)
#pragma GCC unroll 16
    for (int q = 0; q < NV; ++q) top[r][q] = bottom[r][q] = V{};  // +0
  auto term = [&](int u, bool odd) __attribute__((always_inline)) {
    const float* b_row = basis + u * ldm + i0;
    V t[NV];
    load_vectors(T + u * ldt + j0, t);
#pragma GCC unroll 16
    for (int r = 0; r < P; ++r) {
      const V c = broadcast_load<V>(b_row + r);
#pragma GCC unroll 16
      for (int q = 0; q < NV; ++q) {
        const V product = c * t[q];
        top[r][q] = top[r][q] + product;
        bottom[r][q] = odd ? bottom[r][q] - product : bottom[r][q] + product;
      }
    }
  };
  int u = 0;
  for (; u + 1 < cm; u += 2) {  // even, then odd: the parity is known at compile time
    term(u, false);
    term(u + 1, true);
  }
  if (u < cm) term(u, false);
  // row by row, each row's vectors together (a streaming store's line fills in one go)
#pragma GCC unroll 16
  for (int r = 0; r < P; ++r)
#pragma GCC unroll 16
    for (int q = 0; q < NV; ++q) sink(i0 + r, j0 + q * L, top[r][q]);
#pragma GCC unroll 16
  for (int r = 0; r < P; ++r)
#pragma GCC unroll 16
    for (int q = 0; q < NV; ++q) sink(cm - 1 - i0 - r, j0 + q * L, bottom[r][q]);
}

// Mirrored pairs per tile: 2 (8 of the AVX2 set's 16 registers as accumulators; AVX-512 and
// NEON have more), 1 on SSE pairs.
constexpr int kMirrorPairs = kFoldRows / 2;

template <class V, int NV, class Sink>
inline void fold_column_block_mirrored(const float* basis, int ldm, int cm, const float* T, int ldt,
                                       int j0, Sink& sink) {
  const int pairs = cm / 2;
  int i = 0;
  for (; i + kMirrorPairs <= pairs; i += kMirrorPairs)
    fold_tile_mirrored<V, kMirrorPairs, NV>(basis, ldm, i, cm, T, ldt, j0, sink);
  for (; i < pairs; ++i) fold_tile_mirrored<V, 1, NV>(basis, ldm, i, cm, T, ldt, j0, sink);
  if (cm % 2) fold_tile<V, 1, NV>(basis, ldm, pairs, T, ldt, j0, cm, sink);  // the middle row
}

// fold_columns over all cm rows of T (dense, in u order) with mirrored row pairs.
template <class Sink>
inline void fold_columns_mirrored(const float* basis, int ldm, int cm, const float* T, int ldt,
                                  int width, Sink& sink) {
  int j = 0;
#if defined(__AVX512F__)
  for (; j + 64 <= width; j += 64) fold_column_block_mirrored<v16f, 4>(basis, ldm, cm, T, ldt, j, sink);
  for (; j + 16 <= width; j += 16) fold_column_block_mirrored<v16f, 1>(basis, ldm, cm, T, ldt, j, sink);
#else
  for (; j + 16 <= width; j += 16) fold_column_block_mirrored<v8f, 2>(basis, ldm, cm, T, ldt, j, sink);
#endif
  for (; j < width; j += 8) fold_column_block_mirrored<v8f, 1>(basis, ldm, cm, T, ldt, j, sink);
}

// sign(y) as +1 / -1 / 0 by bit masks (y is never NaN or -0 here: SPEC 4.3's folds start at +0).
template <class V>
inline V sign_of(V y) {
  typedef int32_t VI __attribute__((vector_size(sizeof(V))));
  const VI positive = y > V{}, negative = y < V{};
  return (V)((positive & (VI)exact_splat<V>(1.0f)) | (negative & (VI)exact_splat<V>(-1.0f)));
}

// A store that bypasses the caches where the set has one and dst is aligned to the vector
// (the output is written once and not read back by the decode; skipping the line fill saves a
// read of every output byte). Callers fence once per chunk (stream_fence).
template <class V>
inline bool stream_store(float* dst, V y) {
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    if (reinterpret_cast<uintptr_t>(dst) % 64 == 0) return _mm512_stream_ps(dst, (__m512)y), true;
    return false;
  }
#endif
#if defined(__AVX2__)
  if constexpr (sizeof(V) == 32) {
    if (reinterpret_cast<uintptr_t>(dst) % 32 == 0) return _mm256_stream_ps(dst, (__m256)y), true;
    return false;
  }
#endif
  (void)dst;
  (void)y;
  return false;
}

inline void stream_fence() {
#if defined(__AVX2__) || defined(__AVX512F__)
  _mm_sfence();
#endif
}

}  // namespace
}  // namespace dk
