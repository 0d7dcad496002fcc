"""Decoding into caller buffers (``out=``, the ``decompress_many_into_`` op): the same bits as
a fresh decode on every backend, every argument error, and nothing written when any input is
rejected."""

from __future__ import annotations

import pytest
import torch

import distro_kernels as dk
from conftest import BACKENDS, ODD_SHAPES, assert_same_bits, randn, seed_of

K = 5
CHUNK = 16


def _payloads(shape, peers, seed, codec="f32", chunk=CHUNK, k=K):
    """``peers`` payloads of one tensor (compressed by the reference, so every backend decodes
    the same inputs)."""
    indices, values = [], []
    for p in range(peers):
        i, v = dk.compress(randn(shape, seed_of(seed, p)), k, chunk, backend="reference")
        indices.append(i)
        values.append(dk.pack_signs(v) if codec == "sign" else v)
    return indices, values


@pytest.mark.parametrize("shape", [s for s in ODD_SHAPES if len(s) >= 1])
@pytest.mark.parametrize("codec, sign", [("f32", False), ("sign", True), ("bf16", True)])
def test_same_bits_as_a_fresh_decode(backend, shape, codec, sign):
    indices, values = _payloads(shape, 3, seed_of("into", shape, codec), codec)
    fresh = dk.decompress(indices, values, shape, CHUNK, value_codec=codec, sign=sign,
                          backend="reference")
    out = torch.full(shape, float("nan"))  # every element must be written
    got = dk.decompress(indices, values, shape, CHUNK, value_codec=codec, sign=sign, out=out,
                        backend=backend)
    assert got is out
    assert_same_bits(out, fresh)


def test_many_tensors_into_their_buffers(backend):
    shapes = [(29, 64), (97,), (3, 5, 7), (1,)]
    per_tensor = [_payloads(s, 2, seed_of("many", s)) for s in shapes]
    indices = [i for i, _ in per_tensor]
    values = [v for _, v in per_tensor]
    fresh = dk.decompress_many(indices, values, shapes, CHUNK, sign=True, backend="reference")
    outs = [torch.full(s, 9.0) for s in shapes]
    got = dk.decompress_many(indices, values, shapes, CHUNK, sign=True, out=outs, backend=backend)
    assert all(g is o for g, o in zip(got, outs))
    for o, f in zip(outs, fresh):
        assert_same_bits(o, f)


def test_views_of_one_flat_buffer(backend):
    """Disjoint views of one buffer (a DDP gradient bucket) are separate outputs."""
    shapes = [(29, 64), (97,)]
    per_tensor = [_payloads(s, 2, seed_of("flat", s)) for s in shapes]
    flat = torch.zeros(29 * 64 + 97)
    outs = [flat[: 29 * 64].view(29, 64), flat[29 * 64 :]]
    dk.decompress_many([i for i, _ in per_tensor], [v for _, v in per_tensor], shapes, CHUNK,
                       out=outs, backend=backend)
    fresh = dk.decompress_many([i for i, _ in per_tensor], [v for _, v in per_tensor], shapes,
                               CHUNK, backend="reference")
    assert_same_bits(flat, torch.cat([f.reshape(-1) for f in fresh]))


def test_no_peers_zeroes_the_buffer(backend):
    out = torch.full((29, 64), 4.0)
    dk.decompress_many([[]], [[]], [(29, 64)], CHUNK, out=[out], backend=backend)
    assert torch.equal(out, torch.zeros(29, 64))


@pytest.mark.parametrize("rule", ["index_order", "index_range", "value"])
def test_rejected_input_writes_nothing(backend, rule):
    """A bad chunk in the last tensor's last peer: every buffer keeps its old contents."""
    shapes = [(64, 64), (48, 60)]
    per_tensor = [_payloads(s, 3, seed_of("bad", s)) for s in shapes]
    indices = [[i.clone() for i in peers] for peers, _ in per_tensor]
    values = [[v.clone() for v in peers] for _, peers in per_tensor]
    last_i, last_v = indices[1][2], values[1][2]
    if rule == "index_order":
        last_i[-1, 1] = last_i[-1, 0]
    elif rule == "index_range":
        last_i[-1, -1] = 10**6
    else:
        last_v[-1, 0] = float("inf")
    outs = [randn(s, seed_of("old", s)) for s in shapes]
    before = [o.clone() for o in outs]
    with pytest.raises(ValueError, match="peer 2"):
        dk.decompress_many(indices, values, shapes, CHUNK, out=outs, backend=backend)
    for o, b in zip(outs, before):
        assert_same_bits(o, b)


def _args(shape=(29, 64)):
    indices, values = _payloads(shape, 2, seed_of("args", shape))
    return indices, values, shape


@pytest.mark.parametrize("make_out, error, match", [
    (lambda: torch.empty(29, 63), ValueError, "shape"),
    (lambda: torch.empty(29, 64, dtype=torch.float64), TypeError, "float32"),
    (lambda: torch.empty(29, 64, dtype=torch.bfloat16), TypeError, "float32"),
    (lambda: torch.empty(64, 29).t(), ValueError, "contiguous"),
    (lambda: torch.empty(29, 128)[:, ::2], ValueError, "contiguous"),
    (lambda: torch.empty(29, 64, device="meta"), ValueError, "device"),
])
def test_bad_buffer(backend, make_out, error, match):
    indices, values, shape = _args()
    with pytest.raises(error, match=match):
        dk.decompress(indices, values, shape, CHUNK, out=make_out(), backend=backend)


