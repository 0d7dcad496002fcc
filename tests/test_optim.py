"""``distro_kernels.optim.DeMo``: equivalence with DeMo's published step, save/resume,
cross-backend determinism, byte and peer reporting, transports."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from conftest import CPU_SKIP_REASON, HAS_CPU
from distro_kernels.optim import DeMo
from distro_kernels.transport import LocalNetwork

# ----------------------------------------------------------------------------- eager DeMo
# An independent eager reimplementation of DeMo's step (demo.py of the DeMo paper's repo):
# DCT basis from float64 cosines (not our canonical basis), einsum transform, torch.topk on
# |X|, scatter_reduce(mean, include_self=False) over the peers' (idx, val), einsum inverse.


def _split(n: int, target: int) -> int:
    """DeMo's ``_get_smaller_split``: the largest divisor of ``n`` not above ``target``."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    below = [d for d in divisors if d <= target]
    return below[-1] if n > target else n


def _dct_matrix(n: int) -> torch.Tensor:
    """``B[j, b] = C[b, j]``: ``x @ B`` is the orthonormal DCT-II of rows of ``x``."""
    i = torch.arange(n, dtype=torch.float64)
    u = i[:, None]
    c = torch.cos(math.pi * (2 * i[None, :] + 1) * u / (2 * n)) * math.sqrt(2.0 / n)
    c[0] *= math.sqrt(0.5)
    return c.T.contiguous().float()


class EagerDeMo:
    """P peers' DeMo state; ``step(params, grads_per_peer, lr)`` mutates ``params`` in place."""

    def __init__(self, shapes, n_peers, decay, topk, chunk, weight_decay, sign=True):
        self.decay, self.topk, self.chunk, self.wd, self.sign = decay, topk, chunk, weight_decay, sign
        self.deltas = [[torch.zeros(s) for s in shapes] for _ in range(n_peers)]

    def _as2d(self, x):  # leading dims are batches: (B, m, n) -> (B*m, n), chunk rows by c(m)
        if x.dim() >= 2:
            m, n = x.shape[-2], x.shape[-1]
            return x.reshape(-1, n), _split(m, self.chunk), _split(n, self.chunk)
        return x.reshape(1, -1), 1, _split(x.numel(), self.chunk)

    def encode(self, x):
        x2, h, w = self._as2d(x)
        blocks = x2.reshape(x2.shape[0] // h, h, x2.shape[1] // w, w)  # (y h) (x w) -> y h x w
        return torch.einsum("yjxl,jb,ld->yxbd", blocks, _dct_matrix(h), _dct_matrix(w)), (h, w)

    def decode(self, coeffs, hw, shape):
        h, w = hw
        blocks = torch.einsum("yxbd,jb,ld->yjxl", coeffs, _dct_matrix(h), _dct_matrix(w))
        return blocks.reshape(shape)

    def step(self, params, grads_per_peer, lr):
        for t, p in enumerate(params):
            sent_idx, sent_val = [], []
            for peer, grads in enumerate(grads_per_peer):
                delta = self.deltas[peer][t]
                delta.mul_(self.decay).add_(grads[t], alpha=lr)
                coeffs, hw = self.encode(delta)
                flat = coeffs.reshape(*coeffs.shape[:2], -1)
                k = min(self.topk, flat.shape[-1])
                idx = torch.topk(flat.abs(), k, dim=-1, largest=True, sorted=False).indices
                val = torch.gather(flat, -1, idx)
                transmit = torch.zeros_like(flat).scatter_(-1, idx, val)
                delta.sub_(self.decode(transmit.reshape(coeffs.shape), hw, delta.shape))
                sent_idx.append(idx)
                sent_val.append(val)
            idx_all, val_all = torch.cat(sent_idx, -1), torch.cat(sent_val, -1)
            agg = torch.zeros_like(flat).scatter_reduce(-1, idx_all, val_all, "mean",
                                                        include_self=False)
            new_grad = self.decode(agg.reshape(coeffs.shape), hw, p.shape)
            update = new_grad.sign() if self.sign else new_grad
            if self.wd:
                p.mul_(1.0 - lr * self.wd)
            p.add_(update, alpha=-lr)
            yield t, new_grad


# ----------------------------------------------------------------------------- helpers

SHAPES = [(96, 40), (128, 192), (100,), (2, 32, 64), (7,), (1, 1)]


def _make_params(shapes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(s, generator=g) * 0.1).to(dtype)) for s in shapes]


def _grads(shapes, n_peers, n_steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[[torch.randn(s, generator=g) for s in shapes] for _ in range(n_peers)]
            for _ in range(n_steps)]


def _simulate(optimizers, params_per_peer, grads_step):
    """One step of every peer: all prepare, then all apply the same set of payloads."""
    for params, grads in zip(params_per_peer, grads_step):
        for p, g in zip(params, grads):
            p.grad = g.to(p.dtype).clone()
    payloads = {opt.rank: opt.prepare() for opt in optimizers}
    return [opt.apply(payloads) for opt in optimizers]


def _peers(n, shapes, *, backends=None, dtype=torch.float32, **kw):
    net = LocalNetwork(n, deadline=30.0)
    params = [_make_params(shapes, dtype=dtype) for _ in range(n)]
    opts = [DeMo(params[r], transport=net.transport(r),
                 backend=(backends[r] if backends else "reference"), **kw) for r in range(n)]
    return params, opts


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("topk,chunk", [(32, 64), (5, 16)])
def test_matches_eager_demo_f32_unsigned(topk, chunk):
    """Without the final sign, the whole update (and momentum) matches DeMo's to float tolerance."""
    n, steps, wd = 3, 4, 0.1
    lrs = [0.02, 0.015, 0.01, 0.005]
    params, opts = _peers(n, SHAPES, lr=lrs[0], compression_topk=topk, compression_chunk=chunk,
                          weight_decay=wd, sign=False)
    ref_params = [p.detach().clone() for p in _make_params(SHAPES)]
    eager = EagerDeMo(SHAPES, n, 0.999, topk, chunk, wd, sign=False)
    for s, grads in enumerate(_grads(SHAPES, n, steps)):
        for opt in opts:
            opt.param_groups[0]["lr"] = lrs[s]
        _simulate(opts, params, grads)
        list(eager.step(ref_params, grads, lrs[s]))
        for peer in range(n):
            for t, (p, ref) in enumerate(zip(params[peer], ref_params)):
                torch.testing.assert_close(p.detach(), ref, rtol=1e-5, atol=1e-6,
                                           msg=f"step {s} peer {peer} tensor {SHAPES[t]}")
                torch.testing.assert_close(opts[peer].state[p]["delta"], eager.deltas[peer][t],
                                           rtol=1e-5, atol=1e-6)


def test_matches_eager_demo_sign_sgd():
    """DeMo proper (sign of the aggregate): identical updates wherever the aggregate is not ~0."""
    n, steps, lr, wd = 4, 3, 0.01, 0.05
    params, opts = _peers(n, SHAPES, lr=lr, weight_decay=wd)
    ref_params = [p.detach().clone() for p in _make_params(SHAPES)]
    eager = EagerDeMo(SHAPES, n, 0.999, 32, 64, wd)
    for s, grads in enumerate(_grads(SHAPES, n, steps, seed=5)):
        before = [p.detach().clone() for p in params[0]]
        _simulate(opts, params, grads)
        for t, new_grad in eager.step(ref_params, grads, lr):
            ours = params[0][t].detach()
            expected_update = (before[t] * (1 - lr * wd) - ref_params[t])  # = lr * sign(new_grad)
            ours_update = before[t] * (1 - lr * wd) - ours
            near_zero = new_grad.abs() <= 1e-6 * new_grad.abs().max().clamp_min(1e-30)
            diff = (ours_update - expected_update).abs() > 1e-6
            assert not bool((diff & ~near_zero).any()), f"step {s} tensor {SHAPES[t]}"
            if bool(diff.any()):  # resync the reference where the sign of ~0 legitimately differs
                ref_params[t].copy_(ours)
    for peer in range(1, n):
        assert all(torch.equal(a, b) for a, b in zip(params[0], params[peer]))


