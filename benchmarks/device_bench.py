"""Times the Triton kernels against the device's copy bandwidth and the eager reference.

GPU:   python benchmarks/device_bench.py [--json out.json] [--quick]
CPU:   python benchmarks/device_bench.py --tiny      (Triton interpreter, tiny shapes)

For every kernel and shape it prints the median time (CUDA events via
``triton.testing.do_bench``), the bytes the kernel must move (its floor: read the inputs
once, write the outputs once) over that time in GB/s, that rate as a fraction of the
device-to-device copy bandwidth measured in the same run, and the speedup over the eager
reference (``distro_kernels.reference``, the readable torch definition) on the same device.
Shapes: 4096x4096, 11008x4096, 50304x2048 and the whole TinyLlama-1.1B layout
(``demo_step_many_`` and a per-tensor decode over every parameter).

``--tiny`` runs the same code path end to end in Triton's interpreter on CPU tensors (tiny
shapes, wall-clock medians of a few runs): a smoke test of this script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="Triton interpreter on CPU tensors, tiny shapes (no GPU needed)")
    parser.add_argument("--quick", action="store_true", help="GPU: the 4096x4096 shape only")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--no-eager", action="store_true", help="skip the eager reference")
    parser.add_argument("--precisions", default="ieee,tf32x3",
                        help="encoder dot precisions to time on NVIDIA (the first is the default)")
    return parser.parse_args(argv)


ARGS = _parse(sys.argv[1:] if __name__ == "__main__" else [])
if ARGS.tiny:
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from distro_kernels import reference  # noqa: E402
from distro_kernels.chunking import chunk_plan  # noqa: E402
from distro_kernels.triton import backend as tb  # noqa: E402


def tinyllama_layout(d=2048, ffn=5632, kv=256, layers=22, vocab=32000):
    """TinyLlama-1.1B's parameter shapes (1.10e9 parameters)."""
    per_layer = [(d, d), (kv, d), (kv, d), (d, d), (ffn, d), (ffn, d), (d, ffn), (d,), (d,)]
    return [(vocab, d)] + per_layer * layers + [(d,), (vocab, d)]


TINY_LAYOUT = [(96, 64), (16, 64), (64,), (29, 48), (7,)]


# ----------------------------------------------------------------------------- timing


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fn, device, tiny: bool) -> float:
    """Median milliseconds of ``fn``."""
    if tiny:
        fn()
        runs = []
        for _ in range(2):
            start = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - start) * 1e3)
        return statistics.median(runs)
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))


def copy_bandwidth(device, tiny: bool) -> float:
    """Device-to-device copy rate in GB/s (bytes read + written) on a large buffer."""
    n = (1 << 16) if tiny else (1 << 28)  # 1 GiB of float32 on the GPU
    src = torch.empty(n, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), device, tiny)
    return 2 * n * 4 / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------- inputs


def _payload(plan, k, peers, device, codec="f32"):
    """P peers' payloads, made on the device: index t of a chunk is drawn from its own bucket
    ``[t E/k, (t+1) E/k)``, so indices ascend with no sort and peers overlap at random."""
    g = torch.Generator(device=device).manual_seed(0)
    k_eff = plan.k_eff(k)
    bucket = plan.elements_per_chunk // k_eff
    start = torch.arange(k_eff, device=device, dtype=torch.int32) * bucket
    indices, values = [], []
    for _ in range(peers):
        jitter = torch.randint(0, bucket, (plan.n_chunks, k_eff), device=device, generator=g,
                               dtype=torch.int32)
        val = torch.randn(plan.n_chunks, k_eff, device=device, generator=g)
        indices.append(start + jitter)
        values.append(reference.pack_signs(val) if codec == "sign" else val)
    return indices, values


def _row(kernel, shape, ms, nbytes, copy_gbs, eager_ms=None, note=""):
    gbs = nbytes / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")
    return {
        "kernel": kernel, "shape": str(shape), "ms": ms, "GB/s": gbs,
        "of_copy": gbs / copy_gbs if copy_gbs else float("nan"),
        "eager_ms": eager_ms, "speedup": (eager_ms / ms) if eager_ms else None, "note": note,
    }


