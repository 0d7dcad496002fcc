"""The wire format of SPEC section 5: one message per peer per step for the whole model.

Byte layout: docs/wire-format.md. Typical use::

    layout = wire.Layout([p.shape for p in params], chunk=64, k=32)
    msg = wire.Payload(step, rank, run_id, layout, indices, values, "sign").to_bytes()
    peer = wire.Payload.from_bytes(data, layout, expect_step=step, expect_run_id=run_id)
    idx, vals = peer.tensor(t)  # feed decompress(..., value_codec=peer.decompress_codec)

Signed runs (SPEC 5, :mod:`.signing`): ``to_bytes(signing_key=key)`` and
``from_bytes(..., manifest=manifest)``.
"""

from .errors import (
    RULES,
    BadMagic,
    BadSignature,
    BadValue,
    DigestMismatch,
    IndexOutOfRange,
    LayoutMismatch,
    LengthOverLimit,
    MalformedStream,
    MissingSignature,
    NonFiniteValue,
    PayloadError,
    ReservedField,
    TrailingBytes,
    Truncated,
    SignatureError,
    UnknownCodec,
    UnknownSender,
    UnsortedIndices,
    UnsupportedVersion,
    ValueOutOfRange,
    WrongK,
    WrongRun,
    WrongSender,
    WrongStep,
)
from . import signing
from .format import (FLAG_SIGNED, HEADER_SIZE, INDEX_CODECS, MAGIC, SIGNATURE_SIZE,
                     TRAILER_SIZE, VALUE_CODECS, VERSION)
from .header import Header, read_header, run_id_bytes
from .layout import Layout, layout_digest
from .payload import Payload
from .signing import Manifest
from .stats import WireStats, stats
from .gather import gather_tensor

__all__ = [
    "BadMagic", "BadSignature", "BadValue", "DigestMismatch", "FLAG_SIGNED", "HEADER_SIZE",
    "Header", "INDEX_CODECS", "IndexOutOfRange", "Layout", "LayoutMismatch", "LengthOverLimit",
    "MAGIC", "MalformedStream", "Manifest", "MissingSignature", "NonFiniteValue", "Payload",
    "PayloadError", "RULES", "ReservedField", "SIGNATURE_SIZE", "SignatureError",
    "TRAILER_SIZE", "TrailingBytes", "Truncated", "UnknownCodec", "UnknownSender",
    "UnsortedIndices", "UnsupportedVersion", "VALUE_CODECS", "VERSION", "ValueOutOfRange",
    "WireStats", "WrongK", "WrongRun", "WrongSender", "WrongStep", "gather_tensor",
    "layout_digest", "read_header", "run_id_bytes", "signing", "stats",
]
