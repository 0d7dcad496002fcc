"""The module-level ``exchange``: a :class:`StoreTransport` on the default process group."""

from __future__ import annotations

import threading

from .result import ExchangeResult
from .store import StoreTransport

_lock = threading.Lock()
_default: StoreTransport | None = None


def default_transport(**kwargs) -> StoreTransport:
    """The process-wide transport over ``torch.distributed``'s default group store, made on
    first use (``kwargs`` as for :class:`StoreTransport`, e.g. ``deadline=10.0``; they apply
    only when it is made). Call ``init_process_group`` (gloo, or any backend) first."""
    global _default
    with _lock:
        if _default is None:
            _default = StoreTransport.from_process_group(**kwargs)
        return _default


def exchange(payload_bytes: bytes, *, step: int | None = None) -> ExchangeResult:
    """Send this peer's bytes, get every in-step peer's: ``{peer_id: bytes}`` with
    ``.left_out``. See :class:`StoreTransport`."""
    return default_transport().exchange(payload_bytes, step=step)


def reset_default_transport() -> None:
    """Forget the default transport (e.g. after ``destroy_process_group``)."""
    global _default
    with _lock:
        _default = None
