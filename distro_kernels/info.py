"""``distro_kernels.info()``: what is installed, what runs, and why anything does not."""

from __future__ import annotations

import platform

import torch

from . import dispatch, output_pool
from ._ext import cpu_ext
from ._version import __version__


def info() -> dict:
    """Version, what each device type runs by default (and why anything is missing), the
    implementations available, CPU features, thread count, what the CPU decode output pool
    holds (``output_pool``)."""
    cpu_features = cpu_ext.cpu_features() if cpu_ext is not None else {}
    return {
        "version": __version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "backends": dispatch.available(),
        "devices": dispatch.table(),
        "unavailable": dict(dispatch.unavailable),
        "cpu_features": cpu_features,
        "cpu_kernel": cpu_ext.kernel_variant() if cpu_ext is not None else None,
        "threads": torch.get_num_threads(),
        "cpu_output_pool": output_pool.pool.stats(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_kernels": _cuda_kernels(),
    }


def _cuda_kernels() -> dict | None:
    """What the native CUDA/HIP package found (code objects, targets, and per GPU the loaded
    kernels when a GPU is present); ``None`` if it did not import."""
    try:
        from . import cuda
    except Exception:
        return None
    return cuda.describe(probe=torch.cuda.is_available())
