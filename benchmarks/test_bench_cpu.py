"""pytest-benchmark view of the CPU kernels (``pytest benchmarks/``; not part of CI).

Each case times ``cpu`` and ``reference`` on the same inputs in the same session; the
terminal summary prints the ratio. Shapes are the issue's 4096x4096 plus a 1-D tensor; the
full table over all shapes comes from ``python benchmarks/cpu_bench.py``.
"""

import pytest
import torch

import distro_kernels as dk

SHAPES = [(4096, 4096), (4 * 1024 * 1024,)]
_medians: dict = {}


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_demo_step(benchmark, shape, backend):
    grad, delta = torch.randn(shape), torch.randn(shape) * 0.01
    rounds = 5 if backend == "cpu" else 2
    benchmark.pedantic(lambda: dk.demo_step_(delta, grad, k=32, backend=backend), rounds=rounds, warmup_rounds=1)
    _medians[("demo_step_", shape, backend)] = benchmark.stats.stats.median


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_decompress_8_peers(benchmark, shape, backend):
    peers = [dk.compress(torch.randn(shape), k=32) for _ in range(8)]
    indices, values = [i for i, _ in peers], [v for _, v in peers]
    rounds = 5 if backend == "cpu" else 1
    benchmark.pedantic(lambda: dk.decompress(indices, values, shape, backend=backend), rounds=rounds, warmup_rounds=0)
    _medians[("decompress P=8", shape, backend)] = benchmark.stats.stats.median




def speedups() -> list[str]:
    lines = []
    for (op, shape, backend), seconds in sorted(_medians.items(), key=str):
        if backend == "cpu" and (op, shape, "reference") in _medians:
            ratio = _medians[(op, shape, "reference")] / seconds
            lines.append(f"{op:<16}{'x'.join(map(str, shape)):<12} cpu {seconds * 1e3:8.1f} ms  {ratio:6.1f}x vs reference")
    return lines
