"""What one exchange returns: the bytes of every peer in the step, and who was left out."""

from __future__ import annotations


class TransportError(RuntimeError):
    """The exchange itself failed (not one peer: the channel), e.g. a broken collective."""


class ExchangeResult(dict):
    """``{peer_id: bytes}`` of every peer whose payload is in this step (own one included
    when it made the step), in ascending peer order, plus:

    - ``step``: the step number;
    - ``left_out``: ``{peer_id: reason}`` for every peer not in the mapping (missing, late,
      over the size limit, inconsistent sizes; after :func:`exchange_payloads`, also invalid);
    - ``elapsed``: seconds the exchange took on this peer.
    """

    def __init__(self, received: dict[int, bytes], left_out: dict[int, str], step: int,
                 elapsed: float = 0.0):
        super().__init__(sorted(received.items()))
        self.left_out = dict(sorted(left_out.items()))
        self.step = step
        self.elapsed = elapsed

    @property
    def peers(self) -> tuple[int, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        sizes = {p: len(b) for p, b in self.items()}
        return (f"ExchangeResult(step={self.step}, sizes={sizes}, left_out={self.left_out}, "
                f"elapsed={self.elapsed:.3f}s)")
