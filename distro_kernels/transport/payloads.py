"""One step end to end: send this peer's payload, parse every peer's bytes, leave out the
invalid ones (with the rule that failed), in ascending peer order."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..wire import Payload, PayloadError


@dataclass
class StepResult:
    """``payloads``: ``{peer_id: Payload}`` of every valid, in-step peer (ascending ids);
    ``left_out``: ``{peer_id: reason}`` for every other peer (missing, late, invalid...)."""

    step: int
    payloads: dict[int, Payload]
    left_out: dict[int, str] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def peers(self) -> tuple[int, ...]:
        return tuple(self.payloads)


def exchange_payloads(transport, payload: Payload, *, max_bytes: int | None = None,
                      manifest=None, signing_key=None) -> StepResult:
    """Send ``payload`` through ``transport`` (anything with ``exchange(bytes, step=...)``)
    and parse what comes back against ``payload``'s layout, step and run id, checking that
    each payload's sender is the peer it came from.

    ``manifest`` / ``signing_key`` default to the transport's (a signed
    :class:`~.store.StoreTransport`): the payload is sent signed, and every received one must
    be signed by its sender's manifest key. ``max_bytes`` defaults to the layout's largest
    valid payload. Parsing is deterministic, so every honest peer leaves out the same invalid
    payloads.
    """
    if manifest is None:
        manifest = getattr(transport, "manifest", None)
    if signing_key is None:
        signing_key = getattr(transport, "signing_key", None)
    data = payload.to_bytes(signing_key=signing_key)
    result = transport.exchange(data, step=payload.step)
    good: dict[int, Payload] = {}
    left_out = dict(result.left_out)
    for peer, raw in sorted(result.items()):
        if peer == payload.sender and raw == data:
            good[peer] = payload  # our own bytes: no need to parse them
            continue
        try:
            good[peer] = Payload.from_bytes(
                raw, payload.layout, expect_step=payload.step, expect_run_id=payload.run_id,
                expect_sender=peer, max_bytes=max_bytes, manifest=manifest,
            )
        except PayloadError as e:
            left_out[peer] = f"invalid payload: {type(e).__name__}: {e}"
    return StepResult(result.step, good, dict(sorted(left_out.items())), result.elapsed)
