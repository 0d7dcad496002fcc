"""The demo's peers: N real processes on loopback ``torch.distributed`` (gloo).

Each peer reads its own shard of text and trains the same byte-level model twice:

1. ``demo``: local gradients -> :class:`distro_kernels.optim.DeMo` (fused encode, one payload
   per step, exchange, deterministic decode, sign-SGD). Peers exchange only the payloads.
2. ``baseline``: local gradients -> full float32 gradient ``all_reduce`` (mean) -> AdamW.

Same initial weights, data order, schedule (linear warm-up, cosine decay) and gradient clipping
for both. The parent process collects per-step losses and the final evaluation through a queue.
"""

from __future__ import annotations

import hashlib
import math
import os
import queue as queue_mod
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from .data import Shard
from .model import ModelConfig, build_model

METHODS = ("demo", "baseline")


@dataclass
class DemoConfig:
    peers: int = 4
    steps: int = 300
    layers: int = 2
    d_model: int = 128
    heads: int = 4
    init: str = "torch"  # weight init: "torch" (PyTorch defaults) or "gpt2" (N(0, 0.02))
    context: int = 64
    batch: int = 16
    # DeMo. Measured on the default model (2 cores, 4 peers, 300 steps; benchmarks/
    # RESULTS.md, "The demo"): smaller chunks at the same kept fraction and a shorter momentum help
    # this short run; DeMo's own defaults (k=32, chunk=64, decay 0.999) reach a higher loss.
    k: int = 16
    chunk: int = 32
    codec: str = "sign"
    decay: float = 0.95  # DeMo's compression_decay (momentum decay)
    lr: float = 1e-2  # DeMo peak lr (best of 3e-3..2e-2)
    demo_weight_decay: float = 0.0
    # Baseline: AdamW, betas (0.9, 0.95), wd 0.1, at its best measured peak lr (1e-3..2e-2)
    baseline_lr: float = 1.5e-2
    baseline_weight_decay: float = 0.1
    warmup: float = 0.05  # fraction of steps
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    backend: str = "auto"
    seed: int = 0
    threads: int = 1
    train_bytes: int = 2_000_000
    heldout_bytes: int = 500_000
    eval_batches: int = 32  # per peer, for the final evaluation
    eval_every: int = 50  # held-out curve points, on the final evaluation's batches (0: none)
    methods: tuple[str, ...] = METHODS
    deadline: float = 120.0  # seconds a peer waits for the others in one exchange
    # DeMo's exchange: "gloo" (all_gather; a trusted group, the fastest here), "store" (the
    # store exchange: deadlines, bounded reads) or "signed" (store + Ed25519 signatures, run
    # manifest, coordinator-committed steps: docs/threat-model.md)
    exchange: str = "gloo"
    key_dir: str = ""  # "signed": where the parent wrote manifest.json and peer-<r>.key
    timeout: float = 1800.0  # seconds the parent waits for the whole run

    def model_config(self) -> ModelConfig:
        return ModelConfig(self.layers, self.d_model, self.heads, self.context,
                           self.init)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["methods"] = list(self.methods)
        return d


def lr_at(step: int, cfg: DemoConfig, peak: float) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    floor = peak * cfg.min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- transport seam


EXCHANGES = ("gloo", "store", "signed")


def make_transport(cfg: DemoConfig, layout):
    """``gloo``: two ``all_gather`` calls per step (trusted groups only). ``store``/``signed``:
    ``None``, so DeMo builds its default store exchange (with the run's manifest and this
    peer's key when signed)."""
    if cfg.exchange == "gloo":
        from ..transport import GlooTransport

        return GlooTransport(deadline=cfg.deadline, layout=layout)
    return None


def write_run_keys(directory: str, peers: int) -> None:
    """What a launcher of a signed run does: one key per peer (mode 0600) and the manifest
    (peer id -> public key) that every peer loads. In a real run each peer makes its own key
    and sends only the public one (``python -m distro_kernels.identity``)."""
    from ..wire.signing import Manifest, save_private_key

    manifest, keys = Manifest.generate(peers)
    for rank, key in keys.items():
        save_private_key(key, os.path.join(directory, f"peer-{rank}.key"))
    manifest.to_file(os.path.join(directory, "manifest.json"))


