"""Value codecs (``f32``, ``bf16``, ``f16``, ``sign``) and SPEC 4.1's value rules.

Encode side: :func:`quantize` rounds float32 values to the codec (round to nearest even),
checks them, and canonicalises them, so what a sender keeps is exactly what every receiver
decodes. Parse side: :func:`decode` widens to float32, rejects non-finite values and
``|v| >= 2**64`` (after widening), and canonicalises (``-0 -> +0``, ``|v| < 2**-55 -> +0``).
``sign`` carries 1 bit per value (bit = signbit, LSB-first), exactly :func:`pack_signs`.
"""

from __future__ import annotations

import numpy as np

from .errors import NonFiniteValue, ReservedField, ValueOutOfRange
from .format import FLUSH_BELOW, VALUE_BF16, VALUE_F16, VALUE_F32, VALUE_LIMIT, VALUE_SIGN

_LIMIT = np.float32(VALUE_LIMIT)
_FLUSH = np.float32(FLUSH_BELOW)
_ZERO = np.float32(0.0)


def canonicalize(v: np.ndarray) -> np.ndarray:
    """``-0 -> +0`` and ``|v| < 2**-55 -> +0`` (a new float32 array)."""
    return np.where(np.abs(v) < _FLUSH, _ZERO, v).astype(np.float32, copy=False)


def bad_value(v: np.ndarray) -> tuple[str, int] | None:
    """``None`` when every value is finite with ``|v| < 2**64``; else (kind, first position)."""
    ok = np.abs(v) < _LIMIT  # False for NaN and +-inf too
    if ok.all():
        return None
    pos = int(np.argmin(ok))
    return ("nonfinite" if not np.isfinite(v[pos]) else "range"), pos


def to_bf16_bits(v: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even (finite inputs)."""
    u = v.astype(np.float32, copy=False).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def quantize(v: np.ndarray, codec: int) -> np.ndarray:
    """Float32 values as the receiver will see them under ``codec`` (not for ``sign``).

    Raises ``ValueError`` when a value is not sendable (non-finite, or ``>= 2**64`` after
    rounding, e.g. an ``f16`` overflow)."""
    v = np.asarray(v, dtype=np.float32)
    bad = bad_value(v)
    if bad is None:
        if codec == VALUE_BF16:
            v = from_bf16_bits(to_bf16_bits(v))
        elif codec == VALUE_F16:
            with np.errstate(over="ignore"):
                v = v.astype(np.float16).astype(np.float32)
        elif codec != VALUE_F32:
            raise ValueError(f"quantize: unsupported codec id {codec}")
        bad = bad_value(v)
    if bad is not None:
        kind, pos = bad
        raise ValueError(
            f"value {v.reshape(-1)[pos]!r} at position {pos} cannot be sent "
            f"({'non-finite' if kind == 'nonfinite' else '|v| >= 2**64'}"
            f"{' after rounding to the codec' if codec in (VALUE_BF16, VALUE_F16) else ''})"
        )
    return canonicalize(v)


def encode(v: np.ndarray, codec: int) -> bytes:
    """Bytes of already-quantized float32 values (not ``sign``)."""
    if codec == VALUE_F32:
        return v.astype("<f4", copy=False).tobytes()
    if codec == VALUE_BF16:
        return to_bf16_bits(v).astype("<u2", copy=False).tobytes()
    if codec == VALUE_F16:
        return v.astype("<f2").tobytes()
    raise ValueError(f"encode: unsupported codec id {codec}")


def pack_signs(v: np.ndarray) -> np.ndarray:
    """Signbits of float32 values, LSB-first -> uint8 (same bytes as ``ops.pack_signs``)."""
    return np.packbits(np.signbit(np.asarray(v, dtype=np.float32).reshape(-1)), bitorder="little")


def unpack_signs(packed: np.ndarray, count: int) -> np.ndarray:
    """``count`` float32 values of ``+1``/``-1`` from packed signbits."""
    bits = np.unpackbits(packed, count=count, bitorder="little")
    return (np.float32(1.0) - np.float32(2.0) * bits.astype(np.float32)).astype(np.float32)


def sign_padding_ok(packed: np.ndarray, count: int) -> bool:
    rem = count % 8
    return rem == 0 or (int(packed[-1]) >> rem) == 0


def decode(buf, offset: int, count: int, codec: int, tensor: int) -> np.ndarray:
    """Parse ``count`` values at ``offset`` of ``buf`` (the caller checked the length).

    Returns canonical float32 values, or for ``sign`` the packed uint8 bits (a copy)."""
    if codec == VALUE_SIGN:
        packed = np.frombuffer(buf, dtype=np.uint8, count=(count + 7) // 8, offset=offset)
        if not sign_padding_ok(packed, count):
            raise ReservedField("sign padding bits are not zero", tensor=tensor, offset=offset)
        return packed.copy()
    if codec == VALUE_F32:
        v = np.frombuffer(buf, dtype="<f4", count=count, offset=offset)
        width = 4
    elif codec == VALUE_BF16:
        v = from_bf16_bits(np.frombuffer(buf, dtype="<u2", count=count, offset=offset))
        width = 2
    elif codec == VALUE_F16:
        v = np.frombuffer(buf, dtype="<f2", count=count, offset=offset).astype(np.float32)
        width = 2
    else:  # the header check makes this unreachable
        raise ValueError(f"decode: unsupported codec id {codec}")
    bad = bad_value(v)
    if bad is not None:
        kind, pos = bad
        cls = NonFiniteValue if kind == "nonfinite" else ValueOutOfRange
        raise cls(
            f"value {float(v[pos])!r} (position {pos})", tensor=tensor,
            offset=offset + width * pos,
        )
    return canonicalize(v)
