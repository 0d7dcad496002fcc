"""``distro_kernels/cuda/driver.py`` end to end without a GPU: the CUDA and HIP drivers talk
through ctypes to ``tests/fake_gpu_driver.c``, a stand-in for ``libcuda.so.1`` /
``libamdhip64.so`` that forwards each launch to the host emulation of the kernels. This runs
the real driver calls (initialisation, primary context push/pop, module load, function lookup,
the ``void**`` parameter array, grid/block/stream arguments, error names) on CPU memory; only
the GPU itself is missing."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import types
from pathlib import Path

import pytest
import torch

from distro_kernels import reference
from distro_kernels.chunking import chunk_plan
from distro_kernels.cuda import backend as cb
from distro_kernels.cuda import driver, runtime, sim
from distro_kernels.cuda.launch import Packed

HERE = Path(__file__).resolve().parent
CI = os.environ.get("CI") == "true"
STREAM = 0xBEEF


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None or shutil.which("g++") is None:
        if CI:
            pytest.fail("CI=true but gcc/g++ are missing")
        pytest.skip("no C compiler for the fake driver")
    sim_path = sim.build()
    out = tmp_path_factory.mktemp("fake") / "libfakegpu.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(HERE / "fake_gpu_driver.c"), "-ldl"],
                   check=True, capture_output=True, text=True)
    os.environ["DK_FAKE_SIM"] = str(sim_path)
    return ctypes.CDLL(str(out))


class _OnDevice:
    """Adapts a GPU driver to CPU tensors: launches as if on cuda:0, on stream STREAM."""

    def __init__(self, gpu):
        self.gpu = gpu

    def launch(self, device, name, grid, packed, stream):
        self.gpu.launch(torch.device("cuda", 0), name, grid, packed, STREAM)


@pytest.fixture
def through(fake):
    previous = runtime.sim()

    def use(gpu):
        runtime.set_sim(_OnDevice(gpu))
        return gpu

    yield use
    runtime.set_sim(previous)


def _ops_match_reference():
    plans = [chunk_plan((64, 128), 64), chunk_plan((61,), 64)]
    xs = [torch.randn(p.shape) for p in plans]
    i, v = cb.compress(xs[0], plans[0], 16)
    ri, rv = reference.compress(xs[0], plans[0], 16)
    assert torch.equal(i, ri)
    deltas = [x.clone() for x in xs]
    cb.demo_step_many_(deltas, [torch.randn(p.shape) for p in plans], plans, 0.9, 0.1, 8)
    got = cb.decompress([i, ri], [v, rv], plans[0], "mean", "f32", True)
    assert torch.equal(got, reference.decompress([i, ri], [v, rv], plans[0], "mean", "f32", True))
    values = torch.randn(1001)
    assert torch.equal(cb.pack_signs(values), reference.pack_signs(values))


def test_cuda_driver_runs_the_kernels(fake, through):
    gpu = through(driver.CudaDriver(b"FATBIN-image", lib=fake))
    _ops_match_reference()
    assert set(gpu.functions(0)) == {"dk_encode", "dk_decompress", "dk_idct", "dk_pack_signs",
                                     "dk_unpack_signs"}
    assert ctypes.c_uint.in_dll(fake, "fake_launches").value == 4  # one launch per op
    assert ctypes.c_uint.in_dll(fake, "fake_last_block").value == 256
    assert ctypes.c_uint.in_dll(fake, "fake_last_shared").value == 0
    assert ctypes.c_void_p.in_dll(fake, "fake_last_stream").value == STREAM
    assert ctypes.c_int.in_dll(fake, "fake_push_depth").value == 0  # every push popped


def test_cuda_driver_reports_driver_errors(fake):
    bad = driver.CudaDriver(b"not-a-fatbin", lib=fake)
    with pytest.raises(RuntimeError, match="cuModuleLoadData.*CUDA_ERROR_INVALID_IMAGE"):
        bad.functions(0)
    good = driver.CudaDriver(b"FATBIN", lib=fake)
    with pytest.raises(RuntimeError, match=r"cuDeviceGet failed.*\(101\)"):
        good.functions(1)
    assert ctypes.c_int.in_dll(fake, "fake_push_depth").value == 0


def test_cuda_driver_raises_on_a_failed_launch(fake, monkeypatch):
    gpu = driver.CudaDriver(b"FATBIN", lib=fake)
    monkeypatch.setattr(driver, "THREADS", 128)  # the emulation refuses any block size but 256
    values, out = torch.ones(8), torch.empty(1, dtype=torch.uint8)
    packed = Packed("dk_pack_signs", (values.data_ptr(), 8, out.data_ptr(), 1))
    with pytest.raises(RuntimeError, match=r"cuLaunchKernel\(dk_pack_signs\) failed: CUDA_ERROR_LAUNCH_FAILED"):
        gpu.launch(torch.device("cuda", 0), "dk_pack_signs", 1, packed, 0)
    assert ctypes.c_int.in_dll(fake, "fake_push_depth").value == 0


def test_hip_driver_runs_the_kernels(fake, through, monkeypatch):
    props = types.SimpleNamespace(gcnArchName="gfx90a:sramecc+:xnack-")
    monkeypatch.setattr(driver.torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(driver.torch.cuda, "device", lambda index: contextlib.nullcontext())
    through(driver.HipDriver({"gfx90a": b"\x7fELF-code-object"}, lib=fake))
    _ops_match_reference()
    assert ctypes.c_void_p.in_dll(fake, "fake_last_stream").value == STREAM
    other = driver.HipDriver({"gfx942": b"\x7fELF"}, lib=fake)
    with pytest.raises(RuntimeError, match=r"no HIP code object for gfx90a \(built: \['gfx942'\]\)"):
        other.functions(0)
    broken = driver.HipDriver({"gfx90a": b"garbage"}, lib=fake)
    with pytest.raises(RuntimeError, match="hipModuleLoadData failed: hipErrorInvalidImage"):
        broken.functions(0)
