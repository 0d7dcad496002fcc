"""An independent numpy implementation of SPEC (sections 1-4), carried by the tests.

Deliberately written without importing anything from ``distro_kernels``: the chunk rule,
the canonical basis, the float64 forward transform, brute-force top-k selection and the
bit-exact decode of SPEC section 4 are all spelt out again here, in a different style
(explicit loops over chunks, Python's own rounding, explicit ascending folds), so that a
shared mistake in the package cannot hide itself.

All decode arithmetic is numpy float32: every ``+``, ``*`` and ``/`` on float32 arrays is
one separately rounded IEEE-754 operation (round to nearest even, no FMA contraction).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

F32 = np.float32
FLUSH = 2.0**-55  # SPEC 4.1 / 4.2: |v| below this becomes +0
LIMIT = 2.0**64  # SPEC 4.1: |v| at or above this (or non-finite) rejects


class SpecReject(ValueError):
    """The payload breaks a SPEC section 4.1 / 5 content rule."""


# ---------------------------------------------------------------------------- section 1


def chunk_len(d: int, s: int, policy: str = "divisor") -> int:
    """``c(d)``: largest divisor of ``d`` that is ``<= s`` (or ``min(s, d)`` for ``pad``)."""
    assert d >= 1 and s >= 1
    if policy == "pad":
        return min(s, d)
    assert policy == "divisor"
    return max(c for c in range(1, min(s, d) + 1) if d % c == 0)


@dataclass(frozen=True)
class Plan:
    shape: tuple
    batch: int
    m: int  # logical rows (1 in 1-D mode)
    n: int  # logical columns
    cm: int
    cn: int
    pm: int  # padded rows
    pn: int  # padded columns

    @property
    def rows(self) -> int:  # chunk rows
        return self.pm // self.cm

    @property
    def cols(self) -> int:  # chunk columns
        return self.pn // self.cn

    @property
    def n_chunks(self) -> int:
        return self.batch * self.rows * self.cols

    @property
    def E(self) -> int:
        return self.cm * self.cn

    def k_eff(self, k: int) -> int:
        return min(k, self.E)


def plan(shape, s: int = 64, policy: str = "divisor") -> Plan:
    shape = tuple(int(d) for d in shape)
    if len(shape) >= 2:
        batch = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
        m, n = shape[-2], shape[-1]
        cm, cn = chunk_len(m, s, policy), chunk_len(n, s, policy)
    else:
        batch, m = 1, 1
        n = shape[0] if shape else 1
        cm, cn = 1, chunk_len(n, s, policy)
    pm = -(-m // cm) * cm
    pn = -(-n // cn) * cn
    return Plan(shape, batch, m, n, cm, cn, pm, pn)


def to_chunks(x: np.ndarray, p: Plan) -> np.ndarray:
    """Tensor of ``p.shape`` -> ``(n_chunks, cm, cn)`` in SPEC row-major chunk order,
    zero-padding when the plan pads. Written as explicit loops over chunk ids."""
    x3 = np.asarray(x).reshape(p.batch, p.m, p.n)
    padded = np.zeros((p.batch, p.pm, p.pn), dtype=x3.dtype)
    padded[:, : p.m, : p.n] = x3
    out = np.empty((p.n_chunks, p.cm, p.cn), dtype=x3.dtype)
    for b in range(p.batch):
        for r in range(p.rows):
            for q in range(p.cols):
                cid = (b * p.rows + r) * p.cols + q
                out[cid] = padded[b, r * p.cm : (r + 1) * p.cm, q * p.cn : (q + 1) * p.cn]
    return out


def from_chunks(blocks: np.ndarray, p: Plan) -> np.ndarray:
    """Inverse of :func:`to_chunks` (crops any padding) -> array of ``p.shape``."""
    padded = np.empty((p.batch, p.pm, p.pn), dtype=blocks.dtype)
    for b in range(p.batch):
        for r in range(p.rows):
            for q in range(p.cols):
                cid = (b * p.rows + r) * p.cols + q
                padded[b, r * p.cm : (r + 1) * p.cm, q * p.cn : (q + 1) * p.cn] = blocks[cid]
    return padded[:, : p.m, : p.n].reshape(p.shape)


# ---------------------------------------------------------------------------- section 2


@functools.lru_cache(maxsize=None)
def exact_basis64(c: int) -> np.ndarray:
    """The unrounded orthonormal DCT-II basis, float64, via Python's math module."""
    out = np.empty((c, c), dtype=np.float64)
    for u in range(c):
        a = math.sqrt(1.0 / c) if u == 0 else math.sqrt(2.0 / c)
        for i in range(c):
            out[u, i] = a * math.cos(math.pi * (2 * i + 1) * u / (2 * c))
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=None)
def canonical_basis(c: int) -> np.ndarray:
    """SPEC 2: float64 basis rounded to the nearest multiple of 2^-24 (ties to even), float32.

    Python's ``round`` on a float is round-half-even; ``x * 2**24`` is exact in float64.
    """
    exact = exact_basis64(c)
    out = np.empty((c, c), dtype=np.float32)
    for u in range(c):
        for i in range(c):
            q = round(exact[u, i] * 16777216.0)  # an int, ties to even
            v = q / 16777216.0
            assert float(F32(v)) == v, "a multiple of 2^-24 in (-1, 1] must be exact in f32"
            out[u, i] = F32(v)
    out.setflags(write=False)  # cached: callers must not modify it
    return out


