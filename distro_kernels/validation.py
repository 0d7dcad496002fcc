"""Argument checks shared by every backend, so each error reads the same everywhere."""

from __future__ import annotations

from typing import Sequence

import torch

from .chunking import ChunkPlan

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
REDUCES = ("mean", "sum_over_peers")
VALUE_CODECS = ("f32", "bf16", "f16", "sign")
MAX_CHUNK = 256


def check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")


def check_chunk_k(chunk: int, k: int | None = None) -> None:
    if not 1 <= int(chunk) <= MAX_CHUNK:
        raise ValueError(f"chunk must be in [1, {MAX_CHUNK}], got {chunk}")
    if k is not None and int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def check_shape_matches(name: str, t: torch.Tensor, shape: Sequence[int]) -> None:
    if t.numel() != max(1, _prod(shape)) or (t.dim() and tuple(t.shape) != tuple(shape)):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def check_sparse_lists(
    indices_list: Sequence[torch.Tensor],
    values_list: Sequence[torch.Tensor],
    plan: ChunkPlan,
    value_codec: str,
    reduce: str,
) -> int:
    """Checks the metadata of P peers' ``(indices, values)``; returns ``k_eff``.

    Content rules (index range, strict ascent, finite values) are checked by each backend
    in its own pass over the data, with the messages in :func:`content_error`.
    """
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")
    if value_codec not in VALUE_CODECS:
        raise ValueError(f"value_codec must be one of {VALUE_CODECS}, got {value_codec!r}")
    if len(indices_list) != len(values_list):
        raise ValueError(
            f"indices_list has {len(indices_list)} peers but values_list has {len(values_list)}"
        )
    k_eff = None
    for peer, (indices, values) in enumerate(zip(indices_list, values_list)):
        if not isinstance(indices, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise TypeError(f"peer {peer}: indices and values must be torch.Tensors")
        if indices.dtype != torch.int32:
            raise TypeError(f"peer {peer}: indices must be int32, got {indices.dtype}")
        if indices.dim() != 2 or indices.shape[0] != plan.n_chunks:
            raise ValueError(
                f"peer {peer}: indices must have shape ({plan.n_chunks}, k), "
                f"got {tuple(indices.shape)}"
            )
        if not 1 <= indices.shape[1] <= plan.elements_per_chunk:
            raise ValueError(
                f"peer {peer}: {indices.shape[1]} indices per chunk, expected 1..{plan.elements_per_chunk}"
            )
        if k_eff is None:
            k_eff = indices.shape[1]
        elif indices.shape[1] != k_eff:
            raise ValueError(f"peer {peer}: {indices.shape[1]} indices per chunk, peer 0 has {k_eff}")
        count = indices.numel()
        if value_codec == "sign":
            if values.dtype != torch.uint8 or values.numel() != (count + 7) // 8:
                raise ValueError(
                    f"peer {peer}: sign values must be {(count + 7) // 8} uint8 bytes, "
                    f"got {values.numel()} of {values.dtype}"
                )
        else:
            if values.dtype not in FLOAT_DTYPES:
                raise TypeError(f"peer {peer}: values must be floating point, got {values.dtype}")
            if values.numel() != count:
                raise ValueError(f"peer {peer}: {values.numel()} values for {count} indices")
        if indices.device != values.device:
            raise ValueError(f"peer {peer}: indices and values are on different devices")
    return k_eff or 1


def content_error(rule: str, peer: int) -> ValueError:
    messages = {
        "index_range": "index out of range [0, E)",
        "index_order": "indices not strictly ascending within a chunk (unsorted or duplicate)",
        "value": "value not finite or |value| >= 2^64",
    }
    return ValueError(f"peer {peer}: {messages[rule]}")


def check_sparse_content(
    indices_list: Sequence[torch.Tensor], values_list: Sequence[torch.Tensor], plan: ChunkPlan,
    value_codec: str,
) -> None:
    """The content rules in eager torch (used by the reference backend)."""
    for peer, (indices, values) in enumerate(zip(indices_list, values_list)):
        if indices.numel() and (
            int(indices.min()) < 0 or int(indices.max()) >= plan.elements_per_chunk
        ):
            raise content_error("index_range", peer)
        if indices.shape[1] > 1 and not bool(torch.all(indices[:, 1:] > indices[:, :-1])):
            raise content_error("index_order", peer)
        if value_codec != "sign" and not bool(torch.all(values.float().abs() < 2.0**64)):
            raise content_error("value", peer)


# ----------------------------------------------------------------------------- devices, aliasing


def check_one_device(what: str, tensors: Sequence[torch.Tensor]) -> torch.device | None:
    """All of ``tensors`` on one device (the kernel of one device must never see another
    device's memory); returns it, or ``None`` for an empty list."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(f"{what}: all tensors must be on one device, got {names}")
    return next(iter(devices)) if devices else None


def _byte_span(t: torch.Tensor) -> tuple[int, int, int]:
    """``(storage key, first byte, end byte)`` a tensor may touch (its strided extent)."""
    if t.numel() == 0:
        return (0, 0, 0)
    extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    start = t.data_ptr()
    return (t.untyped_storage().data_ptr(), start, start + extent * t.element_size())


def check_no_overlap(written: Sequence[tuple[str, torch.Tensor]],
                     read: Sequence[tuple[str, torch.Tensor]] = ()) -> None:
    """No tensor that an op writes in place shares memory with another tensor of the call:
    chunks of "different" tensors run concurrently, so aliases would race. Reads may share."""
    spans = [(_byte_span(t), name, True) for name, t in written]
    # a read can only conflict with a write in the same storage: the others need no span
    # (a decode's many payload tensors cost ~5 us each here otherwise)
    written_storages = {span[0] for span, _, _ in spans}
    spans += [(_byte_span(t), name, False) for name, t in read
              if t.numel() and t.untyped_storage().data_ptr() in written_storages]
    spans = sorted((s for s in spans if s[0][2] > s[0][1]), key=lambda s: (s[0][0], s[0][1]))
    reach_any: dict[int, tuple[int, str]] = {}  # storage -> furthest end so far, and whose
    reach_written: dict[int, tuple[int, str]] = {}
    for (key, start, end), name, is_written in spans:
        earlier = reach_any if is_written else reach_written
        hit = earlier.get(key)
        if hit is not None and start < hit[0]:
            raise ValueError(f"{hit[1]} and {name} share memory; an in-place op needs "
                             "distinct tensors (clone one)")
        for reach, applies in ((reach_any, True), (reach_written, is_written)):
            if applies and end > reach.get(key, (0, ""))[0]:
                reach[key] = (end, name)
