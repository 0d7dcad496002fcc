"""SPEC section 4: aggregation and canonical inverse, bit for bit against tests/spec_numpy.py,
and bit for bit across backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import distro_kernels as dk
import spec_numpy as sn
from conftest import BACKENDS, CHUNKS, ODD_SHAPES, assert_same_bits, needs_cpu, randn, seed_of

TWO_M55 = np.float32(2.0**-55)
BELOW_2M55 = np.nextafter(TWO_M55, np.float32(0))
BIG_F32 = np.float32(2.0**64 * (1 - 2.0**-24))  # largest float32 below 2^64
BIG_BF16 = np.float32(2.0**64 * (1 - 2.0**-8))  # largest bfloat16 below 2^64
F16_MAX = np.float32(65504.0)


def _seed(*parts) -> int:
    return seed_of(*parts)


# ---------------------------------------------------------------------------- payload maker


def make_indices(rng, n_chunks: int, E: int, k_eff: int, P: int, mode: str) -> list[np.ndarray]:
    """``P`` peers' int64 ``(n_chunks, k_eff)`` sorted index sets.

    ``random``: independent subsets (overlapping); ``identical``: every peer the same set;
    ``disjoint``: no index shared by two peers (when ``P * k_eff <= E``).
    """
    if mode == "disjoint" and P * k_eff > E:
        mode = "random"
    if mode == "identical":
        one = np.sort(np.argsort(rng.random((n_chunks, E)), axis=1)[:, :k_eff], axis=1)
        return [one.copy() for _ in range(P)]
    if mode == "disjoint":
        perm = np.argsort(rng.random((n_chunks, E)), axis=1)
        return [np.sort(perm[:, p * k_eff : (p + 1) * k_eff], axis=1) for p in range(P)]
    return [
        np.sort(np.argsort(rng.random((n_chunks, E)), axis=1)[:, :k_eff], axis=1)
        for _ in range(P)
    ]


def specials_for(codec: str) -> np.ndarray:
    big = {"f32": BIG_F32, "bf16": BIG_BF16, "f16": F16_MAX}[codec]
    sub = np.float32(1e-45) if codec == "f32" else np.float32(0.0)
    vals = [0.0, -0.0, TWO_M55, -TWO_M55, BELOW_2M55, -BELOW_2M55, 2.0**-56, 2.0**-54, sub,
            big, -big, 1.0, -1.0, 2.0**-24, 3.0]
    if codec == "f16":  # f16 cannot hold 2^-55-ish values: they all round to (+-)0 there
        vals = [0.0, -0.0, 6e-8, -6e-8, big, -big, 1.0, -1.0, 2.0**-24, 3.0]
    return np.array(vals, dtype=np.float32)


def make_values(rng, shape, codec: str, scale: float, special_frac: float) -> np.ndarray:
    v = (rng.standard_normal(shape) * scale).astype(np.float32)
    if special_frac:
        specials = specials_for(codec if codec != "sign" else "f32")
        mask = rng.random(shape) < special_frac
        v[mask] = rng.choice(specials, size=int(mask.sum()))
    if codec == "f16":
        v = np.clip(v, -F16_MAX, F16_MAX)
    return v


def to_torch(indices: list[np.ndarray], values: list[np.ndarray], codec: str):
    """Torch payload for ``decompress`` and the float32 / packed values spec_numpy sees."""
    t_idx = [torch.from_numpy(i.astype(np.int32)) for i in indices]
    t_val, s_val = [], []
    for v in values:
        if codec == "sign":
            packed = sn.pack_signs(v)
            t_val.append(torch.from_numpy(packed.copy()))
            s_val.append(packed)
        else:
            dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[codec]
            t = torch.from_numpy(v.copy()).to(dtype)
            t_val.append(t)
            s_val.append(t.float().numpy())  # exact upcast
    return t_idx, t_val, s_val


def run_both(backend, shape, chunk, indices, values, *, reduce="mean", codec="f32", sign=False,
             policy="divisor"):
    t_idx, t_val, s_val = to_torch(indices, values, codec)
    got = dk.decompress(t_idx, t_val, shape, chunk, reduce=reduce, value_codec=codec, sign=sign,
                        policy=policy, backend=backend)
    want = sn.decode([i for i in indices], s_val, shape, chunk, reduce=reduce, codec=codec,
                     sign=sign, policy=policy)
    return got, want


# ---------------------------------------------------------------------------- random payloads


@given(
    shape=st.sampled_from(ODD_SHAPES),
    chunk=st.sampled_from([1, 4] + CHUNKS),
    P=st.integers(1, 9),
    k=st.integers(1, 70),
    mode=st.sampled_from(["random", "identical", "disjoint"]),
    reduce=st.sampled_from(["mean", "sum_over_peers"]),
    codec=st.sampled_from(["f32", "bf16", "f16", "sign"]),
    sign=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.sampled_from([-30, -10, 0, 10, 15]),
    special_frac=st.sampled_from([0.0, 0.1, 0.5]),
)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_decode_random_bitwise(backend_name, shape, chunk, P, k, mode, reduce, codec, sign, seed,
                               log_scale, special_frac):
    p = sn.plan(shape, chunk)
    rng = np.random.default_rng(seed)
    k_eff = p.k_eff(k)
    if codec == "f16":
        log_scale = max(min(log_scale, 3), -3)
    indices = make_indices(rng, p.n_chunks, p.E, k_eff, P, mode)
    values = [make_values(rng, (p.n_chunks, k_eff), codec, 10.0**log_scale, special_frac)
              for _ in range(P)]
    got, want = run_both(backend_name, shape, chunk, indices, values, reduce=reduce, codec=codec,
                         sign=sign)
    assert_same_bits(got, want)


@pytest.mark.parametrize("P", range(1, 10))
@pytest.mark.parametrize("reduce", ["mean", "sum_over_peers"])
@pytest.mark.parametrize("codec", ["f32", "sign"])
@pytest.mark.parametrize("mode", ["random", "disjoint", "identical"])
def test_decode_peers_grid(backend, P, reduce, codec, mode):
    shape, chunk = (58, 64), 32  # cm = 29, cn = 32: 4 chunks of E = 928
    p = sn.plan(shape, chunk)
    rng = np.random.default_rng(_seed("grid", P, reduce, codec, mode))
    k = p.k_eff(40)
    assert (p.n_chunks, p.E, k) == (4, 928, 40)
    indices = make_indices(rng, p.n_chunks, p.E, k, P, mode)
    values = [make_values(rng, (p.n_chunks, k), codec, 1.0, 0.05) for _ in range(P)]
    got, want = run_both(backend, shape, chunk, indices, values, reduce=reduce, codec=codec)
    assert_same_bits(got, want)
    assert torch.any(got != 0)


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("policy", ["divisor", "pad"])
def test_decode_odd_shapes(backend, shape, chunk, policy):
    p = sn.plan(shape, chunk, policy)
    rng = np.random.default_rng(_seed("odd", shape, chunk, policy))
    P, k_eff = 3, p.k_eff(5)
    indices = make_indices(rng, p.n_chunks, p.E, k_eff, P, "random")
    values = [make_values(rng, (p.n_chunks, k_eff), "f32", 2.0, 0.0) for _ in range(P)]
    got, want = run_both(backend, shape, chunk, indices, values, policy=policy)
    assert tuple(got.shape) == tuple(shape)
    assert_same_bits(got, want)


@pytest.mark.parametrize("codec", ["bf16", "f16"])
def test_half_value_tensors_decode_as_their_float32_upcast(backend, codec):
    shape, chunk = (6, 130), 16
    p = sn.plan(shape, chunk)
    rng = np.random.default_rng(3)
    indices = make_indices(rng, p.n_chunks, p.E, 7, 4, "random")
    dtype = torch.bfloat16 if codec == "bf16" else torch.float16
    halves = [torch.from_numpy(make_values(rng, (p.n_chunks, 7), codec, 1.0, 0.1)).to(dtype)
              for _ in range(4)]
    t_idx = [torch.from_numpy(i.astype(np.int32)) for i in indices]
    a = dk.decompress(t_idx, halves, shape, chunk, value_codec=codec, backend=backend)
    b = dk.decompress(t_idx, [h.float() for h in halves], shape, chunk, value_codec="f32",
                      backend=backend)
    c = dk.decompress(t_idx, [h.float() for h in halves], shape, chunk, value_codec=codec,
                      backend=backend)
    assert_same_bits(a, b)
    assert_same_bits(c, b)
    assert_same_bits(a, sn.decode(indices, [h.float().numpy() for h in halves], shape, chunk))


# ---------------------------------------------------------------------------- crafted cases


def _one_hot_payload(shape, chunk, entries):
    """Per-peer payloads from ``entries = [[(chunk_row, index, value), ...] per peer]`` with
    k_eff = 1 and every other chunk's single index at 0 with value +0."""
    p = sn.plan(shape, chunk)
    idx_list, val_list = [], []
    for peer in entries:
        idx = np.zeros((p.n_chunks, 1), dtype=np.int64)
        val = np.zeros((p.n_chunks, 1), dtype=np.float32)
        for r, j, v in peer:
            idx[r, 0], val[r, 0] = j, v
        idx_list.append(idx)
        val_list.append(val)
    return idx_list, val_list


