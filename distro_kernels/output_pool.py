"""Large CPU decode outputs, reused across calls instead of mapped fresh each time.

A fresh 64 MiB ``torch.empty`` is new pages: the kernel's first writes fault each one in and
zero it, 7-12 ms per 4096x4096 decode on the project's 2-core EPYC, a third of the decode
itself. glibc returns such large blocks to the OS on free, so every call pays it again. This
pool keeps a few large blocks mapped and hands one out again once nothing uses it, as
PyTorch's CUDA caching allocator does for GPU memory.

How a block knows it is free, with public APIs only: the block is a 64-byte-aligned numpy
array; each tensor handed out is ``torch.from_numpy`` of a fresh view of it, and that view is
referenced by the tensor's storage alone (views of the tensor, ``.numpy()`` exports and
pickles all keep the storage). The pool holds a weak reference to the view: when it is dead,
no tensor reaches the block.

Limits: outputs under ``MIN_BYTES`` use ``torch.empty`` (malloc reuses those already);
blocks in use and idle together stay under ``DK_OUTPUT_POOL_MB`` (default 256 MiB; ``0``
turns the pool off), and past it outputs are plain ``torch.empty`` tensors. ``empty_cache()``
unmaps the idle blocks. A pooled tensor's storage is not resizable (``resize_`` to a larger
size raises), like any ``torch.from_numpy`` tensor.
"""

from __future__ import annotations

import os
import threading
import weakref

import numpy as np
import torch

MIN_BYTES = 1 << 20
_ALIGN = 64  # the kernels' vector stores: a cache line, as torch.empty aligns


def _cap_bytes() -> int:
    try:
        return max(0, int(os.environ.get("DK_OUTPUT_POOL_MB", "256"))) << 20
    except ValueError:
        return 256 << 20


class _Block:
    __slots__ = ("raw", "offset", "nbytes", "user")

    def __init__(self, nbytes: int):
        self.raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
        self.offset = -self.raw.ctypes.data % _ALIGN
        self.nbytes = nbytes
        self.user = None  # weak reference to the view the live tensor holds

    def idle(self) -> bool:
        return self.user is None or self.user() is None

    def tensor(self, shape) -> torch.Tensor:
        view = self.raw[self.offset : self.offset + self.nbytes].view(np.float32)
        self.user = weakref.ref(view)
        return torch.from_numpy(view).view(shape)


class OutputPool:
    def __init__(self, cap_bytes: int):
        self.cap_bytes = cap_bytes
        self._blocks: list[_Block] = []
        self._lock = threading.Lock()

    def empty(self, shape) -> torch.Tensor:
        """A float32 CPU tensor of ``shape``, uninitialized (as ``torch.empty``)."""
        shape = tuple(int(s) for s in shape)
        nbytes = 4 * int(np.prod(shape, dtype=np.int64))
        if nbytes < MIN_BYTES or nbytes > self.cap_bytes:
            return torch.empty(shape)
        with self._lock:
            for block in self._blocks:
                if block.nbytes == nbytes and block.idle():
                    return block.tensor(shape)
            self._make_room(nbytes)
            if self._held() + nbytes > self.cap_bytes:  # the rest is in use
                return torch.empty(shape)
            block = _Block(nbytes)
            self._blocks.append(block)
            return block.tensor(shape)

    def _held(self) -> int:
        return sum(b.nbytes for b in self._blocks)

    def _make_room(self, nbytes: int) -> None:
        """Unmaps idle blocks, oldest first, until ``nbytes`` more fit under the cap."""
        for block in list(self._blocks):
            if self._held() + nbytes <= self.cap_bytes:
                return
            if block.idle():
                self._blocks.remove(block)

    def empty_cache(self) -> None:
        """Unmaps every block no tensor uses."""
        with self._lock:
            self._blocks = [b for b in self._blocks if not b.idle()]

    def stats(self) -> dict:
        with self._lock:
            idle = [b for b in self._blocks if b.idle()]
            return {"cap_bytes": self.cap_bytes, "blocks": len(self._blocks),
                    "held_bytes": self._held(), "idle_bytes": sum(b.nbytes for b in idle)}


pool = OutputPool(_cap_bytes())


def empty_cache() -> None:
    """Unmaps the CPU decode outputs that the pool keeps for reuse and no tensor uses."""
    pool.empty_cache()
