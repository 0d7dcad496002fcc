"""Compile gate of the CUDA/HIP kernels (``distro_kernels.cuda.gate``): every kernel builds for
every NVIDIA target (sm_80 ... sm_120) and for gfx90a, without spills in the hot kernels, and
the decode kernels contain no fused multiply-add at all (SASS, PTX and AMD ISA).

CI has nvcc (and cuobjdump from pip): a missing tool fails there. hipcc comes from apt
(``apt-get install -y hipcc libamdhip64-dev rocm-device-libs``); only where that install is
impossible may a CI run set ``DK_GATE_NO_HIP=1``, which skips the AMD half with that reason.
"""

from __future__ import annotations

import os
import shutil

import pytest

from distro_kernels.cuda import gate

CI = os.environ.get("CI") == "true"
NO_HIP_REASON = ("hipcc not on PATH (apt-get install -y hipcc libamdhip64-dev rocm-device-libs; "
                 "DK_GATE_NO_HIP=1 declares that install impossible here)")


def _require(tool: str, install: str):
    if gate.find_tool(tool) is None:
        message = f"{tool} not found ({install})"
        if CI:
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    _require("nvcc", "the CUDA 13 toolkit")
    _require("cuobjdump", "pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")
    targets = list(gate.NVIDIA_TARGETS)
    if shutil.which("hipcc"):
        targets += list(gate.AMD_TARGETS)
    elif CI and not os.environ.get("DK_GATE_NO_HIP"):
        pytest.fail("CI=true: " + NO_HIP_REASON)
    result = gate.run(targets)
    print("\n" + gate.table(result))
    return result


def test_every_kernel_builds_for_every_nvidia_target(rows):
    built = {(r["kernel"], r["target"]) for r in rows if "error" not in r}
    expected = {(k, t) for k in gate.KERNELS for t in gate.NVIDIA_TARGETS}
    errors = [f"{r['kernel']} @ {r['target']}: {r['error']}" for r in rows if "error" in r]
    assert expected <= built, "\n".join(errors)


def test_every_kernel_builds_for_amd(rows):
    amd = [r for r in rows if r["target"] in gate.AMD_TARGETS]
    if not amd:
        pytest.skip(NO_HIP_REASON)
    assert {(r["kernel"], r["target"]) for r in amd if "error" not in r} == {
        (k, t) for k in gate.KERNELS for t in gate.AMD_TARGETS}, [r.get("error") for r in amd]


def test_hot_kernels_do_not_spill(rows):
    hot = [r for r in rows if r["kernel"] in gate.HOT and "error" not in r]
    assert {r["kernel"] for r in hot} == set(gate.HOT)
    spilled = [r for r in hot if r.get("spill_stores") or r.get("stack") or r.get("local")]
    assert not spilled, gate.table(spilled)
    for r in hot:  # resources were actually read (a parse failure must not pass as "0 spills")
        assert r["regs"] and r["smem"] and r["smem"] <= 48 * 1024, r


def test_decode_kernels_have_no_fma(rows):
    exact = [r for r in rows if r["kernel"] in gate.EXACT and "error" not in r]
    assert {r["kernel"] for r in exact} == set(gate.EXACT)
    bad = [f"{r['kernel']} @ {r['target']}: {r['detail']}" for r in exact if not r["fma_free"]]
    assert not bad, "\n".join(bad)
    for r in exact:
        assert r["fma_ops"] == 0 and r["ffma"] == 0
        if r["target"].startswith("sm_") and r["kernel"] in ("dk_decompress", "dk_idct"):
            assert r["fmul"] > 0 and r["fadd"] > 0 and r["mufu"] == 0
        if r["target"] in gate.AMD_TARGETS:
            assert r["div_ops"] == 0


def test_encode_uses_fma(rows):
    encode = [r for r in rows if r["kernel"] == "dk_encode" and "error" not in r]
    assert encode and all(r["ffma"] > 0 for r in encode)


def test_gate_passes_as_a_whole(rows):
    assert not [r for r in rows if r["problems"]], gate.table([r for r in rows if r["problems"]])


def test_census_sees_an_fma_and_ignores_the_constant_move():
    """The SASS census on hand-written lines: a real FFMA counts, the HFMA2.MMA constant move
    does not, and an HFMA2 with register operands does."""
    sass = """
        Function : dk_decompress
        /*0010*/  HFMA2.MMA R2, -RZ, RZ, 0, 0 ;
        /*0020*/  FMUL R3, R4, R5 ;
        Function : dk_idct
        /*0010*/  FFMA R3, R4, R5, R6 ;
        /*0020*/  HFMA2 R7, R8, R9, R10 ;
    """
    census = gate.sass_census(sass)
    assert census["dk_decompress"]["fma_ops"] == 0 and census["dk_decompress"]["fmul"] == 1
    assert census["dk_idct"]["fma_ops"] == 2 and census["dk_idct"]["ffma"] == 1
    assert gate.ptx_exact_problems(".entry dk_idct(\n{\n mul.f32 %f1, %f2, %f3;\n}\n", "dk_idct")
    assert not gate.ptx_exact_problems(".entry dk_idct(\n{\n mul.rn.f32 %f1, %f2, %f3;\n}\n", "dk_idct")
    asm = "dk_idct:\n v_fmac_f32_e32 v1, v2, v3\n v_mad_u64_u32 v[1:2], s[0:1], v3, v4, 0\n.Lfunc_end0:\n"
    meta = "amdhsa.kernels:\n  - .name: dk_idct\n    .vgpr_count: 4\n...\n"
    assert gate.amd_census(asm + meta)["dk_idct"]["fma_ops"] == 1
