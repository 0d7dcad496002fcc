// Fast DCT for power-of-two chunk sides (encode only): Lee's recursion (B. G. Lee, "A new
// algorithm to compute the discrete cosine transform", 1984), run on whole row vectors.
//
// An N-point DCT-II splits into two N/2-point ones: g[i] = x[i] + x[N-1-i] gives the even
// outputs, h[i] = (x[i] - x[N-1-i]) / (2 cos(pi (2i+1) / 2N)) gives the odd ones as
// X[2k+1] = H[k] + H[k+1]. A 64-point transform costs ~700 vector operations instead of the
// 2048 multiply-adds of the even/odd-split product. The inverse (DCT-III) runs the same graph
// backwards. Each "element" here is a vector of lanes from one row of the chunk, so a strip of
// columns is transformed along the row index; the row direction goes through a transpose.
//
// Float32 error stays near 6e-7 of the norm at 64 points (SPEC 6 asks < 1e-5). Decode never
// uses this: its canonical inverse is a fixed-order fold (decode.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "simd.h"

// Internal linkage on purpose: compiled once per instruction set (see simd.h).
namespace dk {
namespace {

// 1 / (2 cos(pi (2i+1) / 2N)) at [N/2 + i] for N = 2, 4, ..., 64 (one table serves every level).
struct LeeFactors {
  float at[64];
  LeeFactors() {
    at[0] = 0.f;
    for (int n = 2; n <= 64; n *= 2)
      for (int i = 0; i < n / 2; ++i)
        at[n / 2 + i] = static_cast<float>(0.5 / std::cos(3.141592653589793 * (2 * i + 1) / (2.0 * n)));
  }
};

inline const float* lee_factors() {
  static const LeeFactors table;
  return table.at;
}

// Unnormalised DCT-II in place: x[k] <- sum_i x[i] cos(pi (2i+1) k / 2N).
template <class V, int N>
struct LeeForward {
  static inline __attribute__((always_inline)) void run(V* x, const float* f) {
    constexpr int H = N / 2;
    V g[H], h[H];
    for (int i = 0; i < H; ++i) {
      g[i] = x[i] + x[N - 1 - i];
      h[i] = (x[i] - x[N - 1 - i]) * f[H + i];
    }
    LeeForward<V, H>::run(g, f);
    LeeForward<V, H>::run(h, f);
    for (int k = 0; k + 1 < H; ++k) {
      x[2 * k] = g[k];
      x[2 * k + 1] = h[k] + h[k + 1];
    }
    x[N - 2] = g[H - 1];
    x[N - 1] = h[H - 1];
  }
};
template <class V>
struct LeeForward<V, 1> {
  static inline void run(V*, const float*) {}
};

// Unnormalised DCT-III in place: x[i] <- sum_k x[k] cos(pi (2i+1) k / 2N) (the transpose).
template <class V, int N>
struct LeeInverse {
  static inline __attribute__((always_inline)) void run(V* x, const float* f) {
    constexpr int H = N / 2;
    V g[H], h[H];
    g[0] = x[0];
    h[0] = x[1];
    for (int k = 1; k < H; ++k) {
      g[k] = x[2 * k];
      h[k] = x[2 * k + 1] + x[2 * k - 1];
    }
    LeeInverse<V, H>::run(g, f);
    LeeInverse<V, H>::run(h, f);
    for (int i = 0; i < H; ++i) {  // g +- h * f, fused (encode-side rounding is free)
      const V factor = V{} + f[H + i];
      x[i] = vfma(h[i], factor, g[i]);
      x[N - 1 - i] = vfnma(h[i], factor, g[i]);
    }
  }
};
template <class V>
struct LeeInverse<V, 1> {
  static inline void run(V*, const float*) {}
};

template <class V>
inline V load_vec(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <class V>
inline void store_vec(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// How the forward stage scales its output rows: orthonormal, out row u = a(u) DCT(u) with
// a(0) = sqrt(1/N), a(u) = sqrt(2/N); or relative, out = (a(u) / a(1)) DCT(u), i.e. only
// row 0 times sqrt(1/2): a common factor a(1) per stage is left for the caller to apply once
// (to the k picked values, rather than to every coefficient).
enum class DctScale { kOrthonormal, kRelative };

// The forward stage along the row index of an N x width block, one strip of lanes at a time:
// out row u = scale(u) sum_i cos(pi (2i+1) u / 2N) row i. row_at(i, s) yields the vector of
// row i at column s (a load, or a fused elementwise step); width is a multiple of the vector's
// lanes. Output rows are ld_out floats apart. If column_max is given, column_max[j] gets the
// largest |out[u][j]| bits over u (a selection bound, taken while the rows are in registers).
template <class V, int N, class RowAt>
inline void lee_dct_strips(RowAt row_at, float* out, int ld_out, int width, DctScale scale,
                           uint32_t* column_max = nullptr) {
  typedef int32_t VI __attribute__((vector_size(sizeof(V))));
  constexpr int lanes = sizeof(V) / sizeof(float);
  const float* f = lee_factors();
  const bool orthonormal = scale == DctScale::kOrthonormal;
  const float a0 = static_cast<float>(orthonormal ? std::sqrt(1.0 / N) : std::sqrt(0.5));
  const float a = static_cast<float>(std::sqrt(2.0 / N));
  for (int s = 0; s < width; s += lanes) {
    V x[N];
    for (int i = 0; i < N; ++i) x[i] = row_at(i, s);
    LeeForward<V, N>::run(x, f);
    x[0] *= a0;
    if (orthonormal)
      for (int u = 1; u < N; ++u) x[u] *= a;
    for (int u = 0; u < N; ++u) store_vec<V>(out + u * ld_out + s, x[u]);
    if (column_max) {
      VI best = (VI)x[0] & 0x7fffffff;
      for (int u = 1; u < N; ++u) {
        const VI key = (VI)x[u] & 0x7fffffff;
        best = best > key ? best : key;
      }
      std::memcpy(column_max + s, &best, sizeof(best));
    }
  }
}

// a(1) = sqrt(2/N): the factor a kRelative stage leaves out.
inline float dct_stage_factor(int n) { return static_cast<float>(std::sqrt(2.0 / n)); }

// The inverse direction: x[i] = sum_u cos(pi (2i+1) u / 2N) z[u] along the row index, with the
// coefficient rows z[u] (pointers: rows that are zero can share one) already scaled by a(u);
// sink(i, s, x) consumes row i at column s (error feedback subtracts it from the state).
template <class V, int N, class Sink>
inline void lee_idct_strips(const float* const* z, Sink sink, int width) {
  constexpr int lanes = sizeof(V) / sizeof(float);
  const float* f = lee_factors();
  for (int s = 0; s < width; s += lanes) {
    V x[N];
    for (int u = 0; u < N; ++u) x[u] = load_vec<V>(z[u] + s);
    LeeInverse<V, N>::run(x, f);
    for (int i = 0; i < N; ++i) sink(i, s, x[i]);
  }
}

// Sides the fast path takes (both chunk sides must be one of these).
inline bool lee_side(int c) { return c == 16 || c == 32 || c == 64; }

template <class V, class RowAt>
void lee_dct_strips_n(int n, RowAt row_at, float* out, int ld_out, int width, DctScale scale,
                      uint32_t* column_max = nullptr) {
  switch (n) {
    case 16: lee_dct_strips<V, 16>(row_at, out, ld_out, width, scale, column_max); break;
    case 32: lee_dct_strips<V, 32>(row_at, out, ld_out, width, scale, column_max); break;
    default: lee_dct_strips<V, 64>(row_at, out, ld_out, width, scale, column_max); break;
  }
}

template <class V, class Sink>
void lee_idct_strips_n(int n, const float* const* z, Sink sink, int width) {
  switch (n) {
    case 16: lee_idct_strips<V, 16>(z, sink, width); break;
    case 32: lee_idct_strips<V, 32>(z, sink, width); break;
    default: lee_idct_strips<V, 64>(z, sink, width); break;
  }
}

}  // namespace
}  // namespace dk
