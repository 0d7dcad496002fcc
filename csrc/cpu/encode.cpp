// Encode kernels (SPEC sections 2-3): forward DCT, per-chunk top-k and the fused DeMo step.
// Each chunk is loaded once into padded scratch, transformed with two small products against
// the canonical basis, selected, corrected and stored while it is still in L1.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "basis.h"
#include "gemm.h"
#include "geometry.h"
#include "kernels.h"
#include "lee_dct.h"
#include "parallel.h"
#include "scratch.h"
#include "select.h"
#include "transpose.h"

namespace dk {
namespace DK_ARCH {
namespace {

// The fast DCT's vector: a whole cache line where the set has 16-float registers.
#if defined(__AVX512F__)
using LeeVec = v16f;
#else
using LeeVec = v8f;
#endif

// Lee's transform covers both chunk sides (16, 32 or 64); other sides use the products.
inline bool lee_chunk(const ChunkBases& b) { return lee_side(b.cm) && lee_side(b.cn); }

struct Scratch {
  AlignedBuffer<float> block, partial, coeffs, sent_rows, weights, half_a, half_b, row_tmp;
  AlignedBuffer<float> zero_row;  // the Lee path's error feedback: rows without a pick
  std::vector<const float*> row_of;
  std::vector<uint32_t> row_max;  // each coefficient row's largest |X| bits (Lee path)
  std::vector<int> sent_row_ids;
  TopKSelector selector;
  explicit Scratch(int max_c, int k)
      : block(max_c * max_c + 8 * max_c), partial(max_c * max_c + 8 * max_c),
        coeffs(max_c * max_c + 8 * max_c), sent_rows(max_c * max_c + 8 * max_c),
        weights(max_c * max_c + 8 * max_c), half_a(max_c * max_c + 8 * max_c),
        half_b(max_c * max_c + 8 * max_c), row_tmp(max_c + 8),
        zero_row(max_c + 16), row_of(max_c), row_max(max_c + 16), sent_row_ids(2 * max_c) {
    selector.reserve(std::max(k, 1), max_c);
  }
};

// Restores natural column order after the split row transform (even v | odd v halves).
void interleave_columns(const ChunkBases& b, float* rows, float* tmp) {
  for (int u = 0; u < b.cm; ++u) {
    float* row = rows + u * b.ldn;
    for (int q = 0; q < b.hn; q += kLanes) {
      const v8f even = vload(row + q), odd = vload(row + b.hn + q);
      vstore(tmp + 2 * q, interleave_lo(even, odd));
      vstore(tmp + 2 * q + kLanes, interleave_hi(even, odd));
    }
    std::memcpy(row, tmp, sizeof(float) * b.cn);
  }
}

// coeffs = C_m @ x @ C_n^T with Lee's transform: along m on column strips, then along n on the
// transposed block, transposed back. row_at(i, s) yields x's row i at column s (a vector).
// Sides are 16, 32 or 64, so ldm == cm and ldn == cn.
// With DctScale::kRelative the result lacks the factor lee_value_factor(b) (see lee_dct.h).
// row_max, if given, gets each coefficient row's largest |X| bits (the bound of a selection
// on these coefficients).
template <class RowAt>
void forward_lee(const ChunkBases& b, RowAt row_at, Scratch& s, float* coeffs, DctScale scale,
                 uint32_t* row_max = nullptr) {
  float* transposed = s.half_a.data();  // coeffs holds the first stage: 2 blocks stay in L1
  lee_dct_strips_n<LeeVec>(b.cm, row_at, coeffs, b.cn, b.cn, scale);
  transpose_block(coeffs, b.cn, transposed, b.cm, b.cm, b.cn);
  auto transposed_row = [&](int i, int col) { return load_vec<LeeVec>(transposed + i * b.cm + col); };
  lee_dct_strips_n<LeeVec>(b.cn, transposed_row, transposed, b.cm, b.cm, scale, row_max);
  transpose_block(transposed, b.cm, coeffs, b.cn, b.cn, b.cm);
}

inline float lee_value_factor(const ChunkBases& b) { return dct_stage_factor(b.cm) * dct_stage_factor(b.cn); }

// coeffs = C_m @ block @ C_n^T over padded rows (ldn floats), split even/odd where possible.
// Returns the factor the coefficients still lack: 1, unless the fast DCT ran with kRelative.
// row_max: as for forward_lee, filled on the fast path only.
float forward(const ChunkBases& b, const float* block, Scratch& s, float* coeffs,
              DctScale scale = DctScale::kOrthonormal, uint32_t* row_max = nullptr) {
  if (lee_chunk(b)) {
    forward_lee(b, [&](int i, int col) { return load_vec<LeeVec>(block + i * b.ldn + col); }, s, coeffs, scale, row_max);
    return scale == DctScale::kRelative ? lee_value_factor(b) : 1.f;
  }
  float* partial = s.partial.data();
  float* half_a = s.half_a.data();
  float* half_b = s.half_b.data();
  if (b.split_n) {  // partial = [even v | odd v] columns
    for (int i = 0; i < b.cm; ++i) {  // row[j] +- row[cn-1-j], 8 lanes at a time (hn % 8 == 0)
      const float* row = block + i * b.ldn;
      for (int j = 0; j < b.hn; j += kLanes) {
        const v8f front = vload(row + j), back = reverse_lanes(vload(row + b.cn - kLanes - j));
        vstore(half_a + i * b.hn + j, front + back);
        vstore(half_b + i * b.hn + j, front - back);
      }
    }
    gemm_fma<false>(half_a, b.hn, b.cn_even_cols.data(), b.hn, partial, b.ldn, b.cm, b.hn, b.hn);
    gemm_fma<false>(half_b, b.hn, b.cn_odd_cols.data(), b.hn, partial + b.hn, b.ldn, b.cm, b.hn, b.hn);
  } else {
    gemm_fma<false>(block, b.ldn, b.cn_cols.data(), b.ldn, partial, b.ldn, b.cm, b.cn, b.ldn);
  }
  if (b.split_m) {  // even rows u from sums of mirrored rows, odd rows from differences
    for (int i = 0; i < b.hm; ++i)
      for (int q = 0; q < b.ldn; q += kLanes) {
        const v8f top = vload(partial + i * b.ldn + q), bottom = vload(partial + (b.cm - 1 - i) * b.ldn + q);
        vstore(half_a + i * b.ldn + q, top + bottom);
        vstore(half_b + i * b.ldn + q, top - bottom);
      }
    gemm_fma<false>(b.cm_even_rows.data(), b.hm, half_a, b.ldn, coeffs, 2 * b.ldn, b.hm, b.hm, b.ldn);
    gemm_fma<false>(b.cm_odd_rows.data(), b.hm, half_b, b.ldn, coeffs + b.ldn, 2 * b.ldn, b.hm, b.hm, b.ldn);
  } else {
    gemm_fma<false>(b.cm_rows.data(), b.ldm, partial, b.ldn, coeffs, b.ldn, b.cm, b.cm, b.ldn);
  }
  if (b.split_n) interleave_columns(b, coeffs, s.row_tmp.data());
  return 1.f;
}

// Top-k of the chunk's coefficients (ld = ldn) and their values times `factor`.
void select_chunk(const ChunkBases& b, Scratch& s, int k, float factor, int32_t* out_index,
                  float* out_value) {
  // (on the Lee path the transform filled row_max)
  s.selector.select(s.coeffs.data(), b.ldn, b.cm, b.cn, k, out_index, lee_chunk(b) ? s.row_max.data() : nullptr);
  for (int q = 0; q < k; ++q)
    out_value[q] = factor * s.coeffs[(out_index[q] / b.cn) * b.ldn + out_index[q] % b.cn];
}

// How many rows ahead the row loops prefetch a chunk's strided rows into L1 (demo_step).
constexpr int kRowsAhead = 4;

void load_block(const void* x, int32_t dtype, const ChunkSite& site, const ChunkBases& b,
                float* block) {
  if (dtype == DK_F32 && b.cn % kLanes == 0) {  // inline row copies: memcpy calls were 12% of a
    const float* const rows = static_cast<const float*>(x) + site.offset;  // one-thread profile
    for (int i = 0; i < b.cm; ++i) {
      if (i + kRowsAhead < b.cm)  // into L1 a few rows ahead (see demo_step's update)
        for (int j = 0; j < b.cn; j += 16) __builtin_prefetch(rows + (i + kRowsAhead) * site.stride + j, 0, 3);
      for (int j = 0; j < b.cn; j += kLanes) vstore(block + i * b.ldn + j, vload(rows + i * site.stride + j));
    }
    return;
  }
  for (int i = 0; i < b.cm; ++i) load_row(x, dtype, site.offset + i * site.stride, b.cn, block + i * b.ldn);
}

// For each distinct row u among the picked coefficients (ascending, so a row's coefficients are
// adjacent): rows[u][:] = sum over its picked (u, v) of value * C_n[v][:]. Returns the u's.
int gather_sent_rows(const ChunkBases& b, const int32_t* picked, const float* picked_values, int k,
                     float* rows, int* row_ids) {
  int n_rows = 0;
  for (int t = 0; t < k;) {
    const int u = picked[t] / b.cn;
    float* row = rows + u * b.ldn;
    const v8f first = vsplat(picked_values[t]);
    const float* first_basis = b.cn_rows.data() + (picked[t] % b.cn) * b.ldn;
    for (int q = 0; q < b.ldn; q += kLanes) vstore(row + q, first * vload(first_basis + q));
    for (++t; t < k && picked[t] / b.cn == u; ++t) {
      const v8f value = vsplat(picked_values[t]);
      const float* basis_row = b.cn_rows.data() + (picked[t] % b.cn) * b.ldn;
      for (int q = 0; q < b.ldn; q += kLanes) vstore(row + q, vfma(value, vload(basis_row + q), vload(row + q)));
    }
    row_ids[n_rows++] = u;
  }
  return n_rows;
}

// Error feedback on the Lee path: the picked rows of S @ C_n (gather_sent_rows), scaled by
// a_m(u), then the inverse transform along m; the rows without a pick point at one zero row.
// sink(i, col, sent) receives row i of C_m^T @ S @ C_n at column col.
template <class Sink>
void subtract_sent_lee(const ChunkBases& b, const int32_t* picked, const float* picked_values,
                       int k, Scratch& s, Sink sink) {
  float* rows = s.sent_rows.data();
  int* row_ids = s.sent_row_ids.data();
  const int n_rows = gather_sent_rows(b, picked, picked_values, k, rows, row_ids);
  const float** row_of = s.row_of.data();
  for (int u = 0; u < b.cm; ++u) row_of[u] = s.zero_row.data();
  const float a0 = static_cast<float>(std::sqrt(1.0 / b.cm)), a = static_cast<float>(std::sqrt(2.0 / b.cm));
  for (int r = 0; r < n_rows; ++r) {
    float* row = rows + row_ids[r] * b.ldn;
    const v8f scale = vsplat(row_ids[r] == 0 ? a0 : a);
    for (int q = 0; q < b.ldn; q += kLanes) vstore(row + q, scale * vload(row + q));
    row_of[row_ids[r]] = row;
  }
  lee_idct_strips_n<LeeVec>(b.cm, row_of, sink, b.cn);
}

// block -= C_m^T @ S @ C_n, S holding the k picked coefficients (error feedback, SPEC 3).
void subtract_sent(const ChunkBases& b, const int32_t* picked, const float* picked_values, int k,
                   Scratch& s, float* block) {
  float* rows = s.sent_rows.data();  // row u of S @ C_n, for the picked u only
  int* row_ids = s.sent_row_ids.data();
  const int n_rows = gather_sent_rows(b, picked, picked_values, k, rows, row_ids);
  float* negated = s.weights.data();
  if (!b.split_m) {  // block[i][:] += sum over u of (-C_m[u][i]) * rows[u][:]
    for (int i = 0; i < b.cm; ++i)
      for (int r = 0; r < n_rows; ++r) negated[i * b.ldm + row_ids[r]] = -b.cm_cols[i * b.ldm + row_ids[r]];
    gemm_fma_terms<true>(negated, b.ldm, rows, b.ldn, block, b.ldn, b.cm, row_ids, n_rows, b.ldn);
    return;
  }
  // Split: for i < cm/2, E[i] = sum over even u, O[i] = over odd u of C_m[u][i] * rows[u];
  // then block[i] -= E[i] + O[i] and block[cm-1-i] -= E[i] - O[i].
  int* even_ids = row_ids + n_rows;
  int n_even = 0, n_odd = 0;
  for (int r = 0; r < n_rows; ++r) {
    if (row_ids[r] & 1) row_ids[n_odd++] = row_ids[r];
    else even_ids[n_even++] = row_ids[r];
  }
  float* parts[2] = {s.half_a.data(), s.half_b.data()};
  gemm_fma_terms<false>(b.cm_cols.data(), b.ldm, rows, b.ldn, parts[0], b.ldn, b.hm, even_ids, n_even, b.ldn);
  gemm_fma_terms<false>(b.cm_cols.data(), b.ldm, rows, b.ldn, parts[1], b.ldn, b.hm, row_ids, n_odd, b.ldn);
  for (int i = 0; i < b.hm; ++i)
    for (int q = 0; q < b.ldn; q += kLanes) {
      const v8f even = vload(parts[0] + i * b.ldn + q), odd = vload(parts[1] + i * b.ldn + q);
      float* top = block + i * b.ldn + q;
      float* bottom = block + (b.cm - 1 - i) * b.ldn + q;
      vstore(top, vload(top) - (even + odd));
      vstore(bottom, vload(bottom) - (even - odd));
    }
}

template <class V>
inline V splat(float x) {
  V v;
  for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(float)); ++l) v[l] = x;
  return v;
}

// 1-D tensors (cm == 1) with a fast-DCT side: a chunk is one short row, and chunk c sits at
// element c * cn, so cn consecutive chunks form one contiguous cn x cn block. It runs as one
// unit (one transform pass over the block instead of cn one-row products: ~4x here).
inline bool batched_rows(const dk_geometry& g, int32_t grad_dtype) {
  return g.cm == 1 && lee_side(g.cn) && grad_dtype == DK_F32;
}

// row[:] -= sum over the k picks of value * C_n[v][:] (NV vectors; C_m = [1]), the row held in
// registers across the picks (fused, encode only).
template <int NV>
inline void subtract_picks(float* row, const int32_t* picked, const float* picked_values, int k,
                           const float* basis, int ldb) {
  v8f acc[NV];
#pragma GCC unroll 8
  for (int q = 0; q < NV; ++q) acc[q] = vload(row + q * kLanes);
  for (int t = 0; t < k; ++t) {
    const v8f value = vsplat(picked_values[t]);
    const float* b = basis + picked[t] * ldb;
#pragma GCC unroll 8
    for (int q = 0; q < NV; ++q) acc[q] = vfnma(value, vload(b + q * kLanes), acc[q]);
  }
#pragma GCC unroll 8
  for (int q = 0; q < NV; ++q) vstore(row + q * kLanes, acc[q]);
}

// The DeMo step on chunks c0 .. c0 + cn - 1 of a batched_rows tensor: block row r is chunk
// c0 + r. Forward along n through two transposes (Lee's transform runs along the row index),
// per-row top-k, and the error feedback of each row's picks (the row minus value * C_n[v] per
// pick, in registers).
void demo_step_rows(const ChunkBases& b, float* state, const float* grad, float beta, float lr,
                    int k, Scratch& s, int32_t* out_index, float* out_value) {
  const int c = b.cn;  // block side: c rows (chunks) of c elements
  float* block = s.block.data();
  float* transposed = s.half_a.data();
  float* coeffs = s.coeffs.data();
  const LeeVec beta_v = splat<LeeVec>(beta), lr_v = splat<LeeVec>(lr);
  constexpr int L = sizeof(LeeVec) / sizeof(float);
  for (int e = 0; e < c * c; e += L)
    store_vec<LeeVec>(block + e, beta_v * load_vec<LeeVec>(state + e) + lr_v * load_vec<LeeVec>(grad + e));
  transpose_block(block, c, transposed, c, c, c);  // transposed[j][r] = x_r[j]
  auto row_at = [&](int i, int col) { return load_vec<LeeVec>(transposed + i * c + col); };
  lee_dct_strips_n<LeeVec>(c, row_at, transposed, c, c, DctScale::kOrthonormal);  // [u][r]
  transpose_block(transposed, c, coeffs, c, c, c);                               // [r][u]
  for (int r = 0; r < c; ++r) {
    int32_t* picked = out_index + r * k;
    float* picked_values = out_value + r * k;
    const float* x = coeffs + r * c;
    s.selector.select(x, c, 1, c, k, picked, nullptr);
    for (int q = 0; q < k; ++q) picked_values[q] = x[picked[q]];
    float* row = block + r * c;
    const float* basis = b.cn_rows.data();  // ldn == cn for these sides
    if (c == 16) subtract_picks<2>(row, picked, picked_values, k, basis, b.ldn);
    else if (c == 32) subtract_picks<4>(row, picked, picked_values, k, basis, b.ldn);
    else subtract_picks<8>(row, picked, picked_values, k, basis, b.ldn);
  }
  std::memcpy(state, block, sizeof(float) * c * c);
}

// demo_step_rows with the momentum as coefficients: block row r is chunk c0 + r, whose state
// row is states + r * c. X = beta * S + lr * DCT(grad) per row, then the per-row top-k, and S
// keeps X with the picks zeroed.
void demo_step_coeff_rows(const ChunkBases& b, float* state, const float* grad, float beta, float lr,
                          int k, Scratch& s, int32_t* out_index, float* out_value) {
  const int c = b.cn;
  float* transposed = s.half_a.data();
  float* coeffs = s.coeffs.data();
  transpose_block(grad, c, transposed, c, c, c);  // transposed[j][r] = grad of chunk r at j
  auto row_at = [&](int i, int col) { return load_vec<LeeVec>(transposed + i * c + col); };
  lee_dct_strips_n<LeeVec>(c, row_at, transposed, c, c, DctScale::kOrthonormal);  // [u][r]
  transpose_block(transposed, c, coeffs, c, c, c);                               // [r][u]
  const v8f beta_v = vsplat(beta), lr_v = vsplat(lr);
  for (int e = 0; e < c * c; e += kLanes) {
    const v8f updated = vfma(beta_v, vload(state + e), lr_v * vload(coeffs + e));
    vstore(coeffs + e, updated);
    vstore(state + e, updated);
  }
  for (int r = 0; r < c; ++r) {
    int32_t* picked = out_index + r * k;
    const float* x = coeffs + r * c;
    s.selector.select(x, c, 1, c, k, picked, nullptr);
    for (int q = 0; q < k; ++q) {
      out_value[r * k + q] = x[picked[q]];
      state[r * c + picked[q]] = 0.0f;
    }
  }
}

// The fused steps' work units: a chunk, or (batched_rows tensors) a block of cn chunks; a
// tensor's full blocks come first, then its remaining chunks one by one.
struct StepUnits {
  std::vector<const ChunkBases*> bases;
  std::vector<int64_t> first_unit, first_out, blocks;
  std::vector<int> k_eff;
  int max_c = 1, max_k = 1;
  StepUnits(int n_tensors, const dk_geometry* geoms, const int32_t* grad_dtypes, int k)
      : bases(n_tensors), first_unit(n_tensors + 1, 0), first_out(n_tensors + 1, 0),
        blocks(n_tensors, 0), k_eff(n_tensors) {
    for (int t = 0; t < n_tensors; ++t) {
      const dk_geometry& g = geoms[t];
      bases[t] = &chunk_bases(g.cm, g.cn);
      k_eff[t] = std::min(k, g.cm * g.cn);
      if (batched_rows(g, grad_dtypes[t])) blocks[t] = n_chunks(g) / g.cn;
      first_unit[t + 1] = first_unit[t] + n_chunks(g) - blocks[t] * (g.cn - 1);
      first_out[t + 1] = first_out[t] + n_chunks(g) * k_eff[t];
      max_c = std::max({max_c, g.cm, g.cn});
      max_k = std::max(max_k, k_eff[t]);
    }
  }
  int64_t total() const { return first_unit.back(); }
  int tensor_of(int64_t unit) const {
    return static_cast<int>(std::upper_bound(first_unit.begin(), first_unit.end(), unit) - first_unit.begin()) - 1;
  }
};

// Runs body(scratch, chunk) over every chunk in parallel; returns DK_ERR_ALLOC on failure.
// This file's scratch type, through the shared driver (parallel.h).
template <typename Body>
int for_each_chunk(int64_t total, int max_c, int k, int threads, Body body) {
  return dk::for_each_chunk(total, static_cast<int64_t>(max_c) * max_c, threads, [&] { return std::unique_ptr<Scratch>(new Scratch(max_c, k)); }, body);
}

// Both fused steps' schedule: rows(s, t, c0) for each batched block of 1-D chunks (c0 its
// first chunk, cn chunks in all), chunk(s, t, c) for every other chunk, in parallel over all
// tensors' units.
template <class Rows, class Chunk>
int for_each_step_unit(const StepUnits& units, const dk_geometry* geoms, int threads, Rows rows, Chunk chunk) {
  return for_each_chunk(units.total(), units.max_c, units.max_k, threads, [&](Scratch& s, int64_t global) {
    const int t = units.tensor_of(global);
    const int64_t unit = global - units.first_unit[t];
    if (unit < units.blocks[t]) return rows(s, t, unit * geoms[t].cn);
    chunk(s, t, unit + units.blocks[t] * (geoms[t].cn - 1));
  });
}

}  // namespace