def test_peer_order_is_list_order(backend):
    """S adds peers in list order with one rounding per add: (1 + 2^-24) - 1 = 0 (the tie
    rounds to even), while (1 - 1) + 2^-24 = 2^-24. So reordering peers changes the bits, and
    each order must match the spec's fold exactly."""
    shape, chunk = (4, 4), 4
    a = _one_hot_payload(shape, chunk, [[(0, 5, 1.0)], [(0, 5, 2.0**-24)], [(0, 5, -1.0)]])
    b = _one_hot_payload(shape, chunk, [[(0, 5, 1.0)], [(0, 5, -1.0)], [(0, 5, 2.0**-24)]])
    for reduce in ("mean", "sum_over_peers"):
        ga, wa = run_both(backend, shape, chunk, *a, reduce=reduce)
        gb, wb = run_both(backend, shape, chunk, *b, reduce=reduce)
        assert_same_bits(ga, wa)
        assert_same_bits(gb, wb)
        assert not torch.any(ga), "fl(fl(1 + 2^-24) - 1) is 0"
        assert torch.any(gb), "fl(fl(1 - 1) + 2^-24) is 2^-24"


def test_mean_counts_peers_that_sent_zero(backend):
    """n[j] counts every peer that selected j, even one whose value is -0 or flushed:
    mean(v, -0) = v/2 and mean(v, 2^-60) = v/2."""
    shape, chunk = (8, 8), 8
    v = 3.0
    half = _one_hot_payload(shape, chunk, [[(0, 9, v / 2)]])
    want, _ = run_both(backend, shape, chunk, *half)
    for other in (-0.0, 0.0, 2.0**-60, -float(BELOW_2M55), 1e-45):
        pay = _one_hot_payload(shape, chunk, [[(0, 9, v)], [(0, 9, other)]])
        got, spec = run_both(backend, shape, chunk, *pay)
        assert_same_bits(got, spec)
        assert_same_bits(got, want)


