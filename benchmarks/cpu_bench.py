"""CPU benchmark: the ``cpu`` backend against the eager DeMo-style pipeline, side by side.

Headline: our kernels against ``distro_kernels/baseline.py`` (DeMo's ``demo.py`` in eager torch:
einsum DCT, ``torch.topk`` on |X|, ``scatter_reduce`` mean, einsum inverse), measured in the same
process in interleaved rounds (the order flips every round), so machine drift and other load hit
both sides alike. The exact ``reference`` backend (SPEC 4's canonical folds in eager torch) is a
second column, timed in the first ``--reference-rounds`` rounds only (it is slow).

Per shape, these comparisons:
  encode   ``dk.demo_step_`` vs ``baseline.encode_step`` (momentum, DCT, top-k, error feedback),
           then ``dk.demo_step_coeffs_many_`` (the momentum kept as DCT coefficients) vs the same
  decode   ``dk.decompress`` of 8 peers + sign vs ``baseline.decode_peers``, then again with
           ours writing one reused buffer (``out=``)
  demo     one ``DeMo`` optimizer step on a model (this weight + 4 small tensors, world size 1)
           vs ``baseline.EagerDeMoStep`` (the first shape only), then the same with
           ``DeMo(momentum="dct")``

Each round times the ``cpu`` side as the median of 3 calls and the eager side once; the table
gives medians and [min, max] over rounds, and the per-round ratio eager / cpu.

    python benchmarks/cpu_bench.py                   # 4096x4096 (encode, decode, demo), ~2 min
    python benchmarks/cpu_bench.py --all             # + 11008x4096, 50304x2048, a 4M 1-D tensor
    python benchmarks/cpu_bench.py --quick           # 1024x1024 and a 1-D tensor
    python benchmarks/cpu_bench.py --json out.json   # also write every sample as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import distro_kernels as dk
from distro_kernels import baseline
from distro_kernels.optim import DeMo

HEADLINE = [(4096, 4096)]
MORE = [(11008, 4096), (50304, 2048), (4 * 1024 * 1024,)]
QUICK = [(1024, 1024), (262144,)]
SMALL_TENSORS = [(4096,), (4096,), (256, 64), (1000,)]  # biases, norms, a small matrix
PEERS = 8
K = 32


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_of(fn, n: int) -> float:
    return statistics.median(seconds(fn) for _ in range(n))


class Case:
    """One comparison: callables per side, timed in interleaved rounds."""

    def __init__(self, name: str, shape, sides: dict, slow: set):
        self.name, self.shape, self.sides, self.slow = name, shape, sides, slow
        self.samples = {side: [] for side in sides}

    def run(self, rounds: int, reference_rounds: int) -> None:
        for fn in self.sides.values():  # warm-up: page faults, caches, lazy bases
            fn()
        for r in range(rounds):
            order = list(self.sides) if r % 2 == 0 else list(reversed(self.sides))
            for side in order:
                if side == "reference" and r >= reference_rounds:
                    continue
                fn = self.sides[side]
                self.samples[side].append(seconds(fn) if side in self.slow else median_of(fn, 3))

    def rows(self) -> list[dict]:
        cpu = self.samples["cpu"]
        out = []
        for side, values in self.samples.items():
            if not values:
                continue
            # paired ratios: a round's eager time over the same round's cpu time
            ratios = [v / c for v, c in zip(values, cpu)]
            out.append({
                "case": self.name, "shape": "x".join(map(str, self.shape)), "side": side,
                "rounds": len(values), "ms_median": 1e3 * statistics.median(values),
                "ms_min": 1e3 * min(values), "ms_max": 1e3 * max(values),
                "x_cpu_median": statistics.median(ratios), "x_cpu_min": min(ratios),
                "x_cpu_max": max(ratios), "samples_ms": [1e3 * v for v in values],
            })
        return out


def encode_case(shape) -> Case:
    grad = torch.randn(shape)
    ours, eager, exact = (torch.randn(shape) * 0.01 for _ in range(3))
    return Case("encode step", shape, {
        "cpu": lambda: dk.demo_step_(ours, grad, k=K, backend="cpu"),
        "eager DeMo": lambda: baseline.encode_step(eager, grad, 0.999, 1.0, K),
        "reference": lambda: dk.demo_step_(exact, grad, k=K, backend="reference"),
    }, slow={"eager DeMo", "reference"})


def encode_coeffs_case(shape) -> Case:
    """The same step with the momentum kept as DCT coefficients (``demo_step_coeffs_many_``):
    no inverse transform, contiguous state. The eager side is the same as in ``encode_case``."""
    grad = torch.randn(shape)
    ours = dk.dct(torch.randn(shape) * 0.01, backend="cpu")
    eager, exact = (torch.randn(shape) * 0.01 for _ in range(2))
    exact_state = dk.dct(exact, backend="reference")
    return Case("encode step, DCT-domain momentum", shape, {
        "cpu": lambda: dk.demo_step_coeffs_many_([ours], [grad], k=K, backend="cpu"),
        "eager DeMo": lambda: baseline.encode_step(eager, grad, 0.999, 1.0, K),
        "reference": lambda: dk.demo_step_coeffs_many_([exact_state], [grad], k=K, backend="reference"),
    }, slow={"eager DeMo", "reference"})


def decode_case(shape, into: bool = False) -> Case:
    """``into``: ours decodes into one reused buffer (``out=``, as a training loop would),
    sparing the page faults of fresh memory; the eager side allocates as DeMo's code does."""
    xs = [torch.randn(shape, generator=torch.Generator().manual_seed(p)) for p in range(PEERS)]
    ours = [dk.compress(x, k=K, backend="cpu") for x in xs]
    eager = [baseline.compress(x, K) for x in xs]
    idx, val = [i for i, _ in ours], [v for _, v in ours]
    e_idx, e_val = [i for i, _ in eager], [v for _, v in eager]
    out = torch.empty(shape) if into else None
    return Case(f"decode {PEERS} peers + sign" + (", out=" if into else ""), shape, {
        "cpu": lambda: dk.decompress(idx, val, shape, sign=True, out=out, backend="cpu"),
        "eager DeMo": lambda: baseline.decode_peers(e_idx, e_val, shape, sign=True),
        "reference": lambda: dk.decompress(idx, val, shape, sign=True, backend="reference"),
    }, slow={"eager DeMo", "reference"})