def run_tensor(shape, device, args, copy_gbs, tiny) -> list[dict]:
    """Every kernel on one tensor shape."""
    plan = chunk_plan(shape, args.chunk)
    n, k, peers = plan.numel, plan.k_eff(args.k), args.peers
    payload_bytes = plan.n_chunks * k * 8
    x = torch.randn(shape, device=device)
    grad_bf16 = torch.randn(shape, device=device).to(torch.bfloat16)
    delta = torch.zeros(shape, device=device)
    eager = not args.no_eager
    rows = []

    def timed(name, fn, ref_fn, nbytes, note=""):
        ms = bench(fn, device, tiny)
        eager_ms = bench(ref_fn, device, tiny) if (eager and ref_fn is not None) else None
        rows.append(_row(name, shape, ms, nbytes, copy_gbs, eager_ms, note))

    precisions = args.precisions.split(",") if device.type == "cuda" and not torch.version.hip else ["ieee"]
    for prec in precisions:
        tb.DOT_PRECISION = prec
        tag = "" if prec == precisions[0] else f" [{prec}]"
        timed("dct" + tag, lambda: tb.dct(x, plan), lambda: reference.dct(x, plan), n * 8)
        timed("compress" + tag, lambda: tb.compress(x, plan, k), lambda: reference.compress(x, plan, k),
              n * 4 + payload_bytes)
        timed("demo_step_ f32 grad" + tag, lambda: tb.demo_step_(delta, x, plan, 0.999, 1.0, k),
              lambda: reference.demo_step_(delta, x, plan, 0.999, 1.0, k), n * 12 + payload_bytes)
        timed("demo_step_ bf16 grad" + tag,
              lambda: tb.demo_step_(delta, grad_bf16, plan, 0.999, 1.0, k),
              lambda: reference.demo_step_(delta, grad_bf16, plan, 0.999, 1.0, k),
              n * 10 + payload_bytes)
    tb.DOT_PRECISION = precisions[0]
    if len(precisions) > 1:
        rows[-1]["note"] = f"encoder dot precision {precisions[0]} (default) vs {precisions[1:]}"

    coeffs = tb.dct(x, plan)
    timed("idct (canonical, bit-exact)", lambda: tb.idct(coeffs, plan),
          lambda: reference.idct(coeffs, plan), n * 8)
    indices, values = _payload(plan, args.k, peers, device)
    timed(f"decompress P={peers} f32 mean+sign",
          lambda: tb.decompress(indices, values, plan, "mean", "f32", True),
          lambda: reference.decompress(indices, values, plan, "mean", "f32", True),
          n * 4 + peers * payload_bytes)
    s_indices, s_values = _payload(plan, args.k, peers, device, "sign")
    timed(f"decompress P={peers} sign-codec",
          lambda: tb.decompress(s_indices, s_values, plan, "mean", "sign", True),
          lambda: reference.decompress(s_indices, s_values, plan, "mean", "sign", True),
          n * 4 + peers * plan.n_chunks * k * (4 + 1 / 8))
    flat = values[0].reshape(-1)
    packed = tb.pack_signs(flat)
    timed("pack_signs", lambda: tb.pack_signs(flat), lambda: reference.pack_signs(flat),
          flat.numel() * 4 + packed.numel())
    timed("unpack_signs", lambda: tb.unpack_signs(packed, flat.numel()),
          lambda: reference.unpack_signs(packed, flat.numel()), flat.numel() * 4 + packed.numel())
    return rows


def run_layout(layout, name, device, args, copy_gbs, tiny) -> list[dict]:
    """The whole model: one demo_step_many_ and a per-tensor P-peer decode of every tensor."""
    plans = [chunk_plan(s, args.chunk) for s in layout]
    numel = sum(p.numel for p in plans)
    deltas = [torch.zeros(s, device=device) for s in layout]
    grads = [torch.randn(s, device=device).to(torch.bfloat16) for s in layout]
    payload = sum(p.n_chunks * p.k_eff(args.k) for p in plans) * 8
    rows = []
    ms = bench(lambda: tb.demo_step_many_(deltas, grads, plans, 0.999, 1.0, args.k), device, tiny)
    eager_ms = None
    if not args.no_eager:
        eager_ms = bench(lambda: reference.demo_step_many_(deltas, grads, plans, 0.999, 1.0, args.k),
                         device, tiny)
    rows.append(_row(f"demo_step_many_ {name}", f"{len(layout)} tensors, {numel / 1e9:.3f}B",
                     ms, numel * 10 + payload, copy_gbs, eager_ms, "bf16 grads"))
    payloads = [_payload(p, args.k, args.peers, device) for p in plans]
    peers = args.peers

    def decode_all(module):
        for p, (i, v) in zip(plans, payloads):
            module.decompress(i, v, p, "mean", "f32", True)

    ms = bench(lambda: decode_all(tb), device, tiny)
    eager_ms = None if args.no_eager else bench(lambda: decode_all(reference), device, tiny)
    rows.append(_row(f"decompress P={peers} {name}", f"{len(layout)} tensors", ms,
                     numel * 4 + peers * payload, copy_gbs, eager_ms, "f32 mean + sign"))
    return rows


