"""Real text that every machine has: the Python standard library's own ``*.py`` sources.

Files are listed in a fixed order (relative path, sorted). About 10% of them, picked by a hash
of the relative path, form the held-out split; the rest are dealt round-robin to the peers,
so each peer reads only its own shard. Batches are random windows of ``context + 1`` bytes
drawn from a generator seeded by ``(seed, peer, step)``, so DeMo and the baseline see the
same data in the same order.
"""

from __future__ import annotations

import os
import sysconfig
import zlib
from pathlib import Path

import torch

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
HELDOUT_EVERY = 10  # files with crc32(path) % 10 == 0 are held out


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def list_sources(root: Path | None = None) -> list[str]:
    """Relative paths of the stdlib's ``*.py`` files (tests and site-packages excluded), sorted."""
    root = Path(root) if root is not None else stdlib_dir()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        rel = Path(dirpath).relative_to(root)
        out.extend(str(rel / f) for f in filenames if f.endswith(".py"))
    out.sort()
    if not out:
        raise RuntimeError(f"no *.py files found under {root}")
    return out


def is_heldout(rel_path: str) -> bool:
    return zlib.crc32(rel_path.encode()) % HELDOUT_EVERY == 0


def split(files: list[str], peer: int, n_peers: int) -> tuple[list[str], list[str]]:
    """(this peer's training files, the held-out files)."""
    train = [f for f in files if not is_heldout(f)]
    heldout = [f for f in files if is_heldout(f)]
    return train[peer::n_peers], heldout


def read_bytes(files: list[str], limit: int, root: Path | None = None) -> torch.Tensor:
    """Concatenated contents of ``files`` (in order) up to ``limit`` bytes, as uint8."""
    root = Path(root) if root is not None else stdlib_dir()
    chunks, total = [], 0
    for rel in files:
        if total >= limit:
            break
        try:
            data = (root / rel).read_bytes()
        except OSError:
            continue
        chunks.append(data[: limit - total])
        total += len(chunks[-1])
    blob = b"".join(chunks)
    if len(blob) < 1024:
        raise RuntimeError(f"only {len(blob)} bytes of text found; need at least 1 KiB")
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone()


class Shard:
    """One peer's training text and the shared held-out text."""

    def __init__(self, peer: int, n_peers: int, *, train_bytes: int = 2_000_000,
                 heldout_bytes: int = 500_000, root: Path | None = None):
        files = list_sources(root)
        train_files, heldout_files = split(files, peer, n_peers)
        self.peer = peer
        self.train = read_bytes(train_files, train_bytes, root)
        self.heldout = read_bytes(heldout_files, heldout_bytes, root)

    @staticmethod
    def _windows(text: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
        offsets = torch.arange(length)
        return text[starts[:, None] + offsets[None, :]].long()

    def batch(self, seed: int, step: int, batch_size: int, context: int) -> torch.Tensor:
        """``(batch_size, context + 1)`` windows of this peer's text for ``step``."""
        gen = torch.Generator().manual_seed(hash_seed(seed, self.peer, step))
        starts = torch.randint(0, len(self.train) - context - 1, (batch_size,), generator=gen)
        return self._windows(self.train, starts, context + 1)

    def eval_batches(self, which: str, n_batches: int, batch_size: int, context: int,
                     seed: int = 1234) -> list[torch.Tensor]:
        """Fixed evaluation windows from ``"heldout"`` or this peer's ``"train"`` text (each
        peer draws its own windows, so the peers' evaluations together cover more text)."""
        text = self.heldout if which == "heldout" else self.train
        gen = torch.Generator().manual_seed(hash_seed(seed, self.peer, -1 if which == "heldout" else -2))
        starts = torch.randint(0, len(text) - context - 1, (n_batches, batch_size), generator=gen)
        return [self._windows(text, s, context + 1) for s in starts]


def hash_seed(*parts: int) -> int:
    return zlib.crc32(",".join(str(p) for p in parts).encode()) & 0x7FFFFFFF
