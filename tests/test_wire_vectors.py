"""Known-answer wire vectors: checked-in bytes that the encoder must produce and the parser must
read, derived independently of ``distro_kernels.wire`` (tests/wire_vector_builder.py, from
docs/wire-format.md alone), so a change that breaks the format symmetrically in the encoder and
the parser fails here. Every corruption is made on these bytes (or by the builder, for hostile
content) and must raise the exact ``PayloadError`` subclass that the doc names."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import struct

import numpy as np
import pytest
import torch

import wire_vector_builder as B
from distro_kernels import wire

CASES = B.load_cases()
IDS = [c["name"] for c in CASES]
HEADER_FIELDS_AFTER_DIGEST = {  # checked after the trailer digest: reseal so the rule fails
    "flags": wire.ReservedField,
    "reserved": wire.ReservedField,
    "index_codec": wire.UnknownCodec,
    "value_codec": wire.UnknownCodec,
    "run_id": wire.WrongRun,
    "step": wire.WrongStep,
    "sender": wire.WrongSender,
    "k": wire.WrongK,
    "chunk": wire.LayoutMismatch,
    "tensor_count": wire.LayoutMismatch,
    "layout_digest": wire.LayoutMismatch,
    "kept": wire.LayoutMismatch,
    "params": wire.LayoutMismatch,
}


# ---------------------------------------------------------------------------- helpers


def layout_of(case) -> wire.Layout:
    return wire.Layout([tuple(s) for s in case["shapes"]], case["chunk"], case["k"],
                       policy=case["policy"])


def vector_bytes(case) -> bytes:
    return B.read_hex(os.path.join(B.VECTOR_DIR, case["file"]))


def message(case) -> B.Message:
    return B.build(case)


def payload_of(case, run_id=None) -> wire.Payload:
    lay = layout_of(case)
    idx = [np.array(t, dtype=np.int64).reshape(len(t), -1) for t in case["indices"]]
    vals = [np.array([v for ch in t for v in ch], dtype=np.float32) for t in case["values"]]
    rid = bytes.fromhex(case["run_id"]) if run_id is None else run_id
    return wire.Payload(case["step"], case["sender"], rid, lay, idx, vals, case["value_codec"],
                        index_codec=case["index_codec"])


def parse(case, data, **kw) -> wire.Payload:
    """Parse with every expectation the caller can set (the receiver knows all of them)."""
    args = dict(expect_step=case["step"], expect_run_id=bytes.fromhex(case["run_id"]),
                expect_sender=case["sender"])
    args.update(kw)
    return wire.Payload.from_bytes(data, layout_of(case), **args)


def reseal(data: bytes) -> bytes:
    """A new trailer for edited bytes (a careful hostile sender): only the edit's rule fails."""
    body = bytes(data[:-16])
    return body + hashlib.blake2b(body, digest_size=16).digest()


def edit(data: bytes, offset: int, new: bytes, *, seal: bool = True) -> bytes:
    b = bytearray(data)
    b[offset:offset + len(new)] = new
    return reseal(bytes(b)) if seal else bytes(b)


def xor(data: bytes, offset: int, mask: int, *, seal: bool = True) -> bytes:
    return edit(data, offset, bytes([data[offset] ^ mask]), seal=seal)


def raises_exactly(cls, fn, what=""):
    """``fn()`` raises ``cls`` itself (not a sibling subclass), with ``cls.rule`` as its rule."""
    with pytest.raises(wire.PayloadError) as info:
        fn()
    assert type(info.value) is cls, f"{what}: {type(info.value).__name__}: {info.value}"
    assert info.value.rule == cls.rule
    return info.value


def length_rule(declared: int, present: int, limit: int):
    """docs/wire-format.md 1.3 and 4.2: the declared total length against the limit and data."""
    if declared > limit:
        return wire.LengthOverLimit
    if declared > present:
        return wire.Truncated
    if declared < present:
        return wire.TrailingBytes
    return None