# ----------------------------------------------------------------------------- state


def _train(params, opt, grads_steps, rank=0):
    for grads in grads_steps:
        for p, g in zip(params, grads[rank]):
            p.grad = g.to(p.dtype).clone()
        opt.step()


@pytest.mark.parametrize("dtype,codec", [(torch.float32, "f32"), (torch.bfloat16, "sign"),
                                         (torch.float16, "bf16")])
def test_save_resume_bit_identical(tmp_path, dtype, codec):
    grads = _grads(SHAPES, 1, 6, seed=9)
    kw = dict(lr=0.01, weight_decay=0.1, value_codec=codec, backend="reference")

    params_a = _make_params(SHAPES, dtype=dtype)
    opt_a = DeMo(params_a, **kw)
    _train(params_a, opt_a, grads)

    params_b = _make_params(SHAPES, dtype=dtype)
    opt_b = DeMo(params_b, **kw)
    _train(params_b, opt_b, grads[:3])
    path = tmp_path / "ckpt.pt"
    torch.save({"params": [p.detach() for p in params_b], "opt": opt_b.state_dict()}, path)

    ckpt = torch.load(path, weights_only=True)
    params_c = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    opt_c = DeMo(params_c, **kw)
    opt_c.load_state_dict(ckpt["opt"])
    assert opt_c.step_count == 3
    for p in params_c:
        assert opt_c.state[p]["delta"].dtype == torch.float32
    _train(params_c, opt_c, grads[3:])
    for a, c in zip(params_a, params_c):
        assert torch.equal(a, c)
    for pa, pc in zip(params_a, params_c):
        assert torch.equal(opt_a.state[pa]["delta"], opt_c.state[pc]["delta"])


def test_momentum_is_float32_for_low_precision_params():
    params = _make_params([(64, 64), (64,)], dtype=torch.bfloat16)
    opt = DeMo(params, lr=0.01, backend="reference")
    for p in params:
        p.grad = torch.randn(p.shape).to(torch.bfloat16)
    opt.step()
    for p in params:
        assert opt.state[p]["delta"].dtype == torch.float32
        assert p.dtype == torch.bfloat16
    assert "delta" in next(iter(opt.state_dict()["state"].values()))


# ----------------------------------------------------------------------------- determinism


@pytest.mark.skipif(not HAS_CPU, reason=CPU_SKIP_REASON)
@pytest.mark.parametrize("codec", ["f32", "sign"])
def test_reference_and_cpu_peers_end_bit_identical(codec):
    n, steps = 2, 4
    params, opts = _peers(n, SHAPES, backends=["reference", "cpu"], lr=0.01, weight_decay=0.1,
                          value_codec=codec)
    for grads in _grads(SHAPES, n, steps, seed=3):
        _simulate(opts, params, grads)
    for a, b in zip(params[0], params[1]):
        assert torch.equal(a, b)


def test_threaded_peers_agree_and_report_bytes():
    n, steps = 3, 3
    params, opts = _peers(n, SHAPES, lr=0.01, value_codec="sign")
    grads = _grads(SHAPES, n, steps, seed=4)
    errors = []

    def run(rank):
        try:
            _train(params[rank], opts[rank], grads, rank)
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for peer in range(1, n):
        assert all(torch.equal(a, b) for a, b in zip(params[0], params[peer]))
    reports = [opt.last_report for opt in opts]
    report = reports[1]
    assert report.step == steps - 1 and report.peers == [0, 1, 2] and report.left_out == {}
    assert report.bytes_received == reports[0].bytes_sent + reports[2].bytes_sent
    assert 0 < report.bytes_sent <= opts[1].max_payload_bytes_for_layout()
    assert opts[1].total_bytes_sent >= steps * min(r.bytes_sent for r in reports) > 0


