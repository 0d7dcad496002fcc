"""Triton sign codec kernels (SPEC 3): 1 bit per value, bit = signbit, LSB-first.

Loaded through ``_loader`` (once per mode: compiled or interpreted); not imported directly.
"""

import triton
import triton.language as tl


@triton.jit
def pack_signs_kernel(v_ptr, out_ptr, N, nbytes, BLOCK: tl.constexpr):
    """Byte ``b`` = sum over bit ``t`` of ``signbit(v[8 b + t]) << t``; values past N are 0."""
    b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    t = tl.arange(0, 8)
    i = b[:, None] * 8 + t[None, :]
    x = tl.load(v_ptr + i, mask=i < N, other=0.0).to(tl.float32)
    neg = (x.to(tl.int32, bitcast=True) < 0).to(tl.int32)
    byte = tl.sum(neg << t[None, :], axis=1)
    tl.store(out_ptr + b, byte.to(tl.uint8), mask=b < nbytes)


@triton.jit
def unpack_signs_kernel(p_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """``out[i] = 1 - 2 * bit i`` (+1.0 or -1.0) for ``i < n``."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    byte = tl.load(p_ptr + (i >> 3), mask=mask, other=0).to(tl.int32)
    bit = (byte >> (i & 7).to(tl.int32)) & 1
    tl.store(out_ptr + i, 1.0 - 2.0 * bit.to(tl.float32), mask=mask)
