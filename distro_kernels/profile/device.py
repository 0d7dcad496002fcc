"""Device keys (what a profile and a tuned setting are filed under) and version facts.

A key names the hardware and the kernels that run on it, so two machines of one kind share
results: ``nvidia-h200-sm_90``, ``amd-instinct-mi300x-gfx942``, ``amd-epyc-7b13-avx2`` (CPU
model from ``/proc/cpuinfo`` plus the compiled kernel set, ``distro_kernels._C.kernel_variant()``).
The pure functions (``slug``, ``cpu_model``, ``cpu_key``, ``gpu_arch``, ``gpu_key``) take plain
values so they are testable without the hardware.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

_NOISE = re.compile(r"\(r\)|\(tm\)|\bprocessor\b|\bcpu\b|@.*$|\b\d+-core\b|\bwith\b.*$", re.I)


def slug(text: str) -> str:
    """Lower-case words joined by ``-``: ``AMD EPYC 7B13 64-Core Processor`` -> ``amd-epyc-7b13``."""
    text = _NOISE.sub(" ", text)
    words = re.findall(r"[a-z0-9_.+]+", text.lower())
    return "-".join(w.strip(".+") for w in words if w.strip(".+")) or "unknown"


def cpu_model(cpuinfo: str) -> str:
    """The ``model name`` of ``/proc/cpuinfo`` text (x86), else ``Hardware``/``CPU part``."""
    for field in ("model name", "Hardware", "Processor", "cpu model"):
        for line in cpuinfo.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == field and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown cpu"


def cpu_key(model: str, kernel_variant: str | None) -> str:
    """``amd-epyc-avx2``; ``-noext`` when the compiled CPU kernels are not built."""
    return f"{slug(model)}-{slug(kernel_variant) if kernel_variant else 'noext'}"


def gpu_arch(major: int, minor: int, gcn_arch_name: str | None = None, is_hip: bool = False) -> str:
    """``sm_90`` on NVIDIA, ``gfx942`` on AMD (the ``gcnArchName`` before its feature flags)."""
    if is_hip:
        if gcn_arch_name:
            return gcn_arch_name.split(":")[0]
        return f"gfx{major}{minor:x}"
    return f"sm_{major}{minor}"


def gpu_key(name: str, arch: str) -> str:
    """``nvidia-h200-sm_90``: the board's name and the architecture its kernels compile for."""
    return f"{slug(name)}-{arch}"


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def kernel_variant() -> str | None:
    from .._ext import cpu_ext

    return cpu_ext.kernel_variant() if cpu_ext is not None else None


def last_level_cache_bytes() -> int:
    """The largest CPU cache (sysfs), or 32 MiB when the system does not say."""
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        m = re.match(r"^(\d+)([KMG]?)", text)
        if m:
            best = max(best, int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)])
    return best or 32 << 20


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def describe(device: torch.device) -> dict:
    """Key, name, architecture and cache size of ``device`` (``cpu`` or ``cuda:N``)."""
    if device.type == "cpu":
        model = cpu_model(_cpuinfo())
        variant = kernel_variant()
        return {
            "key": cpu_key(model, variant), "type": "cpu", "name": model,
            "arch": platform.machine(), "kernel_variant": variant,
            "threads": torch.get_num_threads(), "cpus": usable_cpus(),
            "cache_bytes": last_level_cache_bytes(),
        }
    if device.type != "cuda":
        raise ValueError(f"cannot profile device type {device.type!r} (cpu or cuda)")
    props = torch.cuda.get_device_properties(device)
    is_hip = bool(torch.version.hip)
    arch = gpu_arch(props.major, props.minor, getattr(props, "gcnArchName", None), is_hip)
    return {
        "key": gpu_key(props.name, arch), "type": "cuda", "index": device.index or 0,
        "name": props.name, "arch": arch, "vendor": "amd" if is_hip else "nvidia",
        "multiprocessors": props.multi_processor_count, "memory_bytes": props.total_memory,
        "cache_bytes": int(getattr(props, "L2_cache_size", 0)) or 64 << 20,
    }


def present_devices() -> list[str]:
    """``cpu`` and every GPU torch sees (``cuda:0`` ... also on ROCm)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu"] + [f"cuda:{i}" for i in range(gpus)]


def _gpu_driver() -> str | None:
    """The kernel driver's version: NVIDIA's from nvidia-smi, AMD's from sysfs."""
    if torch.version.hip:
        try:
            return Path("/sys/module/amdgpu/version").read_text().strip() or None
        except OSError:
            return None
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def versions(device: torch.device) -> dict:
    """Package, torch, Triton, numpy, Python; on GPUs also CUDA or ROCm and the driver."""
    import numpy

    from .._version import __version__

    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # not installed or broken: the backend says why in "skipped"
        triton_version = None
    out = {
        "distro_kernels": __version__, "torch": torch.__version__, "triton": triton_version,
        "numpy": numpy.__version__, "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        out.update(cuda=torch.version.cuda, rocm=torch.version.hip, driver=_gpu_driver())
    return out
