"""Size accounting of a message: bits per kept coefficient and per parameter."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import bitpack
from .errors import Truncated
from .format import (
    HEADER_SIZE,
    INDEX_FIXED,
    RICE_LEN,
    RICE_LEN_SIZE,
    SECTION,
    SECTION_SIZE,
    TRAILER_SIZE,
    FLAG_SIGNED,
    SIGNATURE_SIZE,
    VALUE_CODEC_NAMES,
    value_bytes,
)
from .header import as_buffer, read_header
from .layout import Layout


@dataclass(frozen=True)
class WireStats:
    """Sizes of one message. ``index_bytes``/``value_bytes``/``framing_bytes`` and the
    per-tensor lists are filled only when a layout is given (framing = header, trailer,
    section headers and Rice length fields)."""

    total_bytes: int
    kept: int
    params: int
    value_codec: str
    bits_per_kept: float
    bits_per_param: float
    index_bytes: int | None = None
    value_bytes: int | None = None
    framing_bytes: int | None = None
    rice_tensors: int | None = None
    fixed_tensors: int | None = None
    rice_parameters: tuple[int, ...] = field(default=(), repr=False)

    @property
    def index_bits_per_kept(self) -> float | None:
        return None if self.index_bytes is None else 8 * self.index_bytes / self.kept

    @property
    def value_bits_per_kept(self) -> float | None:
        return None if self.value_bytes is None else 8 * self.value_bytes / self.kept

    @property
    def framing_bits_per_kept(self) -> float | None:
        return None if self.framing_bytes is None else 8 * self.framing_bytes / self.kept


def stats(payload_bytes, layout: Layout | None = None) -> WireStats:
    """Bits per kept coefficient and per parameter of a message (its header's counts).

    With ``layout``, also splits the bytes into indices, values and framing by walking the
    section headers (lengths checked, nothing decoded). Does not verify the digest or the
    contents; use :meth:`Payload.from_bytes` for that.
    """
    mv = as_buffer(payload_bytes)
    h = read_header(mv, len(mv))
    total = len(mv)
    kept = max(h.kept, 1)
    base = dict(
        total_bytes=total, kept=h.kept, params=h.params,
        value_codec=VALUE_CODEC_NAMES.get(h.value_codec, f"id{h.value_codec}"),
        bits_per_kept=8 * total / kept, bits_per_param=8 * total / max(h.params, 1),
    )
    if layout is None:
        return WireStats(**base)
    sig = SIGNATURE_SIZE if h.flags & FLAG_SIGNED else 0  # signed runs: framing too
    pos, end = HEADER_SIZE, total - TRAILER_SIZE - sig
    framing = HEADER_SIZE + TRAILER_SIZE + sig
    n_index = n_value = n_rice = 0
    params = []
    for t in range(layout.n_tensors):
        if SECTION_SIZE > end - pos:
            raise Truncated("no room for a section header", tensor=t, offset=pos)
        codec, r = SECTION.unpack_from(mv, pos)
        pos += SECTION_SIZE
        framing += SECTION_SIZE
        count = layout.kept[t]
        if codec == INDEX_FIXED:
            nb = layout.fixed_index_bytes(t)
        else:
            if RICE_LEN_SIZE > end - pos:
                raise Truncated("no room for a unary length", tensor=t, offset=pos)
            (ulen,) = RICE_LEN.unpack_from(mv, pos)
            pos += RICE_LEN_SIZE
            framing += RICE_LEN_SIZE
            nb = ulen + bitpack.packed_size(count, r)
            n_rice += 1
            params.append(r)
        nv = value_bytes(h.value_codec, count)
        if nb + nv > end - pos:
            raise Truncated("section runs past the trailer", tensor=t, offset=pos)
        pos += nb + nv
        n_index += nb
        n_value += nv
    return WireStats(
        **base, index_bytes=n_index, value_bytes=n_value, framing_bytes=framing,
        rice_tensors=n_rice, fixed_tensors=layout.n_tensors - n_rice,
        rice_parameters=tuple(params),
    )
