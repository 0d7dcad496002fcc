"""One device's profile: clock, roofline, backends, then every op on every layout."""

from __future__ import annotations

import datetime as _dt
import math
import sys

import torch

from .. import dispatch
from . import SCHEMA, device as _device, roofline, tuning
from .layouts import Layout
from .ops import EAGER, HOST_OPS, NO_EAGER, OPS, WIRE, Config, Workload, backends_for, make_case
from .timing import CudaClock, HostClock, RunPolicy, Timing, measure_interleaved

OUR_BACKENDS = dispatch.IMPLEMENTATIONS  # reference, native, triton
GPU_FLUSH_FLOOR = 512 << 20  # past AMD's 256 MiB Infinity Cache as well as any L2


def policy_for(device: torch.device, quick: bool) -> RunPolicy:
    # short ops get many runs (cheap, and a median of many resists preemption); long ones stop
    # at the time budget once they have the minimum
    if device.type == "cuda":
        return RunPolicy(3, 30, 0.5) if quick else RunPolicy(5, 100, 2.0)
    return RunPolicy(2, 15, 1.0) if quick else RunPolicy(3, 50, 10.0)


def copy_bytes(device: torch.device, cache_bytes: int, quick: bool) -> int:
    if device.type == "cuda":
        return 1 << 30
    return max((64 if quick else 256) << 20, (4 if quick else 8) * cache_bytes)


def select_backends(requested: list[str] | None, device: torch.device) -> tuple[list[str], list[dict]]:
    """Backends that run on ``device`` (default: all of ours that do), and a ``skipped`` entry
    with the reason for every other one, requested or not (never silently dropped)."""
    names = [_canonical(n) for n in requested] if requested else list(OUR_BACKENDS)
    asked = {_canonical(n) for n in requested or ()}
    for name in names:
        if name not in OUR_BACKENDS and name not in (EAGER, WIRE):
            raise ValueError(f"unknown backend {name!r}: choose from {', '.join(OUR_BACKENDS)}")
    run, skipped = [], []
    for name in OUR_BACKENDS:
        wanted, requested_here = name in names, name in asked
        try:
            dispatch.resolve(name, device)
        except RuntimeError:
            why = dispatch.why_unavailable(name, device.type)
            skipped.append({"backend": name, "requested": requested_here, "reason": f"not available: {why}"})
            continue
        except ValueError as error:
            skipped.append({"backend": name, "requested": requested_here, "reason": str(error)})
            continue
        if wanted:
            run.append(name)
        else:
            skipped.append({"backend": name, "requested": False, "reason": "not in --backends"})
    return run, skipped


def _canonical(name: str) -> str:
    """``cpu``/``cuda`` are the device-named spellings of ``native``."""
    return "native" if name in dispatch.DEVICE_ALIASES else name


def dispatch_pick(device: torch.device) -> str | None:
    """The implementation the dispatcher runs on ``device`` when no override is given."""
    return dispatch.preferred(device.type)[0]


