"""SPEC 3 with the momentum kept in the DCT domain (``demo_step_coeffs_many_``): checked in
float64, against the parameter-layout step, across backends, and on every argument error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import distro_kernels as dk
import spec_numpy as sn
from conftest import BACKENDS, DTYPES, ODD_SHAPES, randn, rel_err, seed_of

NEAR_TIE = 1e-4


def _state(shape, chunk, seed, scale=0.5) -> torch.Tensor:
    p = sn.plan(shape, chunk)
    return randn((p.n_chunks, p.E), seed, scale=scale)


def check_step(state0, grad, beta, lr, k, chunk, backend):
    """One step on a copy of ``state0``, checked against SPEC 3 in float64: the top k of
    X = beta * S + lr * DCT(grad) (near-ties aside), their values, and S = X with them zeroed."""
    p = sn.plan(tuple(grad.shape), chunk)
    state = state0.clone()
    ptr = state.data_ptr()
    (idx,), (vals,) = dk.demo_step_coeffs_many_([state], [grad], beta, lr, k, chunk, backend=backend)
    assert state.data_ptr() == ptr, "must update in place"
    assert idx.dtype == torch.int32 and vals.dtype == torch.float32
    assert tuple(idx.shape) == (p.n_chunks, p.k_eff(k)) == tuple(vals.shape)
    if p.k_eff(k) > 1:
        assert bool(torch.all(idx[:, 1:] > idx[:, :-1]))
    X = beta * state0.double().numpy() + lr * sn.dct64(grad.double().numpy(), p)
    kth = sn.kth_magnitude(X, k)
    got = idx.numpy().astype(np.int64)
    ref = sn.brute_topk(X, k)
    for r in range(p.n_chunks):
        for j in set(got[r].tolist()) ^ set(ref[r].tolist()):
            assert abs(abs(X[r, j]) - kth[r]) <= NEAR_TIE * kth[r], (r, j)
    rows = np.arange(p.n_chunks)[:, None]
    scale = np.linalg.norm(X)
    after = state.double().numpy()
    assert np.all(after[rows, got] == 0.0), "what is sent leaves the momentum exactly"
    if scale:
        assert np.linalg.norm(vals.numpy() - X[rows, got]) <= 1e-5 * scale
        keep = np.ones_like(X, dtype=bool)
        keep[rows, got] = False
        assert np.linalg.norm(after[keep] - X[keep]) <= 1e-5 * scale
    return idx, vals, state


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("k, chunk", [(1, 8), (5, 16), (32, 64)])
def test_against_float64(backend, shape, k, chunk):
    s = seed_of("coeffs", shape, k, chunk)
    check_step(_state(shape, chunk, s), randn(shape, s + 1), 0.999, 1.0, k, chunk, backend)


@pytest.mark.parametrize("shape, chunk", [
    ((16 * 16 * 2 + 16 * 3,), 16),   # two batched blocks of 16 chunks, then 3 chunks alone
    ((32 * 32 + 32 * 5,), 32),
    ((64 * 64 * 2 + 64,), 64),
    ((64 * 64,), 64),
    ((128, 192), 64),                # the fast transform's 2-D path
    ((2, 64, 96), 32),
])
def test_fast_paths_against_float64(backend, shape, chunk):
    s = seed_of("coeffs fast", shape, chunk)
    for k in (1, 7, chunk // 2):
        check_step(_state(shape, chunk, s + k), randn(shape, s + 100 + k), 0.9, 0.5, k, chunk,
                   backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_dtypes(backend, dtype):
    shape = (29, 64)
    s = seed_of("coeffs dtype", dtype)
    check_step(_state(shape, 64, s), randn(shape, s + 1, dtype=dtype), 0.9, 2.0, 6, 64, backend)


@pytest.mark.parametrize("shape, chunk", [((97, 61), 16), ((130,), 64), ((64 * 64 + 64 * 3,), 64),
                                          ((3, 5, 7), 8)])
def test_the_same_steps_as_the_parameter_layout(backend, shape, chunk):
    """From the same momentum, five steps give the picks of demo_step_many_ (near-ties
    aside), the same values, and idct(state) tracks its delta."""
    s = seed_of("coeffs vs delta", shape, chunk)
    delta = randn(shape, s, scale=0.3)
    state = dk.dct(delta, chunk, backend="reference")
    for step in range(5):
        grad = randn(shape, s + 1 + step)
        (i1,), (v1,) = dk.demo_step_many_([delta], [grad], 0.95, 0.7, 9, chunk, backend=backend)
        (i2,), (v2,) = dk.demo_step_coeffs_many_([state], [grad], 0.95, 0.7, 9, chunk,
                                                 backend=backend)
        X = sn.dct64(delta.double().numpy(), sn.plan(shape, chunk))  # after the step
        if torch.equal(i1, i2):
            torch.testing.assert_close(v2, v1, rtol=1e-5, atol=1e-5 * float(v1.abs().max()))
        else:  # a near-tie went the other way: both sets hold the k largest up to 1e-4
            for r in torch.nonzero((i1 != i2).any(dim=1)).flatten().tolist():
                a, b = sorted(v1[r].abs().tolist()), sorted(v2[r].abs().tolist())
                assert abs(a[0] - b[0]) <= NEAR_TIE * max(a[0], b[0]), (step, r)
            break
        back = dk.idct(state, shape, chunk, backend="reference")
        scale = float(np.linalg.norm(X)) or 1.0
        assert float(torch.linalg.norm((back - delta).double())) <= 1e-5 * scale * (step + 1)


def test_backends_agree():
    shapes, chunk, k = [(64, 128), (4096 + 3 * 64,), (7, 13), (1,)], 64, 8
    grads = [randn(s, seed_of("agree", s)) for s in shapes]
    start = [_state(s, chunk, seed_of("agree state", s)) for s in shapes]
    results = {}
    for be in BACKENDS:
        states = [x.clone() for x in start]
        idx, vals = dk.demo_step_coeffs_many_(states, grads, 0.9, 1.0, k, chunk, backend=be)
        results[be] = (idx, vals, states)
    first = results[BACKENDS[0]]
    for be, (idx, vals, states) in results.items():
        for t in range(len(shapes)):
            assert torch.equal(idx[t], first[0][t]), (be, t)  # random data: no near-ties here
            assert rel_err(vals[t], first[1][t]) < 1e-5, (be, t)
            assert rel_err(states[t], first[2][t]) < 1e-5, (be, t)


def test_many_tensors_are_the_single_steps_laid_flat(backend):
    shapes, chunk, k = [(29, 64), (130,), (3, 5, 7)], 16, 4
    grads = [randn(s, seed_of("flat", s)) for s in shapes]
    start = [_state(s, chunk, seed_of("flat state", s)) for s in shapes]
    together = [x.clone() for x in start]
    idx, vals = dk.demo_step_coeffs_many_(together, grads, 0.9, 1.0, k, chunk, backend=backend)
    for t, (x, g) in enumerate(zip(start, grads)):
        alone = x.clone()
        (i,), (v,) = dk.demo_step_coeffs_many_([alone], [g], 0.9, 1.0, k, chunk, backend=backend)
        assert torch.equal(idx[t], i) and torch.equal(vals[t], v)
        assert torch.equal(together[t], alone)


def test_zero_momentum_and_zero_gradient_send_the_first_k(backend):
    """All-zero coefficients tie everywhere: the smallest indices win (SPEC 3)."""
    state = torch.zeros(4, 64)
    (idx,), (vals,) = dk.demo_step_coeffs_many_([state], [torch.zeros(16, 16)], 0.9, 1.0, 5, 8,
                                                backend=backend)
    assert torch.equal(idx, torch.arange(5, dtype=torch.int32).expand(4, 5))
    assert not torch.any(vals) and not torch.any(state)


def _bad_calls():
    ok_state, ok_grad = torch.zeros(4, 64), torch.zeros(16, 16)  # (16, 16) at chunk 8: 4 x 64
    return [
        (([ok_state], [ok_grad, ok_grad]), ValueError, "equal length"),
        (([], []), ValueError, "non-empty"),
        (([torch.zeros(4, 63)], [ok_grad]), ValueError, "state of tensor 0"),
        (([torch.zeros(64, 4)], [ok_grad]), ValueError, "state of tensor 0"),
        (([torch.zeros(4, 64, dtype=torch.float64)], [ok_grad]), TypeError, "float32"),
        (([torch.zeros(64, 4).t()], [ok_grad]), ValueError, "contiguous"),
        (([ok_state], [torch.zeros(16, 16, dtype=torch.int32)]), TypeError, "grad of tensor 0"),
        (([ok_state], [torch.zeros(16, 16, device="meta")]), ValueError, "one device"),
    ]


@pytest.mark.parametrize("n", range(len(_bad_calls())))
def test_argument_errors_change_nothing(backend, n):
    (states, grads), error, words = _bad_calls()[n]
    before = [s.clone() for s in states]
    with pytest.raises(error, match=words):
        dk.demo_step_coeffs_many_(states, grads, 0.9, 1.0, 3, 8, backend=backend)
    for s, b in zip(states, before):
        assert torch.equal(s, b)


def test_shared_memory_is_refused(backend):
    flat = torch.zeros(2 * 4 * 64)
    a, b = flat[: 4 * 64].view(4, 64), flat[4 * 64 :].view(4, 64)
    grad = torch.ones(16, 16)
    dk.demo_step_coeffs_many_([a, b], [grad, grad], 0.9, 1.0, 3, 8, backend=backend)  # disjoint: fine
    with pytest.raises(ValueError, match="share memory"):
        dk.demo_step_coeffs_many_([a, a], [grad, grad], 0.9, 1.0, 3, 8, backend=backend)
    state = torch.zeros(4, 64)
    with pytest.raises(ValueError, match="share memory"):
        dk.demo_step_coeffs_many_([state], [state.view(16, 16)], 0.9, 1.0, 3, 8, backend=backend)
    with pytest.raises(ValueError, match="k"):
        dk.demo_step_coeffs_many_([state], [grad], 0.9, 1.0, 0, 8, backend=backend)
