"""The tuned-settings cache: the best settings ``profile --tune`` found, per device key and
backend, and the reader that backends (and the profiler) apply them with.

File: ``$DISTRO_KERNELS_CACHE/tuning.json`` if that variable is set, else
``$XDG_CACHE_HOME/distro_kernels/tuning.json`` (``~/.cache/...``). Plain JSON, written
atomically (a temporary file renamed over the old one); a missing or unreadable file means
"nothing tuned" (with a warning for an unreadable one), never an error. Only the settings in
``TUNABLES`` are read back, each checked against its allowed values, so a hand-edited or
stale file cannot set anything else.

    {"schema": 1, "devices": {"nvidia-h200-sm_90": {"triton": {"settings": {"ENCODE_KB": 32},
                                                               "measured": {...}}}}}
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

SCHEMA = 1
ENV = "DISTRO_KERNELS_CACHE"
MAX_FILE_BYTES = 4 << 20


def _pow2(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(1 << i for i in range(lo.bit_length() - 1, hi.bit_length()))


# backend -> setting -> allowed values (None: checked by a function below)
TUNABLES: dict[str, dict[str, tuple[int, ...] | None]] = {
    "native": {"threads": None},  # the native CPU kernels' thread count (CPU devices only)
    "triton": {
        "ENCODE_KB": (8, 16, 32),
        "ENCODE_WARPS_LARGE": (2, 4, 8, 16),
        "ENCODE_WARPS_ROWS": (2, 4, 8, 16),
        "WARPS_LARGE": (2, 4, 8, 16),
        "WARPS_SMALL": (1, 2, 4, 8),
        "ROWS_TILE": _pow2(512, 8192),
    },
}


def cache_path() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV]) / "tuning.json"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "distro_kernels" / "tuning.json"


def _valid(backend: str, name: str, value) -> bool:
    allowed = TUNABLES.get(backend, {}).get(name, ())
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    if allowed is None:  # threads
        return 1 <= value <= 4096
    return value in allowed


def load(path: Path | None = None) -> dict:
    """The whole cache (``{"schema": 1, "devices": {...}}``); empty if missing or unreadable."""
    path = Path(path) if path is not None else cache_path()
    empty = {"schema": SCHEMA, "devices": {}}
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            warnings.warn(f"{path}: over {MAX_FILE_BYTES} bytes, ignored", stacklevel=2)
            return empty
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return empty
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        warnings.warn(f"tuning cache {path} unreadable ({error}); using defaults", stacklevel=2)
        return empty
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("devices"), dict):
        warnings.warn(f"tuning cache {path} has another schema; using defaults", stacklevel=2)
        return empty
    return doc


def settings(backend: str, device_key: str, path: Path | None = None) -> dict:
    """The valid tuned settings of ``backend`` on ``device_key`` (``{}`` if none)."""
    entry = load(path)["devices"].get(device_key, {})
    found = entry.get(backend, {}).get("settings", {}) if isinstance(entry, dict) else {}
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if _valid(backend, k, v)}


def store(device_key: str, backend: str, best: dict, measured: dict | None = None,
          path: Path | None = None) -> Path:
    """Records ``best`` for ``(device_key, backend)``, keeping every other entry."""
    bad = {k: v for k, v in best.items() if not _valid(backend, k, v)}
    if bad:
        raise ValueError(f"not tunable settings of {backend}: {bad}")
    path = Path(path) if path is not None else cache_path()
    doc = load(path)
    doc["devices"].setdefault(device_key, {})[backend] = {"settings": dict(best), "measured": measured or {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tuning-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------ applying settings


def vendor() -> str:
    return "hip" if torch.version.hip else "cuda"


def set_module_settings(module, values: dict) -> dict:
    """Sets a backend module's tunable constants; a per-vendor dict constant (the Triton
    encoder's ``ENCODE_WARPS_LARGE``) gets this vendor's entry. Returns the old values."""
    old = {}
    for name, value in values.items():
        current = getattr(module, name)
        if isinstance(current, dict):
            old[name] = current.get(vendor())
            setattr(module, name, {**current, vendor(): value})
        else:
            old[name] = current
            setattr(module, name, value)
    return old


def module_settings(module, names) -> dict:
    out = {}
    for name in names:
        current = getattr(module, name)
        out[name] = current.get(vendor()) if isinstance(current, dict) else current
    return out


def apply(backend: str, device_key: str, module=None, path: Path | None = None) -> dict:
    """Applies the cached settings of ``backend`` for ``device_key``; returns what it set.
    ``native`` (CPU): ``torch.set_num_threads``; ``triton``: the constants of its backend module."""
    found = settings(backend, device_key, path)
    if not found:
        return {}
    if backend == "native":
        torch.set_num_threads(found["threads"])
        return found
    if backend == "triton":
        if module is None:
            from ..triton import impl as module
        set_module_settings(module, found)
        return found
    return {}


_applied: set = set()


def apply_once(backend: str, module, device: torch.device) -> None:
    """For a backend's first kernel call on ``device``: applies that device's tuned settings
    once per process (cheap afterwards). The Triton backend can call this from ``_kernels``."""
    from .device import describe

    key = (backend, id(module), str(device))
    if key in _applied:
        return
    _applied.add(key)
    apply(backend, describe(device)["key"], module)


def apply_all(device: torch.device, device_key: str, backends: list[str]) -> dict:
    """What the profiler runs with: every cached setting for the backends it profiles."""
    out = {}
    for backend in backends:
        if backend in TUNABLES and (backend != "native" or device.type == "cpu"):
            applied = apply(backend, device_key)
            if applied:
                out[backend] = applied
    return out