def test_left_out_and_invalid_peers_are_reported_and_skipped():
    n = 3
    params, opts = _peers(n, SHAPES[:2], lr=0.01)
    for ps in params:
        for p in ps:
            p.grad = torch.randn(p.shape)
    payloads = {opt.rank: opt.prepare() for opt in opts}
    corrupted = bytearray(payloads[2])
    corrupted[-1] ^= 1
    received = {0: payloads[0], 2: bytes(corrupted)}  # peer 1 missing, peer 2 corrupted
    report = opts[0].apply(received)
    assert report.peers == [0]
    assert set(report.left_out) == {1, 2}
    assert report.left_out[1] == "missing"
    assert "DigestMismatch" in report.left_out[2]


def test_stale_step_is_rejected():
    params, opts = _peers(2, SHAPES[:1], lr=0.01)
    grads = _grads(SHAPES[:1], 2, 2, seed=8)
    for ps, g in zip(params, grads[0]):
        ps[0].grad = g[0].clone()
    step0 = {opt.rank: opt.prepare() for opt in opts}
    for opt in opts:
        opt.apply(step0)
    params[0][0].grad = grads[1][0][0].clone()
    own = opts[0].prepare()
    report = opts[0].apply({0: own, 1: step0[1]})  # peer 1 replays its step-0 payload
    assert report.peers == [0]
    assert "WrongStep" in report.left_out[1]


def test_late_peer_left_out_by_the_store_transport_and_all_agree():
    """A peer that misses a step (LocalNetwork: it posts nothing) is left out by everyone."""
    n = 3
    net = LocalNetwork(n, deadline=30.0)
    params = [_make_params(SHAPES[:3]) for _ in range(n)]
    opts = [DeMo(params[r], lr=0.01, transport=net.transport(r), backend="reference")
            for r in range(n)]
    for step, grads in enumerate(_grads(SHAPES[:3], n, 3, seed=11)):
        for ps, gs in zip(params, grads):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
        payloads = {opt.rank: opt.prepare() for opt in opts}
        if step == 1:
            payloads[2] = None  # peer 2 misses step 1
        results = net.exchange_all(payloads, step)
        reports = [opt.apply(results[opt.rank]) for opt in opts]
        if step == 1:
            assert all(r.peers == [0, 1] and 2 in r.left_out for r in reports)
    for peer in range(1, n):
        assert all(torch.equal(a, b) for a, b in zip(params[0], params[peer]))


def test_single_process_default_transport():
    params = _make_params([(32, 32)])
    opt = DeMo(params, lr=0.01, backend="reference")
    params[0].grad = torch.randn(32, 32)
    before = params[0].detach().clone()
    opt.step()
    assert not torch.equal(before, params[0])
    assert opt.last_report.peers == [0] and opt.last_report.bytes_received == 0


def test_argument_checks():
    params = _make_params([(8, 8)])
    with pytest.raises(ValueError):
        DeMo(params, value_codec="int4")
    with pytest.raises(ValueError):
        DeMo(params, compression_decay=1.5)
    with pytest.raises(ValueError):
        DeMo(params, lr=-1.0)


def test_param_groups_with_their_own_lr_and_weight_decay():
    shapes = [(64, 64), (32,)]
    params = _make_params(shapes)
    ref = [p.detach().clone() for p in params]
    opt = DeMo([{"params": [params[0]], "lr": 0.02, "weight_decay": 0.5},
                {"params": [params[1]]}], lr=0.01, backend="reference", sign=False)
    eager = EagerDeMo(shapes, 1, 0.999, 32, 64, 0.0, sign=False)
    grads = _grads(shapes, 1, 1, seed=12)[0][0]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    # tensor 0: lr 0.02, wd 0.5 (decoupled); tensor 1: the defaults lr 0.01, wd 0
    eager.wd = 0.5
    list(eager.step([ref[0]], [[grads[0]]], 0.02))
    torch.testing.assert_close(params[0].detach(), ref[0], rtol=1e-5, atol=1e-6)
    eager2 = EagerDeMo([shapes[1]], 1, 0.999, 32, 64, 0.0, sign=False)
    list(eager2.step([ref[1]], [[grads[1]]], 0.01))
    torch.testing.assert_close(params[1].detach(), ref[1], rtol=1e-5, atol=1e-6)


