// The tensor table: one row of DK_FIELDS int64 per tensor, built on the host
// (distro_kernels/cuda/table.py mirrors these numbers; a test parses this file to check) and
// copied to the device in one buffer, so that a whole model is one launch. Pointers are
// device addresses stored as int64. A block finds its tensor by binary search on first_tile.
#pragma once

#include "compat.h"

#define DK_FIELDS 24

// Fields common to every table.
enum dk_field {
  DK_F_FIRST_TILE = 0,  // tiles of the tensors before this one (ascending)
  DK_F_N_CHUNKS = 1,
  DK_F_CHUNKS_M = 2,
  DK_F_CHUNKS_N = 3,
  DK_F_CM = 4,
  DK_F_CN = 5,
  DK_F_TILE_CHUNKS = 6,  // chunks per tile (G): 1 for E > 64 (encode) or E > DK_TILE / 2
  DK_F_CM_BASIS = 7,     // canonical basis C_m (cm x cm, row u = frequency u)
  DK_F_CN_BASIS = 8,     // canonical basis C_n (cn x cn)
  DK_F_CN_BASIS_T = 9,   // C_n transposed (encode's first product reads it coalesced)
  // encode rows
  DK_F_X = 10,       // input (dct, compress) or the state delta (demo step; updated in place)
  DK_F_GRAD = 11,    // demo step: the gradient
  DK_F_OUT_A = 12,   // dct: coefficients (n_chunks x E); otherwise int32 indices (n_chunks x k)
  DK_F_OUT_B = 13,   // float32 values (n_chunks x k)
  DK_F_K = 14,       // k_eff
  DK_F_DTYPES = 15,  // x dtype | grad dtype << 8 (DK_DTYPE_*)
  // decode rows reuse 10..15
  DK_F_OUT = 10,         // float32 output in the padded layout
  DK_F_PEERS = 11,       // row of the peer pointer list in this same buffer (see below)
  DK_F_N_PEERS = 12,
  DK_F_PEER_K = 13,      // indices per chunk of every peer
  DK_F_FLAG_BASE = 14,   // first of this tensor's n_peers slots in the flags array
  DK_F_SRC = 15,         // idct: dense coefficients (n_chunks x E)
  // Division magics (dk_div below) of the divisors the kernels need, so that no integer
  // division instruction sequence (built from float reciprocals and, on AMD, v_mac_f32) is
  // emitted: the compile gate can then require zero FP multiply-adds in decode.
  DK_F_MAGIC_E = 16,
  DK_F_MAGIC_CN = 17,
  DK_F_MAGIC_CHUNKS_M = 18,
  DK_F_MAGIC_CHUNKS_N = 19,
  DK_F_MAGIC_K = 20  // decode: of DK_F_PEER_K (1 in encode rows)
};
// Decode peer list: 2 * n_peers int64 starting at element row[DK_F_PEERS] of the same buffer:
// peer p's indices pointer (int32, n_chunks x k) at 2p, its values pointer at 2p + 1 (float32
// n_chunks x k, or the packed sign bytes).

enum dk_dtype { DK_DTYPE_F32 = 0, DK_DTYPE_BF16 = 1, DK_DTYPE_F16 = 2 };
enum dk_encode_mode { DK_MODE_DCT = 0, DK_MODE_COMPRESS = 1, DK_MODE_STEP = 2 };
enum dk_reduce { DK_REDUCE_MEAN = 0, DK_REDUCE_SUM_OVER_PEERS = 1 };
enum dk_codec { DK_CODEC_FLOAT = 0, DK_CODEC_SIGN = 1 };
// Decode flag bits per (tensor, peer); the host reports the lowest (tensor, peer) set.
enum dk_flag { DK_BAD_RANGE = 1, DK_BAD_ORDER = 2, DK_BAD_VALUE = 4 };

// n / d for n, d < 2^32 by one 64-bit multiply-high with magic = floor((2^64 - 1) / d) + 1
// (Lemire, Kaser and Kurz 2019, "Faster remainder by direct computation", theorem 1); d = 1
// has no 64-bit magic and is passed through. The host computes the magics (table.py).
struct dk_div {
  uint64_t magic;
  uint32_t d;
};

