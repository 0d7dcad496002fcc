"""The 64-point fast DCT (``LeeForward64``/``LeeInverse64`` in ``csrc/cpu/lee_dct.h``: the
encoder's, and the unfused inverse of the decode's certified sign) computes the same bits as
Lee's plain recursion, which it only reorders so that live values fit in registers. ``tests/cpp/lee64_check.cpp`` compares the two on every kernel set's flags
that this CPU can run (the others are only compiled). Outside CI the test skips without a
C++ compiler; with ``CI=true`` that is a failure."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import distro_kernels as dk

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"
X86 = platform.machine().lower() in ("x86_64", "amd64")
# the kernel sets' flags (CMakeLists.txt: DK_STRICT_FP, -O3, the set's ISA)
FLAGS = {"generic": [], "avx2": ["-mavx2", "-mfma"],
         "avx512": ["-mavx512f", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"]}
SETS = ("generic", "avx2", "avx512") if X86 else ("generic",)


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        if IN_CI:
            pytest.fail("no C++ compiler (CI=true: this check must run)")
        pytest.skip("no C++ compiler")
    return cxx


def runs_here(kernel_set: str) -> bool:
    features = dk.info()["cpu_features"] or {}
    needs = {"generic": [], "avx2": ["avx2", "fma"], "avx512": ["avx512f"]}[kernel_set]
    return all(features.get(name) for name in needs)


@pytest.mark.parametrize("kernel_set", SETS)
def test_blocked_lee_is_the_recursion_bit_for_bit(kernel_set, tmp_path):
    exe = tmp_path / "lee64_check"
    done = subprocess.run(
        [compiler(), "-std=c++17", "-O3", "-ffp-contract=off", "-fno-fast-math", *FLAGS[kernel_set],
         "-I", str(ROOT / "csrc" / "cpu"), str(ROOT / "tests" / "cpp" / "lee64_check.cpp"), "-o", str(exe)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    if not runs_here(kernel_set):
        pytest.skip(f"compiled; this CPU cannot run the {kernel_set} set")
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    found = re.search(r"cases (\d+) differ (\d+) nonzero (\d+)", ran.stdout)
    assert found, ran.stdout + ran.stderr
    cases, differ, nonzero = map(int, found.groups())
    assert differ == 0 and ran.returncode == 0, ran.stdout
    assert cases == 9000 and nonzero > 6000  # the comparison saw real, mostly nonzero outputs
