"""The ``cpu`` backend: the compiled C++ kernels (``_C``) on contiguous CPU tensors.

Same contract as ``reference.py``; tensors travel to C++ as raw addresses, so one build
serves every torch version. Threads follow ``torch.get_num_threads()``.
"""

from __future__ import annotations

import torch

from ._ext import cpu_ext
from .chunking import ChunkPlan
from .chunking import crop_to_shape, pad_to_plan
from .output_pool import pool as output_pool
from .validation import content_error

_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_CONTENT_RULES = {2: "index_range", 3: "index_order", 4: "value"}
_REDUCE_CODES = {"mean": 0, "sum_over_peers": 1}


def _geometry(plan: ChunkPlan) -> tuple[int, int, int, int, int]:
    return (plan.batch, plan.chunks_m, plan.chunks_n, plan.cm, plan.cn)


def _threads() -> int:
    return torch.get_num_threads()


def _check(status: int, what: str) -> None:
    if status == 5:
        raise MemoryError(f"{what}: {cpu_ext.status_string(status)}")
    if status:
        raise ValueError(f"{what}: {cpu_ext.status_string(status)}")


def _padded_input(x: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    return pad_to_plan(x, plan).contiguous() if plan.is_padded else x.contiguous()


def dct(x: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    x = _padded_input(x, plan)
    out = torch.empty(plan.n_chunks, plan.elements_per_chunk)
    _check(cpu_ext.dct(x.data_ptr(), _DTYPE_CODES[x.dtype], _geometry(plan), out.data_ptr(), _threads()), "dct")
    return out


def idct(coeffs: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    coeffs = coeffs.float().contiguous()
    out = torch.empty(plan.padded_shape)
    _check(cpu_ext.idct(coeffs.data_ptr(), _geometry(plan), out.data_ptr(), _threads()), "idct")
    return crop_to_shape(out, plan)


def compress(x: torch.Tensor, plan: ChunkPlan, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = _padded_input(x, plan)
    k_eff = plan.k_eff(k)
    indices = torch.empty(plan.n_chunks, k_eff, dtype=torch.int32)
    values = torch.empty(plan.n_chunks, k_eff)
    status = cpu_ext.compress(
        x.data_ptr(), _DTYPE_CODES[x.dtype], _geometry(plan), k_eff, indices.data_ptr(),
        values.data_ptr(), _threads(),
    )
    _check(status, "compress")
    return indices, values


def _step(kernel, what, states, grads, plans, beta, lr, k) -> tuple[torch.Tensor, torch.Tensor]:
    total = sum(plan.n_chunks * plan.k_eff(k) for plan in plans)
    indices = torch.empty(total, dtype=torch.int32)
    values = torch.empty(total)
    status = kernel(
        [s.data_ptr() for s in states], [g.data_ptr() for g in grads],
        [_DTYPE_CODES[g.dtype] for g in grads], [_geometry(p) for p in plans],
        float(beta), float(lr), int(k), indices.data_ptr(), values.data_ptr(), _threads(),
    )
    _check(status, what)
    return indices, values


def demo_step_many_(deltas, grads, plans, beta, lr, k) -> tuple[torch.Tensor, torch.Tensor]:
    return _step(cpu_ext.demo_step, "demo_step_", deltas, grads, plans, beta, lr, k)


def demo_step_coeffs_many_(states, grads, plans, beta, lr, k) -> tuple[torch.Tensor, torch.Tensor]:
    return _step(cpu_ext.demo_step_coeffs, "demo_step_coeffs_many_", states, grads, plans, beta, lr, k)


def demo_step_(delta, grad, plan, beta, lr, k) -> tuple[torch.Tensor, torch.Tensor]:
    indices, values = demo_step_many_([delta], [grad], [plan], beta, lr, k)
    shape = (plan.n_chunks, plan.k_eff(k))
    return indices.view(shape), values.view(shape)


def decompress_many(indices_lists, values_lists, plans, reduce="mean", value_codec="f32", sign=False,
                    outs=None, step=None):
    """Per tensor t, the P peers' ``indices_lists[t][p]``; one parallel pass over all tensors.

    ``outs``: contiguous float32 tensors of each plan's (unpadded) shape to write instead of
    fresh ones; the kernel validates every chunk before it writes any output. ``step``:
    ``(params, keeps, steps)``, with ``outs``: :func:`decompress_many_apply_`'s step, in the
    same pass."""
    if value_codec != "sign":
        values_lists = [[v.float().contiguous() for v in peers] for peers in values_lists]
    indices_lists = [[i.contiguous() for i in peers] for peers in indices_lists]
    if outs is None:  # reused blocks: fresh pages cost a third of a large decode (output_pool)
        outs = [output_pool.empty(plan.padded_shape) for plan in plans]
    k_effs = [peers[0].shape[1] if peers else 1 for peers in indices_lists]
    params, keeps, steps = step if step is not None else ([], [], [])
    status, bad_tensor, bad_peer = cpu_ext.decompress_many(
        [i.data_ptr() for peers in indices_lists for i in peers],
        [v.data_ptr() for peers in values_lists for v in peers],
        1 if value_codec == "sign" else 0, [_geometry(p) for p in plans], k_effs,
        _REDUCE_CODES[reduce], bool(sign), [o.data_ptr() for o in outs], _threads(),
        [p.data_ptr() for p in params], [float(k) for k in keeps], [float(s) for s in steps],
    )
    if status in _CONTENT_RULES:
        error = content_error(_CONTENT_RULES[status], bad_peer)
        if len(plans) > 1:
            error = ValueError(f"tensor {bad_tensor}: {error}")
        raise error
    _check(status, "decompress")
    return [crop_to_shape(out, plan) for out, plan in zip(outs, plans)]


def decompress_many_into(outs, indices_lists, values_lists, plans, reduce="mean", value_codec="f32",
                         sign=False) -> None:
    """:func:`decompress_many` written into ``outs`` (checked by the op: shapes, float32,
    contiguous, not overlapping the inputs; its plans use the divisor rule, never padded)."""
    decompress_many(indices_lists, values_lists, plans, reduce, value_codec, sign, outs=outs)


def decompress_many_apply_(outs, params, keeps, steps, indices_lists, values_lists, plans, reduce="mean",
                           value_codec="f32", sign=True) -> None:
    """:func:`decompress_many_into`, then ``params[t] = params[t] * keeps[t] + steps[t] *
    outs[t]`` (each operation rounded, as :func:`apply_update_`), each run of 16 chunks right
    after it is decoded, while its outputs are in cache (checked by the op)."""
    decompress_many(indices_lists, values_lists, plans, reduce, value_codec, sign, outs=outs,
                    step=(params, keeps, steps))


def decompress(indices_list, values_list, plan, reduce="mean", value_codec="f32", sign=False):
    return decompress_many([indices_list], [values_list], [plan], reduce, value_codec, sign)[0]


def pack_signs(values: torch.Tensor) -> torch.Tensor:
    values = values.float().contiguous()
    out = torch.empty((values.numel() + 7) // 8, dtype=torch.uint8)
    _check(cpu_ext.pack_signs(values.data_ptr(), values.numel(), out.data_ptr(), _threads()), "pack_signs")
    return out


def unpack_signs(packed: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.empty(n)
    _check(cpu_ext.unpack_signs(packed.data_ptr(), n, out.data_ptr(), _threads()), "unpack_signs")
    return out


def has_nonfinite(x: torch.Tensor) -> bool:
    """Whether a contiguous CPU float32/bfloat16/float16 tensor holds an inf or NaN (the
    optimizer's check, on this library's threads: see ``csrc/cpu/passes.cpp``)."""
    status, found = cpu_ext.has_nonfinite(x.data_ptr(), _DTYPE_CODES[x.dtype], x.numel(), _threads())
    _check(status, "has_nonfinite")
    return bool(found)


def apply_update_(p: torch.Tensor, update: torch.Tensor, keep: float | None, step: float) -> None:
    """``p.mul_(keep)`` (unless ``keep`` is None) then ``p.add_(update, alpha=step)``, each
    rounded in float32; bit for bit torch's when ``update`` holds signs (+-1 or 0). Both
    contiguous float32 CPU tensors of one size."""
    status = cpu_ext.apply_update(p.data_ptr(), update.data_ptr(), p.numel(), 0.0 if keep is None else keep,
                                  int(keep is not None), step, _threads())
    _check(status, "apply_update")
    torch.autograd.graph.increment_version(p)  # an in-place write, as p.add_ would count it
