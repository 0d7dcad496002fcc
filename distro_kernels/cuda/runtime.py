"""Which driver runs a launch: the GPU driver for CUDA/ROCm tensors (made on first use), or
the host emulation for CPU tensors once a test has enabled it."""

from __future__ import annotations

import threading

import torch

from . import objects
from .launch import KERNELS, Packed, grid_blocks

_lock = threading.Lock()
_gpu = None
_gpu_error: str | None = None
_sim = None


def vendor() -> str:
    return "hip" if torch.version.hip else "cuda"


def _make_gpu_driver():
    from .driver import CudaDriver, HipDriver

    if vendor() == "hip":
        found = objects.find_hip_objects()
        if not found:
            raise RuntimeError("no HIP code objects built (hipcc was not found at build time)")
        return HipDriver({arch: p.read_bytes() for arch, p in found.items()})
    path = objects.find_fatbin()
    if path is None:
        raise RuntimeError("no CUDA fatbin built (nvcc was not found at build time)")
    return CudaDriver(path.read_bytes())


def gpu_driver():
    global _gpu, _gpu_error
    with _lock:
        if _gpu is None and _gpu_error is None:
            try:
                _gpu = _make_gpu_driver()
            except (OSError, RuntimeError, AttributeError) as exc:
                _gpu_error = f"{type(exc).__name__}: {exc}"
        if _gpu is None:
            raise RuntimeError(f"the cuda backend cannot run: {_gpu_error}")
        return _gpu


def set_sim(driver) -> None:
    global _sim
    _sim = driver


def sim():
    return _sim


def launch(name: str, blocks: int, args: tuple, device: torch.device) -> None:
    """Launches kernel ``name`` on ``device`` (torch's current stream there)."""
    assert name in KERNELS
    packed = Packed(name, args)
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device).cuda_stream
        gpu_driver().launch(device, name, grid_blocks(blocks), packed, stream)
    elif device.type == "cpu" and _sim is not None:
        _sim.launch(device, name, grid_blocks(blocks), packed, 0)
    else:
        raise RuntimeError(
            f"the cuda backend runs CUDA tensors, not {device.type} tensors (CPU tensors only "
            "under the host emulation that tests enable)")