def accuracy_note(device, args) -> list[str]:
    """SPEC 6's bar for each encoder precision on a 4096-chunk sample (float64 model)."""
    from distro_kernels.basis import canonical_basis_np

    plan = chunk_plan((256, 1024) if device.type == "cuda" else (64, 64), args.chunk)
    x = torch.randn(plan.shape, device=device)
    cm = torch.from_numpy(canonical_basis_np(plan.cm).astype("float64"))
    cn = torch.from_numpy(canonical_basis_np(plan.cn).astype("float64"))
    blocks = reference.to_chunks(x.double().cpu(), plan)
    exact = (cm @ blocks @ cn.T).reshape(plan.n_chunks, -1)
    notes = []
    precisions = args.precisions.split(",") if device.type == "cuda" and not torch.version.hip else ["ieee"]
    for prec in precisions:
        tb.DOT_PRECISION = prec
        got = tb.dct(x, plan).double().cpu()
        rel = float((got - exact).norm() / exact.norm())
        notes.append(f"dct {prec}: ||X - X64|| / ||X64|| = {rel:.2e} (SPEC 6 fp32 bar 1e-5)")
    tb.DOT_PRECISION = precisions[0]
    return notes


def format_rows(rows) -> str:
    head = ("| kernel | shape | ms (median) | GB/s (floor bytes) | of D2D copy | eager ms | "
            "speedup vs eager | note |")
    out = [head, "|" + "---|" * 8]
    for r in rows:
        eager = f"{r['eager_ms']:.4g}" if r["eager_ms"] else "-"
        speed = f"{r['speedup']:.3g}x" if r["speedup"] else "-"
        out.append(f"| {r['kernel']} | {r['shape']} | {r['ms']:.4g} | {r['GB/s']:.4g} | "
                   f"{r['of_copy']:.1%} | {eager} | {speed} | {r['note']} |")
    return "\n".join(out)


def main(args=ARGS) -> list[dict]:
    tiny = args.tiny
    if tiny:
        device = torch.device("cpu")
        shapes = [(64, 64), (48, 64), (96,)]
        layout, layout_name = TINY_LAYOUT, "tiny layout"
        args.peers = min(args.peers, 3)
    else:
        if not torch.cuda.is_available():
            sys.exit("no GPU: run with --tiny for the interpreter smoke run")
        device = torch.device("cuda")
        shapes = [(4096, 4096)] if args.quick else [(4096, 4096), (11008, 4096), (50304, 2048)]
        layout, layout_name = tinyllama_layout(), "TinyLlama-1.1B"
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    print(f"device: {name}; torch {torch.__version__}; chunk {args.chunk}, k {args.k}, "
          f"P {args.peers}", flush=True)
    copy_gbs = copy_bandwidth(device, tiny)
    print(f"device-to-device copy: {copy_gbs:.1f} GB/s (read + write)", flush=True)
    rows = []
    for shape in shapes:
        new = run_tensor(shape, device, args, copy_gbs, tiny)
        print("\n".join(format_rows(new).splitlines()[2:]), flush=True)
        rows += new
    if not args.quick:
        rows += run_layout(layout, layout_name, device, args, copy_gbs, tiny)
    notes = accuracy_note(device, args)
    print()
    print(format_rows(rows))
    for line in notes:
        print("- " + line)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "copy_GBps": copy_gbs,
                                               "rows": rows, "notes": notes}, indent=1))
    return rows


if __name__ == "__main__":
    main()
