// Fast DCT for power-of-two chunk sides (the encoder; its unfused inverse also certifies the
// decode's signs): Lee's recursion (B. G. Lee, "A new algorithm to compute the discrete cosine
// transform", 1984), run on whole row vectors.
//
// An N-point DCT-II splits into two N/2-point ones: g[i] = x[i] + x[N-1-i] gives the even
// outputs, h[i] = (x[i] - x[N-1-i]) / (2 cos(pi (2i+1) / 2N)) gives the odd ones as
// X[2k+1] = H[k] + H[k+1]. A 64-point transform costs ~700 vector operations instead of the
// 2048 multiply-adds of the even/odd-split product. The inverse (DCT-III) runs the same graph
// backwards. Each "element" here is a vector of lanes from one row of the chunk, so a strip of
// columns is transformed along the row index; the row direction goes through a transpose.
//
// Float32 error stays near 6e-7 of the norm at 64 points (SPEC 6 asks < 1e-5). Decode's
// canonical inverse is a fixed-order fold (decode.cpp); decode runs only the unfused inverse
// (kFused = false: every multiply and add rounded on its own), to certify signs (lee_sign.h).
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

// The 64-point forward transform as LeeForward<V, 64> computes it, operation for operation
// (the same bits), in three passes whose live values fit in registers. The recursion's first
// three levels split 64 points into 8 subproblems of 8; element i of every subproblem comes
// from the 8 inputs {i, 15-i, 16+i, 31-i, 32+i, 47-i, 48+i, 63-i} alone (pass 1), each
// subproblem is an 8-point transform (pass 2), and outputs 8a..8a+7 need only elements a and
// a+1 of the subproblems (pass 3: the three recombinations). Written as the plain recursion,
// 64 vectors spill at every level: one 8-lane strip with its loads and stores took 178-192 ns,
// this 107-116 ns in two runs of three and 155 ns in the third (Zen 3, one thread, L1-resident). The plain recursion stays the reference:
// tests/cpp/lee64_check.cpp compares the two bit for bit.
template <class V>
struct LeeForward64 {
  // S[8 s + i]: element i of subproblem s, whose bits (4, 2, 1) say which half it took at
  // levels A, B and C (1: the odd, h, half).
  // in(i) yields input i; emit(u, X[u]) takes each output once, in no particular order.
  template <class In, class Emit>
  static inline __attribute__((always_inline)) void run(In in, const float* f, Emit emit) {
    V S[64];
    for (int i = 0; i < 8; ++i) split_octet(in, S, f, i);
    for (int s = 0; s < 8; ++s) LeeForward<V, 8>::run(S + 8 * s, f);
    for (int a = 0; a < 7; ++a) join_octet<false>(S, emit, a);
    join_octet<true>(S, emit, 7);
  }

  // Levels A (pairs j, 63-j), B (j, 31-j) and C (j, 15-j) for the inputs of element i.
  template <class In>
  static inline __attribute__((always_inline)) void split_octet(In in, V* S, const float* f, int i) {
    const V x0 = in(i), x1 = in(15 - i), x2 = in(16 + i), x3 = in(31 - i);
    const V x4 = in(32 + i), x5 = in(47 - i), x6 = in(48 + i), x7 = in(63 - i);
    split_bc(x0 + x7, x3 + x4, x1 + x6, x2 + x5, S, f, i);
    split_bc((x0 - x7) * f[32 + i], (x3 - x4) * f[63 - i], (x1 - x6) * f[47 - i], (x2 - x5) * f[48 + i],
             S + 32, f, i);
  }
  // One 32-point half at indices i, 31-i, 15-i, 16+i: levels B and C.
  static inline __attribute__((always_inline)) void split_bc(V y_i, V y_31, V y_15, V y_16, V* S,
                                                             const float* f, int i) {
    const V yg_i = y_i + y_31, yh_i = (y_i - y_31) * f[16 + i];
    const V yg_15 = y_15 + y_16, yh_15 = (y_15 - y_16) * f[31 - i];
    S[i] = yg_i + yg_15;
    S[8 + i] = (yg_i - yg_15) * f[8 + i];
    S[16 + i] = yh_i + yh_15;
    S[24 + i] = (yh_i - yh_15) * f[8 + i];
  }

