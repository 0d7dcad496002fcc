"""Compile gate: every Triton kernel must build for NVIDIA (sm_90, sm_80) and AMD (gfx942)
without a GPU, without register spills to memory, and the decode kernels without any
fused multiply-add (the interpreter cannot show that; the generated code can).

``gate.run`` compiles in fresh worker processes with a cleaned environment and a private,
empty Triton cache, so these tests do not depend on this process's mode (interpreter or
not) nor on anything an earlier test or run left behind. A failure names every failing
kernel, target and the compiler's message.
"""

from __future__ import annotations

import textwrap

import pytest

pytest.importorskip("triton")

from distro_kernels.triton import gate  # noqa: E402

DECODE_KERNELS = {
    "inverse_2d decode f32 mean+sign", "inverse_2d decode sign-codec sum", "inverse_2d idct",
    "inverse_rows decode f32 mean", "inverse_rows decode sign-codec+sign", "inverse_rows idct",
}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return gate.run()


def test_every_kernel_compiles_for_nvidia_and_amd(rows):
    print("\n" + gate.table(rows))
    assert {v.kernel for v in gate.variants()} == {
        "encode_2d_kernel", "encode_rows_kernel", "inverse_2d_kernel", "inverse_rows_kernel",
        "pack_signs_kernel", "unpack_signs_kernel"}
    problems = gate.compile_failures(rows, gate.expected_jobs())
    assert not problems, gate.report(problems, rows)


def test_no_register_spills_to_memory(rows):
    problems = gate.spill_failures(rows)
    assert not problems, gate.report(problems, rows)


def test_decode_kernels_have_no_fused_multiply_add(rows):
    exact = [r for r in rows if "fma_free" in r]
    assert {r["kernel"] for r in exact} >= DECODE_KERNELS, gate.report(
        gate.compile_failures(rows, gate.expected_jobs()), rows)
    problems = gate.fma_failures(rows)
    assert not problems, gate.report(problems, rows)
    for r in exact:
        if r["target"].startswith("sm_"):
            assert "PTX: 0 fma" in r["fma_detail"], r


# ----------------------------------------------------------------------------- failure reports


def test_report_names_every_failing_kernel_target_and_error():
    rows = [
        {"kernel": "k ok", "target": "sm_90", "warps": 4, "regs": 40, "spill_bytes": 0,
         "stack": 0, "smem": 0, "compile_s": 1.0, "fma_free": True, "fma_detail": "fine"},
        {"kernel": "k broken", "target": "gfx942", "warps": 4, "compile_s": 0.5,
         "error": "CompilationError: at 3:4:\nNameError('nope is not defined')"},
        {"kernel": "k spills", "target": "sm_80", "warps": 8, "regs": 255, "spill_bytes": 96,
         "stack": 96, "smem": 0, "compile_s": 2.0},
        {"kernel": "k fma", "target": "sm_90", "warps": 4, "regs": 30, "spill_bytes": 0,
         "stack": 0, "smem": 0, "compile_s": 1.0, "fma_free": False, "fma_detail": "PTX has fma"},
    ]
    expected = {("k ok", "sm_90"), ("k broken", "gfx942"), ("k spills", "sm_80"),
                ("k fma", "sm_90"), ("k missing", "sm_90")}
    problems = gate.failures(rows, expected)
    assert problems == [
        "k broken @ gfx942: CompilationError: at 3:4:\nNameError('nope is not defined')",
        "k missing @ sm_90: no row (not compiled)",
        "k spills @ sm_80: spill_bytes=96 stack=96 vgpr_spills=None",
        "k fma @ sm_90: PTX has fma",
    ]
    text = gate.report(problems, rows)
    assert text.startswith("4 compile-gate problem(s):\n- k broken @ gfx942: CompilationError")
    assert "NameError('nope is not defined')" in text and "| k broken | gfx942 |" in text
    assert gate.failures(rows[:1], {("k ok", "sm_90")}) == []


def _kernel_file(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def _variant(name, path, kernel="k"):
    return gate.Variant(name, "test", kernel, {"x_ptr": "*fp32", "n": "i32"}, {"BLOCK": 64}, 4,
                        True, path=path)


def test_a_broken_kernel_is_reported_with_target_and_compiler_error(tmp_path):
    broken = _kernel_file(tmp_path, "broken", """\
        import triton
        import triton.language as tl


        @triton.jit
        def k(x_ptr, n, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(x_ptr + offs, undefined_helper(offs), mask=offs < n)
        """)
    good = _kernel_file(tmp_path, "good", """\
        import triton
        import triton.language as tl


        @triton.jit
        def k(x_ptr, n, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(x_ptr + offs, offs.to(tl.float32) * 0.5, mask=offs < n)
        """)
    rows = gate.run(["sm_90", "gfx942"], workers=1,
                    variants_=[_variant("deliberately broken", broken), _variant("fine", good)])
    assert [(r["kernel"], r["target"]) for r in rows] == [
        ("deliberately broken", "sm_90"), ("deliberately broken", "gfx942"),
        ("fine", "sm_90"), ("fine", "gfx942")]
    problems = gate.failures(rows)
    assert len(problems) == 2, gate.report(problems, rows)
    for problem, target in zip(problems, ["sm_90", "gfx942"]):
        assert problem.startswith(f"deliberately broken @ {target}: CompilationError"), problem
        assert "undefined_helper" in problem, problem  # the compiler's own message
    assert all("error" not in r and r["fma_free"] for r in rows[2:]), rows[2:]


def test_a_crashed_or_hung_worker_is_reported_per_job(tmp_path):
    crash = _kernel_file(tmp_path, "crash", """\
        import os, sys
        print("about to crash", flush=True)
        os.abort()
        """)
    hang = _kernel_file(tmp_path, "hang", """\
        import time
        time.sleep(600)
        """)
    variants = [_variant("crashes", crash), _variant("hangs", hang), _variant("after", crash)]
    # Two workers: job 0 and 2 go to the first (crashes in job 0), job 1 to the second.
    rows = gate.run(["sm_80"], workers=2, variants_=variants, job_timeout_s=5)
    by_name = {r["kernel"]: r for r in rows}
    assert "signal 6 while compiling this job" in by_name["crashes"]["error"]
    assert "about to crash" in by_name["crashes"]["error"]  # the worker's own output
    assert "job timeout" in by_name["hangs"]["error"]
    assert "while compiling this job" in by_name["hangs"]["error"]
    assert "not compiled" in by_name["after"]["error"]
    assert "while compiling crashes @ sm_80" in by_name["after"]["error"]
    assert [p.split(":")[0] for p in gate.failures(rows)] == [
        "crashes @ sm_80", "hangs @ sm_80", "after @ sm_80"]


def test_workers_get_a_clean_environment_and_a_private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("TRITON_PTXAS_PATH", "/nonexistent/ptxas")
    monkeypatch.setenv("MLIR_ENABLE_DUMP", "1")
    env = gate.clean_env(str(tmp_path / "private"))
    assert env["TRITON_CACHE_DIR"] == str(tmp_path / "private" / "cache")
    assert env["TRITON_HOME"] == str(tmp_path / "private")
    assert env["TRITON_ALWAYS_COMPILE"] == "1"
    assert not {"TRITON_INTERPRET", "TRITON_PTXAS_PATH", "MLIR_ENABLE_DUMP"} & set(env)
