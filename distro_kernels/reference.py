"""Eager-torch reference backend: the readable definition of every op, straight from SPEC.

Encode (sections 2-3) uses ordinary float32 matrix products. Decode (section 4) spells out the
canonical folds as separate elementwise multiplies and adds, each rounded to float32, so its
bits are the contract's on any device torch runs on.
"""

from __future__ import annotations

import torch

from .basis import cached_basis
from .chunking import ChunkPlan, crop_to_shape, from_chunks, pad_to_plan, to_chunks
from .validation import check_sparse_content

FLUSH_BELOW = 2.0**-55  # |v| below this becomes +0 (SPEC 4.1 and 4.2)
VALUE_LIMIT = 2.0**64  # |v| at or above this rejects the values (SPEC 4.1)


def _bases(plan: ChunkPlan, device) -> tuple[torch.Tensor, torch.Tensor]:
    return cached_basis(plan.cm, device), cached_basis(plan.cn, device)


def dct(x: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """Forward chunked DCT ``X = C_m x C_n^T`` -> float32 ``(n_chunks, E)``."""
    cm_basis, cn_basis = _bases(plan, x.device)
    blocks = to_chunks(pad_to_plan(x.float(), plan), plan)
    coeffs = cm_basis @ blocks @ cn_basis.T
    return coeffs.reshape(plan.n_chunks, plan.elements_per_chunk)


def idct(coeffs: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """Inverse chunked DCT with SPEC 4.3's canonical folds -> float32 tensor of ``plan.shape``."""
    blocks = canonical_inverse(coeffs.float(), plan)
    return crop_to_shape(from_chunks(blocks, plan), plan)


def _idct_fast(coeffs: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """``x = C_m^T X C_n`` by matrix products, for the encoder (any rounding order is allowed)."""
    cm_basis, cn_basis = _bases(plan, coeffs.device)
    blocks = coeffs.reshape(plan.n_chunks, plan.cm, plan.cn)
    return crop_to_shape(from_chunks(cm_basis.T @ blocks @ cn_basis, plan), plan)


def select_topk(coeffs: torch.Tensor, k_eff: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the ``k_eff`` entries of largest ``|X|``; ties go to the smaller index.

    The rank key packs ``|X|``'s bits (monotonic in ``|X|`` for non-negative floats) above
    the complemented index, so every key is unique and ``topk`` on it is exactly SPEC's rule.
    Returns int32 indices sorted ascending per row and the signed float32 values there.
    """
    n_rows, width = coeffs.shape
    magnitude_bits = coeffs.view(torch.int32).to(torch.int64) & 0x7FFFFFFF
    position = torch.arange(width, device=coeffs.device, dtype=torch.int64)
    key = (magnitude_bits << 32) | (0xFFFFFFFF - position)
    picked = torch.topk(key, k_eff, dim=1, sorted=False).indices
    picked, _ = torch.sort(picked, dim=1)
    return picked.to(torch.int32), torch.gather(coeffs, 1, picked)


def compress(x: torch.Tensor, plan: ChunkPlan, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return select_topk(dct(x, plan), plan.k_eff(k))


def demo_step_(
    delta: torch.Tensor, grad: torch.Tensor, plan: ChunkPlan, beta: float, lr: float, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC 3: ``delta = beta*delta + lr*grad``; select on ``DCT(delta)``; subtract what was sent."""
    delta.mul_(beta).add_(grad.reshape(delta.shape).float(), alpha=lr)
    coeffs = dct(delta, plan)
    indices, values = select_topk(coeffs, plan.k_eff(k))
    sent = torch.zeros_like(coeffs).scatter_(1, indices.long(), values)
    delta.sub_(_idct_fast(sent, plan).reshape(delta.shape))
    return indices, values


def demo_step_many_(deltas, grads, plans, beta, lr, k) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`demo_step_` per tensor; indices and values flattened tensor after tensor."""
    steps = [demo_step_(d, g, p, beta, lr, k) for d, g, p in zip(deltas, grads, plans)]
    return (
        torch.cat([indices.reshape(-1) for indices, _ in steps]),
        torch.cat([values.reshape(-1) for _, values in steps]),
    )


def demo_step_coeffs_many_(states, grads, plans, beta, lr, k) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC 3 with the momentum in the DCT domain (``states[t]``: ``(n_chunks, E)``, as
    :func:`dct` returns): ``X = beta*S + lr*DCT(grad)``; select on ``X``; ``S = X`` with the
    selected entries zeroed (what is sent leaves the momentum). Flat like :func:`demo_step_many_`.
    Serves every device that has no kernel of its own (plain torch)."""
    steps = []
    for state, grad, plan in zip(states, grads, plans):
        state.mul_(beta).add_(dct(grad, plan), alpha=lr)
        indices, values = select_topk(state, plan.k_eff(k))
        state.scatter_(1, indices.long(), 0.0)
        steps.append((indices, values))
    return (
        torch.cat([indices.reshape(-1) for indices, _ in steps]),
        torch.cat([values.reshape(-1) for _, values in steps]),
    )


def pack_signs(values: torch.Tensor) -> torch.Tensor:
    """1 bit per value, bit = signbit, LSB-first: value ``i`` is bit ``i % 8`` of byte ``i // 8``."""
    flat = values.reshape(-1)
    bits = torch.signbit(flat.float()).to(torch.uint8)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    weights = (2 ** torch.arange(8, device=flat.device)).to(torch.uint8)
    return (bits.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_signs(packed: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` values of +1.0 / -1.0 from bytes written by :func:`pack_signs`."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (packed.reshape(-1, 1) >> shifts) & 1
    return 1.0 - 2.0 * bits.reshape(-1)[:n].float()


def canonical_values(values: torch.Tensor) -> torch.Tensor:
    """SPEC 4.1: ``-0 -> +0``, ``|v| < 2^-55 -> +0``; non-finite or ``|v| >= 2^64`` rejects."""
    values = values.float()
    magnitude = values.abs()
    if not bool(torch.all(magnitude < VALUE_LIMIT)):  # also false for NaN
        raise ValueError("values must be finite with |v| < 2^64")
    return torch.where(magnitude < FLUSH_BELOW, torch.zeros_like(values), values)


def aggregate(
    indices_list: list[torch.Tensor],
    values_list: list[torch.Tensor],
    plan: ChunkPlan,
    reduce: str,
    value_codec: str,
) -> torch.Tensor:
    """SPEC 4.2: per-coefficient float32 aggregate of the peers, in list order."""
    n_rows, width = plan.n_chunks, plan.elements_per_chunk
    device = indices_list[0].device if indices_list else torch.device("cpu")
    total = torch.zeros(n_rows, width, device=device)
    count = torch.zeros(n_rows, width, device=device)
    for indices, values in zip(indices_list, values_list):
        positions = indices.long()
        if value_codec == "sign":
            values = unpack_signs(values, positions.numel()).reshape(positions.shape)
        else:
            values = canonical_values(values).reshape(positions.shape)
        # Indices are unique within a row, so each add below is one rounded float32 add.
        total.scatter_add_(1, positions, values)
        count.scatter_add_(1, positions, torch.ones_like(values))
    divisor = count if reduce == "mean" else torch.full_like(count, float(len(indices_list)))
    mean = torch.where(count > 0, total / divisor.clamp_min(1.0), torch.zeros_like(total))
    return torch.where(mean.abs() < FLUSH_BELOW, torch.zeros_like(mean), mean)


def canonical_inverse(aggregate_: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
    """SPEC 4.3: ascending folds, one rounded multiply and one rounded add per term."""
    cm_basis, cn_basis = _bases(plan, aggregate_.device)
    coeffs = aggregate_.reshape(plan.n_chunks, plan.cm, plan.cn)
    partial = torch.zeros_like(coeffs)  # T[u, j]
    for v in range(plan.cn):
        partial = partial + coeffs[:, :, v : v + 1] * cn_basis[v]
    out = torch.zeros_like(coeffs)  # y[i, j]
    for u in range(plan.cm):
        out = out + cm_basis[u][None, :, None] * partial[:, u : u + 1, :]
    return out


def decompress(
    indices_list: list[torch.Tensor],
    values_list: list[torch.Tensor],
    plan: ChunkPlan,
    reduce: str = "mean",
    value_codec: str = "f32",
    sign: bool = False,
) -> torch.Tensor:
    """SPEC section 4 end to end: aggregate, canonical inverse, optional sign."""
    check_sparse_content(indices_list, values_list, plan, value_codec)
    agg = aggregate(indices_list, values_list, plan, reduce, value_codec)
    out = crop_to_shape(from_chunks(canonical_inverse(agg, plan), plan), plan)
    return torch.sign(out) if sign else out


def decompress_many(indices_lists, values_lists, plans, reduce="mean", value_codec="f32", sign=False):
    """:func:`decompress` per tensor; ``indices_lists[t][p]`` is tensor t's peer p."""
    outs = []
    for tensor, (indices_list, values_list, plan) in enumerate(zip(indices_lists, values_lists, plans)):
        try:
            outs.append(decompress(indices_list, values_list, plan, reduce, value_codec, sign))
        except ValueError as error:
            raise (ValueError(f"tensor {tensor}: {error}") if len(plans) > 1 else error) from None
    return outs
