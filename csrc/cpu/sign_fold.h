// The decode's certified sign: SPEC 4.4's sign(y) of the canonical second stage (SPEC 4.3),
// bit-exact, without the exact fold for almost every output.
//
// Why it is exact. The fold y[i][j] = fold over u ascending of C_m[u][i] * T[u][j] (exact_fold.h)
// and any other evaluation y' of the same sum, e = sum_u C_m[u][i] * T[u][j] in exact
// arithmetic on the same float32 operands, are each within gamma_D * S of e, where D bounds the
// roundings on one term's path and S = sum_u |C_m[u][i] * T[u][j]| <= max|C_m| * sum_u |T[u][j]|
// (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., 3.1 and 4.2; the model holds
// because no intermediate is subnormal, SPEC 4.3, and nothing overflows, SPEC 4.1). So where
// |y'| > (gamma_fast + gamma_exact) * S, y and y' are nonzero and of one sign, and sign(y') is
// sign(y). The bound is taken per chunk from the first stage's terms: T[u][j] is within
// gamma_cn of sum_v A[u][v] * C_n[v][j], so sum_u |T[u][j]| <= (1 + gamma_cn) * max|C_n| *
// sum |A|; ChunkBases::sign_bound is twice (gamma_fast + gamma_exact) * max|C_m| * max|C_n|
// (the factor 2 covers the (1 + gamma) factors and the rounding of the bound itself). Output
// vectors with a lane at or below it (0.2% of them for 8 random peers at 4096x4096, 0.07% for
// one; and every exactly cancelling one) get the exact fold instead. Only the sign is
// certified: callers that want y itself use exact_fold.h.
//
// The fast evaluation is C_m's even/odd recursion (ChunkBases::sign_odd): with F_0 = y and F_l
// the sum over the rows u = 0 mod 2^l, F_l[i] = F_{l+1}[i] + O_l[i] and F_l[n-1-i] =
// F_{l+1}[i] - O_l[i] (n = cm >> l), O_l a dense product over level l's odd rows. Every product
// is a canonical basis entry times a T entry, as in the exact fold. For cm = 64 that is 23 adds
// per output instead of 64 (the adds bound the exact fold: Zen 3 issues two a cycle).
// No FMA here either (tests/test_cpu_nofma.py checks decode.cpp's objects).
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "basis.h"
#include "exact_fold.h"
#include "scratch.h"

