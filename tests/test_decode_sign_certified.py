"""The certified sign (csrc/cpu/sign_fold.h): ``sign=True`` decodes whose T is mostly nonzero
take sign(y) from a fast evaluation wherever a rounding-error bound certifies it, and refold
the rest exactly. These payloads engage it (many picks per chunk) and put many outputs at,
or within a few rounding errors of, zero, where a bound too tight would flip a sign. Every
result is compared bit for bit with tests/spec_numpy.py, which folds every output."""

from __future__ import annotations

import numpy as np
import pytest

import spec_numpy as sn
from conftest import assert_same_bits, seed_of
from test_decode import make_indices, make_values, run_both

# Chunk sides the recursion handles differently: cm = 64 (six levels), 48 (four, down to 3),
# 32 and 16 (five, four), 24 (three), 12 (two), 2 and 62 (one), 31 (none: the exact fold
# runs); widths the first stage mirrors (cn = 64, 48, 32, 16: 48 has zero basis entries) and
# widths that end in a half vector (cn = 40, 24, 12) or are not a multiple of 16 (cn = 60).
SHAPES = [(128, 128), (96, 80), (48, 120), (24, 12), (12, 64), (2, 64), (62, 64), (31, 40),
          (3, 5, 64, 24), (64, 48), (32, 32), (16, 16)]
U_EPS = 2.0**-24


def gamma(n: int) -> float:
    return n * U_EPS / (1 - n * U_EPS)


def levels_of(cm: int) -> int:
    """How many even/odd levels ChunkBases plans for cm (the symmetry holds for these sizes)."""
    n, levels = cm, 0
    while n % 2 == 0:
        n //= 2
        levels += 1
    return levels


