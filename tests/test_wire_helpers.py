"""Shared builders for the wire tests (no tests here): layouts, payloads, byte surgery."""

from __future__ import annotations

import struct

import numpy as np

from distro_kernels import wire
from distro_kernels.wire import format as fmt

# Odd geometry on purpose: 2-D, 1-D, non-divisible dims (E=91), 0-d, batched 4-D,
# a prime 1-D length (E=1, 0-bit indices), a single element, k_eff < k and k_eff == E.
ODD_SHAPES = [(128, 64), (2048,), (7, 13), (), (2, 3, 96, 64), (97,), (1,), (64, 65), (4, 4)]

VALUE_CODECS = ("f32", "bf16", "f16", "sign")
INDEX_CODECS = ("fixed", "rice", "auto")


def random_indices(rng, rows: int, k: int, E: int) -> np.ndarray:
    """``rows`` sorted k-subsets of ``range(E)`` (uniform), int32."""
    if k == E:
        return np.tile(np.arange(E, dtype=np.int32), (rows, 1))
    if 4 * k > E or rows * E <= 1 << 16:  # dense: a random permutation's first k
        keys = rng.random((rows, E))
        return np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1).astype(np.int32)
    idx = np.sort(rng.integers(0, E, (rows, k)), axis=1)
    while True:
        bad = (np.diff(idx, axis=1) == 0).any(axis=1)
        if not bad.any():
            return idx.astype(np.int32)
        idx[bad] = np.sort(rng.integers(0, E, (int(bad.sum()), k)), axis=1)


def random_parts(layout: wire.Layout, seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    idx = [random_indices(rng, nc, ke, E)
           for nc, ke, E in zip(layout.n_chunks, layout.k_effs, layout.elements)]
    vals = [(rng.standard_normal(n) * scale).astype(np.float32) for n in layout.kept]
    return idx, vals


def make_payload(layout, value_codec="f32", index_codec="auto", seed=0, step=3, sender=1,
                 run_id=0xABCD) -> wire.Payload:
    idx, vals = random_parts(layout, seed)
    return wire.Payload(step, sender, run_id, layout, idx, vals, value_codec,
                        index_codec=index_codec)


def reseal(data: bytes, fix_length: bool = True) -> bytes:
    """Recompute the trailer digest (and the declared total length) after surgery, as a
    malicious but careful sender would."""
    body = bytearray(data[:-fmt.TRAILER_SIZE]) if len(data) >= fmt.TRAILER_SIZE else bytearray()
    if fix_length and len(body) >= fmt.OFF_TOTAL_LEN + 8:
        struct.pack_into("<Q", body, fmt.OFF_TOTAL_LEN, len(body) + fmt.TRAILER_SIZE)
    return bytes(body) + fmt.digest16(bytes(body))


def patch(data: bytes, offset: int, fmt_char: str, value, *, seal: bool = True) -> bytes:
    b = bytearray(data)
    struct.pack_into("<" + fmt_char, b, offset, value)
    return reseal(bytes(b)) if seal else bytes(b)


def evil_bytes(payload: wire.Payload, *, idx=None, vals=None, signs=None) -> bytes:
    """Bytes of ``payload`` with its arrays swapped for unchecked ones: what a buggy or
    hostile encoder sends (valid framing and digest, bad content)."""
    p = wire.Payload._from_parts(
        payload.step, payload.sender, payload.run_id, payload.layout, payload.value_codec,
        payload.index_codec,
        idx if idx is not None else payload._idx,
        vals if vals is not None else payload._vals,
        signs if signs is not None else payload._signs,
    )
    return p.to_bytes()


def section_offsets(data: bytes, layout: wire.Layout) -> list[tuple[int, int, int]]:
    """``(section start, index codec, index stream start)`` of every tensor."""
    st_vc = data[fmt.OFF_VALUE_CODEC]
    out, pos = [], fmt.HEADER_SIZE
    for t in range(layout.n_tensors):
        codec, r = data[pos], data[pos + 1]
        start = pos
        pos += 2
        if codec == fmt.INDEX_RICE:
            (ulen,) = struct.unpack_from("<Q", data, pos)
            pos += 8
            out.append((start, codec, pos))
            pos += ulen + (layout.kept[t] * r + 7) // 8
        else:
            out.append((start, codec, pos))
            pos += layout.fixed_index_bytes(t)
        pos += fmt.value_bytes(st_vc, layout.kept[t])
    return out
