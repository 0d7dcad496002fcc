"""A small byte-level transformer language model (GPT-style, pre-LayerNorm) for the demo.

Vocabulary is the 256 byte values; no tokenizer, no download. Default size (2 layers, d=128,
context 64) is about 0.47M parameters. Linear layers have no bias; LayerNorms do.

Initialization matters for sign-based optimizers: with PyTorch's default initializers
(embeddings N(0, 1), linear weights ~U(+-1/sqrt(fan_in))) a sign-SGD step of lr 6e-3 is small
next to every weight; with GPT-2's N(0, 0.02) the first dozen DeMo steps move the output
head by more than its own scale and the loss spikes (measured: held-out 2.25-2.33 instead of
1.80 after 300 steps, while AdamW went from 1.90 to 2.03).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 256


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    context: int = 64
    init: str = "torch"  # "torch": PyTorch's default initializers; "gpt2": N(0, 0.02) weights

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.out = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        shape = (b, t, self.n_heads, d // self.n_heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ByteLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model {cfg.d_model} is not a multiple of n_heads {cfg.n_heads}")
        self.cfg = cfg
        self.tok = nn.Embedding(VOCAB, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, VOCAB, bias=False)
        if cfg.init == "torch":
            return
        if cfg.init != "gpt2":
            raise ValueError(f"init must be 'gpt2' or 'torch', got {cfg.init!r}")
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections
            if name.endswith(("proj.weight", "out.weight")):
                nn.init.normal_(p, 0.0, 0.02 / (2 * cfg.n_layers) ** 0.5)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Next-byte cross-entropy (nats per byte) on ``batch`` of shape ``(B, context + 1)``."""
        logits = self(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


def build_model(cfg: ModelConfig, seed: int) -> ByteLM:
    """The same initial weights on every peer for the same ``seed``."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return ByteLM(cfg)
    finally:
        torch.random.set_rng_state(gen_state)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
