"""The model layout: the ordered tensor shapes, chunk geometry, ``k``, and their digest."""

from __future__ import annotations

import math
import struct
from typing import Iterable, Sequence

from ..chunking import POLICIES, ChunkPlan, chunk_plan
from ..validation import MAX_CHUNK
from .format import (
    HEADER_SIZE,
    RICE_LEN_SIZE,
    SECTION_SIZE,
    TRAILER_SIZE,
    U32_MAX,
    VALUE_CODECS,
    digest16,
    index_bits,
    value_bytes,
)

_DIGEST_DOMAIN = b"distro_kernels/wire/layout/v1\x00"


class Layout:
    """The ordered list of a model's tensor shapes, cut into chunks by SPEC section 1.

    ``Layout(shapes, chunk=64, k=32)``. ``digest`` (16 bytes, BLAKE2b-128) covers the chunk
    policy and every shape, in order; the header carries it, so a payload made for another
    model is refused. ``chunk`` and ``k`` travel as their own header fields.
    All geometry comes from :func:`distro_kernels.chunk_plan`.
    """

    __slots__ = (
        "shapes", "chunk", "k", "policy", "plans", "kept", "widths", "elements", "n_chunks",
        "k_effs", "digest", "total_kept", "numel", "_max_bytes",  # _max_bytes: size cache
    )

    def __init__(
        self, shapes: Iterable[Sequence[int]], chunk: int = 64, k: int = 32, *,
        policy: str = "divisor",
    ):
        shapes = tuple(tuple(int(d) for d in s) for s in shapes)
        if not shapes:
            raise ValueError("a layout needs at least one tensor")
        if len(shapes) > U32_MAX:
            raise ValueError("too many tensors")
        chunk, k = int(chunk), int(k)
        if not 1 <= chunk <= MAX_CHUNK:
            raise ValueError(f"chunk must be in [1, {MAX_CHUNK}], got {chunk}")
        if not 1 <= k <= U32_MAX:
            raise ValueError(f"k must be in [1, 2**32), got {k}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        for s in shapes:
            if len(s) > 255 or any(not 1 <= d < 2**63 for d in s):
                raise ValueError(f"unsupported shape {s}")
        self.shapes = shapes
        self.chunk, self.k, self.policy = chunk, k, policy
        self.plans: tuple[ChunkPlan, ...] = tuple(chunk_plan(s, chunk, policy) for s in shapes)
        self.n_chunks = tuple(p.n_chunks for p in self.plans)
        self.elements = tuple(p.elements_per_chunk for p in self.plans)
        self.k_effs = tuple(p.k_eff(k) for p in self.plans)
        self.kept = tuple(n * ke for n, ke in zip(self.n_chunks, self.k_effs))
        self.widths = tuple(index_bits(e) for e in self.elements)
        self.total_kept = sum(self.kept)
        self.numel = sum(p.numel for p in self.plans)
        self.digest = layout_digest(shapes, policy)
        self._max_bytes: dict = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_tensors(cls, tensors: Iterable, chunk: int = 64, k: int = 32, **kw) -> "Layout":
        """Layout of the shapes of ``tensors`` (e.g. ``model.parameters()``), in order."""
        return cls([tuple(t.shape) for t in tensors], chunk, k, **kw)

    # ------------------------------------------------------------------ sizes
    @property
    def n_tensors(self) -> int:
        return len(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def fixed_index_bytes(self, t: int) -> int:
        """Bytes of tensor ``t``'s indices at ``ceil(log2(E))`` bits each."""
        return (self.kept[t] * self.widths[t] + 7) // 8

    def rice_unary_max_bits(self, t: int, r: int) -> int:
        """Most unary bits a valid Rice stream with parameter ``r`` can hold for tensor ``t``:
        one terminator per index plus, per chunk, at most ``(E - k_eff) >> r`` zeros."""
        return self.kept[t] + self.n_chunks[t] * ((self.elements[t] - self.k_effs[t]) >> r)

    def max_payload_bytes(self, value_codec: str | None = None) -> int:
        """Largest message any valid payload for this layout can be (the parser's default
        ``max_bytes``). ``value_codec=None`` takes the widest codec (``f32``)."""
        vc = VALUE_CODECS["f32" if value_codec is None else value_codec]
        if ("max", vc) in self._max_bytes:
            return self._max_bytes[("max", vc)]
        total = HEADER_SIZE + TRAILER_SIZE
        for t in range(self.n_tensors):
            w = self.widths[t]
            rice = max(
                RICE_LEN_SIZE + (self.rice_unary_max_bits(t, r) + 7) // 8
                + (self.kept[t] * r + 7) // 8
                for r in range(w + 1)
            )
            total += SECTION_SIZE + max(self.fixed_index_bytes(t), rice)
            total += value_bytes(vc, self.kept[t])
        self._max_bytes[("max", vc)] = total
        return total

    def min_payload_bytes(self, value_codec: str) -> int:
        """Smallest message any valid payload for this layout can be under ``value_codec``."""
        vc = VALUE_CODECS[value_codec]
        if ("min", vc) in self._max_bytes:
            return self._max_bytes[("min", vc)]
        total = HEADER_SIZE + TRAILER_SIZE
        for t in range(self.n_tensors):
            # a rice section holds at least one terminator bit per index
            rice = RICE_LEN_SIZE + (self.kept[t] + 7) // 8
            total += SECTION_SIZE + min(self.fixed_index_bytes(t), rice)
            total += value_bytes(vc, self.kept[t])
        self._max_bytes[("min", vc)] = total
        return total

    # ------------------------------------------------------------------ identity
    def _key(self):
        return (self.digest, self.chunk, self.k)

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Layout({self.n_tensors} tensors, {self.numel:,} params, chunk={self.chunk}, "
            f"k={self.k}, kept={self.total_kept:,}, digest={self.digest.hex()[:12]}...)"
        )


def layout_digest(shapes: Sequence[Sequence[int]], policy: str = "divisor") -> bytes:
    """BLAKE2b-128 of the canonical encoding of the shape list (docs/wire-format.md)."""
    parts = [_DIGEST_DOMAIN, struct.pack("<BI", POLICIES.index(policy), len(shapes))]
    for s in shapes:
        parts.append(struct.pack(f"<B{len(s)}Q", len(s), *s))
    return digest16(b"".join(parts))


def model_numel(shapes: Sequence[Sequence[int]]) -> int:
    return sum(math.prod(s) for s in shapes)
