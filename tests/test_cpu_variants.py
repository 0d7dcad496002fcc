"""Every compiled CPU kernel set (generic, AVX2, AVX-512) decodes to the same bits (plain and
sign outputs, the certified sign's refold included) and encodes
(``demo_step_`` and ``demo_step_coeffs_many_``) within SPEC 6, on the matrix-product chunk sides and on the fast-DCT ones (16, 32, 64), and on
1-D tensors long enough for the batched path (blocks of cn chunks of cn elements) plus a tail.

Dispatch picks the best set for the machine, so the others are forced per process with
``DISTRO_KERNELS_CPU_VARIANT`` and compared in subprocesses.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import HAS_CPU, randn
from test_demo_step import check_step

pytestmark = pytest.mark.skipif(not HAS_CPU, reason="needs the cpu backend")

SCRIPT = r"""
import hashlib, json, sys, torch, distro_kernels as dk
out = {"variant": dk.info()["cpu_kernel"], "decode": [], "encode": [], "dct_err": []}
for seed, shape, chunk in [(0, (96, 128), 64), (1, (3, 29, 48), 64), (2, (130,), 32), (3, (64, 64), 16),
                           (4, (128, 192), 64), (5, (2, 64, 96), 32), (6, (2 * 4096 + 3 * 64,), 64),
                           (7, (3 * 256 + 16,), 16), (8, (32 * 32 + 32,), 32)]:
    g = torch.Generator().manual_seed(seed)
    peers = [dk.compress(torch.randn(shape, generator=g), k=7, chunk=chunk, backend="reference") for _ in range(3)]
    idx, val = [p[0] for p in peers], [p[1] for p in peers]
    for codec, vals in [("f32", val), ("sign", [dk.pack_signs(v) for v in val])]:
        for sign in (False, True):
            y = dk.decompress(idx, vals, shape, chunk, value_codec=codec, sign=sign, backend="cpu")
            out["decode"].append(hashlib.sha256(y.numpy().tobytes()).hexdigest())
    x = torch.randn(shape, generator=g)
    want = dk.dct(x, chunk, backend="reference").double()  # float32 products: ~1e-7 of float64
    out["dct_err"].append(float((dk.dct(x, chunk, backend="cpu").double() - want).norm() / want.norm()))
    coeffs = dk.dct(torch.randn(shape, generator=g), chunk, backend="reference")
    out["decode"].append(hashlib.sha256(dk.idct(coeffs, shape, chunk, backend="cpu").numpy().tobytes()).hexdigest())
    delta, grad = torch.zeros(shape), torch.randn(shape, generator=g)
    i, v = dk.demo_step_(delta, grad, k=7, chunk=chunk, backend="cpu")
    out["encode"].append([i.tolist(), v.tolist(), delta.flatten().tolist()])
    state = dk.dct(torch.randn(shape, generator=g), chunk, backend="reference")
    (i,), (v,) = dk.demo_step_coeffs_many_([state], [grad], k=7, chunk=chunk, backend="cpu")
    out["encode"].append([i.tolist(), v.tolist(), state.flatten().tolist()])
# 8 peers x 32 picks of 64x64 chunks: nearly every row of T nonzero (the mirrored second stage)
g = torch.Generator().manual_seed(9)
peers = [dk.compress(torch.randn(128, 192, generator=g), k=32, chunk=64, backend="reference") for _ in range(8)]
for codec, vals, sign in [("f32", [p[1] for p in peers], False), ("sign", [dk.pack_signs(p[1]) for p in peers], True)]:
    y = dk.decompress([p[0] for p in peers], vals, (128, 192), 64, value_codec=codec, sign=sign, backend="cpu")
    out["decode"].append(hashlib.sha256(y.numpy().tobytes()).hexdigest())
# the certified sign's refold: one peer sends every coefficient of a signal that is half exact
# zeros, so those outputs sit at the decode's rounding noise (tests/test_decode_sign_certified.py)
for shape in [(128, 128), (96, 80)]:
    x = torch.randn(shape, generator=g).double()
    x[torch.rand(shape, generator=g) < 0.5] = 0.0
    coeffs = dk.dct(x.float(), 64, backend="reference")
    idx = torch.arange(coeffs.shape[1], dtype=torch.int32).expand(coeffs.shape[0], -1).contiguous()
    y = dk.decompress([idx], [coeffs], shape, 64, sign=True, backend="cpu")
    out["decode"].append(hashlib.sha256(y.numpy().tobytes()).hexdigest())
print(json.dumps(out))
"""


def run_variant(variant: str) -> dict:
    env = dict(os.environ, DISTRO_KERNELS_CPU_VARIANT=variant)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_kernel_sets_decode_identically_and_encode_within_spec():
    results = {v: run_variant(v) for v in ("generic", "avx2", "")}
    assert results["generic"]["variant"] == "generic"
    assert results["avx2"]["variant"] in ("avx2", "generic")  # generic where the CPU lacks AVX2
    best = results[""]
    for name, result in results.items():
        assert result["decode"] == best["decode"], f"{result['variant']} decode bits differ from {best['variant']}"
        assert max(result["dct_err"]) < 1e-5, (result["variant"], result["dct_err"])  # SPEC 6
        for (i_a, v_a, d_a), (i_b, v_b, d_b) in zip(result["encode"], best["encode"]):
            assert i_a == i_b  # random data: no near-ties at this size
            assert torch.allclose(torch.tensor(v_a), torch.tensor(v_b), rtol=1e-5, atol=1e-6)
            assert torch.allclose(torch.tensor(d_a), torch.tensor(d_b), rtol=1e-4, atol=1e-5)


# 1-D tensors of whole blocks (cn chunks of cn elements, the batched path) plus single chunks,
# against SPEC 3 in float64 (selection up to near-ties, values and error feedback within 1e-5);
# bf16 gradients take the one-chunk path.
@pytest.mark.parametrize("n, chunk", [(2 * 4096 + 3 * 64, 64), (3 * 256 + 16, 16), (32 * 32 + 32, 32), (4096, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_1d_step_within_spec(n, chunk, dtype):
    delta0, grad = randn((n,), n, scale=0.5), randn((n,), n + 1, dtype)
    check_step(delta0, grad, 0.9, 0.5, 7, chunk, "cpu")
