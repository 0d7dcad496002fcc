"""The optimizer's seam to the wire format (``distro_kernels.wire``): encode and parse."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .. import wire

PayloadError = wire.PayloadError


class WireLayout:
    """Serializes and parses this model's payloads (SPEC section 5)."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], chunk: int, k: int, value_codec: str,
                 run_id, max_bytes: int | None):
        self.value_codec, self.run_id, self.max_bytes = value_codec, run_id, max_bytes
        self.layout = wire.Layout(shapes, chunk=chunk, k=k)

    def max_payload_bytes(self) -> int:
        return self.layout.max_payload_bytes(self.value_codec)

    def encode(self, step: int, sender: int, indices: list[Tensor], values: list[Tensor]) -> bytes:
        return wire.Payload(step, sender, self.run_id, self.layout, indices, values,
                            self.value_codec).to_bytes()

    def decode(self, data: bytes, expect_step: int, expect_sender: int):
        """-> ``(indices, values, value_codec)`` lists for ``decompress``; raises a
        ``PayloadError`` on any broken rule (wrong step, run, sender, layout, codec...)."""
        p = wire.Payload.from_bytes(data, self.layout, expect_step=expect_step,
                                    expect_run_id=self.run_id, expect_sender=expect_sender,
                                    max_bytes=self.max_bytes)
        if p.value_codec != self.value_codec:
            raise wire.UnknownCodec(f"value codec {p.value_codec!r}, this run uses "
                                    f"{self.value_codec!r}")
        pairs = [p.tensor(t) for t in range(self.layout.n_tensors)]
        return [i for i, _ in pairs], [v for _, v in pairs], p.decompress_codec
