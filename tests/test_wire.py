"""The wire format: exact round trips for every codec and odd shapes, exact sizes, canonical
bytes, one negative test per parser rule, and bounded memory on hostile length fields."""

from __future__ import annotations

import struct
import tracemalloc
import uuid

import numpy as np
import pytest
import torch

import distro_kernels as dk
from distro_kernels import wire
from distro_kernels.wire import bitpack, rice
from distro_kernels.wire import format as fmt
from test_wire_helpers import (
    INDEX_CODECS,
    ODD_SHAPES,
    VALUE_CODECS,
    evil_bytes,
    make_payload,
    patch,
    random_parts,
    reseal,
    section_offsets,
)

LAYOUT = wire.Layout(ODD_SHAPES, chunk=64, k=32)


# ---------------------------------------------------------------------------- layout


def test_layout_geometry_comes_from_chunk_plan():
    for t, shape in enumerate(ODD_SHAPES):
        plan = dk.chunk_plan(shape, 64)
        assert LAYOUT.n_chunks[t] == plan.n_chunks
        assert LAYOUT.elements[t] == plan.elements_per_chunk
        assert LAYOUT.k_effs[t] == plan.k_eff(32)
        assert LAYOUT.widths[t] == (plan.elements_per_chunk - 1).bit_length()
    assert LAYOUT.widths[0] == 12  # 64x64 chunks: 12-bit indices
    assert LAYOUT.elements[5] == 1 and LAYOUT.widths[5] == 0  # prime length: E = 1
    assert LAYOUT.numel == sum(int(np.prod(s)) for s in ODD_SHAPES)


def test_layout_digest_identifies_shapes_and_order():
    a = wire.Layout([(4, 8), (16,)])
    assert a.digest == wire.Layout([(4, 8), (16,)], chunk=32, k=4).digest  # shapes only
    assert a.digest != wire.Layout([(16,), (4, 8)]).digest
    assert a.digest != wire.Layout([(8, 4), (16,)]).digest
    assert a.digest != wire.Layout([(4, 8), (16,)], policy="pad").digest
    assert a.digest != wire.Layout([(1, 4, 8), (16,)]).digest
    assert len(a.digest) == 16
    assert a == wire.Layout([(4, 8), (16,)]) and a != wire.Layout([(4, 8), (16,)], k=8)


def test_layout_rejects_bad_arguments():
    with pytest.raises(ValueError):
        wire.Layout([])
    with pytest.raises(ValueError):
        wire.Layout([(4, 0)])
    with pytest.raises(ValueError):
        wire.Layout([(4, 4)], chunk=0)
    with pytest.raises(ValueError):
        wire.Layout([(4, 4)], k=0)


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("value_codec", VALUE_CODECS)
@pytest.mark.parametrize("index_codec", INDEX_CODECS)
def test_round_trip_exact_and_canonical(value_codec, index_codec):
    p = make_payload(LAYOUT, value_codec, index_codec, seed=11)
    data = p.to_bytes()
    q = wire.Payload.from_bytes(data, LAYOUT, expect_step=3, expect_run_id=0xABCD,
                                expect_sender=1)
    assert q == p
    for a, b in zip(p.indices, q.indices):
        assert a.dtype == torch.int32 and torch.equal(a, b)
    for a, b in zip(p.values, q.values):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    # canonical: re-encoding the parsed payload, or encoding the same inputs again, gives
    # the same bytes
    assert q.to_bytes() == data
    assert make_payload(LAYOUT, value_codec, index_codec, seed=11).to_bytes() == data
    assert q.step == 3 and q.sender == 1 and q.run_id == (0xABCD).to_bytes(16, "little")


