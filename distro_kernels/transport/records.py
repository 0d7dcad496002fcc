"""The small records of the store exchange: ``have`` (what a peer holds), ``roster`` (the
coordinator's decision for a step) and ``done`` (a peer read the roster).

Every record has the same 40-byte head and, in signed runs, an Ed25519 signature (64 bytes)
over every byte before it by the manifest key of the head's ``sender``::

    magic 4s | version u16 | flags u16 (bit 0: signed) | run id 16s | step u64 | sender u32 |
    world u32 | body ... | signature (signed runs)

Bodies (peers ``0..world-1`` in ascending order):

- ``have``:   per peer ``u8 held`` then, if held, the payload's BLAKE2b-256 (32 bytes);
- ``roster``: per peer ``u8 in`` then, if in, ``u64 length`` + BLAKE2b-256, else ``u16 n`` +
  ``n`` bytes of ASCII reason (at most :data:`MAX_REASON`);
- ``done``:   the BLAKE2b-256 of the roster record it read.

Parsing treats the bytes as hostile: sizes are checked against the largest valid record for
``world`` before anything is read from them; any failure is a :class:`RecordError`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

HEAD = struct.Struct("<4sHH16sQII")
HEAD_SIZE = HEAD.size  # 40
VERSION = 1
SIGNED = 0x1
SIG = 64
DIGEST = 32
MAX_REASON = 240
HAVE, ROSTER, DONE = b"DKHV", b"DKRS", b"DKDN"
_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")


class RecordError(ValueError):
    """A store record is malformed, for another run or step, or not signed as it must be."""


def payload_digest(data) -> bytes:
    """The digest the exchange commits to: BLAKE2b-256 of a payload's bytes."""
    return hashlib.blake2b(bytes(data), digest_size=DIGEST).digest()


def max_record_bytes(kind: bytes, world: int) -> int:
    per = {HAVE: 1 + DIGEST, ROSTER: 1 + max(8 + DIGEST, 2 + MAX_REASON)}.get(kind)
    body = DIGEST if kind == DONE else world * per
    return HEAD_SIZE + body + SIG


@dataclass
class Record:
    kind: bytes
    run_id: bytes
    step: int
    sender: int
    world: int
    held: dict[int, bytes] = field(default_factory=dict)  # have: peer -> digest
    included: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # roster
    reasons: dict[int, str] = field(default_factory=dict)  # roster: left-out peer -> reason
    roster_digest: bytes = b""  # done


def _head(kind, run_id, step, sender, world, signed) -> bytes:
    return HEAD.pack(kind, VERSION, SIGNED if signed else 0, run_id, step, sender, world)


def _finish(msg: bytes, key) -> bytes:
    return msg + key.sign(msg) if key is not None else msg


def encode_have(run_id, step, sender, world, held: dict[int, bytes], key=None) -> bytes:
    parts = [_head(HAVE, run_id, step, sender, world, key is not None)]
    for p in range(world):
        parts.append(b"\x01" + held[p] if p in held else b"\x00")
    return _finish(b"".join(parts), key)


def _reason_bytes(text: str) -> bytes:
    return text.encode("ascii", "replace")[:MAX_REASON]


def encode_roster(run_id, step, sender, world, included: dict[int, tuple[int, bytes]],
                  reasons: dict[int, str], key=None) -> bytes:
    parts = [_head(ROSTER, run_id, step, sender, world, key is not None)]
    for p in range(world):
        if p in included:
            n, d = included[p]
            parts.append(b"\x01" + _U64.pack(n) + d)
        else:
            r = _reason_bytes(reasons.get(p, "missing"))
            parts.append(b"\x00" + _U16.pack(len(r)) + r)
    return _finish(b"".join(parts), key)


def encode_done(run_id, step, sender, world, roster_digest: bytes, key=None) -> bytes:
    return _finish(_head(DONE, run_id, step, sender, world, key is not None) + roster_digest,
                   key)


def decode(raw, kind: bytes, *, run_id: bytes, step: int, world: int, manifest=None,
           sender: int | None = None) -> Record:
    """Parse and check one record. ``manifest``: it must be signed by its sender's key (and
    ``sender``, when given, must be the expected one)."""
    raw = bytes(raw)
    if len(raw) > max_record_bytes(kind, world):
        raise RecordError(f"{len(raw)} bytes, more than a {kind!r} record for {world} peers")
    if len(raw) < HEAD_SIZE:
        raise RecordError("too short for a record head")
    magic, version, flags, rid, st, snd, w = HEAD.unpack_from(raw, 0)
    if magic != kind or version != VERSION or flags & ~SIGNED:
        raise RecordError(f"not a {kind!r} record of version {VERSION}")
    if rid != run_id or st != step or w != world:
        raise RecordError(f"record for run {rid.hex()[:8]} step {st} world {w}, expected "
                          f"{run_id.hex()[:8]} step {step} world {world}")
    if sender is not None and snd != sender:
        raise RecordError(f"record of sender {snd} where sender {sender}'s belongs")
    end = len(raw)
    if manifest is not None:
        if not flags & SIGNED or end < HEAD_SIZE + SIG:
            raise RecordError("unsigned record in a signed run")
        end -= SIG
        if not manifest.verify(snd, raw[end:], raw[:end]):
            raise RecordError(f"signature does not verify under peer {snd}'s key")
    elif flags & SIGNED:
        end -= SIG
    rec = Record(kind, rid, st, snd, w)
    pos = HEAD_SIZE
    try:
        if kind == DONE:
            if end - pos != DIGEST:
                raise RecordError("a done record holds one digest")
            rec.roster_digest = raw[pos:end]
            return rec
        for p in range(world):
            if pos >= end:
                raise RecordError("record ends early")
            flag = raw[pos]
            pos += 1
            if flag not in (0, 1):
                raise RecordError(f"peer {p}: flag {flag}")
            if kind == HAVE:
                if flag:
                    rec.held[p] = _take(raw, pos, end, DIGEST)
                    pos += DIGEST
            elif flag:
                (n,) = _U64.unpack(_take(raw, pos, end, 8))
                rec.included[p] = (n, _take(raw, pos + 8, end, DIGEST))
                pos += 8 + DIGEST
            else:
                (n,) = _U16.unpack(_take(raw, pos, end, 2))
                if n > MAX_REASON:
                    raise RecordError(f"peer {p}: reason of {n} bytes")
                rec.reasons[p] = _take(raw, pos + 2, end, n).decode("ascii", "replace")
                pos += 2 + n
    except struct.error:
        raise RecordError("record ends early") from None
    if pos != end:
        raise RecordError(f"{end - pos} bytes after the last peer")
    return rec


def _take(raw: bytes, pos: int, end: int, n: int) -> bytes:
    if n > end - pos:
        raise RecordError("record ends early")
    return raw[pos : pos + n]
