"""distro_kernels: compression and exchange kernels for low-bandwidth distributed training.

Chunked DCT, per-chunk top-k, sign quantization and bit-exact sparse decode (see SPEC), as
``torch.library`` custom ops with ``reference`` (eager torch) and ``cpu`` (C++) backends.
"""

from ._version import __version__
from .basis import canonical_basis
from .chunking import ChunkPlan, chunk_plan
from .info import info
from .ops import (
    compress,
    dct,
    decompress,
    decompress_many,
    demo_step_,
    demo_step_many_,
    idct,
    pack_signs,
    split_flat,
    unpack_signs,
)

try:  # optional Triton backend: registers "triton" for CUDA tensors when Triton imports
    from . import triton as _triton_backend  # noqa: F401
except Exception:  # never let an optional backend break the import; info() records why
    pass

__all__ = [
    "__version__",
    "ChunkPlan",
    "canonical_basis",
    "chunk_plan",
    "compress",
    "dct",
    "decompress",
    "decompress_many",
    "demo_step_",
    "demo_step_many_",
    "idct",
    "info",
    "pack_signs",
    "split_flat",
    "unpack_signs",
]