def load_run_keys(cfg: DemoConfig, rank: int):
    from ..wire.signing import Manifest, load_private_key

    return (Manifest.from_file(os.path.join(cfg.key_dir, "manifest.json")),
            load_private_key(os.path.join(cfg.key_dir, f"peer-{rank}.key")))


# ----------------------------------------------------------------------------- one peer


@torch.no_grad()
def _evaluate(model, batches) -> float:
    model.eval()
    total = sum(float(model.loss(b)) for b in batches) / max(1, len(batches))
    model.train()
    return total


def _mean_over_peers(x: float) -> float:
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def _train_one(method: str, cfg: DemoConfig, rank: int, shard: Shard, evals: dict, post) -> dict:
    model = build_model(cfg.model_config(), cfg.seed)
    params = list(model.parameters())
    numel = sum(p.numel() for p in params)
    if method == "demo":
        from ..optim import DeMo

        from ..wire import Layout

        signed = load_run_keys(cfg, rank) if cfg.exchange == "signed" else (None, None)
        layout = Layout([p.shape for p in params], chunk=cfg.chunk, k=cfg.k)
        opt = DeMo(params, lr=cfg.lr, compression_decay=cfg.decay, compression_topk=cfg.k,
                   compression_chunk=cfg.chunk,
                   weight_decay=cfg.demo_weight_decay, value_codec=cfg.codec,
                   transport=make_transport(cfg, layout), backend=cfg.backend,
                   run_id=0 if signed[0] is not None else cfg.seed, deadline=cfg.deadline,
                   manifest=signed[0], signing_key=signed[1])
        peak = cfg.lr
    else:
        opt = torch.optim.AdamW(params, lr=cfg.baseline_lr, betas=(0.9, 0.95),
                                weight_decay=cfg.baseline_weight_decay)
        peak = cfg.baseline_lr
        flat = torch.zeros(numel)

    bytes_sent = []
    left_out_steps = 0
    curve = []
    step_time = 0.0
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg, peak)
        batch = shard.batch(cfg.seed, step, cfg.batch, cfg.context)
        opt.zero_grad(set_to_none=False)
        loss = model.loss(batch)
        loss.backward()
        if method == "demo":
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            report = opt.last_report
            bytes_sent.append(report.bytes_sent)
            left_out_steps += bool(report.left_out)
        else:
            offset = 0
            for p in params:
                flat[offset : offset + p.numel()].copy_(p.grad.reshape(-1))
                offset += p.numel()
            dist.all_reduce(flat)
            flat.div_(dist.get_world_size())
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
                offset += p.numel()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            bytes_sent.append(4 * numel)
        step_time += time.perf_counter() - t0
        post(("step", method, rank, step, loss.item()))
        last = step == cfg.steps - 1
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0) and not last:
            curve.append((step + 1, _mean_over_peers(_evaluate(model, evals["heldout"]))))
            post(("curve", method, rank, curve[-1]))

    train_loss = _mean_over_peers(_evaluate(model, evals["train"]))
    heldout_loss = _mean_over_peers(_evaluate(model, evals["heldout"]))
    curve.append((cfg.steps, heldout_loss))
    digest = hashlib.blake2b(digest_size=16)
    for p in params:
        digest.update(p.detach().contiguous().numpy().tobytes())
    checksum = digest.hexdigest()
    result = {
        "method": method,
        "train_loss": train_loss,
        "heldout_loss": heldout_loss,
        "bytes_per_step": sum(bytes_sent) / max(1, len(bytes_sent)),
        "seconds_per_step": step_time / max(1, cfg.steps),
        "params": numel,
        "steps_with_left_out_peers": left_out_steps,
        "heldout_curve": curve,
        "param_checksum": checksum,
    }
    if method == "demo":
        result["backend"] = resolved_backend(cfg.backend)
        result["transport"] = type(opt.transport).__name__
    return result


def resolved_backend(name: str) -> str:
    """The implementation that ``name`` (e.g. ``auto``) runs on CPU tensors."""
    from .. import dispatch

    module = dispatch.resolve(name, "cpu")
    for candidate in dispatch.available():
        if "cpu" in dispatch.device_types(candidate) and dispatch.resolve(candidate, "cpu") is module:
            return candidate
    return module.__name__


