"""The bound of the decode's Lee certified sign (``csrc/cpu/lee_sign_bound.cpp``, argued in
``csrc/cpu/lee_sign.h``) against measured errors: ``tests/cpp/lee_sign_check.cpp`` runs the
unfused fast inverse in float32 on 20,000 random and adversarial columns for each chunk side
16, 32 and 64 (2.24M outputs), and checks that the bound covers the fast program's error (the
largest measured share is printed; it must stay <= 1) and that no certified sign differs from
the canonical fold's.
The decodes themselves are compared bit for bit with the spec in
``tests/test_decode_sign_certified.py``. Outside CI the test skips without a C++ compiler;
with ``CI=true`` that is a failure."""

from __future__ import annotations

import re
import subprocess

from test_lee64 import ROOT, compiler


def test_bound_covers_the_fast_inverse(tmp_path):
    exe = tmp_path / "lee_sign_check"
    cpu = ROOT / "csrc" / "cpu"
    done = subprocess.run(
        [compiler(), "-std=c++17", "-O2", "-ffp-contract=off", "-fno-fast-math", "-Wno-psabi", "-I", str(cpu),
         str(ROOT / "tests" / "cpp" / "lee_sign_check.cpp"), str(cpu / "basis.cpp"),
         str(cpu / "lee_sign_bound.cpp"), "-lpthread", "-o", str(exe)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    found = re.search(r"cases (\d+) certified (\d+) flips (\d+) worst ([\d.]+)", ran.stdout)
    assert found, ran.stdout + ran.stderr
    cases, certified, flips, worst = int(found[1]), int(found[2]), int(found[3]), float(found[4])
    assert ran.returncode == 0 and flips == 0 and worst <= 1.0, ran.stdout
    # the check saw every case, certified nearly all, and the bound is not vacuously loose
    assert cases == 20000 * (16 + 32 + 64)
    assert certified > 0.99 * cases and worst > 0.01
