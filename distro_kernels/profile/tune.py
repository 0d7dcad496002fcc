"""``profile --tune``: search a backend's tunable settings on this device, keep the best.

A coordinate search: start from the current settings, try every allowed value of one setting
at a time, keep a change only if it is at least ``MIN_GAIN`` faster (below that it is noise).
The cost of a candidate is the sum of the medians of the fused encode and the P-peer decode
with sign on the first layout. A candidate whose decode differs by one bit from the decode
under the starting settings is rejected (decode is bit-exact by contract, SPEC 4).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..ops import decompress_many
from . import tuning
from .device import usable_cpus
from .ops import Config, Workload, make_case
from .timing import RunPolicy, measure_interleaved

MIN_GAIN = 0.03


def thread_candidates(cpus: int) -> list[int]:
    """1, 2, 4, ... up to ``cpus``, and ``cpus`` itself."""
    out, n = [], 1
    while n < cpus:
        out.append(n)
        n *= 2
    return out + [cpus]


def space(backend: str) -> dict[str, list[int]]:
    if backend == "native":
        return {"threads": thread_candidates(usable_cpus())}
    if backend == "triton":
        values = {k: list(v) for k, v in tuning.TUNABLES["triton"].items()}
        values["ROWS_TILE"] = [1024, 2048, 4096]
        return values
    return {}


def coordinate_search(space_: dict[str, list], start: dict, measure: Callable[[dict], float]):
    """``(best, best_seconds, trials)``; ``measure`` returns seconds or raises (rejected)."""
    trials, seen = [], {}

    def attempt(candidate):
        key = tuple(sorted(candidate.items()))
        if key in seen:  # a coordinate revisits a value measured before: no new trial
            return seen[key]
        seen[key] = math.inf
        try:
            seconds = float(measure(candidate))
        except Exception as error:  # noqa: BLE001 - a failing candidate is only rejected
            trials.append({"settings": dict(candidate), "error": f"{type(error).__name__}: {error}"[:300]})
            return math.inf
        trials.append({"settings": dict(candidate), "seconds": seconds})
        seen[key] = seconds
        return seconds

    best, best_s = dict(start), attempt(start)
    if not math.isfinite(best_s):
        raise RuntimeError(f"the starting settings fail: {trials[-1]['error']}")
    for name, values in space_.items():
        for value in values:
            if value == best.get(name):
                continue
            candidate = {**best, name: value}
            seconds = attempt(candidate)
            if seconds < best_s * (1 - MIN_GAIN):
                best, best_s = candidate, seconds
    return best, best_s, trials


def _applier(backend: str):
    """``(current settings, set(settings))`` for a backend with tunables."""
    if backend == "native":
        return {"threads": torch.get_num_threads()}, lambda s: torch.set_num_threads(s["threads"])
    from ..triton import impl as tb

    names = list(tuning.TUNABLES["triton"])
    return tuning.module_settings(tb, names), lambda s: tuning.set_module_settings(tb, s)


def tune_device(device: torch.device, device_key: str, layout, config: Config, backends: list[str],
                clock, policy: RunPolicy, rotate: int, progress=None) -> dict:
    """Tunes every profiled backend that has settings; stores and returns the results."""
    results = {}
    work = Workload(layout, config, device)
    for backend in backends:
        if backend not in tuning.TUNABLES or (backend == "native" and device.type != "cpu"):
            continue
        start, set_ = _applier(backend)
        decode = make_case("decode+sign", backend, work)
        state = decode.make()
        set_(start)

        def decode_out():
            return decompress_many(state[0], state[1], work.shapes, config.chunk,
                                   value_codec=config.codec, sign=True, backend=backend)
        expected = decode_out()

        def measure(settings: dict) -> float:
            set_(settings)
            if progress is not None:
                progress.show(f"{device_key} tune {backend} {settings}")
            if not all(torch.equal(a, b) for a, b in zip(decode_out(), expected)):
                raise ValueError("decode bits differ from the starting settings")
            cases = {op: make_case(op, backend, work) for op in ("encode", "decode+sign")}
            timed = measure_interleaved(cases, clock, policy, rotate_cache_bytes=rotate)
            for result in timed.values():
                if isinstance(result, Exception):
                    raise result
            return sum(t.median_s for t in timed.values())

        try:
            best, best_s, trials = coordinate_search(space(backend), start, measure)
        finally:
            set_(start)
        path = tuning.store(device_key, backend, best, {"seconds": best_s, "layout": layout.name,
                                                        "start": start, "trials": trials})
        results[backend] = {"best": best, "seconds": best_s, "start": start, "trials": trials,
                            "cache": str(path)}
        work.clear()
    return results
