"""DeMo in a custom training loop, with the ops called directly (no optimizer class).

Each step, on every peer:

1. encode   ``ModelStep.encode``: ``demo_step_many_`` (momentum += lr * grad, chunked DCT,
            top-k, error feedback) over the whole model, then one wire message
2. exchange every peer's bytes reach every peer: ``transport.exchange`` (a store on the
            torch.distributed group, with a per-step deadline) or ``LocalNetwork`` in-process
3. decode   ``ModelStep.parse`` (validates every other peer's bytes once; own payload reused)
            and ``ModelStep.decode`` (one ``decompress_many``, peers in ascending id) -> the
            same sign update on every peer, bit for bit
4. apply    decoupled weight decay, then ``p -= lr * sign``

Run it either way:

    python examples/custom_trainer.py                       # 2 peers simulated in one process
    torchrun --nproc-per-node 2 examples/custom_trainer.py  # 2 real processes (gloo)
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from distro_kernels import transport
from distro_kernels.app.data import Shard
from distro_kernels.app.model import ModelConfig, build_model
from distro_kernels.step import ModelStep

K, CHUNK, DECAY, CODEC = 32, 64, 0.999, "sign"


class Peer:
    """One peer's model, data shard and float32 DeMo momentum."""

    def __init__(self, rank: int, world: int, cfg: ModelConfig):
        self.rank = rank
        self.model = build_model(cfg, seed=0)  # same initial weights everywhere
        self.params = list(self.model.parameters())
        self.deltas = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.shard = Shard(rank, world, train_bytes=300_000, heldout_bytes=100_000)
        self.codec = ModelStep([p.shape for p in self.params], chunk=CHUNK, k=K,
                               value_codec=CODEC, run_id=0)
        self.sent = None  # (payload, bytes) of this step

    def encode(self, step: int, lr: float, batch: int) -> tuple[bytes, float]:
        """Forward/backward on local data, then step 1: encode the whole model."""
        self.model.zero_grad()
        loss = self.model.loss(self.shard.batch(0, step, batch, self.model.cfg.context))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.sent = self.codec.encode(step, self.rank, self.deltas,
                                      [p.grad for p in self.params], DECAY, lr)
        return self.sent[1], loss.item()

    @torch.no_grad()
    def decode_and_apply(self, step: int, received, lr: float, wd: float):
        """Steps 3-4: validate the others' bytes, decode in ascending id, apply."""
        parsed = self.codec.parse(step, received, own=self.sent,
                                  left_out=getattr(received, "left_out", {}))
        updates = self.codec.decode(parsed.payloads, sign=True)
        for p, update in zip(self.params, updates):
            p.mul_(1.0 - lr * wd)
            p.add_(update.to(p.dtype), alpha=-lr)
        return parsed.left_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--peers", type=int, default=2, help="simulated peers (without torchrun)")
    ap.add_argument("--lr", type=float, default=6e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = ModelConfig(n_layers=1, d_model=64, n_heads=2, context=32)

    distributed = "WORLD_SIZE" in os.environ
    if distributed:  # one real peer per process
        dist.init_process_group("gloo")
        peers = [Peer(dist.get_rank(), dist.get_world_size(), cfg)]
    else:  # every peer in this process
        peers = [Peer(r, args.peers, cfg) for r in range(args.peers)]
        network = transport.LocalNetwork(args.peers)

    for step in range(args.steps):
        encoded = [peer.encode(step, args.lr, args.batch) for peer in peers]
        if distributed:
            results = {peers[0].rank: transport.exchange(encoded[0][0], step=step)}
        else:
            results = network.exchange_all(
                {peer.rank: data for peer, (data, _) in zip(peers, encoded)}, step)
        for peer in peers:
            received = results[peer.rank]  # {peer_id: bytes}, own included; .left_out: who not
            left_out = peer.decode_and_apply(step, received, args.lr, args.weight_decay)
            if left_out:
                print(f"step {step}: left out {left_out}")
        if peers[0].rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            sent = len(encoded[0][0])
            dense = 4 * sum(p.numel() for p in peers[0].params)
            print(f"step {step:3d}  loss {encoded[0][1]:.3f}  payload {sent} B "
                  f"(dense fp32 gradient {dense} B, {dense / sent:.0f}x)")

    if not distributed:
        same = all(torch.equal(a, b) for peer in peers[1:]
                   for a, b in zip(peers[0].params, peer.params))
        print(f"all {len(peers)} peers hold bit-identical parameters: {same}")
    else:
        flat = torch.cat([p.detach().reshape(-1) for p in peers[0].params])
        lo, hi = flat.clone(), flat.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if peers[0].rank == 0:
            same = torch.equal(lo, hi)
            print(f"all {dist.get_world_size()} peers hold bit-identical parameters: {same}")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
