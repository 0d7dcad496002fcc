"""The ``cuda`` backend: op bodies of ``reference.py`` on validated contiguous tensors, run by
the prebuilt kernels of ``csrc/cuda`` (NVIDIA fatbin or AMD code object).

Every model-wide op is one launch over a tensor table (``table.py``). Chunk sides above 64
(only with ``chunk > 64``) and tensors of 2^32 or more chunks run the reference code.
"""

from __future__ import annotations

import functools

import torch

from .. import reference
from ..basis import cached_basis
from ..chunking import ChunkPlan
from ..validation import content_error
from . import table as tb
from .runtime import launch

_DTYPES = {torch.float32: tb.DTYPE_F32, torch.bfloat16: tb.DTYPE_BF16, torch.float16: tb.DTYPE_F16}
_REDUCES = {"mean": tb.REDUCE_MEAN, "sum_over_peers": tb.REDUCE_SUM_OVER_PEERS}


@functools.lru_cache(maxsize=256)
def _transposed(c: int, device: str) -> torch.Tensor:
    return cached_basis(c, device).t().contiguous()


def _bases(plan: ChunkPlan, device: torch.device) -> tuple[tuple[int, int, int], tuple]:
    """Device addresses of C_m, C_n, C_n^T (cached tensors: they outlive every launch)."""
    cm, cn = cached_basis(plan.cm, device), cached_basis(plan.cn, device)
    cn_t = _transposed(plan.cn, str(device))
    return (cm.data_ptr(), cn.data_ptr(), cn_t.data_ptr()), (cm, cn, cn_t)


