"""In-process transport tests (one process, threads or synchronous steps), the step helper
``exchange_payloads``, and the package-wide ban on pickle-based APIs."""

from __future__ import annotations

import ast
import os
import threading
import time

import numpy as np
import pytest
import torch.distributed as dist

import distro_kernels
from distro_kernels import transport as tp
from distro_kernels import wire
from test_wire_helpers import make_payload

LAYOUT = wire.Layout([(128, 64), (100,), (3, 5)], chunk=64, k=8)


def run_threads(fns):
    out, errors = {}, []

    def wrap(r, fn):
        try:
            out[r] = fn()
        except BaseException as e:  # surface thread failures in the test
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(r, fn)) for r, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return out


def test_exchange_all_everyone_gets_everything():
    net = tp.LocalNetwork(4)
    sent = {r: bytes([r]) * (10 + r) for r in range(4)}
    res = net.exchange_all(sent, step=0)
    for r in range(4):
        assert dict(res[r]) == sent and res[r].left_out == {}
        assert list(res[r]) == [0, 1, 2, 3] and res[r].step == 0


def test_exchange_all_missing_peer_reported_and_left_out():
    net = tp.LocalNetwork(4)
    res = net.exchange_all({0: b"a", 1: b"b", 2: None, 3: b"d"}, step=5)
    for r in range(4):  # the silent peer still receives the others
        assert dict(res[r]) == {0: b"a", 1: b"b", 3: b"d"}
        assert list(res[r].left_out) == [2] and res[r].left_out[2].startswith("missing")


def test_threads_with_a_late_peer_agree_on_the_roster():
    """A peer that posts after the roster is closed is left out by everyone, itself
    included, so every peer aggregates the same set."""
    net = tp.LocalNetwork(4, deadline=0.4)
    roster_key = ["local/1/roster"]

    def peer(r):
        def run():
            t = net.transport(r)
            if r == 2:  # post only after the others closed the step
                while not net.store.check(roster_key):
                    time.sleep(0.005)
            return t.exchange(bytes([r]) * 100, step=1)
        return run

    out = run_threads([peer(r) for r in range(4)])
    for r in range(4):
        assert list(out[r]) == [0, 1, 3]
        assert list(out[r].left_out) == [2]
        assert out[r][0] == bytes([0]) * 100
    # the reason is the coordinator's, the same on every peer (the late peer's own too)
    assert len({out[r].left_out[2] for r in range(4)}) == 1
    assert out[2].left_out[2].startswith("missing")
    for r in (0, 1, 3):
        # waited for the gather window (0.4 of the deadline), not much longer
        assert 0.4 * 0.4 - 0.01 < out[r].elapsed < 3.0


def test_all_present_step_does_not_wait_for_the_deadline():
    net = tp.LocalNetwork(3, deadline=20.0)
    out = run_threads([lambda r=r: net.transport(r).exchange(b"x" * r) for r in range(3)])
    for r in range(3):
        assert dict(out[r]) == {0: b"", 1: b"x", 2: b"xx"}
        assert out[r].elapsed < 5.0
        assert net.transport(r).next_step == 1  # the internal step counter advanced


def test_large_payloads_are_split_into_pieces_and_reassembled():
    net = tp.LocalNetwork(2, piece_bytes=1000)
    rng = np.random.default_rng(0)
    sent = {r: rng.integers(0, 256, 4321 + r, dtype=np.uint8).tobytes() for r in range(2)}
    res = net.exchange_all(sent, step=0)
    assert dict(res[0]) == sent and dict(res[1]) == sent


def test_oversized_peer_is_left_out_before_its_data_is_read():
    net = tp.LocalNetwork(3, max_bytes=100)
    res = net.exchange_all({0: b"a" * 100, 1: b"b" * 101, 2: b"c"}, step=0)
    assert dict(res[0]) == {0: b"a" * 100, 2: b"c"}
    assert res[0].left_out[1].startswith("over limit")


def test_inconsistent_size_record_is_left_out():
    net = tp.LocalNetwork(2)
    t1 = net.transport(1)
    t1.post(b"hello", 0)
    t1.store.set("0/size/1", (10**6).to_bytes(8, "little"))  # lies about its size
    res = net.exchange_all({0: b"x"}, step=0)  # peer 1 posted above, then lied
    for r in (0, 1):  # its own bytes are not in the step, for itself either
        assert dict(res[r]) == {0: b"x"}
        assert "data piece 0 has 5 bytes" in res[r].left_out[1]