namespace dk {
namespace {

// Parts of a chunk: the levels' odd rows, then the leaf (at most log2(DK_MAX_CHUNK) + 1).
constexpr int kMaxParts = 10;

// Per-thread workspace: the chunk's layout of T (sign_layout) and one column block of the
// partial sums F (cm rows x up to 32 floats).
struct SignWork {
  std::vector<int> position;          // T row of each row u with a term, part by part
  std::vector<int> empty;             // T rows with no term, to be zeroed (n_empty of them)
  std::vector<uint8_t> is_empty;      // all 1 between chunks
  int n_empty = 0;
  int part_begin[kMaxParts] = {};     // part p's rows are T rows [part_begin[p], + part_n[p])
  int part_n[kMaxParts] = {};
  const float* part_basis[kMaxParts] = {};  // their C_m rows, part.ld floats apart
  AlignedBuffer<float> basis;         // sparse parts: their live rows' C_m rows
  AlignedBuffer<float> f;             // F of one column block
  AlignedBuffer<float> limit;         // lee_sign.h: the chunk's bound per output row
  explicit SignWork(int cm)
      : position(cm), empty(cm), is_empty(cm, 1), basis(cm * (cm + 8)), f(cm * 32), limit(cm) {}
};

template <class V>
inline V abs_of(V v) {
  typedef int32_t VI __attribute__((vector_size(sizeof(V))));
  return (V)((VI)v & 0x7fffffff);
}

// Whether any lane of the mask m is set.
template <class VI>
inline bool any_lane(VI m) {
#if defined(__AVX512F__)
  if constexpr (sizeof(VI) == 64) return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0;
#endif
#if defined(__AVX2__)
  if constexpr (sizeof(VI) == 32) return !_mm256_testz_si256((__m256i)m, (__m256i)m);
#endif
  int32_t any = 0;
  for (int l = 0; l < static_cast<int>(sizeof(VI) / 4); ++l) any |= m[l];
  return any != 0;
}

// +-1.0 with y's sign, for y known to be nonzero.
template <class V>
inline V unit_sign(V y) {
  typedef int32_t VI __attribute__((vector_size(sizeof(V))));
  return (V)(((VI)y & static_cast<int32_t>(0x80000000u)) | 0x3f800000);
}

// Where a chunk's signs go: row i, columns j.. at base + i * stride + j; lanes at or past cn
// are dropped.
struct SignOut {
  float* base;
  int64_t stride;
  int cn;
  template <class V>
  inline __attribute__((always_inline)) void operator()(int i, int j, V y, bool whole) const {
    constexpr int L = sizeof(V) / sizeof(float);
    float* dst = base + i * stride + j;
    if (whole) return exact_store(dst, y);
    float lanes[L];
    exact_store(lanes, y);
    for (int l = 0; l < L && j + l < cn; ++l) dst[l] = lanes[l];
  }
};

inline const ChunkBases::SignPart& sign_part(const ChunkBases& b, int p) {
  return p < static_cast<int>(b.sign_odd.size()) ? b.sign_odd[p] : b.sign_leaf;
}

// Lays the chunk's T rows out part by part: a part's rows then sit ldt apart, and so do their
// C_m rows. A part with most rows live keeps all of them (the empty ones listed in w.empty,
// for the caller to zero: a zero row adds nothing to the fast sums) and its own basis; a
// sparser one keeps only its live rows, their C_m rows copied to w.basis. rows: the rows with
// a term, ascending.
inline void sign_layout(const ChunkBases& b, const int* rows, int n_rows, SignWork& w) {
  const int parts = static_cast<int>(b.sign_odd.size()) + 1;
  const int* part_of = b.sign_part_of.data();
  const int* slot = b.sign_slot.data();
  int counts[kMaxParts] = {};
  for (int r = 0; r < n_rows; ++r) ++counts[part_of[rows[r]]];
  int next = 0, fill[kMaxParts];
  bool whole[kMaxParts];
  float* spare = w.basis.data();
  w.n_empty = 0;
  for (int p = 0; p < parts; ++p) {
    const ChunkBases::SignPart& part = sign_part(b, p);
    whole[p] = counts[p] * 4 >= part.n * 3;
    w.part_begin[p] = fill[p] = next;
    w.part_n[p] = whole[p] ? part.n : counts[p];
    w.part_basis[p] = part.basis.data();
    if (whole[p]) {
      for (int r = 0; r < part.n; ++r) w.empty[w.n_empty++] = next + r;  // live ones struck below
    } else {
      w.part_basis[p] = spare;
      for (int r = 0; r < n_rows; ++r)
        if (part_of[rows[r]] == p) {
          std::memcpy(spare, part.basis.data() + slot[rows[r]] * part.ld, sizeof(float) * part.ld);
          spare += part.ld;
        }
    }
    next += w.part_n[p];
  }
  for (int r = 0; r < n_rows; ++r) {  // ascending u
    const int u = rows[r], p = part_of[u];
    w.position[u] = whole[p] ? w.part_begin[p] + slot[u] : fill[p]++;
    if (whole[p]) w.is_empty[w.position[u]] = 0;
  }
  int kept = 0;  // the whole parts' empty rows
  for (int e = 0; e < w.n_empty; ++e) {
    const int at = w.empty[e];
    if (w.is_empty[at]) w.empty[kept++] = at;
    w.is_empty[at] = 1;
  }
  w.n_empty = kept;
}

// One part's rows: T rows t, t + t_step, ... and their basis rows c, c + c_step, ...
struct PartRows {
  const float* t;
  int t_step;
  const float* c;
  int c_step, n;
};

inline PartRows part_rows(const ChunkBases& b, const SignWork& w, int p, const float* T, int ldt) {
  return {T + w.part_begin[p] * ldt, ldt, w.part_basis[p], sign_part(b, p).ld, w.part_n[p]};
}

// acc[r][q] = sum over the part's rows k of c_k[i0 + r] * t_k[j0 + q * L], in any order (the
// fast evaluation, not the canonical fold). Zero rows of T add nothing and are not skipped.
template <class V, int R, int NV>
inline __attribute__((always_inline)) void dot_tile(const PartRows& p, int i0, int j0, V (&acc)[R][NV]) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int q = 0; q < NV; ++q) acc[r][q] = V{};
  const float* t_row = p.t + j0;
  const float* c_row = p.c + i0;
  for (int k = 0; k < p.n; ++k, t_row += p.t_step, c_row += p.c_step) {
    V t[NV];
    load_vectors(t_row, t);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V c = broadcast_load<V>(c_row + r);
#pragma GCC unroll 16
      for (int q = 0; q < NV; ++q) acc[r][q] = acc[r][q] + c * t[q];
    }
  }
}