def _upload(table: tb.Table, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(table.words).to(device)


def _float_input(x: torch.Tensor) -> torch.Tensor:
    return (x if x.dtype in _DTYPES else x.float()).contiguous()


def _padded(x: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    x = _float_input(x)
    return reference.pad_to_plan(x, plan).contiguous() if plan.is_padded else x


# ----------------------------------------------------------------------------- encode


def dct(x: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    if not tb.supported(plan):
        return reference.dct(x, plan)
    x = _padded(x, plan)
    out = torch.empty(plan.n_chunks, plan.elements_per_chunk, device=x.device)
    bases, _keep = _bases(plan, x.device)
    table = tb.encode_table([tb.EncodeItem(plan, bases, x.data_ptr(), _DTYPES[x.dtype], out.data_ptr())])
    words = _upload(table, x.device)
    launch("dk_encode", table.grid, (words.data_ptr(), table.n_tensors, tb.MODE_DCT, 0.0, 0.0), x.device)
    return out


def compress(x: torch.Tensor, plan: ChunkPlan, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not tb.supported(plan):
        return reference.compress(x, plan, k)
    x = _padded(x, plan)
    k_eff = plan.k_eff(k)
    idx = torch.empty(plan.n_chunks, k_eff, device=x.device, dtype=torch.int32)
    val = torch.empty(plan.n_chunks, k_eff, device=x.device)
    bases, _keep = _bases(plan, x.device)
    item = tb.EncodeItem(plan, bases, x.data_ptr(), _DTYPES[x.dtype], idx.data_ptr(), val.data_ptr(), k_eff)
    table = tb.encode_table([item])
    words = _upload(table, x.device)
    launch("dk_encode", table.grid, (words.data_ptr(), 1, tb.MODE_COMPRESS, 0.0, 0.0), x.device)
    return idx, val


def demo_step_many_(deltas, grads, plans, beta, lr, k) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch for every tensor: ``delta = beta delta + lr grad``, select on DCT(delta),
    ``delta -= IDCT(selected)``; indices and values flat, tensor after tensor."""
    device = deltas[0].device
    sizes = [p.n_chunks * p.k_eff(k) for p in plans]
    flat_idx = torch.empty(sum(sizes), device=device, dtype=torch.int32)
    flat_val = torch.empty(sum(sizes), device=device)
    items, keep, offset = [], [], 0
    for delta, grad, plan, size in zip(deltas, grads, plans, sizes):
        if not tb.supported(plan) or plan.is_padded:
            indices, values = reference.demo_step_(delta, grad, plan, beta, lr, k)
            flat_idx[offset:offset + size] = indices.reshape(-1)
            flat_val[offset:offset + size] = values.reshape(-1)
        else:
            grad = _float_input(grad)
            bases, basis_tensors = _bases(plan, device)
            keep.extend((grad, *basis_tensors))
            items.append(tb.EncodeItem(
                plan, bases, delta.data_ptr(), tb.DTYPE_F32, flat_idx.data_ptr() + 4 * offset,
                flat_val.data_ptr() + 4 * offset, plan.k_eff(k), grad.data_ptr(), _DTYPES[grad.dtype]))
        offset += size
    if items:
        table = tb.encode_table(items)
        words = _upload(table, device)
        launch("dk_encode", table.grid,
               (words.data_ptr(), table.n_tensors, tb.MODE_STEP, float(beta), float(lr)), device)
    return flat_idx, flat_val


def demo_step_(delta, grad, plan, beta, lr, k) -> tuple[torch.Tensor, torch.Tensor]:
    indices, values = demo_step_many_([delta], [grad], [plan], beta, lr, k)
    shape = (plan.n_chunks, plan.k_eff(k))
    return indices.view(shape), values.view(shape)


# ----------------------------------------------------------------------------- decode


def idct(coeffs: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """SPEC 4.3's canonical inverse of dense coefficients (bit-identical to the reference)."""
    if not tb.supported(plan):
        return reference.idct(coeffs, plan)
    src = coeffs.reshape(plan.n_chunks, plan.elements_per_chunk).float().contiguous()
    out = torch.empty(plan.padded_shape, device=src.device)
    bases, _keep = _bases(plan, src.device)
    table = tb.idct_table(plan, bases, src.data_ptr(), out.data_ptr())
    words = _upload(table, src.device)
    launch("dk_idct", table.grid, (words.data_ptr(), 1), src.device)
    return reference.crop_to_shape(out, plan)


def _prefixed(error: ValueError, tensor: int, many: bool) -> ValueError:
    return ValueError(f"tensor {tensor}: {error}") if many else error


def decompress_many(indices_lists, values_lists, plans, reduce="mean", value_codec="f32", sign=False):
    """SPEC section 4 for every tensor in one launch: validation, aggregation in ascending peer
    order, canonical inverse, optional sign. A content violation raises the error of the
    lowest bad tensor and peer (one device sync reads the flags)."""
    many = len(plans) > 1
    sign_codec = value_codec == "sign"
    items, keep, outs, gpu = [], [], [], []
    device = None
    for indices_list, values_list, plan in zip(indices_lists, values_lists, plans):
        use = bool(indices_list) and tb.supported(plan)
        gpu.append(use)
        if not use:
            outs.append(None)
            continue
        device = indices_list[0].device
        indices = [i.contiguous() for i in indices_list]
        values = [v.contiguous() if sign_codec else v.float().contiguous() for v in values_list]
        out = torch.empty(plan.padded_shape, device=device)
        bases, basis_tensors = _bases(plan, device)
        keep.extend((*indices, *values, *basis_tensors))
        outs.append(out)
        items.append(tb.DecodeItem(plan, bases, out.data_ptr(),
                                   [(i.data_ptr(), v.data_ptr()) for i, v in zip(indices, values)],
                                   indices[0].shape[1]))
    bad = None
    if items:
        table = tb.decode_table(items)
        words = _upload(table, device)
        flags = torch.zeros(sum(len(it.peers) for it in items), device=device, dtype=torch.int32)
        launch("dk_decompress", table.grid,
               (words.data_ptr(), table.n_tensors, _REDUCES[reduce],
                tb.CODEC_SIGN if sign_codec else tb.CODEC_FLOAT, int(bool(sign)), flags.data_ptr()),
               device)
        bad = tb.first_bad(flags.cpu().numpy(), [len(it.peers) for it in items])
    results, launched = [], 0
    for tensor, (indices_list, values_list, plan) in enumerate(zip(indices_lists, values_lists, plans)):
        if not gpu[tensor]:
            try:
                results.append(reference.decompress(indices_list, values_list, plan, reduce,
                                                    value_codec, sign))
            except ValueError as error:
                raise _prefixed(error, tensor, many) from None
            continue
        if bad is not None and bad[0] == launched:
            raise _prefixed(content_error(bad[2], bad[1]), tensor, many)
        results.append(reference.crop_to_shape(outs[tensor], plan))
        launched += 1
    return results


def decompress(indices_list, values_list, plan, reduce="mean", value_codec="f32", sign=False):
    return decompress_many([indices_list], [values_list], [plan], reduce, value_codec, sign)[0]


# ----------------------------------------------------------------------------- signs


def pack_signs(values: torch.Tensor) -> torch.Tensor:
    flat = values.reshape(-1).float().contiguous()
    nbytes = (flat.numel() + 7) // 8
    out = torch.empty(nbytes, device=flat.device, dtype=torch.uint8)
    if nbytes:
        launch("dk_pack_signs", -(-nbytes // tb.THREADS),
               (flat.data_ptr(), flat.numel(), out.data_ptr(), nbytes), flat.device)
    return out


def unpack_signs(packed: torch.Tensor, n: int) -> torch.Tensor:
    packed = packed.reshape(-1).contiguous()
    out = torch.empty(n, device=packed.device)
    if n:
        launch("dk_unpack_signs", -(-n // tb.THREADS), (packed.data_ptr(), n, out.data_ptr()),
               packed.device)
    return out
