"""Arguments, progress bar and output of ``python -m distro_kernels demo``."""

from __future__ import annotations

import argparse
import sys
import time

from .train import METHODS, DemoConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    g = p.add_argument_group("peers and run")
    g.add_argument("--peers", type=int, default=d.peers, help="peer processes (default %(default)s)")
    g.add_argument("--steps", type=int, default=d.steps, help="training steps (default %(default)s)")
    g.add_argument("--only", choices=METHODS, help="run only DeMo or only the baseline")
    g.add_argument("--seed", type=int, default=d.seed, help="init / data seed (default %(default)s)")
    g.add_argument("--threads", type=int, default=d.threads,
                   help="torch threads per peer (default %(default)s)")
    g = p.add_argument_group("model (byte-level transformer)")
    g.add_argument("--layers", type=int, default=d.layers, help="default %(default)s")
    g.add_argument("--d-model", type=int, default=d.d_model, help="default %(default)s")
    g.add_argument("--heads", type=int, default=d.heads, help="default %(default)s")
    g.add_argument("--context", type=int, default=d.context, help="bytes (default %(default)s)")
    g.add_argument("--init", choices=("torch", "gpt2"), default=d.init,
                   help="weight init: PyTorch defaults or GPT-2's N(0, 0.02) (default %(default)s)")
    g.add_argument("--batch", type=int, default=d.batch,
                   help="sequences per peer per step (default %(default)s)")
    g = p.add_argument_group("DeMo")
    g.add_argument("--k", type=int, default=d.k, help="kept coefficients per chunk (default %(default)s)")
    g.add_argument("--chunk", type=int, default=d.chunk, help="DCT chunk target (default %(default)s)")
    g.add_argument("--codec", choices=("sign", "f32"), default=d.codec,
                   help="value codec on the wire (default %(default)s)")
    g.add_argument("--decay", type=float, default=d.decay,
                   help="DeMo momentum decay, compression_decay (default %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="DeMo peak lr (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.demo_weight_decay,
                   help="DeMo decoupled weight decay (default %(default)s)")
    g.add_argument("--exchange", choices=("gloo", "store", "signed"), default=d.exchange,
                   help="DeMo's exchange: gloo all_gather (trusted peers), the store exchange, "
                   "or the store exchange with Ed25519-signed payloads and a run manifest "
                   "(default %(default)s)")
    g.add_argument("--backend", default=d.backend,
                   help="kernel implementation override: auto, reference, native (default %(default)s)")
    g = p.add_argument_group("baseline (AdamW + full-gradient all-reduce)")
    g.add_argument("--baseline-lr", type=float, default=d.baseline_lr, help="default %(default)s")
    g.add_argument("--baseline-weight-decay", type=float, default=d.baseline_weight_decay,
                   help="default %(default)s")
    g = p.add_argument_group("evaluation and output")
    g.add_argument("--eval-batches", type=int, default=d.eval_batches,
                   help="final evaluation batches per peer (default %(default)s)")
    g.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="held-out curve point every N steps, 0 for none (default %(default)s)")
    g.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    g.add_argument("--plot", metavar="PNG", help="write the loss curves (needs matplotlib)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(a: argparse.Namespace) -> DemoConfig:
    if a.peers < 1 or a.steps < 1:
        raise SystemExit("--peers and --steps must be >= 1")
    return DemoConfig(
        peers=a.peers, steps=a.steps, layers=a.layers, d_model=a.d_model, heads=a.heads, init=a.init,
        context=a.context, batch=a.batch, k=a.k, chunk=a.chunk, codec=a.codec, decay=a.decay,
        lr=a.lr,
        demo_weight_decay=a.weight_decay, baseline_lr=a.baseline_lr,
        baseline_weight_decay=a.baseline_weight_decay, backend=a.backend, seed=a.seed,
        exchange=a.exchange,
        threads=a.threads, eval_batches=a.eval_batches, eval_every=a.eval_every,
        methods=(a.only,) if a.only else METHODS,
    )


class Progress:
    """tqdm when it is installed, else one rewritten stderr line (or a line per 10%)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.method = None
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last_decile = -1
        try:
            from tqdm import tqdm  # type: ignore

            self.tqdm = tqdm
        except ImportError:
            self.tqdm = None

    def __call__(self, method: str, step: int, total: int, loss: float) -> None:
        if not self.enabled:
            return
        name = "DeMo" if method == "demo" else "AdamW+all-reduce"
        if method != self.method:
            self.close()
            self.method, self.t0, self.last_decile = method, time.perf_counter(), -1
            if self.tqdm is not None:
                self.bar = self.tqdm(total=total, desc=name, unit="step", leave=True)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.3f}")
            return
        rate = (time.perf_counter() - self.t0) / step
        text = (f"{name:>16} {step:>5}/{total} [{'#' * (20 * step // total):<20}] "
                f"loss {loss:.3f}  {rate:.2f} s/step  eta {rate * (total - step):.0f} s")
        if self.tty:
            sys.stderr.write("\r" + text)
            if step == total:
                sys.stderr.write("\n")
        elif step * 10 // total > self.last_decile:
            self.last_decile = step * 10 // total
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main(args: argparse.Namespace) -> int:
    from . import report
    from .train import run

    cfg = config_from_args(args)
    if args.plot:  # fail before training, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("--plot needs matplotlib: pip install matplotlib (or the [plot] extra)")
    progress = Progress(enabled=not args.no_progress)
    print(f"training {', '.join(cfg.methods)} on {cfg.peers} peer processes "
          f"({cfg.steps} steps each)...", file=sys.stderr)
    try:
        res = run(cfg, progress=progress)
    finally:
        progress.close()
    s = report.summary(res, cfg)
    print(report.table(s))
    if args.json:
        report.write_json(s, args.json)
    if args.plot:
        report.plot(s, args.plot)
        print(f"loss curves written to {args.plot}", file=sys.stderr)
    return 0
