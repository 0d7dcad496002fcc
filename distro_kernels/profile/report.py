"""A profile document as a terminal table, markdown, CSV, JSON or a PNG plot."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

CSV_FIELDS = ("device_key", "op", "layout", "shape", "backend", "dispatch", "status", "median_s",
              "spread", "min_s", "max_s", "runs", "bytes", "gb_s", "roofline_fraction",
              "ratio_vs_eager", "ratio_vs_reference", "clock", "reason", "note")
PLOT_HINT = "--plot needs matplotlib: pip install 'distro_kernels[plot]' (or pip install matplotlib)"


class PlotUnavailable(RuntimeError):
    pass


def seconds_text(s) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.3g}x"


def _num(x, fmt="{:.3g}") -> str:
    return "-" if x is None else fmt.format(x)


HEAD = ("op", "layout", "backend", "median", "spread", "GB/s", "of copy", "vs eager", "vs reference")


def table_cells(doc: dict) -> list[tuple[str, ...]]:
    out = []
    for r in doc["rows"]:
        if r["status"] == "unavailable":  # one "not profiled" line in the header says why
            continue
        backend = r["backend"] + (" *" if r["dispatch"] else "")
        if r["status"] != "ok":
            out.append((r["op"], r["shape"], backend, r["status"], (r["reason"] or "")[:70], "", "", "", ""))
            continue
        out.append((r["op"], r["shape"], backend, seconds_text(r["median_s"]), f"±{r['spread']:.0%}",
                    _num(r["gb_s"]), _pct(r["roofline_fraction"]), _ratio(r["ratio_vs_eager"]),
                    _ratio(r["ratio_vs_reference"])))
    return out


def header_lines(doc: dict) -> list[str]:
    d, v, c = doc["device"], doc["versions"], doc["copy_bandwidth"]
    cfg = doc["config"]
    vers = ", ".join(f"{k} {val}" for k, val in v.items() if val and k != "platform")
    lines = [
        f"device {d['key']} ({d['name']}{', ' + str(d['threads']) + ' threads' if d.get('threads') else ''})",
        f"versions: {vers}",
        f"clock: {doc['clock']}; copy bandwidth {c['gb_s']:.1f} GB/s "
        f"(bytes read + written, {c['bytes'] / 2**21:.0f} MiB buffer, median of {c['runs']})",
        f"k={cfg['k']} chunk={cfg['chunk']} peers={cfg['peers']} codec={cfg['codec']}"
        f"{' quick' if cfg['quick'] else ''}; * = what backend='auto' picks ({doc['dispatch']})",
    ]
    if doc.get("settings"):
        lines.append(f"tuned settings applied: {doc['settings']}")
    for s in doc["skipped"]:
        if s["reason"] != "not in --backends":
            lines.append(f"not profiled: {s['backend']}{' (requested)' if s['requested'] else ''}: {s['reason']}")
    return lines


def terminal(doc: dict) -> str:
    cells = [HEAD] + table_cells(doc)
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEAD))]
    rule = "  ".join("-" * w for w in widths)
    lines = header_lines(doc) + [""]
    for n, row in enumerate(cells):
        lines.append("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            lines.append(rule)
    lines.append("GB/s: the op's floor of bytes (inputs read once, outputs written once) over the median; "
                 "of copy: that over the copy bandwidth; vs X: X's median over this row's (same run).")
    return "\n".join(lines)


def markdown(doc: dict) -> str:
    lines = [f"- {line}" for line in header_lines(doc)]
    lines.append(f"- command: `{doc['command']}` ({doc['created']})")
    lines += ["", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for row in table_cells(doc):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def csv_text(doc: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in doc["rows"]:
        writer.writerow({**r, "device_key": doc["device"]["key"]})
    return buf.getvalue()


def json_text(doc: dict) -> str:
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise PlotUnavailable(f"{PLOT_HINT} ({error})") from None
    return plt


def plot(doc: dict, path: Path) -> Path:
    """Bars of the fraction of the copy bandwidth per op (and layout), one bar per backend."""
    plt = require_matplotlib()
    rows = [r for r in doc["rows"] if r["status"] == "ok" and r["roofline_fraction"] is not None]
    groups = list(dict.fromkeys((r["op"], r["shape"]) for r in rows))
    names = list(dict.fromkeys(r["backend"] for r in rows))
    value = {(r["op"], r["shape"], r["backend"]): 100 * r["roofline_fraction"] for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups) * max(1, len(names)) / 2), 4.5))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
        present = [(x, value[(op, shape, name)]) for x, (op, shape) in zip(xs, groups)
                   if value.get((op, shape, name), 0) > 0]  # no bar where a backend has no row
        ax.bar([x for x, _ in present], [v for _, v in present], width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{op}\n{shape}" for op, shape in groups], fontsize=7)
    ax.set_ylabel("% of copy bandwidth (roofline)")
    ax.set_yscale("log")
    ax.set_title(f"{doc['device']['key']}: copy {doc['copy_bandwidth']['gb_s']:.1f} GB/s", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