  // Outputs 8a..8a+7: recombination A of the halves' transforms at 4a..4a+4.
  template <bool kLast, class Emit>
  static inline __attribute__((always_inline)) void join_octet(const V* S, Emit emit, int a) {
    V even[5], odd[5];
    join_half<kLast>(S, a, even);
    join_half<kLast>(S + 32, a, odd);
    for (int j = 0; j < 4; ++j) {
      emit(8 * a + 2 * j, even[j]);
      emit(8 * a + 2 * j + 1, kLast && j == 3 ? odd[3] : odd[j] + odd[j + 1]);
    }
  }
  // A 32-point half's transform at 4a..4a+4 (4a..4a+3 for the last octet): recombinations C
  // (16-point values at 2a..2a+2) and B.
  template <bool kLast>
  static inline __attribute__((always_inline)) void join_half(const V* S, int a, V* y) {
    const V g0 = S[a], g1 = kLast ? S[8 + a] : S[8 + a] + S[8 + a + 1];
    const V h0 = S[16 + a], h1 = kLast ? S[24 + a] : S[24 + a] + S[24 + a + 1];
    y[0] = g0;
    y[1] = h0 + h1;
    y[2] = g1;
    if (kLast) {
      y[3] = h1;
      return;
    }
    y[3] = h1 + S[16 + a + 1];
    y[4] = S[a + 1];
  }
};

// g + h * factor and g - h * factor: fused where the encoder may (SPEC 2 allows any rounding
// there), two rounded operations each for the decode's certified sign.
template <bool kFused, class V>
inline __attribute__((always_inline)) V lee_plus(V h, V factor, V g) {
  if constexpr (kFused) return vfma(h, factor, g);
  else return g + h * factor;
}
template <bool kFused, class V>
inline __attribute__((always_inline)) V lee_minus(V h, V factor, V g) {
  if constexpr (kFused) return vfnma(h, factor, g);
  else return g - h * factor;
}

// Unnormalised DCT-III in place: x[i] <- sum_k x[k] cos(pi (2i+1) k / 2N) (the transpose).
template <class V, int N, bool kFused = true>
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
    LeeInverse<V, H, kFused>::run(g, f);
    LeeInverse<V, H, kFused>::run(h, f);
    for (int i = 0; i < H; ++i) {  // g +- h * f
      const V factor = V{} + f[H + i];
      x[i] = lee_plus<kFused>(h[i], factor, g[i]);
      x[N - 1 - i] = lee_minus<kFused>(h[i], factor, g[i]);
    }
  }
};
template <class V, bool kFused>
struct LeeInverse<V, 1, kFused> {
  static inline void run(V*, const float*) {}
};

// The 64-point inverse as LeeInverse<V, 64> computes it, operation for operation, in the
// three passes of LeeForward64 run backwards: subproblem element a comes from inputs
// 8a-7..8a+7 (pass 1, the recursion's three gathers; each iteration carries what the next
// one shares), the 8-point inverses (pass 2), and each output octet
// {i, 15-i, 16+i, 31-i, 32+i, 47-i, 48+i, 63-i} from element i of every subproblem (pass 3).
template <class V, bool kFused = true>
struct LeeInverse64 {
  // in(u) yields input u; out(i, x[i]) takes each output once, in no particular order.
  template <class In, class Out>
  static inline __attribute__((always_inline)) void run(In in, const float* f, Out out) {
    V S[64];  // S[8 s + a], s as in LeeForward64
    V carry[7];
    gather<true>(in, S, 0, carry);
    for (int a = 1; a < 8; ++a) gather<false>(in, S, a, carry);
    for (int s = 0; s < 8; ++s) LeeInverse<V, 8, kFused>::run(S + 8 * s, f);
    for (int i = 0; i < 8; ++i) scatter_octet(S, f, out, i);
  }

