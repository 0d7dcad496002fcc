"""SPEC 4.2's robust clip: bound each peer's weight in the aggregate by ``tau`` times the
median peer's, with exact float32 semantics (the same bits on every device).

For one tensor with peers ``p = 0..P-1`` (in the step's ascending peer order):

- ``s_p = max |v|`` over peer ``p``'s values (exact: a max involves no rounding);
- ``m`` = the lower median of the ``s_p`` (sorted ascending, index ``(P - 1) // 2``);
- ``b = tau * m``, one rounded float32 multiply (``tau`` is first rounded to float32);
- for each peer with ``s_p > b``: ``f = b / s_p`` (one correctly rounded division) and each
  value becomes ``v * f`` (one rounded multiply), then ``|v| < 2^-55`` becomes ``+0``.

Only elementwise IEEE float32 operations are used (torch rounds each one on CPU and GPU),
and no sum, so any device, and any backend decoding the result, gets the same bits. The
clip is for the ``f32``/``bf16``/``f16`` codecs; ``sign`` values are ``+-1`` already (each
peer's weight is bounded by construction, see :func:`sign_mean_bound`).

What it bounds (docs/threat-model.md): after the clip every peer's values satisfy
``|v| <= b * (1 + 2^-22)`` (one rounding in ``f`` and one in ``v * f``), and with at most
``(P - 1) // 2`` poisoners among ``P`` peers the lower median ``m`` is at most the largest
honest ``s_p``. So in the ``mean`` aggregate ``A[j] = S[j] / n[j]`` a single peer moves
any coefficient by at most ``b / n[j]`` (plus float32 rounding of the sum) compared with the
same step in which it sent zeros at the same indices; through the orthonormal inverse DCT,
the decoded update moves by at most ``b * sqrt(sum over its selected j of 1 / n[j]^2)`` in
the L2 norm.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

FLUSH_BELOW = 2.0**-55  # SPEC 4.1: |v| below this is +0
ROUNDING = 2.0**-22  # relative slack of two float32 roundings (f, then v * f)


def _float32_tau(tau) -> float:
    t = float(tau)
    if not (t > 0.0 and t < float("inf")):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    return t


def peer_scales(values_list: Sequence[Tensor]) -> Tensor:
    """``s_p = max |v|`` of each peer (float32, on the peers' device; 0 for no values)."""
    if not values_list:
        raise ValueError("values_list is empty")
    out = []
    for p, v in enumerate(values_list):
        if not isinstance(v, Tensor) or v.dtype != torch.float32:
            raise TypeError(f"peer {p}: values must be a float32 tensor, got "
                            f"{getattr(v, 'dtype', type(v).__name__)}")
        if v.device != values_list[0].device:
            raise ValueError(f"peer {p}: values on {v.device}, peer 0's on "
                             f"{values_list[0].device}")
        out.append(v.abs().max() if v.numel() else torch.zeros((), device=v.device))
    s = torch.stack(out)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("values must be finite (parse rejects non-finite values)")
    return s


def clip_bound(values_list: Sequence[Tensor], tau) -> Tensor:
    """``b = tau * m`` for one tensor's peers (0-d float32)."""
    s = peer_scales(values_list)
    m = torch.sort(s).values[(len(values_list) - 1) // 2]
    return torch.tensor(_float32_tau(tau), dtype=torch.float32, device=s.device) * m


def clip_peer_values(values_list: Sequence[Tensor], tau) -> list[Tensor]:
    """SPEC 4.2's robust clip of one tensor's per-peer values (peers in ascending id order).

    Returns a new list; a peer under the bound keeps its tensor object (not copied), a
    clipped peer gets a new tensor of the same shape. ``tau > 0`` (rounded to float32).
    """
    tau = _float32_tau(tau)
    s = peer_scales(values_list)
    m = torch.sort(s).values[(len(values_list) - 1) // 2]
    b = torch.tensor(tau, dtype=torch.float32, device=s.device) * m
    over = (s > b).tolist()
    out = []
    for p, v in enumerate(values_list):
        if not over[p]:
            out.append(v)
            continue
        f = b / s[p]  # correctly rounded float32 division
        w = v * f  # one rounded multiply per value (no sum, no FMA)
        out.append(torch.where(w.abs() < FLUSH_BELOW, torch.zeros((), device=w.device), w))
    return out


def clip_model(values_per_tensor: Sequence[Sequence[Tensor]], tau) -> list[list[Tensor]]:
    """:func:`clip_peer_values` for every tensor of a model (``values_per_tensor[t][p]``,
    the layout of ``decompress_many``); each tensor has its own median and bound."""
    return [clip_peer_values(peers, tau) for peers in values_per_tensor]


def sign_mean_bound(n: int) -> float:
    """The most one peer can move a coefficient's ``sign``-codec mean
    ``A = (n_pos - n_neg) / n`` among ``n`` selecting peers (itself included): ``2 / n``.

    Flipping its bit moves ``n_pos - n_neg`` by 2 at fixed ``n``; selecting the coefficient
    or not moves ``A`` from ``d / (n - 1)`` to ``(d +- 1) / n`` with ``|d| <= n - 1``, which
    is at most ``(|d| + n - 1) / (n (n - 1)) <= 2 / n``.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    return 2.0 / n
