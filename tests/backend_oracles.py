"""Shared by the GPU backends' test files (Triton, native CUDA/HIP): seeded inputs, a float64
model of SPEC 2 on the canonical basis, SPEC 6's selection check, hostile-ish payloads, the
CPU decode oracles and a strict bit comparison."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from distro_kernels import chunking, dispatch, reference
from distro_kernels.basis import canonical_basis_np


def _gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _randn(shape, seed, dtype=torch.float32):
    return torch.randn(tuple(shape), generator=_gen(seed), dtype=torch.float64).to(dtype)

def _bits(t):
    return t.detach().cpu().contiguous().view(torch.int32)


def assert_same_bits(got, expected):
    assert got.dtype == torch.float32 and expected.dtype == torch.float32
    assert tuple(got.shape) == tuple(expected.shape), (tuple(got.shape), tuple(expected.shape))
    gb, eb = _bits(got).reshape(-1), _bits(expected).reshape(-1)
    bad = torch.nonzero(gb != eb).flatten()
    if bad.numel():
        i = bad[:5].tolist()
        pairs = [(j, got.reshape(-1)[j].item(), expected.reshape(-1)[j].item()) for j in i]
        raise AssertionError(f"{bad.numel()} of {gb.numel()} differ in bits: {pairs}")

def _oracles():
    """Decode oracles: the reference, and the native CPU kernels once built (under CI a
    missing one fails: it must not drop out quietly)."""
    out = [reference]
    if "cpu" in dispatch.device_types("native"):
        out.append(dispatch.resolve("native", torch.device("cpu")))
    elif os.environ.get("CI") == "true":
        pytest.fail("native CPU kernels not available under CI: "
                    + dispatch.unavailable.get("native:cpu", "?"))
    return out

def _dct64(x, plan):
    """SPEC 2 in float64 with the canonical basis: ``(n_chunks, E)`` numpy array."""
    cm, cn = canonical_basis_np(plan.cm).astype(np.float64), canonical_basis_np(plan.cn).astype(np.float64)
    blocks = chunking.to_chunks(chunking.pad_to_plan(x.detach().cpu().double(), plan), plan)
    return np.einsum("ui,cij,vj->cuv", cm, blocks.numpy(), cn).reshape(plan.n_chunks, -1)


def _idct64(coeffs, plan):
    cm, cn = canonical_basis_np(plan.cm).astype(np.float64), canonical_basis_np(plan.cn).astype(np.float64)
    blocks = np.einsum("ui,cuv,vj->cij", cm, coeffs.reshape(plan.n_chunks, plan.cm, plan.cn), cn)
    out = chunking.from_chunks(torch.from_numpy(np.ascontiguousarray(blocks)), plan)
    return chunking.crop_to_shape(out, plan).numpy()


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(b)
    num = np.linalg.norm(a - b)
    return 0.0 if num == 0 else num / den


def _check_selection(indices, values, x64, k_eff):
    """SPEC 6: the selected set is the float64 top-k (ties: smaller index) except near-ties;
    indices strictly ascending; values are the coefficients there."""
    idx = indices.cpu().numpy().astype(np.int64)
    val = values.cpu().numpy().astype(np.float64)
    assert idx.shape == (x64.shape[0], k_eff)
    assert np.all(np.diff(idx, axis=1) > 0), "indices not strictly ascending"
    mags = np.abs(x64)
    for row in range(x64.shape[0]):
        order = np.lexsort((np.arange(mags.shape[1]), -mags[row]))  # |X| desc, index asc
        expected = set(order[:k_eff].tolist())
        got = set(idx[row].tolist())
        kth = mags[row, order[k_eff - 1]]
        for j in expected ^ got:
            assert abs(mags[row, j] - kth) <= 1e-4 * kth + 1e-30, (row, j, mags[row, j], kth)
        scale = np.linalg.norm(x64[row]) + 1e-30
        assert np.max(np.abs(val[row] - x64[row, idx[row]])) <= 1e-5 * scale

def _payload(plan, k, peers, codec, seed):
    """Peers' (indices, values): sorted distinct indices with overlaps between peers, values
    spanning magnitudes, with -0, sub-flush (< 2^-55) values and exact cancellations."""
    g = _gen(seed)
    k_eff = plan.k_eff(k)
    indices_list, values_list = [], []
    base = torch.randn(plan.n_chunks, k_eff, generator=g)
    for peer in range(peers):
        scores = torch.rand(plan.n_chunks, plan.elements_per_chunk, generator=g)
        idx = torch.sort(scores.argsort(dim=1)[:, :k_eff], dim=1).values.to(torch.int32)
        scale = 10.0 ** torch.randint(-4, 4, (plan.n_chunks, k_eff), generator=g).float()
        vals = torch.randn(plan.n_chunks, k_eff, generator=g) * scale
        flat = vals.view(-1)
        flat[::7] = -0.0
        flat[3::11] = 1e-18  # below 2^-55: canonicalised to +0
        flat[5::13] = 3e-17  # above 2^-55, but the mean of it and 0s can fall below
        if peer % 2 == 1:
            vals = torch.where(torch.arange(k_eff) % 3 == 0, -base, vals)  # cancellations
        else:
            vals = torch.where(torch.arange(k_eff) % 3 == 0, base, vals)
        if codec == "sign":
            vals = reference.pack_signs(vals)
        elif codec == "bf16":
            vals = vals.to(torch.bfloat16)
        elif codec == "f16":
            vals = vals.to(torch.float16)
        indices_list.append(idx)
        values_list.append(vals)
    return indices_list, values_list
