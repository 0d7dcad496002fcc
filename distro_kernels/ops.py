"""The public ops: one ``torch.library`` custom op per kernel in the ``distro_kernels`` namespace.

Each op has a fake (meta) implementation so it traces under ``torch.compile``; its body picks
the backend for the tensors' device (``backends.resolve``). The plain functions at the bottom
are the public API: they validate arguments once, then call the op.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import backends
from .chunking import ChunkPlan, chunk_plan
from .validation import (
    check_chunk_k,
    check_float,
    check_shape_matches,
    check_sparse_lists,
)

_NS = "distro_kernels"


def _plan(shape: Sequence[int], chunk: int, policy: str = "divisor") -> ChunkPlan:
    return chunk_plan(shape, chunk, policy)


# ----------------------------------------------------------------------------- checks
# Every op body and every fake implementation runs these first: the raw ops
# (``torch.ops.distro_kernels.*``) are entry points too, so no kernel may trust its caller.


def _checked_dct(x, chunk, policy):
    check_float("x", x)
    check_chunk_k(chunk)
    return _plan(x.shape, chunk, policy)


def _checked_idct(coeffs, shape, chunk, policy):
    check_float("coeffs", coeffs)
    check_chunk_k(chunk)
    plan = _plan(shape, chunk, policy)
    check_shape_matches("coeffs", coeffs, (plan.n_chunks, plan.elements_per_chunk))
    return plan


def _checked_compress(x, k, chunk, policy):
    check_float("x", x)
    check_chunk_k(chunk, k)
    return _plan(x.shape, chunk, policy)


def _checked_state(delta: Tensor, grad: Tensor, chunk: int, k: int) -> ChunkPlan:
    if not isinstance(delta, torch.Tensor) or delta.dtype != torch.float32:
        raise TypeError("delta (the momentum state) must be a float32 tensor")
    if not delta.is_contiguous():
        raise ValueError("delta must be contiguous (it is updated in place)")
    check_float("grad", grad)
    if tuple(grad.shape) != tuple(delta.shape):
        raise ValueError(f"grad shape {tuple(grad.shape)} != delta shape {tuple(delta.shape)}")
    if grad.device != delta.device:
        raise ValueError("grad and delta are on different devices")
    check_chunk_k(chunk, k)
    return _plan(delta.shape, chunk)


def _checked_states(deltas, grads, chunk, k) -> list[ChunkPlan]:
    if len(deltas) != len(grads) or not deltas:
        raise ValueError("deltas and grads must be non-empty lists of equal length")
    devices = {d.device for d in deltas}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")
    return [_checked_state(d, g, chunk, k) for d, g in zip(deltas, grads)]


def _checked_decompress(indices_list, values_list, shape, chunk, reduce, value_codec, policy):
    check_chunk_k(chunk)
    plan = _plan(shape, chunk, policy)
    check_sparse_lists(indices_list, values_list, plan, value_codec, reduce)
    return plan


def _checked_unpack(packed, n):
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    if not 0 <= n <= packed.numel() * 8:
        raise ValueError(f"n={n} does not fit in {packed.numel()} bytes")


_CODEC_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}


def _codec_values(values_list: list[Tensor], value_codec: str) -> list[Tensor]:
    """``bf16``/``f16`` values are what that format can carry: round (to nearest even) first,
    so a float32 tensor decodes exactly as it would after a trip through the wire."""
    dtype = _CODEC_DTYPES.get(value_codec)
    return values_list if dtype is None else [v.to(dtype) for v in values_list]


def _check_peer_tensors(indices_list, values_list) -> None:
    """Before dispatch: the dispatcher's own message for a non-tensor names no peer."""
    for peer, (indices, values) in enumerate(zip(indices_list, values_list)):
        if not isinstance(indices, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise TypeError(f"peer {peer}: indices and values must be torch.Tensors")


def _require_tensor(name: str, x) -> None:
    """Public functions only catch non-tensors (the dispatcher's message names no argument);
    every other check runs once, in the op body."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def _as_float(x: Tensor) -> Tensor:
    """Integer or float64 inputs are converted (``pack_signs`` reads only the sign)."""
    return x if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else x.float()


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op(f"{_NS}::dct", mutates_args=())
def _dct_op(x: Tensor, chunk: int, policy: str, backend: str) -> Tensor:
    plan = _checked_dct(x, chunk, policy)
    return backends.resolve(backend, x.device).dct(x.contiguous(), plan)


@_dct_op.register_fake
def _(x, chunk, policy, backend):
    plan = _checked_dct(x, chunk, policy)
    return x.new_empty((plan.n_chunks, plan.elements_per_chunk), dtype=torch.float32)


@torch.library.custom_op(f"{_NS}::idct", mutates_args=())
def _idct_op(coeffs: Tensor, shape: list[int], chunk: int, policy: str, backend: str) -> Tensor:
    plan = _checked_idct(coeffs, shape, chunk, policy)
    return backends.resolve(backend, coeffs.device).idct(coeffs.contiguous(), plan)


@_idct_op.register_fake
def _(coeffs, shape, chunk, policy, backend):
    plan = _checked_idct(coeffs, shape, chunk, policy)
    return coeffs.new_empty(plan.shape, dtype=torch.float32)


@torch.library.custom_op(f"{_NS}::compress", mutates_args=())
def _compress_op(x: Tensor, k: int, chunk: int, policy: str, backend: str) -> tuple[Tensor, Tensor]:
    plan = _checked_compress(x, k, chunk, policy)
    return backends.resolve(backend, x.device).compress(x.contiguous(), plan, k)


@_compress_op.register_fake
def _(x, k, chunk, policy, backend):
    plan = _checked_compress(x, k, chunk, policy)
    shape = (plan.n_chunks, plan.k_eff(k))
    return x.new_empty(shape, dtype=torch.int32), x.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op(f"{_NS}::demo_step_", mutates_args=("delta",))
def _demo_step_op(
    delta: Tensor, grad: Tensor, beta: float, lr: float, k: int, chunk: int, backend: str
) -> tuple[Tensor, Tensor]:
    plan = _checked_state(delta, grad, chunk, k)
    module = backends.resolve(backend, delta.device)
    return module.demo_step_(delta, grad.contiguous(), plan, beta, lr, k)


@_demo_step_op.register_fake
def _(delta, grad, beta, lr, k, chunk, backend):
    plan = _checked_state(delta, grad, chunk, k)
    shape = (plan.n_chunks, plan.k_eff(k))
    return delta.new_empty(shape, dtype=torch.int32), delta.new_empty(shape)


@torch.library.custom_op(f"{_NS}::demo_step_many_", mutates_args=("deltas",))
def _demo_step_many_op(
    deltas: list[Tensor], grads: list[Tensor], beta: float, lr: float, k: int, chunk: int,
    backend: str,
) -> tuple[Tensor, Tensor]:
    plans = _checked_states(deltas, grads, chunk, k)
    module = backends.resolve(backend, deltas[0].device)
    return module.demo_step_many_(deltas, [g.contiguous() for g in grads], plans, beta, lr, k)


@_demo_step_many_op.register_fake
def _(deltas, grads, beta, lr, k, chunk, backend):
    plans = _checked_states(deltas, grads, chunk, k)
    total = sum(plan.n_chunks * plan.k_eff(k) for plan in plans)
    return deltas[0].new_empty(total, dtype=torch.int32), deltas[0].new_empty(total)


@torch.library.custom_op(f"{_NS}::decompress", mutates_args=())
def _decompress_op(
    indices_list: list[Tensor], values_list: list[Tensor], shape: list[int], chunk: int,
    reduce: str, value_codec: str, sign: bool, policy: str, backend: str,
) -> Tensor:
    plan = _checked_decompress(indices_list, values_list, shape, chunk, reduce, value_codec, policy)
    device = indices_list[0].device if indices_list else torch.device("cpu")
    module = backends.resolve(backend, device)
    return module.decompress(
        [i.contiguous() for i in indices_list],
        [v.contiguous() for v in _codec_values(values_list, value_codec)],
        plan, reduce, value_codec, sign,
    )


@_decompress_op.register_fake
def _(indices_list, values_list, shape, chunk, reduce, value_codec, sign, policy, backend):
    plan = _checked_decompress(indices_list, values_list, shape, chunk, reduce, value_codec, policy)
    device = indices_list[0].device if indices_list else "meta"
    return torch.empty(plan.shape, dtype=torch.float32, device=device)


def _unflatten_shapes(shapes_flat: list[int], ndims: list[int]) -> list[list[int]]:
    if sum(ndims) != len(shapes_flat) or any(n < 0 for n in ndims):
        raise ValueError("shapes_flat does not match ndims")
    shapes, offset = [], 0
    for ndim in ndims:
        shapes.append(list(shapes_flat[offset : offset + ndim]))
        offset += ndim
    return shapes


def _checked_many(indices, values, shapes_flat, ndims, chunk, reduce, value_codec):
    """Per-tensor plans and per-tensor peer lists of a flat, tensor-major decompress_many call."""
    check_chunk_k(chunk)
    shapes = _unflatten_shapes(shapes_flat, ndims)
    if not shapes or len(indices) != len(values) or len(indices) % len(shapes):
        raise ValueError("indices and values must hold the same number of peers for every tensor")
    n_peers = len(indices) // len(shapes)
    per_tensor = lambda items: [list(items[t * n_peers : (t + 1) * n_peers]) for t in range(len(shapes))]  # noqa: E731
    indices_lists, values_lists, plans = per_tensor(indices), per_tensor(values), []
    for tensor, shape in enumerate(shapes):
        plan = _plan(shape, chunk)
        try:
            check_sparse_lists(indices_lists[tensor], values_lists[tensor], plan, value_codec, reduce)
        except (ValueError, TypeError) as error:
            raise type(error)(f"tensor {tensor}: {error}") from None
        plans.append(plan)
    return indices_lists, values_lists, plans


@torch.library.custom_op(f"{_NS}::decompress_many", mutates_args=())
def _decompress_many_op(
    indices: list[Tensor], values: list[Tensor], shapes_flat: list[int], ndims: list[int],
    chunk: int, reduce: str, value_codec: str, sign: bool, backend: str,
) -> list[Tensor]:
    indices_lists, values_lists, plans = _checked_many(
        indices, values, shapes_flat, ndims, chunk, reduce, value_codec
    )
    device = indices[0].device if indices else torch.device("cpu")
    module = backends.resolve(backend, device)
    values_lists = [_codec_values(values, value_codec) for values in values_lists]
    return module.decompress_many(indices_lists, values_lists, plans, reduce, value_codec, sign)


@_decompress_many_op.register_fake
def _(indices, values, shapes_flat, ndims, chunk, reduce, value_codec, sign, backend):
    _, _, plans = _checked_many(indices, values, shapes_flat, ndims, chunk, reduce, value_codec)
    device = indices[0].device if indices else "meta"
    return [torch.empty(plan.shape, dtype=torch.float32, device=device) for plan in plans]


@torch.library.custom_op(f"{_NS}::pack_signs", mutates_args=())
def _pack_signs_op(values: Tensor, backend: str) -> Tensor:
    return backends.resolve(backend, values.device).pack_signs(_as_float(values).contiguous())


@_pack_signs_op.register_fake
def _(values, backend):
    return values.new_empty(((values.numel() + 7) // 8,), dtype=torch.uint8)


@torch.library.custom_op(f"{_NS}::unpack_signs", mutates_args=())
def _unpack_signs_op(packed: Tensor, n: int, backend: str) -> Tensor:
    _checked_unpack(packed, n)
    return backends.resolve(backend, packed.device).unpack_signs(packed.reshape(-1).contiguous(), n)


@_unpack_signs_op.register_fake
def _(packed, n, backend):
    _checked_unpack(packed, n)
    return packed.new_empty((n,), dtype=torch.float32)


# ----------------------------------------------------------------------------- public API


def dct(x: Tensor, chunk: int = 64, *, policy: str = "divisor", backend: str = "auto") -> Tensor:
    """Chunked orthonormal DCT-II of ``x`` -> float32 ``(n_chunks, E)`` in SPEC chunk order."""
    _require_tensor("x", x)
    return _dct_op(x, chunk, policy, backend)


def idct(
    coeffs: Tensor, shape: Sequence[int], chunk: int = 64, *, policy: str = "divisor",
    backend: str = "auto",
) -> Tensor:
    """Inverse of :func:`dct` with SPEC 4.3's canonical folds (bit-identical on every backend)."""
    _require_tensor("coeffs", coeffs)
    return _idct_op(coeffs, [int(d) for d in shape], chunk, policy, backend)


def compress(
    x: Tensor, k: int = 32, chunk: int = 64, *, policy: str = "divisor", backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """DCT + per-chunk top-``k`` by ``|X|`` (ties: smaller index) -> ``(indices, values)``.

    ``indices``: int32 ``(n_chunks, k_eff)``, ascending per chunk; ``values``: float32.
    """
    _require_tensor("x", x)
    return _compress_op(x, k, chunk, policy, backend)


def decompress(
    indices_list: Sequence[Tensor], values_list: Sequence[Tensor], shape: Sequence[int],
    chunk: int = 64, *, reduce: str = "mean", value_codec: str = "f32", sign: bool = False,
    policy: str = "divisor", backend: str = "auto",
) -> Tensor:
    """SPEC section 4: aggregate P peers (list order) and run the canonical inverse DCT.

    Bit-identical on every backend. ``value_codec="sign"`` takes each peer's values as the
    uint8 output of :func:`pack_signs`; ``"bf16"``/``"f16"`` round float values to that format
    first. ``sign=True`` returns ``sign(y)`` (DeMo's update).
    """
    _check_peer_tensors(indices_list, values_list)
    return _decompress_op(
        list(indices_list), list(values_list), [int(d) for d in shape], chunk, reduce,
        value_codec, sign, policy, backend,
    )


def decompress_many(
    indices_per_tensor: Sequence[Sequence[Tensor]], values_per_tensor: Sequence[Sequence[Tensor]],
    shapes: Sequence[Sequence[int]], chunk: int = 64, *, reduce: str = "mean",
    value_codec: str = "f32", sign: bool = False, backend: str = "auto",
) -> list[Tensor]:
    """:func:`decompress` for a whole model in one call (one dispatch, one parallel pass).

    ``indices_per_tensor[t][p]`` / ``values_per_tensor[t][p]`` are peer ``p``'s payload for
    tensor ``t``; every tensor has the same peers, in the same order. Bit-identical to calling
    :func:`decompress` per tensor.
    """
    if not shapes or len(indices_per_tensor) != len(shapes) or len(values_per_tensor) != len(shapes):
        raise ValueError("indices_per_tensor, values_per_tensor and shapes must be non-empty and of equal length")
    n_peers = len(indices_per_tensor[0])
    for tensor, peers in enumerate(indices_per_tensor):
        if len(peers) != n_peers or len(values_per_tensor[tensor]) != n_peers:
            raise ValueError(f"tensor {tensor} has {len(peers)} peers, tensor 0 has {n_peers}")
        try:
            _check_peer_tensors(peers, values_per_tensor[tensor])
        except TypeError as error:
            raise TypeError(f"tensor {tensor}: {error}") from None
    shapes = [[int(d) for d in shape] if len(shape) else [] for shape in shapes]
    return _decompress_many_op(
        [i for peers in indices_per_tensor for i in peers],
        [v for peers in values_per_tensor for v in peers],
        [d for shape in shapes for d in shape], [len(shape) for shape in shapes],
        chunk, reduce, value_codec, sign, backend,
    )


def pack_signs(values: Tensor, *, backend: str = "auto") -> Tensor:
    """1 bit per value (bit = signbit), LSB-first, flattened row-major -> uint8."""
    check_float("values", values)  # the raw op also takes integers; the public function does not
    return _pack_signs_op(values, backend)


def unpack_signs(packed: Tensor, n: int, *, backend: str = "auto") -> Tensor:
    """``n`` float32 values of +1/-1 from :func:`pack_signs` bytes."""
    _require_tensor("packed", packed)
    return _unpack_signs_op(packed, n, backend)


def demo_step_(
    delta: Tensor, grad: Tensor, beta: float = 0.999, lr: float = 1.0, k: int = 32,
    chunk: int = 64, *, backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Fused DeMo encode (SPEC 3), in place on ``delta``: momentum, DCT, top-k, error feedback."""
    _require_tensor("delta", delta)
    _require_tensor("grad", grad)
    return _demo_step_op(delta, grad, float(beta), float(lr), k, chunk, backend)


def demo_step_many_(
    deltas: Sequence[Tensor], grads: Sequence[Tensor], beta: float = 0.999, lr: float = 1.0,
    k: int = 32, chunk: int = 64, *, backend: str = "auto",
) -> tuple[list[Tensor], list[Tensor]]:
    """:func:`demo_step_` over a whole model in one call (one dispatch, one parallel region).

    Every tensor is checked before any state changes. Returns per-tensor ``(indices, values)``
    lists: views of two flat buffers laid out tensor after tensor (see :func:`split_flat`).
    """
    flat_indices, flat_values = _demo_step_many_op(
        list(deltas), list(grads), float(beta), float(lr), k, chunk, backend
    )
    return split_flat(flat_indices, flat_values, [d.shape for d in deltas], k, chunk)


def split_flat(
    flat_indices: Tensor, flat_values: Tensor, shapes: Sequence[Sequence[int]], k: int, chunk: int
) -> tuple[list[Tensor], list[Tensor]]:
    """Per-tensor ``(n_chunks, k_eff)`` views of flat buffers laid out tensor after tensor."""
    indices_out, values_out, offset = [], [], 0
    for shape in shapes:
        plan = _plan(shape, chunk)
        rows, width = plan.n_chunks, plan.k_eff(k)
        indices_out.append(flat_indices[offset : offset + rows * width].view(rows, width))
        values_out.append(flat_values[offset : offset + rows * width].view(rows, width))
        offset += rows * width
    if offset != flat_indices.numel():
        raise ValueError(f"flat buffers hold {flat_indices.numel()} entries, shapes need {offset}")
    return indices_out, values_out
