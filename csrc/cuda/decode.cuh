// Bit-exact decode (SPEC 4): aggregation of P peers in ascending peer order, then the
// canonical inverse DCT with separately rounded products and sums (dk_mul/dk_add), ascending
// folds from +0, and the division by the count in integer arithmetic (exact_div.h). No FMA
// can appear in these kernels; the compile gate checks that in the SASS and the AMD ISA.
// Terms whose multiplicand is zero are skipped (SPEC 4.3: from +0 that changes no bit).
#pragma once

#include "common.h"
#include "exact_div.h"

struct dk_decode_shared {
  float a[DK_TILE];  // the aggregate A (or the dense coefficients of idct)
  union {
    int count[DK_TILE];  // n[j] while aggregating
    float t[DK_TILE];    // then T = A C_n
  };
  unsigned char nonzero[DK_TILE];  // row (g, u) of A has a nonzero entry
  int bad;
};

#define DK_FLUSH_BELOW_BITS 0x24000000u  // 2^-55 (SPEC 4.1, 4.2)
#define DK_VALUE_LIMIT_BITS 0x5f800000u  // 2^64 (SPEC 4.1)

// |v| < 2^-55 -> +0 (and so -0 -> +0), by the bits: no float compare needed.
DK_DEVICE float dk_flush(float v) { return dk_magnitude_bits(v) < DK_FLUSH_BELOW_BITS ? 0.0f : v; }

DK_DEVICE float dk_sign_of(float v) { return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f); }

// The second fold for a tile of one 64 x 64 chunk, register-blocked: each thread folds a 4 x 4
// block of y, so one C_m quad and one T quad serve 16 terms. Every element's fold is still
// its own ascending sequence of rounded multiplies and adds: the bits do not change.
DK_DEVICE void dk_second_fold_64(dk_decode_shared& sh, const dk_tile& tile, const float* cm_basis,
                                 bool apply_sign, float* out) {
  const int tid = static_cast<int>(threadIdx.x), i0 = (tid >> 4) * 4, j0 = (tid & 15) * 4;
  float acc[4][4];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
  for (int u = 0; u < 64; ++u) {
    if (!sh.nonzero[u]) continue;
    float c[4], t[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      c[a] = cm_basis[u * 64 + i0 + a];
      t[a] = sh.t[u * 64 + j0 + a];
    }
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b) acc[a][b] = dk_add(acc[a][b], dk_mul(c[a], t[b]));
  }
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    float* row = out + dk_chunk_offset(tile, tile.first_chunk, i0 + a, j0);
#pragma unroll
    for (int b = 0; b < 4; ++b) row[b] = apply_sign ? dk_sign_of(acc[a][b]) : acc[a][b];
  }
}

// SPEC 4.3 on the tile's chunks: sh.a holds A (rows with a nonzero flagged); writes y (or
// sign(y)) to the tensor's padded layout.
DK_DEVICE void dk_canonical_inverse(dk_decode_shared& sh, const dk_tile& tile, const int64_t* row,
                                    bool apply_sign) {
  const int tid = static_cast<int>(threadIdx.x), E = tile.E, cm = tile.cm, cn = tile.cn;
  const int count = tile.chunks * E;
  const float* cm_basis = reinterpret_cast<const float*>(row[DK_F_CM_BASIS]);
  const float* cn_basis = reinterpret_cast<const float*>(row[DK_F_CN_BASIS]);
  for (int el = tid; el < count; el += DK_THREADS) {  // T[u][j] = fold_v A[u][v] * C_n[v][j]
    const int a_row = static_cast<int>(dk_quot(el, tile.by_cn)), j = el - a_row * cn;
    float acc = 0.0f;
    if (sh.nonzero[a_row]) {
      const float* a = sh.a + (el - j);
      for (int v = 0; v < cn; ++v)
        if (a[v] != 0.0f) acc = dk_add(acc, dk_mul(a[v], cn_basis[v * cn + j]));
    }
    sh.t[el] = acc;
  }
  __syncthreads();
  float* out = reinterpret_cast<float*>(row[DK_F_OUT]);
  if (cm == 64 && cn == 64) {  // then the tile is one chunk (E = DK_TILE)
    dk_second_fold_64(sh, tile, cm_basis, apply_sign, out);
    return;
  }
  for (int el = tid; el < count; el += DK_THREADS) {  // y[i][j] = fold_u C_m[u][i] * T[u][j]
    const dk_place p = dk_locate(tile, el);
    const float* t_col = sh.t + p.g * E + p.j;
    const unsigned char* rows = sh.nonzero + p.g * cm;
    float acc = 0.0f;
    for (int u = 0; u < cm; ++u)
      if (rows[u]) acc = dk_add(acc, dk_mul(cm_basis[u * cm + p.i], t_col[u * cn]));
    if (apply_sign) acc = dk_sign_of(acc);
    out[dk_chunk_offset(tile, tile.first_chunk + p.g, p.i, p.j)] = acc;
  }
}