def test_negative_zero_is_canonicalised(backend):
    """-0 values decode exactly as +0; outputs never contain -0."""
    shape, chunk = (3, 5, 7), 8
    p = sn.plan(shape, chunk)
    rng = np.random.default_rng(1)
    indices = make_indices(rng, p.n_chunks, p.E, 4, 3, "random")
    neg = [np.full((p.n_chunks, 4), -0.0, dtype=np.float32) for _ in range(3)]
    pos = [np.zeros((p.n_chunks, 4), dtype=np.float32) for _ in range(3)]
    for reduce in ("mean", "sum_over_peers"):
        for sign in (False, True):
            g_neg, w = run_both(backend, shape, chunk, indices, neg, reduce=reduce, sign=sign)
            g_pos, _ = run_both(backend, shape, chunk, indices, pos, reduce=reduce, sign=sign)
            assert_same_bits(g_neg, w)
            assert_same_bits(g_neg, np.zeros(shape, dtype=np.float32))
            assert_same_bits(g_pos, g_neg)


@pytest.mark.parametrize("reduce", ["mean", "sum_over_peers"])
def test_flush_boundaries(backend, reduce):
    """|v| < 2^-55 -> +0 at parse (2^-55 itself survives), and |A| < 2^-55 -> +0 after the
    division (sum_over_peers with P = 3: 2^-55 / 3 is flushed, 2^-54 * 3 / 3 is not)."""
    shape, chunk = (8, 8), 8
    # single peer: 2^-55 survives, nextbelow(2^-55) is flushed
    g_keep, w = run_both(backend, shape, chunk, *_one_hot_payload(shape, chunk, [[(0, 3, TWO_M55)]]),
                         reduce=reduce)
    assert_same_bits(g_keep, w)
    assert torch.any(g_keep != 0)
    assert float(g_keep.abs().max()) < 1e-15
    g_flush, w = run_both(backend, shape, chunk,
                          *_one_hot_payload(shape, chunk, [[(0, 3, -BELOW_2M55)]]), reduce=reduce)
    assert_same_bits(g_flush, w)
    assert_same_bits(g_flush, np.zeros(shape, np.float32))
    # three peers, one sends 2^-55 at j of chunk 0, the others send 1.0 into chunk 1:
    # mean keeps A[j] = 2^-55, sum_over_peers makes 2^-55 / 3 < 2^-55 -> +0
    shape2 = (8, 16)
    pay = _one_hot_payload(shape2, chunk, [[(0, 3, TWO_M55)], [(1, 4, 1.0)], [(1, 5, 1.0)]])
    g, w = run_both(backend, shape2, chunk, *pay, reduce=reduce)
    assert_same_bits(g, w)
    assert bool(torch.all(g[:, 8:] != 0))
    if reduce == "sum_over_peers":
        assert_same_bits(g[:, :8], np.zeros((8, 8), np.float32))
    else:
        assert bool(torch.any(g[:, :8] != 0))
    # cancellation below the threshold: 2^-55 * (1 + 2^-23) - 2^-55 = 2^-78 -> flushed
    tiny_a = np.float32(2.0**-55 * (1 + 2.0**-23))
    pay = _one_hot_payload(shape, chunk, [[(0, 3, tiny_a)], [(0, 3, -TWO_M55)]])
    g, w = run_both(backend, shape, chunk, *pay, reduce=reduce)
    assert_same_bits(g, w)
    assert_same_bits(g, np.zeros(shape, np.float32))


