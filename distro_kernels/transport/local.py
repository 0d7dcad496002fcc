"""In-process transports for tests and simulations: the same store protocol over a
``torch.distributed.HashStore`` (thread-safe, in memory)."""

from __future__ import annotations

import time

import torch.distributed as dist

from .result import ExchangeResult
from .store import DEFAULT_MAX_BYTES, StoreTransport


class LocalNetwork:
    """``n`` simulated peers in one process.

    - Threads: ``net.transport(rank)`` gives each thread a :class:`StoreTransport` on one
      shared in-memory store (deadlines, late and missing peers behave as over TCP).
    - One thread: ``net.exchange_all({peer: bytes or None}, step)`` runs a whole step
      synchronously; ``None`` (or an absent peer) is a peer that sent nothing. It returns
      every peer's :class:`ExchangeResult`, senders and non-senders alike.

    ``max_bytes`` defaults to ``layout.max_payload_bytes()`` with ``layout=``, else
    :data:`~.store.DEFAULT_MAX_BYTES`. Signed runs: ``manifest=`` and ``signing_keys=``
    (``{peer: private key}``, every peer's: the network plays all of them).
    """

    def __init__(self, n: int, *, deadline: float = 5.0, max_bytes: int | None = None,
                 namespace: str = "local", layout=None, manifest=None, signing_keys=None,
                 **kwargs):
        if n < 1:
            raise ValueError("n must be >= 1")
        if max_bytes is None:
            max_bytes = layout.max_payload_bytes() if layout is not None else DEFAULT_MAX_BYTES
        self.n = n
        self.store = dist.HashStore()
        self.manifest = manifest
        keys = signing_keys or {}
        self._kw = dict(deadline=deadline, max_bytes=max_bytes, namespace=namespace,
                        manifest=manifest, **kwargs)
        self._peers = [StoreTransport(self.store, r, n, signing_key=keys.get(r), **self._kw)
                       for r in range(n)]

    def transport(self, rank: int) -> StoreTransport:
        """The transport of peer ``rank`` (use one per thread)."""
        return self._peers[rank]

    def exchange_all(
        self, payloads: dict[int, bytes | None], step: int
    ) -> dict[int, ExchangeResult]:
        """Every peer in ``payloads`` that has bytes posts them; then every peer gathers and
        publishes what it holds, the coordinator commits, and every peer collects (no
        waiting: the step is whoever posted)."""
        for p, data in sorted(payloads.items()):
            if not 0 <= p < self.n:
                raise ValueError(f"peer {p} not in [0, {self.n})")
            if data is not None:
                self._peers[p].post(data, step)
        now = time.monotonic()
        coord = self._peers[0].coordinator
        order = [r for r in range(self.n) if r != coord] + [coord]
        for r in order:
            peer = self._peers[r]
            peer.gather(step, now)
            peer.post_have(step)
        self._peers[coord].decide(step, now)
        out = {}
        for r in order:  # the coordinator last: it waits for nobody's done
            peer = self._peers[r]
            try:
                out[r] = peer.finish(step, now)
            finally:
                peer.next_step = step + 1
                peer._steps.pop(step, None)
                peer._cleanup(step - peer.retain_steps)
        return dict(sorted(out.items()))
