"""Compile gate: builds every Triton kernel for NVIDIA and AMD targets without a GPU.

``python -m distro_kernels.triton.gate [--json] [--targets sm_90,sm_80,gfx942]`` compiles
each kernel variant the backend launches (largest tiles: 64x64 chunks, k = 32) with
``triton.compile(ASTSource(...), target=GPUTarget(...))``, reports registers, spills and
shared memory, and proves the decode kernels contraction-free:

- NVIDIA: the PTX has no ``fma`` and every f32 ``mul``/``add``/``sub`` carries ``.rn``
  (PTX never contracts an instruction with an explicit rounding mode), division is
  ``div.rn.f32``, and no ``.ftz``; ptxas also gets ``--fmad=false`` (Triton passes it when
  ``enable_fp_fusion=False``). The FFMAs that ptxas emits inside ``div.rn.f32``'s
  correctly rounded expansion are counted and reported (SASS), not contractions.
- AMD: the LLVM IR has no ``contract``/``fast`` flag and no ``llvm.fma``/``llvm.fmuladd``;
  in the ISA every ``v_fma*``/``v_fmac*`` is accounted for by the correctly rounded ``fdiv``
  expansion (5 per ``v_div_fixup_f32``) or by 64-bit integer division (constants
  ``0x4f800000``/``0xcf800000``); no ``v_mad``/``v_mac``/``v_pk_fma``.

Every compile runs in fresh worker processes (``--workers``, default 2) with a cleaned
environment (no ``TRITON_*``/``MLIR_*``/``LLVM_*`` variables, so no interpreter flag, no
user ptxas, no dumps) and a private, empty Triton cache and home made for this run and
removed after it (``TRITON_ALWAYS_COMPILE=1`` too): a run never reads a cache or any state
that an earlier run or test left behind, and any process can call :func:`run`, one with
``TRITON_INTERPRET=1`` included. A job that fails, crashes its worker or passes
``--job-timeout`` becomes a row with ``error`` (the compiler's message); :func:`failures`
lists every failing kernel and target, and the exit status is 1 when there is any.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TARGETS = {"sm_90": ("cuda", 90, 32), "sm_80": ("cuda", 80, 32), "gfx942": ("hip", "gfx942", 64)}

_ENC_SIG = dict(
    x_ptr="*fp32", g_ptr="*fp32", cm_ptr="*fp32", cn_ptr="*fp32", scratch_ptr="*fp32",
    coef_ptr="*fp32", idx_ptr="*i32", val_ptr="*fp32", n_chunks="i32", m="i32", n="i32",
    chunks_m="i32", chunks_n="i32",
    cm="i32", cn="i32", k="i32", beta="fp32", lr="fp32",
)
_ENC_ROWS_SIG = dict(
    x_ptr="*fp32", g_ptr="*fp32", cn_ptr="*fp32", coef_ptr="*fp32", idx_ptr="*i32",
    val_ptr="*fp32", n_chunks="i32", n="i32", chunks_n="i32", cn="i32", k="i32",
    beta="fp32", lr="fp32",
)
_INV_SIG = dict(
    src_ptr="*i32", val_ptr="*fp32", out_ptr="*fp32", scratch_ptr="*fp32", cm_ptr="*fp32",
    cn_ptr="*fp32", n_chunks="i32", P="i32", K="i32", chunks_m="i32", chunks_n="i32",
    cm="i32", cn="i32", p_float="fp32", nbytes="i32",
)
_INV_ROWS_SIG = dict(
    src_ptr="*i32", val_ptr="*fp32", out_ptr="*fp32", scratch_ptr="*fp32", cn_ptr="*fp32",
    n_chunks="i32", P="i32", K="i32", cn="i32", p_float="fp32", nbytes="i32",
)


@dataclass
class Variant:
    name: str
    module: str
    kernel: str
    signature: dict
    constexprs: dict
    num_warps: int | dict  # or {"cuda": n, "hip": n}
    exact: bool  # decode-side: must be contraction-free (compiled with fp fusion off)
    types: dict = field(default_factory=dict)  # signature overrides
    path: str | None = None  # a kernel file of its own (tests' broken kernels), else the backend's

    def full_signature(self) -> dict:
        sig = {**self.signature, **self.types}
        sig.update({name: "constexpr" for name in self.constexprs})
        return sig


def variants() -> list[Variant]:
    """Every kernel and every code path the backend launches, at the largest tiles."""
    from .impl import (
        DOT_PRECISION, ENCODE_KB, ENCODE_WARPS_LARGE, ENCODE_WARPS_ROWS, WARPS_LARGE, WARPS_SMALL,
        _rows_per_program,
    )

    rows = _rows_per_program(64)
    enc = dict(BM=64, BN=64, PREC=DOT_PRECISION, KB=ENCODE_KB)
    enc_rows = dict(R=rows, BN=64, PREC=DOT_PRECISION, KB=ENCODE_KB)
    inv = dict(BM=64, BN=64, BK=32)
    inv_rows = dict(R=rows, BN=64, BK=32)
    f32vals, signvals, dense = {}, {"val_ptr": "*u8"}, {"src_ptr": "*fp32", "val_ptr": "*fp32"}
    return [
        Variant("encode_2d dct", "encode", "encode_2d_kernel", _ENC_SIG,
                {**enc, "MODE": 0, "SPARSE_BACK": False}, ENCODE_WARPS_LARGE, False),
        Variant("encode_2d compress", "encode", "encode_2d_kernel", _ENC_SIG,
                {**enc, "MODE": 1, "SPARSE_BACK": False}, ENCODE_WARPS_LARGE, False),
        Variant("encode_2d demo_step k<128 (rank-1 writeback)", "encode", "encode_2d_kernel",
                _ENC_SIG, {**enc, "MODE": 2, "SPARSE_BACK": True}, ENCODE_WARPS_LARGE, False),
        Variant("encode_2d demo_step bf16 grad, dense writeback", "encode", "encode_2d_kernel",
                _ENC_SIG, {**enc, "MODE": 2, "SPARSE_BACK": False}, ENCODE_WARPS_LARGE, False,
                {"g_ptr": "*bf16"}),
        Variant("encode_rows dct", "encode", "encode_rows_kernel", _ENC_ROWS_SIG,
                {**enc_rows, "MODE": 0, "SPARSE_BACK": False}, ENCODE_WARPS_ROWS, False),
        Variant("encode_rows demo_step k<64 (rank-1 writeback)", "encode", "encode_rows_kernel",
                _ENC_ROWS_SIG, {**enc_rows, "MODE": 2, "SPARSE_BACK": True}, ENCODE_WARPS_ROWS,
                False),
        Variant("encode_rows demo_step dense writeback", "encode", "encode_rows_kernel",
                _ENC_ROWS_SIG, {**enc_rows, "MODE": 2, "SPARSE_BACK": False}, ENCODE_WARPS_ROWS,
                False),
        Variant("inverse_2d decode f32 mean+sign", "inverse", "inverse_2d_kernel", _INV_SIG,
                {**inv, "SOURCE": 1, "MEAN": True, "SIGN_OUT": True}, WARPS_LARGE, True, f32vals),
        Variant("inverse_2d decode sign-codec sum", "inverse", "inverse_2d_kernel", _INV_SIG,
                {**inv, "SOURCE": 2, "MEAN": False, "SIGN_OUT": False}, WARPS_LARGE, True,
                signvals),
        Variant("inverse_2d idct", "inverse", "inverse_2d_kernel", _INV_SIG,
                {**inv, "SOURCE": 0, "MEAN": True, "SIGN_OUT": False}, WARPS_LARGE, True, dense),
        Variant("inverse_rows decode f32 mean", "inverse", "inverse_rows_kernel", _INV_ROWS_SIG,
                {**inv_rows, "SOURCE": 1, "MEAN": True, "SIGN_OUT": False}, WARPS_SMALL, True),
        Variant("inverse_rows decode sign-codec+sign", "inverse", "inverse_rows_kernel",
                _INV_ROWS_SIG, {**inv_rows, "SOURCE": 2, "MEAN": True, "SIGN_OUT": True},
                WARPS_SMALL, True, signvals),
        Variant("inverse_rows idct", "inverse", "inverse_rows_kernel", _INV_ROWS_SIG,
                {**inv_rows, "SOURCE": 0, "MEAN": True, "SIGN_OUT": False}, WARPS_SMALL, True,
                dense),
        Variant("pack_signs", "signs", "pack_signs_kernel",
                dict(v_ptr="*fp32", out_ptr="*u8", N="i32", nbytes="i32"), {"BLOCK": 256},
                WARPS_SMALL, True),
        Variant("unpack_signs", "signs", "unpack_signs_kernel",
                dict(p_ptr="*u8", out_ptr="*fp32", n="i32"), {"BLOCK": 2048}, WARPS_SMALL, True),
    ]


TOOL_TIMEOUT_S = 300


def _tool(cmd: list[str]) -> subprocess.CompletedProcess:
    """Runs a bundled NVIDIA tool; a failure raises with the tool's own stderr in the message."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{os.path.basename(cmd[0])} exited with {done.returncode}: "
                           f"{(done.stderr or done.stdout)[-2000:]}")
    return done