DK_DEVICE uint32_t dk_mulhi(uint64_t a, uint64_t b) {
#if defined(DK_HOST_SIM)
  return static_cast<uint32_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#else
  return static_cast<uint32_t>(__umul64hi(a, b));
#endif
}

DK_DEVICE uint32_t dk_quot(uint32_t n, dk_div f) { return f.d == 1 ? n : dk_mulhi(f.magic, n); }

DK_DEVICE dk_div dk_row_div(const int64_t* row, int magic_field, int value_field) {
  dk_div f;
  f.magic = static_cast<uint64_t>(row[magic_field]);
  f.d = static_cast<uint32_t>(row[value_field]);
  return f;
}

// Which tensor and which chunks a block works on. Chunk ids are < 2^32 (the host checks).
struct dk_tile {
  const int64_t* row;  // the tensor's table row
  int tensor;
  uint32_t first_chunk;  // of this tile, within the tensor
  int chunks;            // in this tile (the last tile of a tensor may be partial)
  int cm, cn, E;
  dk_div by_E, by_cn, by_chunks_m, by_chunks_n;
  int64_t n;  // elements per tensor row (chunks_n * cn)
  int64_t m;  // rows per batch (chunks_m * cm)
};

DK_DEVICE dk_tile dk_find_tile(const int64_t* table, int n_tensors, int64_t block) {
  int lo = 0, hi = n_tensors - 1;  // the last row whose first_tile <= block
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table[mid * DK_FIELDS + DK_F_FIRST_TILE] <= block) lo = mid; else hi = mid - 1;
  }
  dk_tile t;
  t.row = table + lo * DK_FIELDS;
  t.tensor = lo;
  const int64_t g = t.row[DK_F_TILE_CHUNKS];
  const int64_t first = (block - t.row[DK_F_FIRST_TILE]) * g;
  const int64_t left = t.row[DK_F_N_CHUNKS] - first;
  t.first_chunk = static_cast<uint32_t>(first);
  t.chunks = static_cast<int>(left < g ? left : g);
  t.cm = static_cast<int>(t.row[DK_F_CM]);
  t.cn = static_cast<int>(t.row[DK_F_CN]);
  t.E = t.cm * t.cn;
  t.by_E.magic = static_cast<uint64_t>(t.row[DK_F_MAGIC_E]);
  t.by_E.d = static_cast<uint32_t>(t.E);
  t.by_cn = dk_row_div(t.row, DK_F_MAGIC_CN, DK_F_CN);
  t.by_chunks_m = dk_row_div(t.row, DK_F_MAGIC_CHUNKS_M, DK_F_CHUNKS_M);
  t.by_chunks_n = dk_row_div(t.row, DK_F_MAGIC_CHUNKS_N, DK_F_CHUNKS_N);
  t.n = t.row[DK_F_CHUNKS_N] * t.cn;
  t.m = t.row[DK_F_CHUNKS_M] * t.cm;
  return t;
}

// Tile element el (< DK_TILE) -> chunk g of the tile and (i, j) inside it.
struct dk_place {
  int g, w, i, j;
};

DK_DEVICE dk_place dk_locate(const dk_tile& t, int el) {
  dk_place p;
  p.g = static_cast<int>(dk_quot(static_cast<uint32_t>(el), t.by_E));
  p.w = el - p.g * t.E;
  p.i = static_cast<int>(dk_quot(static_cast<uint32_t>(p.w), t.by_cn));
  p.j = p.w - p.i * t.cn;
  return p;
}

// Element offset of element (i, j) of chunk c (SPEC 1: row-major chunks over batch, rows, cols).
DK_DEVICE int64_t dk_chunk_offset(const dk_tile& t, uint32_t c, int i, int j) {
  const uint32_t rows = dk_quot(c, t.by_chunks_n);  // b * chunks_m + r
  const uint32_t q = c - rows * t.by_chunks_n.d;
  const uint32_t b = dk_quot(rows, t.by_chunks_m);
  const uint32_t r = rows - b * t.by_chunks_m.d;
  return (static_cast<int64_t>(b) * t.m + static_cast<int64_t>(r) * t.cm + i) * t.n +
         static_cast<int64_t>(q) * t.cn + j;
}
