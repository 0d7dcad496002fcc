"""SPEC section 2 (forward DCT, accuracy bar of section 6) and the canonical inverse (4.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import distro_kernels as dk
import spec_numpy as sn
from conftest import (
    seed_of,
    BACKENDS,
    CHUNKS,
    DTYPES,
    HAS_CPU,
    ODD_SHAPES,
    assert_same_bits,
    needs_cpu,
    randn,
    rel_err,
    shapes_strategy,
)

DCT_BAR = 1e-5  # SPEC 6, fp32 paths


def _seed(*parts) -> int:
    return seed_of(*parts)


def _x(shape, seed, dtype=torch.float32, scale=1.0):
    return randn(shape, seed, dtype, scale)


# ---------------------------------------------------------------------------- forward


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dct_matches_float64(backend, shape, chunk, dtype):
    x = _x(shape, _seed("dct", shape, chunk, dtype), dtype)
    X = dk.dct(x, chunk, backend=backend)
    p = sn.plan(shape, chunk)
    assert X.dtype == torch.float32
    assert tuple(X.shape) == (p.n_chunks, p.E)
    ref = sn.dct64(x.double().numpy(), p)
    assert rel_err(X.numpy(), ref) < DCT_BAR


@pytest.mark.parametrize("shape", [(5,), (10, 12), (5, 7), (3, 9, 13), (97, 61), ()])
@pytest.mark.parametrize("chunk", [4, 8, 48])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dct_pad_policy_matches_float64(backend, shape, chunk, dtype):
    x = _x(shape, _seed("pad", shape, chunk, dtype), dtype)
    X = dk.dct(x, chunk, policy="pad", backend=backend)
    p = sn.plan(shape, chunk, "pad")
    assert tuple(X.shape) == (p.n_chunks, p.E)
    assert rel_err(X.numpy(), sn.dct64(x.double().numpy(), p)) < DCT_BAR


@given(
    shape=shapes_strategy(),
    chunk=st.integers(1, 64),
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.sampled_from([-25, -8, 0, 8, 25]),
    dtype=st.sampled_from(DTYPES),
)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_dct_random_shapes_and_scales(backend_name, shape, chunk, seed, log_scale, dtype):
    if dtype != torch.float32:
        log_scale = max(min(log_scale, 4), -4)  # stay inside f16's range
    x = _x(shape, seed, dtype, 10.0**log_scale)
    X = dk.dct(x, chunk, backend=backend_name)
    ref = sn.dct64(x.double().numpy(), sn.plan(shape, chunk))
    if not np.any(ref):
        assert not torch.any(X)
    else:
        assert rel_err(X.numpy(), ref) < DCT_BAR


def test_dct_chunk_one_is_identity(backend):
    x = _x((5, 7), 11)
    X = dk.dct(x, 1, backend=backend)
    assert tuple(X.shape) == (35, 1)
    assert torch.equal(X.reshape(5, 7), x)


def test_dct_does_not_modify_input_and_accepts_views(backend):
    base = _x((24, 40), 3)
    x = base.t()  # non-contiguous (40, 24)
    keep = x.clone()
    X = dk.dct(x, 8, backend=backend)
    assert torch.equal(x, keep)
    assert torch.equal(X, dk.dct(x.contiguous(), 8, backend=backend))
    ref = sn.dct64(x.double().numpy(), sn.plan((40, 24), 8))
    assert rel_err(X.numpy(), ref) < DCT_BAR


def test_dct_of_zero_is_zero(backend):
    for shape in [(), (13,), (6, 130), (2, 3, 5)]:
        assert not torch.any(dk.dct(torch.zeros(shape), 8, backend=backend))


def test_auto_backend_is_the_preferred_one():
    x = _x((33, 48), 17)
    want = "cpu" if HAS_CPU else "reference"
    assert torch.equal(dk.dct(x, 16), dk.dct(x, 16, backend=want))
    assert torch.equal(dk.dct(x, 16, backend="auto"), dk.dct(x, 16, backend=want))


# ---------------------------------------------------------------------------- inverse


def _coeffs(shape, chunk, seed, policy="divisor", scale=1.0):
    p = sn.plan(shape, chunk, policy)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(p.n_chunks, p.E, generator=g) * scale


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("chunk", CHUNKS)
def test_idct_bitwise_equals_spec_numpy(backend, shape, chunk):
    C = _coeffs(shape, chunk, _seed("idct", shape, chunk))
    y = dk.idct(C, shape, chunk, backend=backend)
    assert y.dtype == torch.float32 and tuple(y.shape) == tuple(shape)
    assert_same_bits(y, sn.inverse(C.numpy(), shape, chunk))


@pytest.mark.parametrize("shape", [(5,), (10, 12), (5, 7), (3, 9, 13), (97, 61)])
@pytest.mark.parametrize("chunk", [4, 8, 48])
def test_idct_pad_policy_bitwise(backend, shape, chunk):
    C = _coeffs(shape, chunk, _seed("idctpad", shape, chunk), "pad")
    y = dk.idct(C, shape, chunk, policy="pad", backend=backend)
    assert tuple(y.shape) == tuple(shape)
    assert_same_bits(y, sn.inverse(C.numpy(), shape, chunk, "pad"))


@given(
    shape=shapes_strategy(),
    chunk=st.integers(1, 64),
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.sampled_from([-20, -3, 0, 3, 20]),
    sparsity=st.sampled_from([0.0, 0.5, 0.97]),
)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_idct_random_bitwise(backend_name, shape, chunk, seed, log_scale, sparsity):
    C = _coeffs(shape, chunk, seed, scale=10.0**log_scale)
    if sparsity:
        g = torch.Generator().manual_seed(seed + 1)
        C = torch.where(torch.rand(C.shape, generator=g) < sparsity, torch.zeros(()), C)
    y = dk.idct(C, shape, chunk, backend=backend_name)
    assert_same_bits(y, sn.inverse(C.numpy(), shape, chunk))


def test_idct_accepts_views(backend):
    shape, chunk = (6, 130), 16
    C = _coeffs(shape, chunk, 4)
    view = C.t().contiguous().t()
    assert not view.is_contiguous()
    assert_same_bits(dk.idct(view, shape, chunk, backend=backend),
                     sn.inverse(C.numpy(), shape, chunk))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_idct_half_inputs_are_upcast_exactly(backend, dtype):
    shape, chunk = (29, 64), 16
    C = _coeffs(shape, chunk, 9).to(dtype)
    y = dk.idct(C, shape, chunk, backend=backend)
    assert_same_bits(y, sn.inverse(C.float().numpy(), shape, chunk))


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("chunk", [8, 64])
@pytest.mark.parametrize("policy", ["divisor", "pad"])
def test_round_trip(backend, shape, chunk, policy):
    x = _x(shape, _seed("rt", shape, chunk, policy))
    y = dk.idct(dk.dct(x, chunk, policy=policy, backend=backend), shape, chunk, policy=policy,
                backend=backend)
    assert tuple(y.shape) == tuple(shape)
    assert rel_err(y.numpy(), x.numpy()) < 1e-5


def test_idct_of_dct_float64_reference_is_close():
    """The canonical basis is orthonormal to within its rounding: the float64 round trip
    through the spec's own transform returns x to ~1e-7."""
    x = np.random.default_rng(0).standard_normal((40, 64))
    p = sn.plan(x.shape, 64)
    assert rel_err(sn.idct64(sn.dct64(x, p), p), x) < 1e-6


def test_idct_zero_gives_positive_zero(backend):
    """Folds start from +0, so a zero (or -0) aggregate gives +0 everywhere, never -0."""
    for shape, chunk in [((6, 130), 8), ((7,), 64), ((), 64)]:
        p = sn.plan(shape, chunk)
        C = torch.full((p.n_chunks, p.E), -0.0)
        y = dk.idct(C, shape, chunk, backend=backend)
        assert_same_bits(y, np.zeros(shape, dtype=np.float32))


# ---------------------------------------------------------------------------- cross-backend


@needs_cpu
@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("chunk", CHUNKS)
def test_idct_cpu_equals_reference_bitwise(shape, chunk):
    C = _coeffs(shape, chunk, _seed("xb", shape, chunk), scale=3.0)
    assert_same_bits(dk.idct(C, shape, chunk, backend="cpu"),
                     dk.idct(C, shape, chunk, backend="reference"))


@needs_cpu
@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dct_cpu_close_to_reference(shape, dtype):
    x = _x(shape, _seed("xbd", shape, dtype), dtype)
    a = dk.dct(x, 16, backend="cpu")
    b = dk.dct(x, 16, backend="reference")
    ref = sn.dct64(x.double().numpy(), sn.plan(shape, 16))
    assert rel_err(a.numpy(), ref) < DCT_BAR
    assert rel_err(a.numpy(), b.numpy()) < 2 * DCT_BAR


@pytest.mark.parametrize("shape", [(3, 130), (200,), (129, 67), (2, 100, 9), (255, 2), (17, 256)])
def test_wide_chunks(backend, shape):
    x = _x(shape, _seed("wide", shape))
    X = dk.dct(x, 256, backend=backend)
    p = sn.plan(shape, 256)
    assert rel_err(X.numpy(), sn.dct64(x.double().numpy(), p)) < DCT_BAR
    C = _coeffs(shape, 256, _seed("widec", shape))
    assert_same_bits(dk.idct(C, shape, 256, backend=backend), sn.inverse(C.numpy(), shape, 256))
    idx, vals = dk.compress(x, 40, 256, backend=backend)
    want = sn.brute_topk(sn.dct64(x.double().numpy(), p), 40)
    kth = sn.kth_magnitude(sn.dct64(x.double().numpy(), p), 40)
    X64 = sn.dct64(x.double().numpy(), p)
    for r in range(p.n_chunks):
        for j in set(idx[r].tolist()) ^ set(want[r].tolist()):
            assert abs(abs(X64[r, j]) - kth[r]) <= 1e-4 * kth[r]
