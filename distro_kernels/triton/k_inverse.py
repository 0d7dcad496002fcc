"""Triton decode kernels (SPEC section 4): aggregate P peers, canonical inverse DCT, sign.

Bit-exactness rules, all of them load-bearing:
- compiled with ``enable_fp_fusion=False`` (no FMA contraction; ptxas gets ``--fmad=false``);
- every fold is an explicit loop, ascending, one rounded multiply then one rounded add, from
  ``+0`` (``acc = acc + a * b``), exactly as SPEC 4.3 and ``reference.canonical_inverse``;
- ``tl.div_rn`` for the mean (``/`` would be an approximate division on NVIDIA).

Aggregation: peers are applied one after another (ascending peer id) by a gather-add-scatter
into a per-program scratch tile in global memory (L1/L2 resident), with a block barrier
between peers: within one peer a chunk's indices are distinct, so no two lanes touch the
same coefficient; across peers the barrier orders the updates. The scratch is zeroed once
(by the caller) and only the touched coefficients are reset after use.

Stage 1 (``T[u, j] = sum_v A[u, v] C_n[v, j]``) walks the coefficient columns ``v`` in
order, loading column ``v`` of the aggregate (stored ``v``-major, so the column is
contiguous). Stage 2 (``y[i, j] = sum_u C_m[u, i] T[u, j]``) needs rows of ``T``: ``T`` goes
through a scratch plane (barrier on both sides). ``SOURCE == 0`` runs the same inverse on a
dense coefficient tensor (``idct``; no canonicalisation, as the reference).

Loaded through ``_loader`` (once per mode: compiled or interpreted); not imported directly.
"""

import triton
import triton.language as tl

FLUSH = tl.constexpr(2.0**-55)  # SPEC 4.1/4.2: |v| below this becomes +0 (exact in fp32)


@triton.jit
def _peer_values(val_ptr, base, slot, mask, p, flat, nbytes, SOURCE: tl.constexpr):
    """Canonical float32 values of one peer's slots (SOURCE 1: floats, 2: packed signs).

    ``p`` is the peer as an int64 scalar tensor; ``flat`` the slots' positions in the peer.
    """
    if SOURCE == 1:
        v = tl.load(val_ptr + base + slot, mask=mask, other=0.0)
        v = tl.where(tl.abs(v) < FLUSH, 0.0, v)
    else:
        byte = tl.load(val_ptr + p * nbytes + (flat >> 3), mask=mask, other=0)
        bit = (byte.to(tl.int32) >> (flat & 7).to(tl.int32)) & 1
        v = 1.0 - 2.0 * bit.to(tl.float32)
    return v


@triton.jit
def _sign(y):
    return tl.where(y > 0.0, 1.0, tl.where(y < 0.0, -1.0, 0.0))


