"""Rice code on the gaps between sorted indices, as two byte-aligned streams.

For chunk indices ``i_0 < i_1 < ... < i_{k-1}`` the gaps are ``g_0 = i_0`` and
``g_j = i_j - i_{j-1} - 1`` (so every gap is ``>= 0``; the gaps restart in every chunk). With
parameter ``r``, gap ``g`` is the quotient ``q = g >> r`` in unary (``q`` zero bits then a one
bit) and the remainder ``g & (2**r - 1)`` in ``r`` plain bits. The format stores all unary
codes of a tensor as one stream and all remainders as a second, fixed-width stream (see
:mod:`.bitpack`). The bit count is exactly that of interleaved Rice codes, and both
directions vectorize: the unary stream's one-bits are the codeword ends.
"""

from __future__ import annotations

import numpy as np

from .._ext import cpu_ext
from . import bitpack

# popcount of every byte value (numpy >= 2 has np.bitwise_count; this also works before)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def gaps(indices: np.ndarray) -> np.ndarray:
    """Per-row gaps of ascending indices ``(rows, k)`` (each ``< 2**31``) -> int32."""
    idx = indices.astype(np.int32, copy=False)
    g = np.empty_like(idx)
    g[:, 0] = idx[:, 0]
    np.subtract(idx[:, 1:], idx[:, :-1], out=g[:, 1:])
    g[:, 1:] -= 1
    return g


def unary_bits(g: np.ndarray, r: int) -> int:
    """Bits of the unary stream for gaps ``g`` at parameter ``r``."""
    return int(g.size + int(np.sum(g >> r, dtype=np.int64)))


def best_parameter(g: np.ndarray, max_r: int) -> tuple[int, int]:
    """The ``r`` in ``[0, max_r]`` that makes the fewest bytes, and those bytes (unary +
    remainders). Deterministic: candidates around ``log2(mean gap)``, ties to the smaller."""
    n = g.size
    mean = float(np.mean(g)) if n else 0.0  # exact integer sum in float64, then / n
    return _best_of(n, mean, max_r, lambda r: unary_bits(g, r))


def _best_of(n: int, mean: float, max_r: int, unary_bits_at) -> tuple[int, int]:
    r0 = int(np.floor(np.log2(mean * 0.69314718 + 1e-12))) if mean > 1 else 0
    best = None
    for r in sorted({min(max(c, 0), max_r) for c in (r0 - 1, r0, r0 + 1, r0 + 2)}):
        size = (unary_bits_at(r) + 7) // 8 + bitpack.packed_size(n, r)
        if best is None or size < best[1]:
            best = (r, size)
    return best


def encode(g: np.ndarray, r: int) -> tuple[bytes, bytes]:
    """Gaps (any shape, flattened row-major) -> ``(unary stream, remainder stream)``."""
    flat = g.reshape(-1)
    q = flat >> r
    q += 1
    ends = np.cumsum(q, dtype=np.int64)
    ends -= 1  # position of each codeword's terminating one-bit
    bits = np.zeros(int(ends[-1]) + 1 if flat.size else 0, dtype=np.uint8)
    bits[ends] = 1
    unary = np.packbits(bits, bitorder="little").tobytes()
    rem = bitpack.pack(flat & ((1 << r) - 1), r) if r else b""
    return unary, rem


def plan(indices: np.ndarray, max_r: int) -> tuple[int, int]:
    """:func:`best_parameter` of the gaps of ascending ``indices`` ``(rows, k)`` int32: the
    same ``r`` and size, from the compiled kernel when it is there (no temporaries)."""
    if cpu_ext is None or indices.size == 0:
        return best_parameter(gaps(indices), max_r)
    idx = np.ascontiguousarray(indices, dtype=np.int32)
    rows, k = idx.shape
    status, total, bits = cpu_ext.rice_stats(idx.ctypes.data, rows, k, max_r)
    if status:
        raise ValueError(f"rice plan: {cpu_ext.status_string(status)}")
    return _best_of(idx.size, total / idx.size, max_r, lambda r: bits[r])


def encode_indices(indices: np.ndarray, r: int, size: int | None = None
                   ) -> tuple[bytes | bytearray, bytes | bytearray]:
    """:func:`encode` of the gaps of ascending ``indices`` ``(rows, k)`` int32: the same two
    streams, written by the compiled kernel when it is there. ``size``: both streams' bytes
    as :func:`plan` gave them for this ``r`` (saves a pass)."""
    if cpu_ext is None or indices.size == 0:
        return encode(gaps(indices), r)
    idx = np.ascontiguousarray(indices, dtype=np.int32)
    rows, k = idx.shape
    rem_bytes = bitpack.packed_size(idx.size, r)
    if size is None:
        status, _, bits = cpu_ext.rice_stats(idx.ctypes.data, rows, k, r)
        if status:
            raise ValueError(f"rice encode: {cpu_ext.status_string(status)}")
        size = (bits[r] + 7) // 8 + rem_bytes
    unary, rem = bytearray(size - rem_bytes), bytearray(rem_bytes)
    status = cpu_ext.rice_write(idx.ctypes.data, rows, k, r, _address(unary), len(unary),
                                _address(rem), len(rem))
    if status:
        raise ValueError(f"rice encode: {cpu_ext.status_string(status)}")
    return unary, rem


def _address(buf: bytearray) -> int:
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data if len(buf) else 0


_BLOCK = 1 << 20  # unary bytes expanded to bits at a time (8 MiB of bits)


def _popcount(buf: np.ndarray) -> int:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return int(np.bitwise_count(buf).sum(dtype=np.int64))
    return int(_POPCOUNT[buf].sum(dtype=np.int64))


def decode_quotients(unary, count: int) -> np.ndarray | None:
    """Quotients from a unary stream that must hold exactly ``count`` codewords and end with
    the last one (its last byte non-zero). Returns None when it does not (caller raises).

    Memory is O(count) plus a fixed block: the one-bits are counted (byte popcount) before
    any per-codeword array is made, and the stream is expanded to bits one block at a time.
    """
    buf = np.frombuffer(unary, dtype=np.uint8)
    if buf.size == 0 or buf[-1] == 0:
        return None
    if _popcount(buf) != count:
        return None
    ends = np.empty(count, dtype=np.int64)  # stream position of each codeword's 1 bit
    fill = 0
    for start in range(0, buf.size, _BLOCK):
        bits = np.unpackbits(buf[start : start + _BLOCK], bitorder="little")
        pos = np.flatnonzero(bits.view(np.bool_))  # 0/1 bytes; bool takes numpy's fast path
        ends[fill : fill + pos.size] = pos
        if start:
            ends[fill : fill + pos.size] += 8 * start
        fill += pos.size
    q = np.empty(count, dtype=np.int64)
    q[0] = ends[0]
    np.subtract(ends[1:], ends[:-1], out=q[1:])
    q[1:] -= 1
    return q