@pytest.mark.parametrize("P", [1, 2, 9])
def test_values_near_2_pow_64(backend, P):
    """The largest float32 below 2^64 is accepted; P of them at one index cannot overflow."""
    shape, chunk = (2, 16, 16), 16
    for v in (BIG_F32, -BIG_F32):
        pay = _one_hot_payload(shape, chunk, [[(1, 0, v), (0, 255, v)]] * P)
        for reduce in ("mean", "sum_over_peers"):
            g, w = run_both(backend, shape, chunk, *pay, reduce=reduce)
            assert_same_bits(g, w)
            assert torch.all(torch.isfinite(g))
            assert float(g.abs().max()) > 1e17


def test_sign_output(backend):
    shape, chunk = (29, 64), 64
    p = sn.plan(shape, chunk)
    rng = np.random.default_rng(11)
    indices = make_indices(rng, p.n_chunks, p.E, 32, 4, "random")
    values = [make_values(rng, (p.n_chunks, 32), "f32", 1.0, 0.0) for _ in range(4)]
    g, w = run_both(backend, shape, chunk, indices, values, sign=True)
    assert_same_bits(g, w)
    y, _ = run_both(backend, shape, chunk, indices, values, sign=False)
    assert_same_bits(g, torch.sign(y))
    assert set(torch.unique(g).tolist()) <= {-1.0, 0.0, 1.0}


def test_sign_codec_counts(backend):
    """sign codec: A[j] = (n_pos - n_neg) / n (mean) from exact counts: 3 peers +,+,- at j
    give 1/3; + and - give +0 exactly."""
    shape, chunk = (8,), 8
    pay = _one_hot_payload(shape, chunk, [[(0, 2, 5.0)], [(0, 2, 0.5)], [(0, 2, -7.0)]])
    g, w = run_both(backend, shape, chunk, *pay, codec="sign")
    assert_same_bits(g, w)
    third = _one_hot_payload(shape, chunk, [[(0, 2, np.float32(1.0) / np.float32(3.0))]])
    g3, _ = run_both(backend, shape, chunk, *third)
    assert_same_bits(g, g3)
    pay = _one_hot_payload(shape, chunk, [[(0, 2, 5.0)], [(0, 2, -0.5)]])
    g, w = run_both(backend, shape, chunk, *pay, codec="sign")
    assert_same_bits(g, np.zeros(shape, np.float32))
    # -0 has its sign bit set: it is a negative vote under the sign codec
    pay = _one_hot_payload(shape, chunk, [[(0, 2, -0.0)]])
    g, w = run_both(backend, shape, chunk, *pay, codec="sign")
    assert_same_bits(g, w)
    neg1, _ = run_both(backend, shape, chunk, *_one_hot_payload(shape, chunk, [[(0, 2, -1.0)]]))
    assert_same_bits(g, neg1)


@pytest.mark.parametrize("shape, chunk, k", [((29, 64), 64, 32), ((97, 61), 16, 5),
                                             ((3, 5, 7), 8, 100), ((130,), 64, 7), ((), 64, 1)])