def make_clock(device: torch.device, info: dict):
    if device.type == "cuda":
        return CudaClock(device, max(info["cache_bytes"], GPU_FLUSH_FLOOR // 2))
    return HostClock()


def _row(op, w: Workload, backend, result, nbytes, copy_gb_s, clock_kind, picked) -> dict:
    row = {
        "op": op, "layout": w.layout.name, "shape": _shape_text(w.layout),
        "tensors": len(w.layout.shapes), "numel": w.numel, "backend": backend,
        "dispatch": backend == picked, "clock": clock_kind, "bytes": nbytes,
        "status": "ok", "reason": None, "median_s": None, "spread": None, "min_s": None,
        "max_s": None, "runs": 0, "gb_s": None, "roofline_fraction": None,
        "ratio_vs_eager": None, "ratio_vs_reference": None, "note": NO_EAGER.get(op),
    }
    if isinstance(result, Exception):
        row.update(status="error", reason=f"{type(result).__name__}: {result}"[:500])
    elif isinstance(result, Timing):
        row.update(median_s=result.median_s, spread=result.spread, min_s=result.min_s,
                   max_s=result.max_s, runs=result.runs, **roofline.row_rates(nbytes, result, copy_gb_s))
    return row


def _shape_text(layout: Layout) -> str:
    if len(layout.shapes) == 1:
        return "x".join(map(str, layout.shapes[0]))
    n = layout.numel
    size = f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n:,}"
    return f"{layout.name} ({len(layout.shapes)} tensors, {size} params)"


def add_ratios(rows: list[dict]) -> None:
    """``ratio_vs_eager`` / ``ratio_vs_reference``: that backend's median over this one's
    (above 1: this row is faster), within the same op and layout of the same run."""
    by_key = {(r["op"], r["layout"], r["backend"]): r for r in rows if r["median_s"]}
    for r in rows:
        if not r["median_s"]:
            continue
        for other, field in ((EAGER, "ratio_vs_eager"), ("reference", "ratio_vs_reference")):
            base = by_key.get((r["op"], r["layout"], other))
            if base is not None:
                r[field] = base["median_s"] / r["median_s"]


def profile_device(device: torch.device, layouts: list[Layout], config: Config, *,
                   backends: list[str] | None = None, ops: tuple[str, ...] = OPS, quick: bool = False,
                   tune: bool = False, use_tuning: bool = True, progress=None, command: str = "") -> dict:
    """Profiles ``ops`` x backends x ``layouts`` on ``device``; returns the JSON document."""
    torch.manual_seed(0)
    info = _device.describe(device)
    run_backends, skipped = select_backends(backends, device)
    clock = make_clock(device, info)
    host_clock = HostClock((lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None)
    policy = policy_for(device, quick)
    rotate = info["cache_bytes"] if device.type == "cpu" else 0
    tuned = {}
    if tune:
        from . import tune as _tune

        tuned = _tune.tune_device(device, info["key"], layouts[0], config, run_backends, clock,
                                  policy, rotate, progress)
    settings = tuning.apply_all(device, info["key"], run_backends) if (use_tuning or tune) else {}
    info["threads"] = torch.get_num_threads() if device.type == "cpu" else None
    copy = roofline.copy_bandwidth(device, clock, copy_bytes(device, info["cache_bytes"], quick),
                                   RunPolicy(3, 10, 3.0))  # a plain copy is steady: a few runs do
    picked = dispatch_pick(device)
    rows = []
    for layout in layouts:
        w = Workload(layout, config, device)
        for op in ops:
            names = backends_for(op, run_backends)
            label = f"{info['key']} {layout.name} {op}"
            if progress is not None:
                progress.show(label)
            cases = {name: make_case(op, name, w) for name in names}
            host = op in HOST_OPS
            if host:
                for case in cases.values():
                    case.clock = host_clock
            results = measure_interleaved(
                cases, clock, policy, rotate_cache_bytes=rotate,
                on_round=(lambda n: progress.detail(f"{label} run {n + 1}")) if progress is not None else None)
            nbytes = w.op_bytes(op)
            for name in names:
                rows.append(_row(op, w, name, results[name], nbytes, copy["gb_s"],
                                 host_clock.kind if host else clock.kind, picked))
            for entry in skipped:
                if entry["requested"] and op not in HOST_OPS:
                    rows.append(_row(op, w, entry["backend"], None, nbytes, copy["gb_s"], None, picked)
                                | {"status": "unavailable", "reason": entry["reason"]})
            w.clear()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if progress is not None:
                progress.step()
    add_ratios(rows)
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join(sys.argv),
        "device": info,
        "versions": _device.versions(device),
        "clock": clock.kind,
        "policy": {"min_runs": policy.min_runs, "max_runs": policy.max_runs, "budget_s": policy.budget_s,
                   "rotation_cache_bytes": rotate},
        "copy_bandwidth": copy,
        "config": {"k": config.k, "chunk": config.chunk, "peers": config.peers, "codec": config.codec,
                   "beta": config.beta, "lr": config.lr, "quick": quick,
                   "layouts": [{"name": l.name, "description": l.description, "tensors": len(l.shapes),
                                "numel": l.numel} for l in layouts]},
        "dispatch": picked,
        "backends": run_backends,
        "skipped": skipped,
        "settings": settings,
        "tuning": tuned,
        "rows": [_clean(r) for r in rows],
    }


def _clean(row: dict) -> dict:
    """NaN/inf become null: the JSON stays strict (``allow_nan=False``)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
