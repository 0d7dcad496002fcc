"""Routing by device through the dispatcher, and the defects the dispatch review found
(each test here failed on the code before per-device registration)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import distro_kernels as dk
from conftest import HAS_CPU, assert_same_bits, needs_cpu
from distro_kernels import dispatch, native_cpu, reference

ops = torch.ops.distro_kernels
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_schemas_carry_no_backend_argument():
    for name in ("dct", "idct", "compress", "decompress", "decompress_many", "demo_step_",
                 "demo_step_many_", "demo_step_coeffs_many_", "pack_signs", "unpack_signs"):
        schema = getattr(ops, name).default._schema
        assert "backend" not in [a.name for a in schema.arguments], name


@needs_cpu
def test_cpu_tensors_reach_the_native_kernels_without_a_backend_argument(monkeypatch):
    native = _spy(monkeypatch, native_cpu, "compress")
    eager = _spy(monkeypatch, reference, "compress")
    x = torch.randn(16, 16)
    ops.compress(x, 4, 8, "divisor")  # the raw op: only the dispatcher decides
    dk.compress(x, 4, 8)
    assert native == ["compress", "compress"] and eager == []
    dk.compress(x, 4, 8, backend="reference")  # the Python-level override
    assert native == ["compress", "compress"] and eager == ["compress"]


def test_meta_tensors_reach_the_fake_kernels(monkeypatch):
    eager = _spy(monkeypatch, reference, "decompress")
    i = torch.empty(3, 4, dtype=torch.int32, device="meta")
    v = torch.empty(3, 4, device="meta")
    y = ops.decompress([i], [v], [24, 8], 8, "mean", "f32", False, "divisor")
    assert y.device.type == "meta" and tuple(y.shape) == (24, 8) and eager == []


def test_other_devices_get_the_reference_and_info_says_what_runs_where():
    assert dispatch.resolve("auto", "xpu") is reference
    table = dk.info()["devices"]
    assert table["cpu"]["default"] == ("native" if HAS_CPU else "reference")
    assert "native" in table["cuda"]["available"] or "native" in table["cuda"]["missing"]
    assert table["meta"]["default"].startswith("fake")


def test_device_aliases_mean_native_on_that_device():
    if HAS_CPU:
        assert dispatch.resolve("cpu", "cpu") is native_cpu
        assert dispatch.resolve("native", "cpu") is native_cpu
    with pytest.raises(ValueError, match="backend 'cuda' runs on cuda tensors, got cpu tensors"):
        dispatch.resolve("cuda", "cpu")


# ----------------------------------------------------------------------------- findings


def _sign_payloads(shape=(64, 96), k=8, peers=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx, packed = [], []
    for _ in range(peers):
        i, v = dk.compress(torch.randn(shape, generator=g), k, 32, backend="reference")
        idx.append(i)
        packed.append(dk.pack_signs(v))
    return idx, packed


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu)])
@pytest.mark.parametrize("view", ["strided", "expand"])
def test_sign_bytes_as_views_decode_as_their_contents(backend, view):
    """Finding: strided or stride-0 (``expand``) packed sign bytes gave a different answer on
    the C++ path (only f32 values were made contiguous) and could read past the storage."""
    idx, packed = _sign_payloads()
    if view == "strided":  # every byte at an even position of a twice-as-long buffer
        views = []
        for p in packed:
            wide = torch.zeros(2 * p.numel(), dtype=torch.uint8)
            wide[::2] = p
            views.append(wide.reshape(-1)[::2])
    else:  # one byte repeated: a stride-0 view over a 1-byte storage
        views = [p[:1].expand(p.numel()) for p in packed]
    assert all(not v.is_contiguous() for v in views)
    dense = [v.contiguous() for v in views]
    shapes = [(64, 96)]
    got = dk.decompress_many([idx], [views], shapes, 32, value_codec="sign", sign=True, backend=backend)
    want = dk.decompress_many([idx], [dense], shapes, 32, value_codec="sign", sign=True,
                              backend="reference")
    assert_same_bits(got[0], want[0])
    one = dk.decompress(idx, views, shapes[0], 32, value_codec="sign", backend=backend)
    assert_same_bits(one, dk.decompress(idx, dense, shapes[0], 32, value_codec="sign",
                                        backend="reference"))


@pytest.mark.parametrize("backend", ["auto", "reference", pytest.param("cpu", marks=needs_cpu)])
def test_mixed_devices_are_refused(backend):
    """Finding: ``decompress([i_cpu, i_meta], ...)`` returned an uninitialised CPU tensor."""
    i = torch.tensor([[0, 3]], dtype=torch.int32)
    v = torch.tensor([[1.0, 2.0]])
    with pytest.raises(ValueError, match="all tensors must be on one device, got cpu, meta"):
        dk.decompress([i, i.to("meta")], [v, v.to("meta")], (8,), 8, backend=backend)
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        dk.decompress_many([[i, i.to("meta")]], [[v, v.to("meta")]], [(8,)], 8, backend=backend)
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        dk.demo_step_many_([torch.zeros(8), torch.zeros(8, device="meta")],
                           [torch.ones(8), torch.ones(8, device="meta")], k=2, chunk=8,
                           backend=backend)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu)])
@pytest.mark.parametrize("case", ["same", "overlap", "grad_is_state", "grad_overlaps_state"])
def test_aliased_state_is_refused_and_untouched(backend, case):
    """Finding: the same delta twice (or overlapping views) ran chunks of "different" tensors
    concurrently on the same memory."""
    base = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(1))
    other = torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    grads = [torch.ones(64, 64), torch.ones(64, 64)]
    if case == "same":
        deltas = [base[0], base[0]]
    elif case == "overlap":  # two 64x64 windows of one buffer, 32 rows apart
        flat = base.reshape(-1)
        deltas = [flat[: 64 * 64].view(64, 64), flat[32 * 64 : 96 * 64].view(64, 64)]
    elif case == "grad_is_state":
        deltas, grads = [base[0], other], [base[0], torch.ones(64, 64)]
    else:
        deltas, grads = [base[0], other], [torch.ones(64, 64), base.reshape(-1)[100:4196].view(64, 64)]
    before = base.clone(), other.clone()
    with pytest.raises(ValueError, match="share memory"):
        dk.demo_step_many_(deltas, grads, 0.9, 1.0, 8, 64, backend=backend)
    assert torch.equal(base, before[0]) and torch.equal(other, before[1])
    if case == "grad_is_state":
        with pytest.raises(ValueError, match="delta and grad share memory"):
            dk.demo_step_(base[0], base[0], 0.9, 1.0, 8, 64, backend=backend)


def test_disjoint_views_of_one_buffer_are_fine():
    base = torch.zeros(2, 64, 64)
    idx, _ = dk.demo_step_many_([base[0], base[1]], [torch.ones(64, 64), torch.ones(64, 64)],
                                0.9, 1.0, 4, 64)
    assert len(idx) == 2 and base.abs().sum() > 0


def _blocked_native_run(*pytest_args, env_extra=None):
    """pytest in a child whose import of the compiled extension fails (as if ``_C`` were
    never built), with ``CI=true``."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'distro_kernels._C':\n"
        "            raise ImportError('distro_kernels._C blocked by the test')\n"
        "        return None\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pytest\n"
        f"sys.exit(pytest.main({list(pytest_args)!r}))\n"
    )
    env = {**os.environ, "CI": "true", **(env_extra or {})}
    env.pop("DISTRO_KERNELS_REQUIRE", None)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_ci_fails_when_the_native_backend_is_missing():
    """Finding: with ``_C`` missing every native case silently disappeared and CI was green."""
    result = _blocked_native_run("-q", "-p", "no:cacheprovider", "tests/test_chunking.py")
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-2000:]
    assert "required backend(s) missing" in out and "native" in out, out[-2000:]


def test_outside_ci_a_missing_native_backend_only_skips():
    result = _blocked_native_run("-q", "-p", "no:cacheprovider", "tests/test_chunking.py",
                                 env_extra={"CI": "false"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