def test_single_peer_round_trip_returns_selected(backend, shape, chunk, k):
    """SPEC 6: encode -> decode on one peer returns exactly the selected coefficients, i.e.
    decompress([idx], [vals]) == canonical inverse of the dense selected coefficients."""
    x = randn(shape, _seed("rt1", shape, chunk, k))
    idx, vals = dk.compress(x, k, chunk, backend=backend)
    p = sn.plan(shape, chunk)
    dense = np.zeros((p.n_chunks, p.E), dtype=np.float32)
    np.put_along_axis(dense, idx.numpy().astype(np.int64), vals.numpy(), axis=1)
    y = dk.decompress([idx], [vals], shape, chunk, backend=backend)
    assert_same_bits(y, sn.inverse(dense, shape, chunk))
    assert_same_bits(y, dk.idct(torch.from_numpy(dense), shape, chunk, backend=backend))


def test_inputs_not_modified_and_views_accepted(backend):
    shape, chunk = (24, 40), 8
    p = sn.plan(shape, chunk)
    rng = np.random.default_rng(5)
    indices = make_indices(rng, p.n_chunks, p.E, 6, 3, "random")
    values = [make_values(rng, (p.n_chunks, 6), "f32", 1.0, 0.2) for _ in range(3)]
    t_idx, t_val, s_val = to_torch(indices, values, "f32")
    keep = [t.clone() for t in t_idx + t_val]
    # non-contiguous views holding the same logical payloads
    v_idx = [t.t().contiguous().t() for t in t_idx]
    v_val = [t.t().contiguous().t() for t in t_val]
    assert not v_idx[0].is_contiguous()
    got = dk.decompress(v_idx, v_val, shape, chunk, backend=backend)
    assert_same_bits(got, sn.decode(indices, s_val, shape, chunk))
    for a, b in zip(t_idx + t_val, keep):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- sign packing