// Row i of the column block's F (NV vectors).
template <class V, int NV>
inline float* f_row(SignWork& w, int i) {
  return w.f.data() + i * NV * static_cast<int>(sizeof(V) / sizeof(float));
}

// A part into F over its outputs: the leaf's sums are F; a level's combine with F_{l+1}
// (rows i < outputs) into F_l's rows i and 2 * outputs - 1 - i. Not inlined: on its own, a
// tile's accumulators get the registers (inlined, GCC kept two of them on the stack).
template <class V, int NV, int R>
__attribute__((noinline)) void part_to_f(const PartRows& p, int outputs, int j0, bool leaf, SignWork& w) {
  constexpr int L = sizeof(V) / sizeof(float);
  int i = 0;
  auto tile = [&](auto rows_per_tile) __attribute__((always_inline)) {
    constexpr int RR = decltype(rows_per_tile)::value;
    V acc[RR][NV];
    dot_tile<V, RR, NV>(p, i, j0, acc);
#pragma GCC unroll 16
    for (int r = 0; r < RR; ++r)
#pragma GCC unroll 16
      for (int q = 0; q < NV; ++q) {
        float* top = f_row<V, NV>(w, i + r) + q * L;
        if (leaf) {
          exact_store(top, acc[r][q]);
          continue;
        }
        const V even = exact_load<V>(top);
        exact_store(top, even + acc[r][q]);
        exact_store(f_row<V, NV>(w, 2 * outputs - 1 - i - r) + q * L, even - acc[r][q]);
      }
  };
  for (; i + R <= outputs; i += R) tile(std::integral_constant<int, R>{});
  for (; i < outputs; ++i) tile(std::integral_constant<int, 1>{});
}

