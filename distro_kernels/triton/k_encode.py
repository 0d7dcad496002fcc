"""Triton encode kernels (SPEC sections 2-3): chunked DCT, per-chunk top-k, fused DeMo step.

``encode_2d_kernel``: persistent programs, one chunk at a time. ``encode_rows_kernel``: a
block of ``R`` one-row chunks per program (``c(m) == 1``: 1-D tensors, and 2-D tensors whose
row chunk is 1). Per chunk:

    T = x @ C_n^T     x (or beta*delta + lr*grad) read from memory by blocks of KB columns
    X = C_m @ T       T read back by blocks of KB rows from the program's scratch tile (L2)
    k-th largest |X| by a 31-step bisection on the magnitude bits (one count per step), then
    ties among the equal magnitudes by a prefix count in index order (smaller index wins)
    indices/values written at their rank: sorted ascending per chunk with no sort
    delta -= C_m^T @ S @ C_n  (S = X on the selected set, 0 elsewhere), state written once:
      k < BM + BN: k rank-1 updates read back from the k outputs just written;
      else: S through the scratch tile and the same blocked products as the forward.

All products are fp32 ``tl.dot`` (``PREC``: "ieee" by default). Blocking them keeps each
product's operands small: whole-tile products (an unrolled FMA loop under "ieee") took 255
registers and spilled. The DeMo step reads the state's tile twice (the second read, at the
writeback, hits L2): DRAM traffic stays grad + state in, state + payload out.

Loaded through ``_loader`` (in the process's compiled or interpreted mode), not imported.
"""

import triton
import triton.language as tl


# tl.sum's own combine function, used through tl.reduce so that the interpreter reduces
# with numpy directly (a call to a jit helper costs the interpreter ~3 ms; 31 per chunk).
_ADD = tl.standard._sum_combine


@triton.jit
def _group_cumsum(x, WHOLE: tl.constexpr):
    """Inclusive prefix sum in row-major (= coefficient index) order within each group."""
    c = tl.cumsum(x, axis=1)
    if WHOLE:
        row_total = tl.reduce(x, 1, _ADD, keep_dims=True)
        c = c + (tl.cumsum(row_total, axis=0) - row_total)
    return c


@triton.jit
def _select_topk(mag, k, WHOLE: tl.constexpr):
    """SPEC 3 selection on int32 magnitude keys (``-1`` on lanes that are no coefficient).

    A group is the whole tile (``WHOLE``) or each row. For non-negative floats the bit
    pattern orders like the value, so the k-th largest magnitude ``thr`` is the largest
    ``t`` with ``count(mag >= t) >= k``: found bit by bit from bit 30 down (31 group counts,
    no sort). Everything above ``thr`` is kept; of the coefficients equal to ``thr``, the
    ``k - count(mag > thr)`` first in index order. Returns the selection mask and each
    selected lane's rank (0-based, in ascending index order).
    """
    thr = tl.reduce(mag * 0, 1, _ADD, keep_dims=True)  # [G, 1] zeros, G = rows
    if WHOLE:
        thr = tl.reduce(thr, 0, _ADD, keep_dims=True)  # [1, 1]
    for step in range(31):
        cand = thr | (1 << (30 - step))
        count = tl.reduce((mag >= cand).to(tl.int32), 1, _ADD, keep_dims=True)
        if WHOLE:
            count = tl.reduce(count, 0, _ADD, keep_dims=True)
        thr = tl.where(count >= k, cand, thr)
    above = mag > thr
    tied = mag == thr
    n_above = tl.reduce(above.to(tl.int32), 1, _ADD, keep_dims=True)
    if WHOLE:
        n_above = tl.reduce(n_above, 0, _ADD, keep_dims=True)
    tie_rank = _group_cumsum(tied.to(tl.int32), WHOLE)
    sel = above | (tied & (tie_rank <= k - n_above))
    rank = _group_cumsum(sel.to(tl.int32), WHOLE) - 1
    return sel, rank


@triton.jit
def _magnitude_keys(X, valid):
    return tl.where(valid, X.to(tl.int32, bitcast=True) & 0x7FFFFFFF, -1)