@given(n=st.integers(0, 100), seed=st.integers(0, 2**31 - 1))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_pack_signs_matches_spec(backend_name, n, seed):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(n).astype(np.float32)
    v[rng.random(n) < 0.2] = -0.0
    v[rng.random(n) < 0.1] = 0.0
    packed = dk.pack_signs(torch.from_numpy(v), backend=backend_name)
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == ((n + 7) // 8,)
    assert np.array_equal(packed.numpy(), sn.pack_signs(v))
    back = dk.unpack_signs(packed, n, backend=backend_name)
    assert back.dtype == torch.float32 and tuple(back.shape) == (n,)
    assert_same_bits(back, np.where(np.signbit(v), np.float32(-1), np.float32(1)))


def test_pack_signs_layout_lsb_first(backend):
    v = torch.tensor([-1.0, 1, 1, 1, 1, 1, 1, -1, 1, -2])  # bits 0 and 7, then bit 1 of byte 1
    assert dk.pack_signs(v, backend=backend).tolist() == [0b10000001, 0b00000010]
    assert dk.pack_signs(v.reshape(2, 5), backend=backend).tolist() == [0b10000001, 0b00000010]
    assert dk.unpack_signs(torch.tensor([0b10000001], dtype=torch.uint8), 3,
                           backend=backend).tolist() == [-1.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_pack_signs_half(backend, dtype):
    v = torch.tensor([-0.0, 0.0, -3.0, 2.0, -1e-3, 7.0, -7.0, 1.0, -1.0], dtype=dtype)
    assert np.array_equal(dk.pack_signs(v, backend=backend).numpy(),
                          sn.pack_signs(v.float().numpy()))


# ---------------------------------------------------------------------------- cross-backend


@needs_cpu
@given(
    shape=st.sampled_from(ODD_SHAPES),
    chunk=st.sampled_from([4, 8, 16, 64]),
    P=st.integers(1, 9),
    k=st.integers(1, 70),
    reduce=st.sampled_from(["mean", "sum_over_peers"]),
    codec=st.sampled_from(["f32", "bf16", "sign"]),
    sign=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_decode_cpu_equals_reference_bitwise(shape, chunk, P, k, reduce, codec, sign, seed):
    p = sn.plan(shape, chunk)
    rng = np.random.default_rng(seed)
    k_eff = p.k_eff(k)
    indices = make_indices(rng, p.n_chunks, p.E, k_eff, P, "random")
    values = [make_values(rng, (p.n_chunks, k_eff), codec, 1.0, 0.2) for _ in range(P)]
    t_idx, t_val, _ = to_torch(indices, values, codec)
    kw = dict(reduce=reduce, value_codec=codec, sign=sign)
    assert_same_bits(dk.decompress(t_idx, t_val, shape, chunk, backend="cpu", **kw),
                     dk.decompress(t_idx, t_val, shape, chunk, backend="reference", **kw))


@needs_cpu
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 64, 1000, 4099])
def test_pack_signs_cpu_equals_reference(n):
    v = randn((n,), n)
    v[::3] = -0.0
    a = dk.pack_signs(v, backend="cpu")
    b = dk.pack_signs(v, backend="reference")
    assert torch.equal(a, b)
    assert_same_bits(dk.unpack_signs(a, n, backend="cpu"), dk.unpack_signs(b, n, backend="reference"))


@needs_cpu
def test_decode_cpu_reference_threads_independent():
    """The cpu result must not depend on the thread count."""
    shape, chunk = (4, 64, 128), 64
    p = sn.plan(shape, chunk)
    rng = np.random.default_rng(8)
    indices = make_indices(rng, p.n_chunks, p.E, 32, 5, "random")
    values = [make_values(rng, (p.n_chunks, 32), "f32", 1.0, 0.0) for _ in range(5)]
    t_idx, t_val, s_val = to_torch(indices, values, "f32")
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(dk.decompress(t_idx, t_val, shape, chunk, backend="cpu"))
    finally:
        torch.set_num_threads(before)
    assert_same_bits(outs[0], outs[1])
    assert_same_bits(outs[0], outs[2])
    assert_same_bits(outs[0], sn.decode(indices, s_val, shape, chunk))


# ---------------------------------------------------------------------------- stress shapes


def test_many_peers_full_chunks(backend):
    """P = 40 peers each sending every coefficient (k = E): the per-chunk working set is
    P * E entries, and the fold order over 40 peers must still be the spec's."""
    shape, chunk = (16, 24), 8
    p = sn.plan(shape, chunk)
    rng = np.random.default_rng(40)
    P = 40
    indices = make_indices(rng, p.n_chunks, p.E, p.E, P, "random")
    values = [make_values(rng, (p.n_chunks, p.E), "f32", 1.0, 0.05) for _ in range(P)]
    for reduce in ("mean", "sum_over_peers"):
        got, want = run_both(backend, shape, chunk, indices, values, reduce=reduce)
        assert_same_bits(got, want)
    got, want = run_both(backend, shape, chunk, indices, values, codec="sign")
    assert_same_bits(got, want)


def test_largest_chunk_256(backend):
    """chunk = 256 (the maximum): 2-D chunks of E = 65536 and 1-D chunks of 256."""
    for shape, k in [((256, 256), 300), ((512,), 7), ((3, 256, 1), 2)]:
        p = sn.plan(shape, 256)
        rng = np.random.default_rng(256)
        k_eff = p.k_eff(k)
        indices = make_indices(rng, p.n_chunks, p.E, k_eff, 3, "random")
        values = [make_values(rng, (p.n_chunks, k_eff), "f32", 1.0, 0.0) for _ in range(3)]
        got, want = run_both(backend, shape, 256, indices, values)
        assert_same_bits(got, want)


# ---------------------------------------------------------------------------- decompress_many


def _many_payloads(seed, shapes, chunk, P, k, codec):
    rng = np.random.default_rng(seed)
    per_idx, per_val, per_spec = [], [], []
    for shape in shapes:
        p = sn.plan(shape, chunk)
        k_eff = p.k_eff(k)
        indices = make_indices(rng, p.n_chunks, p.E, k_eff, P, "random")
        values = [make_values(rng, (p.n_chunks, k_eff), codec, 1.0, 0.1) for _ in range(P)]
        t_idx, t_val, s_val = to_torch(indices, values, codec)
        per_idx.append(t_idx)
        per_val.append(t_val)
        per_spec.append((indices, s_val))
    return per_idx, per_val, per_spec


MANY_SHAPES = [(29, 64), (), (7,), (3, 5, 7), (64, 97), (1, 1), (130,), (2, 13, 26)]


@pytest.mark.skipif(not hasattr(dk, "decompress_many"), reason="no decompress_many")
@pytest.mark.parametrize("P", [1, 3, 9])
@pytest.mark.parametrize("codec, reduce, sign", [("f32", "mean", False),
                                                 ("f32", "sum_over_peers", True),
                                                 ("sign", "mean", False),
                                                 ("bf16", "mean", True)])
def test_decompress_many_equals_per_tensor(backend, P, codec, reduce, sign):
    chunk = 16
    per_idx, per_val, per_spec = _many_payloads(_seed("many", P, codec), MANY_SHAPES, chunk, P,
                                                6, codec)
    outs = dk.decompress_many(per_idx, per_val, MANY_SHAPES, chunk, reduce=reduce,
                              value_codec=codec, sign=sign, backend=backend)
    assert len(outs) == len(MANY_SHAPES)
    for t, shape in enumerate(MANY_SHAPES):
        one = dk.decompress(per_idx[t], per_val[t], shape, chunk, reduce=reduce,
                            value_codec=codec, sign=sign, backend=backend)
        assert_same_bits(outs[t], one)
        indices, s_val = per_spec[t]
        assert_same_bits(outs[t], sn.decode(indices, s_val, shape, chunk, reduce=reduce,
                                            codec=codec, sign=sign))


@pytest.mark.skipif(not hasattr(dk, "decompress_many"), reason="no decompress_many")
def test_decompress_many_errors(backend):
    chunk = 16
    per_idx, per_val, _ = _many_payloads(3, MANY_SHAPES[:3], chunk, 2, 4, "f32")
    with pytest.raises(ValueError, match="must be non-empty and of equal length"):
        dk.decompress_many(per_idx[:2], per_val, MANY_SHAPES[:3], chunk, backend=backend)
    with pytest.raises(ValueError, match="must be non-empty and of equal length"):
        dk.decompress_many([], [], [], chunk, backend=backend)
    with pytest.raises(ValueError, match="tensor 1 has 1 peers, tensor 0 has 2"):
        dk.decompress_many([per_idx[0], per_idx[1][:1], per_idx[2]],
                           [per_val[0], per_val[1][:1], per_val[2]], MANY_SHAPES[:3], chunk,
                           backend=backend)
    bad_v = [list(v) for v in per_val]
    bad_v[2][1] = bad_v[2][1].clone()
    bad_v[2][1].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=r"tensor 2: peer 1: value not finite"):
        dk.decompress_many(per_idx, bad_v, MANY_SHAPES[:3], chunk, backend=backend)
    bad_i = [list(i) for i in per_idx]
    bad_i[1][0] = bad_i[1][0].clone()
    bad_i[1][0].view(-1)[0] = 10_000
    with pytest.raises(ValueError, match=r"tensor 1: peer 0: index out of range"):
        dk.decompress_many(bad_i, per_val, MANY_SHAPES[:3], chunk, backend=backend)
    with pytest.raises(TypeError, match="tensor 0: peer 0: indices must be int32"):
        dk.decompress_many([[i.long() for i in per_idx[0]]] + per_idx[1:], per_val,
                           MANY_SHAPES[:3], chunk, backend=backend)