def _nvidia_tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _nvidia_report(compiled, exact: bool) -> dict:
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = _tool([_nvidia_tool("cuobjdump"), "--dump-resource-usage", path]).stdout
        sass = _tool([_nvidia_tool("nvdisasm"), path]).stdout

    def field_(key):
        found = re.search(rf"\b{key}:(\d+)", usage)
        return int(found.group(1)) if found else None

    stack = field_("STACK")
    spill = field_("LOCAL") or 0
    if stack:  # a stack frame holds spills, or just call frames: ask ptxas which
        spill += _ptxas_spill_bytes(ptx, compiled.metadata)
    row = {
        "regs": field_("REG"),
        "spill_bytes": spill,  # register spill stores per thread (ptxas -v)
        "stack": stack,
        "smem": compiled.metadata.shared,
        "sass_ffma": len(re.findall(r"\bFFMA\b", sass)),
        "sass_fmul": len(re.findall(r"\bFMUL\b", sass)),
        "sass_fadd": len(re.findall(r"\bFADD\b", sass)),
    }
    if exact:
        problems = []
        if re.search(r"\bfma\.", ptx):
            problems.append("PTX has fma")
        bare = re.findall(r"\b(?:mul|add|sub)\.f32\b", ptx)
        if bare:
            problems.append(f"{len(bare)} f32 mul/add/sub without .rn (contractible)")
        if re.search(r"\bdiv\.(?:full|approx)\.f32", ptx):
            problems.append("approximate division")
        if ".ftz" in ptx:
            problems.append("flush-to-zero")
        row["fma_free"] = not problems
        row["fma_detail"] = "; ".join(problems) or (
            f"PTX: 0 fma, all f32 mul/add .rn, div.rn x{len(re.findall(r'div.rn.f32', ptx))}"
            f"; SASS FFMA {row['sass_ffma']} only in div.rn expansion")
    return row


