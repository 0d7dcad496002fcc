"""Host side of the tensor tables (``csrc/cuda/table.h``): one launch covers a whole model.

Each tensor is a row of ``FIELDS`` int64 (geometry, device pointers, division magics); the
decode table appends each tensor's peer pointer list. Everything here is plain integer
arithmetic on numpy arrays, so it is tested on any machine (``tests/test_cuda_host.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..chunking import ChunkPlan

# Mirrors of table.h (a test parses the header and compares).
FIELDS = 24
F_FIRST_TILE, F_N_CHUNKS, F_CHUNKS_M, F_CHUNKS_N, F_CM, F_CN, F_TILE_CHUNKS = range(7)
F_CM_BASIS, F_CN_BASIS, F_CN_BASIS_T = 7, 8, 9
F_X, F_GRAD, F_OUT_A, F_OUT_B, F_K, F_DTYPES = 10, 11, 12, 13, 14, 15
F_OUT, F_PEERS, F_N_PEERS, F_PEER_K, F_FLAG_BASE, F_SRC = 10, 11, 12, 13, 14, 15
F_MAGIC_E, F_MAGIC_CN, F_MAGIC_CHUNKS_M, F_MAGIC_CHUNKS_N, F_MAGIC_K = 16, 17, 18, 19, 20
DTYPE_F32, DTYPE_BF16, DTYPE_F16 = 0, 1, 2
MODE_DCT, MODE_COMPRESS, MODE_STEP = 0, 1, 2
REDUCE_MEAN, REDUCE_SUM_OVER_PEERS = 0, 1
CODEC_FLOAT, CODEC_SIGN = 0, 1
BAD_RANGE, BAD_ORDER, BAD_VALUE = 1, 2, 4
THREADS = 256  # DK_THREADS
TILE = 4096  # DK_TILE: elements per block
SMALL_E = 64  # encode: chunks of E <= 64 share a tile and select by brute-force rank
MAX_SIDE = 64  # chunk dims above this have no kernel (the reference runs them)
MAX_CHUNKS = 2**32 - 1  # chunk ids are 32-bit in the kernels


def magic(d: int) -> int:
    """The kernels' division magic for ``d`` (``floor((2^64 - 1) / d) + 1``) as a signed int64;
    0 for ``d = 1`` (passed through). Exact for dividends below 2^32 (Lemire et al. 2019)."""
    if not 1 <= d < 2**32:
        raise ValueError(f"divisor must be in [1, 2^32), got {d}")
    if d == 1:
        return 0
    m = (2**64 - 1) // d + 1
    return m - 2**64 if m >= 2**63 else m


def divide(n: int, d: int) -> int:
    """What the kernels compute for ``n // d`` (``n < 2^32``): the multiply-high by the magic."""
    if d == 1:
        return n
    return ((magic(d) % 2**64) * n) >> 64


def supported(plan: ChunkPlan) -> bool:
    """Whether the chunk shape has a CUDA kernel (else the backend runs the reference code)."""
    return plan.cm <= MAX_SIDE and plan.cn <= MAX_SIDE and plan.n_chunks <= MAX_CHUNKS


def encode_tile_chunks(plan: ChunkPlan) -> int:
    """Chunks per encode tile: one chunk above ``SMALL_E`` elements (radix select), else as
    many whole chunks as fit in ``TILE`` elements."""
    e = plan.elements_per_chunk
    return 1 if e > SMALL_E else TILE // e


