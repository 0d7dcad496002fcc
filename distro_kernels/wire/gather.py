"""From parsed payloads to the arguments of :func:`distro_kernels.decompress`."""

from __future__ import annotations

from typing import Iterable

import torch

from .payload import Payload


def gather_tensor(
    payloads: Iterable[Payload], t: int
) -> tuple[list[torch.Tensor], list[torch.Tensor], str]:
    """Tensor ``t`` of every payload, ordered by ascending sender id (SPEC 4: never by
    arrival): ``(indices_list, values_list, value_codec)`` for ``decompress``.

    All payloads must share one layout and one decode codec (``sign`` or not)."""
    ps = sorted(payloads, key=lambda p: p.sender)
    if not ps:
        raise ValueError("no payloads")
    senders = [p.sender for p in ps]
    if len(set(senders)) != len(senders):
        raise ValueError(f"duplicate senders {senders}")
    layout, codec = ps[0].layout, ps[0].decompress_codec
    for p in ps:
        if p.layout != layout or p.decompress_codec != codec:
            raise ValueError("payloads disagree on layout or value codec")
    pairs = [p.tensor(t) for p in ps]
    return [i for i, _ in pairs], [v for _, v in pairs], codec
