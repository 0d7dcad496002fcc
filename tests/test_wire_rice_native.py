"""The compiled Rice encoder (``csrc/cpu/rice.cpp``) against numpy's (``wire/rice.py``): the
same parameter, the same sizes and the same bytes, so payloads are byte-identical with or
without the extension; and the compiled one refuses what it cannot code."""

import numpy as np
import pytest

import distro_kernels as dk
from distro_kernels import wire
from distro_kernels.wire import rice

from test_wire_helpers import ODD_SHAPES, random_indices, random_parts

pytestmark = pytest.mark.skipif(rice.cpu_ext is None, reason="needs the compiled extension")


def numpy_streams(idx, r):
    return rice.encode(rice.gaps(idx), r)


CASES = [  # rows, k, E: k = 1, k = E, a single row, wide gaps, 31-bit indices
    (4096, 32, 4096), (1, 1, 1), (7, 1, 91), (3, 91, 91), (1, 5, 2 ** 31 - 1),
    (257, 13, 4099), (64, 2, 1 << 20), (1000, 64, 64 * 64), (5, 3, 8),
]


@pytest.mark.parametrize("rows,k,E", CASES)
def test_plan_and_streams_match_numpy(rows, k, E):
    rng = np.random.default_rng(rows * 7919 + k)
    idx = random_indices(rng, rows, k, E)
    max_r = max(int(E - 1).bit_length(), 0)
    assert rice.plan(idx, max_r) == rice.best_parameter(rice.gaps(idx), max_r)
    best, size = rice.plan(idx, max_r)
    streams = rice.encode_indices(idx, best, size)  # the plan's size: no second pass
    assert sum(map(len, streams)) == size and streams == rice.encode_indices(idx, best)
    for r in sorted({0, 1, max_r // 2, max_r, min(31, max_r + 3)}):
        unary, rem = rice.encode_indices(idx, r)
        ref_unary, ref_rem = numpy_streams(idx, r)
        assert bytes(unary) == ref_unary and bytes(rem) == ref_rem, r


@pytest.mark.parametrize("pattern", ["zeros", "top", "spread", "adjacent"])
def test_extreme_gaps_match_numpy(pattern):
    E, k, rows = 4096, 32, 33
    idx = {"zeros": np.tile(np.arange(k), (rows, 1)),
           "top": np.tile(np.arange(E - k, E), (rows, 1)),
           "spread": np.tile(np.arange(k) * (E // k) + E // k - 1, (rows, 1)),
           "adjacent": np.tile(np.arange(100, 100 + k), (rows, 1))}[pattern].astype(np.int32)
    for r in range(13):
        assert tuple(map(bytes, rice.encode_indices(idx, r))) == numpy_streams(idx, r)
    assert rice.plan(idx, 12) == rice.best_parameter(rice.gaps(idx), 12)


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("value_codec", ["f32", "sign"])
def test_payload_bytes_identical_without_the_extension(shape, value_codec, monkeypatch):
    layout = wire.Layout([shape, (96, 64)], chunk=64, k=32)
    idx, vals = random_parts(layout, seed=len(shape))
    for codec in ("rice", "auto"):
        payload = wire.Payload(3, 1, 9, layout, idx, vals, value_codec, index_codec=codec)
        native = payload.to_bytes()
        with monkeypatch.context() as m:
            m.setattr(rice, "cpu_ext", None)
            assert payload.to_bytes() == native
        back = wire.Payload.from_bytes(native, layout)
        assert all(np.array_equal(a, b) for a, b in zip(back.indices, idx))


def test_refuses_unsorted_and_bad_arguments():
    ext = rice.cpu_ext
    idx = np.array([[3, 2, 5]], dtype=np.int32)
    with pytest.raises(ValueError, match="ascending"):
        rice.plan(idx, 8)
    with pytest.raises(ValueError, match="ascending"):
        rice.encode_indices(idx, 2)
    dup = np.array([[1, 1]], dtype=np.int32)
    with pytest.raises(ValueError, match="ascending"):
        rice.plan(dup, 8)
    ok = np.array([[1, 4, 9]], dtype=np.int32)
    status, total, bits = ext.rice_stats(ok.ctypes.data, 1, 3, 4)
    assert status == 0 and total == 1 + 2 + 4 and len(bits) == 5
    assert bits[0] == 3 + total and bits[2] == 3 + (1 >> 2) + (2 >> 2) + (4 >> 2)
    for bad in [(ok.ctypes.data, -1, 3, 4), (ok.ctypes.data, 1, 0, 4), (ok.ctypes.data, 1, 3, 32),
                (0, 1, 3, 4)]:
        assert ext.rice_stats(*bad)[0] == 1  # DK_ERR_ARGUMENT
    # at r = 2 the streams are 1 byte each (4 unary bits, 6 remainder bits); buffers of
    # any other size are refused, and a short one is never written past
    unary, rem = bytearray(2), bytearray(2)
    addr = rice._address
    assert ext.rice_write(ok.ctypes.data, 1, 3, 2, addr(unary), 1, addr(rem), 2) == 1
    assert ext.rice_write(ok.ctypes.data, 1, 3, 2, addr(unary), 2, addr(rem), 1) == 1
    guard = bytearray(b"\xaa\xaa")
    assert ext.rice_write(ok.ctypes.data, 1, 3, 2, addr(guard), 0, addr(rem), 1) == 1
    assert guard == bytearray(b"\xaa\xaa")
    good_unary = bytearray((bits[2] + 7) // 8)
    assert len(good_unary) == 1
    assert ext.rice_write(ok.ctypes.data, 1, 3, 2, addr(good_unary), len(good_unary), addr(rem), 1) == 0
    assert (bytes(good_unary), bytes(rem[:1])) == numpy_streams(ok, 2)


def test_extension_is_what_the_package_loaded():
    assert dk.info()["cpu_kernel"] is not None
