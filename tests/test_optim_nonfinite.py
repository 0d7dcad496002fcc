"""``DeMo`` and a non-finite gradient: detected before any state moves (finding of the
dispatch review: one ``inf`` used to update the momentum in place, then the payload encoder
refused it, leaving the state non-finite and every later step failing)."""

from __future__ import annotations

import pytest
import torch

from distro_kernels.optim import DeMo, NonFiniteGradientError
from distro_kernels.transport import LocalNetwork

SHAPES = [(32, 48), (48,), (2, 16, 16)]


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def _grads(step, peer):
    g = torch.Generator().manual_seed(1000 * step + peer)
    return [torch.randn(s, generator=g) for s in SHAPES]


def _snapshot(opt, params):
    return ([p.detach().clone() for p in params],
            [opt.state[p]["delta"].clone() for p in params if "delta" in opt.state[p]],
            opt.step_count)


def _same(a, b):
    return (all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and len(a[1]) == len(b[1])
            and all(torch.equal(x, y) for x, y in zip(a[1], b[1])) and a[2] == b[2])


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_raise_names_the_parameter_and_changes_nothing(bad):
    params = _model()
    opt = DeMo([("embed", params[0]), ("bias", params[1]), ("experts", params[2])],
               lr=0.01, compression_topk=4, compression_chunk=16)
    for p, g in zip(params, _grads(0, 0)):
        p.grad = g
    opt.step()  # momentum exists now
    before = _snapshot(opt, params)
    for p, g in zip(params, _grads(1, 0)):
        p.grad = g
    params[2].grad[1, 3, 5] = bad
    with pytest.raises(NonFiniteGradientError, match=r"experts \(shape \(2, 16, 16\)\)") as info:
        opt.step()
    assert ("1 NaN" if bad != bad else "1 inf") in str(info.value)
    assert _same(before, _snapshot(opt, params)), "a refused step changed state"
    params[2].grad[1, 3, 5] = 0.0  # fixed: the same step now goes through
    opt.step()
    assert opt.step_count == 2 and all(torch.isfinite(opt.state[p]["delta"]).all() for p in params)


def test_unnamed_parameters_are_named_by_group_and_index():
    params = _model()
    opt = DeMo([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], lr=0.01,
               compression_topk=4, compression_chunk=16)
    for p, g in zip(params, _grads(0, 0)):
        p.grad = g
    params[1].grad[0] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"group 1, parameter 0 \(shape \(48,\)\)"):
        opt.step()


def test_skip_leaves_this_peer_out_and_replicas_stay_identical():
    """Peer 1 hits an inf at step 1 with ``nonfinite="skip"``: its momentum is untouched, it
    sends an empty payload, every peer (itself included) applies the others' aggregate and
    reports why peer 1 is out; afterwards all three continue bit-identically."""
    n = 3
    net = LocalNetwork(n, deadline=10.0)
    params = [_model() for _ in range(n)]
    opts = [DeMo(params[r], lr=0.01, compression_topk=4, compression_chunk=16,
                 value_codec="sign", transport=net.transport(r), nonfinite="skip")
            for r in range(n)]
    for step in range(4):
        for r in range(n):
            for p, g in zip(params[r], _grads(step, r)):
                p.grad = g
        if step == 1:
            params[1][0].grad[0, 0] = float("inf")
            delta_before = [opts[1].state[p]["delta"].clone() for p in params[1]]
        payloads = {r: opts[r].prepare() for r in range(n)}
        reports = [opts[r].apply(payloads) for r in range(n)]
        if step == 1:
            assert payloads[1] == b""
            assert all(torch.equal(opts[1].state[p]["delta"], d)
                       for p, d in zip(params[1], delta_before))
            for r, report in enumerate(reports):
                assert report.peers == [0, 2]
                reason = report.left_out[1]
                assert ("skipped by this peer: non-finite gradient" in reason if r == 1
                        else "empty payload" in reason), reason
        else:
            assert all(report.peers == [0, 1, 2] for report in reports)
        for r in range(1, n):
            assert all(torch.equal(a, b) for a, b in zip(params[0], params[r])), (step, r)


def test_nonfinite_policy_is_checked():
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        DeMo(_model(), nonfinite="ignore")
