"""Real peer processes on loopback for the multi-process exchange tests: a TCPStore hosted by
the test process, workers forked from one forkserver (which imports torch and the package
once; a spawn per worker would import torch again on a 2-core machine), each worker's JSON
report read back from the store."""

from __future__ import annotations

import json
import time
import warnings
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


class WorkerCrashed(AssertionError):
    """A worker was killed by a signal (e.g. SIGSEGV inside gloo) before it reported."""


def progress(store, rank: int, phase: str) -> None:
    """Records the phase a worker is in, so a crash can be placed."""
    store.set(f"progress/{rank}", phase)


def run_workers(target, args_per_rank: list[tuple], master, budget_s: float) -> dict[int, dict]:
    """Starts ``target(*args)`` per rank, waits at most ``budget_s`` in all (then kills what
    still runs), and returns each rank's ``result/<rank>`` report; a missing report or one
    with an ``error`` fails the test (``WorkerCrashed`` when a worker died by a signal)."""
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
    logs, problems, crashed = {}, [], False
    for r in range(len(procs)):
        if not master.check([f"result/{r}"]):
            phase = master.get(f"progress/{r}").decode() if master.check([f"progress/{r}"]) else "?"
            problems.append(f"worker {r} reported nothing (exit code {procs[r].exitcode}, last "
                            f"phase {phase})")
            crashed |= (procs[r].exitcode or 0) < 0
            continue
        logs[r] = json.loads(master.get(f"result/{r}"))
        if "error" in logs[r]:
            problems.append(f"worker {r}: {logs[r]['error']}")
    # every rank's failure, not just the first: one rank's error often makes the others wait
    if problems:
        raise (WorkerCrashed if crashed else AssertionError)("; ".join(problems))
    return logs


def run_workers_retrying_a_crash(target, make_args, budget_s: float) -> dict[int, dict]:
    """:func:`run_workers` on a fresh store (``make_args(master)`` gives each rank's args), once
    more if a worker was killed by a signal: a rare SIGSEGV of a worker inside torch/gloo on
    this project's CI machine (root cause not found; the second failure still fails, and the
    first is reported as a warning). Any other failure fails at once."""
    for attempt in (1, 2):
        master = master_store()
        try:
            return run_workers(target, make_args(master), master, budget_s)
        except WorkerCrashed as e:
            if attempt == 2:
                raise
            warnings.warn(f"a worker crashed, running the workers once more: {e}")
