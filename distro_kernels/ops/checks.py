"""Argument checks of each op, run by its fake and by its kernel on every device.

The raw ops (``torch.ops.distro_kernels.*``) are entry points too, so no kernel trusts its
caller: these run first in every kernel, and the fakes run them so a traced graph fails
where eager code would. Content rules of sparse inputs (index range and order, finite
values) are checked by each implementation in its own pass over the data.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..chunking import ChunkPlan, chunk_plan
from ..validation import (
    check_chunk_k,
    check_float,
    check_no_overlap,
    check_one_device,
    check_shape_matches,
    check_sparse_lists,
)


def dct(x: Tensor, chunk: int, policy: str) -> ChunkPlan:
    check_float("x", x)
    check_chunk_k(chunk)
    return chunk_plan(x.shape, chunk, policy)


def idct(coeffs: Tensor, shape: Sequence[int], chunk: int, policy: str) -> ChunkPlan:
    check_float("coeffs", coeffs)
    check_chunk_k(chunk)
    plan = chunk_plan(shape, chunk, policy)
    check_shape_matches("coeffs", coeffs, (plan.n_chunks, plan.elements_per_chunk))
    return plan


def compress(x: Tensor, k: int, chunk: int, policy: str) -> ChunkPlan:
    check_float("x", x)
    check_chunk_k(chunk, k)
    return chunk_plan(x.shape, chunk, policy)


def _inplace_state(state: Tensor, name: str, what: str) -> None:
    if not isinstance(state, torch.Tensor) or state.dtype != torch.float32:
        raise TypeError(f"{name} ({what}) must be a float32 tensor")
    if not state.is_contiguous():
        raise ValueError(f"{name} must be contiguous (it is updated in place)")


def _state(delta: Tensor, grad: Tensor, chunk: int, k: int, name: str = "delta") -> ChunkPlan:
    _inplace_state(delta, name, "the momentum state")
    check_float("grad", grad)
    if tuple(grad.shape) != tuple(delta.shape):
        raise ValueError(f"grad shape {tuple(grad.shape)} != {name} shape {tuple(delta.shape)}")
    check_chunk_k(chunk, k)
    return chunk_plan(delta.shape, chunk)


# ``memory=False`` in the fakes: fake tensors have no addresses; aliasing is a property of
# the real tensors, checked by every real kernel before it writes anything.


def demo_step(delta: Tensor, grad: Tensor, chunk: int, k: int, memory: bool = True) -> ChunkPlan:
    plan = _state(delta, grad, chunk, k)
    check_one_device("demo_step_", [delta, grad])
    if memory:
        check_no_overlap([("delta", delta)], [("grad", grad)])
    return plan


def demo_steps(deltas: Sequence[Tensor], grads: Sequence[Tensor], chunk: int, k: int,
               memory: bool = True) -> list[ChunkPlan]:
    if len(deltas) != len(grads) or not deltas:
        raise ValueError("deltas and grads must be non-empty lists of equal length")
    plans = [_state(d, g, chunk, k, f"delta of tensor {t}") for t, (d, g) in enumerate(zip(deltas, grads))]
    check_one_device("demo_step_many_", [*deltas, *grads])
    if memory:
        check_no_overlap([(f"delta of tensor {t}", d) for t, d in enumerate(deltas)],
                         [(f"grad of tensor {t}", g) for t, g in enumerate(grads)])
    return plans


def demo_steps_coeffs(states: Sequence[Tensor], grads: Sequence[Tensor], chunk: int, k: int,
                      memory: bool = True) -> list[ChunkPlan]:
    """Plans from the gradients' shapes; each state is that plan's ``(n_chunks, E)`` float32
    coefficients, contiguous (updated in place)."""
    if len(states) != len(grads) or not states:
        raise ValueError("states and grads must be non-empty lists of equal length")
    check_chunk_k(chunk, k)
    plans = []
    for t, (state, grad) in enumerate(zip(states, grads)):
        name = f"state of tensor {t}"
        _inplace_state(state, name, "the momentum's DCT coefficients")
        check_float(f"grad of tensor {t}", grad)
        plan = chunk_plan(grad.shape, chunk)
        check_shape_matches(name, state, (plan.n_chunks, plan.elements_per_chunk))
        plans.append(plan)
    check_one_device("demo_step_coeffs_many_", [*states, *grads])
    if memory:
        check_no_overlap([(f"state of tensor {t}", s) for t, s in enumerate(states)],
                         [(f"grad of tensor {t}", g) for t, g in enumerate(grads)])
    return plans


def decompress(indices_list, values_list, shape, chunk, reduce, value_codec, policy) -> ChunkPlan:
    check_chunk_k(chunk)
    plan = chunk_plan(shape, chunk, policy)
    check_sparse_lists(indices_list, values_list, plan, value_codec, reduce)
    check_one_device("decompress", [*indices_list, *values_list])
    return plan


def unflatten_shapes(shapes_flat: Sequence[int], ndims: Sequence[int]) -> list[list[int]]:
    if sum(ndims) != len(shapes_flat) or any(n < 0 for n in ndims):
        raise ValueError("shapes_flat does not match ndims")
    shapes, offset = [], 0
    for ndim in ndims:
        shapes.append(list(shapes_flat[offset : offset + ndim]))
        offset += ndim
    return shapes


def decompress_many(indices, values, shapes_flat, ndims, chunk, reduce, value_codec):
    """Per-tensor plans and peer lists of a flat, tensor-major ``decompress_many`` call."""
    check_chunk_k(chunk)
    shapes = unflatten_shapes(shapes_flat, ndims)
    if not shapes or len(indices) != len(values) or len(indices) % len(shapes):
        raise ValueError("indices and values must hold the same number of peers for every tensor")
    n_peers = len(indices) // len(shapes)
    indices_lists = [list(indices[t * n_peers : (t + 1) * n_peers]) for t in range(len(shapes))]
    values_lists = [list(values[t * n_peers : (t + 1) * n_peers]) for t in range(len(shapes))]
    plans = []
    for tensor, shape in enumerate(shapes):
        plan = chunk_plan(shape, chunk)
        try:
            check_sparse_lists(indices_lists[tensor], values_lists[tensor], plan, value_codec, reduce)
        except (ValueError, TypeError) as error:
            raise type(error)(f"tensor {tensor}: {error}") from None
        plans.append(plan)
    check_one_device("decompress_many", [*indices, *values])
    return indices_lists, values_lists, plans


def _written_in_place(name: str, tensors: Sequence[Tensor], shapes, whose: str) -> None:
    """Each ``tensors[t]`` a float32, contiguous tensor of ``shapes[t]`` (an op writes it)."""
    for t, (x, shape) in enumerate(zip(tensors, shapes)):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
            raise TypeError(f"{name}[{t}] must be a float32 tensor")
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"{name}[{t}] has shape {tuple(x.shape)}, {whose} {tuple(shape)}")
        if not x.is_contiguous():
            raise ValueError(f"{name}[{t}] must be contiguous (it is written in place)")


def decode_outputs(outs: Sequence[Tensor], plans: Sequence[ChunkPlan], inputs: Sequence[Tensor],
                   memory: bool = True) -> None:
    """``outs`` of ``decompress_many_into_``: one float32, contiguous tensor of each tensor's
    shape, on the inputs' device, none sharing memory with another or with an input."""
    if len(outs) != len(plans):
        raise ValueError(f"outs has {len(outs)} tensors for {len(plans)} decoded tensors")
    _written_in_place("outs", outs, [plan.shape for plan in plans], "the decode gives")
    check_one_device("decompress_many_into_", [*outs, *inputs])
    if memory:
        check_no_overlap([(f"outs[{t}]", o) for t, o in enumerate(outs)],
                         [(f"input {i}", x) for i, x in enumerate(inputs)])


def step_params(params: Sequence[Tensor], keeps: Sequence[float], steps: Sequence[float],
                outs: Sequence[Tensor], inputs: Sequence[Tensor], memory: bool = True) -> None:
    """``params`` of ``decompress_many_apply_``: one float32, contiguous tensor of each
    ``outs[t]``'s shape and device, a keep and a step each, none sharing memory with another,
    an output or an input."""
    if not len(params) == len(keeps) == len(steps) == len(outs):
        raise ValueError(f"{len(params)} params, {len(keeps)} keeps and {len(steps)} steps for "
                         f"{len(outs)} decoded tensors")
    _written_in_place("params", params, [out.shape for out in outs], "outs has")
    check_one_device("decompress_many_apply_", [*params, *outs])
    if memory:
        check_no_overlap([(f"params[{t}]", p) for t, p in enumerate(params)],
                         [*((f"outs[{t}]", o) for t, o in enumerate(outs)),
                          *((f"input {i}", x) for i, x in enumerate(inputs))])


def unpack_signs(packed: Tensor, n: int) -> None:
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    if not 0 <= n <= packed.numel() * 8:
        raise ValueError(f"n={n} does not fit in {packed.numel()} bytes")
