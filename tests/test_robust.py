"""SPEC 4.2's robust clip (``distro_kernels.robust``) against an independent numpy
implementation, and the two poisoning bounds the docs state:

- clip on (``f32`` and friends): one peer's values are at most ``b = tau * m`` (``m`` the lower
  median peer scale) in magnitude, so it moves each ``mean`` coefficient by at most ``b / n[j]``
  and the decoded update by at most ``b * sqrt(sum_j 1 / n[j]^2)`` (L2) compared with sending
  zeros at the same indices;
- ``sign`` codec: one peer moves each coefficient's mean by at most ``2 / n[j]``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import distro_kernels as dk
from distro_kernels import robust

F32 = np.float32


def np_clip(values: list[np.ndarray], tau: float) -> list[np.ndarray]:
    """SPEC 4.2 in numpy float32, written from the spec text (not from robust.py)."""
    s = [F32(np.max(np.abs(v))) if v.size else F32(0) for v in values]
    m = sorted(s)[(len(s) - 1) // 2]
    b = F32(F32(tau) * m)
    out = []
    for v, sp in zip(values, s):
        if sp > b:
            f = F32(b / sp)
            w = (v * f).astype(F32)
            w[np.abs(w) < F32(2.0**-55)] = F32(0)
            out.append(w)
        else:
            out.append(v)
    return out


def bits(a) -> np.ndarray:
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    return np.ascontiguousarray(a, dtype=F32).view(np.uint32)


def random_peer_values(rng, P: int, shape) -> list[np.ndarray]:
    out = []
    for p in range(P):
        scale = 10.0 ** rng.uniform(-20, 18)  # scales from 1e-20 to 1e18: clips and flushes
        v = (rng.standard_normal(shape) * scale).astype(F32)
        v[np.abs(v) < 2.0**-55] = 0  # canonical (what the parser delivers)
        v[v == 0] = 0  # no -0
        out.append(v)
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(1,), (7,), (13, 5), (3, 2, 11), (1, 1)])
def test_clip_matches_numpy_bit_for_bit(seed, shape):
    rng = np.random.default_rng(seed * 100 + len(shape))
    for P in (1, 2, 3, 4, 7):
        vals = random_peer_values(rng, P, shape)
        for tau in (0.5, 1.0, 1.7, 3.0, 1e-30):
            got = robust.clip_peer_values([torch.from_numpy(v.copy()) for v in vals], tau)
            want = np_clip(vals, tau)
            for p in range(P):
                assert got[p].shape == torch.Size(shape)
                np.testing.assert_array_equal(bits(got[p]), bits(want[p]), err_msg=f"P={P} p={p}")


def test_clip_edge_cases():
    z = torch.zeros(4)
    # all-zero median: b = 0, every non-zero peer goes to zero
    out = robust.clip_peer_values([z, z, torch.tensor([1.0, -2.0, 0.0, 3.0])], 2.0)
    assert out[0] is z and torch.equal(out[2], torch.zeros(4))
    assert not torch.signbit(out[2]).any()  # +0, never -0
    # an empty peer (no values) counts as scale 0
    e = torch.zeros(0)
    out = robust.clip_peer_values([e, torch.tensor([5.0]), torch.tensor([1.0])], 1.0)
    assert out[1].item() == 1.0 and out[2].item() == 1.0  # m = 1 (lower median of 0, 1, 5)
    # under the bound: the same tensor object, no copy
    a, b = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5])
    out = robust.clip_peer_values([a, b], 4.0)
    assert out[0] is a and out[1] is b
    # the result never leaves float32's finite range even for tau near float32's max
    big = torch.tensor([1.8e19])
    out = robust.clip_peer_values([big, big * 0.5, big * 0.25], 3.0e38)
    assert all(torch.isfinite(o).all() for o in out)


def test_clip_argument_checks():
    v = torch.ones(3)
    for tau in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            robust.clip_peer_values([v], tau)
    with pytest.raises(ValueError):
        robust.clip_peer_values([], 1.0)
    with pytest.raises(TypeError):
        robust.clip_peer_values([v.double()], 1.0)
    with pytest.raises(TypeError):
        robust.clip_peer_values([np.ones(3, F32)], 1.0)
    with pytest.raises(ValueError):
        robust.clip_peer_values([torch.tensor([float("nan")])], 1.0)
    with pytest.raises(ValueError):
        robust.sign_mean_bound(0)


def test_clip_model_is_per_tensor():
    rng = np.random.default_rng(5)
    model = [random_peer_values(rng, 4, s) for s in [(3, 4), (9,), (1,)]]
    got = robust.clip_model([[torch.from_numpy(v) for v in peers] for peers in model], 2.0)
    for t, peers in enumerate(model):
        for p, w in enumerate(np_clip(peers, 2.0)):
            np.testing.assert_array_equal(bits(got[t][p]), bits(w))


# ---------------------------------------------------------------------------- poisoning bounds


def _peer_payloads(rng, P, shape, chunk, k):
    """Per peer: ``compress`` of a random momentum (real selections and values)."""
    idx, vals = [], []
    for p in range(P):
        x = torch.from_numpy(rng.standard_normal(shape).astype(F32))
        i, v = dk.compress(x, k, chunk)
        idx.append(i)
        vals.append(v.contiguous())
    return idx, vals


def _counts(idx_list, shape, chunk):
    """``n[j]``: how many peers selected each (chunk, coefficient)."""
    n_chunks, E = idx_list[0].shape[0], None
    plan = dk.chunk_plan(shape, chunk)
    E = plan.elements_per_chunk
    counts = np.zeros((n_chunks, E), np.int64)
    for i in idx_list:
        for c in range(n_chunks):
            counts[c, i[c].numpy()] += 1
    return counts


@pytest.mark.parametrize("seed", range(4))
def test_poisoner_moves_the_update_by_at_most_tau_times_the_median_peer(seed):
    rng = np.random.default_rng(seed)
    shape, chunk, k, tau = (64, 128), 64, 16, 2.0
    P, bad = 5, 3  # peer 3 poisons
    idx, vals = _peer_payloads(rng, P, shape, chunk, k)
    poisoned = [v.clone() for v in vals]
    poisoned[bad][:, 0] = 1.8e19  # its first kept coefficient in every chunk
    poisoned[bad][0, 1] = -1.8e19
    zeroed = [v.clone() for v in vals]
    zeroed[bad].zero_()

    honest_scales = [float(v.abs().max()) for p, v in enumerate(vals) if p != bad]
    b = float(robust.clip_bound(poisoned, tau))
    # the median is an honest peer's scale: b <= tau * (largest honest peer scale)
    assert tau * min(honest_scales) <= b <= tau * max(honest_scales) * (1 + 2**-23)

    clipped = robust.clip_peer_values(poisoned, tau)
    assert float(clipped[bad].abs().max()) <= b * (1 + robust.ROUNDING)
    for p in range(P):  # honest peers below the bound are untouched
        if p != bad and float(vals[p].abs().max()) <= b:
            assert clipped[p] is poisoned[p]

    def decode(values):
        return dk.decompress(idx, values, shape, chunk, reduce="mean", sign=False,
                             backend="reference").double()

    y = decode(clipped)
    y0 = decode(robust.clip_peer_values(zeroed, tau))  # the poisoner sent zeros instead
    counts = _counts(idx, shape, chunk)
    sel = np.zeros_like(counts, dtype=bool)
    for c in range(counts.shape[0]):
        sel[c, idx[bad][c].numpy()] = True
    l2_bound = b * (1 + robust.ROUNDING) * math.sqrt(float((1.0 / counts[sel] ** 2).sum()))
    moved = float(torch.linalg.vector_norm(y - y0))
    rounding = 1e-5 * float(torch.linalg.vector_norm(y0) + torch.linalg.vector_norm(y))
    assert moved <= l2_bound + rounding, (moved, l2_bound)
    assert moved > 0.1 * l2_bound  # the poisoner does push (the bound is not vacuous)
    # without the clip the same poisoner moves the update by ~1e19 / n
    unclipped = float(torch.linalg.vector_norm(decode(poisoned) - y0))
    assert unclipped > 1e17 > 1e6 * l2_bound


@pytest.mark.parametrize("seed", range(3))
def test_clip_on_every_cpu_backend_gives_the_same_bits(seed, backend):
    rng = np.random.default_rng(40 + seed)
    shape, chunk, k = (29, 64), 64, 8
    idx, vals = _peer_payloads(rng, 4, shape, chunk, k)
    vals[2] = vals[2] * 1e15
    clipped = robust.clip_peer_values(vals, 1.5)
    ref = dk.decompress(idx, clipped, shape, chunk, backend="reference")
    got = dk.decompress(idx, clipped, shape, chunk, backend=backend)
    np.testing.assert_array_equal(bits(got), bits(ref))


def test_sign_codec_one_peer_moves_each_mean_by_at_most_two_over_n():
    # chunk 1: every chunk is one coefficient whose basis is exactly 1, so the decoded
    # output IS the aggregate A[j] = (n_pos - n_neg) / n (the real decoder, no model of it)
    rng = np.random.default_rng(11)
    N = 257
    for P in (1, 2, 3, 5, 8):
        signs = rng.integers(0, 2, size=(P, N)).astype(bool)
        idx = [torch.zeros((N, 1), dtype=torch.int32) for _ in range(P)]

        def decode(sg):
            vals = [dk.pack_signs(torch.from_numpy(np.where(s, -1.0, 1.0).astype(F32))
                                  .reshape(N, 1)) for s in sg]
            return dk.decompress(idx, vals, (N,), 1, value_codec="sign", sign=False,
                                 backend="reference").numpy().astype(np.float64)

        base = decode(signs)
        want = (F32(P) - F32(2) * signs.sum(0).astype(F32)) / F32(P)  # exact counts, one division
        np.testing.assert_array_equal(base, want.astype(np.float64))
        for bad in range(P):
            flipped = signs.copy()
            flipped[bad] = ~flipped[bad]
            moved = np.abs(decode(flipped) - base)
            # float32 rounding of the two means: at most one ulp of 1 each
            assert moved.max() <= robust.sign_mean_bound(P) + 2**-23
            assert moved.min() >= robust.sign_mean_bound(P) - 2**-23  # flipping is the worst

    # selecting a coefficient or not (n changes): brute force over every count pattern
    for n in range(1, 12):
        for d in range(-(n - 1), n, 1):  # honest n - 1 peers' n_pos - n_neg (same parity)
            if (d - (n - 1)) % 2:
                continue
            before = d / (n - 1) if n > 1 else 0.0
            for own in (-1, 1):
                assert abs((d + own) / n - before) <= robust.sign_mean_bound(n) + 1e-15


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_clip_on_cuda_gives_the_cpu_bits():
    rng = np.random.default_rng(77)
    for P in (1, 2, 5, 8):
        vals = random_peer_values(rng, P, (37, 64))
        for tau in (0.5, 1.7, 3.0):
            cpu = robust.clip_peer_values([torch.from_numpy(v) for v in vals], tau)
            gpu = robust.clip_peer_values([torch.from_numpy(v).cuda() for v in vals], tau)
            for a, b in zip(cpu, gpu):
                np.testing.assert_array_equal(bits(a), bits(b.cpu()))
