"""One step end to end: send this peer's payload, parse every peer's bytes, leave out the
invalid ones (with the rule that failed), in ascending peer order."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..step import parse_received
from ..wire import Payload


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
    parsed = parse_received(
        payload.layout, payload.step, payload.run_id, result, own=(payload, data),
        max_bytes=max_bytes, left_out=result.left_out, value_codec=payload.value_codec,
        parse_options={"manifest": manifest})
    return StepResult(result.step, parsed.payloads, parsed.left_out, result.elapsed)
