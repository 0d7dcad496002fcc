"""The fixed 96-byte header: reading it safely, and run-id normalisation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from .errors import BadMagic, LengthOverLimit, TrailingBytes, Truncated, UnsupportedVersion
from .format import HEADER, HEADER_SIZE, MAGIC, TRAILER_SIZE, VERSION


@dataclass(frozen=True)
class Header:
    """The header fields of a message (see docs/wire-format.md for offsets)."""

    version: int
    index_codec: int
    value_codec: int
    flags: int
    chunk: int
    k: int
    n_tensors: int
    step: int
    total_length: int
    sender: int
    reserved: int
    run_id: bytes
    layout_digest: bytes
    kept: int
    params: int


def as_buffer(data) -> memoryview:
    """A flat byte view of ``data`` (bytes, bytearray, memoryview, numpy or torch uint8)."""
    if hasattr(data, "numpy") and hasattr(data, "dtype"):  # torch tensor
        data = data.detach().cpu().contiguous().numpy()
    mv = memoryview(data)
    if not mv.c_contiguous:
        raise TypeError("payload data must be contiguous")
    return mv.cast("B") if (mv.ndim != 1 or mv.format != "B") else mv


def read_header(mv: memoryview, max_bytes: int) -> Header:
    """Check the size limit, magic, version and declared length; return the header.

    Checks, in order: the data is not over ``max_bytes``; it holds the magic (else
    ``Truncated``); the magic; the version; a whole header and trailer; the declared total
    length against ``max_bytes`` and the bytes present.
    """
    n = len(mv)
    if n > max_bytes:
        raise LengthOverLimit(f"message is {n} bytes, limit {max_bytes}")
    if n < 4:
        raise Truncated(f"{n} bytes: no room for the magic")
    if bytes(mv[:4]) != MAGIC:
        raise BadMagic(f"magic {bytes(mv[:4])!r}, expected {MAGIC!r}", offset=0)
    if n < 6:
        raise Truncated(f"{n} bytes: no room for the version")
    version = int.from_bytes(mv[4:6], "little")
    if version != VERSION:
        raise UnsupportedVersion(f"version {version}, this parser reads {VERSION}", offset=4)
    if n < HEADER_SIZE + TRAILER_SIZE:
        raise Truncated(f"{n} bytes: a message needs at least {HEADER_SIZE + TRAILER_SIZE}")
    h = Header(*HEADER.unpack_from(mv, 0)[1:])
    if h.total_length > max_bytes:
        raise LengthOverLimit(f"declared length {h.total_length} is over the limit {max_bytes}",
                              offset=32)
    if h.total_length > n:
        raise Truncated(f"declared length {h.total_length}, only {n} bytes present", offset=32)
    if h.total_length < n:
        raise TrailingBytes(f"declared length {h.total_length}, {n} bytes present", offset=32)
    return h


def run_id_bytes(run_id) -> bytes:
    """Normalise a run id to 16 bytes: ``bytes`` of length 16, a ``uuid.UUID``, or an
    ``int`` in ``[0, 2**128)`` (little-endian)."""
    if isinstance(run_id, uuid.UUID):
        return run_id.bytes
    if isinstance(run_id, (bytes, bytearray, memoryview)):
        b = bytes(run_id)
        if len(b) != 16:
            raise ValueError(f"a run id given as bytes must be 16 bytes, got {len(b)}")
        return b
    if isinstance(run_id, int) and not isinstance(run_id, bool):
        if not 0 <= run_id < 2**128:
            raise ValueError("an integer run id must be in [0, 2**128)")
        return run_id.to_bytes(16, "little")
    raise TypeError(f"run id must be 16 bytes, a uuid.UUID or an int, got {type(run_id).__name__}")
