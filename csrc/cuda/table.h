// The tensor table: one row of DK_FIELDS int64 per tensor, built on the host
// (distro_kernels/cuda/table.py mirrors these numbers; a test parses this file to check) and
// copied to the device in one buffer, so that a whole model is one launch. Pointers are
// device addresses stored as int64. A block finds its tensor by binary search on first_tile.
#pragma once

#include "compat.h"

#define DK_FIELDS 16

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
  DK_F_SRC = 15          // idct: dense coefficients (n_chunks x E)
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

// Which tensor and which chunks a block works on.
struct dk_tile {
  const int64_t* row;  // the tensor's table row
  int tensor;
  int64_t first_chunk;  // of this tile, within the tensor
  int chunks;           // in this tile (the last tile of a tensor may be partial)
  int cm, cn, E;
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
  t.first_chunk = (block - t.row[DK_F_FIRST_TILE]) * g;
  const int64_t left = t.row[DK_F_N_CHUNKS] - t.first_chunk;
  t.chunks = static_cast<int>(left < g ? left : g);
  t.cm = static_cast<int>(t.row[DK_F_CM]);
  t.cn = static_cast<int>(t.row[DK_F_CN]);
  t.E = t.cm * t.cn;
  return t;
}

// Element offset of element (i, j) of chunk c (SPEC 1: row-major chunks over batch, rows, cols).
DK_DEVICE int64_t dk_chunk_offset(const int64_t* row, int64_t c, int i, int j) {
  const int64_t chunks_m = row[DK_F_CHUNKS_M], chunks_n = row[DK_F_CHUNKS_N];
  const int64_t cm = row[DK_F_CM], cn = row[DK_F_CN];
  const int64_t b = c / (chunks_m * chunks_n), r = (c / chunks_n) % chunks_m, q = c % chunks_n;
  const int64_t n = chunks_n * cn, m = chunks_m * cm;
  return (b * m + r * cm + i) * n + q * cn + j;
}
