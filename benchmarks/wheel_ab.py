"""Side-by-side timing of installed builds of distro_kernels (e.g. OpenMP vs our thread pool,
gcc vs zig): one worker process per Python interpreter, driven in alternation, round by round,
so the machine's drift hits every build alike.

    python benchmarks/wheel_ab.py --rounds 8 NAME=/path/to/venv/bin/python ...

Each round every worker times ``dk.demo_step_`` (4096x4096, k=32, chunk 64, backend cpu) and
``dk.decompress`` of 8 peers with sign (same shape) ``--reps`` times and reports the median.
Run it from a folder outside the checkout so each interpreter imports its own installed build.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

WORKER = r"""
import json, sys, time
import torch
import distro_kernels as dk
n, reps = int(sys.argv[1]), int(sys.argv[2])
g = torch.Generator().manual_seed(0)
grad = torch.randn(n, n, generator=g)
delta = torch.zeros(n, n)
peers = [dk.compress(torch.randn(n, n, generator=g), 32, 64, backend="cpu") for _ in range(8)]
idx, val = [p[0] for p in peers], [p[1] for p in peers]
def step():
    dk.demo_step_(delta, grad, 0.999, 1.0, 32, 64, backend="cpu")
def decode():
    dk.decompress(idx, val, (n, n), 64, sign=True, backend="cpu")
for f in (step, decode):
    f()  # warm: bases cache, pool threads
print(json.dumps({"file": dk.__file__, "threads": torch.get_num_threads(),
                  "features": dk.info()["cpu_features"]}), flush=True)
for line in sys.stdin:
    out = {}
    for name, f in (("demo_step_", step), ("decompress_8", decode)):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter(); f(); times.append(time.perf_counter() - t0)
        out[name] = sorted(times)[len(times) // 2] * 1e3
    print(json.dumps(out), flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builds", nargs="+", help="NAME=PYTHON (an interpreter with the build installed)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n", type=int, default=4096)
    args = ap.parse_args()
    workers = {}
    for spec in args.builds:
        name, python = spec.split("=", 1)
        p = subprocess.Popen([python, "-c", WORKER, str(args.n), str(args.reps)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        workers[name] = p
        print(f"{name}: {p.stdout.readline().strip()}", flush=True)
    results = {name: {"demo_step_": [], "decompress_8": []} for name in workers}
    for r in range(args.rounds):
        for name, p in workers.items():  # alternate builds within every round
            p.stdin.write("go\n")
            p.stdin.flush()
            row = json.loads(p.stdout.readline())
            for k, v in row.items():
                results[name][k].append(v)
            print(f"round {r} {name:>8}: " + "  ".join(f"{k} {v:7.1f} ms" for k, v in row.items()),
                  flush=True)
    for p in workers.values():
        p.stdin.close()
        p.wait(timeout=60)
    print(f"\nmedian of {args.rounds} rounds (each the median of {args.reps} calls), ms:")
    print(f"{'build':>10} {'demo_step_':>12} {'decompress_8':>13}")
    for name, res in results.items():
        print(f"{name:>10} {statistics.median(res['demo_step_']):12.1f} "
              f"{statistics.median(res['decompress_8']):13.1f}"
              f"   (range {min(res['demo_step_']):.1f}-{max(res['demo_step_']):.1f} / "
              f"{min(res['decompress_8']):.1f}-{max(res['decompress_8']):.1f})")
    first = next(iter(results))
    print(f"\nper-round ratio to {first} (median over rounds; < 1 is faster):")
    for name, res in list(results.items())[1:]:
        ratios = {k: statistics.median(a / b for a, b in zip(res[k], results[first][k])) for k in res}
        print(f"{name:>10} {ratios['demo_step_']:12.3f} {ratios['decompress_8']:13.3f}")


if __name__ == "__main__":
    sys.exit(main())