def test_old_steps_are_deleted():
    net = tp.LocalNetwork(2, retain_steps=2)
    for step in range(6):
        net.exchange_all({0: b"a" * 10, 1: b"b"}, step=step)
    keys = net.store.num_keys()
    for step in range(6, 12):
        net.exchange_all({0: b"a" * 10, 1: b"b"}, step=step)
    assert net.store.num_keys() == keys  # steady state: no growth
    assert not net.store.check(["local/0/size/0"]) and net.store.check(["local/11/size/0"])


def test_the_coordinator_deletes_every_protocol_key_of_old_steps():
    # a peer's junk within the protocol's key space (pieces up to max_bytes, size, have,
    # done) is deleted with its step, whoever wrote it; honest peers never read past it
    net = tp.LocalNetwork(3, retain_steps=1, max_bytes=3000, piece_bytes=1000)
    base = net.store.num_keys()
    net.exchange_all({0: b"a", 1: b"b", 2: b"c"}, step=0)
    for i in range(3):  # junk at peer 2's keys of step 1: 3 pieces and a size
        net.store.set(f"local/1/data/2/{i}", b"x" * 1000)
    net.store.set("local/1/size/2", (10**9).to_bytes(8, "little"))
    net.store.set("local/1/have/2", b"junk")
    res = net.exchange_all({0: b"a", 1: b"b"}, step=1)
    assert res[0].left_out[2].startswith("over limit")
    for step in (2, 3):
        net.exchange_all({0: b"a", 1: b"b", 2: b"c"}, step=step)
    for key in ["local/1/size/2", "local/1/have/2", "local/1/roster"] + [
            f"local/1/data/2/{i}" for i in range(3)]:
        assert not net.store.check([key]), key
    assert net.store.num_keys() - base <= 2 * 3 * (3 + 3) + 2  # two steps' worth at most


def test_unsigned_records_of_another_run_are_ignored():
    store = dist.HashStore()
    old = [tp.StoreTransport(store, r, 2, run_id=1, deadline=0.3) for r in range(2)]
    new = [tp.StoreTransport(store, r, 2, run_id=2, deadline=0.3) for r in range(2)]
    run_threads([lambda r=r: old[r].exchange(b"old", step=0) for r in range(2)])
    # run 2 reuses the store and namespace: run 1's roster of step 0 is not its own
    t1 = new[1]
    with pytest.raises(tp.TransportError, match="no valid roster"):
        t1.exchange(b"new", step=0)


def test_exchange_payloads_leaves_out_invalid_payloads_with_their_rule():
    net = tp.LocalNetwork(4, deadline=2.0)
    good = {r: make_payload(LAYOUT, "sign", "auto", seed=r, step=9, sender=r) for r in range(4)}
    impostor = make_payload(LAYOUT, "sign", "auto", seed=5, step=9, sender=0)  # claims 0

    def peer(r):
        def run():
            t = net.transport(r)
            if r == 1:
                return t.exchange(os.urandom(500), step=9)  # garbage
            if r == 3:
                return t.exchange(impostor.to_bytes(), step=9)
            return tp.exchange_payloads(t, good[r])
        return run

    out = run_threads([peer(r) for r in range(4)])
    for r in (0, 2):
        res = out[r]
        assert list(res.payloads) == [0, 2]
        assert res.payloads[0] == good[0] and res.payloads[2] == good[2]
        assert "BadMagic" in res.left_out[1]
        assert "WrongSender" in res.left_out[3]


def test_exchange_payloads_rejects_other_steps_and_runs():
    # peers 1 and 2 post and then vanish: the coordinator waits for their records until the
    # deadline, so keep it short
    net = tp.LocalNetwork(3, deadline=0.5)
    p0 = make_payload(LAYOUT, "f32", "fixed", step=4, sender=0)
    old = make_payload(LAYOUT, "f32", "fixed", step=3, sender=1).to_bytes()
    other_run = make_payload(LAYOUT, "f32", "fixed", step=4, sender=2, run_id=1).to_bytes()
    net.transport(1).post(old, 4)
    net.transport(2).post(other_run, 4)
    res = tp.exchange_payloads(net.transport(0), p0)
    assert list(res.payloads) == [0]
    assert "WrongStep" in res.left_out[1] and "WrongRun" in res.left_out[2]