@needs_cpu
@pytest.mark.skipif(not hasattr(dk, "decompress_many"), reason="no decompress_many")
def test_decompress_many_cpu_equals_reference():
    per_idx, per_val, _ = _many_payloads(77, MANY_SHAPES, 8, 5, 9, "f32")
    a = dk.decompress_many(per_idx, per_val, MANY_SHAPES, 8, backend="cpu")
    b = dk.decompress_many(per_idx, per_val, MANY_SHAPES, 8, backend="reference")
    for x, y in zip(a, b):
        assert_same_bits(x, y)


# ---------------------------------------------------------------------------- spec self-check


def _scalar_decode_one_chunk(A, Cm, Cn):
    """SPEC 4.3 for one chunk, one scalar float32 operation at a time (no numpy vectors)."""
    f = np.float32
    cm, cn = Cm.shape[0], Cn.shape[0]
    T = [[f(0.0)] * cn for _ in range(cm)]
    for u in range(cm):
        for j in range(cn):
            acc = f(0.0)
            for v in range(cn):
                acc = f(acc + f(f(A[u, v]) * f(Cn[v, j])))
            T[u][j] = acc
    y = np.zeros((cm, cn), dtype=np.float32)
    for i in range(cm):
        for j in range(cn):
            acc = f(0.0)
            for u in range(cm):
                acc = f(acc + f(f(Cm[u, i]) * T[u][j]))
            y[i, j] = acc
    return y


@pytest.mark.parametrize("cm, cn", [(1, 5), (5, 3), (4, 4), (7, 1)])
def test_spec_numpy_inverse_matches_scalar_folds(cm, cn):
    """The test oracle's vectorised folds equal a scalar, one-op-at-a-time evaluation."""
    rng = np.random.default_rng(cm * 10 + cn)
    A = (rng.standard_normal((cm, cn)) * 10.0 ** rng.integers(-8, 8, (cm, cn))).astype(np.float32)
    shape = (cm, cn) if cm > 1 else (cn,)
    got = sn.inverse(A.reshape(1, -1), shape, 64).reshape(cm, cn)
    want = _scalar_decode_one_chunk(A, sn.canonical_basis(cm), sn.canonical_basis(cn))
    assert np.array_equal(sn.bits(got), sn.bits(want))


