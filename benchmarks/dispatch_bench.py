"""Per-call overhead of the custom ops, and what the model-wide entry points save.

    python benchmarks/dispatch_bench.py

Times (median of many calls) a 1-element tensor through: the public function, the raw
``torch.ops.distro_kernels`` op, and the backend function called directly; then a model of
200 small tensors (mixed 64x64, 128x64 and 1-D 64) encoded and decoded per tensor versus with
``demo_step_many_`` / ``decompress_many``.
"""

from __future__ import annotations

import statistics
import time

import torch

import distro_kernels as dk
from distro_kernels import native_cpu
from distro_kernels.chunking import chunk_plan


def per_call_us(fn, calls: int = 2000) -> float:
    for _ in range(50):
        fn()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples) * 1e6


def model_ms(fn, repeats: int = 20) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main() -> None:
    x = torch.randn(1)
    plan = chunk_plan(x.shape)
    print(f"threads={torch.get_num_threads()}")
    print("per call, 1-element compress:")
    print(f"  public dk.compress                 {per_call_us(lambda: dk.compress(x, backend='cpu')):7.1f} us")
    raw = torch.ops.distro_kernels.compress
    print(f"  raw torch.ops.distro_kernels op    {per_call_us(lambda: raw(x, 32, 64, 'divisor')):7.1f} us")
    print(f"  backend function (no dispatch)     {per_call_us(lambda: native_cpu.compress(x, plan, 32)):7.1f} us")

    shapes = [(64, 64)] * 100 + [(128, 64)] * 50 + [(64,)] * 50
    grads = [torch.randn(s) for s in shapes]
    deltas = [torch.zeros(s) for s in shapes]

    def per_tensor_encode():
        return [dk.demo_step_(d, g, k=32, backend="cpu") for d, g in zip(deltas, grads)]

    def one_call_encode():
        return dk.demo_step_many_(deltas, grads, k=32, backend="cpu")

    sent = per_tensor_encode()
    indices = [[i] * 4 for i, _ in sent]
    values = [[v] * 4 for _, v in sent]

    def per_tensor_decode():
        return [dk.decompress(i, v, s, backend="cpu") for i, v, s in zip(indices, values, shapes)]

    def one_call_decode():
        return dk.decompress_many(indices, values, shapes, backend="cpu")

    print(f"model of {len(shapes)} small tensors ({sum(torch.Size(s).numel() for s in shapes)} params), 4 peers:")
    print(f"  encode: per tensor {model_ms(per_tensor_encode):7.2f} ms   demo_step_many_ {model_ms(one_call_encode):7.2f} ms")
    print(f"  decode: per tensor {model_ms(per_tensor_decode):7.2f} ms   decompress_many {model_ms(one_call_decode):7.2f} ms")


if __name__ == "__main__":
    main()