def test_store_transport_argument_checks():
    store = dist.HashStore()
    with pytest.raises(ValueError):
        tp.StoreTransport(store, 4, 4)
    with pytest.raises(ValueError):
        tp.StoreTransport(store, 0, 4, deadline=0)
    with pytest.raises(ValueError):
        tp.StoreTransport(store, 0, 4, piece_bytes=16 << 20)


def test_unreadable_roster_is_ignored_and_a_missing_coordinator_is_a_transport_error():
    net = tp.LocalNetwork(2, deadline=0.3)
    net.store.set("local/0/roster", b"\xff\xfe")  # garbage where the roster goes
    out = run_threads([lambda r=r: net.transport(r).exchange(bytes([r]), step=0)
                       for r in range(2)])
    assert dict(out[0]) == dict(out[1]) == {0: b"\x00", 1: b"\x01"}
    t0 = time.monotonic()
    with pytest.raises(tp.TransportError, match="no valid roster"):
        net.transport(1).exchange(b"x", step=1)  # the coordinator (peer 0) never comes
    assert time.monotonic() - t0 < 0.3 + 1.0


# ---------------------------------------------------------------------------- no pickle

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve",
                     "joblib"}
FORBIDDEN_NAMES = {"all_gather_object", "broadcast_object_list", "gather_object",
                   "scatter_object_list", "send_object_list", "recv_object_list",
                   "all_gather_into_tensor_object"}


def _violations(path: str) -> list[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
                bad.append(node.module)
            bad += [a.name for a in node.names if a.name in FORBIDDEN_NAMES]
        elif isinstance(node, ast.Attribute):
            if node.attr in FORBIDDEN_NAMES:
                bad.append(node.attr)
            # torch.load / torch.serialization.load (pickle underneath)
            value = node.value
            if node.attr == "load" and isinstance(value, ast.Name) and value.id == "torch":
                bad.append("torch.load")
            if node.attr in FORBIDDEN_MODULES and isinstance(node.value, ast.Name):
                bad.append(node.attr)
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            bad.append(node.id)
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                bad.append("allow_pickle")
    return [f"{path}:{name}" for name in bad]


def test_no_pickle_anywhere_in_the_package(tmp_path):
    """No pickle, torch.load or *_object collectives in any module of the package (the AST,
    so docstrings that mention them do not count)."""
    root = os.path.dirname(distro_kernels.__file__)
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".py")]
    assert any(f.endswith(os.path.join("transport", "store.py")) for f in files)
    bad = [v for f in files for v in _violations(f)]
    assert bad == []
    # the checker itself works
    probe = tmp_path / "probe.py"
    probe.write_text("import pickle\nimport torch.distributed as d\nd.all_gather_object([], 1)\n"
                     "import torch\ntorch.load('x')\n")
    assert len(_violations(str(probe))) == 3


# ---------------------------------------------------------------------------- signed runs

from distro_kernels.transport import records as rec  # noqa: E402
from distro_kernels.wire import signing  # noqa: E402

MANIFEST, _PRIV = signing.Manifest.generate(4)
KEYS = {p: (k, MANIFEST.peers[p]) for p, k in _PRIV.items()}
MANIFEST3 = signing.Manifest({p: KEYS[p][1] for p in range(3)}, coordinator=0)


def _signed_net(n=4, **kw):
    return tp.LocalNetwork(n, layout=LAYOUT, manifest=MANIFEST if n == 4 else MANIFEST3,
                           signing_keys={p: k for p, (k, _) in KEYS.items() if p < n}, **kw)


def _signed(sender, step, seed=0, m=None):
    p = make_payload(LAYOUT, "sign", seed=seed + sender, step=step, sender=sender,
                     run_id=(m or MANIFEST).run_id)
    return p.to_bytes(signing_key=KEYS[sender][0])


def _same(results):
    first = next(iter(results.values()))
    for r in results.values():
        assert dict(r) == dict(first) and r.left_out == first.left_out
    return first