int dct(const void* x, int32_t dtype, const dk_geometry& g, float* coeffs, int threads) {
  const ChunkBases& b = chunk_bases(g.cm, g.cn);
  const int E = g.cm * g.cn;
  return for_each_chunk(n_chunks(g), std::max(g.cm, g.cn), 1, threads, [&](Scratch& s, int64_t c) {
    if (c + 1 < n_chunks(g)) prefetch_chunk(x, dtype_bytes(dtype), chunk_site(g, c + 1), g.cm, g.cn);
    load_block(x, dtype, chunk_site(g, c), b, s.block.data());
    forward(b, s.block.data(), s, s.coeffs.data());
    for (int u = 0; u < g.cm; ++u)
      std::memcpy(coeffs + c * E + u * g.cn, s.coeffs.data() + u * b.ldn, sizeof(float) * g.cn);
  });
}

int compress(const void* x, int32_t dtype, const dk_geometry& g, int k_eff, int32_t* indices,
             float* values, int threads) {
  const ChunkBases& b = chunk_bases(g.cm, g.cn);
  return for_each_chunk(n_chunks(g), std::max(g.cm, g.cn), k_eff, threads, [&](Scratch& s, int64_t c) {
    if (c + 1 < n_chunks(g)) prefetch_chunk(x, dtype_bytes(dtype), chunk_site(g, c + 1), g.cm, g.cn);
    load_block(x, dtype, chunk_site(g, c), b, s.block.data());
    const float factor = forward(b, s.block.data(), s, s.coeffs.data(), DctScale::kRelative, s.row_max.data());
    select_chunk(b, s, k_eff, factor, indices + c * k_eff, values + c * k_eff);
  });
}