@triton.jit
def _input(x_ptr, g_ptr, offs, mask, beta, lr, MODE: tl.constexpr):
    """The values to transform: ``x``, or for the DeMo step ``beta * delta + lr * grad``."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if MODE == 2:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = x * beta + g * lr
    return x


@triton.jit
def encode_2d_kernel(
    x_ptr, g_ptr, cm_ptr, cn_ptr, scratch_ptr, coef_ptr, idx_ptr, val_ptr,
    n_chunks, m, n, chunks_m, chunks_n, cm, cn, k, beta, lr,
    BM: tl.constexpr, BN: tl.constexpr, KB: tl.constexpr, MODE: tl.constexpr,
    PREC: tl.constexpr, SPARSE_BACK: tl.constexpr,
):
    """MODE 0: write X (dct). 1: top-k of X (compress). 2: DeMo step on the state ``x_ptr``.

    Persistent: program ``pid`` handles chunks ``pid, pid + nprog, ...`` and owns the
    ``BM*BN`` float32 tile at ``scratch_ptr + pid*BM*BN`` (T, then S for the dense
    writeback), which stays in L2. ``m, n`` are the tensor's own last two dims (reads and
    writes outside them are masked: the ``pad`` policy's zero padding); ``chunks_m,
    chunks_n`` count chunks of the padded dims. ``coef_ptr``: MODE 0's (n_chunks, cm*cn).
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    zero = pid.to(tl.int64) * 0  # loop counters are made int64 tensors by adding this
    tile = scratch_ptr + pid.to(tl.int64) * (BM * BN)
    ii = tl.arange(0, BM)
    jj = tl.arange(0, BN)
    kk = tl.arange(0, KB)
    i = ii[:, None]
    j = jj[None, :]
    valid = (i < cm) & (j < cn)
    tile_ij = tile + i * BN + j
    for chunk_i in range(pid, n_chunks, nprog):
        chunk = zero + chunk_i
        q = chunk % chunks_n
        rest = chunk // chunks_n
        r = rest % chunks_m
        b = rest // chunks_m
        row = r * cm + i
        base = (b * m + row) * n + q * cn  # where each chunk row starts in the tensor
        row_ok = (i < cm) & (row < m)
        # T = x @ C_n^T (C_n^T[v, j] = C_n[j, v]), reading x by blocks of KB columns.
        T = tl.zeros([BM, BN], tl.float32)
        for kb in range(0, cn, KB):
            v = kb + kk[None, :]
            xk = _input(x_ptr, g_ptr, base + v, row_ok & (v < cn) & (q * cn + v < n), beta, lr,
                        MODE)
            cnt = tl.load(cn_ptr + j * cn + (kb + kk[:, None]),
                          mask=(j < cn) & (kb + kk[:, None] < cn), other=0.0)
            T = tl.dot(xk, cnt, T, input_precision=PREC)
        # X = C_m @ T, reading T back from the tile by blocks of KB rows.
        tl.debug_barrier()  # the previous chunk's readers of the tile are done
        tl.store(tile_ij, T)
        tl.debug_barrier()
        X = tl.zeros([BM, BN], tl.float32)
        for kb in range(0, cm, KB):
            u = kb + kk
            cmk = tl.load(cm_ptr + i * cm + u[None, :], mask=(i < cm) & (u[None, :] < cm),
                          other=0.0)  # C_m[i, u]
            tk = tl.load(tile + u[:, None] * BN + j)
            X = tl.dot(cmk, tk, X, input_precision=PREC)
        if MODE == 0:
            tl.store(coef_ptr + chunk * (cm * cn) + i * cn + j, X, mask=valid)
        else:
            sel, rank = _select_topk(_magnitude_keys(X, valid), k, True)
            out = chunk * k + rank
            tl.store(idx_ptr + out, i * cn + j, mask=sel)
            tl.store(val_ptr + out, X, mask=sel)
            if MODE == 2:
                inside = row_ok & (j < cn) & (q * cn + j < n)
                if SPARSE_BACK:
                    # delta -= sum over the k sent (u, v, X) of X * C_m[u, :]^T (x) C_n[v, :]:
                    # k*E multiply-adds instead of the dense products' (BM + BN)*E.
                    tl.debug_barrier()  # the outputs just stored, read back by every thread
                    x = _input(x_ptr, g_ptr, base + j, inside, beta, lr, MODE)
                    for t in range(k):
                        coeff = tl.load(idx_ptr + chunk * k + t)
                        value = tl.load(val_ptr + chunk * k + t)
                        u = coeff // cn
                        v = coeff - u * cn
                        col_m = tl.load(cm_ptr + u * cm + ii, mask=ii < cm, other=0.0) * value
                        row_n = tl.load(cn_ptr + v * cn + jj, mask=jj < cn, other=0.0)
                        x = x - col_m[:, None] * row_n[None, :]
                else:
                    # S through the tile: U = S @ C_n by column blocks, then C_m^T @ U by
                    # row blocks of U (through the tile again).
                    tl.debug_barrier()
                    tl.store(tile_ij, tl.where(sel, X, 0.0))
                    tl.debug_barrier()
                    U = tl.zeros([BM, BN], tl.float32)
                    for kb in range(0, cn, KB):
                        sk = tl.load(tile + i * BN + (kb + kk[None, :]))
                        cnk = tl.load(cn_ptr + (kb + kk[:, None]) * cn + j,
                                      mask=(kb + kk[:, None] < cn) & (j < cn), other=0.0)
                        U = tl.dot(sk, cnk, U, input_precision=PREC)
                    tl.debug_barrier()
                    tl.store(tile_ij, U)
                    tl.debug_barrier()
                    back = tl.zeros([BM, BN], tl.float32)
                    for kb in range(0, cm, KB):
                        u = kb + kk
                        cmtk = tl.load(cm_ptr + u[None, :] * cm + i,
                                       mask=(u[None, :] < cm) & (i < cm), other=0.0)  # C_m[u, i]
                        uk = tl.load(tile + u[:, None] * BN + j)
                        back = tl.dot(cmtk, uk, back, input_precision=PREC)
                    x = _input(x_ptr, g_ptr, base + j, inside, beta, lr, MODE)
                    x = x - back
                tl.store(x_ptr + base + j, x, mask=inside)