@pytest.mark.parametrize("value_codec", VALUE_CODECS)
def test_round_trip_of_compress_output(value_codec):
    """What ``compress`` returns goes in as is and comes out exactly (indices; values per
    codec)."""
    torch.manual_seed(0)
    xs = [torch.randn(s) for s in ODD_SHAPES]
    comp = [dk.compress(x, 32, 64) for x in xs]
    p = wire.Payload(0, 0, 1, LAYOUT, [c[0] for c in comp], [c[1] for c in comp], value_codec)
    q = wire.Payload.from_bytes(p.to_bytes(), LAYOUT)
    for (idx, vals), qi, qv in zip(comp, q.indices, q.values):
        assert torch.equal(qi, idx)
        if value_codec == "f32":
            assert torch.equal(qv, vals)
        elif value_codec == "bf16":
            assert torch.equal(qv, vals.to(torch.bfloat16).float())
        elif value_codec == "f16":
            assert torch.equal(qv, vals.half().float())
        else:
            assert torch.equal(qv, torch.where(vals.signbit(), -1.0, 1.0))
    if value_codec == "sign":
        for t, (_, vals) in enumerate(comp):
            assert torch.equal(q.signs[t], dk.pack_signs(vals).reshape(-1))


@pytest.mark.parametrize("value_codec", ["f32", "sign"])
def test_parsed_payloads_feed_decompress(value_codec):
    """Three peers -> bytes -> parse -> decompress gives what decompress gives on the
    originals (ascending sender order, as SPEC 4 requires)."""
    shape = (128, 96)
    layout = wire.Layout([shape, (50,)], chunk=64, k=8)
    peers, parsed = [], []
    for sender in (2, 0, 1):
        torch.manual_seed(sender)
        comp = [dk.compress(torch.randn(s), 8, 64) for s in layout.shapes]
        p = wire.Payload(7, sender, 9, layout, [c[0] for c in comp], [c[1] for c in comp],
                         value_codec)
        peers.append((sender, comp))
        parsed.append(wire.Payload.from_bytes(p.to_bytes(), layout, expect_step=7))
    idx_list, val_list, codec = wire.gather_tensor(parsed, 0)
    assert codec == value_codec
    ordered = [comp for _, comp in sorted(peers, key=lambda x: x[0])]
    ref_vals = [c[0][1] for c in ordered]
    if value_codec == "sign":
        ref_vals = [dk.pack_signs(v).reshape(-1) for v in ref_vals]
    got = dk.decompress(idx_list, val_list, shape, 64, value_codec=codec)
    ref = dk.decompress([c[0][0] for c in ordered], ref_vals, shape, 64, value_codec=value_codec)
    assert torch.equal(got, ref)


def test_value_canonicalisation():
    layout = wire.Layout([(4,)], chunk=4, k=4)
    idx = [np.arange(4)]
    tiny = np.float32(2.0**-56)
    vals = [np.array([-0.0, tiny, -tiny, 2.0**-55], dtype=np.float32)]
    for codec in ("f32", "bf16", "f16"):
        p = wire.Payload(0, 0, 0, layout, idx, vals, codec)
        got = p.values[0].numpy().reshape(-1)
        assert not np.signbit(got[:3]).any() and (got[:3] == 0).all()
        assert got[3] == (np.float32(2.0**-55) if codec != "f16" else 0.0)  # f16 underflows
        q = wire.Payload.from_bytes(p.to_bytes(), layout)
        assert np.array_equal(q.values[0].numpy().reshape(-1).view(np.uint32), got.view(np.uint32))
    # the parser canonicalises what a foreign encoder sends: -0 and tiny values become +0
    raw = evil_bytes(wire.Payload(0, 0, 0, layout, idx, [np.ones(4, np.float32)], "f32"),
                     vals=[vals[0].reshape(1, 4)])
    q = wire.Payload.from_bytes(raw, layout)
    got = q.values[0].numpy().reshape(-1)
    expect = np.array([0, 0, 0, 2.0**-55], np.float32)
    assert np.array_equal(got.view(np.uint32), expect.view(np.uint32))


