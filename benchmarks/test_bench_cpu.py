"""pytest-benchmark view of the CPU kernels (``pytest benchmarks/``; not part of CI).

Each case times ``cpu``, the eager DeMo-style pipeline (``distro_kernels/baseline.py``) and the
exact ``reference`` on the same inputs in the same session; the terminal summary prints the
ratios to ``cpu``. Shapes are the issue's 4096x4096 plus a 1-D tensor; the interleaved
side-by-side table (medians and ranges over rounds) comes from ``python benchmarks/cpu_bench.py``.
"""

import pytest
import torch

import distro_kernels as dk
from distro_kernels import baseline

SHAPES = [(4096, 4096), (4 * 1024 * 1024,)]
SIDES = ["cpu", "eager DeMo", "reference"]
_medians: dict = {}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_demo_step(benchmark, shape, side):
    grad, delta = torch.randn(shape), torch.randn(shape) * 0.01
    if side == "eager DeMo":
        fn = lambda: baseline.encode_step(delta, grad, 0.999, 1.0, 32)  # noqa: E731
    else:
        fn = lambda: dk.demo_step_(delta, grad, k=32, backend=side)  # noqa: E731
    benchmark.pedantic(fn, rounds=5 if side == "cpu" else 2, warmup_rounds=1)
    _medians[("demo_step_", shape, side)] = benchmark.stats.stats.median


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_decompress_8_peers_sign(benchmark, shape, side):
    xs = [torch.randn(shape) for _ in range(8)]
    if side == "eager DeMo":
        peers = [baseline.compress(x, 32) for x in xs]
        fn = lambda: baseline.decode_peers([i for i, _ in peers], [v for _, v in peers], shape)  # noqa: E731
    else:
        peers = [dk.compress(x, k=32) for x in xs]
        fn = lambda: dk.decompress([i for i, _ in peers], [v for _, v in peers], shape, sign=True,  # noqa: E731
                                   backend=side)
    benchmark.pedantic(fn, rounds=5 if side == "cpu" else 1, warmup_rounds=1 if side == "cpu" else 0)
    _medians[("decompress P=8 + sign", shape, side)] = benchmark.stats.stats.median


def speedups() -> list[str]:
    lines = []
    for (op, shape, side), seconds in sorted(_medians.items(), key=str):
        if side != "cpu":
            continue
        ratios = [f"{_medians[(op, shape, other)] / seconds:6.1f}x vs {other}"
                  for other in SIDES[1:] if (op, shape, other) in _medians]
        lines.append(f"{op:<22}{'x'.join(map(str, shape)):<12} cpu {seconds * 1e3:8.1f} ms  " + "  ".join(ratios))
    return lines
