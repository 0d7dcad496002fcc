"""Real peer processes on loopback for the multi-process exchange tests: a TCPStore hosted by
the test process, workers forked from one forkserver (which imports torch and the package
once; a spawn per worker would import torch again on a 2-core machine), each worker's JSON
report read back from the store."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp

PRELOAD = ["torch", "torch.distributed", "distro_kernels.wire", "distro_kernels.transport",
           "test_wire_helpers"]


def master_store() -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", 0, None, is_master=True, timeout=timedelta(seconds=60),
                         wait_for_workers=False)


def barrier(store, name: str, n: int, timeout: float = 60.0) -> None:
    """Waits (polling the store) until ``n`` workers have reached barrier ``name``."""
    store.add(f"barrier/{name}", 1)
    end = time.monotonic() + timeout
    while int(store.add(f"barrier/{name}", 0)) < n:
        if time.monotonic() > end:
            raise TimeoutError(f"barrier {name}")
        time.sleep(0.002)


def run_workers(target, args_per_rank: list[tuple], master, budget_s: float) -> dict[int, dict]:
    """Starts ``target(*args)`` per rank, waits at most ``budget_s`` in all (then kills what
    still runs), and returns each rank's ``result/<rank>`` report; a missing report or one
    with an ``error`` fails the test."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    procs = [ctx.Process(target=target, args=args, daemon=True) for args in args_per_rank]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=max(1.0, budget_s - (time.monotonic() - t0)))
    for p in procs:
        if p.is_alive():
            p.kill()
    logs, problems = {}, []
    for r in range(len(procs)):
        if not master.check([f"result/{r}"]):
            problems.append(f"worker {r} reported nothing (exit code {procs[r].exitcode})")
            continue
        logs[r] = json.loads(master.get(f"result/{r}"))
        if "error" in logs[r]:
            problems.append(f"worker {r}: {logs[r]['error']}")
    # every rank's failure, not just the first: one rank's error often makes the others wait
    assert not problems, "; ".join(problems)
    return logs
