"""Mutation fuzz of the parser: valid payloads, then truncations, bit flips, splices,
insertions, deletions and inflated length fields, with and without a recomputed digest (a
hostile sender can always make the digest match). The parser may only ever raise
``PayloadError`` subclasses, and whatever it accepts must satisfy every content rule.

Examples per run: ``DISTRO_WIRE_FUZZ_EXAMPLES`` (default 2000; the recorded 10,000-example
run is in benchmarks/RESULTS.md ("Wire format and transport")).
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from distro_kernels import wire
from distro_kernels.wire import format as fmt
from test_wire_helpers import INDEX_CODECS, VALUE_CODECS, make_payload, reseal, section_offsets

EXAMPLES = int(os.environ.get("DISTRO_WIRE_FUZZ_EXAMPLES", "2000"))

LAYOUTS = [
    wire.Layout([(128, 64), (2048,), (7, 13), (), (2, 3, 16, 64), (97,), (64, 65)], 64, 32),
    wire.Layout([(40, 24), (33,), (1, 1), (5, 16, 16)], chunk=16, k=8),
    wire.Layout([(40, 24), (33,)], chunk=16, k=5, policy="pad"),
]


def _pool():
    pool = []
    for li, layout in enumerate(LAYOUTS):
        for vc in VALUE_CODECS:
            for ic in INDEX_CODECS:
                data = make_payload(layout, vc, ic, seed=len(pool)).to_bytes()
                # every length or count field a hostile sender could inflate
                fields = [(fmt.OFF_TOTAL_LEN, "Q"), (fmt.OFF_KEPT, "Q"), (fmt.OFF_PARAMS, "Q"),
                          (fmt.OFF_TENSORS, "I"), (fmt.OFF_K, "I"), (fmt.OFF_CHUNK, "I"),
                          (fmt.OFF_STEP, "Q")]
                for start, codec, _ in section_offsets(data, layout):
                    fields.append((start + 1, "B"))  # codec parameter
                    if codec == fmt.INDEX_RICE:
                        fields.append((start + 2, "Q"))  # unary length
                pool.append((li, data, fields))
    return pool


POOL = _pool()
BIG = [0, 1, 255, 2**16 - 1, 2**31, 2**32 - 1, 10**12, 2**63, 2**64 - 1]

POS = st.integers(0, 2**32)  # a position, taken modulo the current length

mutation = st.one_of(
    st.tuples(st.just("truncate"), POS),
    st.tuples(st.just("flip"), POS, st.integers(0, 7)),
    st.tuples(st.just("byte"), POS, st.integers(0, 255)),
    st.tuples(st.just("splice"), POS, st.integers(0, len(POOL) - 1), POS, st.integers(1, 64)),
    st.tuples(st.just("insert"), POS, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), POS, st.integers(1, 64)),
    st.tuples(st.just("inflate"), st.integers(0, 10**6), st.sampled_from(BIG)),
    st.tuples(st.just("nudge"), st.integers(0, 10**6), st.integers(-3, 3)),
)


def mutate(data: bytes, fields, ops) -> bytes:
    b = bytearray(data)
    for op in ops:
        kind = op[0]
        at = op[1] % (len(b) + 1) if kind not in ("inflate", "nudge") else 0
        if kind == "truncate":
            del b[at:]
        elif kind == "flip" and b:
            b[min(at, len(b) - 1)] ^= 1 << op[2]
        elif kind == "byte" and b:
            b[min(at, len(b) - 1)] = op[2]
        elif kind == "splice":
            other = POOL[op[2]][1]
            s = op[3] % len(other)
            b[at:at] = other[s : s + op[4]]
        elif kind == "insert":
            b[at:at] = op[2]
        elif kind == "delete":
            del b[at : at + op[2]]
        elif kind in ("inflate", "nudge"):
            off, f = fields[op[1] % len(fields)]
            size = struct.calcsize(f)
            if off + size <= len(b):
                if kind == "inflate":
                    value = op[2] % (1 << (8 * size))
                else:
                    (old,) = struct.unpack_from("<" + f, b, off)
                    value = (old + op[2]) % (1 << (8 * size))
                struct.pack_into("<" + f, b, off, value)
    return bytes(b)


def check_accepted(p: wire.Payload, layout: wire.Layout) -> None:
    """Whatever the parser accepts obeys every content rule."""
    assert p.layout == layout
    for t in range(layout.n_tensors):
        idx = p._idx[t]
        assert idx.dtype == np.int32 and idx.shape == (layout.n_chunks[t], layout.k_effs[t])
        assert idx.min() >= 0 and idx.max() < layout.elements[t]
        assert (np.diff(idx.astype(np.int64), axis=1) > 0).all()
        if p._signs is not None:
            assert p._signs[t].size == (layout.kept[t] + 7) // 8
        else:
            v = p._vals[t]
            assert v.dtype == np.float32 and v.size == layout.kept[t]
            assert np.isfinite(v).all() and (np.abs(v) < 2.0**64).all()
            assert not np.signbit(v[v == 0]).any()
            assert not ((np.abs(v) < 2.0**-55) & (v != 0)).any()


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    which=st.integers(0, len(POOL) - 1),
    ops=st.lists(mutation, min_size=1, max_size=4),
    seal=st.sampled_from(["none", "digest", "digest+length"]),
    other_layout=st.integers(0, 7),
)
def test_mutated_payloads_raise_only_payload_errors(which, ops, seal, other_layout):
    li, data, fields = POOL[which]
    bad = mutate(data, fields, ops)
    if seal != "none" and len(bad) >= fmt.TRAILER_SIZE:
        bad = reseal(bad, fix_length=seal == "digest+length")
    # mostly the right receiver layout; sometimes another one
    layout = LAYOUTS[other_layout] if other_layout < len(LAYOUTS) else LAYOUTS[li]
    try:
        p = wire.Payload.from_bytes(bad, layout, expect_step=3)
    except wire.PayloadError as e:
        assert type(e) in wire.RULES and e.rule in str(e)
        event(f"rejected: {e.rule}")
        return
    event("accepted")
    check_accepted(p, layout)


@pytest.mark.parametrize("which", range(0, len(POOL), 3))
def test_every_single_bit_flip_of_a_header_is_caught(which):
    """Exhaustive over the header and first section: each flip raises a PayloadError
    (the digest catches flips a sealed payload cannot absorb)."""
    li, data, _ = POOL[which]
    for pos in range(min(len(data), fmt.HEADER_SIZE + 12)):
        for bit in range(8):
            b = bytearray(data)
            b[pos] ^= 1 << bit
            with pytest.raises(wire.PayloadError):
                wire.Payload.from_bytes(bytes(b), LAYOUTS[li])
