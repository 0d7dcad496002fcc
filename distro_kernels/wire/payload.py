"""One peer's message for one step: every tensor's indices and values, encoded and parsed.

``Payload(...)`` checks and canonicalises what a sender passes (``ValueError``/``TypeError``
for caller bugs); ``Payload.from_bytes`` treats its input as hostile and raises only
:class:`~.errors.PayloadError` subclasses. Everything is vectorized per tensor with numpy; the
only Python loops run over tensors and over the (at most 32) bit positions of a packing period.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import bitpack, rice
from . import values as vcodec
from .errors import (
    BadSignature,
    DigestMismatch,
    MissingSignature,
    UnknownSender,
    IndexOutOfRange,
    LayoutMismatch,
    LengthOverLimit,
    MalformedStream,
    ReservedField,
    TrailingBytes,
    Truncated,
    UnknownCodec,
    UnsortedIndices,
    WrongK,
    WrongRun,
    WrongSender,
    WrongStep,
)
from .format import (
    FLAG_SIGNED,
    HEADER,
    HEADER_SIZE,
    INDEX_AUTO,
    INDEX_CODEC_NAMES,
    INDEX_CODECS,
    INDEX_FIXED,
    INDEX_RICE,
    MAGIC,
    RICE_LEN,
    RICE_LEN_SIZE,
    SECTION,
    SECTION_SIZE,
    SIGNATURE_SIZE,
    TRAILER_SIZE,
    U32_MAX,
    U64_MAX,
    VALUE_CODEC_NAMES,
    VALUE_CODECS,
    VALUE_SIGN,
    VERSION,
    digest16,
    value_bytes,
)
from .header import as_buffer, read_header, run_id_bytes
from .layout import Layout


def _to_numpy(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().contiguous().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")


class Payload:
    """One peer's compressed momentum for one step, for a whole :class:`Layout`.

    ``Payload(step, sender, run_id, layout, indices, values, value_codec="f32", *,
    index_codec="auto")``

    - ``indices[t]``: integers of shape ``(n_chunks, k_eff)`` (or any shape with that many
      elements), each ``< E``, strictly ascending in every chunk (what ``compress`` returns).
    - ``values[t]``: float values of the same count. For ``value_codec="sign"`` they may also be
      the ``uint8`` bytes of ``pack_signs`` for that tensor.
    - ``value_codec``: ``f32``, ``bf16``, ``f16`` (round to nearest even) or ``sign``.
    - ``index_codec``: ``fixed`` (``ceil(log2(E))`` bits), ``rice`` (Rice code on the gaps) or
      ``auto`` (per tensor, Rice when it is strictly smaller).

    Values are stored as the receiver will decode them: rounded to the codec and canonical
    (SPEC 4.1), so ``Payload.from_bytes(p.to_bytes(), layout)`` equals ``p`` exactly.
    """

    __slots__ = ("step", "sender", "run_id", "layout", "value_codec", "index_codec",
                 "_idx", "_vals", "_signs")

    def __init__(
        self, step: int, sender: int, run_id, layout: Layout, indices: Sequence,
        values: Sequence, value_codec: str = "f32", *, index_codec: str = "auto",
    ):
        if not isinstance(layout, Layout):
            raise TypeError("layout must be a wire.Layout")
        if value_codec not in VALUE_CODECS:
            raise ValueError(
                f"value_codec must be one of {tuple(VALUE_CODECS)}, got {value_codec!r}")
        if index_codec not in INDEX_CODECS:
            raise ValueError(
                f"index_codec must be one of {tuple(INDEX_CODECS)}, got {index_codec!r}")
        step, sender = int(step), int(sender)
        if not 0 <= step <= U64_MAX:
            raise ValueError(f"step must be in [0, 2**64), got {step}")
        if not 0 <= sender <= U32_MAX:
            raise ValueError(f"sender must be in [0, 2**32), got {sender}")
        T = layout.n_tensors
        if len(indices) != T or len(values) != T:
            raise ValueError(
                f"layout has {T} tensors; got {len(indices)} index and {len(values)} value arrays"
            )
        vc = VALUE_CODECS[value_codec]
        idx_out, vals_out, signs_out = [], [], []
        for t in range(T):
            idx_out.append(_check_indices(layout, t, _to_numpy(indices[t], f"indices[{t}]")))
            v = _to_numpy(values[t], f"values[{t}]")
            n = layout.kept[t]
            if vc == VALUE_SIGN:
                if v.dtype == np.uint8:
                    packed = v.reshape(-1)
                    if packed.size != (n + 7) // 8 or not vcodec.sign_padding_ok(packed, n):
                        raise ValueError(
                            f"values[{t}]: packed signs must be {(n + 7) // 8} bytes with zero "
                            f"padding bits"
                        )
                    signs_out.append(np.ascontiguousarray(packed).copy())
                    continue
                v = _check_float_values(layout, t, v)
                if vcodec.bad_value(v) is not None:
                    raise ValueError(f"values[{t}]: non-finite values cannot be sent")
                signs_out.append(vcodec.pack_signs(v))
            else:
                v = _check_float_values(layout, t, v)
                try:
                    vals_out.append(vcodec.quantize(v, vc).reshape(layout.n_chunks[t], -1))
                except ValueError as e:
                    raise ValueError(f"values[{t}]: {e}") from None
        self.step, self.sender, self.run_id = step, sender, run_id_bytes(run_id)
        self.layout, self.value_codec, self.index_codec = layout, value_codec, index_codec
        self._idx = idx_out
        self._vals = None if vc == VALUE_SIGN else vals_out
        self._signs = signs_out if vc == VALUE_SIGN else None

    @classmethod
    def _from_parts(cls, step, sender, run_id, layout, value_codec, index_codec, idx, vals, signs):
        self = cls.__new__(cls)
        self.step, self.sender, self.run_id = step, sender, run_id
        self.layout, self.value_codec, self.index_codec = layout, value_codec, index_codec
        self._idx, self._vals, self._signs = idx, vals, signs
        return self

    # ------------------------------------------------------------------ access
    @property
    def indices(self) -> list[torch.Tensor]:
        """Per tensor, int32 ``(n_chunks, k_eff)``, ascending in each chunk (shared memory)."""
        return [torch.from_numpy(a) for a in self._idx]

    @property
    def values(self) -> list[torch.Tensor]:
        """Per tensor, float32 ``(n_chunks, k_eff)`` as decoded (``+1``/``-1`` for ``sign``)."""
        if self._signs is not None:
            return [
                torch.from_numpy(vcodec.unpack_signs(s, n).reshape(nc, -1))
                for s, n, nc in zip(self._signs, self.layout.kept, self.layout.n_chunks)
            ]
        return [torch.from_numpy(a) for a in self._vals]

    @property
    def signs(self) -> list[torch.Tensor]:
        """Per tensor, the packed sign bits (uint8, ``pack_signs`` layout); ``sign`` only."""
        if self._signs is None:
            raise ValueError(f"payload uses value codec {self.value_codec!r}, not 'sign'")
        return [torch.from_numpy(s) for s in self._signs]

    @property
    def decompress_codec(self) -> str:
        """The ``value_codec`` to pass to :func:`distro_kernels.decompress`."""
        return "sign" if self._signs is not None else "f32"

    def wire_values(self, t: int) -> torch.Tensor:
        """Tensor ``t``'s values ready for ``decompress(value_codec=self.decompress_codec)``:
        float32 ``(n_chunks, k_eff)``, or the packed uint8 signs."""
        if self._signs is not None:
            return torch.from_numpy(self._signs[t])
        return torch.from_numpy(self._vals[t])

    def tensor(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices, wire_values)`` of tensor ``t``."""
        return torch.from_numpy(self._idx[t]), self.wire_values(t)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Payload):
            return NotImplemented
        head = (self.step, self.sender, self.run_id, self.layout, self.value_codec)
        if head != (other.step, other.sender, other.run_id, other.layout, other.value_codec):
            return False
        if not all(np.array_equal(a, b) for a, b in zip(self._idx, other._idx)):
            return False
        mine = self._signs if self._signs is not None else self._vals
        theirs = other._signs if other._signs is not None else other._vals
        # bitwise equality (canonical values have no -0 or NaN, so this is value equality)
        return all(
            a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))
            for a, b in zip(mine, theirs)
        )

    __hash__ = None  # mutable arrays inside

    def __repr__(self) -> str:
        return (
            f"Payload(step={self.step}, sender={self.sender}, run_id={self.run_id.hex()}, "
            f"{self.layout!r}, value_codec={self.value_codec!r}, index_codec={self.index_codec!r})"
        )

    # ------------------------------------------------------------------ encode
    def to_bytes(self, signing_key=None) -> bytes:
        """The canonical message (docs/wire-format.md): the same payload gives the same bytes.

        ``signing_key`` (an Ed25519 private key, :mod:`.signing`): a signed message, the
        header's ``signed`` flag set and the 64-byte signature after the trailer. Without it
        the bytes are exactly the unsigned format's."""
        lay = self.layout
        vc, ic = VALUE_CODECS[self.value_codec], INDEX_CODECS[self.index_codec]
        parts: list[bytes] = []
        for t in range(lay.n_tensors):
            idx, w = self._idx[t], lay.widths[t]
            fixed_size = lay.fixed_index_bytes(t)
            use_rice, r = False, 0
            if ic != INDEX_FIXED:
                r, rice_size = rice.plan(idx, w)
                use_rice = ic == INDEX_RICE or RICE_LEN_SIZE + rice_size < fixed_size
            if use_rice:
                unary, rem = rice.encode_indices(idx, r, rice_size)
                parts += [SECTION.pack(INDEX_RICE, r), RICE_LEN.pack(len(unary)), unary, rem]
            else:
                parts += [SECTION.pack(INDEX_FIXED, 0), bitpack.pack(idx, w)]
            if vc == VALUE_SIGN:
                parts.append(self._signs[t].tobytes())
            else:
                parts.append(vcodec.encode(self._vals[t], vc))
        body = b"".join(parts)
        signed = signing_key is not None
        total = HEADER_SIZE + len(body) + TRAILER_SIZE + (SIGNATURE_SIZE if signed else 0)
        header = HEADER.pack(
            MAGIC, VERSION, ic, vc, FLAG_SIGNED if signed else 0, lay.chunk, lay.k,
            lay.n_tensors, self.step, total, self.sender, 0, self.run_id, lay.digest,
            lay.total_kept, lay.numel,
        )
        if signed:
            from .signing import seal

            return seal(header, body, signing_key)
        return b"".join((header, body, digest16(header, body)))

    # ------------------------------------------------------------------ parse
    @classmethod
    def from_bytes(
        cls, data, layout: Layout, *, expect_step: int | None = None, expect_run_id=None,
        expect_sender: int | None = None, max_bytes: int | None = None, manifest=None,
    ) -> "Payload":
        """Parse and validate a message from an untrusted peer.

        Every check of SPEC section 5 runs before any tensor is built, and every length is
        checked against the bytes left, ``max_bytes`` (default: the largest valid payload for
        ``layout``) and the layout's sizes before anything is allocated from it. Raises a
        :class:`~.errors.PayloadError` subclass naming the rule; returns a new ``Payload``
        only when the whole message is valid.

        ``manifest`` (a :class:`.signing.Manifest`): the run is signed; the payload must carry
        a signature (``MissingSignature``) by the manifest key of its header's sender
        (``UnknownSender``, ``BadSignature``), and the manifest's run id (``WrongRun``). These
        are checked right after the trailer digest, before any other field. Without a
        manifest a signed payload parses too (its signature is not checked).
        """
        if not isinstance(layout, Layout):
            raise TypeError("layout must be a wire.Layout")
        mv = as_buffer(data)
        limit = layout.max_payload_bytes() if max_bytes is None else int(max_bytes)
        h = read_header(mv, limit)
        n = len(mv)
        signed = bool(h.flags & FLAG_SIGNED)
        sig_size = SIGNATURE_SIZE if signed else 0
        if n < HEADER_SIZE + TRAILER_SIZE + sig_size:
            raise Truncated(f"{n} bytes: a signed message needs at least "
                            f"{HEADER_SIZE + TRAILER_SIZE + sig_size}")
        end = n - TRAILER_SIZE - sig_size  # where the trailer digest starts
        if digest16(mv[:end]) != bytes(mv[end : end + TRAILER_SIZE]):
            raise DigestMismatch("trailer digest does not match the message", offset=end)
        if h.flags & ~FLAG_SIGNED or h.reserved != 0:
            raise ReservedField("reserved header fields must be zero", offset=8)
        if manifest is not None:
            if not signed:
                raise MissingSignature("the run is signed; this payload carries no signature",
                                       offset=8)
            if h.sender not in manifest:
                raise UnknownSender(f"sender {h.sender} is not in the run's manifest", offset=40)
            if h.run_id != manifest.run_id:
                raise WrongRun(f"run id {h.run_id.hex()} is not the manifest's run "
                               f"{manifest.run_id.hex()}", offset=48)
            sig_at = n - SIGNATURE_SIZE
            if not manifest.verify(h.sender, mv[sig_at:], mv[:sig_at]):
                raise BadSignature(f"signature does not verify under sender {h.sender}'s key",
                                   offset=sig_at)
        if h.index_codec not in INDEX_CODEC_NAMES:
            raise UnknownCodec(f"index codec id {h.index_codec}", offset=6)
        if h.value_codec not in VALUE_CODEC_NAMES:
            raise UnknownCodec(f"value codec id {h.value_codec}", offset=7)
        if expect_run_id is not None and h.run_id != run_id_bytes(expect_run_id):
            raise WrongRun(f"run id {h.run_id.hex()}, expected "
                           f"{run_id_bytes(expect_run_id).hex()}", offset=48)
        if expect_step is not None and h.step != int(expect_step):
            raise WrongStep(f"step {h.step}, expected {int(expect_step)}", offset=24)
        if expect_sender is not None and h.sender != int(expect_sender):
            raise WrongSender(f"sender {h.sender}, expected {int(expect_sender)}", offset=40)
        if h.k != layout.k:
            raise WrongK(f"k={h.k}, expected {layout.k}", offset=16)
        if h.chunk != layout.chunk:
            raise LayoutMismatch(f"chunk target {h.chunk}, expected {layout.chunk}", offset=12)
        if h.n_tensors != layout.n_tensors:
            raise LayoutMismatch(f"{h.n_tensors} tensors, expected {layout.n_tensors}", offset=20)
        if h.layout_digest != layout.digest:
            raise LayoutMismatch("layout digest differs (another model's shapes)", offset=64)
        if h.kept != layout.total_kept or h.params != layout.numel:
            raise LayoutMismatch(
                f"{h.kept} kept / {h.params} params, expected {layout.total_kept} / "
                f"{layout.numel}", offset=80,
            )
        value_codec = VALUE_CODEC_NAMES[h.value_codec]
        if n - sig_size < layout.min_payload_bytes(value_codec):
            raise Truncated(
                f"{n} bytes; the smallest valid payload for this layout and codec is "
                f"{layout.min_payload_bytes(value_codec)}"
            )
        idx_out, vals_out = [], []
        pos = HEADER_SIZE
        for t in range(layout.n_tensors):
            count = layout.kept[t]
            nb = value_bytes(h.value_codec, count)
            pos, idx = _parse_indices(mv, pos, end, layout, t, h.index_codec, nb)
            if nb > end - pos:
                raise Truncated(f"values need {nb} bytes, {end - pos} left", tensor=t, offset=pos)
            vals_out.append(vcodec.decode(mv, pos, count, h.value_codec, t))
            idx_out.append(idx)
            pos += nb
        if pos != end:
            raise TrailingBytes(f"{end - pos} bytes between the last section and the trailer",
                                offset=pos)
        if h.value_codec == VALUE_SIGN:
            vals, signs = None, vals_out
        else:
            vals = [v.reshape(nc, -1) for v, nc in zip(vals_out, layout.n_chunks)]
            signs = None
        return cls._from_parts(
            h.step, h.sender, h.run_id, layout, value_codec, INDEX_CODEC_NAMES[h.index_codec],
            idx_out, vals, signs,
        )


