"""What is timed: one ``Case`` per op and backend on one layout, and the bytes it must move.

Ops (``OPS``): the fused encode over the whole layout (``demo_step_many_``; eager: DeMo's
per-tensor encode step), ``compress`` per tensor, the decode of P peers' payloads for the
whole layout without and with ``sign`` (``decompress_many``; eager: DeMo's per-tensor
``scatter_reduce`` mean + einsum inverse), sign packing and unpacking of one peer's values,
and the wire format's payload encode and parse of one peer's message (host-side numpy,
one implementation: backend ``wire``).

Inputs are made on the device. Read-only inputs (gradients, payloads) are shared by the
backends of one op, copy by copy; every backend gets its own momentum state, which the
encode updates in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import baseline, wire
from ..chunking import chunk_plan
from ..ops import decompress_many, demo_step_many_, compress, pack_signs, unpack_signs
from . import roofline
from .layouts import Layout
from .timing import Case

OPS = ("encode", "compress", "decode", "decode+sign", "pack_signs", "unpack_signs",
       "payload_encode", "payload_parse")
EAGER = "eager"
WIRE = "wire"
RUN_ID = 0x5EED
NO_EAGER = {
    "pack_signs": "no eager equivalent (DeMo sends fp32 values); the reference backend is eager torch",
    "unpack_signs": "no eager equivalent (DeMo sends fp32 values); the reference backend is eager torch",
    "payload_encode": "host-side numpy for every backend; DeMo all-gathers raw int64/fp32 tensors",
    "payload_parse": "host-side numpy for every backend; DeMo all-gathers raw int64/fp32 tensors",
}
HOST_OPS = ("payload_encode", "payload_parse")
_CODEC_DTYPE = {"bf16": torch.bfloat16, "f16": torch.float16}


@dataclass(frozen=True)
class Config:
    k: int = 32
    chunk: int = 64
    peers: int = 8
    codec: str = "f32"
    beta: float = 0.999
    lr: float = 1.0


class Workload:
    """One layout on one device: plans, sizes, and shared input copies made on demand."""

    def __init__(self, layout: Layout, config: Config, device: torch.device):
        self.layout, self.config, self.device = layout, config, device
        self.shapes = [list(s) for s in layout.shapes]
        self.plans = [chunk_plan(s, config.chunk) for s in layout.shapes]
        self.kept_per_tensor = [p.n_chunks * p.k_eff(config.k) for p in self.plans]
        self.kept = sum(self.kept_per_tensor)
        self.numel = sum(p.numel for p in self.plans)
        self.wire_layout = wire.Layout(layout.shapes, config.chunk, config.k)
        self._copies: dict[tuple, object] = {}

    def clear(self) -> None:
        self._copies.clear()

    def _shared(self, what: str, copy: int, make):
        key = (what, copy)
        if key not in self._copies:
            self._copies[key] = make()
        return self._copies[key]

    # ---------------------------------------------------------------- inputs
    def grads(self, copy: int) -> list[torch.Tensor]:
        return self._shared("grads", copy, lambda: [torch.randn(s, device=self.device) for s in self.shapes])

    def zeros(self) -> list[torch.Tensor]:
        return [torch.zeros(s, device=self.device) for s in self.shapes]

    def one_peer(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Ascending int32 indices and f32 values of every tensor: index ``t`` of a chunk is
        drawn from its own bucket ``[t E/k, (t+1) E/k)``, so no sort is needed and peers
        overlap at random."""
        indices, values = [], []
        for plan in self.plans:
            k_eff = plan.k_eff(self.config.k)
            bucket = plan.elements_per_chunk // k_eff
            start = torch.arange(k_eff, device=self.device, dtype=torch.int32) * bucket
            jitter = torch.randint(0, bucket, (plan.n_chunks, k_eff), device=self.device, dtype=torch.int32)
            indices.append(start + jitter)
            values.append(torch.randn(plan.n_chunks, k_eff, device=self.device))
        return indices, values

    def payloads(self, copy: int):
        """P peers: per tensor, the peers' indices and values as ``decompress`` takes them
        for the codec (packed signs for ``sign``, bf16/f16 tensors for those codecs)."""
        def make():
            peers = [self.one_peer() for _ in range(self.config.peers)]
            idx = [[peer[0][t] for peer in peers] for t in range(len(self.plans))]
            vals = [[self._wire_values(peer[1][t]) for peer in peers] for t in range(len(self.plans))]
            return idx, vals
        return self._shared("payloads", copy, make)

    def _wire_values(self, v: torch.Tensor) -> torch.Tensor:
        codec = self.config.codec
        if codec == "sign":
            return pack_signs(v, backend="reference")
        return v.to(_CODEC_DTYPE[codec]) if codec in _CODEC_DTYPE else v

    def eager_payloads(self, copy: int):
        """The same payloads as DeMo holds them: int64 ``(y, x, k)`` indices, float values."""
        idx, vals = self.payloads(copy)
        out_idx, out_vals = [], []
        for t, shape in enumerate(self.shapes):
            coeff_shape = baseline.encode(torch.empty(shape, device="meta"), self.config.chunk).shape
            k_eff = self.plans[t].k_eff(self.config.k)
            view = tuple(coeff_shape[:-1]) + (k_eff,)
            out_idx.append([i.long().reshape(view) for i in idx[t]])
            n = self.kept_per_tensor[t]
            as_float = (lambda v: unpack_signs(v, n, backend="reference")) if self.config.codec == "sign" \
                else (lambda v: v.float())
            out_vals.append([as_float(v).reshape(view) for v in vals[t]])
        return out_idx, out_vals

    def message(self, copy: int) -> bytes:
        def make():
            idx, vals = self.one_peer()
            return wire.Payload(1, 0, RUN_ID, self.wire_layout, idx, vals, self.config.codec).to_bytes()
        return self._shared("message", copy, make)

    # ---------------------------------------------------------------- bytes
    def op_bytes(self, op: str) -> int:
        c = self.config
        if op == "encode":
            return roofline.encode_bytes(self.numel, self.kept)
        if op == "compress":
            return roofline.compress_bytes(self.numel, self.kept)
        if op in ("decode", "decode+sign"):
            return roofline.decode_bytes(self.numel, self.kept, c.peers, c.codec)
        if op == "pack_signs":
            return roofline.pack_signs_bytes(self.kept_per_tensor)
        if op == "unpack_signs":
            return roofline.unpack_signs_bytes(self.kept_per_tensor)
        if op == "payload_encode":
            return roofline.payload_encode_bytes(self.kept, len(self.message(0)))
        if op == "payload_parse":
            return roofline.payload_parse_bytes(self.kept, len(self.message(0)), c.codec)
        raise ValueError(f"unknown op {op!r}")

    def set_bytes(self, op: str) -> int:
        """Bytes of one input set (what the CPU rotation must push out of the cache)."""
        if op == "encode":
            return self.numel * 8
        if op == "compress":
            return self.numel * 4
        return max(self.op_bytes(op) - (self.numel * 4 if op.startswith("decode") else 0), 1)


