"""Exchange with gloo collectives: ``all_gather`` the sizes, then the padded bytes.

**For trusted groups only.** gloo trusts every rank: a rank that sends a tensor larger than
the one it declared makes gloo's ``EnforceNotMet`` reach ``std::terminate`` in its receivers,
which kills them with SIGABRT (no Python code can catch it); gloo's ring ``all_gather`` also
has ranks forward each other's bytes, so one rank can hand different bytes to different
peers. Neither can be fixed above gloo. Use it where every rank runs your own code (one
cluster, one operator); with peers you do not control, use :class:`.store.StoreTransport`
with a manifest (the default exchange).

The fast path for healthy groups: the bytes move peer to peer (no central store) through
host memory, so CPU-only, NVIDIA and AMD machines mix freely. Every collective involves every
rank, so a dead peer makes every rank's collective fail (gloo notices a closed connection at
once; a stalled peer costs ``deadline`` seconds, the group timeout) and the group is
unusable afterwards. This transport then raises :class:`TransportError` naming the failure
(it never hangs past the deadline) and refuses further use.

Sizes over ``max_bytes`` (default: ``layout.max_payload_bytes()`` with ``layout=``, else
:data:`.store.DEFAULT_MAX_BYTES`) are refused before any buffer is sized from them: every rank
sees the same sizes, pads to the largest size within the limit, and a rank whose payload is
over the limit sends zeros and is left out by everyone. So one exchange allocates at most
``world_size * max_bytes``.
"""

from __future__ import annotations

import time
from datetime import timedelta

import torch
import torch.distributed as dist

from .result import ExchangeResult, TransportError
from .store import DEFAULT_MAX_BYTES


class GlooTransport:
    """``exchange(payload) -> ExchangeResult`` by two gloo ``all_gather`` calls (trusted
    groups only: see the module doc).

    ``group``: a gloo process group; by default a new one over all ranks with timeout
    ``deadline`` (every rank must construct the transport, as with any ``new_group``).
    """

    def __init__(self, group=None, *, deadline: float = 30.0, max_bytes: int | None = None,
                 layout=None, start_step: int = 0):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized")
        if group is None:
            group = dist.new_group(backend="gloo", timeout=timedelta(seconds=deadline))
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        if max_bytes is None:
            max_bytes = layout.max_payload_bytes() if layout is not None else DEFAULT_MAX_BYTES
        self.deadline, self.max_bytes = float(deadline), int(max_bytes)
        self.next_step = int(start_step)
        self.left_out: dict[int, str] = {}
        self.last: ExchangeResult | None = None
        self.broken: str | None = None

    def _gather(self, tensor: torch.Tensor, what: str, start: float) -> list[torch.Tensor]:
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        try:
            work = dist.all_gather(out, tensor, group=self.group, async_op=True)
            remaining = max(0.001, self.deadline - (time.monotonic() - start))
            work.wait(timeout=timedelta(seconds=remaining))
        except Exception as e:  # gloo raises RuntimeError/DistError subclasses
            self.broken = f"{what} all_gather failed: {type(e).__name__}: {str(e)[:300]}"
            raise TransportError(self.broken) from e
        return out

    def exchange(self, payload: bytes, *, step: int | None = None) -> ExchangeResult:
        if self.broken:
            raise TransportError(f"gloo group unusable after an earlier failure: {self.broken}")
        start = time.monotonic()
        step = self.next_step if step is None else int(step)
        self.next_step = step + 1
        n = len(payload)
        sizes = [int(s) for s in self._gather(torch.tensor([n], dtype=torch.int64), "size", start)]
        ok = [0 <= s <= self.max_bytes for s in sizes]
        longest = max([s for s, good in zip(sizes, ok) if good], default=0)
        buf = torch.zeros(max(longest, 1), dtype=torch.uint8)
        if ok[self.rank] and n:
            buf[:n] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        slots = self._gather(buf, "data", start)
        received, left_out = {}, {}
        for p, (s, good) in enumerate(zip(sizes, ok)):
            if good:
                received[p] = slots[p][:s].numpy().tobytes()
            else:
                left_out[p] = f"over limit: {s} bytes > max_bytes {self.max_bytes}"
        result = ExchangeResult(received, left_out, step, time.monotonic() - start)
        self.left_out, self.last = result.left_out, result
        return result
