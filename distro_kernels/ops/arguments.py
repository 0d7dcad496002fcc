"""Moving arguments between the public functions, the op schemas and the implementations.

Implementations get contiguous tensors only (every view, stride-0 ``expand`` included, is
materialised here, once), values already rounded to their wire format, and per-tensor lists
of a whole-model call.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..chunking import chunk_plan

_CODEC_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}


def dense(tensors: Sequence[Tensor]) -> list[Tensor]:
    return [t.contiguous() for t in tensors]


def codec_values(values_list: Sequence[Tensor], value_codec: str) -> list[Tensor]:
    """``bf16``/``f16`` values are what that format can carry: round (to nearest even) first,
    so a float32 tensor decodes exactly as it would after a trip through the wire."""
    dtype = _CODEC_DTYPES.get(value_codec)
    values = values_list if dtype is None else [v.to(dtype) for v in values_list]
    return dense(values)


def as_float(x: Tensor) -> Tensor:
    """Integer or float64 inputs are converted (``pack_signs`` reads only the sign)."""
    return x if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else x.float()


def flatten_model(indices_per_tensor, values_per_tensor, shapes):
    """Whole-model lists (``[tensor][peer]``) -> the flat, tensor-major lists of the op schema."""
    if not shapes or len(indices_per_tensor) != len(shapes) or len(values_per_tensor) != len(shapes):
        raise ValueError("indices_per_tensor, values_per_tensor and shapes must be non-empty "
                         "and of equal length")
    n_peers = len(indices_per_tensor[0])
    for tensor, peers in enumerate(indices_per_tensor):
        if len(peers) != n_peers or len(values_per_tensor[tensor]) != n_peers:
            raise ValueError(f"tensor {tensor} has {len(peers)} peers, tensor 0 has {n_peers}")
        try:
            require_peer_tensors(peers, values_per_tensor[tensor])
        except TypeError as error:
            raise TypeError(f"tensor {tensor}: {error}") from None
    shapes = [[int(d) for d in shape] for shape in shapes]
    return (
        [i for peers in indices_per_tensor for i in peers],
        [v for peers in values_per_tensor for v in peers],
        [d for shape in shapes for d in shape],
        [len(shape) for shape in shapes],
    )


def require_tensor(name: str, x) -> None:
    """Public functions catch non-tensors first (the dispatcher's own message names no
    argument); every other check runs once, in the op."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def require_peer_tensors(indices_list, values_list) -> None:
    for peer, (indices, values) in enumerate(zip(indices_list, values_list)):
        if not isinstance(indices, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise TypeError(f"peer {peer}: indices and values must be torch.Tensors")


def split_flat(
    flat_indices: Tensor, flat_values: Tensor, shapes: Sequence[Sequence[int]], k: int, chunk: int
) -> tuple[list[Tensor], list[Tensor]]:
    """Per-tensor ``(n_chunks, k_eff)`` views of flat buffers laid out tensor after tensor."""
    indices_out, values_out, offset = [], [], 0
    for shape in shapes:
        plan = chunk_plan(shape, chunk)
        rows, width = plan.n_chunks, plan.k_eff(k)
        indices_out.append(flat_indices[offset : offset + rows * width].view(rows, width))
        values_out.append(flat_values[offset : offset + rows * width].view(rows, width))
        offset += rows * width
    if offset != flat_indices.numel():
        raise ValueError(f"flat buffers hold {flat_indices.numel()} entries, shapes need {offset}")
    return indices_out, values_out
