"""SPEC section 3: the fused DeMo step (momentum, select on DCT(delta), error feedback)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import distro_kernels as dk
import spec_numpy as sn
from conftest import BACKENDS, DTYPES, ODD_SHAPES, needs_cpu, randn, rel_err, shapes_strategy, seed_of

NEAR_TIE = 1e-4


def _seed(*parts) -> int:
    return seed_of(*parts)


def check_step(delta0: torch.Tensor, grad: torch.Tensor, beta, lr, k, chunk, backend):
    """Runs demo_step_ on a copy of ``delta0`` and checks it against SPEC 3 in float64."""
    shape = tuple(delta0.shape)
    p = sn.plan(shape, chunk)
    delta = delta0.clone()
    ptr = delta.data_ptr()
    idx, vals = dk.demo_step_(delta, grad, beta, lr, k, chunk, backend=backend)
    assert delta.data_ptr() == ptr and delta.dtype == torch.float32, "must update in place"
    assert tuple(delta.shape) == shape
    assert idx.dtype == torch.int32 and vals.dtype == torch.float32
    assert tuple(idx.shape) == (p.n_chunks, p.k_eff(k)) == tuple(vals.shape)
    if p.k_eff(k) > 1:
        assert bool(torch.all(idx[:, 1:] > idx[:, :-1]))

    want_delta, X, ref_idx = sn.demo_step64(delta0.double().numpy(), grad.double().numpy(), p,
                                            beta, lr, k)
    kth = sn.kth_magnitude(X, k)
    got = idx.numpy().astype(np.int64)
    for r in range(p.n_chunks):
        for j in set(got[r].tolist()) ^ set(ref_idx[r].tolist()):
            assert abs(abs(X[r, j]) - kth[r]) <= NEAR_TIE * kth[r], (r, j)
    rows = np.arange(p.n_chunks)[:, None]
    scale = np.linalg.norm(X)
    if scale:
        # values: DCT of the updated momentum at the chosen indices
        assert np.linalg.norm(vals.numpy() - X[rows, got]) <= 1e-5 * scale
        # error feedback: the new state is momentum minus what was sent
        sent = np.zeros_like(X)
        sent[rows, got] = X[rows, got]
        d64 = beta * delta0.double().numpy() + lr * grad.double().numpy()
        expected = d64 - sn.idct64(sent, p)
        assert np.linalg.norm(delta.double().numpy() - expected) <= 1e-5 * scale
        if np.array_equal(got, ref_idx):
            assert np.linalg.norm(delta.double().numpy() - want_delta) <= 1e-5 * scale
        # what was sent has left the state: DCT(delta) is ~0 at the sent indices, and
        # unchanged elsewhere
        after = sn.dct64(delta.double().numpy(), p)
        assert np.max(np.abs(after[rows, got])) <= 1e-5 * scale
        keep = np.ones_like(X, dtype=bool)
        keep[rows, got] = False
        assert np.linalg.norm(after[keep] - X[keep]) <= 1e-5 * scale
    else:
        assert not torch.any(vals) and not torch.any(delta)
    return idx, vals, delta


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("k, chunk", [(1, 8), (5, 16), (32, 64)])
def test_demo_step_against_float64(backend, shape, k, chunk):
    s = _seed("step", shape, k, chunk)
    delta0 = randn(shape, s, scale=0.5)
    grad = randn(shape, s + 1)
    check_step(delta0, grad, 0.999, 1.0, k, chunk, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(29, 64), (3, 5, 7), (130,), ()])
def test_demo_step_grad_dtypes(backend, dtype, shape):
    s = _seed("gd", dtype, shape)
    delta0 = randn(shape, s)
    grad = randn(shape, s + 1, dtype)
    check_step(delta0, grad, 0.9, 0.5, 4, 16, backend)


@given(
    shape=shapes_strategy(max_numel=3000),
    chunk=st.integers(1, 64),
    k=st.integers(1, 70),
    beta=st.sampled_from([0.0, 0.5, 0.9, 0.999, 1.0]),
    lr=st.sampled_from([1e-3, 0.1, 1.0, 3.0]),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(DTYPES),
)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_demo_step_random(backend_name, shape, chunk, k, beta, lr, seed, dtype):
    delta0 = randn(shape, seed)
    grad = randn(shape, seed + 7, dtype)
    check_step(delta0, grad, beta, lr, k, chunk, backend_name)


def test_demo_step_k_ge_E_sends_everything(backend):
    """k >= E: every coefficient is sent, so the state drops to ~0."""
    shape = (12, 20)
    delta0, grad = randn(shape, 1), randn(shape, 2)
    _, vals, delta = check_step(delta0, grad, 0.9, 1.0, 10_000, 4, backend)
    assert float(delta.abs().max()) < 1e-5 * float((0.9 * delta0 + grad).abs().max())
    assert tuple(vals.shape) == (15, 16)


def test_demo_step_zero_state_and_grad(backend):
    delta = torch.zeros(16, 16)
    idx, vals = dk.demo_step_(delta, torch.zeros(16, 16), 0.9, 1.0, 3, 8, backend=backend)
    assert not torch.any(vals) and not torch.any(delta)
    assert idx.tolist() == [[0, 1, 2]] * 4  # all-zero chunks: ties -> smallest indices


def test_demo_step_repeated_steps_accumulate(backend):
    """Several steps in a row, each checked against float64 from the previous state."""
    shape = (24, 40)
    delta = torch.zeros(shape)
    for step in range(4):
        grad = randn(shape, 1000 + step)
        _, _, delta = check_step(delta, grad, 0.9, 0.5, 6, 8, backend)


def test_demo_step_noncontiguous_grad(backend):
    grad = randn((40, 24), 8).t()  # (24, 40) view
    assert not grad.is_contiguous()
    d1, d2 = randn((24, 40), 9), randn((24, 40), 9)
    a = dk.demo_step_(d1, grad, 0.9, 1.0, 5, 8, backend=backend)
    b = dk.demo_step_(d2, grad.contiguous(), 0.9, 1.0, 5, 8, backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(d1, d2)
    check_step(randn((24, 40), 9), grad, 0.9, 1.0, 5, 8, backend)


def test_demo_step_leaves_grad_untouched(backend):
    grad = randn((29, 64), 4, torch.bfloat16)
    keep = grad.clone()
    dk.demo_step_(randn((29, 64), 3), grad, backend=backend)
    assert torch.equal(grad, keep)


def test_demo_step_defaults_are_spec(backend):
    """Defaults: beta = 0.999, lr = 1, k = 32, s = 64."""
    shape = (64, 128)
    d1, d2 = randn(shape, 5), randn(shape, 5)
    g = randn(shape, 6)
    a = dk.demo_step_(d1, g, backend=backend)
    b = dk.demo_step_(d2, g, 0.999, 1.0, 32, 64, backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(d1, d2)
    assert tuple(a[0].shape) == (2, 32)


# ---------------------------------------------------------------------------- many


MANY_SHAPES = [(29, 64), (), (7,), (3, 5, 7), (97, 61), (1, 1), (130,), (2, 13, 26)]


@pytest.mark.parametrize("k, chunk", [(1, 8), (4, 16), (32, 64), (1000, 8)])
def test_demo_step_many_equals_per_tensor(backend, k, chunk):
    deltas = [randn(s, 10 + i) for i, s in enumerate(MANY_SHAPES)]
    grads = [randn(s, 50 + i, DTYPES[i % 3]) for i, s in enumerate(MANY_SHAPES)]
    singles = [d.clone() for d in deltas]
    many = [d.clone() for d in deltas]
    ptrs = [d.data_ptr() for d in many]
    idx_list, val_list = dk.demo_step_many_(many, grads, 0.95, 0.7, k, chunk, backend=backend)
    assert len(idx_list) == len(val_list) == len(MANY_SHAPES)
    assert [d.data_ptr() for d in many] == ptrs
    for i, (d, g) in enumerate(zip(singles, grads)):
        idx, vals = dk.demo_step_(d, g, 0.95, 0.7, k, chunk, backend=backend)
        assert torch.equal(idx_list[i], idx), i
        assert torch.equal(val_list[i].view(torch.int32), vals.view(torch.int32)), i
        assert torch.equal(many[i].view(torch.int32), d.view(torch.int32)), i


def test_demo_step_many_flat_layout(backend):
    """The per-tensor results are views of two flat buffers, tensor after tensor."""
    deltas = [randn(s, i) for i, s in enumerate(MANY_SHAPES)]
    grads = [randn(s, 90 + i) for i, s in enumerate(MANY_SHAPES)]
    idx_list, val_list = dk.demo_step_many_(deltas, grads, 0.9, 1.0, 5, 16, backend=backend)
    flat_i = torch.cat([i.reshape(-1) for i in idx_list])
    flat_v = torch.cat([v.reshape(-1) for v in val_list])
    again_i, again_v = dk.split_flat(flat_i, flat_v, MANY_SHAPES, 5, 16)
    for a, b in zip(again_i + again_v, idx_list + val_list):
        assert torch.equal(a, b)
    base = idx_list[0].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == base for t in idx_list)
    for t, s in zip(idx_list, MANY_SHAPES):
        p = sn.plan(s, 16)
        assert tuple(t.shape) == (p.n_chunks, p.k_eff(5))


def test_split_flat_rejects_wrong_total():
    with pytest.raises(ValueError, match="flat buffers hold"):
        dk.split_flat(torch.zeros(10, dtype=torch.int32), torch.zeros(10), [(8, 8)], 3, 8)


# ---------------------------------------------------------------------------- cross-backend


@needs_cpu
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_demo_step_cpu_close_to_reference(shape):
    s = _seed("xstep", shape)
    delta0, grad = randn(shape, s), randn(shape, s + 1)
    a_i, a_v, a_d = check_step(delta0, grad, 0.999, 1.0, 8, 16, "cpu")
    b_i, b_v, b_d = check_step(delta0, grad, 0.999, 1.0, 8, 16, "reference")
    same = (a_i == b_i).all(dim=1)
    assert rel_err(a_v[same].numpy(), b_v[same].numpy()) < 2e-5
    if bool(same.all()):
        assert rel_err(a_d.numpy(), b_d.numpy()) < 1e-4 or float(b_d.abs().max()) < 1e-6