def decode_tile_chunks(plan: ChunkPlan) -> int:
    return max(1, TILE // plan.elements_per_chunk)


def tiles(plan: ChunkPlan, tile_chunks: int) -> int:
    return -(-plan.n_chunks // tile_chunks)


@dataclass
class Table:
    """A built table: the int64 words to copy to the device and the launch's grid."""

    words: np.ndarray
    n_tensors: int
    grid: int


def _geometry_row(plan: ChunkPlan, tile_chunks: int, first_tile: int, bases: tuple[int, int, int]):
    if not supported(plan):
        raise ValueError(f"chunk {plan.cm}x{plan.cn} x {plan.n_chunks} chunks has no CUDA kernel")
    row = np.zeros(FIELDS, dtype=np.int64)
    row[F_FIRST_TILE] = first_tile
    row[F_N_CHUNKS] = plan.n_chunks
    row[F_CHUNKS_M] = plan.chunks_m  # chunk rows per batch
    row[F_CHUNKS_N] = plan.chunks_n
    row[F_CM], row[F_CN] = plan.cm, plan.cn
    row[F_TILE_CHUNKS] = tile_chunks
    row[F_CM_BASIS], row[F_CN_BASIS], row[F_CN_BASIS_T] = bases
    row[F_MAGIC_E] = magic(plan.elements_per_chunk)
    row[F_MAGIC_CN] = magic(plan.cn)
    row[F_MAGIC_CHUNKS_M] = magic(plan.chunks_m)
    row[F_MAGIC_CHUNKS_N] = magic(plan.chunks_n)
    return row


@dataclass
class EncodeItem:
    plan: ChunkPlan
    bases: tuple[int, int, int]  # device addresses of C_m, C_n, C_n^T
    x: int
    x_dtype: int
    out_a: int  # coefficients (dct) or indices
    out_b: int = 0  # values
    k: int = 0  # k_eff (compress, step)
    grad: int = 0
    grad_dtype: int = DTYPE_F32


def encode_table(items: list[EncodeItem]) -> Table:
    rows, first = [], 0
    for item in items:
        g = encode_tile_chunks(item.plan)
        row = _geometry_row(item.plan, g, first, item.bases)
        row[F_X], row[F_GRAD], row[F_OUT_A], row[F_OUT_B] = item.x, item.grad, item.out_a, item.out_b
        row[F_K] = item.k
        row[F_DTYPES] = item.x_dtype | (item.grad_dtype << 8)
        rows.append(row)
        first += tiles(item.plan, g)
    return Table(np.concatenate(rows), len(rows), first)


@dataclass
class DecodeItem:
    plan: ChunkPlan
    bases: tuple[int, int, int]
    out: int
    peers: list[tuple[int, int]]  # (indices address, values address), ascending peer id
    k: int  # indices per chunk of every peer


def decode_table(items: list[DecodeItem]) -> Table:
    """Rows, then every tensor's peer list (its offset in the same buffer is in the row);
    each tensor gets ``len(peers)`` flag slots, tensor after tensor."""
    rows, lists, first, flag_base = [], [], 0, 0
    offset = FIELDS * len(items)
    for item in items:
        g = decode_tile_chunks(item.plan)
        row = _geometry_row(item.plan, g, first, item.bases)
        row[F_OUT] = item.out
        row[F_PEERS] = offset
        row[F_N_PEERS] = len(item.peers)
        row[F_PEER_K] = item.k
        row[F_FLAG_BASE] = flag_base
        row[F_MAGIC_K] = magic(item.k)
        rows.append(row)
        lists.append(np.array([a for pair in item.peers for a in pair], dtype=np.int64))
        offset += 2 * len(item.peers)
        flag_base += len(item.peers)
        first += tiles(item.plan, g)
    return Table(np.concatenate(rows + lists), len(rows), first)


def idct_table(plan: ChunkPlan, bases: tuple[int, int, int], src: int, out: int) -> Table:
    g = decode_tile_chunks(plan)
    row = _geometry_row(plan, g, 0, bases)
    row[F_OUT], row[F_SRC] = out, src
    return Table(row, 1, tiles(plan, g))


def first_bad(flags: np.ndarray, peers_per_tensor: list[int]) -> tuple[int, int, str] | None:
    """The lowest flagged (tensor, peer) and its rule (range, then order, then value)."""
    base = 0
    for tensor, n in enumerate(peers_per_tensor):
        for peer in range(n):
            f = int(flags[base + peer])
            if f:
                rule = "index_range" if f & BAD_RANGE else "index_order" if f & BAD_ORDER else "value"
                return tensor, peer, rule
        base += n
    return None
