// Fused encode (SPEC 2-3): dct, compress and the DeMo step in one kernel, one tile per block.
// A tile is one chunk (E > 64) or DK_TILE / E chunks of one tensor (E <= 64). The input (and
// the gradient) is read once, the DCT runs in shared memory against the canonical basis with
// fused multiply-adds (SPEC 6's fp32 bar), the top-k is exact (SPEC 3's tie rule), and the
// state is written once: delta - IDCT(selected) (a rank-k update for one chunk and k <= 64).
#pragma once

#include "common.h"

// Error feedback as a rank-k update when one chunk fills the tile and k is at most this:
// k fused multiply-adds per element instead of two dense 64-term products.
#define DK_SPARSE_K 64

struct dk_encode_shared {
  float x[DK_TILE];  // the input tile, then X = C_m x C_n^T
  float t[DK_TILE];  // x C_n^T; later the selected coefficients (zero elsewhere)
  unsigned char picked[DK_TILE];
  int hist[256];
  int scan[2 * DK_THREADS];
  int bin, above;
  int sel_u[DK_SPARSE_K], sel_v[DK_SPARSE_K];  // picked (u, v), one chunk, k <= DK_SPARSE_K
  float sel_x[DK_SPARSE_K];
};

// When DK_THREADS is a multiple of cn, every element a thread owns (el = tid + r DK_THREADS)
// sits in the same column v = tid % cn: one basis load then serves all DK_EPT of them.
DK_DEVICE void dk_first_product_columns(dk_encode_shared& sh, int count, int cn,
                                        const float* cn_basis_t) {
  const int tid = static_cast<int>(threadIdx.x), v = tid % cn;
  float acc[DK_EPT];
#pragma unroll
  for (int r = 0; r < DK_EPT; ++r) acc[r] = 0.0f;
  for (int j = 0; j < cn; ++j) {
    const float b = cn_basis_t[j * cn + v];
#pragma unroll
    for (int r = 0; r < DK_EPT; ++r) {
      const int el = tid + r * DK_THREADS;
      if (el < count) acc[r] = dk_fma(sh.x[el - v + j], b, acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < DK_EPT; ++r) {
    const int el = tid + r * DK_THREADS;
    if (el < count) sh.t[el] = acc[r];
  }
}

// Second product for a one-chunk tile in the same layout: T[i][v] is loaded once per i.
DK_DEVICE void dk_second_product_columns(dk_encode_shared& sh, int count, int cm, int cn,
                                         const float* cm_basis) {
  const int tid = static_cast<int>(threadIdx.x), v = tid % cn, u0 = tid / cn;
  const int rows_per_pass = DK_THREADS / cn;
  float acc[DK_EPT];
#pragma unroll
  for (int r = 0; r < DK_EPT; ++r) acc[r] = 0.0f;
  for (int i = 0; i < cm; ++i) {
    const float t = sh.t[i * cn + v];
#pragma unroll
    for (int r = 0; r < DK_EPT; ++r) {
      const int el = tid + r * DK_THREADS;
      if (el < count) acc[r] = dk_fma(cm_basis[(u0 + r * rows_per_pass) * cm + i], t, acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < DK_EPT; ++r) {
    const int el = tid + r * DK_THREADS;
    if (el < count) sh.x[el] = acc[r];
  }
}

// One product of a 64 x 64 chunk, register-blocked: out[p][q] = sum_s l[p][s] r[s][q] with
// each thread on a 4 x 4 block, so four l loads and four r loads serve 16 fused multiply-adds.
// l[p][s] is at l + p * l_row + s * l_col; r[s][q] at r + s * 64 + q.
DK_DEVICE void dk_product_64(const float* l, int l_row, int l_col, const float* r, float* out) {
  const int tid = static_cast<int>(threadIdx.x), p0 = (tid >> 4) * 4, q0 = (tid & 15) * 4;
  float acc[4][4];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
  for (int s = 0; s < 64; ++s) {
    float lv[4], rv[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      lv[a] = l[(p0 + a) * l_row + s * l_col];
      rv[a] = r[s * 64 + q0 + a];
    }
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b) acc[a][b] = dk_fma(lv[a], rv[b], acc[a][b]);
  }
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) out[(p0 + a) * 64 + q0 + b] = acc[a][b];
}

// x (in sh.x) -> X (in sh.x), per chunk g of the tile.
DK_DEVICE void dk_forward_dct(dk_encode_shared& sh, const dk_tile& tile, const float* cm_basis,
                              const float* cn_basis_t) {
  const int tid = static_cast<int>(threadIdx.x), E = tile.E, cm = tile.cm, cn = tile.cn;
  const int count = tile.chunks * E;
  if (cm == 64 && cn == 64) {  // one chunk per tile
    dk_product_64(sh.x, 64, 1, cn_basis_t, sh.t);  // T[i][v] = sum_j x[i][j] C_n^T[j][v]
    __syncthreads();
    dk_product_64(cm_basis, 64, 1, sh.t, sh.x);  // X[u][v] = sum_i C_m[u][i] T[i][v]
    __syncthreads();
    return;
  }
  const bool columns = DK_THREADS % cn == 0;
  if (columns) {
    dk_first_product_columns(sh, count, cn, cn_basis_t);
  } else {
    for (int el = tid; el < count; el += DK_THREADS) {  // T[i][v] = sum_j x[i][j] C_n[v][j]
      const int v = el - static_cast<int>(dk_quot(el, tile.by_cn)) * cn;
      const float* x_row = sh.x + (el - v);
      float acc = 0.0f;
      for (int j = 0; j < cn; ++j) acc = dk_fma(x_row[j], cn_basis_t[j * cn + v], acc);
      sh.t[el] = acc;
    }
  }
  __syncthreads();
  if (columns && tile.chunks == 1) {
    dk_second_product_columns(sh, count, cm, cn, cm_basis);
  } else {
    for (int el = tid; el < count; el += DK_THREADS) {  // X[u][v] = sum_i C_m[u][i] T[i][v]
      const dk_place at = dk_locate(tile, el);  // (i, j) here is the frequency (u, v)
      const float* t_col = sh.t + at.g * E + at.j;
      const float* c_row = cm_basis + at.i * cm;
      float acc = 0.0f;
      for (int i = 0; i < cm; ++i) acc = dk_fma(c_row[i], t_col[i * cn], acc);
      sh.x[el] = acc;
    }
  }
  __syncthreads();
}


// E <= 64: each coefficient's rank in its chunk by brute force under SPEC 3's total order
// (larger |X| first, then the smaller index); the k of rank < k are picked, and written in
// ascending index order (slot = picked coefficients before it).
DK_DEVICE void dk_select_small(dk_encode_shared& sh, const dk_tile& tile, int k, int32_t* idx,
                               float* val) {
  const int tid = static_cast<int>(threadIdx.x), E = tile.E, count = tile.chunks * E;
  for (int el = tid; el < count; el += DK_THREADS) {
    const int w = el - static_cast<int>(dk_quot(el, tile.by_E)) * E;
    const float* chunk = sh.x + (el - w);
    const uint32_t mine = dk_magnitude_bits(sh.x[el]);
    int rank = 0;
    for (int o = 0; o < E; ++o) {
      const uint32_t other = dk_magnitude_bits(chunk[o]);
      rank += (other > mine) || (other == mine && o < w);
    }
    sh.picked[el] = rank < k;
  }
  __syncthreads();
  for (int el = tid; el < count; el += DK_THREADS) {
    if (!sh.picked[el]) continue;
    const dk_place place = dk_locate(tile, el);
    int slot = 0;
    for (int o = 0; o < place.w; ++o) slot += sh.picked[place.g * E + o];
    const int64_t at = (static_cast<int64_t>(tile.first_chunk) + place.g) * k + slot;
    idx[at] = place.w;
    val[at] = sh.x[el];
  }
}

// E > 64, one chunk: the k-th largest magnitude by a 4-pass radix select (8 bits per pass,
// a 256-bin histogram), then the ties at that magnitude go to the smallest indices and the
// picked coefficients are compacted in index order (two block scans).
DK_DEVICE void dk_select_large(dk_encode_shared& sh, const dk_tile& tile, int k, int32_t* idx,
                               float* val) {
  const int tid = static_cast<int>(threadIdx.x), E = tile.E;
  uint32_t prefix = 0;
  int remaining = k;  // still to take among the coefficients matching prefix
  for (int shift = 24; shift >= 0; shift -= 8) {
    const uint32_t decided = shift >= 24 ? 0u : (0xffffffffu << (shift + 8));
    sh.hist[tid] = 0;
    __syncthreads();
    for (int w = tid; w < E; w += DK_THREADS) {
      const uint32_t mag = dk_magnitude_bits(sh.x[w]);
      if ((mag & decided) == prefix) atomicAdd(&sh.hist[(mag >> shift) & 255u], 1);
    }
    __syncthreads();
    const int h = sh.hist[255 - tid];  // thread tid scans the bins from the top down
    int total;
    const int above = dk_block_exclusive_scan(h, sh.scan, &total);
    if (above < remaining && above + h >= remaining) {  // exactly one bin holds the k-th
      sh.bin = 255 - tid;
      sh.above = above;
    }
    __syncthreads();
    prefix |= static_cast<uint32_t>(sh.bin) << shift;
    remaining -= sh.above;
    __syncthreads();
  }
  const uint32_t kth = prefix;  // |X| bits of the k-th largest; take `remaining` ties
  const int per = (E + DK_THREADS - 1) / DK_THREADS;
  const int lo = tid * per < E ? tid * per : E, hi = lo + per < E ? lo + per : E;
  int ties = 0, total;
  for (int w = lo; w < hi; ++w) ties += dk_magnitude_bits(sh.x[w]) == kth;
  int tie_rank = dk_block_exclusive_scan(ties, sh.scan, &total);
  int mine = 0;
  for (int w = lo; w < hi; ++w) {
    const uint32_t mag = dk_magnitude_bits(sh.x[w]);
    const bool take = mag > kth || (mag == kth && tie_rank++ < remaining);
    sh.picked[w] = take;
    mine += take;
  }
  int slot = dk_block_exclusive_scan(mine, sh.scan, &total);
  const int64_t first = static_cast<int64_t>(tile.first_chunk) * k;
  for (int w = lo; w < hi; ++w) {
    if (!sh.picked[w]) continue;
    idx[first + slot] = w;
    val[first + slot] = sh.x[w];
    if (slot < DK_SPARSE_K) {
      const int u = static_cast<int>(dk_quot(static_cast<uint32_t>(w), tile.by_cn));
      sh.sel_u[slot] = u;
      sh.sel_v[slot] = w - u * tile.cn;
      sh.sel_x[slot] = sh.x[w];
    }
    ++slot;
  }
}

// delta -= sum over the k picked (u_t, v_t) of X_t C_m[u_t][i] C_n[v_t][j] (one chunk per tile).
DK_DEVICE void dk_feedback_sparse(dk_encode_shared& sh, const dk_tile& tile, int k,
                                  const float* cm_basis, const float* cn_basis,
                                  const float* state, float* delta) {
  const int tid = static_cast<int>(threadIdx.x), cm = tile.cm, cn = tile.cn;
  float* scaled = sh.t;  // scaled[t * 64 + i] = X_t C_m[u_t][i]
  for (int q = tid; q < k * 64; q += DK_THREADS) {
    const int t = q >> 6, i = q & 63;
    if (i < cm) scaled[q] = sh.sel_x[t] * cm_basis[sh.sel_u[t] * cm + i];
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < DK_EPT; ++r) {
    const int el = tid + r * DK_THREADS;
    if (el >= tile.E) break;
    const dk_place p = dk_locate(tile, el);
    float acc = 0.0f;
    for (int t = 0; t < k; ++t) acc = dk_fma(scaled[t * 64 + p.i], cn_basis[sh.sel_v[t] * cn + p.j], acc);
    delta[dk_chunk_offset(tile, tile.first_chunk, p.i, p.j)] = state[r] - acc;
  }
}

DK_KERNEL dk_encode(const int64_t* table, int n_tensors, int mode, float beta, float lr) {
  __shared__ dk_encode_shared sh;
  const dk_tile tile = dk_find_tile(table, n_tensors, blockIdx.x);
  const int64_t* row = tile.row;
  const int tid = static_cast<int>(threadIdx.x), E = tile.E, cm = tile.cm, cn = tile.cn;
  const int count = tile.chunks * E;
  const float* cm_basis = reinterpret_cast<const float*>(row[DK_F_CM_BASIS]);
  const float* cn_basis = reinterpret_cast<const float*>(row[DK_F_CN_BASIS]);
  const float* cn_basis_t = reinterpret_cast<const float*>(row[DK_F_CN_BASIS_T]);
  const int x_dtype = static_cast<int>(row[DK_F_DTYPES] & 255);
  const int g_dtype = static_cast<int>((row[DK_F_DTYPES] >> 8) & 255);
  const bool step = mode == DK_MODE_STEP;

  float state[DK_EPT];  // the updated delta of this thread's elements (demo step)
#pragma unroll
  for (int r = 0; r < DK_EPT; ++r) {
    const int el = tid + r * DK_THREADS;
    if (el >= count) break;
    const dk_place place = dk_locate(tile, el);
    const int64_t at = dk_chunk_offset(tile, tile.first_chunk + place.g, place.i, place.j);
    float v = dk_load(row[DK_F_X], x_dtype, at);
    if (step) v = dk_fma(lr, dk_load(row[DK_F_GRAD], g_dtype, at), beta * v);
    state[r] = v;
    sh.x[el] = v;
  }
  __syncthreads();
  dk_forward_dct(sh, tile, cm_basis, cn_basis_t);

  if (mode == DK_MODE_DCT) {
    float* coef = reinterpret_cast<float*>(row[DK_F_OUT_A]);
    const int64_t first = static_cast<int64_t>(tile.first_chunk) * E;
    for (int el = tid; el < count; el += DK_THREADS) coef[first + el] = sh.x[el];
    return;
  }
  const int k = static_cast<int>(row[DK_F_K]);
  int32_t* idx = reinterpret_cast<int32_t*>(row[DK_F_OUT_A]);
  float* val = reinterpret_cast<float*>(row[DK_F_OUT_B]);
  if (E <= 64) dk_select_small(sh, tile, k, idx, val); else dk_select_large(sh, tile, k, idx, val);
  if (!step) return;
  __syncthreads();
  float* delta = reinterpret_cast<float*>(row[DK_F_X]);
  if (E > 64 && k <= DK_SPARSE_K) {
    dk_feedback_sparse(sh, tile, k, cm_basis, cn_basis, state, delta);
    return;
  }

  // Error feedback: delta -= C_m^T S C_n with S the picked coefficients (zero elsewhere).
  for (int el = tid; el < count; el += DK_THREADS) sh.t[el] = sh.picked[el] ? sh.x[el] : 0.0f;
  __syncthreads();
  if (cm == 64 && cn == 64) {  // one chunk: both products register-blocked
    dk_product_64(sh.t, 64, 1, cn_basis, sh.x);  // R[u][j] = sum_v S[u][v] C_n[v][j]
    __syncthreads();
    dk_product_64(cm_basis, 1, 64, sh.x, sh.t);  // (C_m^T R)[i][j] = sum_u C_m[u][i] R[u][j]
    __syncthreads();
#pragma unroll
    for (int r = 0; r < DK_EPT; ++r) {
      const int el = tid + r * DK_THREADS;
      delta[dk_chunk_offset(tile, tile.first_chunk, el >> 6, el & 63)] = state[r] - sh.t[el];
    }
    return;
  }
  for (int el = tid; el < count; el += DK_THREADS) {  // R[u][j] = sum_v S[u][v] C_n[v][j]
    const int j = el - static_cast<int>(dk_quot(el, tile.by_cn)) * cn;
    const float* s_row = sh.t + (el - j);
    float acc = 0.0f;
    for (int v = 0; v < cn; ++v) acc = dk_fma(s_row[v], cn_basis[v * cn + j], acc);
    sh.x[el] = acc;
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < DK_EPT; ++r) {  // delta[i][j] -= sum_u C_m[u][i] R[u][j]
    const int el = tid + r * DK_THREADS;
    if (el >= count) break;
    const dk_place p = dk_locate(tile, el);
    const float* r_col = sh.x + p.g * E + p.j;
    float acc = 0.0f;
    for (int u = 0; u < cm; ++u) acc = dk_fma(cm_basis[u * cm + p.i], r_col[u * cn], acc);
    delta[dk_chunk_offset(tile, tile.first_chunk + p.g, p.i, p.j)] = state[r] - acc;
  }
}
