"""Shared fixtures for the ops test suite: backends, shapes, seeded inputs, hypothesis profile."""

from __future__ import annotations

import os
import sys

import pytest
import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from hypothesis import HealthCheck, settings  # noqa: E402

from distro_kernels import dispatch  # noqa: E402

# "ci" (default) keeps the whole suite fast on two cores; "thorough" for local soak runs:
#   DISTRO_HYPOTHESIS_PROFILE=thorough python -m pytest tests/
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("DISTRO_HYPOTHESIS_PROFILE", "ci"))



# Implementations that run on CPU tensors (this suite's tensors), as registered when the suite
# is collected: ``reference`` always, ``native`` (the C++ kernels) once built. (``triton`` runs
# CPU tensors only in its interpreter, covered by its own subprocess test.)
BACKENDS = [name for name in dispatch.available() if "cpu" in dispatch.device_types(name)]
HAS_CPU = "native" in BACKENDS  # the native CPU kernels are built and loaded
CPU_SKIP_REASON = (
    "native CPU kernels not available: "
    + dispatch.unavailable.get("native:cpu", "not registered")
    + " (build them with `pip install --no-build-isolation -e .`)"
)
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason=CPU_SKIP_REASON)


def required_backends() -> list[str]:
    """What this run must test: ``DISTRO_KERNELS_REQUIRE`` (comma-separated), or under CI
    (``CI=true``) the native CPU kernels and Triton. A missing one fails the run: CI must
    never go green because every case of a backend silently disappeared."""
    names = os.environ.get("DISTRO_KERNELS_REQUIRE")
    if names is None:
        names = "native,triton" if os.environ.get("CI", "").lower() == "true" else ""
    return [n.strip() for n in names.split(",") if n.strip()]


def missing_backends(names) -> dict[str, str]:
    from distro_kernels import triton as triton_kernels

    missing = {}
    for name in names:
        if name == "native" and not HAS_CPU:
            missing[name] = CPU_SKIP_REASON
        elif name == "triton" and triton_kernels.TRITON_ERROR is not None:
            missing[name] = triton_kernels.TRITON_ERROR
        elif name not in ("native", "triton"):
            missing[name] = "unknown name (expected native or triton)"
    return missing


def pytest_configure(config):
    missing = missing_backends(required_backends())
    if missing:
        lines = "; ".join(f"{name}: {why}" for name, why in missing.items())
        raise pytest.UsageError(f"required backend(s) missing, refusing to run: {lines}")


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    """Every implementation that runs CPU tensors (``reference`` always; ``native`` once built)."""
    return request.param


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def randn(shape, seed: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Seeded normal samples with a per-tensor random log-scale spread (not just N(0, 1))."""
    g = gen(seed)
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float64) * scale
    return x.to(dtype)


# Shapes covering every mode and awkward chunking: 0-d, 1-D, 2-D with prime and awkward
# dims, stacked 3-D/4-D, size-1 dims, dims > chunk with small largest divisors.
ODD_SHAPES = [
    (),
    (1,),
    (7,),
    (97,),
    (130,),
    (1, 1),
    (1, 61),
    (61, 1),
    (29, 64),
    (97, 61),
    (64, 64),
    (6, 130),
    (3, 5, 7),
    (2, 13, 26),
    (2, 1, 3, 8),
]
CHUNKS = [8, 16, 48, 64]


def rel_err(a, b) -> float:
    """``||a - b|| / ||b||`` in float64 (0 when both are 0)."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = np.linalg.norm(b)
    num = np.linalg.norm(a - b)
    return 0.0 if num == 0 else float(num / den) if den else float("inf")


def f32_bits(t: torch.Tensor) -> torch.Tensor:
    """The int32 bit patterns of a float32 tensor (for bit-exact comparisons)."""
    assert t.dtype == torch.float32, t.dtype
    return t.contiguous().view(torch.int32)


def assert_same_bits(got: torch.Tensor, expected) -> None:
    """Bitwise equality of a float32 tensor with a float32 tensor or numpy array, with a
    readable report of the first mismatches."""
    import numpy as np

    exp = expected if isinstance(expected, torch.Tensor) else torch.from_numpy(
        np.array(expected, dtype=np.float32, order="C", copy=True)  # keeps 0-d as 0-d
    )
    assert got.dtype == torch.float32, got.dtype
    assert tuple(got.shape) == tuple(exp.shape), (tuple(got.shape), tuple(exp.shape))
    gb, eb = f32_bits(got).reshape(-1), f32_bits(exp).reshape(-1)
    bad = torch.nonzero(gb != eb).flatten()
    if bad.numel():
        first = bad[:5].tolist()
        pairs = [(i, got.reshape(-1)[i].item(), exp.reshape(-1)[i].item()) for i in first]
        raise AssertionError(f"{bad.numel()} of {gb.numel()} elements differ in bits; "
                             f"(flat index, got, expected): {pairs}")


def shapes_strategy(max_numel: int = 6000, max_ndim: int = 3):
    """Hypothesis shapes: 0-d to ``max_ndim``-d, small and awkward dims (primes, 1, > 64)."""
    from hypothesis import strategies as st

    dim = st.one_of(
        st.integers(1, 70),
        st.sampled_from([1, 2, 61, 64, 65, 96, 97, 101, 127, 128, 130]),
    )
    return st.lists(dim, min_size=0, max_size=max_ndim).map(tuple).filter(
        lambda s: _numel(s) <= max_numel
    )


def _numel(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def seed_of(*parts) -> int:
    """A stable seed from a test's parameters (reproducible across runs, unlike ``hash``)."""
    import zlib

    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF
