"""The ops: ``definitions`` (custom ops, fakes, per-device kernels), ``checks`` (argument
rules every kernel and fake applies), ``arguments`` (argument plumbing), ``api`` (the public
functions re-exported here and by the package)."""

from .api import (
    compress,
    dct,
    decompress,
    decompress_many,
    decompress_many_apply_,
    demo_step_,
    demo_step_coeffs_many_,
    demo_step_many_,
    demo_step_many_flat_,
    idct,
    pack_signs,
    unpack_signs,
)
from .arguments import split_flat

__all__ = [
    "compress", "dct", "decompress", "decompress_many", "decompress_many_apply_", "demo_step_",
    "demo_step_coeffs_many_", "demo_step_many_", "demo_step_many_flat_", "idct", "pack_signs",
    "split_flat", "unpack_signs",
]
