"""The demo's output: a plain-text table, a JSON file, and an optional loss plot."""

from __future__ import annotations

import json
import os
import platform
import time

from .train import DemoConfig, RunResult


def summary(res: RunResult, cfg: DemoConfig) -> dict:
    """The flat numbers the table and the JSON show."""
    demo, base = res.results.get("demo"), res.results.get("baseline")
    out: dict = {
        "peers": cfg.peers,
        "steps": cfg.steps,
        "params": (demo or base or {}).get("params"),
        "wall_seconds": round(res.wall_seconds, 1),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "config": res.config,
    }
    for name, r in (("demo", demo), ("baseline", base)):
        if r is None:
            continue
        out[f"{name}_train_loss"] = round(r["train_loss"], 4)
        out[f"{name}_heldout_loss"] = round(r["heldout_loss"], 4)
        out[f"{name}_bytes_per_peer_step"] = round(r["bytes_per_step"])
        out[f"{name}_seconds_per_step"] = round(r["seconds_per_step"], 4)
        out[f"{name}_seconds"] = round(r["wall_seconds"], 1)
        out[f"{name}_peers_agree"] = r.get("peers_agree")
        out[f"{name}_heldout_curve"] = [[s, round(v, 4)] for s, v in r["heldout_curve"]]
        out[f"{name}_train_curve"] = [round(v, 4) for v in res.train_curves.get(name, [])]
    if demo is not None:
        out["demo_backend"] = demo.get("backend")
        out["demo_transport"] = demo.get("transport")
        out["demo_steps_with_left_out_peers"] = demo.get("steps_with_left_out_peers")
    if demo is not None and base is not None:
        p = cfg.peers
        out["bytes_ratio"] = round(base["bytes_per_step"] / demo["bytes_per_step"], 1)
        out["heldout_loss_vs_baseline"] = round(demo["heldout_loss"] / base["heldout_loss"], 4)
        # what a peer actually puts on the network: a ring all-gather sends P-1 payloads,
        # a ring all-reduce 2 (P-1) / P gradient-sized volumes
        out["demo_wire_bytes_per_peer_step_allgather"] = round((p - 1) * demo["bytes_per_step"])
        out["baseline_wire_bytes_per_peer_step_ring_allreduce"] = round(
            2 * (p - 1) / p * base["bytes_per_step"])
        out["wire_ratio"] = round(out["baseline_wire_bytes_per_peer_step_ring_allreduce"]
                                  / max(1, out["demo_wire_bytes_per_peer_step_allgather"]), 1)
    return out


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def table(s: dict) -> str:
    """The result table as text."""
    cfg = s["config"]
    cols = [m for m in ("demo", "baseline") if f"{m}_heldout_loss" in s]
    titles = {"demo": f"DeMo ({cfg['codec']}, k={cfg['k']}, chunk={cfg['chunk']})",
              "baseline": "AdamW + all-reduce"}
    rows = [
        ("steps", lambda m: str(s["steps"])),
        ("final train loss", lambda m: f"{s[f'{m}_train_loss']:.4f}"),
        ("final held-out loss", lambda m: f"{s[f'{m}_heldout_loss']:.4f}"),
        ("bytes sent / peer / step", lambda m: _fmt_bytes(s[f"{m}_bytes_per_peer_step"])),
        ("time / step", lambda m: f"{s[f'{m}_seconds_per_step'] * 1e3:.0f} ms"),
        ("peers end identical", lambda m: "yes" if s[f"{m}_peers_agree"] else "NO"),
    ]
    width0 = max(len(r[0]) for r in rows)
    widths = [max(len(titles[m]), *(len(f(m)) for _, f in rows)) for m in cols]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, [width0, *widths])).rstrip()
    out = [
        f"{s['peers']} peers (processes, gloo on loopback), {s['params']:,}-parameter byte-level "
        f"transformer, {s['steps']} steps, batch {cfg['batch']}x{cfg['context']} bytes per peer",
        "",
        line(["", *(titles[m] for m in cols)]),
        line(["-" * width0, *("-" * w for w in widths)]),
    ]
    out += [line([name, *(f(m) for m in cols)]) for name, f in rows]
    if "bytes_ratio" in s:
        out += [
            "",
            f"bytes ratio (all-reduce / DeMo): {s['bytes_ratio']:.1f}x fewer bytes per peer per step",
            f"held-out loss, DeMo / AdamW: {s['heldout_loss_vs_baseline']:.3f} "
            f"({(s['heldout_loss_vs_baseline'] - 1) * 100:+.1f}%)",
            f"on the wire with ring collectives: all-gather "
            f"{_fmt_bytes(s['demo_wire_bytes_per_peer_step_allgather'])} vs all-reduce "
            f"{_fmt_bytes(s['baseline_wire_bytes_per_peer_step_ring_allreduce'])} "
            f"per peer per step ({s['wire_ratio']:.1f}x)",
        ]
    extra = f", DeMo backend {s['demo_backend']}" if s.get("demo_backend") else ""
    out.append(f"wall time {s['wall_seconds']:.0f} s on {s['cpu_count']} CPU cores{extra}")
    return "\n".join(out)


def write_json(s: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(s, f, indent=2)
        f.write("\n")


def plot(s: dict, path: str) -> None:
    """Train (smoothed) and held-out loss curves of both methods (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(
            "--plot needs matplotlib: pip install matplotlib "
            "(or pip install 'distro_kernels[plot]')") from exc
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"demo": "tab:blue", "baseline": "tab:orange"}
    labels = {"demo": "DeMo", "baseline": "AdamW + all-reduce"}
    for m in ("demo", "baseline"):
        curve = s.get(f"{m}_train_curve")
        if not curve:
            continue
        window = max(1, len(curve) // 30)
        smooth = [sum(curve[max(0, i - window + 1): i + 1]) / len(curve[max(0, i - window + 1): i + 1])
                  for i in range(len(curve))]
        ax.plot(range(1, len(curve) + 1), smooth, color=colors[m], alpha=0.6,
                label=f"{labels[m]} train (smoothed)")
        held = s.get(f"{m}_heldout_curve") or []
        ax.plot([p[0] for p in held], [p[1] for p in held], "o-", color=colors[m],
                label=f"{labels[m]} held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / byte)")
    ax.set_title("byte-level LM on the Python stdlib")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