def test_spec_numpy_aggregate_by_hand():
    """The oracle's aggregate on a hand-computed case: mean, sum_over_peers, sign codec."""
    p = sn.plan((4,), 4)
    idx = [np.array([[0, 2]]), np.array([[2, 3]]), np.array([[1, 2]])]
    val = [np.array([[1.0, 2.0]], np.float32), np.array([[4.0, -0.0]], np.float32),
           np.array([[2.0**-60, 1.0]], np.float32)]
    A = sn.aggregate(idx, val, p, "mean")
    assert A.tolist() == [[1.0, 0.0, np.float32(7.0) / np.float32(3.0), 0.0]]
    A = sn.aggregate(idx, val, p, "sum_over_peers")
    assert A.tolist() == [[np.float32(1.0) / np.float32(3.0), 0.0, np.float32(7.0) / np.float32(3.0), 0.0]]
    packed = [sn.pack_signs(v) for v in val]
    A = sn.aggregate(idx, packed, p, "mean", "sign")
    assert A.tolist() == [[1.0, 1.0, 1.0, -1.0]]
    assert not np.any(np.signbit(sn.aggregate(idx, val, p, "mean")))
    with pytest.raises(sn.SpecReject):
        sn.aggregate([np.array([[0, 0]])], [np.array([[1.0, 1.0]], np.float32)], p)
    with pytest.raises(sn.SpecReject):
        sn.aggregate([np.array([[0, 1]])], [np.array([[np.inf, 1.0]], np.float32)], p)


@pytest.mark.parametrize("shape", [(3, 130), (200,), (129, 67), (2, 100, 9), (255, 2), (17, 256)])
@pytest.mark.parametrize("codec", ["f32", "sign"])
def test_decode_wide_chunks(backend, shape, codec):
    """Chunk widths between 65 and 256 (chunk target 256): vector-width remainders and
    scratch sizes that the default target never reaches."""
    chunk = 256
    p = sn.plan(shape, chunk)
    rng = np.random.default_rng(seed_of("wide", shape, codec))
    k_eff = p.k_eff(50)
    indices = make_indices(rng, p.n_chunks, p.E, k_eff, 3, "random")
    values = [make_values(rng, (p.n_chunks, k_eff), codec, 1.0, 0.1) for _ in range(3)]
    got, want = run_both(backend, shape, chunk, indices, values, codec=codec)
    assert_same_bits(got, want)


def _rows_indices(rng, n_chunks, cm, cn, k_eff, P, rows):
    """``P`` peers' sorted index sets whose picks all lie in the first ``rows`` coefficient rows
    of a random row subset per chunk (so exactly ``rows`` rows of ``T`` can be nonzero)."""
    out = []
    for _ in range(P):
        chunk_sets = []
        for _ in range(n_chunks):
            keep = np.sort(rng.choice(cm, size=rows, replace=False))
            pool = (keep[:, None] * cn + np.arange(cn)[None, :]).reshape(-1)
            chunk_sets.append(np.sort(rng.choice(pool, size=min(k_eff, pool.size), replace=False)))
        out.append(np.stack(chunk_sets))
    return out


# The second stage has two schedules (exact_fold.h): compacted nonzero rows, and mirrored row
# pairs over all rows once ~4/5 of them are nonzero. Both must give the spec's bits on both
# sides of the switch, for even and odd cm (the odd middle row folds on its own).
@pytest.mark.parametrize("cm, cn", [(4, 16), (5, 8), (7, 64), (10, 8), (16, 16), (29, 32),
                                    (48, 64), (61, 8), (64, 64)])
@pytest.mark.parametrize("fraction", [0.7, 0.8, 1.0])
def test_dense_and_sparse_second_stage_bitwise(backend, cm, cn, fraction):
    # two chunks per tensor with exactly these sides (SPEC 1's divisor rule)
    shape, chunk = ((2 * cm, cn), cm) if cm >= cn else ((cm, 2 * cn), cn)
    p = sn.plan(shape, chunk)
    assert (p.cm, p.cn) == (cm, cn)
    rows = max(1, min(cm, int(round(fraction * cm))))
    rng = np.random.default_rng(seed_of("dense", cm, cn, fraction))
    k_eff = min(p.E, rows * cn, max(rows, 3 * cm))
    for P, codec, sign in [(3, "f32", False), (8, "sign", True), (1, "f32", True)]:
        indices = _rows_indices(rng, p.n_chunks, cm, cn, k_eff, P, rows)
        values = [make_values(rng, (p.n_chunks, k_eff), codec, 1.0, 0.05) for _ in range(P)]
        got, want = run_both(backend, shape, chunk, indices, values, codec=codec, sign=sign)
        assert_same_bits(got, want)
