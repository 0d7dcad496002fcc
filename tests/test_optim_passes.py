"""The optimizer's native CPU passes (``csrc/cpu/passes.cpp``): the non-finite check against
``torch.isfinite``, and the sign-SGD apply bit for bit against torch's ``mul_`` + ``add_``; and
``DeMo`` on them gives the same parameters as on torch's ops (the ``reference`` backend)."""

import pytest
import torch

import distro_kernels as dk
from distro_kernels import native_cpu
from distro_kernels.optim import DeMo, NonFiniteGradientError

pytestmark = pytest.mark.skipif(dk.info()["cpu_kernel"] is None, reason="needs the cpu backend")

SIZES = [1, 7, 8, 9, 31, 65536, 65537, 1 << 20, (1 << 20) + 3]  # tails, one thread, two threads
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_finite_tensors_pass(dtype, n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g).to(dtype)
    info = torch.finfo(dtype)
    x[0] = info.max  # the largest finite value, the smallest subnormal: both finite
    x[-1] = -info.smallest_normal / 4
    assert native_cpu.has_nonfinite(x) is False


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_any_nonfinite_value_is_found(dtype, n, bad):
    g = torch.Generator().manual_seed(3 * n + 1)
    for where in {0, n - 1, int(torch.randint(n, (1,), generator=g))}:
        x = torch.randn(n, generator=g).to(dtype)
        x[where] = bad
        assert native_cpu.has_nonfinite(x) is True, where
        assert native_cpu.has_nonfinite(x) == (not bool(torch.isfinite(x).all()))


def test_nan_payloads_and_signs_are_found():
    x = torch.zeros(100, dtype=torch.float32)
    x.view(torch.int32)[57] = 0x7F800001  # a signalling NaN payload
    assert native_cpu.has_nonfinite(x)
    x.view(torch.int32)[57] = -0x00000001  # 0xffffffff: a negative quiet NaN
    assert native_cpu.has_nonfinite(x)
    x.view(torch.int32)[57] = 0x7F7FFFFF  # float max: finite
    assert not native_cpu.has_nonfinite(x)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("keep", [None, 1.0 - 1e-3 * 0.1, 0.5])
def test_apply_is_torch_bit_for_bit_on_signs(n, keep):
    g = torch.Generator().manual_seed(n + 11)
    p = torch.randn(n, generator=g) * 0.02
    p[:: max(1, n // 5)] = 0.0
    p[1 :: max(2, n // 3)] = -0.0
    update = torch.randn(n, generator=g).sign()  # +-1 and (rarely) 0
    update[:: max(3, n // 7)] = 0.0
    lr = 1e-3
    expected = p.clone()
    if keep is not None:
        expected.mul_(keep)
    expected.add_(update, alpha=-lr)
    version = p._version
    native_cpu.apply_update_(p, update, keep, -lr)
    assert torch.equal(p.view(torch.int32), expected.view(torch.int32))
    assert p._version > version  # autograd sees the in-place write


def test_apply_after_use_in_a_graph_is_caught_by_autograd():
    p = torch.nn.Parameter(torch.randn(16))
    loss = (p * p).sum()  # saves p for backward
    with torch.no_grad():
        native_cpu.apply_update_(p, torch.ones(16), None, -1e-3)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def model(seed=0):
    shapes = [(128, 192), (97,), (64, 65), (1,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(seed + i)) * 0.02)
              for i, s in enumerate(shapes)]
    return params


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("momentum", ["param", "dct"])
def test_demo_on_native_passes_matches_torch_ops(weight_decay, momentum):
    runs = {}
    for backend in ("cpu", "reference"):
        params = model()
        opt = DeMo(params, lr=3e-3, weight_decay=weight_decay, backend=backend, momentum=momentum)
        for step in range(3):
            for i, p in enumerate(params):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * step + i))
            opt.step()
        runs[backend] = [p.detach().clone() for p in params]
    for a, b in zip(runs["cpu"], runs["reference"]):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_demo_native_check_names_the_parameter(dtype):
    params = [torch.nn.Parameter(p.detach().to(dtype)) for p in model()]
    opt = DeMo(params, lr=1e-3, backend="cpu")
    for p in params:
        p.grad = torch.randn(p.shape).to(dtype)
    params[2].grad.view(-1)[-1] = float("nan")
    before = [p.detach().clone() for p in params]
    with pytest.raises(NonFiniteGradientError, match=r"group 0, parameter 2 .*0 inf, 1 NaN"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_bad_arguments_are_refused():
    ext = native_cpu.cpu_ext
    x = torch.zeros(4)
    assert ext.has_nonfinite(x.data_ptr(), 7, 4, 1)[0] == 1  # unknown dtype code
    assert ext.has_nonfinite(x.data_ptr(), 0, -1, 1)[0] == 1
    assert ext.has_nonfinite(0, 0, 4, 1)[0] == 1
    assert ext.has_nonfinite(0, 0, 0, 1) == (0, 0)  # nothing to read
    assert ext.apply_update(x.data_ptr(), 0, 4, 1.0, 0, -1.0, 1) == 1
    assert ext.apply_update(x.data_ptr(), x.data_ptr(), -2, 1.0, 0, -1.0, 1) == 1
