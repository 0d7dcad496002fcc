"""The public functions: plain Python signatures over the custom ops.

``backend="auto"`` lets the dispatcher pick by device; any other name is an override for
tests and benchmarks (``dispatch.forced``), checked against the tensors' device.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .. import dispatch, robust
from ..validation import check_float
from . import definitions as op
from .arguments import flatten_model, require_peer_tensors, require_tensor, split_flat


def _run(backend: str, fn, *args):
    if backend == "auto":
        return fn(*args)
    return _forced_call(backend, fn, *args)


@torch.compiler.disable
def _forced_call(backend: str, fn, *args):
    """An override is eager-only by design (no backend string in a graph): under
    ``torch.compile`` this call runs outside the graph (a graph break; ``fullgraph=True``
    refuses it), with the device's kernels everywhere else."""
    with dispatch.forced(backend):
        return fn(*args)


def dct(x: Tensor, chunk: int = 64, *, policy: str = "divisor", backend: str = "auto") -> Tensor:
    """Chunked orthonormal DCT-II of ``x`` -> float32 ``(n_chunks, E)`` in SPEC chunk order."""
    require_tensor("x", x)
    return _run(backend, op.dct, x, chunk, policy)


def idct(coeffs: Tensor, shape: Sequence[int], chunk: int = 64, *, policy: str = "divisor",
         backend: str = "auto") -> Tensor:
    """Inverse of :func:`dct` with SPEC 4.3's canonical folds (bit-identical on every backend)."""
    require_tensor("coeffs", coeffs)
    return _run(backend, op.idct, coeffs, [int(d) for d in shape], chunk, policy)


def compress(x: Tensor, k: int = 32, chunk: int = 64, *, policy: str = "divisor",
             backend: str = "auto") -> tuple[Tensor, Tensor]:
    """DCT + per-chunk top-``k`` by ``|X|`` (ties: smaller index) -> ``(indices, values)``.

    ``indices``: int32 ``(n_chunks, k_eff)``, ascending per chunk; ``values``: float32.
    """
    require_tensor("x", x)
    return _run(backend, op.compress, x, k, chunk, policy)


_ROUNDED = {"bf16": torch.bfloat16, "f16": torch.float16}


def _clipped(values_per_tensor, value_codec: str, tau):
    """SPEC 4.2's clip before aggregation, on the values as the wire carries them (rounded to
    bf16/f16 first), so a call here decodes exactly as the same payloads after a wire trip.
    Returns float32 values (codec ``f32``) and the codec to decode them with."""
    if value_codec == "sign":
        raise ValueError("clip_tau is for the f32/bf16/f16 codecs (a sign peer's weight is "
                         "bounded already: robust.sign_mean_bound)")
    dtype = _ROUNDED.get(value_codec)
    rounded = [[(v.to(dtype) if dtype is not None else v).float() for v in peers]
               for peers in values_per_tensor]
    return robust.clip_model(rounded, tau), "f32"


