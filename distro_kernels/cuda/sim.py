"""Host emulation of the kernels (tests): ``csrc/cuda`` built with the host C++ compiler,
each block's threads as real threads (``csrc/cuda/host_sim.h``). It runs the very same
kernel source, tensor tables and packed argument arrays as the GPU path, on CPU tensors."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from .launch import THREADS, Packed

SOURCE_DIR = Path(__file__).resolve().parents[2] / "csrc" / "cuda"  # in a checkout
FLAGS = ("-std=c++20", "-O2", "-ffp-contract=off", "-fno-fast-math", "-DDK_HOST_SIM", "-shared",
         "-fPIC", "-pthread", "-Wall", "-Wextra", "-Wno-unknown-pragmas")


def build(source_dir: Path = SOURCE_DIR, cache_dir: Path | None = None) -> Path:
    """Compiles ``sim_entry.cpp`` (once per source content) and returns the library path."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no host C++ compiler (g++) for the CUDA kernel emulation")
    sources = sorted(p for p in source_dir.iterdir() if p.suffix in (".h", ".cuh", ".cu", ".cpp"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + " ".join(FLAGS).encode())
    cache_dir = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "distro_kernels"
    out = cache_dir / f"dk_cuda_sim_{digest.hexdigest()[:16]}.so"
    if not out.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([compiler, *FLAGS, "-o", str(tmp), str(source_dir / "sim_entry.cpp")],
                       check=True, capture_output=True, text=True)
        os.replace(tmp, out)
    return out


class SimDriver:
    vendor = "sim"

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        self.lib.dk_sim_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p]
        self.lib.dk_sim_div_count_many.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64]
        if self.lib.dk_sim_threads() != THREADS:
            raise RuntimeError("the emulation was built with another DK_THREADS")

    def launch(self, device, name: str, grid: int, packed: Packed, stream: int) -> None:
        status = self.lib.dk_sim_launch(name.encode(), grid, THREADS, packed.params)
        if status:
            raise RuntimeError(f"host emulation of {name} failed (status {status})")

    def div_count(self, s, n):
        """The decode kernels' integer division, elementwise on float32 / uint32 numpy arrays."""
        import numpy as np

        s = np.ascontiguousarray(s, dtype=np.float32)
        n = np.ascontiguousarray(n, dtype=np.uint32)
        out = np.empty_like(s)
        self.lib.dk_sim_div_count_many(s.ctypes.data, n.ctypes.data, out.ctypes.data,
                                       ctypes.c_int64(s.size))
        return out