int demo_step(int n_tensors, float* const* deltas, const void* const* grads,
              const int32_t* grad_dtypes, const dk_geometry* geoms, float beta, float lr, int k,
              int32_t* indices, float* values, int threads) {
  const StepUnits units(n_tensors, geoms, grad_dtypes, k);
  const auto& first_out = units.first_out;
  auto rows = [&](Scratch& s, int t, int64_t c0) {
    const int kk = units.k_eff[t], cn = geoms[t].cn;
    demo_step_rows(*units.bases[t], deltas[t] + c0 * cn, static_cast<const float*>(grads[t]) + c0 * cn, beta,
                   lr, kk, s, indices + first_out[t] + c0 * kk, values + first_out[t] + c0 * kk);
  };
  return for_each_step_unit(units, geoms, threads, rows, [&](Scratch& s, int t, int64_t c) {
    const dk_geometry& g = geoms[t];
    const ChunkBases& b = *units.bases[t];
    const int kk = units.k_eff[t];
    const ChunkSite site = chunk_site(g, c);
    float* state = deltas[t];
    float* block = s.block.data();
    const bool direct = grad_dtypes[t] == DK_F32 && g.cn % kLanes == 0;
    if (!direct) load_block(grads[t], grad_dtypes[t], site, b, s.partial.data());
    int32_t* out_index = indices + first_out[t] + c * kk;
    float* out_value = values + first_out[t] + c * kk;
    // Chunks come in runs of 16 per thread, so c + 2 is usually this thread's chunk after
    // next: its rows are fetched while this one and the next compute (2 ahead measured ~4%
    // faster than 1 here; the last chunks fetch themselves again, harmlessly).
    const ChunkSite next = chunk_site(g, std::min(c + 2, n_chunks(g) - 1));
    if (lee_chunk(b)) {
      // delta = beta * delta + lr * grad is computed once, whole rows at a time, into a
      // contiguous staging block; the transform reads that block, the error feedback
      // subtracts what was sent from it, and it is copied to the state row by row, the
      // state's only write. The state's rows sit a tensor row apart (16 KiB at n = 4096):
      // every row of a chunk maps to the same few L1 sets, so touching them in the transform's
      // column-strip order missed L1 on nearly every access (and often L2). 4096x4096 on two
      // threads here: 48-52 ms in place, 25-26 ms staged with the feedback stored to the
      // state, 23-24 ms with the row copy. Row prefetches for the chunk after next ride along
      // (its state in the staging loop, its gradient in the copy).
      float* const state_rows = state + site.offset;
      const float* const grad_rows = direct ? static_cast<const float*>(grads[t]) + site.offset : s.partial.data();
      const int64_t stride = site.stride, grad_stride = direct ? site.stride : b.ldn;
      const int grad_bytes = dtype_bytes(grad_dtypes[t]);
      const float* const next_state_rows = state + next.offset;
      const char* const next_grad_rows = static_cast<const char*>(grads[t]) + next.offset * grad_bytes;
      auto update = [=](int i, int col) {
        return beta * load_vec<LeeVec>(state_rows + i * stride + col) + lr * load_vec<LeeVec>(grad_rows + i * grad_stride + col);
      };
      float* const staged = s.block.data();
      const int ld = b.cn;
      constexpr int L = sizeof(LeeVec) / sizeof(float);
      // The chunk after next's rows, fetched toward L2, cannot all stay there: a chunk's rows of
      // state and gradient map to 16 of its sets (128 lines for 512). So each row's lines are
      // also prefetched into L1 4 rows before the update reads them. Through the
      // C ABI, 4096x4096 on two threads, 6 alternating rounds, medians of medians: 26.5 -> 23.9
      // and 28.3 -> 25.1 ms in two runs with the distance read from the environment (8 and 16
      // rows ahead: 24.6 and 24.8 in the first); 25.7 -> 25.0 ms for the final build.
      for (int i = 0; i < b.cm; ++i) {
        for (int col = 0; col < b.cn; col += 16) __builtin_prefetch(next_state_rows + i * stride + col, 0, 2);
        if (i + kRowsAhead < b.cm)
          for (int col = 0; col < b.cn; col += 16) {
            __builtin_prefetch(state_rows + (i + kRowsAhead) * stride + col, 0, 3);
            __builtin_prefetch(grad_rows + (i + kRowsAhead) * grad_stride + col, 0, 3);
          }
        for (int col = 0; col < b.cn; col += L) store_vec<LeeVec>(staged + i * ld + col, update(i, col));
      }
      auto first_stage_row = [=](int i, int col) { return load_vec<LeeVec>(staged + i * ld + col); };
      forward_lee(b, first_stage_row, s, s.coeffs.data(), DctScale::kRelative, s.row_max.data());
      select_chunk(b, s, kk, lee_value_factor(b), out_index, out_value);
      auto subtract = [=](int i, int col, LeeVec sent) {
        store_vec<LeeVec>(staged + i * ld + col, load_vec<LeeVec>(staged + i * ld + col) - sent);
      };
      subtract_sent_lee(b, out_index, out_value, kk, s, subtract);
      for (int i = 0; i < b.cm; ++i) {
        for (int col = 0; col < b.cn; col += 16) __builtin_prefetch(next_grad_rows + (i * stride + col) * grad_bytes, 0, 2);
        for (int col = 0; col < b.cn; col += L)  // inline: memcpy calls were 6% of perf samples
          store_vec<LeeVec>(state_rows + i * stride + col, load_vec<LeeVec>(staged + i * ld + col));
      }
      return;
    }
    // delta = beta * delta + lr * grad, straight from the tensors when rows are whole vectors
    const v8f beta_v = vsplat(beta), lr_v = vsplat(lr);
    for (int i = 0; i < g.cm; ++i) {
      const float* old_row = state + site.offset + i * site.stride;
      const float* grad_row = direct ? static_cast<const float*>(grads[t]) + site.offset + i * site.stride
                                     : s.partial.data() + i * b.ldn;
      float* row = block + i * b.ldn;
      int j = 0;
      if (direct)
        for (; j < g.cn; j += kLanes) vstore(row + j, beta_v * vload(old_row + j) + lr_v * vload(grad_row + j));
      for (; j < g.cn; ++j) row[j] = beta * old_row[j] + lr * grad_row[j];
    }
    forward(b, block, s, s.coeffs.data());
    select_chunk(b, s, kk, 1.f, out_index, out_value);
    subtract_sent(b, out_index, out_value, kk, s, block);
    for (int i = 0; i < g.cm; ++i) {
      float* dst = state + site.offset + i * site.stride;
      const float* src = block + i * b.ldn;
      if (direct)
        for (int j = 0; j < g.cn; j += kLanes) vstore(dst + j, vload(src + j));
      else
        std::memcpy(dst, src, sizeof(float) * g.cn);
    }
  });
}

