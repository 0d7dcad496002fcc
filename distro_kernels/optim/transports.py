"""The optimizer's seam to the network.

A transport is anything with ``rank``, ``world_size`` and ``exchange(payload: bytes, *,
step=None) -> {peer_id: bytes}`` (this peer's own bytes included when it made the step),
optionally with ``.left_out`` (``{peer_id: reason}``) on the result or the transport. The
project's :mod:`distro_kernels.transport` (``StoreTransport``, ``GlooTransport``,
``LocalNetwork``) fits; so does anything written to this shape.
"""

from __future__ import annotations

from typing import Protocol

import torch.distributed as dist


class Transport(Protocol):
    rank: int
    world_size: int

    def exchange(self, payload: bytes, *, step: int | None = None) -> dict[int, bytes]: ...


class LoopbackTransport:
    """A single peer: the exchange returns only its own payload."""

    rank = 0
    world_size = 1

    def __init__(self) -> None:
        self.left_out: dict[int, str] = {}

    def exchange(self, payload: bytes, *, step: int | None = None) -> dict[int, bytes]:
        return {0: bytes(payload)}


def default_transport(process_group=None, deadline: float = 30.0, *, layout=None,
                      manifest=None, signing_key=None):
    """``torch.distributed`` initialized: the project's store exchange on its group (per-step
    deadline; every read bounded by ``layout``'s largest payload; signed and committed by the
    manifest's coordinator when ``manifest`` is given). Otherwise: a single loopback peer."""
    if dist.is_available() and dist.is_initialized():
        from ..transport import StoreTransport

        return StoreTransport.from_process_group(process_group, deadline=deadline, layout=layout,
                                                 manifest=manifest, signing_key=signing_key)
    if process_group is not None:
        raise RuntimeError("process_group given but torch.distributed is not initialized")
    return LoopbackTransport()