// One peer's entries of this tile against SPEC 5's per-chunk rules; returns DK_BAD_* bits.
DK_DEVICE int dk_check_peer(const int32_t* idx, const float* values, int64_t first, int entries,
                            dk_div by_k, int E) {
  int flags = 0;
  for (int q = static_cast<int>(threadIdx.x); q < entries; q += DK_THREADS) {
    const int32_t at = idx[first + q];
    if (at < 0 || at >= E) flags |= DK_BAD_RANGE;
    const bool starts_chunk = dk_quot(q, by_k) * by_k.d == static_cast<uint32_t>(q);
    if (!starts_chunk && at <= idx[first + q - 1]) flags |= DK_BAD_ORDER;
    if (values && !(dk_magnitude_bits(values[first + q]) < DK_VALUE_LIMIT_BITS)) flags |= DK_BAD_VALUE;
  }
  return flags;
}

DK_KERNEL dk_decompress(const int64_t* table, int n_tensors, int reduce, int codec, int apply_sign,
                        int* flags) {
  __shared__ dk_decode_shared sh;
  const dk_tile tile = dk_find_tile(table, n_tensors, blockIdx.x);
  const int64_t* row = tile.row;
  const int tid = static_cast<int>(threadIdx.x), E = tile.E;
  const int count = tile.chunks * E;
  const int64_t* peers = table + row[DK_F_PEERS];
  const int n_peers = static_cast<int>(row[DK_F_N_PEERS]), k = static_cast<int>(row[DK_F_PEER_K]);
  const dk_div by_k = dk_row_div(row, DK_F_MAGIC_K, DK_F_PEER_K);
  const int64_t first = static_cast<int64_t>(tile.first_chunk) * k;  // tile's first entry per peer
  const int entries = tile.chunks * k;
  const bool sign_codec = codec == DK_CODEC_SIGN;

  for (int el = tid; el < count; el += DK_THREADS) { sh.a[el] = 0.0f; sh.count[el] = 0; }
  for (int r = tid; r < tile.chunks * tile.cm; r += DK_THREADS) sh.nonzero[r] = 0;
  if (tid == 0) sh.bad = 0;
  __syncthreads();
  // Validation first: a tile with a bad peer is not aggregated (no write out of range);
  // the host raises for the lowest flagged (tensor, peer).
  for (int p = 0; p < n_peers; ++p) {
    const int32_t* idx = reinterpret_cast<const int32_t*>(peers[2 * p]);
    const float* values = sign_codec ? nullptr : reinterpret_cast<const float*>(peers[2 * p + 1]);
    const int bad = dk_check_peer(idx, values, first, entries, by_k, E);
    if (bad) {
      atomicOr(&flags[row[DK_F_FLAG_BASE] + p], bad);
      sh.bad = 1;
    }
  }
  __syncthreads();
  if (sh.bad) return;
  // S[j] and n[j], peers in ascending order: indices are unique within a chunk, so one
  // peer's adds never collide; the barrier between peers keeps the order.
  for (int p = 0; p < n_peers; ++p) {
    const int32_t* idx = reinterpret_cast<const int32_t*>(peers[2 * p]);
    for (int q = tid; q < entries; q += DK_THREADS) {
      const int64_t e = first + q;
      const int pos = static_cast<int>(dk_quot(q, by_k)) * E + idx[e];
      float v;
      if (sign_codec) {
        const uint8_t byte = reinterpret_cast<const uint8_t*>(peers[2 * p + 1])[e >> 3];
        v = (byte >> (e & 7)) & 1u ? -1.0f : 1.0f;
      } else {
        v = dk_flush(reinterpret_cast<const float*>(peers[2 * p + 1])[e]);
      }
      sh.a[pos] = dk_add(sh.a[pos], v);
      sh.count[pos] += 1;
    }
    __syncthreads();
  }
  // A[j] = S[j] / n[j] (or / P), correctly rounded, then the 2^-55 flush.
  for (int el = tid; el < count; el += DK_THREADS) {
    const int n = sh.count[el];
    if (!n) continue;
    const float mean = dk_flush(dk_div_count(sh.a[el], reduce == DK_REDUCE_MEAN ? n : n_peers));
    sh.a[el] = mean;
    if (mean != 0.0f) sh.nonzero[dk_quot(el, tile.by_cn)] = 1;
  }
  __syncthreads();
  dk_canonical_inverse(sh, tile, row, apply_sign != 0);
}

DK_KERNEL dk_idct(const int64_t* table, int n_tensors) {
  __shared__ dk_decode_shared sh;
  const dk_tile tile = dk_find_tile(table, n_tensors, blockIdx.x);
  const int64_t* row = tile.row;
  const int tid = static_cast<int>(threadIdx.x);
  const int count = tile.chunks * tile.E;
  const float* src =
      reinterpret_cast<const float*>(row[DK_F_SRC]) + static_cast<int64_t>(tile.first_chunk) * tile.E;
  for (int r = tid; r < tile.chunks * tile.cm; r += DK_THREADS) sh.nonzero[r] = 0;
  __syncthreads();
  for (int el = tid; el < count; el += DK_THREADS) {
    const float v = src[el];
    sh.a[el] = v;
    if (v != 0.0f) sh.nonzero[dk_quot(el, tile.by_cn)] = 1;  // NaN counts, as in the reference
  }
  __syncthreads();
  dk_canonical_inverse(sh, tile, row, false);
}
