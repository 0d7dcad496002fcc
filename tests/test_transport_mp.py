"""Four real processes on loopback (torch.multiprocessing, gloo, TCPStore on 127.0.0.1).

One run of four workers (module fixture), phase by phase; each phase starts after a store
barrier so every peer enters it together:

- A (store) every peer sends a valid payload: everyone receives everyone's exact bytes
  (also through the default process group's store: ``from_process_group``, and the
  module-level ``transport.exchange``).
- B (store) peer 1 sends garbage: every other peer leaves it out (BadMagic) and goes on.
- C (store) peer 2 posts only after the coordinator (peer 0) committed the step: left out by
  everyone, itself included, for the same reason.
- D (gloo)  the same as A through ``GlooTransport``.
- E (gloo)  peer 1 sends garbage through gloo: left out by parsing.
- F (store) peer 3 dies: the others finish within the deadline without it.
- G (store) the survivors run one more step: the transport is still usable.
- H (gloo)  the survivors try gloo: ``TransportError`` promptly, no hang.

Workers report as JSON strings in the parent's TCPStore (no pickle, no queues). The store is
hosted by this (parent) process, as a launcher's agent would host it, so no rank's death
takes it down.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from loopback_workers import barrier, progress, run_workers_retrying_a_crash

WORLD = 4
DEADLINE = 3.0
# gloo's set-up and collectives need every rank inside one timeout: on a loaded 2-core machine
# a short one fails spuriously (a dead peer is still noticed at once, checked in phase H)
GLOO_DEADLINE = 15.0
SLACK = 2.5  # scheduling slack on a loaded 2-core CI machine
SHAPES = [(256, 128), (512,), (7, 13)]


def _h(b: bytes) -> str:
    return hashlib.blake2b(b, digest_size=8).hexdigest()


def _payload(layout, rank: int, step: int):
    from distro_kernels import wire
    from test_wire_helpers import random_parts

    idx, vals = random_parts(layout, seed=1000 * step + rank)
    return wire.Payload(step, rank, 77, layout, idx, vals, "sign")


def _record(res, sent: bytes | None = None) -> dict:
    """What a test needs from one exchange (ExchangeResult or StepResult)."""
    out = {"left_out": {str(k): v for k, v in res.left_out.items()},
           "elapsed": res.elapsed, "step": res.step}
    if hasattr(res, "payloads"):
        out["peers"] = list(res.payloads)
    else:
        out["peers"] = list(res)
        out["hashes"] = {str(p): _h(b) for p, b in res.items()}
    if sent is not None:
        out["sent"] = _h(sent)
    return out


def _worker(rank: int, world: int, port: int) -> None:
    faulthandler.enable()  # a crash prints every thread's stack to stderr
    torch.set_num_threads(1)
    from distro_kernels import transport as tp
    from distro_kernels import wire

    store = dist.TCPStore("127.0.0.1", port, None, is_master=False,
                          timeout=timedelta(seconds=60))
    log: dict = {}

    def save():
        store.set(f"result/{rank}", json.dumps(log))

    try:
        dist.init_process_group("gloo", store=dist.PrefixStore("pg", store), rank=rank,
                                world_size=world, timeout=timedelta(seconds=60))
        layout = wire.Layout(SHAPES, chunk=64, k=8)
        st = tp.StoreTransport(store, rank, world, deadline=DEADLINE, namespace="mp/store")
        gl = tp.GlooTransport(deadline=GLOO_DEADLINE)
        garbage = bytes((rank * 37 + i * 11) % 256 for i in range(3000))

        # A: store, all valid; record raw bytes (st.last) and parsed peers
        progress(store, rank, "A")
        barrier(store, "A", world)
        p = _payload(layout, rank, 0)
        res = tp.exchange_payloads(st, p)
        log["A"] = {**_record(st.last, p.to_bytes()), "parsed": list(res.payloads)}
        # A2: the same through the default process group's store
        pg_st = tp.StoreTransport.from_process_group(deadline=DEADLINE, namespace="mp/pg")
        log["A2"] = _record(pg_st.exchange(p.to_bytes()), p.to_bytes())
        # A3: the module-level exchange (default transport on the default group)
        tp.default_transport(deadline=DEADLINE, namespace="mp/default")
        log["A3"] = _record(tp.exchange(p.to_bytes()), p.to_bytes())

        # B: store, peer 1 sends garbage
        progress(store, rank, "B")
        barrier(store, "B", world)
        if rank == 1:
            log["B"] = _record(st.exchange(garbage, step=1), garbage)
        else:
            log["B"] = _record(tp.exchange_payloads(st, _payload(layout, rank, 1)))

        # C: store, peer 2 posts after the roster of step 2 exists
        progress(store, rank, "C")
        barrier(store, "C", world)
        if rank == 2:
            while not st.store.check(["2/roster"]):
                time.sleep(0.005)
        log["C"] = _record(tp.exchange_payloads(st, _payload(layout, rank, 2)))

        # D: gloo, all valid
        progress(store, rank, "D")
        barrier(store, "D", world)
        p = _payload(layout, rank, 10)
        gl_res = gl.exchange(p.to_bytes(), step=10)
        log["D"] = _record(gl_res, p.to_bytes())

        # E: gloo, peer 1 garbage
        progress(store, rank, "E")
        barrier(store, "E", world)
        if rank == 1:
            log["E"] = _record(gl.exchange(garbage, step=11), garbage)
        else:
            log["E"] = _record(tp.exchange_payloads(gl, _payload(layout, rank, 11)))
        save()

        # F: peer 3 dies at the start of the step
        progress(store, rank, "F")
        barrier(store, "F", world)
        if rank == 3:
            os._exit(0)
        log["F"] = _record(tp.exchange_payloads(st, _payload(layout, rank, 3)))

        # G: survivors, one more store step
        progress(store, rank, "G")
        barrier(store, "G", world - 1)
        log["G"] = _record(tp.exchange_payloads(st, _payload(layout, rank, 4)))

        # H: survivors on the gloo group: must fail promptly with TransportError
        progress(store, rank, "H")
        barrier(store, "H", world - 1)
        t0 = time.monotonic()
        try:
            gl.exchange(b"x" * 10, step=12)
            log["H"] = {"error": None, "elapsed": time.monotonic() - t0}
        except tp.TransportError as e:
            log["H"] = {"error": str(e)[:200], "elapsed": time.monotonic() - t0}
        try:
            gl.exchange(b"x", step=13)
        except tp.TransportError as e:
            log["H"]["second"] = str(e)[:80]
    except BaseException as e:  # report, then die without teardown (a dead peer may hang it)
        log["error"] = f"{type(e).__name__}: {e}"
    save()
    os._exit(0)


@pytest.fixture(scope="module")
def run():
    return run_workers_retrying_a_crash(
        _worker, lambda master: [(r, WORLD, master.port) for r in range(WORLD)], 150)


def test_every_peer_receives_every_other_peers_exact_bytes(run):
    sent = {str(r): run[r]["A"]["sent"] for r in range(WORLD)}
    for r in range(WORLD):
        a = run[r]["A"]
        assert a["peers"] == [0, 1, 2, 3] and a["left_out"] == {}
        assert a["hashes"] == sent
        assert a["parsed"] == [0, 1, 2, 3]
        a2 = run[r]["A2"]  # StoreTransport.from_process_group
        assert a2["hashes"] == sent and a2["left_out"] == {} and a2["step"] == 0
        a3 = run[r]["A3"]  # transport.exchange (module level)
        assert a3["hashes"] == sent and a3["left_out"] == {}


def test_garbage_peer_is_excluded_by_everyone(run):
    for r in (0, 2, 3):
        b = run[r]["B"]
        assert b["peers"] == [0, 2, 3]
        assert list(b["left_out"]) == ["1"] and "BadMagic" in b["left_out"]["1"]
    # the garbage peer itself received everyone's bytes (its own garbage included)
    assert run[1]["B"]["peers"] == [0, 1, 2, 3]


def test_late_peer_is_left_out_consistently(run):
    for r in range(WORLD):
        c = run[r]["C"]
        assert c["peers"] == [0, 1, 3]
        assert list(c["left_out"]) == ["2"]
    # the reason is the coordinator's roster entry, the same on every peer
    assert len({run[r]["C"]["left_out"]["2"] for r in range(WORLD)}) == 1
    assert run[2]["C"]["left_out"]["2"].startswith("missing")


def test_gloo_transport_all_peers_and_garbage_peer(run):
    sent = {str(r): run[r]["D"]["sent"] for r in range(WORLD)}
    for r in range(WORLD):
        assert run[r]["D"]["hashes"] == sent and run[r]["D"]["left_out"] == {}
    for r in (0, 2, 3):
        e = run[r]["E"]
        assert e["peers"] == [0, 2, 3] and "BadMagic" in e["left_out"]["1"]


def test_dead_peer_others_finish_the_step_within_the_deadline(run):
    for r in (0, 1, 2):
        f = run[r]["F"]
        assert f["peers"] == [0, 1, 2]
        assert list(f["left_out"]) == ["3"] and f["left_out"]["3"].startswith("missing")
        assert f["elapsed"] < DEADLINE + SLACK
        g = run[r]["G"]  # and the next step works too
        assert g["peers"] == [0, 1, 2] and list(g["left_out"]) == ["3"]
        assert g["elapsed"] < DEADLINE + SLACK


def test_gloo_with_a_dead_peer_raises_promptly(run):
    for r in (0, 1, 2):
        h = run[r]["H"]
        assert h["error"] is not None and "all_gather failed" in h["error"]
        assert h["elapsed"] < DEADLINE + SLACK
        assert "unusable" in h["second"]
