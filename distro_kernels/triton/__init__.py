"""Optional Triton backend (``backend="triton"``): fused encode and bit-exact decode kernels.

Importing this package never fails. With Triton importable it registers ``"triton"`` for
CUDA tensors (NVIDIA and ROCm); without it, ``dispatch.unavailable["triton"]`` says why.
:func:`enable_interpreter` also registers it for CPU tensors, where every kernel runs in
Triton's interpreter (CI's way to test the kernels without a GPU); that needs
``TRITON_INTERPRET=1`` set before Triton is first imported (one mode per process).
"""

from __future__ import annotations

from .. import dispatch

TRITON_ERROR: str | None = None
try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except Exception as exc:  # ImportError, or a broken install
    TRITON_ERROR = f"triton not importable ({type(exc).__name__}: {exc}); pip install 'distro_kernels[triton]'"
    dispatch.mark_unavailable("triton", TRITON_ERROR)
else:
    from . import impl

    dispatch.register("triton", impl, ("cuda",))


def enable_interpreter() -> None:
    """Also run ``backend="triton"`` on CPU tensors, through Triton's interpreter (slow; tests).

    Needs ``TRITON_INTERPRET=1`` in the environment before Triton was first imported.
    """
    if TRITON_ERROR is not None:
        raise RuntimeError(TRITON_ERROR)
    from ._loader import interpreted

    if not interpreted():
        raise RuntimeError("Triton was imported without TRITON_INTERPRET=1; the interpreter is off")
    dispatch.register("triton", impl, ("cuda", "cpu"))
