"""SPEC section 2: the canonical DCT-II basis (float64 -> nearest 2^-24 multiple -> float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spec_numpy as sn
from distro_kernels import canonical_basis

SIZES = list(range(1, 65)) + [65, 96, 100, 128, 255, 256]


@pytest.mark.parametrize("c", SIZES)
def test_bits_equal_independent_basis(c):
    got = canonical_basis(c)
    assert got.dtype == torch.float32 and tuple(got.shape) == (c, c)
    # compare bits with -0 folded into +0 (see test_zero_entries_are_positive_zero)
    plus0 = np.float32(0.0)
    assert np.array_equal(sn.bits(got.numpy() + plus0), sn.bits(sn.canonical_basis(c) + plus0))


def test_zero_entries_are_positive_zero():
    """Entries whose exact value is 0 (cos(pi/2) in float64 is +-6e-17) must be the grid
    point ``0 * 2^-24 = +0``, not a -0 whose sign is float64 noise: SPEC says every backend
    uses the same basis *bits*, and a backend computing cos differently would flip them."""
    bad = {}
    for c in range(1, 257):
        got = canonical_basis(c)
        negzero = (got == 0) & torch.signbit(got)
        if bool(negzero.any()):
            bad[c] = negzero.nonzero().tolist()[:2]
    assert not bad, f"-0 basis entries for {len(bad)} sizes, e.g. {dict(list(bad.items())[:4])}"


@pytest.mark.parametrize("c", SIZES)
def test_on_2_pow_minus_24_grid_and_close_to_exact(c):
    got = canonical_basis(c).double().numpy()
    scaled = got * 2.0**24
    assert np.array_equal(scaled, np.round(scaled)), "entries must be multiples of 2^-24"
    # nearest grid point: error at most half a grid step
    assert np.max(np.abs(got - sn.exact_basis64(c))) <= 2.0**-25


@pytest.mark.parametrize("c", [1, 2, 3, 5, 7, 8, 13, 16, 31, 48, 64, 97])
def test_high_precision_rounding(c):
    """The rounding is unambiguous: computing the basis at 50 digits gives the same grid
    points, and no entry lies within float64 noise of a rounding tie."""
    mpmath = pytest.importorskip("mpmath")
    got = canonical_basis(c).double().numpy()
    with mpmath.workdps(50):
        for u in range(c):
            a = mpmath.sqrt(mpmath.mpf(1) / c) if u == 0 else mpmath.sqrt(mpmath.mpf(2) / c)
            for i in range(c):
                exact = a * mpmath.cos(mpmath.pi * (2 * i + 1) * u / (2 * c)) * 2**24
                nearest = mpmath.nint(exact)  # ties to even, as SPEC demands
                # float64 evaluation must not be able to land on the other side of a tie
                assert abs(abs(exact - mpmath.floor(exact)) - mpmath.mpf(0.5)) > 1e-6
                assert got[u, i] * 2**24 == int(nearest), (u, i)


def test_no_entry_near_a_rounding_tie():
    """For every chunk size 1..256, each entry is far (> 1e-6 grid steps, i.e. > 6e-14) from a
    tie between two grid points, so float64 evaluation noise (~1e-16) cannot change a bit."""
    for c in range(1, 257):
        u = np.arange(c, dtype=np.float64)[:, None]
        i = np.arange(c, dtype=np.float64)[None, :]
        a = np.where(u == 0, np.sqrt(1.0 / c), np.sqrt(2.0 / c))
        scaled = a * np.cos(np.pi * (2.0 * i + 1.0) * u / (2.0 * c)) * 2.0**24
        frac = np.abs(scaled - np.floor(scaled) - 0.5)
        assert frac.min() > 1e-6, (c, np.unravel_index(frac.argmin(), frac.shape))


@pytest.mark.parametrize("c", [1, 2, 4, 8, 16, 32, 64])
def test_special_values(c):
    b = canonical_basis(c).double().numpy()
    assert np.all(b[0] == b[0, 0])  # DC row is constant
    assert b[0, 0] == round(np.sqrt(1.0 / c) * 2**24) / 2**24
    if c == 1:
        assert b[0, 0] == 1.0
    if c >= 2:
        # symmetry: C[u, c-1-i] = (-1)^u C[u, i] exactly (survives the rounding)
        sign = np.where(np.arange(c) % 2 == 0, 1.0, -1.0)[:, None]
        assert np.array_equal(b[:, ::-1], sign * b)


@pytest.mark.parametrize("c", [1, 3, 7, 8, 26, 61, 64, 256])
def test_nearly_orthonormal(c):
    b = canonical_basis(c).double()
    err = (b @ b.T - torch.eye(c, dtype=torch.float64)).abs().max().item()
    assert err < c * 2.0**-23


@pytest.mark.parametrize("c", [4, 7, 64])
def test_matches_scipy_dct(c):
    """An outside float64 DCT-II (scipy, norm='ortho') agrees with the basis to grid error."""
    fft = pytest.importorskip("scipy.fft")
    rng = np.random.default_rng(c)
    x = rng.standard_normal(c)
    ref = fft.dct(x, type=2, norm="ortho")
    got = canonical_basis(c).double().numpy() @ x
    assert np.max(np.abs(got - ref)) <= np.sum(np.abs(x)) * 2.0**-25 + 1e-12


def test_invalid_size():
    with pytest.raises(ValueError, match="basis size must be >= 1"):
        canonical_basis(0)


def test_returned_basis_is_not_shared_mutable_state():
    """Mutating the tensor ``canonical_basis`` returns must not corrupt later transforms.

    ``canonical_basis`` caches its tensors (lru_cache) and the reference backend reads the
    same cache, so an in-place edit by a caller would silently change every later decode.
    """
    import distro_kernels as dk

    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(5))
    before = dk.idct(dk.dct(x, 8, backend="reference"), (8, 8), 8, backend="reference")
    b = canonical_basis(8)
    saved = b.clone()
    try:
        b.mul_(2.0)
        after = dk.idct(dk.dct(x, 8, backend="reference"), (8, 8), 8, backend="reference")
        assert torch.equal(before, after)
        assert torch.equal(canonical_basis(8), saved)
    finally:
        b.copy_(saved)  # undo, whatever the outcome, so other tests are not poisoned