def where_differs(case, got: bytes, want: bytes) -> str:
    """The field of the first byte where ``got`` and ``want`` differ (for failure messages)."""
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            break
    else:
        return f"lengths {len(got)} and {len(want)}"
    for off, data, name, t, _ in message(case).fields:
        if off <= i < off + len(data):
            return f"byte {i}: {name}" + ("" if t is None else f" of tensor {t}")
    return f"byte {i}"


def f32_bits(a) -> list[int]:
    return np.asarray(a, dtype=np.float32).reshape(-1).view(np.uint32).tolist()


# ---------------------------------------------------------------------------- the vector set


def test_builder_is_independent_of_the_implementation():
    """The builder derives bytes from the doc alone: no distro_kernels, numpy or torch."""
    tree = ast.parse(open(B.__file__).read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "hashlib", "json", "math", "os", "struct", "sys",
                        "textwrap"}, imported


def test_vectors_cover_the_format():
    """The set keeps every feature the format has (a vector removed makes this fail)."""
    seen = {"widths": set(), "value": set(), "header": set(), "section": set(), "r": set(),
            "ndim": set(), "policy": set(), "tensors": set(), "sign_n": set()}
    for c in CASES:
        seen["value"].add(c["value_codec"])
        seen["header"].add(c["index_codec"])
        seen["policy"].add(c["policy"])
        seen["tensors"].add(len(c["shapes"]))
        if c["index_codec"] == "auto":
            assert {s["codec"] for s in c["sections"]} == {"fixed", "rice"}  # mixed sections
        for shape, sec in zip(c["shapes"], c["sections"]):
            n_chunks, E = B.tensor_geometry(shape, c["chunk"], c["policy"])
            seen["widths"].add((E, B.index_width(E)))
            seen["ndim"].add(len(shape))
            seen["section"].add(sec["codec"])
            if sec["codec"] == "rice":
                seen["r"].add(sec["r"])
            if c["value_codec"] == "sign":
                seen["sign_n"].add(n_chunks * min(c["k"], E) % 8)
    assert {(4096, 12), (6, 3), (1, 0)} <= seen["widths"]
    assert seen["value"] == {"f32", "bf16", "f16", "sign"}
    assert seen["header"] == {"fixed", "rice", "auto"}
    assert seen["section"] == {"fixed", "rice"} and 0 in seen["r"] and max(seen["r"]) >= 2
    assert {0, 1, 2, 3} <= seen["ndim"] and seen["policy"] == {"divisor", "pad"}
    assert max(seen["tensors"]) >= 3 and seen["sign_n"] - {0}


def test_hand_written_vector_is_checked_not_generated():
    hand = [c for c in CASES if c.get("hand_written")]
    assert hand, "at least one vector is written and reviewed by hand"
    for c in hand:
        text = open(os.path.join(B.VECTOR_DIR, c["file"])).read()
        assert "BY HAND" in text and "Generated by" not in text


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_builder_regenerates_the_checked_in_bytes(case):
    msg = B.check_case(case)  # also: the sections and decoded values the case states by hand
    data = vector_bytes(case)
    assert msg.data() == data, where_differs(case, msg.data(), data)
    assert len(data) == struct.unpack_from("<Q", data, 32)[0]
    off, size = msg.field("layout_digest")
    digest = wire.layout_digest([tuple(s) for s in case["shapes"]], case["policy"])
    assert data[off:off + size] == digest == layout_of(case).digest
    assert data[-16:] == hashlib.blake2b(data[:-16], digest_size=16).digest()


# ---------------------------------------------------------------------------- (a) encode


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_encoder_produces_the_vector(case):
    data = vector_bytes(case)
    got = payload_of(case).to_bytes()
    assert got == data, where_differs(case, got, data)
    if "run_id_int" in case:  # the integer form of the same run id, little-endian
        assert payload_of(case, run_id=case["run_id_int"]).to_bytes() == data
    # torch inputs make the same bytes
    lay = layout_of(case)
    idx = [torch.tensor(t, dtype=torch.int64) for t in case["indices"]]
    vals = [torch.tensor([v for ch in t for v in ch], dtype=torch.float32)
            for t in case["values"]]
    p = wire.Payload(case["step"], case["sender"], bytes.fromhex(case["run_id"]), lay, idx,
                     vals, case["value_codec"], index_codec=case["index_codec"])
    assert p.to_bytes() == data


