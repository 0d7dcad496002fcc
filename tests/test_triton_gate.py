"""Compile gate: every Triton kernel must build for NVIDIA (sm_90, sm_80) and AMD (gfx942)
without a GPU, without register spills to memory, and the decode kernels without any
fused multiply-add (the interpreter cannot show that; the generated code can).

Compiling needs Triton imported without ``TRITON_INTERPRET``; a process started with it
(CI's interpreter run) runs the gate in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from distro_kernels.triton._loader import interpreted  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    if not interpreted():
        from distro_kernels.triton import gate

        return gate.run()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "distro_kernels.triton.gate", "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode in (0, 1), result.stderr[-4000:]
    return json.loads(result.stdout)


def _table(rows):
    from distro_kernels.triton.gate import table

    return table(rows)


def test_every_kernel_compiles_for_nvidia_and_amd(rows):
    from distro_kernels.triton.gate import TARGETS, variants

    print("\n" + _table(rows))
    seen = {(r["kernel"], r["target"]) for r in rows}
    expected = {(v.name, t) for v in variants() for t in TARGETS}
    assert seen == expected
    kernels = {v.kernel for v in variants()}
    assert kernels == {"encode_2d_kernel", "encode_rows_kernel", "inverse_2d_kernel",
                       "inverse_rows_kernel", "pack_signs_kernel", "unpack_signs_kernel"}
    failed = [r for r in rows if "error" in r]
    assert not failed, "\n".join(f"{r['kernel']} @ {r['target']}: {r['error']}" for r in failed)


def test_no_register_spills_to_memory(rows):
    spilled = [r for r in rows if "error" not in r and (r.get("spill_bytes") or r.get("stack"))]
    assert not spilled, _table(spilled)


def test_decode_kernels_have_no_fused_multiply_add(rows):
    exact = [r for r in rows if "fma_free" in r]
    assert {r["kernel"] for r in exact} >= {
        "inverse_2d decode f32 mean+sign", "inverse_2d decode sign-codec sum", "inverse_2d idct",
        "inverse_rows decode f32 mean", "inverse_rows decode sign-codec+sign", "inverse_rows idct",
    }
    bad = [f"{r['kernel']} @ {r['target']}: {r['fma_detail']}" for r in exact if not r["fma_free"]]
    assert not bad, "\n".join(bad)
    for r in exact:
        if r["target"].startswith("sm_"):
            assert "PTX: 0 fma" in r["fma_detail"]
