"""Exchange through a ``torch.distributed`` key-value store, with a coordinator that commits
each step's payload digests, so every honest peer decodes the same bytes or raises.

Why a store and not a gloo collective: a gloo ``all_gather`` involves every rank; if one
process dies, every other rank's collective fails, the group is unusable afterwards, and a
rank that sends more bytes than it declared aborts its receivers (see :mod:`.gloo`). A store
(``dist.TCPStore``, the default group's store, or ``dist.HashStore`` in one process) lets each
peer post its bytes and the others read them with their own deadline.

A store has no access control: any client can write, overwrite or delete any key. So no key
is trusted for what it says; only **signatures** (signed runs: a :class:`~distro_kernels.wire.
signing.Manifest` and each peer's key) and **digests** are. Protocol for step ``s``, keys under
``namespace/s/``; ``D`` = ``deadline`` seconds from when this peer entered ``exchange``:

1. ``post``: write the payload in pieces of at most ``piece_bytes`` at ``data/<rank>/<i>``,
   then its length (u64 LE, a hint: nothing is trusted from it but a bound) at ``size/<rank>``.
2. ``gather`` (until every peer is held, or ``gather_fraction * D``): read every other peer's
   bytes as they appear, with non-blocking reads only, each bounded by ``max_bytes`` before
   anything is read; in signed runs keep only a payload signed by that peer for this step and
   run (``wire.signing.verify_envelope``). The first valid copy of each peer is kept.
3. ``have``: publish (signed) the BLAKE2b-256 of every payload held.
4. The **coordinator** (``manifest.coordinator``, else ``coordinator=``, default rank 0) waits
   for the ``have`` of every peer it holds (until ``decide_fraction * D``), then commits: peer
   ``p`` is in the step only if the coordinator holds a valid payload of ``p`` and every
   ``have`` it got names the same digest for ``p``. Otherwise ``p`` is left out with the true
   reason: no valid payload by the deadline (and the last rule it broke), *equivocation* (the
   coordinator re-reads ``p`` and finds a second payload that ``p`` signed for the step: proof),
   or "peer ``r`` holds no copy / a different copy" (a report by ``r``, named as such). It writes
   the signed ``roster`` (per peer: length and digest, or the reason) and keeps it in place
   (rewrites it if it is deleted or changed) until every peer in it has posted ``done``.
5. ``finish`` (until ``D``): read and verify the roster (a forged or altered roster is
   ignored, and the wait goes on); take each committed payload from what was gathered, or
   fetch it, accepting only bytes of the committed digest. If the roster or a committed
   payload cannot be had by ``D``, raise :class:`TransportError` (nothing is delivered, so
   nothing is applied). Post ``done``; delete this peer's keys of step ``s - retain_steps`` (the
   coordinator deletes every protocol key of that step, so their number stays bounded).

Every honest peer that returns from ``exchange`` returns the same ``{peer: bytes}`` (those of
the roster's digests) and the same ``left_out`` (the roster's reasons). Peers that posted a
``have`` hold every committed payload before the roster exists, so deleting or swapping keys
after the roster cannot split them. Threat model and limits: ``docs/threat-model.md``.

Unsigned runs (no manifest) run the same protocol without signatures: bounded in time and
memory, and consistent among peers that do not write each other's keys (trusted peers).
The store must outlive any one peer: host it in the launcher (torchrun's agent store, or a
``TCPStore`` server in the parent process as the tests do) rather than in a rank that may die.
"""

from __future__ import annotations

import struct
import time
from datetime import timedelta

import torch.distributed as dist

from ..wire.header import run_id_bytes
from . import records as rec
from .result import ExchangeResult, TransportError

_U64 = struct.Struct("<Q")
_PIECE_MAX = 8 * 1024 * 1024 - 4096  # TCPStore's libuv server refuses larger messages
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # without a layout: a finite bound per peer per step
# A value no honest record can be: compare_set(key, ABSENT, ABSENT) is a non-blocking read
# (the store returns the current value, or ABSENT when the key does not exist; a key that
# holds exactly ABSENT reads as absent, which is all a writer of it can get).
_ABSENT = b"\x00distro_kernels/absent\x00"


