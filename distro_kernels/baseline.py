"""The eager DeMo-style pipeline: what a user would run instead of this package.

A faithful eager re-implementation of DeMo's ``demo.py`` (Peng, Quesnelle, Kingma 2024):
DCT bases from float64 cosines cast to float32, einsum transforms over ``(y h) (x w)``
chunks, ``torch.topk`` on ``|X|`` with int64 indices, decode by ``scatter_reduce(mean,
include_self=False)`` over the peers' concatenated ``(idx, val)``, einsum inverse, ``sign``.

Benchmarks and the profiler time our kernels against these functions on the same device in
the same run (headline ratios); nothing in the package's data path calls them. They are not
tie-exact, not bit-identical across devices, and trust their inputs: that is the point.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor


def split(n: int, target: int) -> int:
    """DeMo's ``_get_smaller_split``: the largest divisor of ``n`` that is ``<= target``."""
    if n <= target:
        return n
    for d in range(target, 0, -1):
        if n % d == 0:
            return d
    return 1


@lru_cache(maxsize=64)
def _dct_matrix_cpu(n: int) -> Tensor:
    """``B[j, b] = C[b, j]`` (DeMo's ``_dct_type2_matrix`` layout), float64 cosines -> float32."""
    i = torch.arange(n, dtype=torch.float64)
    c = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    c[0] *= math.sqrt(0.5)
    return c.T.contiguous().float()


_device_bases: dict[tuple[int, str], Tensor] = {}


def dct_matrix(n: int, device) -> Tensor:
    key = (n, str(device))
    if key not in _device_bases:  # DeMo keeps its bases per (size, device) too
        _device_bases[key] = _dct_matrix_cpu(n).to(device)
    return _device_bases[key]


def _as_2d(x: Tensor, chunk: int) -> tuple[Tensor, int, int]:
    """``(B, ..., m, n)`` -> ``(B*...*m, n)`` with chunk sides ``(h, w)``; 1-D is one row."""
    if x.dim() >= 2:
        m, n = x.shape[-2], x.shape[-1]
        return x.reshape(-1, n), split(m, chunk), split(n, chunk)
    return x.reshape(1, -1), 1, split(x.numel(), chunk)


def encode(x: Tensor, chunk: int = 64) -> Tensor:
    """DeMo's ``TransformDCT.encode``: ``(y, x, h*w)`` coefficients of every chunk."""
    x2, h, w = _as_2d(x, chunk)
    blocks = x2.reshape(x2.shape[0] // h, h, x2.shape[1] // w, w)
    coeffs = torch.einsum("yjxl,jb,ld->yxbd", blocks, dct_matrix(h, x.device), dct_matrix(w, x.device))
    return coeffs.reshape(coeffs.shape[0], coeffs.shape[1], h * w)


def decode(coeffs: Tensor, shape, chunk: int = 64) -> Tensor:
    """DeMo's ``TransformDCT.decode`` of ``(y, x, h*w)`` coefficients -> a tensor of ``shape``."""
    probe = torch.empty(shape, device="meta")
    _, h, w = _as_2d(probe, chunk)
    blocks = coeffs.reshape(coeffs.shape[0], coeffs.shape[1], h, w)
    out = torch.einsum("yxbd,jb,ld->yjxl", blocks, dct_matrix(h, coeffs.device), dct_matrix(w, coeffs.device))
    return out.reshape(shape)


def compress(x: Tensor, k: int = 32, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """DeMo's ``CompressDCT.compress``: int64 indices of the top-``k`` ``|X|`` per chunk, values."""
    coeffs = encode(x, chunk)
    k = min(k, coeffs.shape[-1])
    idx = torch.topk(coeffs.abs(), k, dim=-1, largest=True, sorted=False).indices
    return idx, torch.gather(coeffs, -1, idx)


def encode_step(delta: Tensor, grad: Tensor, beta: float = 0.999, lr: float = 1.0, k: int = 32,
                chunk: int = 64) -> tuple[Tensor, Tensor]:
    """One tensor of DeMo's step, encode side: momentum, DCT, top-k, error feedback (in place)."""
    delta.mul_(beta).add_(grad, alpha=lr)
    idx, val = compress(delta, k, chunk)
    coeffs_shape = encode(torch.empty(delta.shape, device="meta"), chunk).shape
    sent = torch.zeros(coeffs_shape, device=delta.device, dtype=val.dtype)
    sent.scatter_(-1, idx, val)
    delta.sub_(decode(sent, delta.shape, chunk))
    return idx, val


def decode_peers(indices_list, values_list, shape, chunk: int = 64, sign: bool = True) -> Tensor:
    """DeMo's ``batch_decompress`` + ``decode`` (+ ``sign``): the mean of the peers' values at
    each selected coefficient (``scatter_reduce(mean, include_self=False)``), inverse DCT."""
    idx = torch.cat(list(indices_list), dim=-1)
    val = torch.cat(list(values_list), dim=-1)
    coeffs_shape = encode(torch.empty(shape, device="meta"), chunk).shape
    coeffs = torch.zeros(coeffs_shape, device=val.device, dtype=val.dtype)
    coeffs.scatter_reduce_(-1, idx, val, reduce="mean", include_self=False)
    out = decode(coeffs, shape, chunk)
    return out.sign() if sign else out


class EagerDeMoStep:
    """DeMo's whole optimizer step for one peer at world size 1, as ``demo.py`` runs it:
    per tensor encode, (no-op) gather, decode, sign-SGD with decoupled weight decay."""

    def __init__(self, params, lr: float = 1e-3, decay: float = 0.999, k: int = 32,
                 chunk: int = 64, weight_decay: float = 0.0):
        self.params = [p for p in params]
        self.lr, self.decay, self.k, self.chunk, self.wd = lr, decay, k, chunk, weight_decay
        self.deltas = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        for p, delta in zip(self.params, self.deltas):
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            idx, val = encode_step(delta, grad.float(), self.decay, self.lr, self.k, self.chunk)
            update = decode_peers([idx], [val], p.shape, self.chunk, sign=True)
            if self.wd:
                p.mul_(1.0 - self.lr * self.wd)
            p.add_(update.to(p.dtype), alpha=-self.lr)
