"""The GPU driver, opened with ctypes at run time: the CUDA driver API (``libcuda.so.1``) or
HIP's module API (``libamdhip64.so``). Nothing links against either, so the package imports
on machines without them; the driver is initialised on the first launch, never at import (a
CUDA context made at import would break fork-based workers). See docs/cuda-kernels.md."""

from __future__ import annotations

import ctypes
import threading

import torch

from .launch import KERNELS, THREADS, Packed

CUDA_LIBRARY = "libcuda.so.1"
HIP_LIBRARIES = ("libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5")


def open_library(names) -> ctypes.CDLL:
    errors = []
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    raise OSError("; ".join(errors))


class CudaDriver:
    """Loads the fatbin into each device's primary context (the one torch uses) and launches
    on the caller's stream, with that context pushed for the call."""

    vendor = "cuda"

    def __init__(self, image: bytes, lib: ctypes.CDLL | None = None):
        self.lib = lib or open_library([CUDA_LIBRARY])
        self._image = ctypes.create_string_buffer(image, len(image))
        self._lock = threading.Lock()
        self._initialised = False
        self._contexts: dict[int, ctypes.c_void_p] = {}
        self._functions: dict[int, dict[str, ctypes.c_void_p]] = {}
        lib = self.lib
        lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]

    def _check(self, status: int, what: str) -> None:
        if status:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(status, ctypes.byref(name))
            raise RuntimeError(f"{what} failed: {(name.value or b'?').decode()} ({status})")

    def _setup(self, index: int) -> tuple[ctypes.c_void_p, dict]:
        with self._lock:
            if index in self._functions:
                return self._contexts[index], self._functions[index]
            if not self._initialised:
                self._check(self.lib.cuInit(0), "cuInit")
                self._initialised = True
            dev, ctx = ctypes.c_int(), ctypes.c_void_p()
            self._check(self.lib.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
            self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev),
                        "cuDevicePrimaryCtxRetain")
            self._check(self.lib.cuCtxPushCurrent_v2(ctx), "cuCtxPushCurrent")
            try:
                module = ctypes.c_void_p()
                self._check(self.lib.cuModuleLoadData(ctypes.byref(module), self._image),
                            f"cuModuleLoadData (device {index}: no code for this GPU in the fatbin?)")
                functions = {}
                for name in KERNELS:
                    f = ctypes.c_void_p()
                    self._check(self.lib.cuModuleGetFunction(ctypes.byref(f), module, name.encode()),
                                f"cuModuleGetFunction({name})")
                    functions[name] = f
            finally:
                self.lib.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
            self._contexts[index], self._functions[index] = ctx, functions
            return ctx, functions

    def functions(self, index: int) -> dict:
        """The kernels loaded on device ``index`` (loads them on first use)."""
        return self._setup(index)[1]

    def launch(self, device: torch.device, name: str, grid: int, packed: Packed, stream: int) -> None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        ctx, functions = self._setup(index)
        self._check(self.lib.cuCtxPushCurrent_v2(ctx), "cuCtxPushCurrent")
        try:
            self._check(self.lib.cuLaunchKernel(functions[name], grid, 1, 1, THREADS, 1, 1, 0,
                                                ctypes.c_void_p(stream), packed.params, None),
                        f"cuLaunchKernel({name})")
        finally:
            self.lib.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))


class HipDriver:
    """HIP's module API on the device torch selects (``torch.cuda.device``), same stream rule."""

    vendor = "hip"

    def __init__(self, images: dict[str, bytes], lib: ctypes.CDLL | None = None):
        self.lib = lib or open_library(HIP_LIBRARIES)
        self._images = {arch: ctypes.create_string_buffer(b, len(b)) for arch, b in images.items()}
        self._lock = threading.Lock()
        self._functions: dict[int, dict[str, ctypes.c_void_p]] = {}
        self.lib.hipGetErrorName.restype = ctypes.c_char_p
        self.lib.hipModuleLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]

    def _check(self, status: int, what: str) -> None:
        if status:
            raise RuntimeError(f"{what} failed: {self.lib.hipGetErrorName(status).decode()} ({status})")

    def _setup(self, index: int) -> dict:
        with self._lock:
            if index in self._functions:
                return self._functions[index]
            arch = torch.cuda.get_device_properties(index).gcnArchName.split(":")[0]
            if arch not in self._images:
                raise RuntimeError(f"no HIP code object for {arch} (built: {sorted(self._images)})")
            with torch.cuda.device(index):
                self._check(self.lib.hipInit(0), "hipInit")
                module = ctypes.c_void_p()
                self._check(self.lib.hipModuleLoadData(ctypes.byref(module), self._images[arch]),
                            "hipModuleLoadData")
                functions = {}
                for name in KERNELS:
                    f = ctypes.c_void_p()
                    self._check(self.lib.hipModuleGetFunction(ctypes.byref(f), module, name.encode()),
                                f"hipModuleGetFunction({name})")
                    functions[name] = f
            self._functions[index] = functions
            return functions

    def functions(self, index: int) -> dict:
        return self._setup(index)

    def launch(self, device: torch.device, name: str, grid: int, packed: Packed, stream: int) -> None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        functions = self._setup(index)
        with torch.cuda.device(index):
            self._check(self.lib.hipModuleLaunchKernel(functions[name], grid, 1, 1, THREADS, 1, 1,
                                                       0, ctypes.c_void_p(stream), packed.params,
                                                       None), f"hipModuleLaunchKernel({name})")
