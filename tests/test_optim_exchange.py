"""``DeMo`` in signed runs, with the robust clip, and when an exchange fails."""

from __future__ import annotations

import threading

import pytest
import torch

import distro_kernels as dk
from conftest import BACKENDS, assert_same_bits
from distro_kernels.optim import DeMo
from distro_kernels.transport import LocalNetwork, TransportError
from distro_kernels.wire.signing import Manifest

SHAPES = [(32, 48), (48,), (2, 16, 16)]


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def _set_grads(params, step, peer, scale=1.0):
    g = torch.Generator().manual_seed(1000 * step + peer)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale


def _threaded_steps(opts, params, steps, grad_scale=None):
    errors = []

    def run(r):
        try:
            for step in range(steps):
                _set_grads(params[r], step, r, (grad_scale or {}).get(r, 1.0))
                opts[r].step()
        except Exception as exc:  # surfaced below
            errors.append((r, exc))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(opts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_signed_run_peers_stay_identical_and_the_run_id_is_the_manifest():
    n = 3
    manifest, keys = Manifest.generate(n)
    net = LocalNetwork(n, deadline=20.0, manifest=manifest, signing_keys=keys)
    params = [_model() for _ in range(n)]
    opts = [DeMo(params[r], lr=0.01, compression_topk=4, compression_chunk=16, value_codec="sign",
                 transport=net.transport(r), manifest=manifest, signing_key=keys[r])
            for r in range(n)]
    assert opts[0].run_id == manifest.run_id
    _threaded_steps(opts, params, 3)
    for r in range(n):
        assert opts[r].last_report.peers == [0, 1, 2], opts[r].last_report
        assert all(torch.equal(a, b) for a, b in zip(params[0], params[r]))
    # the payload really is signed: one byte of the signature changed is refused by a peer
    payload = opts[0].prepare()
    bad = payload[:-1] + bytes([payload[-1] ^ 1])
    parsed = opts[0]._model.parse(opts[0].step_count, {1: bad})
    assert "BadSignature" in parsed.left_out[1]


def test_signed_run_refuses_a_run_id_that_is_not_the_manifest():
    manifest, keys = Manifest.generate(2)
    with pytest.raises(ValueError, match="run_id differs from the manifest"):
        DeMo(_model(), manifest=manifest, signing_key=keys[0], run_id=7)


def test_clip_bounds_a_poisoner_and_matches_the_public_decompress():
    """Peer 2 sends gradients 1e12 times larger: with ``clip_tau=2`` every peer's update is
    what ``decompress(..., clip_tau=2)`` gives for the same payloads, and the poisoner's
    values are scaled down to at most twice the median peer's largest."""
    n = 3
    net = LocalNetwork(n, deadline=20.0)
    params = [_model() for _ in range(n)]
    opts = [DeMo(params[r], lr=0.01, compression_topk=4, compression_chunk=16, sign=False,
                 transport=net.transport(r), clip_tau=2.0) for r in range(n)]
    for r in range(n):
        _set_grads(params[r], 0, r, 1e12 if r == 2 else 1.0)
    payloads = {r: opts[r].prepare() for r in range(n)}
    reports = [opts[r].apply(payloads) for r in range(n)]
    assert all(rep.peers == [0, 1, 2] for rep in reports)
    parsed = opts[0]._model.parse(0, payloads)
    for t, shape in enumerate(SHAPES):
        idx = [parsed.payloads[p].indices[t] for p in range(n)]
        val = [parsed.payloads[p].values[t] for p in range(n)]
        want = dk.decompress(idx, val, shape, 16, clip_tau=2.0)
        assert_same_bits(params[0][t].grad, want)  # DeMo leaves the applied update in .grad
        clipped_max = max(float(v.abs().max()) for v in dk.robust.clip_peer_values(val, 2.0))
        median = sorted(float(v.abs().max()) for v in val)[1]
        assert clipped_max <= 2.0 * median * (1 + 2**-22)
        assert float(want.abs().max()) < 1e6  # unclipped, peer 2 would move it by ~1e11


@pytest.mark.parametrize("codec", ["f32", "bf16"])
def test_public_clip_is_bit_identical_on_every_backend(codec):
    g = torch.Generator().manual_seed(5)
    shape = (48, 64)
    idx, val = [], []
    for p, scale in enumerate([1.0, 3.0, 1e15, 0.5]):
        i, v = dk.compress(torch.randn(shape, generator=g) * scale, 6, 16, backend="reference")
        idx.append(i)
        val.append(v)
    outs = [dk.decompress(idx, val, shape, 16, value_codec=codec, clip_tau=1.5, backend=b)
            for b in BACKENDS]
    for out in outs[1:]:
        assert_same_bits(out, outs[0])
    many = dk.decompress_many([idx], [val], [shape], 16, value_codec=codec, clip_tau=1.5)
    assert_same_bits(many[0], outs[0])
    with pytest.raises(ValueError, match="clip_tau is for the f32/bf16/f16 codecs"):
        dk.decompress(idx, [dk.pack_signs(v) for v in val], shape, 16, value_codec="sign",
                      clip_tau=1.5)


class _FailingTransport:
    rank, world_size = 0, 1

    def exchange(self, payload, *, step=None):
        raise TransportError("the coordinator's roster never came")


def test_a_failed_exchange_changes_no_parameter_and_returns_the_slice_to_the_momentum():
    params = _model()
    opt = DeMo(params, lr=0.01, compression_topk=4, compression_chunk=16, sign=False,
               compression_decay=0.9, transport=_FailingTransport())
    _set_grads(params, 0, 0)
    weights = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    with pytest.raises(TransportError):
        opt.step()
    assert opt.step_count == 0 and all(torch.equal(a, p) for a, p in zip(weights, params))
    for p, g in zip(params, grads):  # momentum = 0.9 * 0 + lr * grad: nothing was lost
        torch.testing.assert_close(opt.state[p]["delta"], 0.01 * g, rtol=1e-5, atol=1e-7)
    opt.prepare()  # the same step can be prepared again


def test_a_failed_exchange_returns_the_slice_exactly_with_dct_momentum():
    params = _model()
    opt = DeMo(params, lr=0.01, compression_topk=4, compression_chunk=16, sign=False,
               compression_decay=0.9, transport=_FailingTransport(), momentum="dct")
    _set_grads(params, 0, 0)
    weights = [p.detach().clone() for p in params]
    want = [0.01 * dk.dct(p.grad, 16, backend="reference") for p in params]  # 0.9 * 0 + lr * DCT(g)
    with pytest.raises(TransportError):
        opt.step()
    assert opt.step_count == 0 and all(torch.equal(a, p) for a, p in zip(weights, params))
    for p, w in zip(params, want):  # the sent coefficients are back in the momentum
        torch.testing.assert_close(opt.state[p]["delta_dct"], w, rtol=1e-5, atol=1e-7)
    opt.prepare()
