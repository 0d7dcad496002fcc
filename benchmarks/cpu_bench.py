"""CPU benchmark: the ``cpu`` backend against the eager ``reference`` in the same run.

Prints, per op and shape: median time, GB/s (bytes the op must move at minimum), that as a
fraction of this machine's copy bandwidth measured in the same run, and the speedup over
``reference``. A DeMo-style eager encode (matmul DCT + ``torch.topk`` on |X|, DeMo's own
approach, not tie-exact) is timed too for context.

    python benchmarks/cpu_bench.py                 # the issue's shapes (several minutes)
    python benchmarks/cpu_bench.py --quick         # 1024x1024 and a 1-D tensor only
    python benchmarks/cpu_bench.py --json out.json # also write the table as JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import distro_kernels as dk
from distro_kernels import reference
from distro_kernels.chunking import chunk_plan

FULL_SHAPES = [(4096, 4096), (11008, 4096), (50304, 2048), (4 * 1024 * 1024,)]
QUICK_SHAPES = [(1024, 1024), (262144,)]
PEERS = 8


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (page faults, caches)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def copy_bandwidth() -> float:
    """GB/s of a 256 MB float32 copy (bytes read + written), as FACTS.md measures it."""
    src = torch.randn(64 * 1024 * 1024)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), 5)
    return 2 * src.numel() * 4 / seconds / 1e9


def demo_style_encode(delta: torch.Tensor, grad: torch.Tensor, k: int) -> None:
    """DeMo's eager encode for context: matmul DCT, torch.topk on |X|, matmul inverse."""
    plan = chunk_plan(delta.shape)
    delta.mul_(0.999).add_(grad, alpha=1.0)
    coeffs = reference.dct(delta, plan)
    picked = torch.topk(coeffs.abs(), plan.k_eff(k), dim=1, sorted=False).indices
    sent = torch.zeros_like(coeffs).scatter_(1, picked, torch.gather(coeffs, 1, picked))
    delta.sub_(reference._idct_fast(sent, plan).reshape(delta.shape))


def make_peers(shape, k: int):
    peers = []
    for p in range(PEERS):
        g = torch.Generator().manual_seed(p)
        peers.append(dk.compress(torch.randn(shape, generator=g), k=k, backend="cpu"))
    return [i for i, _ in peers], [v for _, v in peers]


def bench_shape(shape, k: int, repeats: int, ref_repeats: int, bandwidth: float) -> list[dict]:
    numel = torch.Size(shape).numel()
    rows = []
    grad = torch.randn(shape)
    times = {}
    for backend in ("cpu", "reference"):
        delta = torch.randn(shape) * 0.01
        reps = repeats if backend == "cpu" else ref_repeats
        times[backend] = median_time(lambda: dk.demo_step_(delta, grad, k=k, backend=backend), reps)
    delta = torch.randn(shape) * 0.01
    times["demo-style eager"] = median_time(lambda: demo_style_encode(delta, grad, k), ref_repeats)
    step_bytes = numel * 12  # read grad, read + write the state
    for backend, seconds in times.items():
        rows.append(_row("demo_step_", shape, backend, seconds, step_bytes, bandwidth, times["reference"]))
    indices, values = make_peers(shape, k)
    dec = {}
    for backend in ("cpu", "reference"):
        reps = repeats if backend == "cpu" else ref_repeats
        dec[backend] = median_time(lambda: dk.decompress(indices, values, shape, backend=backend), reps)
    dec_bytes = numel * 4 + sum(i.numel() * 8 for i in indices)  # write y, read the payloads
    for backend, seconds in dec.items():
        rows.append(_row(f"decompress P={PEERS}", shape, backend, seconds, dec_bytes, bandwidth, dec["reference"]))
    return rows


def _row(op, shape, backend, seconds, nbytes, bandwidth, reference_seconds) -> dict:
    gbs = nbytes / seconds / 1e9
    return {
        "op": op, "shape": "x".join(map(str, shape)), "backend": backend,
        "ms": seconds * 1e3, "GB/s": gbs, "of_copy_bw": gbs / bandwidth,
        "speedup_vs_reference": reference_seconds / seconds,
    }


def print_table(rows: list[dict], bandwidth: float) -> None:
    print(f"\nthreads={torch.get_num_threads()}  copy bandwidth={bandwidth:.1f} GB/s  "
          f"cpu kernels={dk.info()['cpu_kernel']}")
    header = f"{'op':<16}{'shape':<14}{'backend':<18}{'ms':>10}{'GB/s':>8}{'%copy':>7}{'vs ref':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['op']:<16}{r['shape']:<14}{r['backend']:<18}{r['ms']:>10.1f}{r['GB/s']:>8.2f}"
              f"{100 * r['of_copy_bw']:>6.0f}%{r['speedup_vs_reference']:>8.1f}x")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    parser.add_argument("--k", type=int, default=32, help="coefficients kept per chunk (default 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the cpu backend")
    parser.add_argument("--ref-repeats", type=int, default=1, help="timed runs of the slow paths")
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    bandwidth = copy_bandwidth()
    rows = []
    for shape in QUICK_SHAPES if args.quick else FULL_SHAPES:
        rows += bench_shape(shape, args.k, args.repeats, args.ref_repeats, bandwidth)
        print_table(rows[-5:], bandwidth)
    print_table(rows, bandwidth)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"copy_bandwidth_gbs": bandwidth, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