# ---------------------------------------------------------------------------- (b) parse


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parser_reads_the_vector(case):
    data = vector_bytes(case)
    lay = layout_of(case)
    for p in (parse(case, data), wire.Payload.from_bytes(data, lay)):
        assert (p.step, p.sender, p.run_id) == (case["step"], case["sender"],
                                                bytes.fromhex(case["run_id"]))
        assert (p.value_codec, p.index_codec) == (case["value_codec"], case["index_codec"])
        for t in range(lay.n_tensors):
            idx = p.indices[t]
            assert idx.dtype == torch.int32 and tuple(idx.shape) == (lay.n_chunks[t],
                                                                     lay.k_effs[t])
            assert idx.tolist() == case["indices"][t]
            vals = p.values[t]
            assert vals.dtype == torch.float32 and vals.shape == idx.shape
            assert f32_bits(vals) == f32_bits(case["decoded"][t])  # bitwise: +0, not -0
            if case["value_codec"] == "sign":
                off, size = message(case).field("value_data", t)
                assert p.signs[t].numpy().tobytes() == data[off:off + size]
        assert p.to_bytes() == data
    if "run_id_int" in case:
        parse(case, data, expect_run_id=case["run_id_int"])


FLOAT_CASES = [c for c in CASES if c["value_codec"] != "sign"]
FLOAT_IDS = [c["name"] for c in FLOAT_CASES]


@pytest.mark.parametrize("case", FLOAT_CASES, ids=FLOAT_IDS)
def test_parser_canonicalises_non_canonical_value_bytes(case):
    """-0 and |v| < 2^-55 are accepted on the wire and read as +0 (SPEC 4.1)."""
    codec = case["value_codec"]
    data, msg = vector_bytes(case), message(case)
    off, _ = msg.field("value_data", 0)
    words = {"f32": ["<I", 0x80000000, 0x23800000, 0xA3800000],  # -0, 2^-56, -2^-56
             "bf16": ["<H", 0x8000, 0x2380, 0xA380],
             "f16": ["<H", 0x8000]}[codec]
    for word in words[1:]:
        p = parse(case, edit(data, off, struct.pack(words[0], word)))
        assert f32_bits(p.values[0].reshape(-1)[:1]) == [0]
        assert f32_bits(p.values[0].reshape(-1)[1:]) == f32_bits(case["decoded"][0])[1:]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parser_accepts_every_valid_encoder_choice(case):
    """Bytes another valid encoder may send (the doc lets it pick any 0 <= r <= w, and under
    'auto' either codec per section) parse to the same indices and values."""
    T = len(case["shapes"])
    widths = [B.index_width(B.tensor_geometry(s, case["chunk"], case["policy"])[1])
              for s in case["shapes"]]
    variants = []
    for t, sec in enumerate(case["sections"]):
        if sec["codec"] == "rice":
            variants += [([None] * T, [r if u == t else None for u in range(T)])
                         for r in range(widths[t] + 1) if r != sec["r"]]
    if case["index_codec"] == "auto":  # every section the other way round
        flipped = ["fixed" if s["codec"] == "rice" else "rice" for s in case["sections"]]
        variants.append((flipped, [None] * T))
    assert variants or case["index_codec"] == "fixed"
    for codecs, rice_r in variants:
        data = B.build(case, section_codecs=codecs, rice_r=rice_r).data()
        assert data != vector_bytes(case)
        p = parse(case, data)
        for t in range(T):
            assert p.indices[t].tolist() == case["indices"][t]
            assert f32_bits(p.values[t]) == f32_bits(case["decoded"][t])


