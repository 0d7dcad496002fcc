"""One model-wide DeMo step, the path that the optimizer, custom trainers and the transport
helpers all share.

- :meth:`ModelStep.encode`: this peer's gradients -> its one payload for the step
  (``demo_step_many_`` over every tensor at once, then the wire format).
- :func:`parse_received`: the bytes a transport delivered -> validated payloads. Hostile
  bytes are validated exactly once, here (``wire.Payload.from_bytes``); this peer's own
  payload, when the transport hands back the bytes it sent, is used as built (no re-parse).
  Invalid peers are left out with the rule they broke.
- :meth:`ModelStep.decode`: validated payloads -> one update per tensor, peers in ascending
  id (SPEC 4), one ``decompress_many`` for the whole model, bit-identical on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import Tensor

from . import ops, robust, wire
from .ops.definitions import torch_step_

EMPTY_PAYLOAD_REASON = "sent an empty payload (the peer skipped this step)"


@dataclass
class ReceivedStep:
    """The validated payloads of one step (``{sender: Payload}``, ascending) and every peer
    left out with its reason."""

    step: int
    payloads: dict[int, wire.Payload]
    left_out: dict[int, str] = field(default_factory=dict)
    bytes_received: int = 0

    @property
    def peers(self) -> tuple[int, ...]:
        return tuple(self.payloads)


def parse_received(
    layout: wire.Layout, step: int, run_id, received: Mapping[int, bytes], *,
    own: tuple[wire.Payload, bytes] | None = None, world_size: int | None = None,
    max_bytes: int | None = None, left_out: Mapping[int, str] | None = None,
    value_codec: str | None = None, parse_options: Mapping | None = None,
) -> ReceivedStep:
    """Validates what a transport delivered for ``step``.

    ``received``: ``{peer_id: bytes}`` (own bytes included when this peer made the step);
    ``own``: ``(payload, bytes)`` this peer built, reused when the transport returns exactly
    those bytes; ``world_size``: peers absent from ``received`` and from ``left_out`` are
    reported ``missing``; ``left_out``: reasons the transport already gave; ``value_codec``:
    the run's codec (a valid payload in another codec is left out, never decoded);
    ``parse_options``: extra keywords for ``wire.Payload.from_bytes``. Parsing is
    deterministic, so every honest peer leaves out the same invalid payloads.
    """
    reasons = dict(left_out or {})
    good: dict[int, wire.Payload] = {}
    nbytes = 0
    for peer in sorted(received):
        data = received[peer]
        if own is not None and peer == own[0].sender:
            if bytes(data) == own[1]:
                good[peer] = own[0]
                continue
        else:
            nbytes += len(data)
        if len(data) == 0:
            reasons[peer] = EMPTY_PAYLOAD_REASON
            continue
        try:
            payload = wire.Payload.from_bytes(
                data, layout, expect_step=step, expect_run_id=run_id, expect_sender=peer,
                max_bytes=max_bytes, **dict(parse_options or {}))
            if value_codec is not None and payload.value_codec != value_codec:
                raise wire.UnknownCodec(f"value codec {payload.value_codec!r}, this run uses "
                                        f"{value_codec!r}", offset=7)
        except wire.PayloadError as exc:
            reasons[peer] = f"invalid payload: {type(exc).__name__}: {exc}"
            continue
        good[peer] = payload
    for peer in range(int(world_size or 0)):
        if peer not in received and peer not in reasons:
            reasons[peer] = "missing"
    return ReceivedStep(int(step), good, dict(sorted(reasons.items())), nbytes)


class ModelStep:
    """A run's model-wide encode and decode: one payload per peer per step.

    ``shapes``: every tensor's shape, in a fixed order all peers share; ``chunk``, ``k``,
    ``value_codec`` (``f32``/``bf16``/``f16``/``sign``) and ``run_id`` as in ``wire``.
    Signed runs (``docs/threat-model.md``): ``manifest`` (a ``wire.signing.Manifest``; its
    digest is the run id) makes every parse require its sender's signature, and
    ``signing_key`` signs this peer's payloads.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], *, chunk: int = 64, k: int = 32,
                 value_codec: str = "f32", run_id=None, max_payload_bytes: int | None = None,
                 index_codec: str = "auto", manifest=None, signing_key=None):
        if manifest is not None:
            if run_id is not None and wire.run_id_bytes(run_id) != wire.run_id_bytes(manifest.run_id):
                raise ValueError("run_id differs from the manifest's (a signed run's id is its "
                                 "manifest digest)")
            run_id = manifest.run_id
        self.manifest, self.signing_key = manifest, signing_key
        self.layout = wire.Layout([tuple(s) for s in shapes], chunk=chunk, k=k)
        self.shapes = [tuple(s) for s in shapes]
        self.chunk, self.k = int(chunk), int(k)
        self.value_codec, self.index_codec = value_codec, index_codec
        self.run_id = 0 if run_id is None else run_id
        self.max_payload_bytes = max_payload_bytes

    def max_bytes(self) -> int:
        """The largest valid payload of this layout and codec (the bound on every read)."""
        bound = self.layout.max_payload_bytes(self.value_codec)
        return bound if self.max_payload_bytes is None else min(bound, int(self.max_payload_bytes))

    def encode(self, step: int, sender: int, deltas: Sequence[Tensor], grads: Sequence[Tensor],
               beta: float, lr: float, *, backend: str = "auto") -> tuple[wire.Payload, bytes]:
        """SPEC 3 on every tensor (in place on ``deltas``), then this peer's payload and bytes."""
        indices, values = ops.demo_step_many_(deltas, grads, beta, lr, self.k, self.chunk,
                                              backend=backend)
        return self.build(step, sender, indices, values)

    def restore(self, deltas: Sequence[Tensor], indices: Sequence[Tensor],
                values: Sequence[Tensor]) -> None:
        """Adds back to ``deltas`` what :meth:`encode` sent out of them (its error feedback),
        for a step whose exchange failed: the selected coefficients return to the momentum
        instead of being lost. (Exact up to float32 rounding of the inverse.)"""
        back = ops.decompress_many([[i] for i in indices], [[v.float()] for v in values],
                                   self.shapes, self.chunk, reduce="sum_over_peers")
        for delta, b in zip(deltas, back):
            delta.add_(b.to(delta.device))

    def build(self, step: int, sender: int, indices: Sequence[Tensor], values: Sequence[Tensor]
              ) -> tuple[wire.Payload, bytes]:
        """The payload (and its bytes) of already-selected ``(indices, values)`` per tensor."""
        payload = wire.Payload(step, sender, self.run_id, self.layout,
                               [i.cpu() for i in indices], [v.cpu() for v in values],
                               self.value_codec, index_codec=self.index_codec)
        return payload, payload.to_bytes(signing_key=self.signing_key)

    def parse(self, step: int, received: Mapping[int, bytes], **kwargs) -> ReceivedStep:
        """:func:`parse_received` with this run's layout, run id and size bound."""
        kwargs.setdefault("max_bytes", self.max_bytes())
        kwargs.setdefault("value_codec", self.value_codec)
        if self.manifest is not None:
            kwargs["parse_options"] = {"manifest": self.manifest, **dict(kwargs.get("parse_options") or {})}
        return parse_received(self.layout, step, self.run_id, received, **kwargs)

    def decode(self, payloads: Mapping[int, wire.Payload], *, sign: bool = True,
               reduce: str = "mean", device: torch.device | str = "cpu",
               backend: str = "auto", clip_tau: float | None = None,
               out: list[Tensor] | None = None,
               step: tuple[list[Tensor], list[float], list[float]] | None = None) -> list[Tensor]:
        """One update per tensor from validated payloads (ascending sender id), on ``device``;
        zeros when no payload made the step. ``clip_tau``: SPEC 4.2's robust clip of each
        peer's values per tensor (``f32``/``bf16``/``f16`` codecs; see ``robust``). ``out``:
        float32 buffers (one per tensor) to write and return instead of fresh tensors.
        ``step``: ``(params, keeps, steps)``, with ``out``: also step each parameter by its
        update (:func:`~distro_kernels.ops.decompress_many_apply_`)."""
        senders = sorted(payloads)
        if not senders:
            if out is None:
                return [torch.zeros(s, dtype=torch.float32, device=device) for s in self.shapes]
            out = [o.zero_() for o in out]
            if step is not None:
                for p, keep, alpha, u in zip(*step, out):
                    torch_step_(p, u, keep, alpha)
            return out
        ordered = [payloads[p] for p in senders]
        codec = ordered[0].decompress_codec
        if any(p.decompress_codec != codec or p.layout != self.layout for p in ordered):
            raise ValueError("payloads of one step disagree on layout or value codec")
        per_peer = [p.indices for p in ordered]  # [peer][tensor], views of the parsed arrays
        indices = [[peer[t].to(device) for peer in per_peer] for t in range(self.layout.n_tensors)]
        values = [[p.wire_values(t).to(device) for p in ordered] for t in range(self.layout.n_tensors)]
        if clip_tau is not None:
            if codec == "sign":
                raise ValueError("clip_tau is for the f32/bf16/f16 codecs (a sign peer's weight "
                                 "is bounded already: robust.sign_mean_bound)")
            values = robust.clip_model(values, clip_tau)
        if step is not None:
            params, keeps, steps = step
            return ops.decompress_many_apply_(indices, values, self.shapes, self.chunk, out=out, params=params,
                                              keeps=keeps, steps=steps, reduce=reduce, value_codec=codec,
                                              sign=sign, backend=backend)
        return ops.decompress_many(indices, values, self.shapes, self.chunk, reduce=reduce,
                                   value_codec=codec, sign=sign, out=out, backend=backend)