def dct64(x: np.ndarray, p: Plan, basis: str = "canonical") -> np.ndarray:
    """Float64 forward transform ``X = C_m x C_n^T`` per chunk -> ``(n_chunks, E)``.

    ``basis="canonical"`` uses the canonical float32 basis' values in float64 arithmetic
    (the transform every backend implements); ``"exact"`` the unrounded basis.
    """
    get = canonical_basis if basis == "canonical" else exact_basis64
    bm = get(p.cm).astype(np.float64)
    bn = get(p.cn).astype(np.float64)
    blocks = to_chunks(np.asarray(x, dtype=np.float64), p)
    out = np.matmul(np.matmul(bm, blocks), bn.T)  # X[b] = C_m x[b] C_n^T
    return out.reshape(p.n_chunks, p.E)


def idct64(coeffs: np.ndarray, p: Plan) -> np.ndarray:
    """Float64 inverse with the canonical basis -> array of ``p.shape``."""
    bm = canonical_basis(p.cm).astype(np.float64)
    bn = canonical_basis(p.cn).astype(np.float64)
    blocks = np.asarray(coeffs, dtype=np.float64).reshape(p.n_chunks, p.cm, p.cn)
    return from_chunks(np.matmul(np.matmul(bm.T, blocks), bn), p)  # x[b] = C_m^T X[b] C_n


# ---------------------------------------------------------------------------- section 3


def brute_topk(X: np.ndarray, k: int) -> np.ndarray:
    """Per row, the ``min(k, E)`` indices of largest ``|X|`` (ties: smaller index wins),
    sorted ascending. A full Python sort on the key ``(-|X|, index)``; ``|-0| == |+0|``."""
    X = np.asarray(X)
    rows, E = X.shape
    k_eff = min(k, E)
    out = np.empty((rows, k_eff), dtype=np.int64)
    for r in range(rows):
        mags = [abs(float(v)) for v in X[r]]
        order = sorted(range(E), key=lambda j: (-mags[j], j))
        out[r] = sorted(order[:k_eff])
    return out


def kth_magnitude(X: np.ndarray, k: int) -> np.ndarray:
    """Per row, the ``min(k, E)``-th largest ``|X|``."""
    mags = -np.sort(-np.abs(np.asarray(X, dtype=np.float64)), axis=1)
    return mags[:, min(k, mags.shape[1]) - 1]


def demo_step64(delta: np.ndarray, grad: np.ndarray, p: Plan, beta: float, lr: float, k: int):
    """SPEC 3 in float64: momentum, select on DCT(delta), subtract IDCT(selected).

    Returns ``(new_delta, X, indices)`` where ``X`` is DCT(delta) before error feedback.
    """
    d = beta * np.asarray(delta, dtype=np.float64) + lr * np.asarray(grad, dtype=np.float64)
    X = dct64(d, p)
    idx = brute_topk(X, k)
    sent = np.zeros_like(X)
    rows = np.arange(X.shape[0])[:, None]
    sent[rows, idx] = X[rows, idx]
    return d - idct64(sent, p), X, idx


# ---------------------------------------------------------------------------- codecs


