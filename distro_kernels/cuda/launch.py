"""Kernel signatures and argument packing: the ``void**`` array that ``cuLaunchKernel`` (and
``hipModuleLaunchKernel``, and the host emulation) takes, one pointer per argument."""

from __future__ import annotations

import ctypes

# Parameter types of each extern "C" kernel in csrc/cuda (pointers travel as uint64).
KERNELS: dict[str, tuple] = {
    # table, n_tensors, mode, beta, lr
    "dk_encode": (ctypes.c_uint64, ctypes.c_int32, ctypes.c_int32, ctypes.c_float, ctypes.c_float),
    # table, n_tensors, reduce, codec, apply_sign, flags
    "dk_decompress": (ctypes.c_uint64, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                      ctypes.c_int32, ctypes.c_uint64),
    # table, n_tensors
    "dk_idct": (ctypes.c_uint64, ctypes.c_int32),
    # values, n, out, nbytes
    "dk_pack_signs": (ctypes.c_uint64, ctypes.c_int64, ctypes.c_uint64, ctypes.c_int64),
    # packed, n, out
    "dk_unpack_signs": (ctypes.c_uint64, ctypes.c_int64, ctypes.c_uint64),
}
THREADS = 256  # block size of every kernel (DK_THREADS)
MAX_GRID = 2**31 - 1  # blocks in x


class Packed:
    """``params`` (a ``void*[]``) points at ``values``; keep this object alive over the call."""

    def __init__(self, name: str, args: tuple):
        types = KERNELS[name]
        if len(args) != len(types):
            raise TypeError(f"{name} takes {len(types)} arguments, got {len(args)}")
        self.values = [t(a) for t, a in zip(types, args)]
        self.params = (ctypes.c_void_p * len(types))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in self.values])


def grid_blocks(blocks: int) -> int:
    if not 1 <= blocks <= MAX_GRID:
        raise ValueError(f"launch of {blocks} blocks is outside [1, {MAX_GRID}]")
    return blocks
