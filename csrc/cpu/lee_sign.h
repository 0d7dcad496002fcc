// The decode's certified sign for chunk sides 16, 32 and 64: sign(y) of the canonical second
// stage (SPEC 4.3) from Lee's fast inverse DCT, bit-exact, refolding exactly only the outputs
// it cannot certify.
//
// Why it is exact. Let e[i] = sum_u C_m[u][i] T[u][j] in exact arithmetic on the float32 T of
// the first stage. The canonical fold y is within gamma_cm * max|C_m| * S of e, S = sum_u
// |T[u][j]| (Higham 3.1; the model holds as SPEC 4.3 states). The unfused LeeInverse (every
// multiply and add rounded on its own), run on T with row 0 times float(sqrt(1/2)), is a fixed
// program of roundings and float32 constants. In exact arithmetic it computes M[i][u] T[u];
// rounded, it lands within gamma_d * sum_u P[i][u] |T[u]| of that, where P sums |product of
// constants| over the program's paths from u to i and d is the most roundings on one path
// (Higham 3.5). a1 M[i][u] (a1 = sqrt(2 / cm)) differs from C_m[u][i] by at most off_i. So
// where |y_lee[i]| > (a1 gamma_d max_u P[i][u] + off_i + gamma_cm max|C_m|) / a1 * S, y and
// y_lee are nonzero and of one sign. lee_sign_bound.cpp computes that factor per output row
// (P, d, off from the program itself), times max|C_n| and twice over, as sign_fold.h does for
// the bound S <= (1 + gamma_cn) max|C_n| sum|A|. The 2^-100 added per chunk covers products
// that fall into the subnormal range (each off by at most 2^-150 absolute).
//
// Cost: ~700 vector operations per 8-lane strip against ~1400 multiplies and as many adds of
// the even/odd recursion (sign_fold.h), which remains for the other even sides. The looser
// bound sends more outputs to the exact refold (estimated from float64 sums on 300 random
// chunks of 8 peers x 32 picks: 0.8% of the vectors, against 0.2%).
// No FMA here (tests/test_cpu_nofma.py checks decode.cpp's objects).
#pragma once

#include "basis.h"
#include "exact_fold.h"
#include "lee_dct.h"
#include "sign_fold.h"

namespace dk {
namespace {

// sign(y) of output row i at columns j0.. by the canonical fold over the rows with a term.
template <class V>
__attribute__((noinline)) V refold_sign(const ChunkBases& b, const float* T, int ldt, const int* rows,
                                        int n_rows, int i, int j0) {
  V acc = V{};
  for (int k = 0; k < n_rows; ++k)
    acc = fold_term(acc, broadcast_load<V>(b.cm_rows.data() + rows[k] * b.ldm + i),
                    exact_load<V>(T + rows[k] * ldt + j0));
  return sign_of(acc);
}

// One strip of columns j0.. (one vector wide) of an N-row chunk; T dense (row u at u * ldt).
// put(i, signs) takes output row i's vector.
template <class V, int N, class Put>
inline void lee_sign_strip(const ChunkBases& b, const float* T, int ldt, const int* rows, int n_rows,
                           const float* limit, int j0, int cn, Put put) {
  constexpr int L = sizeof(V) / sizeof(float);
  typedef decltype(V{} <= V{}) VI;
  VI valid;  // lanes inside the chunk: padding columns (T = 0 there) need no certificate
  for (int l = 0; l < L; ++l) valid[l] = j0 + l < cn ? -1 : 0;
  const V row0 = exact_splat<V>(b.lee_row0);
  auto in = [&](int u) {
    const V t = exact_load<V>(T + u * ldt + j0);
    return u == 0 ? t * row0 : t;
  };
  auto emit = [&](int i, V y) {
    const VI unsure = (abs_of(y) <= broadcast_load<V>(limit + i)) & valid;
    if (__builtin_expect(any_lane(unsure), 0)) return put(i, refold_sign<V>(b, T, ldt, rows, n_rows, i, j0));
    put(i, unit_sign(y));
  };
  if constexpr (N == 64) {
    LeeInverse64<V, false>::run(in, lee_factors(), emit);
  } else {
    V x[N];
    for (int u = 0; u < N; ++u) x[u] = in(u);
    LeeInverse<V, N, false>::run(x, lee_factors());
    for (int i = 0; i < N; ++i) emit(i, x[i]);
  }
}

// Strips of 8 lanes go out in pairs, each output row's 64 bytes at once: with rows a power
// of two apart, the 64 half-written lines of one strip left L1 (and L2) before the next strip
// filled them, and each line was fetched twice. A strip's signs wait in `stage` for the next.
template <int N>
inline void lee_sign_strips(const ChunkBases& b, const float* T, int ldt, const int* rows, int n_rows,
                            const float* limit, int width, float* stage, const SignOut& out) {
  int j = 0;
#if defined(__AVX512F__)
  for (; j + 16 <= width; j += 16)
    lee_sign_strip<v16f, N>(b, T, ldt, rows, n_rows, limit, j, out.cn,
                            [&](int i, v16f y) { out(i, j, y, j + 16 <= out.cn); });
#endif
  for (; j + 16 <= width; j += 16) {
    lee_sign_strip<v8f, N>(b, T, ldt, rows, n_rows, limit, j, out.cn,
                           [&](int i, v8f y) { exact_store(stage + i * kLanes, y); });
    const bool whole = j + 16 <= out.cn;
    lee_sign_strip<v8f, N>(b, T, ldt, rows, n_rows, limit, j + 8, out.cn, [&](int i, v8f y) {
      out(i, j, exact_load<v8f>(stage + i * kLanes), whole);
      out(i, j + 8, y, whole);
    });
  }
  for (; j < width; j += 8)
    lee_sign_strip<v8f, N>(b, T, ldt, rows, n_rows, limit, j, out.cn,
                           [&](int i, v8f y) { out(i, j, y, j + 8 <= out.cn); });
}

// The certified sign of a whole chunk with b.lee_sign_bound set: T holds every row (those
// without a term zeroed), ldt apart; rows/n_rows are the rows with a term, ascending; a_norm
// is sum |A| over the first stage's terms. Over `width` columns (a multiple of 8), the signs
// (+-1 or 0) go to out.
inline void lee_certified_sign(const ChunkBases& b, const float* T, int ldt, const int* rows, int n_rows,
                               float a_norm, int width, SignWork& w, const SignOut& out) {
  float* limit = w.limit.data();
  for (int i = 0; i < b.cm; ++i) limit[i] = a_norm * b.lee_sign_bound[i] + 0x1p-100f;
  float* stage = w.f.data();  // cm x 8 floats of the F workspace, which this path does not use
  switch (b.cm) {
    case 16: lee_sign_strips<16>(b, T, ldt, rows, n_rows, limit, width, stage, out); break;
    case 32: lee_sign_strips<32>(b, T, ldt, rows, n_rows, limit, width, stage, out); break;
    default: lee_sign_strips<64>(b, T, ldt, rows, n_rows, limit, width, stage, out); break;
  }
}

}  // namespace
}  // namespace dk
