"""The roofline: the device's copy bandwidth (measured in the same run) and the bytes each
op must move at least (read every input once, write every output once).

A kernel at 100% of the roofline moves its floor of bytes as fast as a plain copy moves
bytes. The floors are properties of the op, not of an implementation, so the eager baseline
(which moves far more, e.g. int64 indices and dense coefficient tensors) is measured against
the same floor and its GB/s is directly comparable.
"""

from __future__ import annotations

import math

import torch

from .timing import RunPolicy, Timing, measure_interleaved, Case

VALUE_BYTES = {"f32": 4.0, "bf16": 2.0, "f16": 2.0, "sign": 1 / 8}
INDEX_BYTES = 4  # int32 indices in memory (the wire packs them, see payload_*)
F32 = 4


def copy_bandwidth(device: torch.device, clock, nbytes: int, policy: RunPolicy) -> dict:
    """GB/s of a device-to-device copy of ``nbytes`` (read + write counted, as for the ops)."""
    n = max(nbytes // 4, 1)
    src = torch.empty(n, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    timing = measure_interleaved({"copy": Case(make=lambda: None, run=lambda _: dst.copy_(src))},
                                 clock, policy)["copy"]
    if isinstance(timing, Exception):
        raise timing
    moved = 2 * n * 4
    return {"gb_s": gb_s(moved, timing.median_s), "bytes": moved, "median_s": timing.median_s,
            "spread": timing.spread, "runs": timing.runs}


def gb_s(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else math.nan


def fraction(rate_gb_s: float, copy_gb_s: float) -> float:
    return rate_gb_s / copy_gb_s if copy_gb_s > 0 else math.nan


# ------------------------------------------------------------------ floors, per layout
# ``numel``: parameters; ``kept``: kept coefficients (sum of n_chunks * k_eff) of one peer.


def encode_bytes(numel: int, kept: int, grad_bytes: int = F32) -> int:
    """Fused encode: read grad and the state, write the state, write indices + f32 values."""
    return numel * (grad_bytes + 2 * F32) + kept * (INDEX_BYTES + F32)


def compress_bytes(numel: int, kept: int) -> int:
    """Read the tensor, write indices + f32 values."""
    return numel * F32 + kept * (INDEX_BYTES + F32)


def decode_bytes(numel: int, kept: int, peers: int, codec: str) -> int:
    """Read P peers' indices and values (at the codec's width), write the dense f32 output."""
    return numel * F32 + math.ceil(peers * kept * (INDEX_BYTES + VALUE_BYTES[codec]))


def pack_signs_bytes(counts: list[int]) -> int:
    """Read f32 values, write one bit each (per tensor, rounded up to whole bytes)."""
    return sum(n * F32 + (n + 7) // 8 for n in counts)


def unpack_signs_bytes(counts: list[int]) -> int:
    return pack_signs_bytes(counts)


def payload_encode_bytes(kept: int, payload_len: int) -> int:
    """Read int32 indices and f32 values, write the message."""
    return kept * (INDEX_BYTES + F32) + payload_len


def payload_parse_bytes(kept: int, payload_len: int, codec: str) -> int:
    """Read the message, write int32 indices and the values at the codec's width."""
    return payload_len + math.ceil(kept * (INDEX_BYTES + VALUE_BYTES[codec]))


def row_rates(nbytes: float, timing: Timing, copy_gb_s: float) -> dict:
    rate = gb_s(nbytes, timing.median_s)
    return {"gb_s": rate, "roofline_fraction": fraction(rate, copy_gb_s)}
