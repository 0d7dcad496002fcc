"""The ``triton`` backend: op bodies on validated, contiguous tensors (see ``reference.py``).

CUDA (and ROCm, whose torch device is also ``cuda``) tensors run the compiled kernels; CPU
tensors run the same kernels in Triton's interpreter (that is how CI tests them). Chunks
with a dim above ``TILE_MAX`` (only when ``chunk > 64``) fall back to the reference code.
"""

from __future__ import annotations

import os
import sys

import torch

from .. import reference
from ..basis import cached_basis
from ..chunking import ChunkPlan, crop_to_shape
from ..validation import check_sparse_content
from ..profile import tuning as _tuning
from ._loader import interpreted, kernels

TILE_MAX = 64  # largest chunk dim with a Triton kernel (register/shared-memory budget)
ROWS_TILE = 2048  # elements per program tile in one-row-chunk mode (R * BN)
WARPS_LARGE, WARPS_SMALL = 8, 4  # warps for 4096-element tiles, and for smaller ones
# Warps of the encoder's 64x64 tile per vendor, and of its one-row-chunk tile (R x 64):
# chosen by the compile gate (no spills; see benchmarks/RESULTS.md, "Triton backend").
ENCODE_WARPS_LARGE = {"cuda": 8, "hip": 4}
ENCODE_WARPS_ROWS = 8
# The encoder's fp32 products: "ieee" (default: plain fp32, SPEC 6's fp32 bar) or "tf32x3"
# (NVIDIA tensor cores, fp32-level accuracy in a numpy model; check on the GPU first).
# Plain "tf32" misses SPEC 6's selection bar and is refused.
DOT_PRECISION = os.environ.get("DISTRO_TRITON_DOT_PRECISION", "ieee")
ENCODE_KB = 16  # columns of x per block of the first product
_MODE_DCT, _MODE_COMPRESS, _MODE_STEP = 0, 1, 2
_SRC_DENSE, _SRC_FLOAT, _SRC_SIGN = 0, 1, 2


def _interpreted(t: torch.Tensor) -> bool:
    """Whether kernels run in Triton's interpreter (then any device works, CPU included)."""
    if interpreted():
        return True
    if t.device.type != "cuda":
        raise RuntimeError(
            "the triton backend runs CPU tensors only in Triton's interpreter: set "
            "TRITON_INTERPRET=1 before Triton is first imported"
        )
    return False


def _kernels(t: torch.Tensor):
    _interpreted(t)
    # a device tuned by `distro-kernels profile --tune` runs its own best block settings
    _tuning.apply_once("triton", sys.modules[__name__], t.device)
    return kernels()


def _precision() -> str:
    if DOT_PRECISION not in ("ieee", "tf32x3"):
        raise ValueError(f"DISTRO_TRITON_DOT_PRECISION must be ieee or tf32x3, got {DOT_PRECISION!r}")
    return DOT_PRECISION


def _vendor() -> str:
    return "hip" if torch.version.hip else "cuda"


def _pow2(c: int, lo: int = 16) -> int:
    return max(lo, 1 << (max(c, 1) - 1).bit_length())


def supported(plan: ChunkPlan) -> bool:
    """Whether the chunk shape has a Triton kernel (else the reference code runs)."""
    return plan.cm <= TILE_MAX and plan.cn <= TILE_MAX


def _rows_mode(plan: ChunkPlan) -> bool:
    return plan.cm == 1


