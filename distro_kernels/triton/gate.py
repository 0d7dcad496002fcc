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

Needs a process where Triton compiles (``TRITON_INTERPRET`` unset when Triton was imported).
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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


def _nvidia_tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _nvidia_report(compiled, exact: bool) -> dict:
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([_nvidia_tool("cuobjdump"), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_nvidia_tool("nvdisasm"), path], capture_output=True,
                              text=True, check=True).stdout

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
        log = subprocess.run([_ptxas(metadata.target.arch), "-v", *flags, "--regAllocOptLevel=2",
                              f"--gpu-name={arch}", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True)
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


def compile_one(variant: Variant, target_name: str) -> dict:
    """Compiles one variant for one target; returns its report row (``error`` on failure)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ._loader import kernels

    backend, arch, warp = TARGETS[target_name]
    fn = getattr(getattr(kernels(), variant.module), variant.kernel)
    src = ASTSource(fn=fn, signature=variant.full_signature(), constexprs=variant.constexprs)
    warps = variant.num_warps
    warps = warps[backend] if isinstance(warps, dict) else warps
    options = {"num_warps": warps, "num_stages": 1, "enable_fp_fusion": not variant.exact}
    row = {"kernel": variant.name, "target": target_name, "warps": warps}
    start = time.perf_counter()
    try:
        compiled = triton.compile(src, target=GPUTarget(backend, arch, warp), options=options)
        report = _nvidia_report if backend == "cuda" else _amd_report
        row.update(report(compiled, variant.exact))
    except Exception as exc:  # report every failure, not just the first
        row["error"] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
    row["compile_s"] = round(time.perf_counter() - start, 2)
    return row


def run(targets=None, names=None, workers: int = 2) -> list[dict]:
    from ._loader import interpreted

    if interpreted():
        raise RuntimeError("the compile gate needs Triton imported without TRITON_INTERPRET=1")
    chosen = [v for v in variants() if names is None or v.name in names]
    jobs = [(v, t) for v in chosen for t in (targets or list(TARGETS))]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: compile_one(*job), jobs))


def table(rows: list[dict]) -> str:
    head = "| kernel | target | warps | regs (VGPR) | spill B | smem B | FMA-free (decode) | compile s |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['target']} | {r['warps']} | ERROR: "
                         f"{r['error'][:120]} | | | | {r['compile_s']} |")
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
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    rows = run(args.targets.split(","), workers=args.workers)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(table(rows))
        for r in rows:
            if r.get("fma_detail") and r["target"] in ("sm_90", "gfx942"):
                print(f"- {r['kernel']} @ {r['target']}: {r['fma_detail']}")
    failed = [r for r in rows if "error" in r or r.get("fma_free") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
