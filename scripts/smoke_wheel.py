"""Smoke test of an installed distro_kernels wheel (cibuildwheel's test-command and
tests/test_wheel.py run it in a fresh environment, from a folder outside the checkout).

Checks that the compiled CPU backend loads from the installed package, that its ops agree with
the pure-torch ``reference`` backend (decode bit for bit, SPEC 4), that both thread paths of
the kernels run (one thread and torch's count), and that a tiny demo trains. Prints one JSON
line with what it saw; exits non-zero on any failure.

    python scripts/smoke_wheel.py [--no-demo]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

import distro_kernels as dk


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"smoke test failed: {what}")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def check_ops(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    # Odd shapes: prime dims (chunking falls back to divisors), a 1-D tensor, and one big enough
    # that the kernels split it across threads (> 64k elements).
    for shape in [(97, 61), (130,), (3, 29, 64), (512, 384)]:
        x = torch.randn(shape, generator=g)
        ref, cpu = dk.dct(x, 64, backend="reference"), dk.dct(x, 64, backend="cpu")
        check(torch.allclose(cpu, ref, rtol=1e-4, atol=1e-5), f"dct cpu vs reference, shape {shape}")
        k = 8
        idx_c, val_c = dk.compress(x, k, 64, backend="cpu")
        idx_r, val_r = dk.compress(x, k, 64, backend="reference")
        check(idx_c.dtype == torch.int32 and idx_c.shape == idx_r.shape, f"compress shapes {shape}")
        # The backends' float32 DCTs differ in rounding, so a near-tie may pick differently;
        # nearly every pick and the values at the common picks must agree.
        same = idx_c == idx_r
        check(same.float().mean().item() > 0.99, f"compress picks differ, shape {shape}")
        check(torch.allclose(val_c[same], val_r[same], rtol=1e-4, atol=1e-5), f"compress values, shape {shape}")
        peers = [dk.compress(torch.randn(shape, generator=g), k, 64, backend="cpu") for _ in range(3)]
        idx, val = [p[0] for p in peers], [p[1] for p in peers]
        for sign in (False, True):
            a = dk.decompress(idx, val, shape, 64, sign=sign, backend="cpu")
            b = dk.decompress(idx, val, shape, 64, sign=sign, backend="reference")
            check(same_bits(a, b), f"decompress cpu vs reference not bit-identical, shape {shape}, sign {sign}")
        back = dk.idct(dk.dct(x, 64, backend="cpu"), shape, 64, backend="cpu")
        check(torch.allclose(back, x, rtol=1e-4, atol=1e-4), f"idct(dct(x)) != x, shape {shape}")
    v = torch.randn(1_000_003, generator=g)
    packed = dk.pack_signs(v, backend="cpu")
    check(torch.equal(packed, dk.pack_signs(v, backend="reference")), "pack_signs cpu vs reference")
    check(torch.equal(dk.unpack_signs(packed, v.numel(), backend="cpu"),
                      torch.where(torch.signbit(v), -1.0, 1.0)), "unpack_signs")
    delta, grad = torch.zeros(512, 384), torch.randn(512, 384, generator=g)
    d_ref = delta.clone()
    i1, v1 = dk.demo_step_(delta, grad, 0.9, 1.0, 16, 64, backend="cpu")
    i2, v2 = dk.demo_step_(d_ref, grad, 0.9, 1.0, 16, 64, backend="reference")
    check(i1.shape == i2.shape and torch.allclose(delta, d_ref, rtol=1e-4, atol=1e-4), "demo_step_ cpu vs reference")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-demo", action="store_true", help="skip the tiny 2-peer demo run")
    args = ap.parse_args()
    info = dk.info()
    check(info["devices"]["cpu"]["default"] == "native",
          f"native CPU kernels not the CPU default: {info['devices']['cpu']}")
    from distro_kernels._ext import cpu_ext

    package_dir = os.path.dirname(os.path.abspath(dk.__file__))
    check(os.path.dirname(os.path.abspath(cpu_ext.__file__)) == package_dir,
          f"extension {cpu_ext.__file__} is not in the package {package_dir}")
    threads = torch.get_num_threads()
    for n in sorted({1, threads}):  # the serial path and torch's thread count
        torch.set_num_threads(n)
        check_ops(seed=n)
    torch.set_num_threads(threads)
    gpu_objects = sorted(f for f in os.listdir(os.path.join(package_dir, "cuda"))
                         if f.endswith((".fatbin", ".co", ".hsaco"))) if os.path.isdir(os.path.join(package_dir, "cuda")) else []
    demo = None
    if not args.no_demo:
        cmd = [sys.executable, "-m", "distro_kernels", "demo", "--peers", "2", "--steps", "2",
               "--only", "demo", "--layers", "1", "--d-model", "32", "--heads", "2", "--context", "16",
               "--batch", "2", "--eval-batches", "1", "--eval-every", "0", "--no-progress", "--backend", "native"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        check(run.returncode == 0, f"demo failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
        check("final held-out loss" in run.stdout, f"demo printed no results:\n{run.stdout}")
        demo = " ".join(cmd[1:])
    print(json.dumps({"ok": True, "package": package_dir, "extension": os.path.basename(cpu_ext.__file__),
                      "backends": info["backends"], "cpu_default": info["devices"]["cpu"]["default"],
                      "cpu_kernel": info["cpu_kernel"], "threads": threads,
                      "gpu_objects": gpu_objects, "demo": demo}))


if __name__ == "__main__":
    main()
