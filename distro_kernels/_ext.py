"""Loads the compiled CPU extension if it is there; records why not if it is not."""

from __future__ import annotations

try:
    from . import _C as cpu_ext  # type: ignore[attr-defined]

    CPU_EXT_ERROR: str | None = None
except ImportError as exc:
    cpu_ext = None
    missing = "_C" in str(exc) and "cannot import name" in str(exc)
    CPU_EXT_ERROR = (
        "compiled extension not built (install with `pip install .` or `pip install -e .`)"
        if missing
        else f"compiled extension not importable ({type(exc).__name__}: {exc})"
    )
except Exception as exc:  # a broken or incompatible binary
    cpu_ext = None
    CPU_EXT_ERROR = f"compiled extension not importable ({type(exc).__name__}: {exc})"
