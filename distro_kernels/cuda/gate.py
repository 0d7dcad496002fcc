"""Compile gate: builds every kernel of ``csrc/cuda`` for every target without a GPU.

``python -m distro_kernels.cuda.gate [--json] [--targets sm_80,...,gfx90a] [--source DIR]``

- NVIDIA (nvcc, one cubin per sm_XY, the package's flags): registers, shared memory, stack
  and spill stores per kernel (``ptxas -v`` and ``cuobjdump --dump-resource-usage``), and
  the opcode census of the SASS (``cuobjdump -sass``). The decode kernels (``dk_decompress``,
  ``dk_idct``, and the sign kernels) must hold no FFMA/DFMA/FFMA2/HFMA2 (except ptxas's
  ``HFMA2.MMA Rd, -RZ, RZ, imm, imm`` idiom, a move of a constant: -0 * 0 + imm) and no
  MUFU (no approximation), and their PTX no ``fma`` and only ``.rn`` f32 mul/add; the
  division by the count is integer arithmetic (csrc/cuda/exact_div.h), so there is no
  float division expansion to excuse.
- AMD (hipcc, ``HIP_PLATFORM=amd``, gfx90a): VGPR/SGPR counts, spills, scratch and LDS from
  the code object metadata, and the ISA census: no ``v_fma*``/``v_fmac*``/``v_mad_f*``/
  ``v_mac*``/``v_pk_fma*``/``v_fma_mix*`` and no ``v_div_*``/``v_rcp*`` in decode (integer
  ``v_mad_u64_u32`` and friends are integer multiply-adds, not floating point).
- Hot kernels (encode, decode) must not spill to memory (NVIDIA: spill stores, stack or local
  bytes; AMD: VGPR spills or scratch; SGPR spills into VGPR lanes are reported only). Encode
  must contain FMAs (the fp32 products
  are fused there by design), which also shows the census is looking at the right code.

Exit status 1 if any target fails to build or any rule fails. Tools: nvcc (CUDA 13),
cuobjdump (``pip install nvidia-cuda-cuobjdump``; found on PATH, beside nvcc or under
``nvidia/cu13/bin`` in site-packages), hipcc (``apt-get install hipcc libamdhip64-dev
rocm-device-libs``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

NVIDIA_TARGETS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
AMD_TARGETS = ("gfx90a",)
TARGETS = NVIDIA_TARGETS + AMD_TARGETS
# The package build's flags (csrc/cuda/CMakeLists.txt; a test keeps them equal).
NVCC_FLAGS = ("-std=c++17", "-O3", "--fmad=false")
HIPCC_FLAGS = ("-x", "hip", "--cuda-device-only", "-O3", "-ffp-contract=off", "-std=c++17")
KERNELS = ("dk_encode", "dk_decompress", "dk_idct", "dk_pack_signs", "dk_unpack_signs")
EXACT = ("dk_decompress", "dk_idct", "dk_pack_signs", "dk_unpack_signs")  # no FMA allowed
HOT = ("dk_encode", "dk_decompress", "dk_idct")  # no spill allowed
SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "cuda"


def find_tool(name: str) -> str | None:
    """``name`` on PATH, beside nvcc, or in the pip ``nvidia-cuda-*`` wheels."""
    found = shutil.which(name)
    if found:
        return found
    nvcc = shutil.which("nvcc")
    candidates = [os.path.join(os.path.dirname(os.path.realpath(nvcc)), name)] if nvcc else []
    candidates.append(f"/usr/local/cuda/bin/{name}")
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}:
        candidates.extend(glob.glob(os.path.join(site, "nvidia", "cu*", "bin", name)))
    return next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)), None)


def _run(cmd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


# ----------------------------------------------------------------------------- NVIDIA

_SASS_FMA = re.compile(r"\b(FFMA2?|DFMA|HFMA2(?:\.\w+)*)\b([^;]*);")
_HFMA2_MOVE = re.compile(r"^\s*R\w+,\s*-RZ,\s*RZ,")


def sass_census(sass: str) -> dict[str, dict]:
    """Per kernel: FFMA/FMUL/FADD/MUFU counts and the FMA-class instructions that are not
    the constant-move idiom."""
    out: dict[str, dict] = {}
    for block in re.split(r"\n\s*Function : ", "\n" + sass)[1:]:
        name = block.split(None, 1)[0]
        fmas = [(op, args) for op, args in _SASS_FMA.findall(block)]
        real = [op for op, args in fmas if not (op.startswith("HFMA2") and _HFMA2_MOVE.match(args))]
        out[name] = {
            "ffma": len(re.findall(r"\bFFMA2?\b", block)),
            "fmul": len(re.findall(r"\bFMUL\b", block)),
            "fadd": len(re.findall(r"\bFADD\b", block)),
            "mufu": len(re.findall(r"\bMUFU\.", block)),
            "fma_ops": len(real),
            "fma_kinds": sorted(set(real)),
        }
    return out


def ptxas_report(log: str) -> dict[str, dict]:
    """``ptxas -v``: per entry function, spill stores/loads, stack frame, registers, smem."""
    out: dict[str, dict] = {}
    for part in re.split(r"Compiling entry function '", log)[1:]:
        name = part.split("'", 1)[0]
        num = lambda pat: int(m.group(1)) if (m := re.search(pat, part)) else 0  # noqa: E731
        out[name] = {
            "stack": num(r"(\d+) bytes stack frame"),
            "spill_stores": num(r"(\d+) bytes spill stores"),
            "spill_loads": num(r"(\d+) bytes spill loads"),
            "regs": num(r"Used (\d+) registers"),
            "smem": num(r"(\d+) bytes smem"),
        }
    return out


def resource_usage(text: str) -> dict[str, dict]:
    out = {}
    for name, body in re.findall(r"Function (\w+):\s*\n\s*(.*)", text):
        out[name] = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", body)}
    return out


def ptx_exact_problems(ptx: str, kernel: str) -> list[str]:
    """PTX-level proof for one entry: no fma, every f32 mul/add/sub rounded (.rn: never
    contracted), no approximate division, no flush-to-zero."""
    m = re.search(rf"\.entry {kernel}\(.*?\n}}\n", ptx, re.S)
    if not m:
        return [f"{kernel} not in the PTX"]
    body, problems = m.group(0), []
    if re.search(r"\bfma\.", body):
        problems.append("PTX fma")
    bare = re.findall(r"\b(?:mul|add|sub)\.f32\b", body)
    if bare:
        problems.append(f"{len(bare)} f32 mul/add/sub without .rn")
    if re.search(r"\b(?:div|rcp|sqrt)\.(?:approx|full)", body) or ".ftz" in body:
        problems.append("approximate or flush-to-zero f32 op")
    return problems


def nvidia_rows(target: str, source: Path, ptx: str | None) -> list[dict]:
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    if nvcc is None:
        return [{"kernel": k, "target": target, "error": "nvcc not found"} for k in KERNELS]
    if cuobjdump is None:
        return [{"kernel": k, "target": target, "error": "cuobjdump not found "
                 "(pip install nvidia-cuda-cuobjdump)"} for k in KERNELS]
    arch = target.split("_")[1]
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        build = _run([nvcc, *NVCC_FLAGS, "-Xptxas", "-v", "-cubin", f"-arch=sm_{arch}", "-o", cubin,
                      str(source / "kernels.cu")])
        if build.returncode:
            return [{"kernel": k, "target": target, "error": build.stderr[-2000:]} for k in KERNELS]
        ptxas = ptxas_report(build.stdout + build.stderr)
        usage = resource_usage(_run([cuobjdump, "--dump-resource-usage", cubin]).stdout)
        census = sass_census(_run([cuobjdump, "-sass", cubin]).stdout)
    rows = []
    for k in KERNELS:
        row = {"kernel": k, "target": target}
        if k not in census or k not in ptxas:
            row["error"] = "kernel missing from the cubin"
            rows.append(row)
            continue
        row.update(ptxas[k])
        row.update({"local": usage.get(k, {}).get("local", 0), **census[k]})
        problems = []
        if k in EXACT:
            if row["fma_ops"]:
                problems.append(f"SASS FMA-class ops: {row['fma_kinds']}")
            if row["mufu"]:
                problems.append(f"{row['mufu']} MUFU (approximate) ops")
            if ptx is not None:
                problems += ptx_exact_problems(ptx, k)
        row["fma_free"] = not problems if k in EXACT else None
        row["detail"] = "; ".join(problems)
        rows.append(row)
    return rows


def nvidia_ptx(source: Path) -> str | None:
    nvcc = find_tool("nvcc")
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "k.ptx")
        done = _run([nvcc, *NVCC_FLAGS, "-ptx", "-arch=compute_80", "-o", out, str(source / "kernels.cu")])
        return Path(out).read_text() if done.returncode == 0 else None


# ----------------------------------------------------------------------------- AMD

_AMD_FMA = re.compile(
    r"^\s*(v_(?:pk_)?(?:fma|fmac|mad|mac)(?:_legacy)?_f(?:16|32|64)\w*|v_(?:fma|mad)_mix\w*)\b", re.M)
_AMD_DIV = re.compile(r"^\s*(v_div_\w+|v_rcp\w*)\b", re.M)


def amd_metadata(asm: str) -> dict[str, dict]:
    """Per kernel, the integer fields of the code object metadata (``amdhsa.kernels``)."""
    m = re.search(r"^amdhsa\.kernels:\n(.*?)(?=^amdhsa\.\w+:|^\.\.\.)", asm, re.S | re.M)
    out = {}
    for entry in re.split(r"^  - ", m.group(1) if m else "", flags=re.M)[1:]:
        fields = dict(re.findall(r"^(?:    )?\.(\w+):\s+(\S+)", entry, re.M))
        if "name" in fields:
            out[fields["name"]] = {k: int(v) for k, v in fields.items() if v.isdigit()}
    return out


def amd_census(asm: str) -> dict[str, dict]:
    meta = amd_metadata(asm)
    out = {}
    for name in KERNELS:
        m = re.search(rf"^{name}:.*?^\.Lfunc_end\d+:", asm, re.S | re.M)
        if not m or name not in meta:
            continue
        body, info = m.group(0), meta[name]
        fmas = _AMD_FMA.findall(body)
        out[name] = {
            "fma_ops": len(fmas),
            "fma_kinds": sorted(set(fmas)),
            "div_ops": len(_AMD_DIV.findall(body)),
            "ffma": len(fmas),
            "regs": info.get("vgpr_count"),
            "sgprs": info.get("sgpr_count"),
            "vgpr_spills": info.get("vgpr_spill_count"),
            "sgpr_spills": info.get("sgpr_spill_count"),
            "stack": info.get("private_segment_fixed_size"),
            "smem": info.get("group_segment_fixed_size"),
        }
    return out


def amd_rows(target: str, source: Path) -> list[dict]:
    hipcc = shutil.which("hipcc")
    if hipcc is None:
        return [{"kernel": k, "target": target, "skipped": "hipcc not found"} for k in KERNELS]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "k.s")
        env = {**os.environ, "HIP_PLATFORM": "amd"}
        build = _run([hipcc, *HIPCC_FLAGS, f"--offload-arch={target}", "-S", "-o", out,
                      str(source / "kernels.cu")], env=env)
        if build.returncode:
            return [{"kernel": k, "target": target, "error": build.stderr[-2000:]} for k in KERNELS]
        census = amd_census(Path(out).read_text())
    rows = []
    for k in KERNELS:
        row = {"kernel": k, "target": target}
        if k not in census:
            row["error"] = "kernel missing from the ISA"
            rows.append(row)
            continue
        row.update(census[k])
        # VGPR spills go to scratch memory; SGPR spills go to VGPR lanes (v_writelane, no
        # memory traffic): reported, not counted as spills. Scratch shows in "stack".
        row["spill_stores"] = row["vgpr_spills"] or 0
        problems = []
        if k in EXACT:
            if row["fma_ops"]:
                problems.append(f"ISA FP multiply-adds: {row['fma_kinds']}")
            if row["div_ops"]:
                problems.append(f"{row['div_ops']} v_div/v_rcp ops")
        row["fma_free"] = not problems if k in EXACT else None
        row["detail"] = "; ".join(problems)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- gate


def check(row: dict) -> list[str]:
    """The rules a row must pass (empty: it passes)."""
    if "skipped" in row:
        return []
    if "error" in row:
        return [row["error"]]
    problems = []
    if row["kernel"] in HOT and (row.get("spill_stores") or row.get("local") or row.get("stack")):
        problems.append(f"spills: {row.get('spill_stores')} B stores, stack {row.get('stack')}, "
                        f"local {row.get('local')}")
    if row.get("fma_free") is False:
        problems.append(row["detail"])
    if row["kernel"] == "dk_encode" and not row.get("ffma"):
        problems.append("encode has no FMA: its fp32 products were not compiled as expected")
    if row["kernel"] in ("dk_decompress", "dk_idct") and row["target"].startswith("sm_") and not (
            row.get("fmul") and row.get("fadd")):
        problems.append("decode has no FMUL/FADD: the census does not see the inverse")
    return problems


def run(targets=None, source: Path = SOURCE, workers: int = 2) -> list[dict]:
    targets = list(targets or TARGETS)
    ptx = nvidia_ptx(source) if any(t.startswith("sm_") for t in targets) else None
    jobs = [(lambda t=t: nvidia_rows(t, source, ptx)) if t.startswith("sm_")
            else (lambda t=t: amd_rows(t, source)) for t in targets]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = [r for part in pool.map(lambda job: job(), jobs) for r in part]
    for r in rows:
        r["problems"] = check(r)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| kernel | target | regs | smem B | stack B | spill B | FMA ops | FMUL | FADD | "
            "FMA-free (decode) | verdict |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['kernel']} | {r['target']} | " + " | " * 8
                         + f"{'skipped: ' + r['skipped'] if 'skipped' in r else 'ERROR'} |")
            continue
        exact = "" if r.get("fma_free") is None else ("yes" if r["fma_free"] else "NO")
        spill = r.get("spill_stores")
        if r.get("sgpr_spills"):
            spill = f"{spill} (SGPR->VGPR lanes: {r['sgpr_spills']})"
        lines.append(
            f"| {r['kernel']} | {r['target']} | {r.get('regs')} | {r.get('smem')} | "
            f"{r.get('stack')} | {spill} | {r.get('ffma')} | {r.get('fmul', '-')} | "
            f"{r.get('fadd', '-')} | {exact} | {'ok' if not r['problems'] else '; '.join(r['problems'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--source", type=Path, default=SOURCE, help="the csrc/cuda folder")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    rows = run(args.targets.split(","), args.source, args.workers)
    print(json.dumps(rows, indent=1) if args.json else table(rows))
    return 1 if any(r["problems"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