def _copy_counter():
    n = [0]

    def nxt() -> int:
        n[0] += 1
        return n[0] - 1
    return nxt


def backends_for(op: str, backends: list[str]) -> list[str]:
    """The backends an op has rows for: ours plus ``eager``, or only ``wire``."""
    if op in HOST_OPS:
        return [WIRE]
    if op in NO_EAGER:
        return list(backends)
    return [EAGER] + list(backends)


def make_case(op: str, backend: str, w: Workload) -> Case:
    """One backend's version of ``op`` on workload ``w``."""
    c, copy = w.config, _copy_counter()
    eager = backend == EAGER
    if op == "encode":
        def make():
            return w.zeros(), w.grads(copy())
        if eager:
            def run(s):
                for delta, grad in zip(*s):
                    baseline.encode_step(delta, grad, c.beta, c.lr, c.k, c.chunk)
        else:
            def run(s):
                demo_step_many_(s[0], s[1], c.beta, c.lr, c.k, c.chunk, backend=backend)
    elif op == "compress":
        def make():
            return w.grads(copy())
        if eager:
            def run(s):
                for x in s:
                    baseline.compress(x, c.k, c.chunk)
        else:
            def run(s):
                for x in s:
                    compress(x, c.k, c.chunk, backend=backend)
    elif op in ("decode", "decode+sign"):
        sign = op == "decode+sign"
        if eager:
            def make():
                return w.eager_payloads(copy())

            def run(s):
                for idx, vals, shape in zip(s[0], s[1], w.shapes):
                    baseline.decode_peers(idx, vals, shape, c.chunk, sign=sign)
        else:
            def make():
                return w.payloads(copy())
            def run(s):
                decompress_many(s[0], s[1], w.shapes, c.chunk, value_codec=c.codec, sign=sign, backend=backend)
    elif op == "pack_signs":
        def make():
            return w.one_peer()[1]

        def run(s):
            for v in s:
                pack_signs(v, backend=backend)
    elif op == "unpack_signs":
        def make():
            return [pack_signs(v, backend="reference") for v in w.one_peer()[1]]

        def run(s):
            for packed, n in zip(s, w.kept_per_tensor):
                unpack_signs(packed, n, backend=backend)
    elif op == "payload_encode":
        def make():
            return w.one_peer()

        def run(s):
            wire.Payload(1, 0, RUN_ID, w.wire_layout, s[0], s[1], c.codec).to_bytes()
    elif op == "payload_parse":
        def make():
            return w.message(copy())

        def run(s):
            wire.Payload.from_bytes(s, w.wire_layout, expect_step=1, expect_run_id=RUN_ID)
    else:
        raise ValueError(f"unknown op {op!r}")
    return Case(make=make, run=run, set_bytes=w.set_bytes(op))
