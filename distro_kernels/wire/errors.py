"""Typed parse errors: one :class:`PayloadError` subclass per rule of SPEC section 5.

Every error a parser raises for bad bytes is a ``PayloadError``; nothing else escapes
``Payload.from_bytes`` for any input. Each class carries a short ``rule`` id (stable, for logs
and for the transport's exclusion reports), and each instance the tensor and byte offset where
the rule failed when that is known.
"""

from __future__ import annotations


class PayloadError(ValueError):
    """A payload broke a rule of the wire format; it must be dropped as a whole."""

    rule = "payload"

    def __init__(self, message: str, *, tensor: int | None = None, offset: int | None = None):
        self.tensor = tensor
        self.offset = offset
        where = []
        if tensor is not None:
            where.append(f"tensor {tensor}")
        if offset is not None:
            where.append(f"byte {offset}")
        prefix = f"[{self.rule}] " + (f"({', '.join(where)}) " if where else "")
        super().__init__(prefix + message)


class BadMagic(PayloadError):
    """The first four bytes are not the format's magic."""

    rule = "magic"


class UnsupportedVersion(PayloadError):
    """The format version is not one this parser reads."""

    rule = "version"


class Truncated(PayloadError):
    """The data ends before a field or section that the header or layout requires."""

    rule = "truncated"


class LengthOverLimit(PayloadError):
    """A length (the message, or a section's length field) exceeds ``max_bytes`` or the
    largest size the layout allows for that section."""

    rule = "length_limit"


class TrailingBytes(PayloadError):
    """Bytes left over: after the declared total length, or between the last section and
    the trailer."""

    rule = "trailing_bytes"


class UnknownCodec(PayloadError):
    """An index or value codec id (or a codec parameter) that the format does not define, or
    a section codec that contradicts the header's."""

    rule = "codec"


class ReservedField(PayloadError):
    """A reserved header field or a padding bit is not zero (bytes must be canonical)."""

    rule = "reserved"


class LayoutMismatch(PayloadError):
    """The payload was made for another model layout (digest, chunk target, tensor count,
    coefficient or parameter count differ from the receiver's)."""

    rule = "layout"


class WrongK(PayloadError):
    """The header's ``k`` is not the receiver's."""

    rule = "k"


class IndexOutOfRange(PayloadError):
    """A coefficient index is ``>= E`` (the chunk's element count)."""

    rule = "index_range"


class UnsortedIndices(PayloadError):
    """Indices in a chunk are not strictly ascending (unsorted or duplicated)."""

    rule = "index_order"


class MalformedStream(PayloadError):
    """An entropy-coded index stream does not decode to exactly one index per kept
    coefficient (too few or too many codewords, or a non-minimal length)."""

    rule = "entropy_stream"


class BadValue(PayloadError):
    """A value breaks SPEC 4.1: non-finite, or ``|v| >= 2**64`` (checked after widening)."""

    rule = "value"


class NonFiniteValue(BadValue):
    """A value is NaN or infinite."""

    rule = "value_nonfinite"


class ValueOutOfRange(BadValue):
    """A finite value with ``|v| >= 2**64``."""

    rule = "value_range"


class DigestMismatch(PayloadError):
    """The trailer's BLAKE2b-128 does not match the bytes before it."""

    rule = "digest"


class WrongStep(PayloadError):
    """The payload's step is not the one the caller expects."""

    rule = "step"


class WrongRun(PayloadError):
    """The payload's run id is not the one the caller expects."""

    rule = "run"


class WrongSender(PayloadError):
    """The payload's sender id is not the peer the caller received it from."""

    rule = "sender"


class SignatureError(PayloadError):
    """A signed-run rule (SPEC 5): the parser was given a manifest and the payload is not
    signed by the manifest key of its header's sender."""

    rule = "signature"


class MissingSignature(SignatureError):
    """The payload carries no signature, and the run is signed."""

    rule = "signature_missing"


class UnknownSender(SignatureError):
    """The header's sender id is not a peer of the run's manifest."""

    rule = "sender_unknown"


class BadSignature(SignatureError):
    """The signature does not verify under the manifest key of the header's sender (forged,
    altered, or signed by another peer's key)."""

    rule = "signature_invalid"


#: Every concrete rule, for documentation and tests.
RULES: tuple[type[PayloadError], ...] = (
    BadMagic, UnsupportedVersion, Truncated, LengthOverLimit, TrailingBytes, UnknownCodec,
    ReservedField, LayoutMismatch, WrongK, IndexOutOfRange, UnsortedIndices, MalformedStream,
    NonFiniteValue, ValueOutOfRange, DigestMismatch, WrongStep, WrongRun, WrongSender,
    MissingSignature, UnknownSender, BadSignature,
)
