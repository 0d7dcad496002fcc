"""Native CUDA/HIP kernels: compiled ahead of time from ``csrc/cuda`` (a fatbin for NVIDIA,
code objects for AMD) and launched through the GPU driver opened with ctypes. Importing this
package never fails and never initialises a GPU. It registers the kernels for CUDA tensors
when the code objects for this torch's platform are installed and the driver library opens
(as the ``"native"`` implementation on ``cuda`` in ``distro_kernels.dispatch``), else records
why (``dispatch.unavailable["native:cuda"]``).
:func:`enable_host_simulation` runs ``distro_kernels.cuda.backend`` on CPU tensors through a
host build of the same kernels (CI's way to execute them without a GPU).
"""

from __future__ import annotations

from . import objects

from .. import dispatch

CUDA_ERROR: str | None = None


def _why_unavailable() -> str | None:
    import torch

    from .driver import CUDA_LIBRARY, HIP_LIBRARIES, open_library

    if torch.version.hip:
        if not objects.find_hip_objects():
            return "no HIP code objects built (hipcc was not found when the package was built)"
        names = HIP_LIBRARIES
    elif torch.version.cuda:
        if objects.find_fatbin() is None:
            return "no CUDA fatbin built (nvcc was not found when the package was built)"
        names = [CUDA_LIBRARY]
    else:
        return "torch is a CPU-only build (no CUDA or ROCm)"
    try:
        open_library(names)
    except OSError as exc:
        return f"GPU driver library not loadable ({exc})"
    return None


try:
    CUDA_ERROR = _why_unavailable()
except Exception as exc:  # a broken install must not break the import
    CUDA_ERROR = f"cuda backend check failed ({type(exc).__name__}: {exc})"

if CUDA_ERROR is None:
    from . import backend

    dispatch.register("native", backend, ("cuda",))
else:
    dispatch.mark_unavailable("native", CUDA_ERROR, "cuda")


def enable_host_simulation(library=None):
    """Lets ``distro_kernels.cuda.backend`` run on CPU tensors, through the kernels built for
    the host (``csrc/cuda/host_sim.h``; needs a checkout and g++); returns that module. Slow:
    tests only. Nothing is registered (CPU tensors keep their own native kernels)."""
    from . import backend as cuda_backend
    from . import runtime, sim

    runtime.set_sim(sim.SimDriver(library or sim.build()))
    return cuda_backend


def describe(probe: bool = False) -> dict:
    """What is installed and why it runs or not (for ``info()``). ``probe=True`` also loads
    the kernels on every visible GPU (this initialises the driver) and reports, per device,
    the kernel names or the error."""
    fatbin = objects.find_fatbin()
    targets = fatbin.with_suffix(".targets") if fatbin else None
    out = {
        "available": CUDA_ERROR is None,
        "why_not": CUDA_ERROR,
        "fatbin": str(fatbin) if fatbin else None,
        "fatbin_targets": targets.read_text().split() if targets and targets.exists() else [],
        "hip_objects": {arch: str(p) for arch, p in objects.find_hip_objects().items()},
    }
    if probe and CUDA_ERROR is None:
        out["devices"] = _probe_devices()
    return out


def _probe_devices() -> dict:
    import torch

    from . import runtime

    devices = {}
    for index in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(index)
        try:
            loaded = runtime.gpu_driver().functions(index)
            devices[f"cuda:{index}"] = {"name": name, "kernels": sorted(loaded)}
        except RuntimeError as exc:
            devices[f"cuda:{index}"] = {"name": name, "error": str(exc)}
    return devices
