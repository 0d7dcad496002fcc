"""Arguments of ``distro-kernels profile`` and ``distro-kernels profile compare``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from .. import dispatch as _dispatch
from .ops import OPS, Config

DESCRIPTION = """\
Times every op of distro_kernels on every backend that runs on each device, next to the eager
DeMo-style pipeline (distro_kernels.baseline) timed in the same run on the same device, against
the device's copy bandwidth measured in the same run. Writes one JSON per device, named by the
device key (e.g. nvidia-h200-sm_90.json, amd-epyc-avx2.json), into --out.

  distro-kernels profile --device cpu --quick
  distro-kernels profile --device cuda --layout 4096x4096,llama-1b --csv --markdown --plot
  distro-kernels profile compare profiles/nvidia-h200-sm_90.json profiles/amd-epyc-avx2.json
"""

DEFAULT_LAYOUTS = {("cpu", False): "4096x4096,llama-1b-block", ("cpu", True): "512x1024",
                   ("cuda", False): "4096x4096,llama-1b", ("cuda", True): "4096x4096"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="*", metavar="compare FILE",
                   help="'compare A.json B.json ...': one side-by-side table of saved profiles")
    p.add_argument("--device", action="append",
                   help="cpu, cuda or cuda:N; repeat or comma-separate (default: every device present)")
    p.add_argument("--backends", help="comma-separated, from " + ", ".join(
        _dispatch.IMPLEMENTATIONS) + " (cpu and cuda mean native; default: every one that runs on the "
        "device); the eager baseline always runs; a requested backend that cannot run is reported")
    p.add_argument("--layout", action="append", help="named layouts (llama-1b = TinyLlama-1.1B, "
                   "llama-1b-block, tiny) or shapes like 4096x4096; comma-separate or repeat "
                   f"(default: cpu {DEFAULT_LAYOUTS[('cpu', False)]}, quick {DEFAULT_LAYOUTS[('cpu', True)]}; "
                   f"gpu {DEFAULT_LAYOUTS[('cuda', False)]}, quick {DEFAULT_LAYOUTS[('cuda', True)]})")
    p.add_argument("--layout-json", action="append", metavar="FILE",
                   help="a layout from a JSON list of shapes, or {\"name\": ..., \"shapes\": [...]}")
    p.add_argument("--ops", help="comma-separated subset of " + ", ".join(OPS))
    p.add_argument("--k", type=int, default=32, help="coefficients kept per chunk (default: %(default)s)")
    p.add_argument("--chunk", type=int, default=64, help="chunk target size (default: %(default)s)")
    p.add_argument("--peers", type=int, default=8, help="peers in the decode (default: %(default)s)")
    p.add_argument("--codec", choices=("f32", "bf16", "f16", "sign"), default="f32",
                   help="value codec of the decoded payloads and the wire rows (default: %(default)s)")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--quick", action="store_true", help="smaller default layout, fewer runs")
    p.add_argument("--tune", action="store_true", help="search tunable settings (CPU threads, Triton "
                   "warps and tiles) first, store the best per device key in the tuning cache")
    p.add_argument("--no-tuned", action="store_true", help="ignore the tuning cache")
    p.add_argument("--out", default="profiles", help="folder for the files, one set per device key (default: %(default)s)")
    p.add_argument("--csv", action="store_true", help="also write DEVICE_KEY.csv")
    p.add_argument("--markdown", action="store_true", help="also write DEVICE_KEY.md "
                   "(with compare: print markdown)")
    p.add_argument("--plot", action="store_true", help="also write DEVICE_KEY.png (matplotlib extra)")
    p.add_argument("--triton-interpreter", action="store_true", help="also run the triton backend on "
                   "CPU tensors in Triton's interpreter (needs TRITON_INTERPRET=1 set before the start; "
                   "a smoke run of the GPU code path, not a measurement)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _fail(message: str) -> int:
    print(f"distro-kernels profile: error: {message}", file=sys.stderr)
    return 2


def _devices(specs: list[str] | None) -> list[torch.device]:
    from .device import present_devices

    names = [s.strip() for spec in specs for s in spec.split(",") if s.strip()] if specs else present_devices()
    out = []
    for name in names:
        dev = torch.device(name)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"--device {name}: no GPU is visible to torch (torch {torch.__version__})")
            dev = torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
            if dev.index >= torch.cuda.device_count():
                raise ValueError(f"--device {name}: only {torch.cuda.device_count()} GPUs are visible")
        elif dev.type != "cpu":
            raise ValueError(f"--device {name}: cpu, cuda or cuda:N")
        if dev not in out:
            out.append(dev)
    return out


def _compare(args) -> int:
    from .compare import load, render

    files = args.action[1:]
    if len(files) < 1:
        return _fail("compare needs at least one profile JSON")
    try:
        docs = [load(f) for f in files]
    except ValueError as error:
        return _fail(str(error))
    sys.stdout.write(render(docs, markdown=args.markdown))
    return 0


def main(args) -> int:
    if args.action:
        if args.action[0] != "compare":
            return _fail(f"unknown action {args.action[0]!r} (the only one is 'compare')")
        return _compare(args)
    from . import report
    from .layouts import load_layout_json, parse_layouts
    from .progress import Progress
    from .run import profile_device

    try:
        if args.plot:
            report.require_matplotlib()  # before minutes of timing, not after
        if args.triton_interpreter:
            from ..triton import enable_interpreter

            try:
                enable_interpreter()
            except RuntimeError as error:
                raise ValueError(f"--triton-interpreter: {error}") from None
        devices = _devices(args.device)
        config = Config(k=args.k, chunk=args.chunk, peers=args.peers, codec=args.codec)
        if not 1 <= args.k <= 1 << 20 or not 1 <= args.chunk <= 1024 or not 1 <= args.peers <= 1024:
            raise ValueError("--k in [1, 2**20], --chunk in [1, 1024], --peers in [1, 1024]")
        ops = tuple(s.strip() for s in args.ops.split(",")) if args.ops else OPS
        if bad := [o for o in ops if o not in OPS]:
            raise ValueError(f"unknown ops {bad}: choose from {', '.join(OPS)}")
        requested = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends else None
        known = [*_dispatch.IMPLEMENTATIONS, *_dispatch.DEVICE_ALIASES, "eager"]
        if bad := [b for b in requested or [] if b not in known]:
            raise ValueError(f"unknown backend {bad[0]!r}: choose from {', '.join(known)}")
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError("--threads must be >= 1")
            torch.set_num_threads(args.threads)
        plan = []
        for dev in devices:
            layouts = parse_layouts(args.layout) if args.layout else (
                [] if args.layout_json else parse_layouts([DEFAULT_LAYOUTS[(dev.type, args.quick)]]))
            layouts += [load_layout_json(f) for f in args.layout_json or []]
            plan.append((dev, layouts))
    except report.PlotUnavailable as error:
        return _fail(str(error))
    except ValueError as error:
        return _fail(str(error))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "distro-kernels profile " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["profile"] else sys.argv[1:])
    total = sum(len(layouts) * len(ops) for _, layouts in plan)
    progress = Progress(total, enabled=not args.no_progress)
    status = 0
    for dev, layouts in plan:
        try:
            doc = profile_device(dev, layouts, config, backends=requested, ops=ops, quick=args.quick,
                                 tune=args.tune, use_tuning=not args.no_tuned, progress=progress,
                                 command=command)
        except ValueError as error:
            progress.close()
            return _fail(str(error))
        progress.close()
        doc["config"]["triton_interpreter"] = bool(args.triton_interpreter)
        # an interpreter run is a smoke test: never under the name of the device's real profile
        key = doc["device"]["key"] + ("-triton-interpreter" if args.triton_interpreter else "")
        written = [out_dir / f"{key}.json"]
        written[0].write_text(report.json_text(doc))
        if args.csv:
            written.append(out_dir / f"{key}.csv")
            written[-1].write_text(report.csv_text(doc))
        if args.markdown:
            written.append(out_dir / f"{key}.md")
            written[-1].write_text(report.markdown(doc))
        if args.plot:
            written.append(report.plot(doc, out_dir / f"{key}.png"))
        print(report.terminal(doc))
        print("wrote " + ", ".join(str(p) for p in written) + "\n", flush=True)
        if any(r["status"] == "error" for r in doc["rows"]):
            status = 1
    return status