def test_bf16_and_f16_round_to_nearest_even():
    layout = wire.Layout([(4096,)], chunk=64, k=64)
    rng = np.random.default_rng(5)
    v = (rng.standard_normal(4096) * 10.0 ** rng.integers(-30, 10, 4096)).astype(np.float32)
    v[:4] = [1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 65504.0, 65519.0]  # ties and f16 max
    idx = [np.tile(np.arange(64), 64)]
    ref = torch.from_numpy(v)
    p = wire.Payload(0, 0, 0, layout, idx, [v], "bf16")
    ref_bf = ref.to(torch.bfloat16).float()
    ref_bf = torch.where(ref_bf.abs() < 2.0**-55, 0.0, ref_bf)  # SPEC 4.1 flush
    assert torch.equal(p.values[0].reshape(-1), ref_bf)
    vf = v[np.abs(v) < 65504]
    layout2 = wire.Layout([(vf.size,)], chunk=1, k=1)
    p2 = wire.Payload(0, 0, 0, layout2, [np.zeros(vf.size, np.int32)], [vf], "f16")
    ref16 = torch.from_numpy(vf).half().float()
    ref16 = torch.where(ref16.abs() < 2.0**-55, 0.0, ref16)
    assert torch.equal(p2.values[0].reshape(-1), ref16)


def test_encoder_refuses_unsendable_values():
    layout = wire.Layout([(4,)], chunk=4, k=4)
    idx = [np.arange(4)]
    for bad, codec in [(np.nan, "f32"), (np.inf, "bf16"), (2.0**64, "f32"), (1e5, "f16"),
                       (np.nan, "sign")]:
        with pytest.raises(ValueError):
            wire.Payload(0, 0, 0, layout, idx, [np.array([1, 2, 3, bad], np.float32)], codec)


def test_payload_constructor_checks_inputs():
    layout = wire.Layout([(8,)], chunk=8, k=4)
    v = [np.ones(4, np.float32)]
    for bad_idx in ([0, 1, 2, 8], [0, 1, 1, 2], [3, 2, 1, 0], [-1, 0, 1, 2]):
        with pytest.raises(ValueError):
            wire.Payload(0, 0, 0, layout, [np.array(bad_idx)], v)
    with pytest.raises(ValueError):
        wire.Payload(0, 0, 0, layout, [np.arange(3)], [np.ones(3, np.float32)])
    with pytest.raises(TypeError):
        wire.Payload(0, 0, 0, layout, [np.arange(4.0)], v)
    with pytest.raises(ValueError):
        wire.Payload(0, 0, 0, layout, [np.arange(4)], v, "int8")
    with pytest.raises(ValueError):
        wire.Payload(-1, 0, 0, layout, [np.arange(4)], v)
    with pytest.raises(ValueError):
        wire.Payload(0, 0, b"short", layout, [np.arange(4)], v)


def test_sign_accepts_packed_bytes():
    layout = wire.Layout([(100,)], chunk=50, k=10)  # 2 chunks x 10 = 20 values
    idx, vals = random_parts(layout, 3)
    packed = dk.pack_signs(torch.from_numpy(vals[0]))
    a = wire.Payload(0, 0, 0, layout, idx, vals, "sign")
    b = wire.Payload(0, 0, 0, layout, idx, [packed], "sign")
    assert a == b and a.to_bytes() == b.to_bytes()
    bad = packed.clone()
    bad[-1] |= 0x80  # a padding bit (20 values: bits 4..7 of byte 2 are padding)
    with pytest.raises(ValueError):
        wire.Payload(0, 0, 0, layout, idx, [bad], "sign")


def test_run_id_forms():
    u = uuid.UUID(int=12345)
    assert wire.run_id_bytes(u) == u.bytes
    assert wire.run_id_bytes(7) == (7).to_bytes(16, "little")
    assert wire.run_id_bytes(bytes(range(16))) == bytes(range(16))
    layout = wire.Layout([(8,)], chunk=8, k=2)
    p = wire.Payload(0, 0, u, layout, [np.array([1, 5])], [np.ones(2, np.float32)])
    wire.Payload.from_bytes(p.to_bytes(), layout, expect_run_id=u)
    wire.Payload.from_bytes(p.to_bytes(), layout, expect_run_id=u.bytes)


