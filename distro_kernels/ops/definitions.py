"""The ``torch.library`` custom ops of the ``distro_kernels`` namespace.

Each op has one schema (no backend argument: compiled graphs must not bake one in), a fake
implementation (shapes and dtypes only, so it traces under ``torch.compile``), and kernels
per dispatch key: ``CPU`` and ``CUDA`` kernels run the implementation that
``dispatch.select`` names for the tensors' device (native C++ on CPU; native CUDA/HIP, else
Triton on CUDA; the eager reference where nothing else is built), and the default kernel
serves every other device with the eager reference. Every kernel and fake checks its
arguments first (``checks``); implementations receive contiguous, validated tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch, reference
from . import checks
from .arguments import as_float, codec_values, dense

NS = "distro_kernels"
DEVICE_KERNELS = ("cpu", "cuda")  # dispatch keys with their own kernel; others: the default


def _define(kernel, mutates_args=()):
    """The op named after ``kernel`` (its annotations are the schema), with ``kernel`` as the
    default and as the ``CPU``/``CUDA`` kernels: the dispatcher routes by device, and each
    device's kernel runs what ``dispatch`` registered for that device."""
    name = kernel.__name__.lstrip("_")
    op = torch.library.custom_op(f"{NS}::{name}", kernel, mutates_args=mutates_args)
    op.register_kernel(DEVICE_KERNELS, kernel)
    return op


# ----------------------------------------------------------------------------- dct / idct


def _dct(x: Tensor, chunk: int, policy: str) -> Tensor:
    plan = checks.dct(x, chunk, policy)
    return dispatch.select(x.device).dct(x.contiguous(), plan)


dct = _define(_dct)


@dct.register_fake
def _(x, chunk, policy):
    plan = checks.dct(x, chunk, policy)
    return x.new_empty((plan.n_chunks, plan.elements_per_chunk), dtype=torch.float32)


def _idct(coeffs: Tensor, shape: list[int], chunk: int, policy: str) -> Tensor:
    plan = checks.idct(coeffs, shape, chunk, policy)
    return dispatch.select(coeffs.device).idct(coeffs.contiguous(), plan)


idct = _define(_idct)


@idct.register_fake
def _(coeffs, shape, chunk, policy):
    plan = checks.idct(coeffs, shape, chunk, policy)
    return coeffs.new_empty(plan.shape, dtype=torch.float32)


# ----------------------------------------------------------------------------- encode


def _compress(x: Tensor, k: int, chunk: int, policy: str) -> tuple[Tensor, Tensor]:
    plan = checks.compress(x, k, chunk, policy)
    return dispatch.select(x.device).compress(x.contiguous(), plan, k)


compress = _define(_compress)


@compress.register_fake
def _(x, k, chunk, policy):
    plan = checks.compress(x, k, chunk, policy)
    shape = (plan.n_chunks, plan.k_eff(k))
    return x.new_empty(shape, dtype=torch.int32), x.new_empty(shape, dtype=torch.float32)


def _demo_step_(delta: Tensor, grad: Tensor, beta: float, lr: float, k: int, chunk: int
               ) -> tuple[Tensor, Tensor]:
    plan = checks.demo_step(delta, grad, chunk, k)
    return dispatch.select(delta.device).demo_step_(delta, grad.contiguous(), plan, beta, lr, k)


demo_step_ = _define(_demo_step_, mutates_args=("delta",))


@demo_step_.register_fake
def _(delta, grad, beta, lr, k, chunk):
    plan = checks.demo_step(delta, grad, chunk, k, memory=False)
    shape = (plan.n_chunks, plan.k_eff(k))
    return delta.new_empty(shape, dtype=torch.int32), delta.new_empty(shape)


def _demo_step_many_(deltas: list[Tensor], grads: list[Tensor], beta: float, lr: float, k: int,
                    chunk: int) -> tuple[Tensor, Tensor]:
    plans = checks.demo_steps(deltas, grads, chunk, k)
    module = dispatch.select(deltas[0].device)
    return module.demo_step_many_(deltas, dense(grads), plans, beta, lr, k)


