"""Times the native CUDA/HIP kernels beside Triton and the eager DeMo-style pipeline.

GPU:  python benchmarks/cuda_bench.py [--quick] [--json out.json] [--backends cuda,triton]
CPU:  python benchmarks/cuda_bench.py --emulated   (host emulation of the kernels, tiny shapes:
      a smoke test of this script and the launch path, not a measurement)

Per shape and backend: the median time (CUDA events; ``--reps`` runs after warm-up), the bytes
the op must move (read inputs once, write outputs once) over that time, that rate as a fraction
of the device-to-device copy bandwidth measured in the same run, and the speedup over the eager
DeMo-style pipeline (``distro_kernels.baseline``) on the same device in the same run. The
layout rows run a whole model (TinyLlama-1.1B's shapes) in one ``demo_step_many_`` and one
``decompress_many``. ``benchmarks/device_check.sh`` can call this after its Triton timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from distro_kernels import baseline  # noqa: E402
from distro_kernels.chunking import chunk_plan  # noqa: E402


def tinyllama_layout(d=2048, ffn=5632, kv=256, layers=22, vocab=32000):
    per_layer = [(d, d), (kv, d), (kv, d), (d, d), (ffn, d), (ffn, d), (d, ffn), (d,), (d,)]
    return [(vocab, d)] + per_layer * layers + [(d,), (vocab, d)]


def bench(fn, device, reps: int) -> float:
    """Median milliseconds of ``fn`` (CUDA events on a GPU, wall clock on CPU)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device, reps: int) -> float:
    n = (1 << 28) if device.type == "cuda" else (1 << 20)
    src = torch.empty(n, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * n * 4 / (bench(lambda: dst.copy_(src), device, reps) * 1e-3) / 1e9


def backends_for(names: list[str], device):
    """``{name: module}`` of the requested backends that run here (and why the others do not)."""
    import distro_kernels.cuda as dk_cuda

    out, missing = {}, {}
    for name in names:
        if name == "cuda":
            if device.type == "cpu" or dk_cuda.CUDA_ERROR is None:
                from distro_kernels.cuda import backend as module

                out[name] = module
            else:
                missing[name] = dk_cuda.CUDA_ERROR
        elif name == "triton":
            import distro_kernels.triton as dk_triton

            if dk_triton.TRITON_ERROR is None and device.type == "cuda":
                try:  # the op bodies' module: impl (per-device dispatch) or backend (older)
                    from distro_kernels.triton import impl as module
                except ImportError:
                    from distro_kernels.triton import backend as module

                out[name] = module
            else:
                missing[name] = dk_triton.TRITON_ERROR or "runs on GPUs only here"
    return out, missing


def _payloads(plan, k, peers, device):
    """Our payloads (sorted int32 indices) and DeMo's (its own layout), from the same inputs."""
    from distro_kernels import reference

    ours, theirs = [], []
    for _ in range(peers):
        x = torch.randn(plan.shape, device=device)
        ours.append(reference.compress(x, plan, k))
        theirs.append(baseline.compress(x, k, plan.chunk))
    return ours, theirs


def row(op, shape, backend, ms, nbytes, copy_gbs, eager_ms):
    gbs = nbytes / (ms * 1e-3) / 1e9
    return {"op": op, "shape": shape, "backend": backend, "ms": ms, "GB/s": gbs,
            "of_copy": gbs / copy_gbs, "speedup_vs_eager": eager_ms / ms if eager_ms else None}


def run_shape(shape, modules, device, args, copy_gbs) -> list[dict]:
    plan = chunk_plan(shape, args.chunk)
    n, k = plan.numel, plan.k_eff(args.k)
    payload = plan.n_chunks * k * 8
    grad = torch.randn(shape, device=device)
    delta = torch.zeros(shape, device=device)
    rows = []
    eager_ms = bench(lambda: baseline.encode_step(delta, grad, 0.999, 1.0, args.k, args.chunk),
                     device, args.reps)
    rows.append(row("encode step (f32 grad)", str(shape), "eager DeMo", eager_ms, n * 12 + payload,
                    copy_gbs, eager_ms))
    for name, m in modules.items():
        ms = bench(lambda: m.demo_step_(delta, grad, plan, 0.999, 1.0, args.k), device, args.reps)
        rows.append(row("encode step (f32 grad)", str(shape), name, ms, n * 12 + payload, copy_gbs, eager_ms))
    ours, theirs = _payloads(plan, args.k, args.peers, device)
    eager_ms = bench(lambda: baseline.decode_peers([i for i, _ in theirs], [v for _, v in theirs],
                                                   shape, args.chunk, True), device, args.reps)
    op = f"decode P={args.peers} mean+sign"
    nbytes = n * 4 + args.peers * payload
    rows.append(row(op, str(shape), "eager DeMo", eager_ms, nbytes, copy_gbs, eager_ms))
    for name, m in modules.items():
        ms = bench(lambda: m.decompress([i for i, _ in ours], [v for _, v in ours], plan, "mean",
                                        "f32", True), device, args.reps)
        rows.append(row(op, str(shape), name, ms, nbytes, copy_gbs, eager_ms))
    return rows


def run_layout(layout, label, modules, device, args, copy_gbs) -> list[dict]:
    plans = [chunk_plan(s, args.chunk) for s in layout]
    numel = sum(p.numel for p in plans)
    payload = sum(p.n_chunks * p.k_eff(args.k) for p in plans) * 8
    deltas = [torch.zeros(s, device=device) for s in layout]
    grads = [torch.randn(s, device=device).to(torch.bfloat16) for s in layout]
    rows, shape = [], f"{label}: {len(layout)} tensors, {numel / 1e9:.3f}B"

    def eager_step():
        for d, g in zip(deltas, grads):
            baseline.encode_step(d, g.float(), 0.999, 1.0, args.k, args.chunk)

    eager_ms = bench(eager_step, device, max(3, args.reps // 4))
    op = "encode step, whole model (bf16 grads)"
    rows.append(row(op, shape, "eager DeMo", eager_ms, numel * 10 + payload, copy_gbs, eager_ms))
    for name, m in modules.items():
        ms = bench(lambda: m.demo_step_many_(deltas, grads, plans, 0.999, 1.0, args.k), device, args.reps)
        rows.append(row(op, shape, name, ms, numel * 10 + payload, copy_gbs, eager_ms))
    per_tensor = [_payloads(p, args.k, args.peers, device) for p in plans]

    def eager_decode():
        for p, (_, theirs) in zip(plans, per_tensor):
            baseline.decode_peers([i for i, _ in theirs], [v for _, v in theirs], p.shape, args.chunk, True)

    eager_ms = bench(eager_decode, device, max(3, args.reps // 4))
    op = f"decode P={args.peers} mean+sign, whole model"
    nbytes = numel * 4 + args.peers * payload
    rows.append(row(op, shape, "eager DeMo", eager_ms, nbytes, copy_gbs, eager_ms))
    indices = [[i for i, _ in ours] for ours, _ in per_tensor]
    values = [[v for _, v in ours] for ours, _ in per_tensor]
    for name, m in modules.items():
        ms = bench(lambda: m.decompress_many(indices, values, plans, "mean", "f32", True), device, args.reps)
        rows.append(row(op, shape, name, ms, nbytes, copy_gbs, eager_ms))
    return rows


def format_rows(rows) -> str:
    out = ["| op | shape | backend | ms (median) | GB/s (floor bytes) | of D2D copy | vs eager |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"{r['speedup_vs_eager']:.3g}x" if r["speedup_vs_eager"] else "-"
        out.append(f"| {r['op']} | {r['shape']} | {r['backend']} | {r['ms']:.4g} | "
                   f"{r['GB/s']:.4g} | {r['of_copy']:.1%} | {speed} |")
    return "\n".join(out)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emulated", action="store_true",
                        help="CPU: the host emulation of the kernels, tiny shapes (smoke test)")
    parser.add_argument("--quick", action="store_true", help="GPU: 4096x4096 only, no model layout")
    parser.add_argument("--backends", default="cuda,triton")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    if args.emulated:
        from distro_kernels.cuda import runtime, sim

        runtime.set_sim(sim.SimDriver(sim.build()))
        device, args.reps, args.peers = torch.device("cpu"), 2, min(args.peers, 3)
        shapes, layout = [(64, 64), (96,)], [(64, 64), (7,), (29, 48)]
    else:
        if not torch.cuda.is_available():
            sys.exit("no GPU visible to torch (use --emulated for the CPU smoke run)")
        device = torch.device("cuda")
        shapes = [(4096, 4096)] if args.quick else [(4096, 4096), (11008, 4096)]
        layout = None if args.quick else tinyllama_layout()
    torch.manual_seed(0)
    modules, missing = backends_for(args.backends.split(","), device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (host emulation)"
    copy_gbs = copy_bandwidth(device, args.reps)
    print(f"device: {name}; torch {torch.__version__}; chunk {args.chunk}, k {args.k}, "
          f"P {args.peers}; D2D copy {copy_gbs:.1f} GB/s; backends {list(modules)}"
          + (f"; not run: {missing}" if missing else ""))
    rows = []
    for shape in shapes:
        rows += run_shape(shape, modules, device, args, copy_gbs)
    if layout:
        rows += run_layout(layout, "TinyLlama-1.1B" if not args.emulated else "tiny layout",
                           modules, device, args, copy_gbs)
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "copy_GBs": copy_gbs, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