def _rows_per_program(bn: int) -> int:
    return max(16, min(128, ROWS_TILE // bn))


def _warps(tile: int) -> int:
    return WARPS_LARGE if tile >= 4096 else WARPS_SMALL


def _dims(plan: ChunkPlan) -> tuple[int, int]:
    """The tensor's own (unpadded) last two dims, ``(1, numel)`` in 1-D mode."""
    if plan.mode == "1d":
        return 1, plan.numel
    return plan.shape[-2], plan.shape[-1]


def _opts(t: torch.Tensor, warps: int, fusion: bool) -> dict:
    if _interpreted(t):
        return {}
    return {"num_warps": warps, "num_stages": 1, "enable_fp_fusion": fusion}


def _programs(t: torch.Tensor, work: int) -> int:
    """Persistent-grid size: a few programs per SM (2 under the interpreter, to test the loop)."""
    if _interpreted(t):
        return max(1, min(work, 2))
    sms = torch.cuda.get_device_properties(t.device).multi_processor_count
    return max(1, min(work, 4 * sms))


# ----------------------------------------------------------------------------- encode


def _encode(x, plan, mode, k=1, grad=None, beta=0.0, lr=0.0, idx_out=None, val_out=None):
    dev = x.device
    kern = _kernels(x).encode
    cm_basis, cn_basis = cached_basis(plan.cm, dev), cached_basis(plan.cn, dev)
    bm, bn = _pow2(plan.cm), _pow2(plan.cn)
    rows_mode = _rows_mode(plan)
    sparse_back = k < (bn if rows_mode else bm + bn)
    coef = idx = val = None
    if mode == _MODE_DCT or (rows_mode and mode == _MODE_STEP and not sparse_back):
        # dct's output; the one-row kernel's dense-writeback scratch (only when k >= BN)
        coef = torch.empty(plan.n_chunks, plan.elements_per_chunk, device=dev)
    if mode != _MODE_DCT:
        shape = (plan.n_chunks, k)
        idx = idx_out if idx_out is not None else torch.empty(shape, device=dev, dtype=torch.int32)
        val = val_out if val_out is not None else torch.empty(shape, device=dev)
    coef = coef if coef is not None else val
    idx = idx if idx is not None else coef
    val = val if val is not None else coef
    g = grad if grad is not None else x
    m, n = _dims(plan)
    common = dict(BN=bn, KB=ENCODE_KB, MODE=mode, PREC=_precision(), SPARSE_BACK=sparse_back)
    if rows_mode:
        rows = _rows_per_program(bn)
        kern.encode_rows_kernel[(-(-plan.n_chunks // rows),)](
            x, g, cn_basis, coef, idx, val,
            plan.n_chunks, n, plan.chunks_n, plan.cn, k, beta, lr,
            R=rows, **common, **_opts(x, ENCODE_WARPS_ROWS, True),
        )
    else:
        warps = ENCODE_WARPS_LARGE[_vendor()] if bm * bn >= 4096 else WARPS_SMALL
        nprog = _programs(x, plan.n_chunks)
        scratch = torch.empty(nprog * bm * bn, device=dev)
        kern.encode_2d_kernel[(nprog,)](
            x, g, cm_basis, cn_basis, scratch, coef, idx, val,
            plan.n_chunks, m, n, plan.chunks_m, plan.chunks_n, plan.cm, plan.cn, k, beta, lr,
            BM=bm, **common, **_opts(x, warps, True),
        )
    return coef if mode == _MODE_DCT else (idx, val)


def dct(x: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    if not supported(plan) or x.numel() == 0:
        return reference.dct(x, plan)
    return _encode(x.contiguous(), plan, _MODE_DCT)


def compress(x: torch.Tensor, plan: ChunkPlan, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not supported(plan):
        return reference.compress(x, plan, k)
    return _encode(x.contiguous(), plan, _MODE_COMPRESS, plan.k_eff(k))


def demo_step_(delta, grad, plan, beta, lr, k, idx_out=None, val_out=None):
    """Fused DeMo step in place on ``delta`` (float32, contiguous); returns (indices, values)."""
    if not supported(plan):
        indices, values = reference.demo_step_(delta, grad, plan, beta, lr, k)
        if idx_out is not None:
            idx_out.copy_(indices)
            val_out.copy_(values)
        return indices, values
    return _encode(delta, plan, _MODE_STEP, plan.k_eff(k), grad.contiguous(), float(beta),
                   float(lr), idx_out, val_out)


def demo_step_many_(deltas, grads, plans, beta, lr, k) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`demo_step_` per tensor, writing straight into the flat output buffers."""
    sizes = [p.n_chunks * p.k_eff(k) for p in plans]
    dev = deltas[0].device
    flat_idx = torch.empty(sum(sizes), device=dev, dtype=torch.int32)
    flat_val = torch.empty(sum(sizes), device=dev)
    offset = 0
    for delta, grad, plan, size in zip(deltas, grads, plans, sizes):
        shape = (plan.n_chunks, plan.k_eff(k))
        demo_step_(delta, grad, plan, beta, lr, k,
                   flat_idx[offset:offset + size].view(shape),
                   flat_val[offset:offset + size].view(shape))
        offset += size
    return flat_idx, flat_val


# ----------------------------------------------------------------------------- decode


def _inverse(src, vals, plan, source, reduce="mean", sign=False, peers=0, k=1, nbytes=0):
    """Runs an inverse kernel; returns float32 of ``plan.shape``."""
    dev = src.device
    kern = _kernels(src).inverse
    cn_basis = cached_basis(plan.cn, dev)
    out = torch.empty(plan.n_chunks * plan.elements_per_chunk, device=dev)
    bn = _pow2(plan.cn)
    bk = _pow2(k, 1)
    common = dict(SOURCE=source, MEAN=reduce == "mean", SIGN_OUT=bool(sign))
    if _rows_mode(plan):
        rows = _rows_per_program(bn)
        nprog = _programs(src, -(-plan.n_chunks // rows))
        scratch = torch.zeros(nprog * 2 * rows * bn, device=dev)
        kern.inverse_rows_kernel[(nprog,)](
            src, vals, out, scratch, cn_basis,
            plan.n_chunks, peers, k, plan.cn, float(max(peers, 1)), nbytes,
            R=rows, BN=bn, BK=bk, **common, **_opts(src, WARPS_SMALL, False),
        )
    else:
        bm = _pow2(plan.cm)
        nprog = _programs(src, plan.n_chunks)
        scratch = torch.zeros(nprog * 3 * bm * bn, device=dev)
        kern.inverse_2d_kernel[(nprog,)](
            src, vals, out, scratch, cached_basis(plan.cm, dev), cn_basis,
            plan.n_chunks, peers, k, plan.chunks_m, plan.chunks_n, plan.cm, plan.cn,
            float(max(peers, 1)), nbytes,
            BM=bm, BN=bn, BK=bk, **common, **_opts(src, _warps(bm * bn), False),
        )
    return crop_to_shape(out.view(plan.padded_shape), plan)


def idct(coeffs: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """SPEC 4.3's canonical inverse of dense coefficients (bit-identical to the reference)."""
    if not supported(plan) or coeffs.numel() == 0:
        return reference.idct(coeffs, plan)
    src = coeffs.reshape(plan.n_chunks, plan.elements_per_chunk).float().contiguous()
    return _inverse(src, src, plan, _SRC_DENSE)


def _stack_payload(indices_list, values_list, plan, value_codec):
    """Peers stacked for the kernel: int32 ``(P, n_chunks, k)`` indices and float32 values of
    that shape, or ``(P, nbytes)`` sign bytes; plus a device flag of any content violation."""
    k = indices_list[0].shape[1]
    idx = torch.stack([i.reshape(plan.n_chunks, k) for i in indices_list])
    flags = [((idx < 0) | (idx >= plan.elements_per_chunk)).any()]
    if k > 1:
        flags.append((idx[..., 1:] <= idx[..., :-1]).any())
    if value_codec == "sign":
        vals = torch.stack([v.reshape(-1) for v in values_list])
    else:
        vals = torch.stack([v.reshape(plan.n_chunks, k).float() for v in values_list])
        flags.append(~(vals.abs() < 2.0**64).all())  # also catches NaN
    return idx, vals, torch.stack(flags).any()


def decompress_many(indices_lists, values_lists, plans, reduce="mean", value_codec="f32",
                    sign=False):
    """SPEC section 4 for every tensor: one content check for the whole model (one device
    sync), then one fused kernel per tensor (aggregate, canonical inverse, optional sign).

    A content violation raises the reference's error (``check_sparse_content``) for the first
    bad tensor and peer, prefixed ``tensor t:`` when there are several tensors.
    """
    stacked, flags = [], []
    for indices_list, values_list, plan in zip(indices_lists, values_lists, plans):
        if indices_list and supported(plan):
            idx, vals, bad = _stack_payload(indices_list, values_list, plan, value_codec)
            stacked.append((idx, vals))
            flags.append(bad)
        else:
            stacked.append(None)
    if flags and bool(torch.stack(flags).any()):
        for tensor, (indices_list, values_list, plan) in enumerate(
                zip(indices_lists, values_lists, plans)):
            try:
                check_sparse_content(indices_list, values_list, plan, value_codec)
            except ValueError as error:
                raise (ValueError(f"tensor {tensor}: {error}") if len(plans) > 1 else error) from None
        raise AssertionError("the stacked content check disagrees with check_sparse_content")
    outs = []
    for tensor, (indices_list, values_list, plan) in enumerate(zip(indices_lists, values_lists, plans)):
        if stacked[tensor] is None:  # no peers, or a chunk dim above TILE_MAX
            try:
                outs.append(reference.decompress(indices_list, values_list, plan, reduce,
                                                 value_codec, sign))
            except ValueError as error:
                raise (ValueError(f"tensor {tensor}: {error}") if len(plans) > 1 else error) from None
            continue
        idx, vals = stacked[tensor]
        source = _SRC_SIGN if value_codec == "sign" else _SRC_FLOAT
        nbytes = vals.shape[1] if value_codec == "sign" else 0
        outs.append(_inverse(idx, vals, plan, source, reduce, sign, len(indices_list),
                             idx.shape[2], nbytes))
    return outs


def decompress(indices_list, values_list, plan, reduce="mean", value_codec="f32", sign=False):
    """SPEC section 4 end to end in one kernel: aggregate, canonical inverse, optional sign."""
    return decompress_many([indices_list], [values_list], [plan], reduce, value_codec, sign)[0]


# ----------------------------------------------------------------------------- signs

_SIGN_BLOCK = 256


def pack_signs(values: torch.Tensor) -> torch.Tensor:
    flat = values.reshape(-1)
    nbytes = (flat.numel() + 7) // 8
    out = torch.empty(nbytes, device=values.device, dtype=torch.uint8)
    if nbytes:
        grid = (-(-nbytes // _SIGN_BLOCK),)
        _kernels(flat).signs.pack_signs_kernel[grid](
            flat, out, flat.numel(), nbytes, BLOCK=_SIGN_BLOCK, **_opts(flat, WARPS_SMALL, False))
    return out


def unpack_signs(packed: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.empty(n, device=packed.device)
    if n:
        block = 8 * _SIGN_BLOCK
        _kernels(packed).signs.unpack_signs_kernel[(-(-n // block),)](
            packed.reshape(-1), out, n, BLOCK=block, **_opts(packed, WARPS_SMALL, False))
    return out