# Floating-point fused multiply-add opcodes (v_mad_u64_u32 and friends are integer, not FP).
def _ptxas(arch: int) -> str:
    """The ptxas Triton itself uses for this arch (it picks between its bundled ones)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(arch).path
    except Exception:
        return _nvidia_tool("ptxas")


def _ptxas_spill_bytes(ptx: str, metadata) -> int:
    """``N bytes spill stores`` from ``ptxas -v`` on the kernel's PTX (same flags as Triton)."""
    arch = f"sm_{metadata.target.arch}" + ("a" if metadata.target.arch >= 90 else "")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        flags = [] if metadata.enable_fp_fusion else ["--fmad=false"]
        log = _tool([_ptxas(metadata.target.arch), "-v", *flags, "--regAllocOptLevel=2",
                     f"--gpu-name={arch}", src, "-o", os.path.join(tmp, "k.cubin")])
    found = re.search(r"(\d+) bytes spill stores", log.stdout + log.stderr)
    return int(found.group(1)) if found else 0


_AMD_FMA = re.compile(
    r"^\s*(v_(?:pk_)?(?:fma|fmac|mad|mac)(?:_legacy)?_f(?:16|32|64)\w*|v_(?:fma|mad)_mix\w*)\s+(.*)$",
    re.M,
)


def _amd_report(compiled, exact: bool) -> dict:
    amd = compiled.asm["amdgcn"]

    def meta(key):
        found = re.search(rf"{re.escape(key)}:\s+(\d+)", amd)
        return int(found.group(1)) if found else None

    scratch = meta(".private_segment_fixed_size")
    row = {
        "regs": meta(".vgpr_count"),
        "sgprs": meta(".sgpr_count"),
        "spill_bytes": scratch,
        "vgpr_spills": meta(".vgpr_spill_count"),
        "sgpr_spills": meta(".sgpr_spill_count"),
        "smem": compiled.metadata.shared,
        "occupancy": (int(m.group(1)) if (m := re.search(r"; Occupancy:\s+(\d+)", amd)) else None),
    }
    if exact:
        problems = []
        llir = compiled.asm["llir"]
        if re.search(r"\b(?:fmul|fadd|fsub|fdiv)\s+(?:\w+\s+)*(?:contract|fast|reassoc)\b", llir):
            problems.append("LLVM IR fp op with contract/fast flags")
        if re.search(r"@llvm\.(?:fma|fmuladd)\.", llir):
            problems.append("LLVM IR fma/fmuladd")
        fmas = _AMD_FMA.findall(amd)
        divs = len(re.findall(r"^\s*v_div_fixup_f32\b", amd, re.M))
        int_div = sum(1 for op, args in fmas if "0x4f800000" in args or "0xcf800000" in args)
        bad_ops = [op for op, _ in fmas if not op.startswith(("v_fma_f32", "v_fmac_f32"))]
        fp_fmas = len(fmas) - int_div
        if bad_ops:
            problems.append(f"{len(bad_ops)} other FP multiply-adds ({sorted(set(bad_ops))})")
        if fp_fmas > 5 * divs:
            problems.append(f"{fp_fmas} f32 FMAs > 5 per division x {divs} divisions")
        row["fma_free"] = not problems
        row["fma_detail"] = "; ".join(problems) or (
            f"IR: no contract/fma; ISA: {fp_fmas} FMAs = fdiv expansion "
            f"({divs} div_fixup x 5 max) + {int_div} in int64 division")
    return row


def _kernel_fn(variant: Variant):
    if variant.path is None:
        from ._loader import kernels

        return getattr(getattr(kernels(), variant.module), variant.kernel)
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_gate_{Path(variant.path).stem}", variant.path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, variant.kernel)


def compile_one(variant: Variant, target_name: str) -> dict:
    """Compiles one variant for one target in this process; returns its report row
    (``error`` on failure). :func:`run` calls it in its clean worker processes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    backend, arch, warp = TARGETS[target_name]
    warps = variant.num_warps
    warps = warps[backend] if isinstance(warps, dict) else warps
    options = {"num_warps": warps, "num_stages": 1, "enable_fp_fusion": not variant.exact}
    row = {"kernel": variant.name, "target": target_name, "warps": warps}
    start = time.perf_counter()
    try:
        fn = _kernel_fn(variant)
        src = ASTSource(fn=fn, signature=variant.full_signature(), constexprs=variant.constexprs)
        compiled = triton.compile(src, target=GPUTarget(backend, arch, warp), options=options)
        report = _nvidia_report if backend == "cuda" else _amd_report
        row.update(report(compiled, variant.exact))
    except Exception as exc:  # report every failure, not just the first
        row["error"] = f"{type(exc).__name__}: {str(exc)[-4000:]}"
    row["compile_s"] = round(time.perf_counter() - start, 2)
    return row


# ----------------------------------------------------------------------------- workers

JOB_TIMEOUT_S = 600  # one compile (the slowest takes ~30 s on a loaded 2-core machine)
TIMEOUT_S = 1800  # the whole run
_DROPPED_ENV = ("TRITON_", "MLIR_", "LLVM_")  # Triton reads these; DISABLE_LLVM_OPT, USE_IR_LOC too
_DROPPED_NAMES = ("DISABLE_LLVM_OPT", "USE_IR_LOC")


def _site_dirs() -> set[str]:
    import site

    dirs = site.getsitepackages() + [site.getusersitepackages()]
    return {str(Path(d).resolve()) for d in dirs}


def clean_env(home: str) -> dict:
    """The workers' environment: this one without anything Triton reads, plus a private
    Triton home and cache under ``home`` and ``TRITON_ALWAYS_COMPILE=1``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_DROPPED_ENV) and k not in _DROPPED_NAMES}
    package_root = str(Path(__file__).resolve().parents[2])
    if package_root not in _site_dirs():  # a source checkout: let the workers import it too
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.update(TRITON_HOME=home, TRITON_CACHE_DIR=os.path.join(home, "cache"),
               TRITON_ALWAYS_COMPILE="1")
    return env


def _worker(jobs_path: str, out_path: str) -> int:
    """Worker process: compiles its jobs in order, one JSON line before and after each."""
    from ._loader import interpreted

    with open(jobs_path) as f:
        jobs = json.load(f)
    with open(out_path, "a", buffering=1) as out:
        if interpreted():  # clean_env drops TRITON_INTERPRET: only a broken setup gets here
            out.write(json.dumps({"fatal": "Triton came up in interpreter mode"}) + "\n")
            return 1
        for job in jobs:
            out.write(json.dumps({"start": job["i"]}) + "\n")
            row = compile_one(Variant(**job["variant"]), job["target"])
            out.write(json.dumps({"done": job["i"], "row": row}) + "\n")
    return 0


