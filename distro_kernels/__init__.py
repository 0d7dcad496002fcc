"""distro_kernels: compression and exchange kernels for low-bandwidth distributed training.

Chunked DCT, per-chunk top-k, sign quantization and bit-exact sparse decode (see SPEC), as
``torch.library`` custom ops whose kernels are registered per device (``dispatch``): native
C++ on CPU tensors, native CUDA/HIP or Triton on GPU tensors, the eager ``reference``
elsewhere.
"""

from ._version import __version__
from .basis import canonical_basis
from .chunking import ChunkPlan, chunk_plan
from .info import info
from .output_pool import empty_cache
from .ops import (
    compress,
    dct,
    decompress,
    decompress_many,
    demo_step_,
    demo_step_coeffs_many_,
    demo_step_many_,
    demo_step_many_flat_,
    idct,
    pack_signs,
    split_flat,
    unpack_signs,
)

try:  # optional Triton kernels: register "triton" for CUDA tensors when Triton imports
    from . import triton as _triton_kernels  # noqa: F401
except Exception as exc:  # never let an optional piece break the import; info() records why
    from . import dispatch as _dispatch

    _dispatch.mark_unavailable("triton", f"distro_kernels.triton failed to import: {exc!r}")

try:  # native CUDA/HIP code objects: register as "native" on CUDA tensors when they load
    from . import cuda as _cuda_kernels  # noqa: F401
except Exception as exc:
    from . import dispatch as _dispatch

    _dispatch.mark_unavailable("native", f"distro_kernels.cuda failed to import: {exc!r}", "cuda")

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
    "demo_step_coeffs_many_",
    "demo_step_many_",
    "demo_step_many_flat_",
    "empty_cache",
    "idct",
    "info",
    "pack_signs",
    "split_flat",
    "unpack_signs",
]