@triton.jit
def inverse_2d_kernel(
    src_ptr, val_ptr, out_ptr, scratch_ptr, cm_ptr, cn_ptr,
    n_chunks, P, K, chunks_m, chunks_n, cm, cn, p_float, nbytes,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    SOURCE: tl.constexpr, MEAN: tl.constexpr, SIGN_OUT: tl.constexpr,
):
    """Persistent: program ``pid`` handles chunks ``pid, pid + nprog, ...``.

    SOURCE 0: ``src_ptr`` is dense coefficients ``(n_chunks, cm*cn)`` (idct).
    SOURCE 1/2: ``src_ptr`` is int32 indices ``(P, n_chunks, K)``, ``val_ptr`` float32
    values of the same shape (1) or packed sign bytes ``(P, nbytes)`` (2).
    ``out_ptr``: float32 tensor of the padded shape ``(batch, chunks_m*cm, chunks_n*cn)``.
    ``scratch_ptr``: zeroed float32 ``(nprog, 3, BM*BN)`` planes S (v-major), n, T (u-major).
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    TILE: tl.constexpr = BM * BN
    s_plane = scratch_ptr + pid.to(tl.int64) * (3 * TILE)
    n_plane = s_plane + TILE
    t_plane = n_plane + TILE
    ii = tl.arange(0, BM)
    jj = tl.arange(0, BN)
    slot = tl.arange(0, BK)
    smask = slot < K
    row_mask = ii < cm
    col_mask = jj < cn
    pm = chunks_m * cm
    pn = chunks_n * cn
    zero = pid.to(tl.int64) * 0  # loop counters are made int64 tensors by adding this
    for chunk_i in range(pid, n_chunks, nprog):
        chunk = zero + chunk_i
        if SOURCE != 0:
            for p_i in range(P):
                p = zero + p_i
                base = (p * n_chunks + chunk) * K
                idx = tl.load(src_ptr + base + slot, mask=smask, other=0)
                v = _peer_values(val_ptr, base, slot, smask, p, chunk * K + slot, nbytes, SOURCE)
                off = (idx % cn) * BM + idx // cn
                s = tl.load(s_plane + off, mask=smask, other=0.0)
                c = tl.load(n_plane + off, mask=smask, other=0.0)
                tl.store(s_plane + off, s + v, mask=smask)
                tl.store(n_plane + off, c + 1.0, mask=smask)
                tl.debug_barrier()
        # Stage 1: T[u, j] = sum over v ascending of A[u, v] * C_n[v, j], from +0.
        T = tl.zeros([BM, BN], tl.float32)
        for v in range(cn):
            if SOURCE == 0:
                a = tl.load(src_ptr + chunk * (cm * cn) + ii * cn + v,
                            mask=row_mask, other=0.0)
            else:  # SPEC 4.2 (inlined: the interpreter pays ~3 ms per helper call)
                total = tl.load(s_plane + v * BM + ii)
                count = tl.load(n_plane + v * BM + ii)
                den = tl.where(count > 0.0, count, 1.0) if MEAN else count * 0.0 + p_float
                a = tl.where(count > 0.0, tl.div_rn(total, den), 0.0)
                a = tl.where(tl.abs(a) < FLUSH, 0.0, a)
            basis_row = tl.load(cn_ptr + v * cn + jj, mask=col_mask, other=0.0)
            T = T + a[:, None] * basis_row[None, :]
        tl.debug_barrier()
        if SOURCE != 0:
            for p_i in range(P):
                base = (zero + p_i) * n_chunks * K + chunk * K
                idx = tl.load(src_ptr + base + slot, mask=smask, other=0)
                off = (idx % cn) * BM + idx // cn
                tl.store(s_plane + off, tl.zeros([BK], tl.float32), mask=smask)
                tl.store(n_plane + off, tl.zeros([BK], tl.float32), mask=smask)
        tl.store(t_plane + ii[:, None] * BN + jj[None, :], T)
        tl.debug_barrier()
        # Stage 2: y[i, j] = sum over u ascending of C_m[u, i] * T[u, j], from +0.
        y = tl.zeros([BM, BN], tl.float32)
        for u in range(cm):
            t_row = tl.load(t_plane + u * BN + jj)
            basis_col = tl.load(cm_ptr + u * cm + ii, mask=row_mask, other=0.0)
            y = y + basis_col[:, None] * t_row[None, :]
        if SIGN_OUT:
            y = _sign(y)
        q = chunk % chunks_n
        rest = chunk // chunks_n
        r = rest % chunks_m
        b = rest // chunks_m
        offs = (b * pm + r * cm + ii[:, None]) * pn + q * cn + jj[None, :]
        tl.store(out_ptr + offs, y, mask=row_mask[:, None] & col_mask[None, :])
        tl.debug_barrier()


@triton.jit
def inverse_rows_kernel(
    src_ptr, val_ptr, out_ptr, scratch_ptr, cn_ptr,
    n_chunks, P, K, cn, p_float, nbytes,
    R: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    SOURCE: tl.constexpr, MEAN: tl.constexpr, SIGN_OUT: tl.constexpr,
):
    """Chunks of one row (``c(m) == 1``): ``R`` chunks per block, persistent over blocks.

    ``y[c, j] = sum over v ascending of A[c, v] * C[v, j]`` (SPEC 4.3's 1-D fold; for a 2-D
    tensor with ``c(m) == 1`` the second fold is ``+0 + 1.0 * T``, which is ``T``'s bits).
    Chunk ``c`` of the padded tensor starts at ``c * cn``.
    Scratch: zeroed float32 ``(nprog, 2, R*BN)`` planes S and n, both v-major.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    TILE: tl.constexpr = R * BN
    s_plane = scratch_ptr + pid.to(tl.int64) * (2 * TILE)
    n_plane = s_plane + TILE
    rr = tl.arange(0, R)
    jj = tl.arange(0, BN)
    slot = tl.arange(0, BK)
    col_mask = jj < cn
    n_blocks = tl.cdiv(n_chunks, R)
    zero = pid.to(tl.int64) * 0  # loop counters are made int64 tensors by adding this
    for blk in range(pid, n_blocks, nprog):
        c = (zero + blk) * R + rr
        c_mask = c < n_chunks
        if SOURCE != 0:
            pmask = c_mask[:, None] & (slot[None, :] < K)
            for p_i in range(P):
                p = zero + p_i
                base = (p * n_chunks + c[:, None]) * K
                idx = tl.load(src_ptr + base + slot[None, :], mask=pmask, other=0)
                v = _peer_values(val_ptr, base, slot[None, :], pmask, p,
                                 c[:, None] * K + slot[None, :], nbytes, SOURCE)
                off = idx * R + rr[:, None]
                s = tl.load(s_plane + off, mask=pmask, other=0.0)
                cnt = tl.load(n_plane + off, mask=pmask, other=0.0)
                tl.store(s_plane + off, s + v, mask=pmask)
                tl.store(n_plane + off, cnt + 1.0, mask=pmask)
                tl.debug_barrier()
        y = tl.zeros([R, BN], tl.float32)
        for v in range(cn):
            if SOURCE == 0:
                a = tl.load(src_ptr + c * cn + v, mask=c_mask, other=0.0)
            else:  # SPEC 4.2: A = S / n (or S / P), 0 where n == 0, then the flush
                total = tl.load(s_plane + v * R + rr)
                count = tl.load(n_plane + v * R + rr)
                den = tl.where(count > 0.0, count, 1.0) if MEAN else count * 0.0 + p_float
                a = tl.where(count > 0.0, tl.div_rn(total, den), 0.0)
                a = tl.where(tl.abs(a) < FLUSH, 0.0, a)
            basis_row = tl.load(cn_ptr + v * cn + jj, mask=col_mask, other=0.0)
            y = y + a[:, None] * basis_row[None, :]
        if SOURCE != 0:
            tl.debug_barrier()
            for p_i in range(P):
                base = ((zero + p_i) * n_chunks + c[:, None]) * K
                idx = tl.load(src_ptr + base + slot[None, :], mask=pmask, other=0)
                off = idx * R + rr[:, None]
                tl.store(s_plane + off, tl.zeros([R, BK], tl.float32), mask=pmask)
                tl.store(n_plane + off, tl.zeros([R, BK], tl.float32), mask=pmask)
            tl.debug_barrier()
        if SIGN_OUT:
            y = _sign(y)
        tl.store(out_ptr + c[:, None] * cn + jj[None, :], y,
                 mask=c_mask[:, None] & col_mask[None, :])