# ---------------------------------------------------------------------- helpers


def _check_indices(layout: Layout, t: int, a: np.ndarray) -> np.ndarray:
    nc, ke, E = layout.n_chunks[t], layout.k_effs[t], layout.elements[t]
    if a.dtype.kind not in "iu":
        raise TypeError(f"indices[{t}] must be integers, got {a.dtype}")
    if a.size != nc * ke:
        raise ValueError(f"indices[{t}] has {a.size} elements, expected {nc} x {ke}")
    a = a.reshape(nc, ke)
    if a.min() < 0 or a.max() >= E:
        raise ValueError(f"indices[{t}] must be in [0, {E})")
    if ke > 1 and (a[:, 1:] <= a[:, :-1]).any():
        raise ValueError(f"indices[{t}] must be strictly ascending in every chunk")
    return np.array(a, dtype=np.int32, order="C", copy=True)  # never alias the caller's buffer


def _check_float_values(layout: Layout, t: int, v: np.ndarray) -> np.ndarray:
    if v.dtype.kind != "f":
        raise TypeError(f"values[{t}] must be floating point, got {v.dtype}")
    if v.size != layout.kept[t]:
        raise ValueError(f"values[{t}] has {v.size} elements, expected {layout.kept[t]}")
    return v.astype(np.float32, copy=False).reshape(-1)