class StoreTransport:
    """Per-step exchange of variable-length bytes through a ``torch.distributed.Store``.

    ``exchange(payload, step=None) -> ExchangeResult`` (a ``{peer_id: bytes}`` dict with
    ``left_out``); ``step`` defaults to an internal counter (``start_step``, +1 per call).

    - ``max_bytes``: the most one peer's payload may be; default ``layout.max_payload_bytes()``
      when ``layout`` (a ``wire.Layout``) is given, else :data:`DEFAULT_MAX_BYTES`.
    - ``manifest`` and ``signing_key``: a signed run (this peer's key must be its manifest
      key; peers are ``0..world_size-1``). Every payload must then be signed
      (``Payload.to_bytes(signing_key=...)``); the records are signed with ``signing_key``.
    - ``coordinator``: the peer that commits each step (unsigned runs; signed runs take the
      manifest's). ``run_id``: the run's id for the records (unsigned runs; default zeros;
      signed runs use the manifest's digest).
    """

    def __init__(
        self, store, rank: int, world_size: int, *, deadline: float = 30.0,
        max_bytes: int | None = None, layout=None, manifest=None, signing_key=None,
        coordinator: int | None = None, run_id=None, namespace: str = "distro_kernels/exchange",
        retain_steps: int = 4, piece_bytes: int = 4 * 1024 * 1024, start_step: int = 0,
        poll_interval: float = 0.0005, max_poll_interval: float = 0.005,
        gather_fraction: float = 0.4, decide_fraction: float = 0.7,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if not deadline > 0:
            raise ValueError("deadline must be > 0 seconds")
        if not 1 <= piece_bytes <= _PIECE_MAX:
            raise ValueError(f"piece_bytes must be in [1, {_PIECE_MAX}]")
        if retain_steps < 1:
            raise ValueError("retain_steps must be >= 1")
        if not 0 < gather_fraction < decide_fraction < 1:
            raise ValueError("need 0 < gather_fraction < decide_fraction < 1")
        if max_bytes is None:
            max_bytes = layout.max_payload_bytes() if layout is not None else DEFAULT_MAX_BYTES
        if int(max_bytes) < 0:
            raise ValueError("max_bytes must be >= 0")
        if manifest is not None:
            if signing_key is None:
                raise ValueError("a signed run (manifest) needs this peer's signing_key")
            if set(manifest.peers) != set(range(world_size)):
                raise ValueError(f"the manifest's peers must be 0..{world_size - 1}")
            manifest.check_key(rank, signing_key)
            if coordinator is not None and int(coordinator) != manifest.coordinator:
                raise ValueError("a signed run's coordinator is the manifest's")
            coordinator = manifest.coordinator
        elif signing_key is not None:
            raise ValueError("signing_key without a manifest")
        coordinator = 0 if coordinator is None else int(coordinator)
        if not 0 <= coordinator < world_size:
            raise ValueError(f"coordinator {coordinator} not in [0, {world_size})")
        self.store = dist.PrefixStore(namespace, store)
        self.rank, self.world_size = int(rank), int(world_size)
        self.deadline = float(deadline)
        self.max_bytes = int(max_bytes)
        self.manifest, self.signing_key = manifest, signing_key
        self.coordinator = coordinator
        if manifest is not None:
            if run_id is not None and run_id_bytes(run_id) != manifest.run_id:
                raise ValueError("a signed run's run id is its manifest's digest")
            self.run_id = manifest.run_id
        else:  # unsigned: records of another run (same store and namespace) are ignored
            self.run_id = bytes(16) if run_id is None else run_id_bytes(run_id)
        self.retain_steps, self.piece_bytes = int(retain_steps), int(piece_bytes)
        self.max_pieces = max(1, -(-self.max_bytes // self.piece_bytes))
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self.gather_fraction, self.decide_fraction = gather_fraction, decide_fraction
        self.next_step = int(start_step)
        self.left_out: dict[int, str] = {}
        self.last: ExchangeResult | None = None
        self._posted: dict[int, int] = {}  # step -> pieces this peer wrote
        self._steps: dict[int, _StepState] = {}

    @classmethod
    def from_process_group(cls, group=None, **kwargs) -> "StoreTransport":
        """Use the store behind ``torch.distributed``'s default process group."""
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized")
        from torch.distributed import distributed_c10d as c10d

        store = c10d._get_default_store()
        return cls(store, dist.get_rank(group), dist.get_world_size(group), **kwargs)

    @property
    def is_coordinator(self) -> bool:
        return self.rank == self.coordinator

    # ------------------------------------------------------------------ keys and reads
    @staticmethod
    def _key(step: int, *parts) -> str:
        return "/".join([str(step), *map(str, parts)])

    def _peek(self, key: str) -> bytes | None:
        """The key's value, or None when it does not exist; never blocks."""
        v = self.store.compare_set(key, _ABSENT, _ABSENT)
        return None if v == _ABSENT else bytes(v)

    def _sleep(self, wait: float, until: float) -> float:
        now = time.monotonic()
        if now < until:
            time.sleep(min(wait, until - now))
        return min(wait * 1.5, self.max_poll_interval)

    # ------------------------------------------------------------------ protocol
    def exchange(self, payload: bytes, *, step: int | None = None) -> ExchangeResult:
        """Post ``payload`` and return every in-step peer's bytes (see the module doc)."""
        start = time.monotonic()
        step = self.next_step if step is None else int(step)
        self.next_step = step + 1
        D = self.deadline
        try:
            self.post(payload, step)
            self.gather(step, start + self.gather_fraction * D)
            self.post_have(step)
            if self.is_coordinator:
                self.decide(step, start + self.decide_fraction * D)
            return self.finish(step, start + D, start=start)
        except dist.DistError as e:  # the store connection itself failed
            raise TransportError(f"step {step}: store error: {type(e).__name__}: "
                                 f"{str(e)[:300]}") from e
        finally:
            self._steps.pop(step, None)
            self._cleanup(step - self.retain_steps)

    def post(self, payload: bytes, step: int) -> None:
        """Write this peer's payload for ``step`` (pieces, then the size hint)."""
        data = memoryview(payload).cast("B")
        n = len(data)
        if self.manifest is not None and n <= self.max_bytes:
            from ..wire.signing import verify_envelope  # a caller bug: caught here, not by peers

            verify_envelope(data, self.manifest, expect_sender=self.rank, expect_step=step,
                            max_bytes=self.max_bytes)
        pieces = max(1, -(-n // self.piece_bytes))
        for i in range(pieces):
            self.store.set(self._key(step, "data", self.rank, i),
                           bytes(data[i * self.piece_bytes : (i + 1) * self.piece_bytes]))
        self.store.set(self._key(step, "size", self.rank), _U64.pack(n))
        self._posted[step] = pieces
        st = self._state(step)
        if n <= self.max_bytes:  # over it: left out by everyone, itself included
            st.hold(self.rank, bytes(payload))
        else:
            st.why[self.rank] = f"over limit: {n} bytes > max_bytes {self.max_bytes}"

    def _state(self, step: int) -> "_StepState":
        if step not in self._steps:
            self._steps[step] = _StepState()
        return self._steps[step]

    def _read(self, step: int, p: int) -> tuple[bytes | None, str]:
        """Peer ``p``'s bytes for ``step`` from its keys, bounded; ``(bytes, "")`` or
        ``(None, reason)``. Signed runs: only a payload ``p`` signed for this step."""
        raw = self._peek(self._key(step, "size", p))
        if raw is None:
            return None, (f"missing: no payload within {self.gather_fraction * self.deadline:.3g}"
                          f" s (the gather window of the {self.deadline:g} s deadline)")
        if len(raw) != _U64.size:
            return None, f"invalid size record ({len(raw)} bytes)"
        (n,) = _U64.unpack(raw)
        if n > self.max_bytes:
            return None, f"over limit: {n} bytes > max_bytes {self.max_bytes}"
        pieces = max(1, -(-n // self.piece_bytes))
        out = bytearray()
        for i in range(pieces):
            piece = self._peek(self._key(step, "data", p, i))
            want = min(self.piece_bytes, n - i * self.piece_bytes)
            if piece is None:
                return None, f"incomplete: data piece {i} of {pieces} missing"
            if len(piece) != want:
                return None, f"data piece {i} has {len(piece)} bytes, expected {want}"
            out += piece
        data = bytes(out)
        if self.manifest is not None:
            from ..wire import PayloadError
            from ..wire.signing import verify_envelope

            try:
                verify_envelope(data, self.manifest, expect_sender=p, expect_step=step,
                                max_bytes=self.max_bytes)
            except PayloadError as e:
                return None, f"invalid payload: {type(e).__name__}: {e}"
        return data, ""

    def gather(self, step: int, until: float) -> None:
        """Read every other peer's payload as it appears, until all are held or ``until``."""
        st = self._state(step)
        wait = self.poll_interval
        retry_at = {p: 0.0 for p in range(self.world_size)}
        while True:
            now = time.monotonic()
            for p in range(self.world_size):
                if p in st.held or retry_at[p] > now:
                    continue
                data, why = self._read(step, p)
                if data is not None:
                    st.hold(p, data)
                else:
                    st.why[p] = why
                    if not why.startswith(("missing", "incomplete")):
                        # read but refused: a changed record needs a while; do not spin on it
                        retry_at[p] = now + max(0.05, 4 * self.max_poll_interval)
            if len(st.held) == self.world_size or time.monotonic() >= until:
                return
            wait = self._sleep(wait, until)

    def post_have(self, step: int) -> None:
        st = self._state(step)
        held = {p: st.digest[p] for p in st.held}
        self.store.set(self._key(step, "have", self.rank),
                       rec.encode_have(self.run_id, step, self.rank, self.world_size, held,
                                       self.signing_key))

    def _read_record(self, key: str, kind: bytes, step: int, sender: int | None):
        raw = self._peek(key)
        if raw is None:
            return None
        try:
            return rec.decode(raw, kind, run_id=self.run_id, step=step, world=self.world_size,
                              manifest=self.manifest, sender=sender)
        except rec.RecordError:
            return None  # forged or stale: as if absent (the owner's record may come)

    def decide(self, step: int, until: float) -> bytes:
        """Coordinator: collect the ``have`` records, commit the step, write the roster."""
        st = self._state(step)
        haves: dict[int, rec.Record] = {}
        wait = self.poll_interval
        while True:
            for r in st.held:
                if r != self.rank and r not in haves:
                    h = self._read_record(self._key(step, "have", r), rec.HAVE, step, r)
                    if h is not None:
                        haves[r] = h
            if all(r in haves for r in st.held if r != self.rank) or time.monotonic() >= until:
                break
            wait = self._sleep(wait, until)
        included, reasons = {}, {}
        for p in range(self.world_size):
            if p not in st.held:
                reasons[p] = st.why.get(p, "missing: no payload")
                continue
            d = st.digest[p]
            lacking = [r for r, h in sorted(haves.items()) if p not in h.held]
            other = [r for r, h in sorted(haves.items()) if p in h.held and h.held[p] != d]
            if not lacking and not other:
                included[p] = (len(st.held[p]), d)
                continue
            second, _ = self._read(step, p)  # a second payload p signed: proof
            if second is not None and rec.payload_digest(second) != d:
                pair = f"(digests {d.hex()[:16]}, {rec.payload_digest(second).hex()[:16]})"
                if self.manifest is not None:  # both signed by p: p equivocated
                    reasons[p] = (f"equivocation: two different payloads signed by peer {p} "
                                  f"for step {step} {pair}")
                else:  # unsigned: anyone may have written them
                    reasons[p] = (f"changed: two different payloads at peer {p}'s keys for "
                                  f"step {step} {pair}")
            elif other:
                r = other[0]
                reasons[p] = (f"disputed: peer {r} reports holding a different payload of "
                              f"peer {p} (digest {haves[r].held[p].hex()[:16]}; not verified)")
            else:
                reasons[p] = (f"not held by peer {lacking[0]} before the roster closed "
                              f"(reported by peer {lacking[0]})")
        roster = rec.encode_roster(self.run_id, step, self.rank, self.world_size, included,
                                   reasons, self.signing_key)
        self.store.set(self._key(step, "roster"), roster)
        st.roster_raw = roster
        return roster

    def _guard(self, step: int, st: "_StepState", members, until: float) -> None:
        """Coordinator: keep the roster in place until every member posted ``done``."""
        key, want = self._key(step, "roster"), st.roster_raw
        digest = rec.payload_digest(want)
        pending = {p for p in members if p != self.rank}
        wait = self.poll_interval
        while pending and time.monotonic() < until:
            for p in sorted(pending):
                d = self._read_record(self._key(step, "done", p), rec.DONE, step, p)
                if d is not None and d.roster_digest == digest:
                    pending.discard(p)
            if not pending:
                break
            if self._peek(key) != want:
                self.store.set(key, want)
            wait = self._sleep(wait, until)

    def finish(self, step: int, until: float, *, start: float | None = None) -> ExchangeResult:
        """Read the roster, make sure every committed payload is here, post ``done``."""
        start = time.monotonic() if start is None else start
        st = self._state(step)
        key = self._key(step, "roster")
        wait = self.poll_interval
        roster = None
        if self.is_coordinator and st.roster_raw is not None:  # its own, not the store's copy
            raw = st.roster_raw
            roster = self._parse_roster(raw, step)
        while roster is None:
            raw = self._peek(key)
            if raw is not None:
                roster = self._parse_roster(raw, step)
            if roster is None:
                if time.monotonic() >= until:
                    raise TransportError(
                        f"step {step}: no valid roster from coordinator {self.coordinator} "
                        f"within the {self.deadline:g} s deadline; nothing delivered")
                wait = self._sleep(wait, until)
        raw_roster = raw
        received: dict[int, bytes] = {}
        wait = self.poll_interval
        pending = dict(roster.included)
        while True:
            for p, (n, d) in list(pending.items()):
                if p in st.held and st.digest[p] == d:
                    received[p] = st.held[p]
                    del pending[p]
                    continue
                if n > self.max_bytes:
                    raise TransportError(f"step {step}: roster commits {n} bytes for peer {p}, "
                                         f"over max_bytes {self.max_bytes}")
                data, _ = self._read(step, p)
                if data is not None and len(data) == n and rec.payload_digest(data) == d:
                    received[p] = data
                    del pending[p]
            if not pending:
                break
            if time.monotonic() >= until:
                raise TransportError(
                    f"step {step}: the committed payload of peer(s) {sorted(pending)} is not "
                    f"in the store (deleted or replaced after the roster); nothing delivered")
            wait = self._sleep(wait, until)
        self.store.set(self._key(step, "done", self.rank),
                       rec.encode_done(self.run_id, step, self.rank, self.world_size,
                                       rec.payload_digest(raw_roster), self.signing_key))
        if self.is_coordinator and st.roster_raw is not None:
            self._guard(step, st, roster.included, until)
        result = ExchangeResult(received, roster.reasons, step, time.monotonic() - start)
        self.left_out, self.last = result.left_out, result
        return result

    def _parse_roster(self, raw: bytes, step: int):
        try:
            r = rec.decode(raw, rec.ROSTER, run_id=self.run_id, step=step,
                           world=self.world_size, manifest=self.manifest,
                           sender=self.coordinator)
        except rec.RecordError:
            return None
        return r

    def _cleanup(self, old: int) -> None:
        if old < 0:
            return
        pieces = self._posted.pop(old, None)
        try:
            if self.is_coordinator:  # every protocol key of the step, whoever wrote it
                for p in range(self.world_size):
                    for part in ("size", "have", "done"):
                        self.store.delete_key(self._key(old, part, p))
                    for i in range(self.max_pieces):
                        self.store.delete_key(self._key(old, "data", p, i))
                self.store.delete_key(self._key(old, "roster"))
            elif pieces is not None:
                for part in ("size", "have", "done"):
                    self.store.delete_key(self._key(old, part, self.rank))
                for i in range(pieces):
                    self.store.delete_key(self._key(old, "data", self.rank, i))
        except (RuntimeError, NotImplementedError):  # a store without delete_key: keep keys
            pass
        for s in [s for s in self._posted if s < old]:
            self._posted.pop(s, None)


class _StepState:
    """What one peer knows of one step: the payloads it holds (first valid copy of each),
    their digests, why the others are not held, and the roster it wrote (coordinator)."""

    __slots__ = ("held", "digest", "why", "roster_raw")

    def __init__(self):
        self.held: dict[int, bytes] = {}
        self.digest: dict[int, bytes] = {}
        self.why: dict[int, str] = {}
        self.roster_raw: bytes | None = None

    def hold(self, p: int, data: bytes) -> None:
        self.held[p] = data
        self.digest[p] = rec.payload_digest(data)
        self.why.pop(p, None)


def loopback_store(world_size: int | None = None, *, port: int = 0, is_master: bool = True,
                   timeout: float = 60.0):
    """A ``TCPStore`` on 127.0.0.1 (``port=0``: a free port; read it from ``.port``)."""
    return dist.TCPStore("127.0.0.1", port, world_size, is_master=is_master,
                         timeout=timedelta(seconds=timeout), wait_for_workers=False)
