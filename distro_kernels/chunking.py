"""Chunk geometry of SPEC section 1: how a tensor shape is cut into DCT chunks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

POLICIES = ("divisor", "pad")


def chunk_size(d: int, target: int, policy: str = "divisor") -> int:
    """Chunk length along one dim of size ``d`` for target ``target``.

    ``divisor``: the largest divisor of ``d`` that is ``<= target`` (DeMo's rule).
    ``pad``: ``min(target, d)``; the dim is then zero-padded to a multiple of it.
    """
    if d < 1:
        raise ValueError(f"dimension must be >= 1, got {d}")
    if target < 1:
        raise ValueError(f"chunk target must be >= 1, got {target}")
    if policy == "pad":
        return min(target, d)
    if policy != "divisor":
        raise ValueError(f"unknown chunk policy {policy!r}; expected one of {POLICIES}")
    if d <= target:
        return d
    for c in range(target, 0, -1):
        if d % c == 0:
            return c
    return 1  # unreachable: 1 divides everything


@dataclass(frozen=True)
class ChunkPlan:
    """How one tensor is chunked.

    ``mode`` is ``"2d"`` (last two dims ``(m, n)``, leading dims are batches) or ``"1d"``
    (``m == 1``). ``m`` and ``n`` are the chunked dims, i.e. those of ``padded_shape``, which
    equals ``shape`` except under the ``pad`` policy.
    Chunk ``b, r, q`` (batch, chunk row, chunk column) has flat id
    ``(b * chunks_m + r) * chunks_n + q``; coefficient ``(u, v)`` is at ``u * cn + v``.
    """

    shape: tuple[int, ...]
    padded_shape: tuple[int, ...]
    mode: str
    batch: int
    m: int
    n: int
    cm: int
    cn: int
    chunk: int
    policy: str

    @property
    def chunks_m(self) -> int:
        return self.m // self.cm

    @property
    def chunks_n(self) -> int:
        return self.n // self.cn

    @property
    def n_chunks(self) -> int:
        return self.batch * self.chunks_m * self.chunks_n

    @property
    def elements_per_chunk(self) -> int:
        return self.cm * self.cn

    E = elements_per_chunk

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_padded(self) -> bool:
        return self.padded_shape != self.shape

    def k_eff(self, k: int) -> int:
        """Coefficients kept per chunk: ``min(k, E)``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return min(k, self.elements_per_chunk)


def chunk_plan(shape: Sequence[int], chunk: int = 64, policy: str = "divisor") -> ChunkPlan:
    """The chunk dims, chunk count and elements per chunk of ``shape`` (SPEC section 1)."""
    shape = tuple(int(d) for d in shape)
    if any(d < 1 for d in shape):
        raise ValueError(f"every dimension must be >= 1, got shape {shape}")
    if len(shape) >= 2:
        mode, batch, m, n = "2d", math.prod(shape[:-2]), shape[-2], shape[-1]
    else:
        mode, batch, m, n = "1d", 1, 1, (shape[0] if shape else 1)
    cm = 1 if mode == "1d" else chunk_size(m, chunk, policy)
    cn = chunk_size(n, chunk, policy)
    pm, pn = -(-m // cm) * cm, -(-n // cn) * cn
    if mode == "2d":
        padded = shape[:-2] + (pm, pn)
    else:
        padded = (pn,) if shape else (1,)
        padded = padded if pn != n else shape
    return ChunkPlan(shape, padded, mode, batch, pm, pn, cm, cn, int(chunk), policy)


# Layout helpers every backend uses: a tensor of ``plan.shape`` <-> its chunks.


def to_chunks(x: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """``x`` of ``plan.padded_shape`` -> ``(n_chunks, cm, cn)`` in SPEC chunk order."""
    x = x.reshape(plan.batch, plan.chunks_m, plan.cm, plan.chunks_n, plan.cn)
    return x.permute(0, 1, 3, 2, 4).reshape(plan.n_chunks, plan.cm, plan.cn)


def from_chunks(blocks: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """Inverse of :func:`to_chunks`: ``(n_chunks, cm, cn)`` -> ``plan.padded_shape``."""
    x = blocks.reshape(plan.batch, plan.chunks_m, plan.chunks_n, plan.cm, plan.cn)
    return x.permute(0, 1, 3, 2, 4).reshape(plan.padded_shape)


def pad_to_plan(x: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """Zero-pad ``x`` (of ``plan.shape``) to ``plan.padded_shape`` (a no-op for ``divisor``)."""
    x = x.reshape(plan.shape) if x.dim() or plan.shape else x.reshape(1)
    if not plan.is_padded:
        return x.reshape(plan.padded_shape)
    out = x.new_zeros(plan.padded_shape)
    out[tuple(slice(0, d) for d in x.shape)] = x
    return out


def crop_to_shape(y: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """Drops ``pad`` padding; the result is contiguous (as the fake kernels promise)."""
    if plan.is_padded:
        y = y[tuple(slice(0, d) for d in plan.shape)]
    return y.reshape(plan.shape).contiguous()
