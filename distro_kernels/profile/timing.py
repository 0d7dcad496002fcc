"""How a run is timed, per device kind, and how several backends are timed side by side.

- CPU (``HostClock``): ``time.perf_counter`` around one call; the inputs rotate over enough
  copies that together they exceed twice the last-level cache, so no run starts with its
  inputs cached by the one before (``rotation_count``).
- GPU (``CudaClock``): a pair of ``torch.cuda.Event`` around one call on the current stream,
  after writing a buffer twice the L2's size (the flush), so every run starts cold.
- Host-side work on a GPU (the wire format's numpy code): ``HostClock`` with a device sync
  before and after.

``measure_interleaved`` runs the backends of one op round-robin (run 1 of each, then run 2
of each, ...), so drift in the machine's speed (other load, clocks) lands on all of them
alike; it reports the median and the spread of each backend's runs.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

MAX_ROTATION = 64  # copies of one input set at most
MAX_ROTATION_BYTES = 1 << 30  # and at most this much memory in copies


@dataclass
class Timing:
    """Seconds of the timed runs: ``median_s``; ``spread`` = (max - min) / median."""

    samples: list[float]

    @property
    def runs(self) -> int:
        return len(self.samples)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def min_s(self) -> float:
        return min(self.samples)

    @property
    def max_s(self) -> float:
        return max(self.samples)

    @property
    def spread(self) -> float:
        med = self.median_s
        return (self.max_s - self.min_s) / med if med > 0 else 0.0


@dataclass(frozen=True)
class RunPolicy:
    """Timed runs per backend: at least ``min_runs``, at most ``max_runs``, and no new run
    once a backend has spent ``budget_s`` in timed runs (past ``min_runs``)."""

    min_runs: int = 3
    max_runs: int = 7
    budget_s: float = 20.0

    def wants(self, timing: Timing) -> bool:
        if timing.runs < self.min_runs:
            return True
        return timing.runs < self.max_runs and sum(timing.samples) < self.budget_s


class HostClock:
    """Wall-clock seconds of one call; ``sync`` (a device synchronize) runs before and after."""

    kind = "perf_counter"

    def __init__(self, sync: Callable[[], None] | None = None):
        self._sync = sync or (lambda: None)

    def time(self, fn: Callable[[], Any]) -> float:
        self._sync()
        start = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - start


class CudaClock:
    """Seconds between two CUDA events around one call, after an L2 flush.

    ``event``, ``flush_buffer`` and ``synchronize`` are injectable so the logic is testable
    without a GPU; by default they are ``torch.cuda.Event``, a uint8 buffer of twice
    ``l2_bytes`` on ``device``, and ``torch.cuda.synchronize``.
    """

    kind = "cuda-events+l2-flush"

    def __init__(self, device: torch.device, l2_bytes: int, *, event=None, flush_buffer=None,
                 synchronize=None):
        self._event = event or (lambda: torch.cuda.Event(enable_timing=True))
        self._flush = flush_buffer if flush_buffer is not None else torch.empty(
            max(2 * int(l2_bytes), 8 << 20), dtype=torch.uint8, device=device)
        self._sync = synchronize or (lambda: torch.cuda.synchronize(device))

    def time(self, fn: Callable[[], Any]) -> float:
        self._flush.zero_()  # evicts the previous run's data from L2 (write-allocate)
        start, end = self._event(), self._event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds


def rotation_count(set_bytes: int, cache_bytes: int, *, cap: int = MAX_ROTATION,
                   max_bytes: int = MAX_ROTATION_BYTES) -> int:
    """Copies of an input set of ``set_bytes`` so that together they pass 2x the cache."""
    if set_bytes <= 0:
        return 1
    want = math.ceil(2 * cache_bytes / set_bytes)
    return max(1, min(want, cap, max_bytes // set_bytes))


@dataclass
class Case:
    """One backend's version of an op: ``make()`` builds one input set (untimed), ``run(s)``
    is the timed call on set ``s``; ``set_bytes`` sizes the CPU rotation."""

    make: Callable[[], Any]
    run: Callable[[Any], Any]
    set_bytes: int = 0
    clock: Any = None  # overrides the device clock (host-side ops on a GPU)
    sets: list = field(default_factory=list)


def measure_interleaved(cases: dict[str, Case], clock, policy: RunPolicy, *, rotate_cache_bytes: int = 0,
                        on_round: Callable[[int], None] | None = None) -> dict[str, Timing | Exception]:
    """Warm each case up once (first-call work: compiles, page faults), then time the cases
    round-robin. A case that raises is reported as its exception; the others go on."""
    results: dict[str, Timing | Exception] = {}
    live: dict[str, Case] = {}
    for name, case in cases.items():
        try:
            copies = rotation_count(case.set_bytes, rotate_cache_bytes) if rotate_cache_bytes else 1
            case.sets = [case.make() for _ in range(copies)]
            case.run(case.sets[0])  # warm-up, untimed
        except Exception as error:  # noqa: BLE001 - reported in the row, not fatal
            results[name] = error
            case.sets = []
            continue
        results[name] = Timing([])
        live[name] = case
    round_no = 0
    while live:
        if on_round is not None:
            on_round(round_no)
        for name in list(live):
            case, timing = live[name], results[name]
            try:
                state = case.sets[(round_no + 1) % len(case.sets)]
                timing.samples.append((case.clock or clock).time(lambda: case.run(state)))
            except Exception as error:  # noqa: BLE001
                results[name] = error
                del live[name]
                continue
            if not policy.wants(timing):
                del live[name]
        round_no += 1
    for case in cases.values():
        case.sets = []  # free the copies before the next op
    return results