demo_step_many_ = _define(_demo_step_many_, mutates_args=("deltas",))


def _empty_selection(like: Tensor, plans, k: int) -> tuple[Tensor, Tensor]:
    """A fused step's outputs, flat over every tensor's chunks: int32 indices, float values."""
    total = sum(plan.n_chunks * plan.k_eff(k) for plan in plans)
    return like.new_empty(total, dtype=torch.int32), like.new_empty(total)


@demo_step_many_.register_fake
def _(deltas, grads, beta, lr, k, chunk):
    return _empty_selection(deltas[0], checks.demo_steps(deltas, grads, chunk, k, memory=False), k)


def _demo_step_coeffs_many_(states: list[Tensor], grads: list[Tensor], beta: float, lr: float,
                            k: int, chunk: int) -> tuple[Tensor, Tensor]:
    plans = checks.demo_steps_coeffs(states, grads, chunk, k)
    module = dispatch.select(states[0].device)
    # devices without a fused kernel run the eager composite (DCT, then selection)
    step = getattr(module, "demo_step_coeffs_many_", None) or reference.demo_step_coeffs_many_
    return step(states, dense(grads), plans, beta, lr, k)


demo_step_coeffs_many_ = _define(_demo_step_coeffs_many_, mutates_args=("states",))


@demo_step_coeffs_many_.register_fake
def _(states, grads, beta, lr, k, chunk):
    return _empty_selection(states[0], checks.demo_steps_coeffs(states, grads, chunk, k, memory=False), k)


# ----------------------------------------------------------------------------- decode


def _device_of(tensors: list[Tensor], fallback: str) -> torch.device:
    return tensors[0].device if tensors else torch.device(fallback)


def _decompress(indices_list: list[Tensor], values_list: list[Tensor], shape: list[int],
               chunk: int, reduce: str, value_codec: str, sign: bool, policy: str) -> Tensor:
    plan = checks.decompress(indices_list, values_list, shape, chunk, reduce, value_codec, policy)
    module = dispatch.select(_device_of(indices_list, "cpu"))
    return module.decompress(dense(indices_list), codec_values(values_list, value_codec),
                             plan, reduce, value_codec, sign)


decompress = _define(_decompress)


@decompress.register_fake
def _(indices_list, values_list, shape, chunk, reduce, value_codec, sign, policy):
    plan = checks.decompress(indices_list, values_list, shape, chunk, reduce, value_codec, policy)
    return torch.empty(plan.shape, dtype=torch.float32, device=_device_of(indices_list, "meta"))


def _decompress_many(indices: list[Tensor], values: list[Tensor], shapes_flat: list[int],
                    ndims: list[int], chunk: int, reduce: str, value_codec: str, sign: bool
                    ) -> list[Tensor]:
    indices_lists, values_lists, plans = checks.decompress_many(
        indices, values, shapes_flat, ndims, chunk, reduce, value_codec)
    module = dispatch.select(_device_of(indices, "cpu"))
    return module.decompress_many(
        [dense(peers) for peers in indices_lists],
        [codec_values(peers, value_codec) for peers in values_lists],
        plans, reduce, value_codec, sign)


decompress_many = _define(_decompress_many)


@decompress_many.register_fake
def _(indices, values, shapes_flat, ndims, chunk, reduce, value_codec, sign):
    _, _, plans = checks.decompress_many(indices, values, shapes_flat, ndims, chunk, reduce, value_codec)
    device = _device_of(indices, "meta")
    return [torch.empty(plan.shape, dtype=torch.float32, device=device) for plan in plans]


def _decode_args(indices_lists, values_lists, plans, reduce, value_codec, sign):
    return ([dense(peers) for peers in indices_lists],
            [codec_values(peers, value_codec) for peers in values_lists], plans, reduce,
            value_codec, sign)


def _decode_into(module, outs, args) -> None:
    into = getattr(module, "decompress_many_into", None)
    if into is not None:  # writes outs directly, after validating every input
        into(outs, *args)
        return
    for out, result in zip(outs, module.decompress_many(*args)):  # fails before any copy
        out.copy_(result)


