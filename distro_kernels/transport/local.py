"""In-process transports for tests and simulations: the same store protocol over a
``torch.distributed.HashStore`` (thread-safe, in memory)."""

from __future__ import annotations

import time

import torch.distributed as dist

from .result import ExchangeResult
from .store import StoreTransport


class LocalNetwork:
    """``n`` simulated peers in one process.

    - Threads: ``net.transport(rank)`` gives each thread a :class:`StoreTransport` on one
      shared in-memory store (deadlines, late and missing peers behave as over TCP).
    - One thread: ``net.exchange_all({peer: bytes or None}, step)`` runs a whole step
      synchronously; ``None`` (or an absent peer) is a peer that sent nothing. It returns
      every peer's :class:`ExchangeResult`, senders and non-senders alike.
    """

    def __init__(self, n: int, *, deadline: float = 5.0, max_bytes: int | None = None,
                 namespace: str = "local", **kwargs):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self.store = dist.HashStore()
        self._kw = dict(deadline=deadline, max_bytes=max_bytes, namespace=namespace, **kwargs)
        self._peers = [StoreTransport(self.store, r, n, **self._kw) for r in range(n)]

    def transport(self, rank: int) -> StoreTransport:
        """The transport of peer ``rank`` (use one per thread)."""
        return self._peers[rank]

    def exchange_all(
        self, payloads: dict[int, bytes | None], step: int
    ) -> dict[int, ExchangeResult]:
        """Every peer in ``payloads`` that has bytes posts them; then every peer collects
        (no waiting: the roster is whoever posted)."""
        for p, data in sorted(payloads.items()):
            if not 0 <= p < self.n:
                raise ValueError(f"peer {p} not in [0, {self.n})")
            if data is not None:
                self._peers[p].post(data, step)
        now = time.monotonic()
        out = {}
        for r in range(self.n):
            peer = self._peers[r]
            out[r] = peer.collect(step, now, own=payloads.get(r))
            peer.next_step = step + 1
            peer._cleanup(step - peer.retain_steps)
        return out