def decompress(
    indices_list: Sequence[Tensor], values_list: Sequence[Tensor], shape: Sequence[int],
    chunk: int = 64, *, reduce: str = "mean", value_codec: str = "f32", sign: bool = False,
    policy: str = "divisor", clip_tau: float | None = None, out: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """SPEC section 4: aggregate P peers (list order) and run the canonical inverse DCT.

    Bit-identical on every backend. ``value_codec="sign"`` takes each peer's values as the
    uint8 output of :func:`pack_signs`; ``"bf16"``/``"f16"`` round float values to that format
    first. ``sign=True`` returns ``sign(y)`` (DeMo's update). ``clip_tau``: SPEC 4.2's robust
    clip (each peer's values scaled down to at most ``tau`` times the median peer's largest),
    the same bits on every backend (``robust``). ``out``: a float32, contiguous tensor of
    ``shape`` to write and return instead of a fresh one (see :func:`decompress_many`).
    """
    require_peer_tensors(indices_list, values_list)
    if out is not None:
        if policy != "divisor":
            raise ValueError("out= takes the default chunk policy ('divisor') only")
        return decompress_many([list(indices_list)], [list(values_list)], [shape], chunk,
                               reduce=reduce, value_codec=value_codec, sign=sign,
                               clip_tau=clip_tau, out=[out], backend=backend)[0]
    if clip_tau is not None and values_list:
        [values_list], value_codec = _clipped([list(values_list)], value_codec, clip_tau)
    return _run(backend, op.decompress, list(indices_list), list(values_list),
                [int(d) for d in shape], chunk, reduce, value_codec, sign, policy)


def decompress_many(
    indices_per_tensor: Sequence[Sequence[Tensor]], values_per_tensor: Sequence[Sequence[Tensor]],
    shapes: Sequence[Sequence[int]], chunk: int = 64, *, reduce: str = "mean",
    value_codec: str = "f32", sign: bool = False, clip_tau: float | None = None,
    out: Sequence[Tensor] | None = None, backend: str = "auto",
) -> list[Tensor]:
    """:func:`decompress` for a whole model in one call (one dispatch, one parallel pass).

    ``indices_per_tensor[t][p]`` / ``values_per_tensor[t][p]`` are peer ``p``'s payload for
    tensor ``t``; every tensor has the same peers, in the same order. Bit-identical to calling
    :func:`decompress` per tensor (``clip_tau`` too: each tensor has its own median).
    ``out``: one float32, contiguous tensor per tensor (e.g. the parameters' ``.grad``) to
    write instead of fresh ones, and returned; on any error none of them has changed. Reusing
    buffers saves the first-touch page faults of fresh memory (a quarter of a 4096x4096
    decode here).
    """
    indices, values, shapes_flat, ndims = flatten_model(indices_per_tensor, values_per_tensor, shapes)
    if clip_tau is not None and indices:
        clipped, value_codec = _clipped(values_per_tensor, value_codec, clip_tau)
        values = [v for peers in clipped for v in peers]
    if out is None:
        return _run(backend, op.decompress_many, indices, values, shapes_flat, ndims, chunk, reduce,
                    value_codec, sign)
    out = list(out)
    for t, o in enumerate(out):
        require_tensor(f"out[{t}]", o)
    _run(backend, op.decompress_many_into_, out, indices, values, shapes_flat, ndims, chunk,
         reduce, value_codec, sign)
    return out


def decompress_many_apply_(
    indices_per_tensor: Sequence[Sequence[Tensor]], values_per_tensor: Sequence[Sequence[Tensor]],
    shapes: Sequence[Sequence[int]], chunk: int = 64, *, out: Sequence[Tensor],
    params: Sequence[Tensor], keeps: Sequence[float], steps: Sequence[float], reduce: str = "mean",
    value_codec: str = "f32", sign: bool = True, backend: str = "auto",
) -> list[Tensor]:
    """:func:`decompress_many` into ``out``, then the optimizer's step on each tensor:
    ``params[t] = params[t] * keeps[t] + steps[t] * out[t]`` (``keeps[t] == 1``: no multiply),
    each operation rounded in float32, which for sign updates is bit for bit torch's
    ``p.mul_(keep); p.add_(u, alpha=step)``. With ``sign=True`` the cpu backend runs the step in
    the decode's pass, each run of chunks right after it is decoded (its outputs still cached);
    otherwise, and on other backends, it decodes, then runs those torch ops. When an argument
    or payload is refused, neither ``out`` nor ``params`` has changed (a ``MemoryError`` from
    the kernel's per-thread scratch can leave some chunks done). Returns ``out``."""
    indices, values, shapes_flat, ndims = flatten_model(indices_per_tensor, values_per_tensor, shapes)
    out, params = list(out), list(params)
    for t, (o, p) in enumerate(zip(out, params)):
        require_tensor(f"out[{t}]", o)
        require_tensor(f"params[{t}]", p)
    _run(backend, op.decompress_many_apply_, out, params, indices, values, shapes_flat, ndims, chunk,
         reduce, value_codec, sign, [float(k) for k in keeps], [float(s) for s in steps])
    return out


def pack_signs(values: Tensor, *, backend: str = "auto") -> Tensor:
    """1 bit per value (bit = signbit), LSB-first, flattened row-major -> uint8."""
    check_float("values", values)  # the raw op also takes integers; the public function does not
    return _run(backend, op.pack_signs, values)


def unpack_signs(packed: Tensor, n: int, *, backend: str = "auto") -> Tensor:
    """``n`` float32 values of +1/-1 from :func:`pack_signs` bytes."""
    require_tensor("packed", packed)
    return _run(backend, op.unpack_signs, packed, n)


def demo_step_(delta: Tensor, grad: Tensor, beta: float = 0.999, lr: float = 1.0, k: int = 32,
               chunk: int = 64, *, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Fused DeMo encode (SPEC 3), in place on ``delta``: momentum, DCT, top-k, error feedback."""
    require_tensor("delta", delta)
    require_tensor("grad", grad)
    return _run(backend, op.demo_step_, delta, grad, float(beta), float(lr), k, chunk)


def demo_step_many_(
    deltas: Sequence[Tensor], grads: Sequence[Tensor], beta: float = 0.999, lr: float = 1.0,
    k: int = 32, chunk: int = 64, *, backend: str = "auto",
) -> tuple[list[Tensor], list[Tensor]]:
    """:func:`demo_step_` over a whole model in one call (one dispatch, one parallel region).

    Every tensor is checked before any state changes; deltas must not share memory with each
    other or with a gradient. Returns per-tensor ``(indices, values)`` lists: views of two flat
    buffers laid out tensor after tensor (see :func:`split_flat`).
    """
    flat_indices, flat_values = demo_step_many_flat_(deltas, grads, beta, lr, k, chunk, backend=backend)
    return split_flat(flat_indices, flat_values, [d.shape for d in deltas], k, chunk)


def demo_step_many_flat_(deltas, grads, beta=0.999, lr=1.0, k=32, chunk=64, *, backend="auto"
                         ) -> tuple[Tensor, Tensor]:
    """:func:`demo_step_many_` returning the two flat buffers themselves (tensor after tensor)."""
    for t, (d, g) in enumerate(zip(deltas, grads)):
        require_tensor(f"deltas[{t}]", d)
        require_tensor(f"grads[{t}]", g)
    return _run(backend, op.demo_step_many_, list(deltas), list(grads), float(beta), float(lr), k, chunk)


def demo_step_coeffs_many_(
    states: Sequence[Tensor], grads: Sequence[Tensor], beta: float = 0.999, lr: float = 1.0,
    k: int = 32, chunk: int = 64, *, backend: str = "auto",
) -> tuple[list[Tensor], list[Tensor]]:
    """The DeMo encode of :func:`demo_step_many_` with the momentum kept in the DCT domain
    (SPEC 3 allows it), in place on ``states``.

    ``states[t]`` holds tensor ``t``'s momentum as chunk coefficients: float32
    ``(n_chunks, E)``, the layout :func:`dct` returns for the gradient's shape (start from
    ``dct(torch.zeros_like(p))``, or ``dct(delta)`` of an existing momentum; ``idct(state,
    p.shape)`` reads it back). Per chunk: ``X = beta * S + lr * DCT(grad)``, the top ``k`` of
    ``X`` are sent, and ``S = X`` with them zeroed. The same step as :func:`demo_step_many_`
    up to float32 rounding, with no inverse transform and the state read and written in
    contiguous blocks. Returns per-tensor ``(indices, values)`` like :func:`demo_step_many_`.
    Native on CPU; other devices run the eager composite (``dct``, then the selection).
    """
    for t, (s, g) in enumerate(zip(states, grads)):
        require_tensor(f"states[{t}]", s)
        require_tensor(f"grads[{t}]", g)
    flat_indices, flat_values = _run(backend, op.demo_step_coeffs_many_, list(states), list(grads),
                                     float(beta), float(lr), k, chunk)
    return split_flat(flat_indices, flat_values, [g.shape for g in grads], k, chunk)