def test_step_with_no_payload_applies_only_weight_decay():
    params = _make_params([(16, 16)])
    opt = DeMo(params, lr=0.1, weight_decay=0.5, backend="reference")
    params[0].grad = torch.randn(16, 16)
    before = params[0].detach().clone()
    opt.prepare()
    report = opt.apply({})  # this peer was left out of the step (e.g. missed the deadline)
    assert report.peers == [] and 0 in report.left_out
    assert torch.equal(params[0].detach(), before * (1 - 0.1 * 0.5))


def test_layout_is_fixed_after_construction():
    opt = DeMo(_make_params([(8, 8)]), backend="reference")
    with pytest.raises(RuntimeError):
        opt.add_param_group({"params": _make_params([(4,)])})


@pytest.mark.parametrize("backend", ["reference"] + (["cpu"] if HAS_CPU else []))
def test_update_is_decoded_into_the_gradients_in_place(backend):
    """float32 contiguous gradients receive the update in place (no fresh buffer, no copy);
    gradients that cannot (non-contiguous here) get a fresh one. Both give the same bits."""
    shapes = [(29, 64), (97,), (3, 5, 7)]
    grads = _grads(shapes, 1, 3)
    in_place, fresh = _make_params(shapes), _make_params(shapes)
    opt_a = DeMo(in_place, lr=1e-2, backend=backend)
    opt_b = DeMo(fresh, lr=1e-2, backend=backend)
    for (step,) in grads:
        for p, g in zip(in_place, step):
            p.grad = g.clone()
        for p, g in zip(fresh, step):  # same values, transposed storage: not contiguous
            p.grad = g.clone().t().contiguous().t() if g.dim() == 2 else g.clone()
        fresh[1].grad = torch.stack([step[1], step[1]], 1)[:, 0]
        buffers = [p.grad.data_ptr() for p in in_place]
        opt_a.step()
        opt_b.step()
        assert [p.grad.data_ptr() for p in in_place] == buffers
        for a, b in zip(in_place, fresh):
            assert torch.equal(a.grad, b.grad) and torch.equal(a, b)
            assert set(a.grad.unique().tolist()) <= {-1.0, 0.0, 1.0}  # DeMo's sign update


def test_gradients_sharing_memory_get_fresh_updates():
    """Two parameters whose .grad views overlap (legal in torch) cannot be decoded in place:
    the step falls back to fresh tensors and gives the same result as separate gradients."""
    shapes = [(8, 16), (8, 16)]
    shared, separate = _make_params(shapes), _make_params(shapes)
    g = torch.randn(8, 17, generator=torch.Generator().manual_seed(3))
    base = torch.zeros(8 * 17 + 1)  # not empty(): its last element is read as a gradient
    opt_a, opt_b = DeMo(shared, lr=1e-2), DeMo(separate, lr=1e-2)
    shared[0].grad = base[: 8 * 16].view(8, 16).copy_(g[:, :16])
    shared[1].grad = base[1 : 8 * 16 + 1].view(8, 16)  # overlaps the first by all but one element
    separate[0].grad = shared[0].grad.clone()
    separate[1].grad = shared[1].grad.clone()
    opt_a.step()
    opt_b.step()
    for a, b in zip(shared, separate):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)
    assert shared[0].grad.data_ptr() != base.data_ptr()  # replaced, not written in place


# ----------------------------------------------------------------------------- momentum="dct"