def pack_signs(values) -> np.ndarray:
    """1 bit per value, bit = signbit, LSB-first in each byte."""
    bits = np.signbit(np.asarray(values, dtype=np.float32).reshape(-1))
    out = np.zeros((bits.size + 7) // 8, dtype=np.uint8)
    for i, b in enumerate(bits):
        if b:
            out[i // 8] |= np.uint8(1 << (i % 8))
    return out


def unpack_sign_bits(packed, n: int) -> np.ndarray:
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    return np.array([(int(packed[i // 8]) >> (i % 8)) & 1 for i in range(n)], dtype=np.int64)


# ---------------------------------------------------------------------------- section 4


def canonicalise(values) -> np.ndarray:
    """SPEC 4.1 on float32 values: reject non-finite / |v| >= 2^64; -0 and |v| < 2^-55 -> +0."""
    v = np.array(values, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(v)) or np.any(np.abs(v.astype(np.float64)) >= LIMIT):
        raise SpecReject("value not finite or |value| >= 2^64")
    v[np.abs(v.astype(np.float64)) < FLUSH] = F32(0.0)  # includes -0, written as +0
    return v


def validate_indices(idx: np.ndarray, p: Plan) -> None:
    if idx.ndim != 2 or idx.shape[0] != p.n_chunks:
        raise SpecReject("indices shape")
    if idx.size and (idx.min() < 0 or idx.max() >= p.E):
        raise SpecReject("index out of range")
    if idx.shape[1] > 1 and not np.all(idx[:, 1:] > idx[:, :-1]):
        raise SpecReject("indices not strictly ascending")


def aggregate(indices_list, values_list, p: Plan, reduce: str = "mean", codec: str = "f32"):
    """SPEC 4.2 -> float32 ``(n_chunks, E)`` aggregate."""
    P = len(indices_list)
    rows = np.arange(p.n_chunks)[:, None]
    count = np.zeros((p.n_chunks, p.E), dtype=np.int64)
    if codec == "sign":
        net = np.zeros((p.n_chunks, p.E), dtype=np.int64)  # n_pos - n_neg, exact
        for idx, packed in zip(indices_list, values_list):
            idx = np.asarray(idx, dtype=np.int64)
            validate_indices(idx, p)
            bits = unpack_sign_bits(packed, idx.size).reshape(idx.shape)
            net[rows, idx] += 1 - 2 * bits
            count[rows, idx] += 1
        S = net.astype(np.float32)  # small integers: exact
    else:
        S = np.zeros((p.n_chunks, p.E), dtype=np.float32)
        for idx, vals in zip(indices_list, values_list):
            idx = np.asarray(idx, dtype=np.int64)
            validate_indices(idx, p)
            v = canonicalise(vals).reshape(idx.shape)
            # indices are unique within a row: one rounded float32 add per (row, index)
            S[rows, idx] = S[rows, idx] + v
            count[rows, idx] += 1
    if reduce == "mean":
        den = count.astype(np.float32)
    elif reduce == "sum_over_peers":
        den = np.full(count.shape, F32(P), dtype=np.float32)
    else:
        raise ValueError(reduce)
    A = np.zeros_like(S)
    hit = count > 0
    A[hit] = S[hit] / den[hit]  # float32 IEEE division, correctly rounded
    A[np.abs(A.astype(np.float64)) < FLUSH] = F32(0.0)
    return A


def canonical_inverse(A: np.ndarray, p: Plan) -> np.ndarray:
    """SPEC 4.3: ascending folds, one rounded float32 multiply and one add per term."""
    Cm = canonical_basis(p.cm)
    Cn = canonical_basis(p.cn)
    blocks = np.asarray(A, dtype=np.float32).reshape(p.n_chunks, p.cm, p.cn)
    T = np.zeros((p.n_chunks, p.cm, p.cn), dtype=np.float32)
    for v in range(p.cn):
        prod = blocks[:, :, v : v + 1] * Cn[v][None, None, :]  # (chunks, u, j), rounded
        T = T + prod  # rounded
    y = np.zeros((p.n_chunks, p.cm, p.cn), dtype=np.float32)
    for u in range(p.cm):
        prod = Cm[u][None, :, None] * T[:, u : u + 1, :]  # (chunks, i, j), rounded
        y = y + prod
    assert y.dtype == np.float32 and T.dtype == np.float32
    return y


def decode(
    indices_list, values_list, shape, s: int = 64, *, reduce: str = "mean", codec: str = "f32",
    sign: bool = False, policy: str = "divisor",
) -> np.ndarray:
    """SPEC section 4 end to end -> float32 array of ``shape`` (or its sign)."""
    p = plan(shape, s, policy)
    A = aggregate(indices_list, values_list, p, reduce, codec)
    y = from_chunks(canonical_inverse(A, p), p)
    if sign:
        y = np.sign(y).astype(np.float32)
    return y.reshape(tuple(shape))


def inverse(coeffs, shape, s: int = 64, policy: str = "divisor") -> np.ndarray:
    """The canonical inverse of dense float32 coefficients ``(n_chunks, E)`` (SPEC 4.3)."""
    p = plan(shape, s, policy)
    y = from_chunks(canonical_inverse(np.asarray(coeffs, dtype=np.float32), p), p)
    return y.reshape(tuple(shape))


def bits(a) -> np.ndarray:
    """float32 array -> its int32 bit patterns (for bitwise comparisons)."""
    return np.array(a, dtype=np.float32, order="C", copy=True).view(np.int32)
