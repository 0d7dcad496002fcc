"""Loads the compiled CPU extension if it is there; records why not if it is not."""

from __future__ import annotations

try:
    from . import _C as cpu_ext  # type: ignore[attr-defined]

    CPU_EXT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken/incompatible binary
    cpu_ext = None
    CPU_EXT_ERROR = f"{type(exc).__name__}: {exc}"