@pytest.mark.parametrize("backend", ["reference"] + (["cpu"] if HAS_CPU else []))
@pytest.mark.parametrize("codec", ["f32", "sign"])
def test_dct_momentum_takes_the_same_steps(backend, codec):
    """momentum="dct" sends the same picks with the same values up to float32 rounding, so
    sign-SGD moves the parameters identically; the momenta agree in the parameter's layout."""
    grads = _grads(SHAPES, 1, 5, seed=21)
    kw = dict(lr=0.01, weight_decay=0.1, value_codec=codec, backend=backend)
    params_a, params_b = _make_params(SHAPES), _make_params(SHAPES)
    opt_a, opt_b = DeMo(params_a, **kw), DeMo(params_b, momentum="dct", **kw)
    for grads_step in grads:
        for params, opt in ((params_a, opt_a), (params_b, opt_b)):
            for p, g in zip(params, grads_step[0]):
                p.grad = g.clone()
            opt.prepare()
        # the same indices, values within float32 rounding of the two transforms' orders
        for (ia, va), (ib, vb) in zip(_pending_picks(opt_a), _pending_picks(opt_b)):
            assert torch.equal(ia, ib)
            torch.testing.assert_close(vb, va, rtol=1e-5, atol=1e-6 * float(va.abs().max()))
        for opt in (opt_a, opt_b):
            opt.apply({0: opt._pending[1]})
        for a, b in zip(params_a, params_b):
            assert torch.equal(a, b)
    for pa, pb in zip(params_a, params_b):
        assert set(opt_b.state[pb]) == {"delta_dct"}
        d = opt_a.state[pa]["delta"]
        # scale: lr * |grad| ~ 0.01 (a tensor whose coefficients are all sent has delta ~ 0)
        scale = max(0.01, float(d.abs().max()))
        torch.testing.assert_close(opt_b.momentum_of(pb), d, rtol=1e-5, atol=1e-5 * scale)
        assert opt_a.momentum_of(pa) is d


def _pending_picks(opt):
    payload = opt._pending[0]
    return [payload.tensor(t) for t in range(len(payload.indices))]


def test_dct_momentum_checkpoints_resume_bit_identical_and_convert(tmp_path):
    grads = _grads(SHAPES, 1, 6, seed=22)
    kw = dict(lr=0.01, backend="reference")
    params_a = _make_params(SHAPES)
    opt_a = DeMo(params_a, momentum="dct", **kw)
    _train(params_a, opt_a, grads)
    params_b = _make_params(SHAPES)
    opt_b = DeMo(params_b, momentum="dct", **kw)
    _train(params_b, opt_b, grads[:3])
    path = tmp_path / "ckpt.pt"
    torch.save({"params": [p.detach() for p in params_b], "opt": opt_b.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    params_c = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    opt_c = DeMo(params_c, momentum="dct", **kw)
    opt_c.load_state_dict(ckpt["opt"])
    _train(params_c, opt_c, grads[3:])
    for a, c in zip(params_a, params_c):
        assert torch.equal(a, c)
    for pa, pc in zip(params_a, params_c):
        assert torch.equal(opt_a.state[pa]["delta_dct"], opt_c.state[pc]["delta_dct"])
    # either layout loads a checkpoint of the other one, converted
    as_param = DeMo(_make_params(SHAPES), **kw)
    as_param.load_state_dict(opt_b.state_dict())
    back = DeMo(_make_params(SHAPES), momentum="dct", **kw)
    back.load_state_dict(as_param.state_dict())
    for pb, pp, pd in zip(params_b, as_param.param_groups[0]["params"], back.param_groups[0]["params"]):
        assert set(as_param.state[pp]) == {"delta"} and set(back.state[pd]) == {"delta_dct"}
        want = opt_b.momentum_of(pb)
        scale = max(0.01, float(want.abs().max()))
        torch.testing.assert_close(as_param.state[pp]["delta"], want, rtol=0, atol=1e-6 * scale)
        torch.testing.assert_close(back.state[pd]["delta_dct"], opt_b.state[pb]["delta_dct"],
                                   rtol=0, atol=1e-6 * scale)


def test_dct_momentum_rejects_a_checkpoint_of_another_shape():
    opt = DeMo(_make_params([(64, 64)]), momentum="dct", lr=0.01, backend="reference")
    bad = opt.state_dict()
    bad["state"] = {0: {"delta_dct": torch.zeros(3, 64)}}
    with pytest.raises(ValueError, match="saved delta_dct"):
        opt.load_state_dict(bad)
    bad["state"] = {0: {"delta_dct": torch.zeros(1, 4096, dtype=torch.float64)}}
    with pytest.raises(ValueError, match="float32"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="momentum must be one of"):
        DeMo(_make_params([(4,)]), momentum="coeffs")
