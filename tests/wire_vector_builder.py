"""Known-answer wire vectors derived from docs/wire-format.md (and SPEC section 1) alone.

This is a second, deliberately plain implementation of the version-1 message: one
``struct.pack`` per header field, bit streams built one bit at a time in Python lists, the
Rice code written codeword by codeword, ``hashlib.blake2b(digest_size=16)`` for both digests.
It must not import ``distro_kernels`` (nor numpy or torch): a change that breaks the format
the same way in ``distro_kernels.wire``'s encoder and parser cannot also change these bytes.

The cases live in ``tests/wire_vectors/cases.json`` (inputs as plain lists) and their bytes in
``tests/wire_vectors/<name>.hex`` (hex with ``#`` comments, one line per field)::

    python tests/wire_vector_builder.py           # check every .hex file against the builder
    python tests/wire_vector_builder.py --write   # (re)write the generated .hex files

Files whose case says ``"hand_written": true`` are never overwritten: they were written and
commented by hand from the doc, and the builder must reproduce them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
VECTOR_DIR = os.path.join(HERE, "wire_vectors")
CASES_FILE = os.path.join(VECTOR_DIR, "cases.json")

# docs/wire-format.md 1.1 (codec ids), 3 (value codecs), 1.4 (policy byte)
INDEX_CODEC_IDS = {"fixed": 0, "rice": 1, "auto": 2}
VALUE_CODEC_IDS = {"f32": 0, "bf16": 1, "f16": 2, "sign": 3}
POLICY_IDS = {"divisor": 0, "pad": 1}
SECTION_FIXED, SECTION_RICE = 0, 1
LAYOUT_DOMAIN = b"distro_kernels/wire/layout/v1\x00"  # 30 bytes, 1.4
HEADER_BYTES, TRAILER_BYTES = 96, 16
FLUSH_BELOW = 2.0**-55  # SPEC 4.1: |v| < this becomes +0
VALUE_LIMIT = 2.0**64  # SPEC 4.1: |v| >= this is refused


def blake2b_128(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


# ------------------------------------------------------------------ geometry (SPEC section 1)


def chunk_len(d: int, s: int, policy: str) -> int:
    """Divisor rule: the largest divisor of d that is <= s (d itself when d <= s); pad: min."""
    if policy == "pad":
        return min(s, d)
    if d <= s:
        return d
    return max(c for c in range(1, s + 1) if d % c == 0)


def tensor_geometry(shape, s: int, policy: str) -> tuple[int, int]:
    """(chunk count, elements per chunk E) of one tensor."""
    shape = list(shape)
    if len(shape) >= 2:
        batch = math.prod(shape[:-2])
        m, n = shape[-2], shape[-1]
        cm, cn = chunk_len(m, s, policy), chunk_len(n, s, policy)
        return batch * -(-m // cm) * -(-n // cn), cm * cn
    n = shape[0] if shape else 1  # a 0-d tensor is 1-D of length 1
    cn = chunk_len(n, s, policy)
    return -(-n // cn), cn


def index_width(E: int) -> int:
    """w = ceil(log2(E)), 0 when E = 1."""
    w = 0
    while (1 << w) < E:
        w += 1
    return w


# ------------------------------------------------------------------ bit streams (2.1)


def bits_to_bytes(bits: list[int]) -> bytes:
    """Stream bit b is bit b % 8 (LSB = bit 0) of byte b // 8; the last byte is zero-padded."""
    out = bytearray((len(bits) + 7) // 8)
    for b, bit in enumerate(bits):
        if bit:
            out[b // 8] |= 1 << (b % 8)
    return bytes(out)


def fixed_width_bits(values: list[int], w: int) -> list[int]:
    """Each value in w bits, least significant bit first, back to back."""
    bits = []
    for v in values:
        for j in range(w):
            bits.append((v >> j) & 1)
    return bits


# ------------------------------------------------------------------ Rice (2.2, 2.3)


def chunk_gaps(chunks: list[list[int]]) -> list[int]:
    """g_0 = i_0, g_j = i_j - i_(j-1) - 1, restarting in every chunk."""
    gaps = []
    for chunk in chunks:
        prev = -1
        for i in chunk:
            gaps.append(i - prev - 1)
            prev = i
    return gaps


def rice_streams(gaps: list[int], r: int) -> tuple[bytes, bytes]:
    """(unary stream, remainder stream): q zero bits then a one bit per gap; remainders at r."""
    unary = []
    for g in gaps:
        unary += [0] * (g >> r) + [1]
    remainders = [g & ((1 << r) - 1) for g in gaps]
    return bits_to_bytes(unary), bits_to_bytes(fixed_width_bits(remainders, r))


def rice_parameter(gaps: list[int], w: int) -> int:
    """2.3: r0 = floor(log2(mean gap * 0.69314718 + 1e-12)) when the mean gap is > 1, else 0;
    of r0-1 .. r0+2 clamped to [0, w], the one with the fewest unary + remainder bytes, ties
    to the smaller."""
    mean = sum(gaps) / len(gaps) if gaps else 0.0
    r0 = math.floor(math.log2(mean * 0.69314718 + 1e-12)) if mean > 1 else 0
    best_r, best_size = None, None
    for r in sorted({min(max(c, 0), w) for c in (r0 - 1, r0, r0 + 1, r0 + 2)}):
        unary, rem = rice_streams(gaps, r)
        if best_size is None or len(unary) + len(rem) < best_size:
            best_r, best_size = r, len(unary) + len(rem)
    return best_r


# ------------------------------------------------------------------ values (3)


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def from_f32_bits(u: int) -> float:
    return struct.unpack("<f", struct.pack("<I", u))[0]


def exact_f32(x: float) -> float:
    """Inputs must already be binary32 values (so no double rounding can hide anywhere)."""
    y = from_f32_bits(f32_bits(x))
    if y != x:
        raise ValueError(f"{x!r} is not a binary32 value")
    return x


def bf16_top_bits(x: float) -> int:
    """The top 16 bits of binary32 x, rounded to nearest even on the 16 dropped bits."""
    u = f32_bits(x)
    top, low = u >> 16, u & 0xFFFF
    if low > 0x8000 or (low == 0x8000 and top & 1):
        top += 1
    return top


def quantize(x: float, codec: str) -> float:
    """The binary32 value a receiver decodes for x (rounding, SPEC 4.1 checks, canonical)."""
    x = exact_f32(x)
    if codec == "bf16":
        x = from_f32_bits(bf16_top_bits(x) << 16)
    elif codec == "f16":
        x = struct.unpack("<e", struct.pack("<e", x))[0]  # IEEE half, nearest even
    if not abs(x) < VALUE_LIMIT:
        raise ValueError(f"{x!r} cannot be sent")
    return 0.0 if abs(x) < FLUSH_BELOW else x  # -0 and tiny values -> +0


def value_bytes(xs: list[float], codec: str) -> tuple[bytes, list[float]]:
    """(value data, decoded values) of one tensor."""
    if codec == "sign":
        bits = [f32_bits(exact_f32(x)) >> 31 for x in xs]  # signbit, raw (not canonicalised)
        return bits_to_bytes(bits), [-1.0 if b else 1.0 for b in bits]
    q = [quantize(x, codec) for x in xs]
    if codec == "f32":
        data = b"".join(struct.pack("<f", v) for v in q)
    elif codec == "bf16":
        data = b"".join(struct.pack("<H", f32_bits(v) >> 16) for v in q)
    elif codec == "f16":
        data = b"".join(struct.pack("<e", v) for v in q)
    else:
        raise ValueError(f"unknown value codec {codec!r}")
    return data, q


# ------------------------------------------------------------------ layout digest (1.4)


def layout_digest(shapes, policy: str) -> bytes:
    data = LAYOUT_DOMAIN + struct.pack("<B", POLICY_IDS[policy]) + struct.pack("<I", len(shapes))
    for shape in shapes:
        data += struct.pack("<B", len(shape))
        for d in shape:
            data += struct.pack("<Q", d)
    return blake2b_128(data)


# ------------------------------------------------------------------ the message


class Message:
    """The bytes of one message and, for each field, (offset, bytes, name, tensor, note)."""

    def __init__(self):
        self.fields: list[tuple[int, bytes, str, int | None, str]] = []
        self.size = 0

    def add(self, name: str, data: bytes, note: str = "", tensor: int | None = None):
        self.fields.append((self.size, data, name, tensor, note))
        self.size += len(data)

    def data(self) -> bytes:
        return b"".join(f[1] for f in self.fields)

    def field(self, name: str, tensor: int | None = None) -> tuple[int, int]:
        """(offset, size) of a field."""
        for off, data, n, t, _ in self.fields:
            if n == name and t == tensor:
                return off, len(data)
        raise KeyError((name, tensor))

    def has(self, name: str, tensor: int | None = None) -> bool:
        return any(n == name and t == tensor for _, _, n, t, _ in self.fields)


def run_id_of(case) -> bytes:
    rid = bytes.fromhex(case["run_id"])
    if len(rid) != 16:
        raise ValueError("run id must be 16 bytes")
    return rid


def build(case: dict, *, indices=None, section_codecs=None, rice_r=None,
          strict: bool = True) -> Message:
    """The message of ``case``. ``indices`` (per tensor, per chunk), ``section_codecs`` (per
    tensor "fixed", "rice" or None) and ``rice_r`` (per tensor, None = the encoder's choice)
    replace the case's; ``strict=False`` skips the index checks. Together they make hostile
    sections (indices >= E, unsorted) with valid framing, as a hostile encoder would."""
    shapes = [list(s) for s in case["shapes"]]
    s, k, policy = case["chunk"], case["k"], case.get("policy", "divisor")
    header_codec, vcodec = case["index_codec"], case["value_codec"]
    indices = case["indices"] if indices is None else indices
    values = case["values"]
    T = len(shapes)
    if len(indices) != T or len(values) != T:
        raise ValueError("one index and one value list per tensor")

    sections, kept_total, decoded, chosen = [], 0, [], []
    for t, shape in enumerate(shapes):
        n_chunks, E = tensor_geometry(shape, s, policy)
        k_eff, w = min(k, E), index_width(E)
        chunks = indices[t]
        if len(chunks) != n_chunks or any(len(c) != k_eff for c in chunks):
            raise ValueError(f"tensor {t}: expected {n_chunks} chunks of {k_eff} indices")
        if strict:
            for c in chunks:
                if any(not 0 <= i < E for i in c) or any(a >= b for a, b in zip(c, c[1:])):
                    raise ValueError(f"tensor {t}: indices must be ascending in [0, {E})")
        flat = [i for c in chunks for i in c]
        N = len(flat)
        kept_total += N
        vals = [v for c in values[t] for v in c]
        if len(vals) != N:
            raise ValueError(f"tensor {t}: {N} values expected")

        fixed = bits_to_bytes(fixed_width_bits(flat, w))
        use_rice = header_codec == "rice"
        if header_codec != "fixed":
            gaps = chunk_gaps(chunks)
            r = rice_parameter(gaps, w) if rice_r is None or rice_r[t] is None else rice_r[t]
            unary, rem = rice_streams(gaps, r)
            if header_codec == "auto":  # Rice only when strictly smaller, length field included
                use_rice = 8 + len(unary) + len(rem) < len(fixed)
        if section_codecs is not None and section_codecs[t] is not None:
            use_rice = section_codecs[t] == "rice"
            if use_rice and header_codec == "fixed":
                gaps = chunk_gaps(chunks)
                r = rice_parameter(gaps, w) if rice_r is None or rice_r[t] is None else rice_r[t]
                unary, rem = rice_streams(gaps, r)
        part = []
        if use_rice:
            q = [g >> r for g in gaps]
            part += [
                ("section_codec", struct.pack("<B", SECTION_RICE), "1 = rice"),
                ("section_param", struct.pack("<B", r), f"r = {r} (w = {w}, E = {E})"),
                ("unary_length", struct.pack("<Q", len(unary)), f"U = {len(unary)}"),
                ("unary_stream", unary, f"quotients {q}"),
                ("remainder_stream", rem,
                 f"remainders {[g & ((1 << r) - 1) for g in gaps]} at {r} bits"),
            ]
            chosen.append({"codec": "rice", "r": r})
        else:
            part += [
                ("section_codec", struct.pack("<B", SECTION_FIXED), "0 = fixed"),
                ("section_param", struct.pack("<B", 0), f"0 (w = {w}, E = {E})"),
                ("index_data", fixed, f"indices {flat} at {w} bits"),
            ]
            chosen.append({"codec": "fixed"})
        vdata, dec = value_bytes(vals, vcodec)
        part.append(("value_data", vdata, f"{vcodec} {dec}"))
        decoded.append([dec[j * k_eff:(j + 1) * k_eff] for j in range(n_chunks)])
        sections.append(part)

    body_size = sum(len(d) for part in sections for _, d, _ in part)
    total = HEADER_BYTES + body_size + TRAILER_BYTES
    numel = sum(math.prod(sh) for sh in shapes)
    msg = Message()
    msg.add("magic", b"DKWP", '"DKWP"')
    msg.add("version", struct.pack("<H", 1), "1")
    msg.add("index_codec", struct.pack("<B", INDEX_CODEC_IDS[header_codec]), header_codec)
    msg.add("value_codec", struct.pack("<B", VALUE_CODEC_IDS[vcodec]), vcodec)
    msg.add("flags", struct.pack("<I", 0), "0")
    msg.add("chunk", struct.pack("<I", s), f"s = {s}")
    msg.add("k", struct.pack("<I", k), f"k = {k}")
    msg.add("tensor_count", struct.pack("<I", T), f"T = {T}")
    msg.add("step", struct.pack("<Q", case["step"]), f"{case['step']:#x}")
    msg.add("total_length", struct.pack("<Q", total), f"{total}")
    msg.add("sender", struct.pack("<I", case["sender"]), f"{case['sender']:#x}")
    msg.add("reserved", struct.pack("<I", 0), "0")
    msg.add("run_id", run_id_of(case), run_id_of(case).hex())
    msg.add("layout_digest", layout_digest(shapes, policy),
            f"BLAKE2b-128 of {policy} {[tuple(sh) for sh in shapes]}")
    msg.add("kept", struct.pack("<Q", kept_total), f"{kept_total}")
    msg.add("params", struct.pack("<Q", numel), f"{numel}")
    for t, part in enumerate(sections):
        for name, data, note in part:
            msg.add(name, data, note, tensor=t)
    msg.add("trailer", blake2b_128(msg.data()), "BLAKE2b-128 of every byte before")
    assert msg.size == total
    msg.decoded, msg.sections = decoded, chosen
    return msg


# ------------------------------------------------------------------ vector files


def load_cases() -> list[dict]:
    with open(CASES_FILE) as f:
        return json.load(f)["cases"]


def read_hex(path: str) -> bytes:
    """The bytes of a .hex file: hex digits, whitespace ignored, '#' to end of line a comment."""
    with open(path) as f:
        text = "".join(line.split("#", 1)[0] for line in f)
    return bytes.fromhex("".join(text.split()))


def render_hex(case: dict, msg: Message) -> str:
    """The .hex text: each field's offset, name and decoded value as comments, then its bytes."""
    wrap = textwrap.TextWrapper(width=96, initial_indent="# ", subsequent_indent="#     ")
    lines = wrap.wrap(f"wire vector {case['name']}: {case['about']}") + [
        "# Generated by tests/wire_vector_builder.py from cases.json (docs/wire-format.md);",
        "# regenerate with --write. Format: hex bytes, '#' starts a comment to end of line.",
    ]
    for off, data, name, t, note in msg.fields:
        label = name if t is None else f"{name} (tensor {t})"
        lines += wrap.wrap(f"{off:#06x} {label}, {len(data)} bytes: {note}")
        for j in range(0, len(data), 16):
            lines.append(" ".join(f"{b:02x}" for b in data[j:j + 16]))
    return "\n".join(lines) + "\n"


def value_bits(per_tensor) -> list:
    """Binary32 bits of nested value lists (so -0.0 and +0.0 differ)."""
    return [[[f32_bits(v) for v in chunk] for chunk in t] for t in per_tensor]


def check_case(case: dict) -> Message:
    """Build ``case`` and check it against what the case states by hand."""
    msg = build(case)
    if msg.sections != case["sections"]:
        raise AssertionError(f"{case['name']}: sections {msg.sections}, case says "
                             f"{case['sections']}")
    if "decoded" in case and value_bits(msg.decoded) != value_bits(case["decoded"]):
        raise AssertionError(f"{case['name']}: decoded values differ from the case's")
    return msg


def main(argv: list[str]) -> int:
    write = "--write" in argv
    bad = 0
    for case in load_cases():
        msg = check_case(case)
        path = os.path.join(VECTOR_DIR, case["file"])
        if write and not case.get("hand_written"):
            with open(path, "w") as f:
                f.write(render_hex(case, msg))
            print(f"wrote {case['file']} ({msg.size} bytes)")
        elif read_hex(path) != msg.data():
            print(f"MISMATCH {case['file']}")
            bad += 1
        else:
            print(f"ok {case['file']} ({msg.size} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