def test_buffer_count_must_match(backend):
    indices, values, shape = _args()
    with pytest.raises(ValueError, match="outs has 2 tensors for 1"):
        dk.decompress_many([indices], [values], [shape], CHUNK,
                           out=[torch.empty(shape), torch.empty(shape)], backend=backend)


def test_buffer_not_a_tensor(backend):
    indices, values, shape = _args()
    with pytest.raises(TypeError):
        dk.decompress_many([indices], [values], [shape], CHUNK, out=[None], backend=backend)


def test_buffers_must_not_overlap_each_other(backend):
    shapes = [(29, 64), (29, 64)]
    per_tensor = [_payloads(s, 1, seed_of("ov", n)) for n, s in enumerate(shapes)]
    one = torch.empty(29, 64)
    with pytest.raises(ValueError, match="share memory"):
        dk.decompress_many([i for i, _ in per_tensor], [v for _, v in per_tensor], shapes, CHUNK,
                           out=[one, one.view(29, 64)], backend=backend)


def test_buffer_must_not_overlap_an_input(backend):
    """A buffer that is a peer's values would be read while it is written."""
    indices, values, shape = _args((4, 16))
    flat = torch.zeros(64)
    values = [flat[: values[0].numel()].view_as(values[0]).copy_(values[0]), values[1]]
    with pytest.raises(ValueError, match="share memory"):
        dk.decompress(indices, values, (4, 16), CHUNK, out=flat.view(4, 16), backend=backend)


def test_pad_policy_is_refused():
    indices, values, shape = _args()
    with pytest.raises(ValueError, match="divisor"):
        dk.decompress(indices, values, shape, CHUNK, policy="pad", out=torch.empty(shape))


def test_clip_applies_before_writing(backend):
    indices, values, shape = _args()
    values = [values[0] * 1000.0, values[1]]
    fresh = dk.decompress(indices, values, shape, CHUNK, clip_tau=2.0, backend="reference")
    out = torch.empty(shape)
    dk.decompress(indices, values, shape, CHUNK, clip_tau=2.0, out=out, backend=backend)
    assert_same_bits(out, fresh)


def test_backends_agree_on_a_large_tensor():
    """4096 chunks through the native kernel's parallel pass, into a reused buffer."""
    if "native" not in BACKENDS:
        pytest.skip("native CPU kernels not built")  # conftest refuses this under CI
    shape = (256, 1024)
    indices, values = _payloads(shape, 4, seed_of("large"))
    out = torch.empty(shape)
    for _ in range(2):
        dk.decompress(indices, values, shape, CHUNK, sign=True, out=out, backend="native")
        assert_same_bits(out, dk.decompress(indices, values, shape, CHUNK, sign=True,
                                            backend="reference"))


def test_outputs_over_32_mib_with_dense_and_sparse_chunks():
    """A 32 MiB output takes the native kernel's streaming stores for sparse chunks and
    ordinary ones for dense chunks: both give the reference's bits. The payload repeats every
    4 chunk rows, so one reference decode of a (256, 2048) tensor checks all 16 repeats."""
    if "native" not in BACKENDS:
        pytest.skip("native CPU kernels not built")  # conftest refuses this under CI
    chunk, k, peers = 64, 32, 8
    small, repeats = (256, 2048), 16
    n_small = (small[0] // chunk) * (small[1] // chunk)  # 128 chunks in a 4 x 32 grid
    gen = torch.Generator().manual_seed(seed_of("stores over 32 MiB"))
    # even chunks: 8 peers pick independently (most of the 64 rows: the dense schedule);
    # odd chunks: every peer picks the same 32 indices (at most 32 rows: the sparse one)
    shared = torch.stack([torch.randperm(chunk * chunk, generator=gen)[:k] for _ in range(n_small)])
    indices, values = [], []
    for _ in range(peers):
        own = torch.stack([torch.randperm(chunk * chunk, generator=gen)[:k] for _ in range(n_small)])
        pick = torch.where((torch.arange(n_small) % 2 == 1)[:, None], shared, own)
        indices.append(pick.sort(dim=1).values.to(torch.int32))
        values.append(torch.randn(n_small, k, generator=gen))
    want = dk.decompress(indices, values, small, chunk, sign=False, backend="reference")
    big = (small[0] * repeats, small[1])  # 32 MiB of float32
    out = torch.empty(big)
    dk.decompress([i.repeat(repeats, 1) for i in indices], [v.repeat(repeats, 1) for v in values],
                  big, chunk, sign=False, out=out, backend="native")
    for r in range(repeats):
        assert_same_bits(out[r * small[0] : (r + 1) * small[0]], want)
    fresh = dk.decompress([i.repeat(repeats, 1) for i in indices],
                          [v.repeat(repeats, 1) for v in values], big, chunk, sign=True,
                          backend="native")
    assert_same_bits(fresh[: small[0]], torch.sign(want))
    assert_same_bits(fresh[-small[0] :], torch.sign(want))
