"""Moving payload bytes between peers, one message per peer per step.

- :class:`StoreTransport` (default): through a ``torch.distributed`` store, with a per-step
  deadline and a coordinator that commits each step's payload digests. With a
  :class:`~distro_kernels.wire.Manifest` and each peer's key (a signed run) no single peer
  can make the honest peers decode different bytes, hang them past the deadline, or make
  them read more than ``max_bytes`` per peer (docs/threat-model.md). Missing, late, invalid
  or equivocating peers are left out, for a reason every peer reports alike.
- :class:`GlooTransport`: gloo ``all_gather`` of sizes then bytes; fast, **for trusted groups
  only** (a rank can abort its receivers); raises :class:`TransportError` (never hangs past
  the deadline) when a peer fails.
- :class:`LocalNetwork`: N peers in one process (threads or one synchronous call).
- :func:`exchange_payloads`: send a ``wire.Payload`` and get the others' parsed payloads,
  invalid ones left out with the rule they broke.

``exchange(payload_bytes)`` at module level uses a :class:`StoreTransport` on the default
process group (``default_transport(deadline=..., manifest=..., signing_key=...)`` configures
it on first use).

Every transport has ``rank``, ``world_size``, ``exchange(payload_bytes, step=None) ->
{peer_id: bytes}`` (an :class:`ExchangeResult`, own bytes included) and ``left_out``.
Nothing code-executing is deserialised: bytes travel as store values or uint8 tensors.
"""

from .default import default_transport, exchange, reset_default_transport
from .gloo import GlooTransport
from .local import LocalNetwork
from .payloads import StepResult, exchange_payloads
from .result import ExchangeResult, TransportError
from .records import RecordError, payload_digest
from .store import DEFAULT_MAX_BYTES, StoreTransport, loopback_store

__all__ = [
    "DEFAULT_MAX_BYTES", "ExchangeResult", "GlooTransport", "LocalNetwork", "RecordError",
    "StepResult", "StoreTransport", "TransportError", "default_transport", "exchange",
    "exchange_payloads", "loopback_store", "payload_digest", "reset_default_transport",
]