def demo_case(shape, momentum: str = "param") -> Case:
    """``momentum="dct"``: ours keeps the momentum as DCT coefficients (``DeMo(momentum=)``)."""
    shapes = [shape] + SMALL_TENSORS
    grads = [torch.randn(s) for s in shapes]

    def model():
        params = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i)) * 0.02)
                  for i, s in enumerate(shapes)]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        return params

    ours = DeMo(model(), lr=1e-3, backend="cpu", momentum=momentum)
    eager = baseline.EagerDeMoStep(model(), lr=1e-3)
    n = sum(torch.Size(s).numel() for s in shapes)
    name = f"DeMo step ({len(shapes)} tensors, {n / 1e6:.1f}M)" + (", dct" if momentum == "dct" else "")
    return Case(name, shape,
                {"cpu": ours.step, "eager DeMo": eager.step}, slow={"eager DeMo"})


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def print_rows(rows: list[dict]) -> None:
    header = (f"{'case':<34}{'shape':<12}{'side':<12}{'n':>3}{'ms median':>11}{'[min, max]':>20}"
              f"{'x cpu':>8}{'[min, max]':>16}")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = "" if r["side"] == "cpu" else f"{r['x_cpu_median']:>7.1f}x [{r['x_cpu_min']:.1f}, {r['x_cpu_max']:.1f}]"
        print(f"{r['case']:<34}{r['shape']:<12}{r['side']:<12}{r['rounds']:>3}{r['ms_median']:>11.1f}"
              f"{'[%.1f, %.1f]' % (r['ms_min'], r['ms_max']):>20} {ratio}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--quick", action="store_true", help="1024x1024 and a 1-D tensor only")
    parser.add_argument("--all", action="store_true", help="also 11008x4096, 50304x2048, 4M 1-D")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--reference-rounds", type=int, default=1,
                        help="rounds that also time the exact reference backend (default 1; 0: none)")
    parser.add_argument("--json", help="also write the rows (with every sample) to this path")
    args = parser.parse_args(argv)
    shapes = QUICK if args.quick else HEADLINE + (MORE if args.all else [])
    demo_shapes = shapes[:1]
    print(f"threads={torch.get_num_threads()}  cpu kernels={dk.info()['cpu_kernel']}  "
          f"rounds={args.rounds}  load average at start: {load_average()}")
    rows = []
    for shape in shapes:
        cases = [encode_case(shape), encode_coeffs_case(shape), decode_case(shape),
                 decode_case(shape, into=True)]
        cases += [demo_case(shape), demo_case(shape, "dct")] if shape in demo_shapes else []
        for case in cases:
            case.run(args.rounds, args.reference_rounds)
            rows += case.rows()
            print_rows(case.rows())
            print()
    print(f"load average at end: {load_average()}\n")
    print_rows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "cpu_kernel": dk.info()["cpu_kernel"],
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