@dataclass
class _Proc:
    popen: subprocess.Popen
    jobs: list  # indices into the run's job list
    out: Path
    log: Path
    started: dict = field(default_factory=dict)  # job index -> monotonic start
    rows: dict = field(default_factory=dict)  # job index -> row
    fatal: str | None = None
    why: str | None = None  # why the parent stopped it
    read: int = 0  # bytes of ``out`` parsed

    def poll_output(self) -> None:
        with open(self.out, "rb") as f:
            f.seek(self.read)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.read += len(complete)
        for line in complete.decode().splitlines():
            msg = json.loads(line)
            if "start" in msg:
                self.started[msg["start"]] = time.monotonic()
            elif "done" in msg:
                self.rows[msg["done"]] = msg["row"]
            elif "fatal" in msg:
                self.fatal = msg["fatal"]

    def running(self):
        """The job index this worker is compiling now, or None."""
        left = [i for i in self.started if i not in self.rows]
        return left[0] if left else None


def _log_tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip() or "(empty)"
    except OSError:
        return "(no log)"


def run(targets=None, names=None, workers: int = 2, *, variants_=None,
        job_timeout_s: float = JOB_TIMEOUT_S, timeout_s: float = TIMEOUT_S) -> list[dict]:
    """Compiles each (variant, target) in ``workers`` fresh processes; one row per job, in
    job order. Never raises for a job: a compile error, a worker that dies, a job past
    ``job_timeout_s`` or a run past ``timeout_s`` each become that job's ``error``."""
    chosen = [v for v in (variants_ if variants_ is not None else variants())
              if names is None or v.name in names]
    targets = list(targets or TARGETS)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown targets {unknown}; known: {list(TARGETS)}")
    jobs = [(v, t) for v in chosen for t in targets]
    if not jobs:
        return []
    rows: list[dict | None] = [None] * len(jobs)
    with tempfile.TemporaryDirectory(prefix="distro-gate-") as tmp:
        env = clean_env(os.path.join(tmp, "triton"))
        procs = []
        workers = max(1, min(workers, len(jobs)))
        try:
            for w in range(workers):
                procs.append(_start_worker(w, list(range(w, len(jobs), workers)), jobs, tmp, env))
            _supervise(procs, time.monotonic() + timeout_s, job_timeout_s, timeout_s)
        finally:  # an interrupted run (Ctrl-C) leaves no worker behind
            for p in procs:
                if p.popen.poll() is None:
                    p.popen.kill()
                    p.popen.wait()
        for p in procs:
            for i in p.jobs:
                rows[i] = p.rows.get(i) or _lost_row(p, i, jobs)
    return rows


def _start_worker(w: int, mine: list[int], jobs, tmp: str, env: dict) -> _Proc:
    spec = [{"i": i, "variant": asdict(jobs[i][0]), "target": jobs[i][1]} for i in mine]
    jobs_path, out, log = (Path(tmp, f"w{w}.{ext}") for ext in ("jobs.json", "jsonl", "log"))
    jobs_path.write_text(json.dumps(spec))
    out.touch()
    with open(log, "wb") as log_f:  # Triton prints failing PTX to stdout: keep it apart
        popen = subprocess.Popen(
            [sys.executable, "-m", "distro_kernels.triton.gate", "--worker", str(jobs_path),
             str(out)],
            env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT)
    return _Proc(popen, mine, out, log)


def _supervise(procs, deadline, job_timeout_s, timeout_s) -> None:
    """Polls the workers until all exit; stops one whose job or the whole run is over time."""
    while True:
        alive = 0
        for p in procs:
            exited = p.popen.poll() is not None
            p.poll_output()
            if exited:
                continue
            alive += 1
            now, job = time.monotonic(), p.running()
            if job is not None and now - p.started[job] > job_timeout_s:
                p.why = f"compile took over {job_timeout_s:g} s (job timeout); worker stopped"
            elif now > deadline:
                p.why = f"gate run took over {timeout_s:g} s (run timeout); worker stopped"
            if p.why:
                p.popen.kill()
                p.popen.wait()
                p.poll_output()
        if not alive:
            return
        time.sleep(0.2)


