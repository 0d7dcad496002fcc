"""Loads the kernel files in the mode that ``triton.language`` itself was built in.

``triton.jit`` decides at decoration time between a compiled ``JITFunction`` and an
``InterpretedFunction`` (``TRITON_INTERPRET=1``), and ``triton.language``'s own helpers
(``tl.sum``, ``tl.zeros``, ...) are decorated when Triton is first imported. One process
therefore runs in one mode: with ``TRITON_INTERPRET=1`` set before Triton is imported,
every kernel runs in the interpreter (CPU tensors: CI); without it, kernels compile for the
GPU. The kernel files are loaded here in that same mode, whatever the variable says later.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

KERNEL_FILES = ("k_encode", "k_inverse", "k_signs")
_HERE = Path(__file__).resolve().parent


def interpreted() -> bool:
    """Whether this process's Triton runs kernels in the interpreter."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    return not isinstance(tl.zeros, JITFunction)


@functools.lru_cache(maxsize=None)
def kernels() -> SimpleNamespace:
    """The kernel modules (``encode``, ``inverse``, ``signs``), built in the process's mode."""
    interpret = interpreted()
    modules: dict[str, ModuleType] = {}
    tag = "interp" if interpret else "jit"
    with _interpret_mode(interpret):
        for name in KERNEL_FILES:
            full = f"{__package__}._{tag}_{name}"
            spec = importlib.util.spec_from_file_location(full, _HERE / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[full] = module
            spec.loader.exec_module(module)
            modules[name.removeprefix("k_")] = module
    return SimpleNamespace(**modules)


@contextlib.contextmanager
def _interpret_mode(interpret: bool):
    """``triton.jit`` builds interpreted functions inside (``knobs`` since Triton 3.4, else
    the environment variable, which older versions read at decoration time)."""
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        with knobs.runtime.scope():
            knobs.runtime.interpret = interpret
            yield
        return
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved
