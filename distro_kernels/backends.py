"""Which backend runs an op: the caller's choice, or the best one available for the device.

A backend module implements the op bodies on validated, contiguous tensors (see
``reference.py``). Device kernels of other backends (Triton, CUDA) register here when they
import; nothing fails if one is missing: ``unavailable`` says why, and ``info()`` shows it.
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import reference
from ._ext import CPU_EXT_ERROR, cpu_ext

BACKEND_NAMES = ("auto", "reference", "cpu", "triton", "cuda")

# backend name -> (module, device types it runs on)
_available: dict[str, tuple[ModuleType, tuple[str, ...]]] = {
    "reference": (reference, ("cpu", "cuda", "meta", "xpu", "mps")),
}
# backend name -> why it is not available
unavailable: dict[str, str] = {}
# preference order for "auto", per device type
_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}

if cpu_ext is not None:
    from . import cpu_backend

    _available["cpu"] = (cpu_backend, ("cpu",))
else:
    unavailable["cpu"] = CPU_EXT_ERROR


def register(name: str, module: ModuleType, device_types: tuple[str, ...]) -> None:
    """Adds a backend (used by the optional Triton and CUDA packages)."""
    _available[name] = (module, device_types)
    unavailable.pop(name, None)


def mark_unavailable(name: str, why: str) -> None:
    unavailable[name] = why


def available() -> list[str]:
    return list(_available)


def resolve(backend: str, device: torch.device) -> ModuleType:
    """The module that runs ``backend`` on ``device`` (``auto`` picks the fastest there)."""
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    kind = device.type
    if backend == "auto":
        for name in _AUTO_ORDER.get(kind, ("reference",)):
            if name in _available and kind in _available[name][1]:
                return _available[name][0]
        return reference
    if backend not in _available:
        raise RuntimeError(f"backend {backend!r} is not available: {unavailable.get(backend, 'unknown')}")
    module, kinds = _available[backend]
    if kind not in kinds:
        raise ValueError(f"backend {backend!r} does not run on {kind} tensors (runs on {kinds})")
    return module