def _lost_row(p: _Proc, i: int, jobs) -> dict:
    """The row of a job that produced none: why, and the worker's own output."""
    variant, target = jobs[i]
    rc = p.popen.returncode
    if p.why:
        cause = p.why
    elif p.fatal:
        cause = f"worker refused: {p.fatal}"
    else:
        cause = (f"worker died with signal {-rc}" if rc < 0 else f"worker exited with {rc}")
    running = p.running()
    if i == running:
        what = f"no result: {cause} while compiling this job"
    elif i in p.started:
        what = f"no result: {cause}"
    else:
        culprit = jobs[running] if running is not None else None
        what = (f"not compiled: {cause}" + (f" while compiling {culprit[0].name} @ {culprit[1]}"
                                            if culprit else " before this job"))
    return {"kernel": variant.name, "target": target, "warps": None, "compile_s": None,
            "error": f"{what}; worker output:\n{_log_tail(p.log)}"}


# ----------------------------------------------------------------------------- verdict


def expected_jobs(targets=None) -> set[tuple[str, str]]:
    return {(v.name, t) for v in variants() for t in (targets or TARGETS)}


def compile_failures(rows: list[dict], expected=None) -> list[str]:
    """``kernel @ target: error`` for every job that failed, is missing or was not asked for."""
    out = [f"{r['kernel']} @ {r['target']}: {r['error']}" for r in rows if "error" in r]
    if expected is not None:
        seen = {(r["kernel"], r["target"]) for r in rows}
        out += [f"{k} @ {t}: no row (not compiled)" for k, t in sorted(set(expected) - seen)]
        out += [f"{k} @ {t}: unexpected row" for k, t in sorted(seen - set(expected))]
    return out


def spill_failures(rows: list[dict]) -> list[str]:
    return [f"{r['kernel']} @ {r['target']}: spill_bytes={r.get('spill_bytes')} "
            f"stack={r.get('stack')} vgpr_spills={r.get('vgpr_spills')}"
            for r in rows if "error" not in r and (r.get("spill_bytes") or r.get("stack"))]


def fma_failures(rows: list[dict]) -> list[str]:
    return [f"{r['kernel']} @ {r['target']}: {r['fma_detail']}"
            for r in rows if r.get("fma_free") is False]


def failures(rows: list[dict], expected=None) -> list[str]:
    """Every problem of a run, one entry per failing kernel and target (and check)."""
    return compile_failures(rows, expected) + spill_failures(rows) + fma_failures(rows)


def report(problems: list[str], rows: list[dict] | None = None) -> str:
    """The full failure message: every problem, then the table of the run."""
    text = f"{len(problems)} compile-gate problem(s):\n" + "\n".join(
        "- " + p.replace("\n", "\n    ") for p in problems)
    return text + ("\n\n" + table(rows) if rows else "")


def _one_line(error: str, width: int = 160) -> str:
    """A table cell for an error: its first and last lines (the full text is in the report)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()] or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    text = text.replace("|", "/")
    return text if len(text) <= width else text[: width - 3] + "..."


def table(rows: list[dict]) -> str:
    head = "| kernel | target | warps | regs (VGPR) | spill B | smem B | FMA-free (decode) | compile s |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['target']} | {r['warps']} | ERROR: "
                         f"{_one_line(r['error'])} | | | | {r['compile_s']} |")
            continue
        spill = r.get("spill_bytes")
        if r.get("sgpr_spills"):
            spill = f"{spill} (SGPR->VGPR lanes: {r['sgpr_spills']})"
        exact = "" if "fma_free" not in r else ("yes" if r["fma_free"] else "NO: " + r["fma_detail"])
        lines.append(f"| {r['kernel']} | {r['target']} | {r['warps']} | {r['regs']} | {spill} | "
                     f"{r['smem']} | {exact} | {r['compile_s']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--workers", type=int, default=2, help="compile processes (default 2)")
    parser.add_argument("--job-timeout", type=float, default=JOB_TIMEOUT_S,
                        help=f"seconds one compile may take (default {JOB_TIMEOUT_S})")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S,
                        help=f"seconds the whole run may take (default {TIMEOUT_S})")
    parser.add_argument("--worker", nargs=2, metavar=("JOBS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(*args.worker)
    targets = args.targets.split(",")
    rows = run(targets, workers=args.workers, job_timeout_s=args.job_timeout,
               timeout_s=args.timeout)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(table(rows))
        for r in rows:
            if r.get("fma_detail") and r["target"] in ("sm_90", "gfx942"):
                print(f"- {r['kernel']} @ {r['target']}: {r['fma_detail']}")
    problems = failures(rows, expected_jobs(targets))
    if problems:
        print(report(problems), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