@triton.jit
def encode_rows_kernel(
    x_ptr, g_ptr, cn_ptr, coef_ptr, idx_ptr, val_ptr,
    n_chunks, n, chunks_n, cn, k, beta, lr,
    R: tl.constexpr, BN: tl.constexpr, KB: tl.constexpr, MODE: tl.constexpr,
    PREC: tl.constexpr, SPARSE_BACK: tl.constexpr,
):
    """Chunks of one row (``c(m) == 1``): ``R`` chunks per program, one per tile row.

    Chunk ``c`` is row ``c // chunks_n`` of the tensor seen as ``(rows, n)``, columns
    ``(c % chunks_n) * cn + j``; ``X = x @ C_n^T`` and the selection is per row.
    """
    rr = tl.program_id(0) * R + tl.arange(0, R)
    jj = tl.arange(0, BN)
    kk = tl.arange(0, KB)
    c = rr[:, None]
    j = jj[None, :]
    valid = (c < n_chunks) & (j < cn)
    q = c % chunks_n
    base = (c // chunks_n).to(tl.int64) * n + q * cn
    X = tl.zeros([R, BN], tl.float32)
    for kb in range(0, cn, KB):
        v = kb + kk[None, :]
        xk = _input(x_ptr, g_ptr, base + v, (c < n_chunks) & (v < cn) & (q * cn + v < n),
                    beta, lr, MODE)
        cnt = tl.load(cn_ptr + j * cn + (kb + kk[:, None]),
                      mask=(j < cn) & (kb + kk[:, None] < cn), other=0.0)
        X = tl.dot(xk, cnt, X, input_precision=PREC)
    coef = coef_ptr + c.to(tl.int64) * cn + j
    if MODE == 0:
        tl.store(coef, X, mask=valid)
    else:
        sel, rank = _select_topk(_magnitude_keys(X, valid), k, False)
        out = c.to(tl.int64) * k + rank
        tl.store(idx_ptr + out, j + c * 0, mask=sel)
        tl.store(val_ptr + out, X, mask=sel)
        if MODE == 2:
            inside = valid & (q * cn + j < n)
            if SPARSE_BACK:
                # Per row, k rank-1 updates x[c, :] -= X_t * C_n[v_t, :] (k*BN multiply-adds
                # per row instead of BN*BN), read back from the outputs just stored.
                tl.debug_barrier()
                x = _input(x_ptr, g_ptr, base + j, inside, beta, lr, MODE)
                for t in range(k):
                    coeff = tl.load(idx_ptr + rr.to(tl.int64) * k + t, mask=rr < n_chunks, other=0)
                    value = tl.load(val_ptr + rr.to(tl.int64) * k + t, mask=rr < n_chunks,
                                    other=0.0)
                    rows_n = tl.load(cn_ptr + coeff[:, None] * cn + j, mask=valid, other=0.0)
                    x = x - value[:, None] * rows_n
            else:
                tl.store(coef, tl.where(sel, X, 0.0), mask=valid)
                tl.debug_barrier()
                back = tl.zeros([R, BN], tl.float32)
                for kb in range(0, cn, KB):
                    v = kb + kk[None, :]
                    sk = tl.load(coef_ptr + c.to(tl.int64) * cn + v, mask=(c < n_chunks) & (v < cn),
                                 other=0.0)
                    cnk = tl.load(cn_ptr + (kb + kk[:, None]) * cn + j,
                                  mask=(kb + kk[:, None] < cn) & (j < cn), other=0.0)
                    back = tl.dot(sk, cnk, back, input_precision=PREC)
                x = _input(x_ptr, g_ptr, base + j, inside, beta, lr, MODE)
                x = x - back
            tl.store(x_ptr + base + j, x, mask=inside)
