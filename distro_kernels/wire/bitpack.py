"""Fixed-width bit packing (LSB-first), vectorized with numpy.

Value ``j`` of a stream packed at ``w`` bits occupies stream bits ``[j*w, (j+1)*w)``, least
significant bit first; stream bit ``b`` is bit ``b % 8`` of byte ``b // 8``. The last byte is
zero-padded. Widths 0..32 are supported (indices need at most 16).

Both directions loop only over the positions inside one period of the bit pattern (at most 32
static steps), each step a vectorized operation over every period of the stream.
"""

from __future__ import annotations

from math import gcd

import numpy as np

MAX_WIDTH = 32
_NATIVE = {8: "<u1", 16: "<u2", 32: "<u4"}


def packed_size(count: int, width: int) -> int:
    """Bytes of ``count`` values at ``width`` bits."""
    return (count * width + 7) // 8


def _check_width(width: int) -> None:
    if not 0 <= width <= MAX_WIDTH:
        raise ValueError(f"width must be in [0, {MAX_WIDTH}], got {width}")


def pack(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers ``< 2**width`` (the caller checks the range)."""
    _check_width(width)
    v = np.asarray(values).reshape(-1)
    n = v.size
    if width == 0 or n == 0:
        return b""
    if width in _NATIVE:
        return v.astype(_NATIVE[width]).tobytes()
    # g values of `width` bits fill nw whole 32-bit words; lay the stream out as (g, groups)
    # so every step below reads and writes contiguous rows.
    g = 32 // gcd(width, 32)
    nw = width * g // 32
    groups = -(-n // g)
    padded = np.zeros(groups * g, dtype=np.uint32)
    padded[:n] = v
    cols = padded.reshape(groups, g).T.copy()
    words = np.zeros((nw, groups), dtype=np.uint32)
    for p in range(g):
        wi, sh = divmod(p * width, 32)
        col = cols[p]
        words[wi] |= col << np.uint32(sh)
        if sh + width > 32:
            words[wi + 1] |= col >> np.uint32(32 - sh)
    return words.T.astype("<u4").tobytes()[: packed_size(n, width)]


def unpack(buf, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack`: ``count`` values as uint32. ``buf`` must hold at least
    ``packed_size(count, width)`` bytes (the caller checks)."""
    _check_width(width)
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.uint32)
    nbytes = packed_size(count, width)
    raw = np.frombuffer(buf, dtype=np.uint8, count=nbytes)
    if width in _NATIVE:
        return raw.view(_NATIVE[width]).astype(np.uint32)
    # g8 values fill `stride` whole bytes; value p of every period sits at a constant byte
    # offset and shift, so it is one strided (unaligned) read over all periods.
    g8 = 8 // gcd(width, 8)
    stride = width * g8 // 8
    groups = -(-count // g8)
    padded = np.zeros(groups * stride + 8, dtype=np.uint8)
    padded[:nbytes] = raw
    rd = "<u4" if width <= 25 else "<u8"
    out = np.empty((groups, g8), dtype=np.uint32)
    for p in range(g8):
        bo, sh = divmod(p * width, 8)
        view = np.ndarray((groups,), dtype=rd, buffer=padded, offset=bo, strides=(stride,))
        col = (view >> view.dtype.type(sh)) & view.dtype.type((1 << width) - 1)
        out[:, p] = col
    return out.reshape(-1)[:count]


def padding_is_zero(buf, count: int, width: int) -> bool:
    """True when the bits after the last value, in the last byte, are all zero."""
    rem = (count * width) % 8
    if rem == 0:
        return True
    last = memoryview(buf)[packed_size(count, width) - 1]
    return (last >> rem) == 0