def peer_main(rank: int, cfg: DemoConfig, port: int, out_queue) -> None:
    """Entry point of one peer process."""
    def post(msg):
        out_queue.put(msg)

    try:
        torch.set_num_threads(cfg.threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=cfg.peers)
        shard = Shard(rank, cfg.peers, train_bytes=cfg.train_bytes, heldout_bytes=cfg.heldout_bytes)
        mcfg = cfg.model_config()
        evals = {
            "train": shard.eval_batches("train", cfg.eval_batches, cfg.batch, mcfg.context),
            "heldout": shard.eval_batches("heldout", cfg.eval_batches, cfg.batch, mcfg.context),
        }
        post(("ready", rank, len(shard.train), len(shard.heldout)))
        for method in cfg.methods:
            dist.barrier()
            t0 = time.perf_counter()
            result = _train_one(method, cfg, rank, shard, evals, post)
            result["wall_seconds"] = time.perf_counter() - t0
            post(("result", method, rank, result))
        dist.barrier()
        dist.destroy_process_group()
        post(("done", rank))
    except BaseException:  # noqa: BLE001 - reported to the parent, which stops the others
        post(("error", rank, traceback.format_exc()))
        raise SystemExit(1)


# ----------------------------------------------------------------------------- the parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunResult:
    config: dict
    results: dict = field(default_factory=dict)  # method -> rank-0 result dict
    train_curves: dict = field(default_factory=dict)  # method -> [mean loss over peers per step]
    wall_seconds: float = 0.0
    shard_bytes: list = field(default_factory=list)


def run(cfg: DemoConfig, progress=None) -> RunResult:
    """Spawns ``cfg.peers`` processes, trains, and returns what they reported.

    ``progress(method, step, total, mean_loss)`` is called as rank 0's steps complete.
    """
    import multiprocessing as mp

    import tempfile

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if cfg.exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {EXCHANGES}, got {cfg.exchange!r}")
    keys = tempfile.TemporaryDirectory(prefix="dk-run-keys-") if cfg.exchange == "signed" else None
    if keys is not None:
        write_run_keys(keys.name, cfg.peers)
        cfg = DemoConfig(**{**cfg.to_dict(), "methods": cfg.methods, "key_dir": keys.name})
    try:
        return _run(cfg, progress, mp)
    finally:
        if keys is not None:
            keys.cleanup()


def _run(cfg: DemoConfig, progress, mp) -> RunResult:
    ctx = mp.get_context("spawn")
    out_queue = ctx.Queue()
    port = _free_port()
    t_start = time.perf_counter()
    procs = [ctx.Process(target=peer_main, args=(r, cfg, port, out_queue), daemon=True)
             for r in range(cfg.peers)]
    for p in procs:
        p.start()
    res = RunResult(config=cfg.to_dict())
    losses = {m: [[None] * cfg.peers for _ in range(cfg.steps)] for m in cfg.methods}
    done = set()
    try:
        while len(done) < cfg.peers:
            if time.perf_counter() - t_start > cfg.timeout:
                raise TimeoutError(f"demo did not finish within {cfg.timeout:.0f} s")
            try:
                msg = out_queue.get(timeout=0.5)
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"peer(s) {dead} exited with an error")
                continue
            kind = msg[0]
            if kind == "step":
                _, method, rank, step, loss = msg
                losses[method][step][rank] = loss
                row = losses[method][step]
                if progress is not None and all(v is not None for v in row):
                    progress(method, step + 1, cfg.steps, sum(row) / len(row))
            elif kind == "result":
                _, method, rank, result = msg
                if rank == 0:
                    res.results[method] = result
                else:
                    res.results.setdefault(f"_checksums_{method}", {})[rank] = result["param_checksum"]
            elif kind == "ready":
                res.shard_bytes.append((msg[1], msg[2], msg[3]))
            elif kind == "error":
                raise RuntimeError(f"peer {msg[1]} failed:\n{msg[2]}")
            elif kind == "done":
                done.add(msg[1])
    finally:
        for p in procs:
            p.join(timeout=5 if len(done) == cfg.peers else 0.1)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    res.wall_seconds = time.perf_counter() - t_start
    for method in cfg.methods:
        res.train_curves[method] = [sum(r) / len(r) for r in losses[method] if None not in r]
        others = res.results.pop(f"_checksums_{method}", {})
        if method in res.results:
            mine = res.results[method]["param_checksum"]
            res.results[method]["peers_agree"] = all(v == mine for v in others.values())
    return res