def band_count(y64: np.ndarray, A: np.ndarray, p: sn.Plan) -> int:
    """Outputs within the certified sign's bound, measured on the float64 decode y64: those
    the kernel must refold exactly (an estimate: y64 is not the fast sum it tests)."""
    levels = levels_of(p.cm)
    if not levels:
        return 0
    dot = max(p.cm >> levels, p.cm // 2)
    factor = 2 * (gamma(dot + levels + 1) + gamma(p.cm))
    factor *= np.abs(sn.canonical_basis(p.cm)).max() * np.abs(sn.canonical_basis(p.cn)).max()
    bound = factor * np.abs(A).sum(axis=1)  # per chunk
    blocks = sn.to_chunks(y64.reshape(p.shape), p).reshape(p.n_chunks, -1)
    return int((np.abs(blocks) <= 4 * bound[:, None]).sum())


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("codec", ["f32", "sign"])
@pytest.mark.parametrize("reduce", ["mean", "sum_over_peers"])
def test_dense_payloads_match_spec(backend, shape, codec, reduce):
    """8 peers, a quarter of each chunk each: nearly every row of T nonzero."""
    p = sn.plan(shape, 64)
    rng = np.random.default_rng(seed_of("certified-dense", shape, codec, reduce))
    k = max(1, p.E // 4)
    indices = make_indices(rng, p.n_chunks, p.E, k, 8, "random")
    values = [make_values(rng, (p.n_chunks, k), codec, 1.0, 0.05) for _ in range(8)]
    got, want = run_both(backend, shape, 64, indices, values, reduce=reduce, codec=codec, sign=True)
    assert_same_bits(got, want)


def cancelling_payload(shape, rng, tiny_exponents, chunk=64):
    """One peer sends every coefficient of a chunked signal z whose entries are mostly exact
    zeros or ~2^-e times the rest, so the decode's outputs sit at its rounding noise there."""
    p = sn.plan(shape, chunk)
    z = rng.standard_normal(shape)
    kind = rng.integers(0, 3, size=shape)
    z[kind == 0] = 0.0
    exponents = rng.choice(tiny_exponents, size=shape)
    z[kind == 1] *= 2.0 ** -exponents[kind == 1]
    A = sn.dct64(z, p).astype(np.float32)
    idx = np.broadcast_to(np.arange(p.E), (p.n_chunks, p.E)).copy()
    return p, A, [idx], [A]


@pytest.mark.parametrize("shape", [(64, 64), (128, 64), (96, 80), (48, 120)], ids=str)
@pytest.mark.parametrize("seed", range(3))
def test_outputs_at_the_rounding_noise_match_spec(backend, shape, seed):
    rng = np.random.default_rng(seed_of("certified-cancel", shape, seed))
    p, A, indices, values = cancelling_payload(shape, rng, np.arange(14, 30))
    got, want = run_both(backend, shape, 64, indices, values, codec="f32", sign=True)
    assert_same_bits(got, want)
    # the payload must reach the refold: many outputs lie within the bound
    y64 = sn.idct64(A.astype(np.float64), p)
    assert band_count(y64, A, p) > 100
    assert (want == 0).any() and (want == 1).any() and (want == -1).any()


@pytest.mark.parametrize("seed", range(3))
def test_many_peers_cancelling_each_other_match_spec(backend, seed):
    """Peers send the same indices with values that nearly cancel in the mean."""
    shape = (128, 128)
    p = sn.plan(shape, 64)
    rng = np.random.default_rng(seed_of("certified-peers", seed))
    idx = make_indices(rng, p.n_chunks, p.E, p.E // 2, 1, "random")[0]
    base = rng.standard_normal((p.n_chunks, idx.shape[1])).astype(np.float32)
    nudge = (base * np.float32(2.0**-20) * rng.integers(-2, 3, size=base.shape)).astype(np.float32)
    values = [base, (-base + nudge).astype(np.float32), base, -base]
    got, want = run_both(backend, shape, 64, [idx] * 4, values, codec="f32", sign=True)
    assert_same_bits(got, want)


def test_all_zero_values_give_plus_zero(backend):
    """Every pick zero: T is +0 everywhere, no output is certified, and each is +0."""
    shape = (128, 64)
    p = sn.plan(shape, 64)
    rng = np.random.default_rng(seed_of("certified-zero"))
    indices = make_indices(rng, p.n_chunks, p.E, p.E // 2, 3, "random")
    values = [np.zeros(i.shape, np.float32) for i in indices]
    got, want = run_both(backend, shape, 64, indices, values, codec="f32", sign=True)
    assert_same_bits(got, want)
    assert not got.view(dtype=got.dtype).numpy().view(np.int32).any()


def test_sparse_and_dense_chunks_in_one_tensor_match_spec(backend):
    """Chunks on either side of the certified path's row threshold, in one call."""
    shape = (256, 128)
    p = sn.plan(shape, 64)
    rng = np.random.default_rng(seed_of("certified-mixed"))
    k = 48
    indices = make_indices(rng, p.n_chunks, p.E, k, 2, "random")
    for i in indices:  # even chunks: picks in the first rows only (sparse T)
        i[::2] = np.sort(rng.permuted(np.tile(np.arange(4 * p.cn), (p.n_chunks // 2, 1)), axis=1)[:, :k], axis=1)
    values = [make_values(rng, (p.n_chunks, k), "f32", 1.0, 0.0) for _ in range(2)]
    got, want = run_both(backend, shape, 64, indices, values, codec="f32", sign=True)
    assert_same_bits(got, want)


@pytest.mark.parametrize("shape, chunk", [((256, 256), 256), ((128, 384), 128), ((160, 96), 160)],
                         ids=str)
def test_large_chunk_sides_match_spec(backend, shape, chunk):
    """Chunk sides past 64: eight levels at 256, seven at 128, five down to 5 at 160."""
    p = sn.plan(shape, chunk)
    rng = np.random.default_rng(seed_of("certified-large", shape, chunk))
    k = p.E // 8
    indices = make_indices(rng, p.n_chunks, p.E, k, 4, "random")
    values = [make_values(rng, (p.n_chunks, k), "f32", 1.0, 0.0) for _ in range(4)]
    got, want = run_both(backend, shape, chunk, indices, values, codec="f32", sign=True)
    assert_same_bits(got, want)
    _, _, indices, values = cancelling_payload(shape, rng, np.arange(14, 30), chunk)
    got, want = run_both(backend, shape, chunk, indices, values, codec="f32", sign=True)
    assert_same_bits(got, want)
