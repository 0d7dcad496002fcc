"""Constants of the wire format, version 1 (docs/wire-format.md is the byte-by-byte text).

All integers are little-endian. The header is a fixed 96-byte struct; it is followed by one
section per tensor (layout order) and a 16-byte BLAKE2b trailer over every byte before it.
"""

from __future__ import annotations

import hashlib
import struct

MAGIC = b"DKWP"  # "distro_kernels wire payload"
VERSION = 1

# magic, version, index codec, value codec, flags, chunk target, k, tensor count, step,
# total length, sender, reserved, run id, layout digest, kept coefficients, parameters
HEADER = struct.Struct("<4sHBBIIIIQQII16s16sQQ")
HEADER_SIZE = HEADER.size  # 96
TRAILER_SIZE = 16
DIGEST_SIZE = 16

# byte offsets of header fields (for docs, tests and stats)
OFF_MAGIC, OFF_VERSION, OFF_INDEX_CODEC, OFF_VALUE_CODEC = 0, 4, 6, 7
OFF_FLAGS, OFF_CHUNK, OFF_K, OFF_TENSORS = 8, 12, 16, 20
OFF_STEP, OFF_TOTAL_LEN, OFF_SENDER, OFF_RESERVED = 24, 32, 40, 44
OFF_RUN_ID, OFF_LAYOUT_DIGEST, OFF_KEPT, OFF_PARAMS = 48, 64, 80, 88

# header flags: bit 1 says an Ed25519 signature (64 bytes) follows the trailer (SPEC 5);
# every other bit is reserved and must be zero (bit 0 stays reserved: v1 readers refused it)
FLAG_SIGNED = 0x2
SIGNATURE_SIZE = 64

# section header: index codec (u8), codec parameter (u8); rice adds the unary length (u64)
SECTION = struct.Struct("<BB")
SECTION_SIZE = SECTION.size  # 2
RICE_LEN = struct.Struct("<Q")
RICE_LEN_SIZE = RICE_LEN.size  # 8

# header index codec ids: what each section may use
INDEX_FIXED, INDEX_RICE, INDEX_AUTO = 0, 1, 2
INDEX_CODECS = {"fixed": INDEX_FIXED, "rice": INDEX_RICE, "auto": INDEX_AUTO}
INDEX_CODEC_NAMES = {v: k for k, v in INDEX_CODECS.items()}
# section index codec ids (a section is always fixed or rice; "auto" picks per tensor)
SECTION_CODECS = (INDEX_FIXED, INDEX_RICE)

VALUE_F32, VALUE_BF16, VALUE_F16, VALUE_SIGN = 0, 1, 2, 3
VALUE_CODECS = {"f32": VALUE_F32, "bf16": VALUE_BF16, "f16": VALUE_F16, "sign": VALUE_SIGN}
VALUE_CODEC_NAMES = {v: k for k, v in VALUE_CODECS.items()}

# SPEC 4.1 value bounds
VALUE_LIMIT = 2.0**64  # |v| >= this rejects the payload
FLUSH_BELOW = 2.0**-55  # |v| < this becomes +0

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1


def digest16(*parts: bytes | memoryview) -> bytes:
    """BLAKE2b with a 16-byte digest over the concatenation of ``parts``."""
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for p in parts:
        h.update(p)
    return h.digest()


def value_bytes(codec: int, count: int) -> int:
    """Bytes that ``count`` values take under value codec id ``codec``."""
    if codec == VALUE_F32:
        return 4 * count
    if codec in (VALUE_BF16, VALUE_F16):
        return 2 * count
    if codec == VALUE_SIGN:
        return (count + 7) // 8
    raise ValueError(f"unknown value codec id {codec}")


def index_bits(elements: int) -> int:
    """Fixed-width index bits for a chunk of ``elements`` coefficients: ``ceil(log2(E))``."""
    return (int(elements) - 1).bit_length()