// Level 0 (rows i and cm-1-i, from F_1 and the odd rows) straight to the output as signs. A
// tile's outputs are certified together; in a tile with a lane at or below the bound, those
// vectors are refolded exactly (SPEC 4.3) and take sign_of.
template <class V, int NV, int R>
__attribute__((noinline)) void level0_to_out(const ChunkBases& b, const float* T, int ldt, const int* rows,
                                             int n_rows, int j0, float bound, SignWork& w, SignOut out) {
  constexpr int L = sizeof(V) / sizeof(float);
  const bool whole = j0 + NV * L <= out.cn;  // every vector of the block inside the chunk
  const PartRows odd = part_rows(b, w, 0, T, ldt);
  const int cm = b.cm;
  const V limit = exact_splat<V>(bound);
  auto exact = [&](int i, int q) {  // over the rows with a term: the others change no bit
    V acc = V{};
    for (int k = 0; k < n_rows; ++k)
      acc = fold_term(acc, broadcast_load<V>(b.cm_rows.data() + rows[k] * b.ldm + i),
                      exact_load<V>(T + w.position[rows[k]] * ldt + j0 + q * L));
    return acc;
  };
  int i = 0;
  auto tile = [&](auto rows_per_tile) __attribute__((always_inline)) {
    constexpr int RR = decltype(rows_per_tile)::value;
    V acc[RR][NV], top[RR][NV], bottom[RR][NV];
    dot_tile<V, RR, NV>(odd, i, j0, acc);
    decltype(V{} <= V{}) unsure = {};  // all-ones lanes: not certified
#pragma GCC unroll 16
    for (int r = 0; r < RR; ++r)
#pragma GCC unroll 16
      for (int q = 0; q < NV; ++q) {
        const V even = exact_load<V>(f_row<V, NV>(w, i + r) + q * L);
        top[r][q] = even + acc[r][q];
        bottom[r][q] = even - acc[r][q];
        unsure |= (abs_of(top[r][q]) <= limit) | (abs_of(bottom[r][q]) <= limit);
      }
    if (__builtin_expect(!any_lane(unsure), 1)) {
#pragma GCC unroll 16
      for (int r = 0; r < RR; ++r)
#pragma GCC unroll 16
        for (int q = 0; q < NV; ++q) {
          out(i + r, j0 + q * L, unit_sign(top[r][q]), whole);
          out(cm - 1 - i - r, j0 + q * L, unit_sign(bottom[r][q]), whole);
        }
      return;
    }
    for (int r = 0; r < RR; ++r)
      for (int q = 0; q < NV; ++q) {
        const int at[2] = {i + r, cm - 1 - i - r};
        const V fast[2] = {top[r][q], bottom[r][q]};
        for (int h = 0; h < 2; ++h)
          out(at[h], j0 + q * L, any_lane(abs_of(fast[h]) <= limit) ? sign_of(exact(at[h], q)) : unit_sign(fast[h]),
              whole);
      }
  };
  for (; i + R <= b.sign_odd[0].outputs; i += R) tile(std::integral_constant<int, R>{});
  for (; i < b.sign_odd[0].outputs; ++i) tile(std::integral_constant<int, 1>{});
}

// sign(y) for columns j0.. (NV vectors) of the chunk.
template <class V, int NV, int R>
inline void certified_block(const ChunkBases& b, const float* T, int ldt, const int* rows, int n_rows,
                            int j0, float bound, SignWork& w, const SignOut& out) {
  const int levels = static_cast<int>(b.sign_odd.size());
  part_to_f<V, NV, kFoldRows>(part_rows(b, w, levels, T, ldt), b.sign_leaf.outputs, j0, true, w);
  for (int l = levels - 1; l >= 1; --l)
    part_to_f<V, NV, kFoldRows>(part_rows(b, w, l, T, ldt), b.sign_odd[l].outputs, j0, false, w);
  level0_to_out<V, NV, R>(b, T, ldt, rows, n_rows, j0, bound, w, out);
}

// The certified sign of a whole chunk: T holds the rows with a term (rows/n_rows, ascending)
// laid out by sign_layout, ldt apart; a_norm is sum |A| over the first stage's terms. Over
// `width` columns (a multiple of 8), the signs (+-1 or 0) go to out. Needs b.sign_odd non-empty.
inline void certified_sign(const ChunkBases& b, const float* T, int ldt, const int* rows, int n_rows,
                           float a_norm, int width, SignWork& w, const SignOut& out) {
  const float bound = a_norm * b.sign_bound;
  int j = 0;
#if defined(__AVX512F__)
  for (; j + 32 <= width; j += 32) certified_block<v16f, 2, 4>(b, T, ldt, rows, n_rows, j, bound, w, out);
  for (; j + 16 <= width; j += 16) certified_block<v16f, 1, 4>(b, T, ldt, rows, n_rows, j, bound, w, out);
#else
  for (; j + 16 <= width; j += 16) certified_block<v8f, 2, kFoldRows>(b, T, ldt, rows, n_rows, j, bound, w, out);
#endif
  for (; j < width; j += 8) certified_block<v8f, 1, kFoldRows>(b, T, ldt, rows, n_rows, j, bound, w, out);
}

}  // namespace
}  // namespace dk