@pytest.mark.parametrize("pattern", ["first", "last", "dense", "spread"])
def test_rice_extreme_index_patterns(pattern):
    """Gap extremes: all indices at the start (gaps 0), all at the end (one gap of E-k),
    k == E, and evenly spread."""
    layout = wire.Layout([(64, 64), (16,), (3, 64)], chunk=64, k=32)
    idx = []
    for nc, ke, E in zip(layout.n_chunks, layout.k_effs, layout.elements):
        if pattern == "first":
            row = np.arange(ke)
        elif pattern == "last":
            row = np.arange(E - ke, E)
        elif pattern == "dense":
            row = np.arange(ke)
        else:
            row = np.linspace(0, E - 1, ke).astype(int)
        idx.append(np.tile(row, (nc, 1)))
    _, vals = random_parts(layout, 0)
    for codec in ("rice", "auto", "fixed"):
        p = wire.Payload(1, 1, 1, layout, idx, vals, "f32", index_codec=codec)
        assert wire.Payload.from_bytes(p.to_bytes(), layout) == p


def test_bitpack_and_rice_primitives():
    rng = np.random.default_rng(0)
    for w in range(0, 33):
        for n in (0, 1, 7, 8, 9, 63, 64, 65, 257):
            v = rng.integers(0, 2**w, n, dtype=np.uint64) if w else np.zeros(n, np.uint64)
            b = bitpack.pack(v, w)
            assert len(b) == bitpack.packed_size(n, w)
            if n and w:  # against an obviously-correct bit-by-bit packing
                bits = ((v[:, None] >> np.arange(w, dtype=np.uint64)) & 1).astype(np.uint8)
                assert np.packbits(bits.reshape(-1), bitorder="little").tobytes() == b
            assert np.array_equal(bitpack.unpack(b, n, w), v)
    g = np.array([[0, 5, 0, 17], [300, 0, 1, 2]], dtype=np.int32)
    for r in range(0, 10):
        unary, rem = rice.encode(g, r)
        assert len(unary) == (rice.unary_bits(g, r) + 7) // 8
        q = rice.decode_quotients(unary, g.size)
        assert np.array_equal((q << r) | bitpack.unpack(rem, g.size, r), g.reshape(-1))


# ---------------------------------------------------------------------------- sizes


