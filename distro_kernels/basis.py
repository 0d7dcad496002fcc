"""The canonical DCT-II basis of SPEC section 2, identical bits on every backend."""

from __future__ import annotations

import functools

import numpy as np
import torch


@functools.lru_cache(maxsize=None)
def canonical_basis_np(c: int) -> np.ndarray:
    """``C[u, i] = a(u) cos(pi (2i+1) u / 2c)`` in float64, rounded to a multiple of 2^-24
    (ties to even; ``np.rint`` rounds half to even), stored as float32 (exact). Zeros are +0."""
    if c < 1:
        raise ValueError(f"basis size must be >= 1, got {c}")
    u = np.arange(c, dtype=np.float64)[:, None]
    i = np.arange(c, dtype=np.float64)[None, :]
    a = np.where(u == 0, np.sqrt(1.0 / c), np.sqrt(2.0 / c))
    exact = a * np.cos(np.pi * (2.0 * i + 1.0) * u / (2.0 * c))
    scale = float(2**24)
    rounded = np.rint(exact * scale) / scale + 0.0  # + 0.0: a cosine rounded to zero is +0, never -0
    out = rounded.astype(np.float32)
    assert np.array_equal(out.astype(np.float64), rounded), "canonical basis must be exact in f32"
    out.setflags(write=False)
    return out


def canonical_basis(c: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The canonical basis as a new float32 torch tensor of shape ``(c, c)``."""
    return cached_basis(c, device).clone()


def cached_basis(c: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The shared cached copy, for the kernels: read it, never write it."""
    return _basis_cached(c, str(device))


@functools.lru_cache(maxsize=256)
def _basis_cached(c: int, device: str) -> torch.Tensor:
    return torch.from_numpy(canonical_basis_np(c).copy()).to(device)
