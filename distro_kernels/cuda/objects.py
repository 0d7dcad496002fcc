"""Where the prebuilt code objects are: ``dk_kernels.fatbin`` (NVIDIA: SASS for each built
sm_XY plus PTX) and ``dk_kernels_<gfx>.co`` (AMD), installed next to this package by CMake."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

FATBIN = "dk_kernels.fatbin"
HIP_PREFIX, HIP_SUFFIX = "dk_kernels_", ".co"
ENV_DIR = "DISTRO_KERNELS_CUDA_DIR"  # overrides the search (a folder with the files above)


def search_dirs() -> list[Path]:
    """The override folder, this package's folder, then ``distro_kernels/cuda`` beside the
    compiled CPU extension and on ``sys.path`` (editable installs put built files there)."""
    dirs = []
    if os.environ.get(ENV_DIR):
        dirs.append(Path(os.environ[ENV_DIR]))
    dirs.append(Path(__file__).resolve().parent)
    try:
        spec = importlib.util.find_spec("distro_kernels._C")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).resolve().parent / "cuda")
    dirs.extend(Path(p) / "distro_kernels" / "cuda" for p in sys.path if p)
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_fatbin() -> Path | None:
    for d in search_dirs():
        if (d / FATBIN).is_file():
            return d / FATBIN
    return None


def find_hip_objects() -> dict[str, Path]:
    """``{"gfx90a": path, ...}`` from the first folder that has any."""
    for d in search_dirs():
        found = {p.name[len(HIP_PREFIX):-len(HIP_SUFFIX)]: p
                 for p in sorted(d.glob(f"{HIP_PREFIX}*{HIP_SUFFIX}"))}
        if found:
            return found
    return {}