def test_signed_run_everyone_in_and_max_bytes_from_the_layout():
    net = _signed_net()
    assert net.transport(1).max_bytes == LAYOUT.max_payload_bytes()
    sent = {r: _signed(r, 0) for r in range(4)}
    res = _same(net.exchange_all(sent, step=0))
    assert dict(res) == sent and res.left_out == {}


def test_signed_run_threads_with_exchange_payloads():
    net = _signed_net(deadline=5.0)
    pay = {r: make_payload(LAYOUT, "sign", seed=r, step=2, sender=r, run_id=MANIFEST.run_id)
           for r in range(4)}
    out = run_threads([lambda r=r: tp.exchange_payloads(net.transport(r), pay[r])
                       for r in range(4)])
    for r in range(4):
        assert list(out[r].payloads) == [0, 1, 2, 3] and out[r].left_out == {}
        assert out[r].payloads[2] == pay[2]


def test_forged_record_at_a_victims_key_leaves_the_victim_out_for_a_true_reason():
    net = _signed_net()
    for r in range(4):
        net.transport(r).post(_signed(r, 0), 0)
    # peer 3 overwrites peer 1's data: once with its own payload, once claiming sender 1
    t3 = net.transport(3)
    forged = make_payload(LAYOUT, "sign", seed=9, step=0, sender=1,
                          run_id=MANIFEST.run_id).to_bytes(signing_key=KEYS[3][0])
    t3.store.set("0/data/1/0", forged)
    t3.store.set("0/size/1", len(forged).to_bytes(8, "little"))
    res = _same(net.exchange_all({}, step=0))  # everyone posted above
    assert list(res) == [0, 2, 3]
    assert "BadSignature" in res.left_out[1]
    t3.store.set("1/data/1/0", _signed(3, 1))  # its own bytes at peer 1's key
    t3.store.set("1/size/1", len(_signed(3, 1)).to_bytes(8, "little"))
    res = _same(net.exchange_all({0: _signed(0, 1), 2: _signed(2, 1)}, step=1))
    assert list(res) == [0, 2] and "WrongSender" in res.left_out[1]


def test_unsigned_or_impostor_payloads_are_refused_by_the_transport():
    net = _signed_net()
    unsigned = make_payload(LAYOUT, "sign", step=0, sender=2, run_id=MANIFEST.run_id).to_bytes()
    with pytest.raises(wire.MissingSignature):  # a caller bug: caught at post
        net.transport(2).post(unsigned, 0)
    net.store.set("local/0/data/2/0", unsigned)  # written around the check
    net.store.set("local/0/size/2", len(unsigned).to_bytes(8, "little"))
    res = _same(net.exchange_all({0: _signed(0, 0), 1: _signed(1, 0)}, step=0))
    assert list(res) == [0, 1] and "MissingSignature" in res.left_out[2]


def test_equivocation_with_proof_is_left_out_by_everyone():
    net = _signed_net(3)
    t = [net.transport(r) for r in range(3)]
    a, b = _signed(2, 0, seed=0, m=MANIFEST3), _signed(2, 0, seed=50, m=MANIFEST3)
    t[0].post(_signed(0, 0, m=MANIFEST3), 0)
    t[1].post(_signed(1, 0, m=MANIFEST3), 0)
    t[2].post(a, 0)
    now = time.monotonic()
    t[0].gather(0, now)  # the coordinator holds A
    t[2].post(b, 0)  # then peer 2 swaps to B
    t[1].gather(0, now)  # peer 1 holds B
    t[2].gather(0, now)
    for r in range(3):
        t[r].post_have(0)
    t[0].decide(0, now)
    res = _same({r: t[r].finish(0, now) for r in (1, 2, 0)})
    assert list(res) == [0, 1]
    assert res.left_out[2].startswith("equivocation"), res.left_out


def test_a_disputed_peer_is_left_out_with_the_reporter_named():
    net = _signed_net(3)
    t = [net.transport(r) for r in range(3)]
    for r in range(3):
        t[r].post(_signed(r, 0, m=MANIFEST3), 0)
    now = time.monotonic()
    for r in range(3):
        t[r].gather(0, now)
    t[0].post_have(0)
    t[2].post_have(0)
    # peer 1 (hostile) claims it holds no copy of peer 2
    held = {p: rec.payload_digest(_signed(p, 0, m=MANIFEST3)) for p in (0, 1)}
    t[1].store.set("0/have/1", rec.encode_have(MANIFEST3.run_id, 0, 1, 3, held, KEYS[1][0]))
    t[0].decide(0, now)
    res = _same({r: t[r].finish(0, now) for r in (1, 2, 0)})
    assert list(res) == [0, 1] and "reported by peer 1" in res.left_out[2]