def test_exact_sizes_fixed_codec():
    """Fixed-width sizes are exact: header 96 + per tensor (2 + ceil(N*w/8) + values) + 16."""
    layout = wire.Layout([(4096, 4096), (2048,)], chunk=64, k=32)
    p = make_payload(layout, "sign", "fixed")
    data = p.to_bytes()
    n0, n1 = 4096 * 32, 32 * 32  # 4096 chunks of 64x64; 32 chunks of 64
    expect = 96 + (2 + n0 * 12 // 8 + n0 // 8) + (2 + n1 * 6 // 8 + n1 // 8) + 16
    assert len(data) == expect == 213_106 + 2 + 768 + 128
    st = wire.stats(data, layout)
    assert st.total_bytes == len(data) and st.kept == n0 + n1
    assert st.bits_per_kept == 8 * len(data) / (n0 + n1)
    assert st.framing_bytes == 96 + 16 + 2 * 2
    assert st.index_bytes == n0 * 12 // 8 + n1 * 6 // 8
    assert st.value_bytes == n0 // 8 + n1 // 8
    assert st.bits_per_param == 8 * len(data) / (4096 * 4096 + 2048)
    for codec, width in (("f32", 4), ("bf16", 2), ("f16", 2)):
        d = make_payload(layout, codec, "fixed").to_bytes()
        assert len(d) == expect - (n0 + n1) // 8 + width * (n0 + n1)


def test_sign_fixed_at_most_13_05_bits_and_rice_smaller():
    """The issue's bar on a 64x64-chunk layout: sign values with fixed-width indices cost at
    most 13.05 bits per kept coefficient, framing included; auto (Rice) is smaller still."""
    layout = wire.Layout([(2048, 2048), (512, 2048), (2048,)], chunk=64, k=32)
    fixed = wire.stats(make_payload(layout, "sign", "fixed").to_bytes(), layout)
    auto = wire.stats(make_payload(layout, "sign", "auto").to_bytes(), layout)
    assert fixed.bits_per_kept <= 13.05
    assert auto.bits_per_kept < fixed.bits_per_kept - 3  # ~9.5 at k=32 of 4096
    assert auto.rice_tensors >= 2


def test_auto_picks_rice_only_when_strictly_smaller():
    p = make_payload(LAYOUT, "f32", "auto")
    data = p.to_bytes()
    for t, (_, codec, _) in enumerate(section_offsets(data, LAYOUT)):
        fixed = LAYOUT.fixed_index_bytes(t)
        g = rice.gaps(p._idx[t])
        _, rice_size = rice.best_parameter(g, LAYOUT.widths[t])
        assert codec == (fmt.INDEX_RICE if 8 + rice_size < fixed else fmt.INDEX_FIXED)
    # E == 1 tensors have 0-bit fixed indices: never Rice
    assert section_offsets(data, LAYOUT)[5][1] == fmt.INDEX_FIXED


def test_layout_size_bounds_hold():
    for vc in VALUE_CODECS:
        for ic in INDEX_CODECS:
            n = len(make_payload(LAYOUT, vc, ic).to_bytes())
            assert LAYOUT.min_payload_bytes(vc) <= n <= LAYOUT.max_payload_bytes(vc)
            assert n <= LAYOUT.max_payload_bytes()


# ---------------------------------------------------------------------------- negative tests:
# one per rule; all framing is valid (resealed digest) unless the rule is the framing


GOOD = make_payload(LAYOUT, "f32", "auto", seed=1)
GOOD_BYTES = GOOD.to_bytes()


def parse(data, layout=LAYOUT, **kw):
    return wire.Payload.from_bytes(data, layout, **kw)


def test_rule_bad_magic():
    with pytest.raises(wire.BadMagic):
        parse(b"XKWP" + GOOD_BYTES[4:])
    with pytest.raises(wire.BadMagic):
        parse(bytes(200))


def test_rule_unsupported_version():
    with pytest.raises(wire.UnsupportedVersion):
        parse(patch(GOOD_BYTES, fmt.OFF_VERSION, "H", 2))


def test_rule_truncated():
    for cut in (0, 3, 5, 50, len(GOOD_BYTES) // 2, len(GOOD_BYTES) - 1):
        with pytest.raises(wire.Truncated):
            parse(GOOD_BYTES[:cut])
    # consistent framing (length and digest fixed) but a section cut short
    with pytest.raises(wire.Truncated):
        parse(reseal(GOOD_BYTES[:-fmt.TRAILER_SIZE - 10] + bytes(fmt.TRAILER_SIZE)))


def test_rule_length_over_limit():
    with pytest.raises(wire.LengthOverLimit):
        parse(GOOD_BYTES, max_bytes=len(GOOD_BYTES) - 1)
    with pytest.raises(wire.LengthOverLimit):  # declared length beyond any valid payload
        parse(patch(GOOD_BYTES, fmt.OFF_TOTAL_LEN, "Q", 10**12, seal=False))
    # a Rice unary-length field larger than any valid stream for that tensor, with the
    # bytes present: a two-tensor layout whose first tensor's bound is small
    layout = wire.Layout([(64, 64), (256, 256)], chunk=64, k=32)
    p = make_payload(layout, "f32", "rice")
    data = p.to_bytes()
    (start, codec, ustart) = section_offsets(data, layout)[0]
    r = data[start + 1]
    umax = (layout.rice_unary_max_bits(0, r) + 7) // 8
    with pytest.raises(wire.LengthOverLimit):
        parse(patch(data, start + 2, "Q", umax + 1), layout)


def test_rule_trailing_bytes():
    with pytest.raises(wire.TrailingBytes):  # more bytes than declared
        parse(GOOD_BYTES + b"\0")
    body = GOOD_BYTES[:-fmt.TRAILER_SIZE] + b"\0\0"  # extra bytes before the trailer
    with pytest.raises(wire.TrailingBytes):
        parse(reseal(body + bytes(fmt.TRAILER_SIZE)))


def test_rule_unknown_codec():
    with pytest.raises(wire.UnknownCodec):
        parse(patch(GOOD_BYTES, fmt.OFF_VALUE_CODEC, "B", 9))
    with pytest.raises(wire.UnknownCodec):
        parse(patch(GOOD_BYTES, fmt.OFF_INDEX_CODEC, "B", 3))
    with pytest.raises(wire.UnknownCodec):  # section codec id
        parse(patch(GOOD_BYTES, fmt.HEADER_SIZE, "B", 7))
    fixed = make_payload(LAYOUT, "f32", "fixed").to_bytes()
    with pytest.raises(wire.UnknownCodec):  # a Rice section under a "fixed" header
        parse(patch(fixed, fmt.HEADER_SIZE, "B", fmt.INDEX_RICE))
    rice_bytes = make_payload(LAYOUT, "f32", "rice").to_bytes()
    with pytest.raises(wire.UnknownCodec):  # Rice parameter above the index width
        parse(patch(rice_bytes, fmt.HEADER_SIZE + 1, "B", 13))


def test_rule_reserved_fields_and_padding():
    with pytest.raises(wire.ReservedField):
        parse(patch(GOOD_BYTES, fmt.OFF_FLAGS, "I", 1))
    with pytest.raises(wire.ReservedField):
        parse(patch(GOOD_BYTES, fmt.OFF_RESERVED, "I", 1))
    fixed = make_payload(LAYOUT, "sign", "fixed").to_bytes()
    with pytest.raises(wire.ReservedField):  # fixed-width section parameter
        parse(patch(fixed, fmt.HEADER_SIZE + 1, "B", 1))
    # (97,): prime length, so 97 chunks of E = 1: 0-bit indices and 97 sign bits, so the
    # last sign byte has 7 padding bits
    layout = wire.Layout([(97,)], chunk=64, k=32)
    data = make_payload(layout, "sign", "fixed").to_bytes()
    last = len(data) - fmt.TRAILER_SIZE - 1
    parse(patch(data, last, "B", data[last] | 0x01), layout)  # the 97th sign: fine
    with pytest.raises(wire.ReservedField):
        parse(patch(data, last, "B", data[last] | 0x80), layout)
    # fixed-width index padding: (7, 13) has 32 indices at 7 bits = 224 bits (no padding),
    # so use a 3-index layout: 3 x 7 = 21 bits, 3 padding bits
    layout = wire.Layout([(7, 13)], chunk=64, k=3)
    data = make_payload(layout, "f32", "fixed").to_bytes()
    pad = fmt.HEADER_SIZE + 2 + 2  # third index byte
    with pytest.raises(wire.ReservedField):
        parse(patch(data, pad, "B", data[pad] | 0x80), layout)


def test_rule_layout_mismatch():
    other = wire.Layout(ODD_SHAPES[:-1] + [(4, 5)], chunk=64, k=32)
    with pytest.raises(wire.LayoutMismatch):
        parse(GOOD_BYTES, other)
    with pytest.raises(wire.LayoutMismatch):
        parse(GOOD_BYTES, wire.Layout(ODD_SHAPES, chunk=32, k=32), max_bytes=10**6)
    with pytest.raises(wire.LayoutMismatch):
        parse(GOOD_BYTES, wire.Layout(ODD_SHAPES[:3], chunk=64, k=32), max_bytes=10**6)
    with pytest.raises(wire.LayoutMismatch):  # kept-count field
        parse(patch(GOOD_BYTES, fmt.OFF_KEPT, "Q", LAYOUT.total_kept + 1))


def test_rule_wrong_k():
    with pytest.raises(wire.WrongK):
        parse(GOOD_BYTES, wire.Layout(ODD_SHAPES, chunk=64, k=16))


def test_rule_index_out_of_range():
    # fixed width: tensor 2 is (7, 13): E = 91 at 7 bits, so 100 fits the field
    fixed = make_payload(LAYOUT, "f32", "fixed", seed=2)
    idx = [a.copy() for a in fixed._idx]
    idx[2][0, -1] = 100
    with pytest.raises(wire.IndexOutOfRange):
        parse(evil_bytes(fixed, idx=idx))
    # Rice: a last gap that runs past E
    rp = make_payload(LAYOUT, "f32", "rice", seed=2)
    idx = [a.copy() for a in rp._idx]
    idx[0][1, -1] = 4096 + 40
    with pytest.raises(wire.IndexOutOfRange):
        parse(evil_bytes(rp, idx=idx))


def test_rule_unsorted_or_duplicate_indices():
    p = make_payload(LAYOUT, "f32", "fixed", seed=3)
    for mutate in ("dup", "swap"):
        idx = [a.copy() for a in p._idx]
        row = idx[0][1]
        if mutate == "dup":
            row[3] = row[2]
        else:
            row[3], row[2] = row[2], row[3]
        with pytest.raises(wire.UnsortedIndices):
            parse(evil_bytes(p, idx=idx))


def test_rule_malformed_entropy_stream():
    p = make_payload(LAYOUT, "f32", "rice", seed=4)
    data = p.to_bytes()
    start, codec, ustart = section_offsets(data, LAYOUT)[0]
    assert codec == fmt.INDEX_RICE
    ulen = struct.unpack_from("<Q", data, start + 2)[0]
    b = bytearray(data)
    b[ustart] ^= 0x01  # one codeword more or fewer
    with pytest.raises(wire.MalformedStream):
        parse(reseal(bytes(b)))
    # a zero byte appended to the unary stream (non-minimal length)
    b = bytearray(data)
    b[ustart + ulen : ustart + ulen] = b"\0"
    struct.pack_into("<Q", b, start + 2, ulen + 1)
    with pytest.raises(wire.MalformedStream):
        parse(reseal(bytes(b)))


@pytest.mark.parametrize("codec", ["f32", "bf16", "f16"])
def test_rule_non_finite_value(codec):
    p = make_payload(LAYOUT, "f32", "auto", seed=5)
    for bad in (np.nan, np.inf, -np.inf):
        vals = [a.copy() for a in p._vals]
        vals[4][1, 2] = bad
        q = wire.Payload._from_parts(p.step, p.sender, p.run_id, LAYOUT, codec, "auto",
                                     p._idx, vals, None)
        with pytest.raises(wire.NonFiniteValue) as e:
            parse(q.to_bytes())
        assert isinstance(e.value, wire.BadValue) and e.value.tensor == 4


@pytest.mark.parametrize("codec", ["f32", "bf16"])
def test_rule_value_out_of_range(codec):
    p = make_payload(LAYOUT, "f32", "auto", seed=6)
    for bad in (2.0**64, -(2.0**64), 3e38):
        vals = [a.copy() for a in p._vals]
        vals[0][0, 0] = bad
        q = wire.Payload._from_parts(p.step, p.sender, p.run_id, LAYOUT, codec, "auto",
                                     p._idx, vals, None)
        with pytest.raises(wire.ValueOutOfRange):
            parse(q.to_bytes())
    # just below the limit is fine
    vals = [a.copy() for a in p._vals]
    vals[0][0, 0] = np.nextafter(np.float32(2.0**64), np.float32(0))
    q = wire.Payload._from_parts(p.step, p.sender, p.run_id, LAYOUT, "f32", "auto", p._idx,
                                 vals, None)
    parse(q.to_bytes())


def test_rule_digest_mismatch():
    for pos in (fmt.OFF_STEP, fmt.HEADER_SIZE + 5, len(GOOD_BYTES) // 2, len(GOOD_BYTES) - 1):
        b = bytearray(GOOD_BYTES)
        b[pos] ^= 0x01
        with pytest.raises(wire.DigestMismatch):
            parse(bytes(b))


def test_rule_wrong_step_run_sender():
    with pytest.raises(wire.WrongStep):
        parse(GOOD_BYTES, expect_step=4)
    with pytest.raises(wire.WrongRun):
        parse(GOOD_BYTES, expect_run_id=0xABCE)
    with pytest.raises(wire.WrongSender):
        parse(GOOD_BYTES, expect_sender=0)
    parse(GOOD_BYTES, expect_step=3, expect_run_id=0xABCD, expect_sender=1)


def test_every_rule_has_a_distinct_id():
    rules = [c.rule for c in wire.RULES]
    assert len(set(rules)) == len(rules)
    assert all(issubclass(c, wire.PayloadError) and issubclass(c, ValueError) for c in wire.RULES)
    e = wire.IndexOutOfRange("x", tensor=3, offset=10)
    assert "[index_range]" in str(e) and e.tensor == 3 and e.offset == 10


# ---------------------------------------------------------------------------- memory bounds


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except wire.PayloadError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_claims_of_huge_sizes_are_refused_before_allocating():
    """A payload claiming 1e12 elements or a 1e12-byte field is refused with a typed error
    and without allocating more than a few kB."""
    huge = wire.Layout([(10**6, 10**6)], chunk=64, k=32)  # 1e12 parameters
    # 1) a small payload whose header really is for the huge layout (digest, counts):
    #    the receiver has that layout too, so only the bytes present can refuse it
    body = bytearray(fmt.HEADER.pack(
        fmt.MAGIC, fmt.VERSION, fmt.INDEX_FIXED, fmt.VALUE_SIGN, 0, 64, 32, 1, 0, 0, 0, 0,
        bytes(16), huge.digest, huge.total_kept, huge.numel,
    )) + bytes(64)
    data = reseal(bytes(body) + bytes(16))
    with pytest.raises(wire.Truncated):
        parse(data, huge)
    assert _peak(lambda: parse(data, huge)) < 64 * 1024
    # 2) the same header against a normal receiver: another layout
    with pytest.raises(wire.LayoutMismatch):
        parse(data, LAYOUT)
    # 3) inflated length fields: total length and a Rice unary length of 1e12
    rp = make_payload(LAYOUT, "f32", "rice").to_bytes()
    start = section_offsets(rp, LAYOUT)[0][0]
    for bad, limit, err in (
        (patch(rp, fmt.OFF_TOTAL_LEN, "Q", 10**12, seal=False), None, wire.LengthOverLimit),
        (patch(rp, fmt.OFF_TOTAL_LEN, "Q", 10**12, seal=False), 2**63, wire.Truncated),
        (patch(rp, start + 2, "Q", 10**12), 2**63, wire.Truncated),
        (patch(rp, start + 2, "Q", 2**64 - 1), 2**63, wire.Truncated),
    ):
        with pytest.raises(err):
            parse(bad, max_bytes=limit)
        assert _peak(lambda: parse(bad, max_bytes=limit)) < 64 * 1024


def test_payload_does_not_alias_caller_buffers():
    layout = wire.Layout([(64, 64)], chunk=64, k=4)
    idx = torch.tensor([[1, 5, 9, 4000]], dtype=torch.int32)
    vals = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    for codec in ("f32", "sign"):
        p = wire.Payload(0, 0, 0, layout, [idx], [vals], codec)
        before = p.to_bytes()
        idx[0, 0], vals[0, 0] = 2, -1.0  # the caller reuses its buffers
        assert p.to_bytes() == before
        idx[0, 0], vals[0, 0] = 1, 1.0