def _parse_indices(
    mv, pos: int, end: int, layout: Layout, t: int, header_codec: int, value_nb: int
):
    """Parse tensor ``t``'s section header and index streams at ``pos``; return
    ``(new pos, int32 (n_chunks, k_eff))``."""
    if SECTION_SIZE > end - pos:
        raise Truncated("no room for the section header", tensor=t, offset=pos)
    codec, param = SECTION.unpack_from(mv, pos)
    if codec not in (INDEX_FIXED, INDEX_RICE) or (
        header_codec != INDEX_AUTO and codec != header_codec
    ):
        raise UnknownCodec(
            f"section index codec {codec} under header codec {header_codec}", tensor=t,
            offset=pos,
        )
    pos += SECTION_SIZE
    count, w = layout.kept[t], layout.widths[t]
    nc, ke, E = layout.n_chunks[t], layout.k_effs[t], layout.elements[t]
    if codec == INDEX_FIXED:
        if param != 0:
            raise ReservedField("fixed-width section parameter must be 0", tensor=t,
                                offset=pos - 1)
        nb = bitpack.packed_size(count, w)
        # the values follow, so the section needs them too (this bounds the allocation
        # by the bytes present even when w == 0)
        if nb + value_nb > end - pos:
            raise Truncated(f"indices need {nb} bytes, {end - pos} left", tensor=t, offset=pos)
        seg = mv[pos : pos + nb]
        if not bitpack.padding_is_zero(seg, count, w):
            raise ReservedField("index padding bits are not zero", tensor=t, offset=pos + nb - 1)
        idx = bitpack.unpack(seg, count, w).reshape(nc, ke)
        if E != (1 << w) and count and int(idx.max()) >= E:
            bad = int(np.argmax(idx.reshape(-1) >= E))
            raise IndexOutOfRange(f"index {int(idx.reshape(-1)[bad])} >= E={E} "
                                  f"(chunk {bad // ke})", tensor=t, offset=pos)
        if ke > 1:
            bad = idx[:, 1:] <= idx[:, :-1]
            if bad.any():
                raise UnsortedIndices(
                    f"chunk {int(np.argmax(bad.any(axis=1)))} is not strictly ascending",
                    tensor=t, offset=pos,
                )
        return pos + nb, idx.view(np.int32)  # values < 2**16: same bits
    # Rice
    r = param
    if r > w:
        raise UnknownCodec(f"rice parameter {r} > index width {w}", tensor=t, offset=pos - 1)
    if RICE_LEN_SIZE > end - pos:
        raise Truncated("no room for the unary stream length", tensor=t, offset=pos)
    (ulen,) = RICE_LEN.unpack_from(mv, pos)
    pos += RICE_LEN_SIZE
    nrem = bitpack.packed_size(count, r)
    if ulen > end - pos or nrem + value_nb > end - pos - ulen:
        raise Truncated(f"unary stream of {ulen} bytes and {nrem} remainder bytes, "
                        f"{end - pos} left", tensor=t, offset=pos - RICE_LEN_SIZE)
    umax = (layout.rice_unary_max_bits(t, r) + 7) // 8
    if ulen > umax:
        raise LengthOverLimit(f"unary stream of {ulen} bytes, at most {umax} for this tensor",
                              tensor=t, offset=pos - RICE_LEN_SIZE)
    if ulen < (count + 7) // 8:
        raise MalformedStream(f"unary stream of {ulen} bytes cannot hold {count} codewords",
                              tensor=t, offset=pos)
    q = rice.decode_quotients(mv[pos : pos + ulen], count)
    if q is None:
        raise MalformedStream(
            f"unary stream does not hold exactly {count} codewords ending in its last byte",
            tensor=t, offset=pos,
        )
    pos += ulen
    qmax = (E - 1) >> r
    if int(q.max()) > qmax:
        raise IndexOutOfRange(f"a gap quotient exceeds {qmax} (index would be >= E={E})",
                              tensor=t, offset=pos - ulen)
    seg = mv[pos : pos + nrem]
    if r and not bitpack.padding_is_zero(seg, count, r):
        raise ReservedField("remainder padding bits are not zero", tensor=t,
                            offset=pos + nrem - 1)
    g = q << r
    if r:
        g |= bitpack.unpack(seg, count, r)
    g += 1
    idx = np.cumsum(g.reshape(nc, ke), axis=1)
    idx -= 1
    last = idx[:, -1]
    if int(last.max()) >= E:
        raise IndexOutOfRange(f"chunk {int(np.argmax(last >= E))} decodes an index >= E={E}",
                              tensor=t, offset=pos - ulen)
    return pos + nrem, idx.astype(np.int32)
