"""Which implementation runs an op on a device: the registry behind the per-device kernels.

Implementations (the ``backend=`` names):

- ``reference``: eager torch, the readable definition of SPEC; runs on every device.
- ``native``: code compiled ahead of time for the tensors' device: the C++ kernels
  (``_C``) for CPU tensors, the CUDA/HIP code objects for CUDA (and ROCm) tensors.
- ``triton``: the Triton kernels, JIT-compiled for CUDA/ROCm tensors (CPU tensors only in
  Triton's interpreter, for tests).

``"cpu"`` and ``"cuda"`` are accepted as the device-named spellings of ``native`` on that
device (older code passes them); ``"auto"`` means no override.

Each custom op registers one kernel per dispatch key (``ops/definitions.py``); the kernel
for a device asks :func:`select` for its implementation: the caller's override when a
public function was given ``backend=`` (a context variable, never part of an op schema, so
compiled graphs bake no backend in), else the first available entry of that device's
preference list. An implementation that is missing records why in :data:`unavailable`;
``info()`` shows both.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from types import ModuleType
from typing import Iterator

import torch

from . import reference
from ._ext import CPU_EXT_ERROR, cpu_ext

IMPLEMENTATIONS = ("reference", "native", "triton")
# device-named spellings of ``native`` (backend name -> the one device type it allows)
DEVICE_ALIASES = {"cpu": "cpu", "cuda": "cuda"}
BACKEND_NAMES = ("auto", *IMPLEMENTATIONS, *DEVICE_ALIASES)
ALL_DEVICES = ("cpu", "cuda", "meta", "xpu", "mps", "hpu", "privateuseone")

# implementation -> device type -> module with the op bodies (reference.py's functions)
_modules: dict[str, dict[str, ModuleType]] = {"reference": {d: reference for d in ALL_DEVICES}}
# implementation (or "native:<device>") -> why it is not available
unavailable: dict[str, str] = {}
# what a device runs when the caller names no backend: first available wins. On GPUs Triton
# stays ahead of the native CUDA/HIP kernels until those have passed benchmarks/
# device_check.sh on a real GPU (so far they have run only in the host emulation);
# DISTRO_KERNELS_GPU_DEFAULT=native puts them first.
_GPU_FIRST = "native" if os.environ.get("DISTRO_KERNELS_GPU_DEFAULT") == "native" else "triton"
PREFERENCE = {"cpu": ("native", "reference"),
              "cuda": (_GPU_FIRST, "triton" if _GPU_FIRST == "native" else "native", "reference")}

_forced: contextvars.ContextVar[str] = contextvars.ContextVar("distro_kernels_backend", default="auto")


def register(name: str, module: ModuleType, device_types: tuple[str, ...]) -> None:
    """Adds an implementation for some device types (the optional Triton and CUDA packages
    call this when they import)."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {name!r}")
    table = _modules.setdefault(name, {})
    for device_type in device_types:
        table[device_type] = module
        unavailable.pop(f"{name}:{device_type}", None)
    unavailable.pop(name, None)


def mark_unavailable(name: str, why: str, device_type: str | None = None) -> None:
    """Records why ``name`` (on ``device_type``, or anywhere) cannot run."""
    unavailable[name if device_type is None else f"{name}:{device_type}"] = why


def available() -> list[str]:
    """Implementations that run on at least one device type."""
    return [name for name in IMPLEMENTATIONS if _modules.get(name)]


def device_types(name: str) -> tuple[str, ...]:
    """Device types ``name`` (an implementation or device alias) runs on."""
    name, only = _canonical(name)
    kinds = tuple(_modules.get(name, {}))
    return tuple(k for k in kinds if only is None or k == only)


def _canonical(backend: str) -> tuple[str, str | None]:
    if backend in DEVICE_ALIASES:
        return "native", DEVICE_ALIASES[backend]
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    return backend, None


def why_unavailable(name: str, device_type: str) -> str:
    """Why implementation ``name`` does not run on ``device_type`` (for reports)."""
    return _why_not(name, device_type)


def _why_not(name: str, device_type: str) -> str:
    return unavailable.get(f"{name}:{device_type}") or unavailable.get(name) or "not registered"


def resolve(backend: str, device: torch.device | str) -> ModuleType:
    """The module that runs ``backend`` on ``device`` (``auto``: the device's preference)."""
    kind = torch.device(device).type
    name, only = _canonical(backend)
    if name == "auto":
        return preferred(kind)[1]
    if only is not None and kind != only:
        raise ValueError(f"backend {backend!r} runs on {only} tensors, got {kind} tensors")
    table = _modules.get(name, {})
    if kind in table:
        return table[kind]
    if not table:
        raise RuntimeError(f"backend {backend!r} is not available: {_why_not(name, kind)}")
    raise ValueError(f"backend {backend!r} does not run on {kind} tensors "
                     f"(runs on {tuple(table)}): {_why_not(name, kind)}")


def preferred(device_type: str) -> tuple[str, ModuleType]:
    """``(name, module)`` that ``device_type`` runs with no override."""
    for name in PREFERENCE.get(device_type, ("reference",)):
        module = _modules.get(name, {}).get(device_type)
        if module is not None:
            return name, module
    return "reference", reference


@contextlib.contextmanager
def forced(backend: str) -> Iterator[None]:
    """Within the block, ops run ``backend`` (checked against each op's device)."""
    _canonical(backend)
    token = _forced.set(backend)
    try:
        yield
    finally:
        _forced.reset(token)


def select(device: torch.device) -> ModuleType:
    """The module an op's kernel runs on ``device``: the override, or the device's choice."""
    return resolve(_forced.get(), device)


def table() -> dict[str, dict]:
    """For ``info()``: per device type, what runs by default and what else can be forced."""
    out = {"meta": {"default": "fake (shapes and dtypes only)"}}
    for kind in ("cpu", "cuda"):
        name, _ = preferred(kind)
        entry = {"default": name, "available": [n for n in IMPLEMENTATIONS if kind in _modules.get(n, {})]}
        missing = {n: _why_not(n, kind) for n in PREFERENCE.get(kind, ()) if kind not in _modules.get(n, {})}
        if missing:
            entry["missing"] = missing
        out[kind] = entry
    return out


if cpu_ext is not None:
    from . import native_cpu

    register("native", native_cpu, ("cpu",))
else:
    mark_unavailable("native", CPU_EXT_ERROR, "cpu")