  // One 32-point half y at 4a..4a+3 (given) -> its two 16-point arrays' subproblem elements a.
  // c = {y[4a-2], y[4a-1], yh[2a-1]} from the previous a, replaced by this a's.
  template <bool kFirst>
  static inline __attribute__((always_inline)) void gather_half(V y0, V y1, V y2, V y3, V* c, V* S, int a) {
    // level B: yg[j] = y[2j]; yh[j] = y[2j+1] + y[2j-1] (yh[0] = y[1])
    const V yh_2a = kFirst ? y1 : y1 + c[1];
    const V yh_2a1 = y3 + y1;
    // level C on yg (z[j] = y[2j]) and on yh: zg[a] = z[2a], zh[a] = z[2a+1] + z[2a-1]
    S[a] = y0;
    S[8 + a] = kFirst ? y2 : y2 + c[0];
    S[16 + a] = yh_2a;
    S[24 + a] = kFirst ? yh_2a1 : yh_2a1 + c[2];
    c[0] = y2;
    c[1] = y3;
    c[2] = yh_2a1;
  }
  // Level A: gA[m] = x[2m], hA[m] = x[2m+1] + x[2m-1] (hA[0] = x[1]) for m = 4a..4a+3.
  // carry[6] holds x[8a-1].
  template <bool kFirst, class In>
  static inline __attribute__((always_inline)) void gather(In in, V* S, int a, V* carry) {
    V x[8];
    for (int j = 0; j < 8; ++j) x[j] = in(8 * a + j);
    const V h0 = kFirst ? x[1] : x[1] + carry[6];
    gather_half<kFirst>(x[0], x[2], x[4], x[6], carry, S, a);
    gather_half<kFirst>(h0, x[3] + x[1], x[5] + x[3], x[7] + x[5], carry + 3, S + 32, a);
    carry[6] = x[7];
  }

  // Level C, B and A butterflies of element i, as LeeInverse's g +- h * f.
  template <class Out>
  static inline __attribute__((always_inline)) void scatter_octet(const V* S, const float* f, Out out, int i) {
    V y[2][4];  // per half: y[i], y[31-i], y[15-i], y[16+i]
    for (int half = 0; half < 2; ++half) {
      const V* H = S + 32 * half;
      const V c8 = V{} + f[8 + i];
      const V yg_i = lee_plus<kFused>(H[8 + i], c8, H[i]);
      const V yg_15 = lee_minus<kFused>(H[8 + i], c8, H[i]);
      const V yh_i = lee_plus<kFused>(H[24 + i], c8, H[16 + i]);
      const V yh_15 = lee_minus<kFused>(H[24 + i], c8, H[16 + i]);
      const V c16 = V{} + f[16 + i], c31 = V{} + f[31 - i];
      y[half][0] = lee_plus<kFused>(yh_i, c16, yg_i);
      y[half][1] = lee_minus<kFused>(yh_i, c16, yg_i);
      y[half][2] = lee_plus<kFused>(yh_15, c31, yg_15);
      y[half][3] = lee_minus<kFused>(yh_15, c31, yg_15);
    }
    const int at[4] = {i, 31 - i, 15 - i, 16 + i};
    for (int j = 0; j < 4; ++j) {
      const V factor = V{} + f[32 + at[j]];
      out(at[j], lee_plus<kFused>(y[1][j], factor, y[0][j]));
      out(63 - at[j], lee_minus<kFused>(y[1][j], factor, y[0][j]));
    }
  }
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
    VI best = {};  // keys are >= 0
    auto emit = [&](int u, V v) {  // scaled, stored, and its key taken while in a register
      if (u == 0)
        v *= a0;
      else if (orthonormal)
        v *= a;
      store_vec<V>(out + u * ld_out + s, v);
      if (column_max) {
        const VI key = (VI)v & 0x7fffffff;
        best = best > key ? best : key;
      }
    };
    if constexpr (N == 64) {
      LeeForward64<V>::run([&](int i) { return row_at(i, s); }, f, emit);
    } else {
      V x[N];
      for (int i = 0; i < N; ++i) x[i] = row_at(i, s);
      LeeForward<V, N>::run(x, f);
      for (int u = 0; u < N; ++u) emit(u, x[u]);
    }
    if (column_max) std::memcpy(column_max + s, &best, sizeof(best));
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
    if constexpr (N == 64) {
      LeeInverse64<V>::run([&](int u) { return load_vec<V>(z[u] + s); }, f,
                           [&](int i, V v) { sink(i, s, v); });
    } else {
      V x[N];
      for (int u = 0; u < N; ++u) x[u] = load_vec<V>(z[u] + s);
      LeeInverse<V, N>::run(x, f);
      for (int i = 0; i < N; ++i) sink(i, s, x[i]);
    }
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
