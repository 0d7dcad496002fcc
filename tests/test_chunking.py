"""SPEC section 1: chunk sizes, modes, chunk counts and chunk order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import spec_numpy as sn
from conftest import CHUNKS, ODD_SHAPES
from distro_kernels import chunk_plan
from distro_kernels.chunking import chunk_size


@pytest.mark.parametrize(
    "d, s, expected",
    [
        (64, 64, 64),
        (128, 64, 64),
        (130, 64, 26),  # 130 = 2 * 5 * 13: 65 > 64, so 26
        (97, 64, 1),  # prime > s
        (61, 64, 61),  # d <= s gives d
        (1, 64, 1),
        (96, 64, 48),
        (100, 16, 10),
        (4096, 48, 32),
        (210, 48, 42),
        (7, 8, 7),
        (9, 8, 3),
        (17, 16, 1),
    ],
)
def test_divisor_rule_table(d, s, expected):
    assert chunk_size(d, s) == expected
    assert sn.chunk_len(d, s) == expected


@given(d=st.integers(1, 5000), s=st.integers(1, 256))
def test_divisor_rule_matches_brute_force(d, s):
    c = chunk_size(d, s, "divisor")
    assert d % c == 0 and c <= max(1, min(s, d))
    assert not any(d % e == 0 for e in range(c + 1, min(s, d) + 1)), "not the largest divisor"
    assert c == sn.chunk_len(d, s)


@given(d=st.integers(1, 5000), s=st.integers(1, 256))
def test_pad_rule(d, s):
    assert chunk_size(d, s, "pad") == min(s, d)


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("policy", ["divisor", "pad"])
def test_plan_matches_independent_plan(shape, chunk, policy):
    p = chunk_plan(shape, chunk, policy)
    q = sn.plan(shape, chunk, policy)
    assert p.shape == tuple(shape)
    assert (p.cm, p.cn) == (q.cm, q.cn)
    assert (p.m, p.n) == (q.pm, q.pn)
    assert p.batch == q.batch
    assert p.n_chunks == q.n_chunks
    assert p.elements_per_chunk == p.E == q.E
    assert p.mode == ("2d" if len(shape) >= 2 else "1d")
    assert p.numel == math.prod(shape)
    assert p.is_padded == ((q.pm, q.pn) != (q.m, q.n))
    # the padded shape holds exactly the chunks
    assert math.prod(p.padded_shape) == p.n_chunks * p.E
    if policy == "divisor":
        assert not p.is_padded
        assert p.n_chunks * p.E == max(1, math.prod(shape))


def test_modes_and_zero_d():
    p0 = chunk_plan(())
    assert (p0.mode, p0.n_chunks, p0.E, p0.cm, p0.cn) == ("1d", 1, 1, 1, 1)
    p1 = chunk_plan((130,))
    assert (p1.mode, p1.cm, p1.cn, p1.n_chunks, p1.E) == ("1d", 1, 26, 5, 26)
    p3 = chunk_plan((4, 128, 130))  # stacked experts: leading dims are batches
    assert (p3.mode, p3.batch, p3.cm, p3.cn) == ("2d", 4, 64, 26)
    assert p3.n_chunks == 4 * 2 * 5
    p4 = chunk_plan((2, 3, 8, 8), 8)
    assert (p4.batch, p4.n_chunks, p4.E) == (6, 6, 64)


@pytest.mark.parametrize("shape, chunk", [((10, 12), 4), ((5, 7), 4), ((13,), 4)])
def test_pad_policy_geometry(shape, chunk):
    p = chunk_plan(shape, chunk, "pad")
    assert p.is_padded
    assert p.cn == min(chunk, shape[-1])
    assert p.padded_shape[-1] % p.cn == 0 and p.padded_shape[-1] >= shape[-1]
    assert p.padded_shape[-1] - shape[-1] < p.cn


@given(
    k=st.integers(1, 10_000),
    shape=st.sampled_from(ODD_SHAPES),
    chunk=st.sampled_from(CHUNKS),
)
def test_k_eff(k, shape, chunk):
    p = chunk_plan(shape, chunk)
    assert p.k_eff(k) == min(k, p.E)


@pytest.mark.parametrize("k", [0, -1, -100])
def test_k_eff_rejects_nonpositive(k):
    with pytest.raises(ValueError, match="k must be >= 1"):
        chunk_plan((8, 8)).k_eff(k)


@pytest.mark.parametrize(
    "shape, chunk, policy, fragment",
    [
        ((0, 4), 64, "divisor", "every dimension must be >= 1"),
        ((4, -1), 64, "divisor", "every dimension must be >= 1"),
        ((0,), 64, "divisor", "every dimension must be >= 1"),
        ((4, 4), 0, "divisor", "chunk target must be >= 1"),
        ((4, 4), 64, "bogus", "unknown chunk policy"),
    ],
)
def test_plan_errors(shape, chunk, policy, fragment):
    with pytest.raises(ValueError, match=fragment):
        chunk_plan(shape, chunk, policy)


@pytest.mark.parametrize("shape", [(6, 130), (2, 13, 26), (97,), (3, 5, 7)])
def test_chunk_order_row_major(shape):
    """Chunk ``(b, r, q)`` is row ``(b * chunks_m + r) * chunks_n + q`` of the DCT output,
    and coefficient ``(u, v)`` is at ``u * cn + v``: checked on a tensor that is nonzero in
    exactly one chunk, at its corner element (whose DC coefficient is then nonzero)."""
    import distro_kernels as dk

    p = chunk_plan(shape, 8)
    for cid in range(p.n_chunks):
        b, rest = divmod(cid, p.chunks_m * p.chunks_n)
        r, q = divmod(rest, p.chunks_n)
        x = torch.zeros(p.batch, p.m, p.n)
        x[b, r * p.cm, q * p.cn] = 1.0
        X = dk.dct(x.reshape(shape), 8, backend="reference")
        nz = torch.nonzero(X.abs().sum(dim=1)).flatten().tolist()
        assert nz == [cid]
        # inside the chunk the spike at (0, 0) gives X[u, v] = C_m[u, 0] * C_n[v, 0] != 0
        assert torch.all(X[cid] != 0)
    # and the independent chunker agrees on the layout
    x = np.arange(max(1, math.prod(shape)), dtype=np.float64).reshape(shape)
    blocks = sn.to_chunks(x, sn.plan(shape, 8))
    assert np.array_equal(sn.from_chunks(blocks, sn.plan(shape, 8)), x)
