"""Exchange through a ``torch.distributed`` key-value store, tolerating missing peers.

Why a store and not a gloo collective: a gloo ``all_gather`` involves every rank; if one
process dies, every other rank's collective fails (or, for a stalled peer, blocks until the
group timeout) and the process group cannot be used again, and a new group needs every
member to join. A store (``dist.TCPStore``, the default group's store, or
``dist.HashStore`` in one process) lets each peer post its bytes and lets the others wait
for each key with their own deadline: a missing peer costs the others at most the deadline,
and the next step works as before. See :mod:`.gloo` for the collective alternative.

Protocol for step ``s`` (keys under ``namespace/s/``), on every peer:

1. ``post``: write the payload in pieces of at most ``piece_bytes`` (TCPStore refuses
   values over 8 MiB) at ``data/<rank>/<i>``, then the size (u64 LE) at ``size/<rank>``,
   then ``add(count, 1)``.
2. Wait until ``count`` reaches ``world_size`` or the step's roster exists or the deadline
   (``deadline`` seconds after this peer entered ``exchange``) passes.
3. Close the step: the set of peers whose ``size`` key exists now, written with
   ``compare_set(roster, "", ...)``. The store applies the first write only, and every peer
   reads back that one roster, so **all peers agree on who is in the step** even when a peer
   posts right at a deadline (a late peer finds itself out of the roster and leaves its own
   payload out too, so its aggregate still matches everyone else's).
4. For each roster peer: read the size, refuse it above ``max_bytes`` (before reading the
   data), read the pieces, check their lengths.
5. Delete this peer's keys of step ``s - retain_steps`` (a peer lagging by more steps than
   that is out of the run anyway).

Trust: payload bytes are untrusted (the receiver parses them with
``wire.Payload.from_bytes``); the store itself and the peers' keys are trusted not to be
overwritten by another peer (TCPStore has no access control). The store must outlive any
one peer: host it in the launcher (torchrun's agent store, or a ``TCPStore`` server in the
parent process as the tests do) rather than in a rank that may die.
"""

from __future__ import annotations

import struct
import time
from datetime import timedelta

import torch.distributed as dist

from .result import ExchangeResult, TransportError

_U64 = struct.Struct("<Q")
_PIECE_MAX = 8 * 1024 * 1024 - 4096  # TCPStore's libuv server refuses larger messages


