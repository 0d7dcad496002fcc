"""Decode, then step the parameters (the ``decompress_many_apply_`` op, which ``DeMo`` runs
for sign-SGD): on every backend the same bits as a decode into the buffers followed by torch's
``p.mul_(keep); p.add_(u, alpha=step)``, for sign and float updates, many tensors and chunk
runs that cross chunk rows; every argument error; and nothing written, parameters included,
when any payload is rejected."""

from __future__ import annotations

import pytest
import torch

import distro_kernels as dk
from conftest import ODD_SHAPES, assert_same_bits, randn, seed_of
from test_decode_into import _payloads

CHUNK = 16


def _expected(indices, values, shapes, chunk, params, keeps, steps, codec, sign):
    """The unfused recipe: the reference decode, then torch's ops."""
    updates = dk.decompress_many(indices, values, shapes, chunk, value_codec=codec, sign=sign,
                                 backend="reference")
    stepped = []
    for p, u, keep, step in zip(params, updates, keeps, steps):
        p = p.clone()
        if keep != 1.0:
            p.mul_(keep)
        p.add_(u, alpha=step)
        stepped.append(p)
    return updates, stepped


@pytest.mark.parametrize("codec, sign", [("sign", True), ("f32", True), ("bf16", True), ("f32", False)])
@pytest.mark.parametrize("keep", [1.0, 0.999])
def test_same_bits_as_decode_then_torch_step(backend, codec, sign, keep):
    # (48, 304): 3 x 19 chunks, so runs of 16 chunks cross chunk rows; (3, 5, 40): batched
    shapes = [(48, 304), (97,), (3, 5, 40), (1,), (64, 64)]
    per_tensor = [_payloads(s, 3, seed_of("apply", s, codec), codec) for s in shapes]
    indices = [i for i, _ in per_tensor]
    values = [v for _, v in per_tensor]
    params = [randn(s, seed_of("param", s)) for s in shapes]
    keeps = [keep, 1.0, keep, keep, 0.5]
    steps = [-1e-3, -0.25, -1e-3, 3.0, -1e-2]
    want_out, want_params = _expected(indices, values, shapes, CHUNK, params, keeps, steps, codec, sign)
    outs = [torch.full(s, float("nan")) for s in shapes]  # every element must be written
    got_params = [p.clone() for p in params]
    got = dk.ops.decompress_many_apply_(indices, values, shapes, CHUNK, out=outs, params=got_params,
                                        keeps=keeps, steps=steps, value_codec=codec, sign=sign,
                                        backend=backend)
    assert all(g is o for g, o in zip(got, outs))
    for o, w in zip(outs, want_out):
        assert_same_bits(o, w)
    for p, w in zip(got_params, want_params):
        assert_same_bits(p, w)
    assert any(not torch.equal(p, q) for p, q in zip(got_params, params))  # the step did something


@pytest.mark.parametrize("shape", [s for s in ODD_SHAPES if len(s) >= 1])
def test_odd_shapes_with_eight_peers(backend, shape):
    indices, values = _payloads(shape, 8, seed_of("apply-odd", shape), "sign")
    param = randn(shape, seed_of("apply-odd-param", shape))
    _, [want] = _expected([indices], [values], [shape], CHUNK, [param], [0.9], [-0.5], "sign", True)
    got = param.clone()
    dk.ops.decompress_many_apply_([indices], [values], [shape], CHUNK, out=[torch.empty(shape)],
                                  params=[got], keeps=[0.9], steps=[-0.5], value_codec="sign",
                                  backend=backend)
    assert_same_bits(got, want)


def test_large_chunks_and_many_runs(backend):
    """64-wide chunks, 8 peers, 32 picks: the Lee certified sign and runs over whole chunk rows."""
    shape = (256, 1088)  # 4 x 17 chunks of 64 x 64
    indices, values = _payloads(shape, 8, seed_of("apply-large"), "sign", chunk=64, k=32)
    param = randn(shape, seed_of("apply-large-param"))
    _, [want] = _expected([indices], [values], [shape], 64, [param], [1.0], [-1e-3], "sign", True)
    got = param.clone()
    dk.ops.decompress_many_apply_([indices], [values], [shape], 64, out=[torch.empty(shape)], params=[got],
                                  keeps=[1.0], steps=[-1e-3], value_codec="sign", backend=backend)
    assert_same_bits(got, want)


def test_a_rejected_payload_changes_nothing(backend):
    shapes = [(48, 304), (97,)]
    per_tensor = [_payloads(s, 2, seed_of("apply-bad", s)) for s in shapes]
    indices = [[i.clone() for i in peers] for peers, _ in per_tensor]
    values = [v for _, v in per_tensor]
    indices[1][1][-1, -1] = 10_000  # past the chunk: the last chunk of the last tensor
    outs = [torch.full(s, 7.0) for s in shapes]
    params = [randn(s, seed_of("apply-bad-param", s)) for s in shapes]
    before = [p.clone() for p in params]
    with pytest.raises(ValueError, match="tensor 1"):
        dk.ops.decompress_many_apply_(indices, values, shapes, CHUNK, out=outs, params=params,
                                      keeps=[1.0, 1.0], steps=[-1.0, -1.0], sign=True, backend=backend)
    for o in outs:
        assert bool((o == 7.0).all())
    for p, b in zip(params, before):
        assert_same_bits(p, b)


def _bad_call(backend, **change):
    shape = (20, 16)
    indices, values = _payloads(shape, 2, seed_of("apply-args"))
    args = dict(out=[torch.empty(shape)], params=[torch.zeros(shape)], keeps=[1.0], steps=[-1.0])
    args.update(change)
    dk.ops.decompress_many_apply_([indices], [values], [shape], CHUNK, sign=True, backend=backend, **args)


@pytest.mark.parametrize("change, error, message", [
    (dict(params=[torch.zeros(20, 15)]), ValueError, "params\\[0\\] has shape"),
    (dict(params=[torch.zeros(20, 16, dtype=torch.float64)]), TypeError, "float32"),
    (dict(params=[torch.zeros(16, 20).t()]), ValueError, "contiguous"),
    (dict(keeps=[]), ValueError, "keeps"),
    (dict(steps=[-1.0, -1.0]), ValueError, "steps"),
    (dict(params=[]), ValueError, "params"),
])
def test_argument_errors(backend, change, error, message):
    with pytest.raises(error, match=message):
        _bad_call(backend, **change)


def test_params_overlapping_the_outputs_are_refused(backend):
    shared = torch.zeros(20, 16)
    with pytest.raises(ValueError, match="overlap|share"):
        _bad_call(backend, out=[shared], params=[shared])
