"""The loopback worker harness itself: a worker killed by a signal is retried once (and
reported), a second kill fails, and any other failure fails at once."""

from __future__ import annotations

import json
import os
import signal
from datetime import timedelta

import pytest
import torch.distributed as dist

from loopback_workers import WorkerCrashed, progress, run_workers_retrying_a_crash


def _worker(rank: int, port: int, marker: str, mode: str) -> None:
    store = dist.TCPStore("127.0.0.1", port, None, is_master=False, timeout=timedelta(seconds=30))
    progress(store, rank, "only")
    with open(marker, "a") as f:  # one line per run of rank 1
        if rank == 1:
            f.write("run\n")
    runs = open(marker).read().count("run")
    if rank == 1 and (mode == "always" or (mode == "once" and runs == 1)):
        os.kill(os.getpid(), signal.SIGKILL)
    log = {"error": "boom"} if rank == 1 and mode == "error" else {"ok": rank}
    store.set(f"result/{rank}", json.dumps(log))
    os._exit(0)


def _run(tmp_path, mode):
    marker = str(tmp_path / "runs")
    open(marker, "w").close()
    logs = run_workers_retrying_a_crash(
        _worker, lambda master: [(r, master.port, marker, mode) for r in range(2)], 60)
    return logs, open(marker).read().count("run")


def test_a_killed_worker_is_run_again_once_and_reported(tmp_path):
    with pytest.warns(UserWarning, match=r"worker 1 reported nothing \(exit code -9, last phase only\)"):
        logs, runs = _run(tmp_path, "once")
    assert logs == {0: {"ok": 0}, 1: {"ok": 1}} and runs == 2


def test_a_second_kill_fails(tmp_path):
    with pytest.warns(UserWarning), pytest.raises(WorkerCrashed, match="exit code -9"):
        _run(tmp_path, "always")


def test_an_error_is_not_retried(tmp_path):
    with pytest.raises(AssertionError, match="worker 1: boom") as info:
        _run(tmp_path, "error")
    assert not isinstance(info.value, WorkerCrashed)
    assert open(tmp_path / "runs").read().count("run") == 1