class StoreTransport:
    """Per-step exchange of variable-length bytes through a ``torch.distributed.Store``.

    ``exchange(payload, step=None) -> ExchangeResult`` (a ``{peer_id: bytes}`` dict with
    ``left_out``). ``step`` defaults to an internal counter (``start_step``, +1 per call), so
    all peers must call ``exchange`` once per step. Also sets ``self.left_out``.
    """

    def __init__(
        self, store, rank: int, world_size: int, *, deadline: float = 30.0,
        max_bytes: int | None = None, namespace: str = "distro_kernels/exchange",
        retain_steps: int = 4, piece_bytes: int = 4 * 1024 * 1024, start_step: int = 0,
        poll_interval: float = 0.001, max_poll_interval: float = 0.02,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if deadline <= 0:
            raise ValueError("deadline must be > 0 seconds")
        if not 1 <= piece_bytes <= _PIECE_MAX:
            raise ValueError(f"piece_bytes must be in [1, {_PIECE_MAX}]")
        if retain_steps < 1:
            raise ValueError("retain_steps must be >= 1")
        self.store = dist.PrefixStore(namespace, store)
        self.rank, self.world_size = int(rank), int(world_size)
        self.deadline = float(deadline)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.retain_steps, self.piece_bytes = int(retain_steps), int(piece_bytes)
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self.next_step = int(start_step)
        self.left_out: dict[int, str] = {}
        self.last: ExchangeResult | None = None
        self._posted: dict[int, int] = {}  # step -> pieces this peer wrote

    @classmethod
    def from_process_group(cls, group=None, **kwargs) -> "StoreTransport":
        """Use the store behind ``torch.distributed``'s default process group."""
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized")
        from torch.distributed import distributed_c10d as c10d

        store = c10d._get_default_store()
        return cls(store, dist.get_rank(group), dist.get_world_size(group), **kwargs)

    # ------------------------------------------------------------------ keys
    @staticmethod
    def _key(step: int, *parts) -> str:
        return "/".join([str(step), *map(str, parts)])

    # ------------------------------------------------------------------ protocol
    def exchange(self, payload: bytes, *, step: int | None = None) -> ExchangeResult:
        """Post ``payload`` and return every in-step peer's bytes (see the module doc)."""
        start = time.monotonic()
        step = self.next_step if step is None else int(step)
        self.next_step = step + 1
        self.post(payload, step)
        result = self.collect(step, start + self.deadline, own=payload, start=start)
        self._cleanup(step - self.retain_steps)
        return result

    def post(self, payload: bytes, step: int) -> None:
        """Phase 1: write this peer's payload for ``step``."""
        data = memoryview(payload).cast("B")
        n = len(data)
        pieces = max(1, -(-n // self.piece_bytes))
        for i in range(pieces):
            self.store.set(self._key(step, "data", self.rank, i),
                           bytes(data[i * self.piece_bytes : (i + 1) * self.piece_bytes]))
        self.store.set(self._key(step, "size", self.rank), _U64.pack(n))
        self._posted[step] = pieces
        self.store.add(self._key(step, "count"), 1)

    def collect(self, step: int, deadline_at: float, *, own: bytes | None = None,
                start: float | None = None) -> ExchangeResult:
        """Phase 2: wait for the others (until ``deadline_at``, ``time.monotonic()``), agree
        on the roster, read the roster's payloads."""
        start = time.monotonic() if start is None else start
        roster_key = self._key(step, "roster")
        count_key = self._key(step, "count")
        wait = self.poll_interval
        while True:
            if self.store.check([roster_key]):
                break
            if self.store.add(count_key, 0) >= self.world_size:
                break
            now = time.monotonic()
            if now >= deadline_at:
                break
            time.sleep(min(wait, deadline_at - now))
            wait = min(wait * 1.5, self.max_poll_interval)
        if self.store.check([roster_key]):
            roster = self._parse_roster(self.store.get(roster_key))
        else:
            present = [
                p for p in range(self.world_size)
                if self.store.check([self._key(step, "size", p)])
            ]
            proposal = ",".join(map(str, present)).encode() or b"-"
            roster = self._parse_roster(self.store.compare_set(roster_key, "", proposal))
        received: dict[int, bytes] = {}
        left_out: dict[int, str] = {}
        for p in range(self.world_size):
            if p not in roster:
                posted = self.store.check([self._key(step, "size", p)])
                left_out[p] = (
                    "late: posted after the step's roster was closed" if posted else
                    f"missing: no payload within the {self.deadline:g} s deadline"
                )
                continue
            if p == self.rank and own is not None:
                received[p] = bytes(own)
                continue
            ok, got = self._read(step, p)
            if ok:
                received[p] = got
            else:
                left_out[p] = got
        result = ExchangeResult(received, left_out, step, time.monotonic() - start)
        self.left_out, self.last = result.left_out, result
        return result

    def _read(self, step: int, p: int) -> tuple[bool, bytes | str]:
        raw = self.store.get(self._key(step, "size", p))
        if len(raw) != _U64.size:
            return False, f"invalid size record ({len(raw)} bytes)"
        (n,) = _U64.unpack(raw)
        if self.max_bytes is not None and n > self.max_bytes:
            return False, f"over limit: {n} bytes > max_bytes {self.max_bytes}"
        pieces = max(1, -(-n // self.piece_bytes))
        keys = [self._key(step, "data", p, i) for i in range(pieces)]
        if not self.store.check(keys):
            return False, "size record without all its data pieces"
        out = bytearray()
        for i, key in enumerate(keys):
            piece = self.store.get(key)
            want = min(self.piece_bytes, n - i * self.piece_bytes)
            if len(piece) != want:
                return False, f"data piece {i} has {len(piece)} bytes, expected {want}"
            out += piece
        return True, bytes(out)

    def _parse_roster(self, raw: bytes) -> frozenset[int]:
        try:
            text = bytes(raw).decode("ascii")
            peers = frozenset() if text == "-" else frozenset(int(x) for x in text.split(","))
        except (UnicodeDecodeError, ValueError):
            raise TransportError(f"unreadable roster {bytes(raw)[:64]!r}") from None
        if any(not 0 <= p < self.world_size for p in peers):
            raise TransportError(f"roster names peers outside [0, {self.world_size})")
        return peers

    def _cleanup(self, old: int) -> None:
        if old < 0:
            return
        pieces = self._posted.pop(old, None)
        try:
            if pieces is not None:
                self.store.delete_key(self._key(old, "size", self.rank))
                for i in range(pieces):
                    self.store.delete_key(self._key(old, "data", self.rank, i))
            # shared keys: whoever comes first deletes them (idempotent)
            self.store.delete_key(self._key(old, "count"))
            self.store.delete_key(self._key(old, "roster"))
        except (RuntimeError, NotImplementedError):  # a store without delete_key: keep keys
            pass
        for s in [s for s in self._posted if s < old]:
            self._posted.pop(s, None)


def loopback_store(world_size: int | None = None, *, port: int = 0, is_master: bool = True,
                   timeout: float = 60.0):
    """A ``TCPStore`` on 127.0.0.1 (``port=0``: a free port; read it from ``.port``)."""
    return dist.TCPStore("127.0.0.1", port, world_size, is_master=is_master,
                         timeout=timedelta(seconds=timeout), wait_for_workers=False)