def _decompress_many_into_(outs: list[Tensor], indices: list[Tensor], values: list[Tensor],
                           shapes_flat: list[int], ndims: list[int], chunk: int, reduce: str,
                           value_codec: str, sign: bool) -> None:
    indices_lists, values_lists, plans = checks.decompress_many(
        indices, values, shapes_flat, ndims, chunk, reduce, value_codec)
    checks.decode_outputs(outs, plans, [*indices, *values])
    _decode_into(dispatch.select(outs[0].device), outs,
                 _decode_args(indices_lists, values_lists, plans, reduce, value_codec, sign))


decompress_many_into_ = _define(_decompress_many_into_, mutates_args=("outs",))


@decompress_many_into_.register_fake
def _(outs, indices, values, shapes_flat, ndims, chunk, reduce, value_codec, sign):
    _, _, plans = checks.decompress_many(indices, values, shapes_flat, ndims, chunk, reduce, value_codec)
    checks.decode_outputs(outs, plans, [*indices, *values], memory=False)


def torch_step_(p: Tensor, update: Tensor, keep: float, step: float) -> None:
    """The sign-SGD step in torch ops: ``p.mul_(keep)`` (not when ``keep == 1``), then
    ``p.add_(update, alpha=step)``; what ``decompress_many_apply_`` computes without its fused
    kernel, and ``DeMo`` where the decode did not step."""
    if keep != 1.0:
        p.mul_(keep)
    p.add_(update, alpha=step)


def _decompress_many_apply_(outs: list[Tensor], params: list[Tensor], indices: list[Tensor],
                            values: list[Tensor], shapes_flat: list[int], ndims: list[int], chunk: int,
                            reduce: str, value_codec: str, sign: bool, keeps: list[float],
                            steps: list[float]) -> None:
    indices_lists, values_lists, plans = checks.decompress_many(
        indices, values, shapes_flat, ndims, chunk, reduce, value_codec)
    checks.decode_outputs(outs, plans, [*indices, *values])
    checks.step_params(params, keeps, steps, outs, [*indices, *values])
    module = dispatch.select(outs[0].device)
    args = _decode_args(indices_lists, values_lists, plans, reduce, value_codec, sign)
    fused = getattr(module, "decompress_many_apply_", None)
    if fused is not None and sign:  # the step in the decode's pass, after every input is validated
        fused(outs, params, keeps, steps, *args)  # (signs: the torch ops' bits, see api)
        return
    _decode_into(module, outs, args)
    for p, update, keep, step in zip(params, outs, keeps, steps):
        torch_step_(p, update, keep, step)


decompress_many_apply_ = _define(_decompress_many_apply_, mutates_args=("outs", "params"))


@decompress_many_apply_.register_fake
def _(outs, params, indices, values, shapes_flat, ndims, chunk, reduce, value_codec, sign, keeps, steps):
    _, _, plans = checks.decompress_many(indices, values, shapes_flat, ndims, chunk, reduce, value_codec)
    checks.decode_outputs(outs, plans, [*indices, *values], memory=False)
    checks.step_params(params, keeps, steps, outs, [*indices, *values], memory=False)


# ----------------------------------------------------------------------------- signs


def _pack_signs(values: Tensor) -> Tensor:
    return dispatch.select(values.device).pack_signs(as_float(values).contiguous())


pack_signs = _define(_pack_signs)


@pack_signs.register_fake
def _(values):
    return values.new_empty(((values.numel() + 7) // 8,), dtype=torch.uint8)


def _unpack_signs(packed: Tensor, n: int) -> Tensor:
    checks.unpack_signs(packed, n)
    return dispatch.select(packed.device).unpack_signs(packed.reshape(-1).contiguous(), n)


unpack_signs = _define(_unpack_signs)


@unpack_signs.register_fake
def _(packed, n):
    checks.unpack_signs(packed, n)
    return packed.new_empty((n,), dtype=torch.float32)


ALL_OPS = (dct, idct, compress, demo_step_, demo_step_many_, demo_step_coeffs_many_, decompress,
           decompress_many, decompress_many_into_, decompress_many_apply_, pack_signs, unpack_signs)