int demo_step_coeffs(int n_tensors, float* const* states, const void* const* grads,
                     const int32_t* grad_dtypes, const dk_geometry* geoms, float beta, float lr,
                     int k, int32_t* indices, float* values, int threads) {
  // SPEC 3 with the momentum kept in the DCT domain (chunk c's coefficients at state + c * E):
  // X = beta * S + lr * DCT(grad), select on X, S = X with the picks zeroed. One forward
  // transform of the gradient per chunk, no inverse, and the state is read and written as
  // one contiguous block.
  const StepUnits units(n_tensors, geoms, grad_dtypes, k);
  const auto& first_out = units.first_out;
  auto rows = [&](Scratch& s, int t, int64_t c0) {
    const int kk = units.k_eff[t], cn = geoms[t].cn;
    demo_step_coeff_rows(*units.bases[t], states[t] + c0 * cn * geoms[t].cm,
                         static_cast<const float*>(grads[t]) + c0 * cn, beta, lr, kk, s,
                         indices + first_out[t] + c0 * kk, values + first_out[t] + c0 * kk);
  };
  return for_each_step_unit(units, geoms, threads, rows, [&](Scratch& s, int t, int64_t c) {
    const dk_geometry& g = geoms[t];
    const ChunkBases& b = *units.bases[t];
    const int kk = units.k_eff[t], E = g.cm * g.cn;
    if (c + 2 < n_chunks(g)) prefetch_chunk(grads[t], dtype_bytes(grad_dtypes[t]), chunk_site(g, c + 2), g.cm, g.cn);
    load_block(grads[t], grad_dtypes[t], chunk_site(g, c), b, s.block.data());
    // no row maxima from the transform: the bound is taken on X below
    const float scale = lr * forward(b, s.block.data(), s, s.coeffs.data(), DctScale::kRelative);
    float* const state = states[t] + c * E;
    float* const X = s.coeffs.data();
    uint32_t* const row_max = s.row_max.data();  // the selection's bound, taken in passing
    const v8f beta_v = vsplat(beta), scale_v = vsplat(scale);
    for (int u = 0; u < g.cm; ++u) {
      float* const x = X + u * b.ldn;
      float* const st = state + u * g.cn;
      v8i best = {};
      int v = 0;
      for (; v + kLanes <= g.cn; v += kLanes) {
        const v8f updated = vfma(beta_v, vload(st + v), scale_v * vload(x + v));
        vstore(x + v, updated);
        vstore(st + v, updated);
        const v8i key = (v8i)updated & 0x7fffffff;
        best = best > key ? best : key;
      }
      uint32_t top = 0;
      for (int l = 0; l < kLanes; ++l) top = std::max(top, static_cast<uint32_t>(best[l]));
      for (; v < g.cn; ++v) {
        const float updated = beta * st[v] + scale * x[v];
        x[v] = st[v] = updated;
        uint32_t key;
        std::memcpy(&key, &updated, 4);
        top = std::max(top, key & 0x7fffffffu);
      }
      row_max[u] = top;
    }
    int32_t* const out_index = indices + first_out[t] + c * kk;
    float* const out_value = values + first_out[t] + c * kk;
    s.selector.select(X, b.ldn, g.cm, g.cn, kk, out_index, row_max);
    for (int q = 0; q < kk; ++q) {
      const int e = out_index[q];
      out_value[q] = X[(e / g.cn) * b.ldn + e % g.cn];
      state[e] = 0.0f;  // what is sent leaves the momentum
    }
  });
}

}  // namespace DK_ARCH
}  // namespace dk
