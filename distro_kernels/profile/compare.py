"""``distro-kernels profile compare A.json B.json ...``: one table across device keys.

One line per (op, layout, backend) and one column per profile; the ``auto`` lines hold what
``backend="auto"`` picks on each device (what a training job runs there), so a mixed
cluster's slowest member is the last column: every peer waits for it each step.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import SCHEMA
from .report import seconds_text

MAX_BYTES = 64 << 20
REQUIRED = ("schema", "device", "config", "copy_bandwidth", "rows")
ROW_FIELDS = ("op", "shape", "backend", "status", "median_s", "roofline_fraction", "dispatch")


def load(path: str | Path) -> dict:
    """A profile JSON, checked for the fields ``compare`` reads (``ValueError`` otherwise)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"{path}: over {MAX_BYTES} bytes")
        doc = json.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if not isinstance(doc, dict) or any(k not in doc for k in REQUIRED):
        raise ValueError(f"{path}: not a profile (needs {', '.join(REQUIRED)})")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"{path}: schema {doc['schema']!r}, this version reads {SCHEMA!r}")
    if not isinstance(doc["rows"], list) or not all(
            isinstance(r, dict) and all(f in r for f in ROW_FIELDS) for r in doc["rows"]):
        raise ValueError(f"{path}: rows lack the fields {', '.join(ROW_FIELDS)}")
    if not isinstance(doc["device"], dict) or "key" not in doc["device"]:
        raise ValueError(f"{path}: device has no key")
    return doc


def _columns(docs: list[dict]) -> list[str]:
    names, seen = [], {}
    for doc in docs:
        key = str(doc["device"]["key"])
        seen[key] = seen.get(key, 0) + 1
        names.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return names


def table(docs: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """``(header, lines, notes)``: cells are median (and % of that device's copy bandwidth)."""
    cols = _columns(docs)
    cells: dict[tuple, dict[str, tuple[float, str]]] = {}
    order: list[tuple] = []

    def put(key, col, seconds, text):
        if key not in cells:
            cells[key] = {}
            order.append(key)
        cells[key][col] = (seconds, text)

    for doc, col in zip(docs, cols):
        for r in doc["rows"]:
            if r["status"] != "ok" or r["median_s"] is None:
                continue
            frac = r["roofline_fraction"]
            pct = "" if frac is None else f" ({frac:.1%})" if frac < 0.1 else f" ({frac:.0%})"
            text = seconds_text(r["median_s"]) + pct
            put((r["op"], r["shape"], r["backend"]), col, r["median_s"], text)
            if r["dispatch"]:
                put((r["op"], r["shape"], "auto"), col, r["median_s"], f"{text} {r['backend']}")
    groups = list(dict.fromkeys(k[:2] for k in order))
    first = {k: i for i, k in enumerate(order)}
    order.sort(key=lambda k: (groups.index(k[:2]), k[2] != "auto", first[k]))
    header = ["op", "layout", "backend"] + cols + ["slowest"]
    lines = []
    for key in order:
        row = cells[key]
        slowest = max(row, key=lambda c: row[c][0]) if len(row) > 1 else "-"
        lines.append(list(key) + [row[c][1] if c in row else "-" for c in cols] + [slowest])
    notes = []
    configs = {json.dumps({k: d["config"].get(k) for k in ("k", "chunk", "peers", "codec")}, sort_keys=True)
               for d in docs}
    if len(configs) > 1:
        notes.append("configurations differ (k, chunk, peers, codec): " + "; ".join(sorted(configs)))
    for doc, col in zip(docs, cols):
        notes.append(f"{col}: {doc['device'].get('name')}, copy {doc['copy_bandwidth']['gb_s']:.1f} GB/s, "
                     f"{doc.get('created', '?')}")
    return header, lines, notes


def render(docs: list[dict], markdown: bool = False) -> str:
    header, lines, notes = table(docs)
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out + [""] + [f"- {n}" for n in notes]) + "\n"
    rows = [header] + lines
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    out = []
    for n, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("cells: median (fraction of that device's copy bandwidth); auto: what backend='auto' runs there")
    return "\n".join(out + notes) + "\n"