def test_a_committed_payload_gone_after_the_roster_raises_and_delivers_nothing():
    net = _signed_net(3)
    t = [net.transport(r) for r in range(3)]
    for r in range(3):
        t[r].post(_signed(r, 0, m=MANIFEST3), 0)
    now = time.monotonic()
    for r in (0, 2):  # peer 1 is slow: it gathers nothing and posts no have
        t[r].gather(0, now)
        t[r].post_have(0)
    t[0].decide(0, now)
    net.store.delete_key("local/0/data/2/0")  # a store writer deletes peer 2's data
    assert dict(t[2].finish(0, now)) == {p: _signed(p, 0, m=MANIFEST3) for p in range(3)}
    t0 = time.monotonic()
    with pytest.raises(tp.TransportError, match="not in the store"):
        t[1].finish(0, time.monotonic() + 0.2)
    assert time.monotonic() - t0 < 1.0


def test_records_refuse_forgeries_and_malformed_bytes():
    run = MANIFEST.run_id
    held = {0: bytes(32), 2: bytes(range(32))}
    good = rec.encode_have(run, 5, 1, 4, held, KEYS[1][0])
    r = rec.decode(good, rec.HAVE, run_id=run, step=5, world=4, manifest=MANIFEST, sender=1)
    assert r.held == held
    roster = rec.encode_roster(run, 5, 0, 4, {1: (10, bytes(32))}, {0: "x" * 500, 2: "why"},
                               KEYS[0][0])
    r = rec.decode(roster, rec.ROSTER, run_id=run, step=5, world=4, manifest=MANIFEST, sender=0)
    assert r.included == {1: (10, bytes(32))} and r.reasons[2] == "why"
    assert r.reasons[0] == "x" * rec.MAX_REASON and r.reasons[3] == "missing"
    bad = [
        (good, dict(step=6)), (good, dict(run_id=bytes(16))), (good, dict(world=5)),
        (good, dict(sender=2)), (good[:-1], {}), (good[:30], {}), (good + b"\0", {}),
        (rec.encode_have(run, 5, 1, 4, held, KEYS[2][0]), {}),  # signed by another key
        (rec.encode_have(run, 5, 1, 4, held), {}),  # unsigned in a signed run
        (b"\0" * (rec.max_record_bytes(rec.HAVE, 4) + 1), {}),
        (roster, {}),  # another kind
    ]
    for raw, over in bad:
        kw = dict(run_id=run, step=5, world=4, manifest=MANIFEST, sender=1) | over
        with pytest.raises(rec.RecordError):
            rec.decode(raw, rec.HAVE, **kw)
    # unsigned runs read unsigned records
    assert rec.decode(rec.encode_done(bytes(16), 1, 2, 3, bytes(32)), rec.DONE,
                      run_id=bytes(16), step=1, world=3).roster_digest == bytes(32)


def test_signed_transport_argument_checks():
    store = dist.HashStore()
    k0 = KEYS[0][0]
    with pytest.raises(ValueError, match="signing_key"):
        tp.StoreTransport(store, 0, 4, manifest=MANIFEST)
    with pytest.raises(ValueError, match="not peer 0's key"):
        tp.StoreTransport(store, 0, 4, manifest=MANIFEST, signing_key=KEYS[1][0])
    with pytest.raises(ValueError, match="peers must be"):
        tp.StoreTransport(store, 0, 3, manifest=MANIFEST, signing_key=k0)
    with pytest.raises(ValueError, match="without a manifest"):
        tp.StoreTransport(store, 0, 4, signing_key=k0)
    with pytest.raises(ValueError, match="coordinator"):
        tp.StoreTransport(store, 0, 4, manifest=MANIFEST, signing_key=k0, coordinator=2)
    with pytest.raises(ValueError):
        tp.StoreTransport(store, 0, 4, coordinator=4)
    assert tp.StoreTransport(store, 0, 4).max_bytes == tp.DEFAULT_MAX_BYTES