# ---------------------------------------------------------------------------- (d) corruption


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_single_byte_flip_is_refused(case):
    """Without a new trailer, a flip anywhere is caught: by magic, version or total length
    (checked before the digest), else by the digest (trailer bytes included)."""
    data = vector_bytes(case)
    limit = layout_of(case).max_payload_bytes()
    for off in range(len(data)):
        for mask in (0x01, 0x80):
            bad = xor(data, off, mask, seal=False)
            if off < 4:
                cls = wire.BadMagic
            elif off < 6:
                cls = wire.UnsupportedVersion
            elif 32 <= off < 40:
                cls = length_rule(struct.unpack_from("<Q", bad, 32)[0], len(bad), limit)
            else:
                cls = wire.DigestMismatch
            raises_exactly(cls, lambda: parse(case, bad), f"byte {off} ^ {mask:#x}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_header_field_flips_name_their_rule(case):
    """With a valid trailer, every byte of every header field after the digest check breaks
    exactly the rule the doc gives that field."""
    data, msg = vector_bytes(case), message(case)
    for name, cls in HEADER_FIELDS_AFTER_DIGEST.items():
        off, size = msg.field(name)
        masks = (0x04, 0x80) if name.endswith("_codec") else (0x01, 0x80)  # 0x01: valid ids
        for j in range(size):
            for mask in masks:
                bad = xor(data, off + j, mask)
                raises_exactly(cls, lambda: parse(case, bad), f"{name} byte {j} ^ {mask:#x}")
    # step, run id and sender are checked only against what the caller expects
    for name, attr in (("step", "step"), ("sender", "sender"), ("run_id", "run_id")):
        off, _ = msg.field(name)
        bad = xor(data, off, 0x01)
        p = wire.Payload.from_bytes(bad, layout_of(case))
        got = getattr(p, attr)
        assert got != getattr(parse(case, data), attr)
        if name == "run_id":
            assert got == bad[off:off + 16]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_header_index_codec_must_match_the_sections(case):
    """A valid header index codec id that contradicts a section's codec: UnknownCodec."""
    data, msg = vector_bytes(case), message(case)
    off, _ = msg.field("index_codec")
    sections = {s["codec"] for s in case["sections"]}
    for codec_id, name in ((0, "fixed"), (1, "rice")):
        if {name} != sections and data[off] != codec_id:
            raises_exactly(wire.UnknownCodec,
                           lambda: parse(case, edit(data, off, bytes([codec_id]))), name)
    for codec_id in (3, 0xFF):
        raises_exactly(wire.UnknownCodec, lambda: parse(case, edit(data, off, bytes([codec_id]))))
    voff, _ = msg.field("value_codec")
    for codec_id in (4, 0xFF):
        raises_exactly(wire.UnknownCodec, lambda: parse(case, edit(data, voff, bytes([codec_id]))))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_length_and_size_rules(case):
    data = vector_bytes(case)
    n = len(data)
    limit = layout_of(case).max_payload_bytes()
    off = 32
    for declared in {n - 1, n + 1, limit, limit + 1, 2**64 - 1, 0} - {n}:
        for seal in (False, True):
            bad = edit(data, off, struct.pack("<Q", declared), seal=seal)
            raises_exactly(length_rule(declared, n, limit), lambda: parse(case, bad),
                           f"declared {declared}")
    for cut in range(n):  # every prefix
        raises_exactly(wire.Truncated, lambda: parse(case, data[:cut]), f"{cut} bytes")
    extra = data + b"\x00"  # a byte past the declared length
    raises_exactly(length_rule(n, n + 1, limit) if n + 1 <= limit else wire.LengthOverLimit,
                   lambda: parse(case, extra))
    # a byte between the last section and the trailer, length and trailer fixed up
    body = bytearray(data[:-16] + b"\x00")
    struct.pack_into("<Q", body, 32, len(body) + 16)
    grown = reseal(bytes(body) + bytes(16))
    cls = wire.TrailingBytes if len(grown) <= limit else wire.LengthOverLimit
    raises_exactly(cls, lambda: parse(case, grown))
    raises_exactly(wire.TrailingBytes, lambda: parse(case, grown, max_bytes=len(grown)))
    # the last section's last byte missing, length and trailer fixed up
    body = bytearray(data[:-17])
    struct.pack_into("<Q", body, 32, len(body) + 16)
    raises_exactly(wire.Truncated, lambda: parse(case, reseal(bytes(body) + bytes(16))))
    # the caller's limit
    raises_exactly(wire.LengthOverLimit, lambda: parse(case, data, max_bytes=n - 1))
    parse(case, data, max_bytes=n)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_section_field_rules(case):
    data, msg = vector_bytes(case), message(case)
    header_codec = case["index_codec"]
    for t, sec in enumerate(case["sections"]):
        off, _ = msg.field("section_codec", t)
        for codec_id in (2, 3, 0xFF):  # 2 (auto) is a header codec, never a section's
            raises_exactly(wire.UnknownCodec,
                           lambda: parse(case, edit(data, off, bytes([codec_id]))), f"t{t}")
        if header_codec != "auto":
            other = 1 - data[off]
            raises_exactly(wire.UnknownCodec,
                           lambda: parse(case, edit(data, off, bytes([other]))), f"t{t}")
        poff, _ = msg.field("section_param", t)
        n_chunks, E = B.tensor_geometry(case["shapes"][t], case["chunk"], case["policy"])
        w, N = B.index_width(E), n_chunks * min(case["k"], E)
        if sec["codec"] == "fixed":
            for r in (1, 0x80):
                raises_exactly(wire.ReservedField,
                               lambda: parse(case, edit(data, poff, bytes([r]))), f"t{t} r={r}")
            if N * w % 8:  # a padding bit of the index data
                ioff, isize = msg.field("index_data", t)
                raises_exactly(wire.ReservedField,
                               lambda: parse(case, xor(data, ioff + isize - 1, 0x80)))
        else:
            for r in (w + 1, 0xFF):
                raises_exactly(wire.UnknownCodec,
                               lambda: parse(case, edit(data, poff, bytes([r]))), f"t{t} r={r}")
            uoff, _ = msg.field("unary_length", t)
            soff, U = msg.field("unary_stream", t)
            for ulen, cls in ((0, wire.MalformedStream), (U - 1, wire.MalformedStream),
                              (2**64 - 1, wire.Truncated), (2**40, wire.Truncated)):
                raises_exactly(cls, lambda: parse(case, edit(data, uoff, struct.pack("<Q", ulen))),
                               f"t{t} U={ulen}")
            raises_exactly(wire.MalformedStream,  # no padding bytes: the last byte is non-zero
                           lambda: parse(case, edit(data, soff + U - 1, b"\x00")))
            unary_bits = sum((g >> sec["r"]) + 1 for g in B.chunk_gaps(case["indices"][t]))
            if unary_bits % 8:  # a 1 in the padding is one codeword too many
                raises_exactly(wire.MalformedStream,
                               lambda: parse(case, xor(data, soff + U - 1, 0x80)))
            roff, rsize = msg.field("remainder_stream", t)
            if N * sec["r"] % 8:
                raises_exactly(wire.ReservedField,
                               lambda: parse(case, xor(data, roff + rsize - 1, 0x80)))
        if case["value_codec"] == "sign" and N % 8:
            voff, vsize = msg.field("value_data", t)
            raises_exactly(wire.ReservedField,
                           lambda: parse(case, xor(data, voff + vsize - 1, 0x80)))


BAD_VALUES = {  # (word format, word, rule): NaN, +-inf, +-2^64 after widening to binary32
    "f32": [("<I", 0x7FC00000, wire.NonFiniteValue), ("<I", 0x7F800000, wire.NonFiniteValue),
            ("<I", 0xFF800000, wire.NonFiniteValue), ("<I", 0x7F800001, wire.NonFiniteValue),
            ("<I", 0x5F800000, wire.ValueOutOfRange), ("<I", 0xDF800000, wire.ValueOutOfRange),
            ("<I", 0x7F7FFFFF, wire.ValueOutOfRange)],
    "bf16": [("<H", 0x7FC0, wire.NonFiniteValue), ("<H", 0x7F80, wire.NonFiniteValue),
             ("<H", 0xFF80, wire.NonFiniteValue), ("<H", 0x5F80, wire.ValueOutOfRange),
             ("<H", 0xDF80, wire.ValueOutOfRange)],
    "f16": [("<H", 0x7E00, wire.NonFiniteValue), ("<H", 0x7C00, wire.NonFiniteValue),
            ("<H", 0xFC00, wire.NonFiniteValue)],
}


@pytest.mark.parametrize("case", FLOAT_CASES, ids=FLOAT_IDS)
def test_bad_values_are_refused(case):
    data, msg = vector_bytes(case), message(case)
    T = len(case["shapes"])
    for t in (0, T - 1):
        off, size = msg.field("value_data", t)
        for fmt_, word, cls in BAD_VALUES[case["value_codec"]]:
            at = off + size - struct.calcsize(fmt_)  # the tensor's last value
            raises_exactly(cls, lambda: parse(case, edit(data, at, struct.pack(fmt_, word))),
                           f"t{t} {word:#x}")
    # the largest finite binary32 below 2^64 is accepted
    if case["value_codec"] == "f32":
        off, _ = msg.field("value_data", 0)
        p = parse(case, edit(data, off, struct.pack("<I", 0x5F7FFFFF)))
        assert f32_bits(p.values[0].reshape(-1)[:1]) == [0x5F7FFFFF]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hostile_index_content_is_refused(case):
    """Sections that a hostile encoder makes (the builder with its checks off): indices >= E,
    duplicated or unsorted, each with valid framing and trailer."""
    checked = 0
    for t, sec in enumerate(case["sections"]):
        n_chunks, E = B.tensor_geometry(case["shapes"][t], case["chunk"], case["policy"])
        w, k_eff = B.index_width(E), min(case["k"], E)
        codecs = [s["codec"] for s in case["sections"]]
        r = [s.get("r") for s in case["sections"]]

        def hostile(chunk0, t=t):
            idx = [list(map(list, ch)) for ch in case["indices"]]
            idx[t][0] = chunk0
            return B.build(case, indices=idx, section_codecs=codecs, rice_r=r, strict=False)

        good = list(case["indices"][t][0])
        if sec["codec"] == "fixed":
            if E < (1 << w):  # an index >= E that fits in w bits
                bad = hostile(good[:-1] + [E]).data()
                raises_exactly(wire.IndexOutOfRange, lambda: parse(case, bad), f"t{t}")
                checked += 1
            if k_eff > 1:
                dup = good[:-1] + [good[-2]]
                swap = good[:-2] + [good[-1], good[-2]]
                for bad in (dup, swap):
                    data = hostile(bad).data()
                    raises_exactly(wire.UnsortedIndices, lambda: parse(case, data), f"t{t} {bad}")
                    checked += 1
        else:
            rr = sec["r"]
            # the most unary bytes a valid stream can need (2.2): a longer one is refused
            # before it is decoded
            umax = -(-(n_chunks * k_eff + n_chunks * ((E - k_eff) >> rr)) // 8)
            for last in (E, E + (1 << rr) * (E + 1)):  # past E; a quotient > (E-1) >> r
                m = hostile(good[:-1] + [last])
                cls = (wire.LengthOverLimit if m.field("unary_stream", t)[1] > umax
                       else wire.IndexOutOfRange)
                raises_exactly(cls, lambda: parse(case, m.data()), f"t{t} {last}")
                checked += 1
    assert checked


# ---------------------------------------------------------------------------- docs agree


def test_doc_error_table_names_the_code_classes():
    """docs/wire-format.md's table of error classes and rule ids is errors.py's."""
    doc = open(os.path.join(os.path.dirname(B.HERE), "docs", "wire-format.md")).read()
    rows = dict(re.findall(r"^\| `(\w+)`(?: \(a `\w+`\))? \| `(\w+)` \|$", doc, re.M))
    assert rows == {cls.__name__: cls.rule for cls in wire.RULES}
    for name in rows:
        if name in ("NonFiniteValue", "ValueOutOfRange"):
            assert issubclass(getattr(wire, name), wire.BadValue)
        if name in ("MissingSignature", "UnknownSender", "BadSignature"):
            assert issubclass(getattr(wire, name), wire.SignatureError)
