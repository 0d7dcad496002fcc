"""Checks a built wheel's contents against the checkout it was built from: the compiled
extension, the LICENSE, every package module, nothing a user does not need (no tests, no C++
sources, no vendored libraries), GPU code objects only as package data, and the glibc symbol
versions its binaries need.

    python scripts/check_wheel.py WHEEL [--source ROOT] [--max-glibc 2.28] [--expect-gpu-objects]

Prints the wheel's file list and the largest glibc version needed; exits 1 listing every problem.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import zipfile

PACKAGE = "distro_kernels"
# Package data the GPU build installs (csrc/cuda/CMakeLists.txt): NVIDIA fatbins, AMD code
# objects, and the list of targets they hold.
GPU_DATA = (".fatbin", ".co", ".hsaco", ".targets")
EXTENSION = re.compile(rf"^{PACKAGE}/_C\.(cpython-[^/]+|abi3)\.so$")


def package_modules(root: str) -> set[str]:
    """Every .py file of the package in the checkout, as wheel paths."""
    out = set()
    for folder, dirs, files in os.walk(os.path.join(root, PACKAGE)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                out.add(os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/"))
    return out


def glibc_needed(data: bytes) -> list[str]:
    """The GLIBC_x.y versions an ELF file's dynamic symbols require (pyelftools, auditwheel's
    own dependency)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerNeedSection

    versions = set()
    for section in ELFFile(io.BytesIO(data)).iter_sections():
        if isinstance(section, GNUVerNeedSection):
            for _, aux in section.iter_versions():
                for a in aux:
                    if a.name.startswith("GLIBC_") and a.name[6:7].isdigit():
                        versions.add(a.name)
    return sorted(versions, key=lambda v: tuple(int(p) for p in v[6:].split(".")))


def check(wheel: str, root: str, max_glibc: str | None, expect_gpu: bool) -> list[str]:
    problems = []
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        print(f"{os.path.basename(wheel)}: {len(names)} files")
        for n in names:
            print(f"  {n}")
        dist_info = [n for n in names if re.match(rf"^{PACKAGE}-[^/]+\.dist-info/", n)]
        package = [n for n in names if n.startswith(f"{PACKAGE}/")]
        for n in sorted(set(names) - set(dist_info) - set(package)):
            problems.append(f"file outside the package and its dist-info: {n}"
                            + (" (a vendored library: the wheel should need only glibc)" if ".libs/" in n else ""))
        extensions = [n for n in package if EXTENSION.match(n)]
        if len(extensions) != 1:
            problems.append(f"expected exactly one compiled extension {PACKAGE}/_C.*.so, found {extensions}")
        licenses = [n for n in dist_info if re.search(r"\.dist-info/(licenses/)?LICENSE$", n)]
        if not licenses:
            problems.append("no LICENSE in the dist-info")
        elif "Apache License" not in zf.read(licenses[0]).decode("utf-8", "replace"):
            problems.append(f"{licenses[0]} is not the Apache License text")
        for missing in sorted(package_modules(root) - set(package)):
            problems.append(f"package module missing from the wheel: {missing}")
        gpu = []
        for n in package:
            if n.endswith(".py") or n in extensions:
                continue
            if n.startswith(f"{PACKAGE}/cuda/") and n.endswith(GPU_DATA):
                gpu.append(n)
                if zf.getinfo(n).file_size == 0:
                    problems.append(f"empty GPU code object: {n}")
                continue
            problems.append(f"file a user does not need (not a module, the extension or GPU data): {n}")
        if expect_gpu and not any(n.endswith((".fatbin", ".co", ".hsaco")) for n in gpu):
            problems.append("built where nvcc/hipcc exist, but the wheel holds no GPU code objects")
        worst = None
        for n in names:
            data = zf.read(n)
            if data[:4] != b"\x7fELF":
                continue
            versions = glibc_needed(data)
            print(f"{n}: needs {', '.join(versions) or 'no versioned glibc symbols'}")
            if versions and (worst is None or _key(versions[-1]) > _key(worst)):
                worst = versions[-1]
        print(f"largest glibc version needed: {worst}")
        if max_glibc and worst and _key(worst) > _key("GLIBC_" + max_glibc):
            problems.append(f"binaries need {worst}, above glibc {max_glibc}")
    return problems


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version[6:].split("."))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel")
    ap.add_argument("--source", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="the checkout the wheel was built from (default: this script's)")
    ap.add_argument("--max-glibc", default=None, help="fail if a binary needs a newer glibc, e.g. 2.28")
    ap.add_argument("--expect-gpu-objects", action="store_true",
                    help="fail unless the wheel carries CUDA/HIP code objects")
    args = ap.parse_args()
    problems = check(args.wheel, args.source, args.max_glibc, args.expect_gpu_objects)
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
