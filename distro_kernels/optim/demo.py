"""``DeMo``: a drop-in ``torch.optim.Optimizer`` for DeMo / DisTrO-style training.

Per step (SPEC sections 3-4), for the whole model at once:

1. encode: ``delta = decay * delta + lr * grad``; per-chunk top-k of ``DCT(delta)``;
   ``delta -= IDCT(sent)`` (:func:`distro_kernels.demo_step_many_`, one fused call per group);
2. one payload of every tensor's ``(indices, values)`` (the wire format), exchanged with the
   peers through a transport (``exchange(bytes) -> {peer: bytes}``);
3. decode: every payload, this peer's own included, parsed from its bytes and aggregated in
   ascending peer id (SPEC 4, bit-exact on every backend), so all peers get the same update;
4. sign-SGD with decoupled weight decay, as DeMo: ``p *= 1 - lr * wd``; ``p -= lr * sign(.)``.
   The update is left in ``p.grad``: decoded into the gradient tensors themselves when all are
   float32 and contiguous (no fresh memory, no copy), else into new tensors that replace them.

The momentum ``delta`` is float32 whatever the parameter dtype and lives in ``state_dict()``.
Step in two halves with :meth:`DeMo.prepare` and :meth:`DeMo.apply` to drive the exchange
yourself (e.g. several simulated peers in one thread).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor

from .. import native_cpu, ops, wire
from ..ops.definitions import torch_step_
from .._ext import cpu_ext
from ..chunking import chunk_plan
from ..step import ModelStep
from ..validation import check_no_overlap
from ..transport.result import TransportError
from .transports import default_transport

VALUE_CODECS = ("f32", "bf16", "f16", "sign")
NONFINITE_POLICIES = ("raise", "skip")
MOMENTUM_LAYOUTS = ("param", "dct")


def _keep(group) -> float:
    """The weight-decay factor of a step, ``1 - lr * wd`` (1.0 without decay)."""
    return 1.0 - group["lr"] * group["weight_decay"] if group["weight_decay"] != 0.0 else 1.0


class NonFiniteGradientError(FloatingPointError):
    """A gradient holds inf or NaN; raised before any state changed (the step can be retried
    after fixing the gradients, e.g. with a smaller loss scale)."""


@dataclass
class StepReport:
    """What one step sent and received, and which peers it used or left out (and why)."""

    step: int
    bytes_sent: int = 0
    bytes_received: int = 0
    peers: list[int] = field(default_factory=list)
    left_out: dict[int, str] = field(default_factory=dict)


class DeMo(torch.optim.Optimizer):
    """DeMo (Peng, Quesnelle, Kingma 2024) on ``distro_kernels``' kernels.

    Signature and defaults follow DeMo's ``demo.py``; ``lr`` defaults to SGD's 1e-3 as there
    (sign-SGD usually wants more). Ours: ``value_codec`` (``"f32"`` as DeMo, ``"sign"``, one
    bit per value, or ``"bf16"``/``"f16"``), ``transport`` (default: the project's
    ``StoreTransport`` on ``process_group`` if ``torch.distributed`` is initialized, else a
    single peer), ``backend`` (``"auto"``, ``"reference"``, ``"cpu"``), ``run_id`` (int < 2**128,
    16 bytes or a UUID; all peers of a run must agree, payloads of other runs are rejected),
    ``max_payload_bytes`` (default: the largest valid payload for the model), ``deadline``
    (seconds per exchange for the default transport), ``sign`` (``True`` as DeMo: the
    update is ``sign`` of the decoded aggregate; ``False`` applies the aggregate itself),
    ``nonfinite``: what a step does when a gradient holds inf or NaN, checked before any
    state moves: ``"raise"`` (default) raises :class:`NonFiniteGradientError` naming the
    parameter, with momentum, parameters and step counter untouched; ``"skip"`` leaves this
    peer's momentum untouched and sends an empty payload (the other peers leave it out of the
    step, saying why), then applies the other peers' aggregate as usual, so replicas stay
    identical (AMP's ``GradScaler`` skips steps the same way).
    Signed runs (docs/threat-model.md): ``manifest`` (``wire.signing.Manifest``; its digest
    becomes the run id) and this peer's ``signing_key``: payloads are signed, every received
    one must carry its sender's valid signature, and the default transport commits each step
    through the manifest's coordinator. ``clip_tau``: SPEC 4.2's robust clip of every peer's
    values per tensor before aggregation (``f32``/``bf16``/``f16`` codecs), which bounds what one
    poisoning peer can move (docs/threat-model.md). A :class:`TransportError` from the
    exchange (it delivered nothing) leaves parameters and the step counter as they were and
    returns the step's selected coefficients to the momentum (:meth:`abandon`).
    ``momentum``: where the momentum lives. ``"param"`` (default, as DeMo): ``state[p]["delta"]``
    in the parameter's layout. ``"dct"``: ``state[p]["delta_dct"]``, its chunk DCT
    coefficients (``dk.dct`` layout), stepped by :func:`~distro_kernels.demo_step_coeffs_many_`
    (the same step up to float32 rounding, without the inverse transform: faster on CPU).
    :meth:`momentum_of` reads either in the parameter's layout; :meth:`load_state_dict`
    converts a checkpoint saved with the other one.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        compression_decay: float = 0.999,
        compression_topk: int = 32,
        compression_chunk: int = 64,
        weight_decay: float = 0.0,
        process_group=None,
        *,
        value_codec: str = "f32",
        transport=None,
        backend: str = "auto",
        run_id=0,
        max_payload_bytes: int | None = None,
        sign: bool = True,
        deadline: float = 30.0,
        nonfinite: str = "raise",
        manifest=None,
        signing_key=None,
        clip_tau: float | None = None,
        momentum: str = "param",
    ):
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not 0.0 <= compression_decay <= 1.0:
            raise ValueError(f"compression_decay must be in [0, 1], got {compression_decay}")
        if int(compression_topk) < 1 or int(compression_chunk) < 1:
            raise ValueError("compression_topk and compression_chunk must be >= 1")
        if value_codec not in VALUE_CODECS:
            raise ValueError(f"value_codec must be one of {VALUE_CODECS}, got {value_codec!r}")
        if clip_tau is not None and (value_codec == "sign" or not float(clip_tau) > 0.0):
            raise ValueError("clip_tau must be > 0 and is for the f32/bf16/f16 codecs (a sign "
                             "peer's weight is bounded already)")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if momentum not in MOMENTUM_LAYOUTS:
            raise ValueError(f"momentum must be one of {MOMENTUM_LAYOUTS}, got {momentum!r}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.compression_decay = float(compression_decay)
        self.compression_topk = int(compression_topk)
        self.compression_chunk = int(compression_chunk)
        self.value_codec = value_codec
        self.backend = backend
        self.run_id = run_id
        self.max_payload_bytes = max_payload_bytes
        self.sign = bool(sign)
        self.deadline = float(deadline)
        self.nonfinite = nonfinite
        self.momentum = momentum
        self.manifest, self.signing_key = manifest, signing_key
        self.clip_tau = None if clip_tau is None else float(clip_tau)
        self.process_group = process_group
        self._transport = transport
        self._params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        if not self._params:
            raise ValueError("DeMo got no parameters that require grad")
        self._model = ModelStep(
            [tuple(p.shape) for p in self._params], chunk=self.compression_chunk,
            k=self.compression_topk, value_codec=value_codec,
            run_id=None if (manifest is not None and run_id == 0) else run_id,
            max_payload_bytes=self.max_payload_bytes, manifest=manifest, signing_key=signing_key,
        )
        self.run_id = self._model.run_id
        self._sent = None  # (deltas, indices, values) of the pending step, for restore
        self._step = 0
        # what prepare() built for this step: (payload, bytes), or (None, b"") when skipped
        self._pending: tuple[wire.Payload | None, bytes] | None = None
        self._skipped: str | None = None
        self.last_report: StepReport | None = None
        self.total_bytes_sent = 0
        self.total_bytes_received = 0
        # DeMo's own names for the last step's byte counts
        self.data_transmit = 0
        self.data_receive = 0

    def add_param_group(self, param_group: dict) -> None:
        if hasattr(self, "_model"):  # the payload layout (every tensor's shape) is fixed
            raise RuntimeError("DeMo's payload layout is fixed at construction; pass every "
                               "parameter group to the constructor")
        super().add_param_group(param_group)

    # ------------------------------------------------------------------ transport and state

    @property
    def transport(self):
        if self._transport is None:
            self._transport = default_transport(
                self.process_group, self.deadline, layout=self._model.layout,
                manifest=self.manifest, signing_key=self.signing_key)
        return self._transport

    @property
    def rank(self) -> int:
        return int(self.transport.rank)

    @property
    def step_count(self) -> int:
        """Steps taken so far (the next payload carries this number)."""
        return self._step

    def max_payload_bytes_for_layout(self) -> int:
        """The largest valid payload for this model and codec (payloads vary with the
        index coding; ``last_report.bytes_sent`` is the real size of the last one)."""
        return self._model.layout.max_payload_bytes(self.value_codec)

    def _delta(self, p: Tensor) -> Tensor:
        """The momentum as this optimizer keeps it (``momentum``): made on first use."""
        state = self.state[p]
        if self.momentum == "dct":
            if "delta_dct" not in state:
                plan = chunk_plan(p.shape, self.compression_chunk)
                state["delta_dct"] = torch.zeros(plan.n_chunks, plan.elements_per_chunk,
                                                 dtype=torch.float32, device=p.device)
            return state["delta_dct"]
        if "delta" not in state:
            state["delta"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        return state["delta"]

    def momentum_of(self, p: Tensor) -> Tensor:
        """``p``'s momentum in the parameter's layout (a new tensor for ``momentum="dct"``)."""
        delta = self._delta(p)
        if self.momentum == "dct":
            return ops.idct(delta, p.shape, self.compression_chunk, backend=self.backend)
        return delta

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["demo"] = {"step": self._step}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts state tensors to the parameter's dtype; the momentum stays float32, in
        # this optimizer's layout (a checkpoint of the other layout is converted).
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id, {})
            self.state[p].pop("delta", None)
            self.state[p].pop("delta_dct", None)
            if "delta" in saved:  # a checkpoint in the parameter's layout
                delta = saved["delta"]
                if delta.dtype != torch.float32 or tuple(delta.shape) != tuple(p.shape):
                    raise ValueError(f"saved delta {tuple(delta.shape)} {delta.dtype} does not "
                                     f"match parameter {tuple(p.shape)} (float32 expected)")
                delta = delta.to(device=p.device, copy=True).contiguous()
                if self.momentum == "dct":
                    delta = ops.dct(delta, self.compression_chunk, backend=self.backend)
                self.state[p]["delta_dct" if self.momentum == "dct" else "delta"] = delta
            elif "delta_dct" in saved:  # a checkpoint of momentum="dct"
                coeffs = saved["delta_dct"]
                plan = chunk_plan(p.shape, self.compression_chunk)
                if coeffs.dtype != torch.float32 or tuple(coeffs.shape) != (plan.n_chunks, plan.elements_per_chunk):
                    raise ValueError(f"saved delta_dct {tuple(coeffs.shape)} {coeffs.dtype} does not "
                                     f"match parameter {tuple(p.shape)} at chunk "
                                     f"{self.compression_chunk} (float32 "
                                     f"{(plan.n_chunks, plan.elements_per_chunk)} expected)")
                coeffs = coeffs.to(device=p.device, copy=True).contiguous()
                if self.momentum == "param":
                    coeffs = ops.idct(coeffs, p.shape, self.compression_chunk, backend=self.backend)
                self.state[p]["delta" if self.momentum == "param" else "delta_dct"] = coeffs
        self._step = int(state_dict.get("demo", {}).get("step", 0))
        self._pending = None

    # ------------------------------------------------------------------ the step, in two halves

    def _named_params(self) -> list[tuple[str, Tensor]]:
        """Every stepped parameter with a name for messages: the group's ``param_names``
        (``DeMo(model.named_parameters())``) or ``group G, parameter I``."""
        out = []
        for g, group in enumerate(self.param_groups):
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                if p.requires_grad:
                    out.append((names[i] if names else f"group {g}, parameter {i}", p))
        return out

    def _update_buffers(self, device) -> list[Tensor] | None:
        """The gradients themselves as the decode's outputs, when every stepped parameter has
        a float32, contiguous, unshared ``.grad`` on ``device`` (it has been encoded by now):
        the update then lands in place, without fresh memory (whose first-touch page faults
        cost ~7 ms per 64 MiB here) or a copy. ``None``: the decode allocates."""
        grads = [p.grad for _, p in self._named_params()]
        if any(g is None or g.dtype != torch.float32 or g.device != torch.device(device)
               or not g.is_contiguous() or g.requires_grad for g in grads):
            return None
        try:  # gradients that share memory (unusual, but legal) get fresh tensors instead
            check_no_overlap([(f"grad {t}", g) for t, g in enumerate(grads)])
        except ValueError:
            return None
        return grads

    def _native(self, t: Tensor, dtypes=(torch.float32,)) -> bool:
        """Whether the optimizer's own passes over ``t`` (the non-finite check, the apply) run
        on this library's CPU threads rather than as torch ops (``csrc/cpu/passes.cpp`` says
        why): a contiguous CPU tensor of ``dtypes``, and a backend that is not ``reference``."""
        return (cpu_ext is not None and self.backend != "reference" and t.device.type == "cpu"
                and t.dtype in dtypes and t.is_contiguous())

    def _nonfinite_gradient(self) -> str | None:
        """The first parameter whose gradient holds inf or NaN, described; ``None`` if none.
        CPU gradients: one native pass each; others: one reduction per tensor and one host
        sync for all of them."""
        named = [(n, p) for n, p in self._named_params() if p.grad is not None]
        if not named:
            return None
        bad, others = [], []
        for t, (_, p) in enumerate(named):
            if self._native(p.grad, (torch.float32, torch.bfloat16, torch.float16)):
                if native_cpu.has_nonfinite(p.grad):
                    bad.append(t)
            else:
                others.append(t)
        if others:
            # min and max propagate NaN and show any inf: one read of each gradient, no mask
            # tensor (isfinite().all() was ~25x slower on CPU, 85 ms at 4096x4096 here)
            grads = [named[t][1].grad.detach() for t in others]
            bounds = [torch.stack(torch.aminmax(g)).float() if g.numel() else torch.zeros(2, device=g.device)
                      for g in grads]
            finite = torch.isfinite(torch.stack([b.to(bounds[0].device) for b in bounds])).all(1).cpu()  # one host sync
            bad += [others[j] for j in (~finite).nonzero().flatten().tolist()]
        if not bad:
            return None
        name, p = named[min(bad)]
        n_nan = int(torch.isnan(p.grad).sum())
        n_inf = int(torch.isinf(p.grad).sum())
        return (f"non-finite gradient in {name} (shape {tuple(p.shape)}): {n_inf} inf, "
                f"{n_nan} NaN")

    @torch.no_grad()
    def prepare(self) -> bytes:
        """Encode this peer's gradients into its payload for this step (updates the momentum).

        Gradients are checked first (see ``nonfinite``): nothing moves if one is not finite."""
        if self._pending is not None:
            raise RuntimeError("prepare() called twice without apply()")
        problem = self._nonfinite_gradient()
        if problem is not None:
            if self.nonfinite == "raise":
                raise NonFiniteGradientError(
                    f"step {self._step}: {problem}; momentum, parameters and step unchanged")
            self._skipped = problem
            self._pending = (None, b"")
            return b""
        deltas, indices, values = [], [], []
        groups = [g for g in self.param_groups if any(p.requires_grad for p in g["params"])]
        for group in groups:  # one fused call per group (usually one for the whole model)
            params = [p for p in group["params"] if p.requires_grad]
            group_deltas = [self._delta(p) for p in params]
            step = ops.demo_step_coeffs_many_ if self.momentum == "dct" else ops.demo_step_many_
            idx, val = step(
                group_deltas, [p.grad if p.grad is not None else torch.zeros_like(p) for p in params],
                self.compression_decay, group["lr"], self.compression_topk,
                self.compression_chunk, backend=self.backend)
            deltas += group_deltas
            indices += idx
            values += val
        self._sent = (deltas, indices, values)
        self._pending = self._model.build(self._step, self.rank, indices, values)
        return self._pending[1]

    @torch.no_grad()
    def apply(self, received: Mapping[int, bytes]) -> StepReport:
        """Decode the peers' payloads (ascending id) and apply sign-SGD + weight decay.

        ``received``: ``{peer_id: bytes}`` of this step, this peer's own bytes included (as
        the exchange returned them); invalid payloads are left out and reported."""
        if self._pending is None:
            raise RuntimeError("apply() called before prepare()")
        (own_payload, own_bytes), self._pending = self._pending, None
        skipped, self._skipped = self._skipped, None
        # Exactly what the exchange delivered, own bytes included: a transport may leave this
        # peer out of a step (e.g. it missed the deadline), and then every peer's aggregate,
        # this one's too, is the one without it.
        parsed = self._model.parse(
            self._step, received,
            own=(own_payload, own_bytes) if own_payload is not None else None,
            world_size=int(getattr(self.transport, "world_size", 1)),
            left_out=getattr(received, "left_out", None) or {})
        if skipped is not None:
            parsed.left_out[self.rank] = f"skipped by this peer: {skipped}"
        report = StepReport(step=self._step, bytes_sent=len(own_bytes),
                            bytes_received=parsed.bytes_received, peers=list(parsed.peers),
                            left_out=dict(sorted(parsed.left_out.items())))
        device = self._params[0].device
        out = self._update_buffers(device)
        step = self._fused_step(out)
        updates = self._model.decode(parsed.payloads, sign=self.sign, device=device,
                                     backend=self.backend, clip_tau=self.clip_tau, out=out, step=step)
        self._sent = None
        if step is not None:  # the decode stepped every parameter
            self._step += 1
            return self._finish(report)
        t = 0
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                update = updates[t].to(device=p.device, dtype=p.dtype)
                t += 1
                if update is not p.grad:  # decoded in place when it could be (_update_buffers)
                    p.grad = update.contiguous()
                keep = _keep(group)
                if self.sign and self._native(p) and self._native(p.grad):  # signs: the same bits
                    native_cpu.apply_update_(p, p.grad, None if keep == 1.0 else keep, -lr)
                    continue
                torch_step_(p, p.grad, keep, -lr)

        self._step += 1
        return self._finish(report)

    def _finish(self, report: StepReport) -> StepReport:
        self.last_report = report
        self.data_transmit, self.data_receive = report.bytes_sent, report.bytes_received
        self.total_bytes_sent += report.bytes_sent
        self.total_bytes_received += report.bytes_received
        return report

    def _fused_step(self, out) -> tuple[list[Tensor], list[float], list[float]] | None:
        """The sign-SGD step for the decode to run in its own pass (``ops.decompress_many_apply_``:
        on CPU each run of chunks right after it is decoded, while the update is in cache), as
        ``(params, keeps, steps)``; ``None`` where the loop below applies it instead: no sign
        update, updates not decoded into the gradients, or a parameter that is not a float32,
        contiguous tensor apart from every gradient. The bits are the same either way."""
        if not self.sign or out is None:
            return None
        params, keeps, steps = [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                if p.dtype != torch.float32 or not p.is_contiguous():
                    return None
                params.append(p)
                keeps.append(_keep(group))
                steps.append(-group["lr"])
        try:
            check_no_overlap([(f"param {t}", p) for t, p in enumerate(params)],
                             [(f"grad {t}", g) for t, g in enumerate(out)])
        except ValueError:
            return None
        return params, keeps, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One DeMo step: encode, exchange through the transport, decode, apply."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        payload = self.prepare()
        try:
            received = self._exchange(payload)
        except TransportError:
            self.abandon()
            raise
        self.apply(received)
        return loss

    @torch.no_grad()
    def abandon(self) -> None:
        """Forget a prepared step whose exchange failed (the transport delivered nothing): the
        coefficients it selected go back into the momentum, parameters and the step counter
        stay, and the next ``prepare()`` starts the same step again."""
        if self._pending is None:
            return
        if self._sent is not None:
            if self.momentum == "dct":  # the sent entries are +0 in the state: exact
                for coeffs, idx, val in zip(*self._sent):
                    coeffs.scatter_add_(1, idx.long().to(coeffs.device), val.to(coeffs.device))
            else:
                self._model.restore(*self._sent)
        self._pending, self._sent, self._skipped = None, None, None

    def _exchange(self, payload: bytes):
        exchange = self.transport.exchange
        try:
            params = inspect.signature(exchange).parameters.values()
            takes_step = any(p.name == "step" or p.kind == p.VAR_KEYWORD for p in params)
        except (TypeError, ValueError):
            takes_step = False
        return exchange(payload, step=self._step) if takes_step else exchange(payload)
