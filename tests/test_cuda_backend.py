"""The cuda backend, op by op, against the reference, the cpu backend and SPEC.

Every test runs twice:
- ``emulated``: the kernels of ``csrc/cuda`` compiled for the host (``host_sim.h``: each
  block's 256 threads are real threads with a real barrier) on CPU tensors, through the very
  same tensor tables and packed launch arguments as the GPU path. Runs everywhere (needs g++).
- ``gpu``: the installed fatbin / code object on a CUDA or ROCm device, through the driver
  (skipped without a GPU; ``benchmarks/device_check.sh`` runs it on a GPU machine).

Decode (``decompress``, ``decompress_many``, ``idct``) must equal the reference's and the cpu
backend's bits; encode must meet SPEC section 6 against a float64 model.
"""

from __future__ import annotations

import math

import os
import shutil

import numpy as np
import pytest
import torch

import distro_kernels.cuda as dk_cuda
from distro_kernels import reference
from distro_kernels.chunking import chunk_plan
from distro_kernels.cuda import backend as cb
from distro_kernels.cuda import runtime, sim
from backend_oracles import (  # noqa: E402
    _check_selection, _dct64, _idct64, _oracles, _payload, _randn, _rel, assert_same_bits,
)

CI = os.environ.get("CI") == "true"
HAS_GPU = torch.cuda.is_available()


@pytest.fixture(scope="module", params=["emulated", "gpu"])
def device(request):
    if request.param == "gpu":
        if not HAS_GPU:
            pytest.skip("no GPU visible to torch: the gpu half runs on a GPU machine "
                        "(benchmarks/device_check.sh)")
        assert dk_cuda.CUDA_ERROR is None, f"GPU present but the cuda backend is not: {dk_cuda.CUDA_ERROR}"
        return torch.device("cuda")
    if shutil.which(os.environ.get("CXX") or "g++") is None:
        if CI:
            pytest.fail("CI=true but no g++ for the host emulation of the CUDA kernels")
        pytest.skip("no host C++ compiler for the emulation")
    previous = runtime.sim()
    runtime.set_sim(sim.SimDriver(sim.build()))
    yield torch.device("cpu")
    runtime.set_sim(previous)


# (shape, chunk, policy): E = 4096 (one chunk per tile, radix select), E in 65..4095 with odd
# sides (29 x 48, 64 x 3, 29 x 12), small chunks sharing a tile (E <= 64: 1-D, prime dims,
# one-row chunks), batches, 0-d, size 1, the pad policy.
SHAPES = [
    ((128, 64), 64, "divisor"),
    ((29, 48), 64, "divisor"),
    ((2, 58, 12), 32, "divisor"),
    ((64, 3), 64, "divisor"),
    ((96,), 32, "divisor"),
    ((67, 5), 64, "divisor"),
    ((61,), 64, "divisor"),
    ((4099,), 64, "divisor"),
    ((3, 7, 11), 64, "divisor"),
    ((), 64, "divisor"),
    ((1, 1), 64, "divisor"),
    ((30, 20), 16, "pad"),
]
GPU_SHAPES = [
    ((256, 512), 64, "divisor"),
    ((2, 192, 128), 64, "divisor"),
    ((131, 320), 64, "divisor"),
    ((100, 96), 64, "divisor"),
    ((1000003,), 64, "divisor"),
]
IDS = [f"{s}-c{c}-{p}" for s, c, p in SHAPES]


def _gpu_extra(device):
    return GPU_SHAPES if device.type == "cuda" else []


@pytest.mark.parametrize("shape,chunk,policy", SHAPES, ids=IDS)
def test_dct_meets_fp32_bar(device, shape, chunk, policy):
    plan = chunk_plan(shape, chunk, policy)
    x = _randn(shape, 1)
    got = cb.dct(x.to(device), plan)
    assert got.shape == (plan.n_chunks, plan.elements_per_chunk) and got.device.type == device.type
    assert _rel(got.cpu().numpy(), _dct64(x, plan)) < 1e-5


def test_dct_large_shapes_on_gpu(device):
    for shape, chunk, policy in _gpu_extra(device):
        plan = chunk_plan(shape, chunk, policy)
        x = _randn(shape, 2)
        assert _rel(cb.dct(x.to(device), plan).cpu().numpy(), _dct64(x, plan)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dct_of_half_input_is_dct_of_its_float32_value(device, dtype):
    plan = chunk_plan((64, 96), 64)
    x = _randn((64, 96), 3, dtype)
    assert_same_bits(cb.dct(x.to(device), plan), cb.dct(x.float().to(device), plan))


@pytest.mark.parametrize("shape,chunk,policy", SHAPES, ids=IDS)
@pytest.mark.parametrize("k", [1, 7, 100000])
def test_compress_selects_spec_topk(device, shape, chunk, policy, k):
    plan = chunk_plan(shape, chunk, policy)
    x = _randn(shape, 4)
    indices, values = cb.compress(x.to(device), plan, k)
    assert indices.dtype == torch.int32 and values.dtype == torch.float32
    _check_selection(indices, values, _dct64(x, plan), plan.k_eff(k))
    # exactly SPEC 3's rule on the backend's own coefficients (brute force: reference.select_topk)
    ref_i, ref_v = reference.select_topk(cb.dct(x.to(device), plan).cpu(), plan.k_eff(k))
    assert torch.equal(indices.cpu(), ref_i)
    assert_same_bits(values, ref_v)


@pytest.mark.parametrize("shape", [(64, 64), (29, 48), (5, 7), (61,)])
def test_ties_go_to_the_smaller_index(device, shape):
    plan = chunk_plan(shape, 64)
    zeros = torch.zeros(shape, device=device)  # every |X| ties at 0: the first k indices win
    indices, values = cb.compress(zeros, plan, 5)
    assert indices.cpu().tolist() == [list(range(5))] * plan.n_chunks
    assert not values.cpu().any()
    # equal nonzero magnitudes: an impulse gives |X[u, v]| = |C_m[u, 0] C_n[v, 0]|, many ties
    impulse = torch.zeros(shape)
    impulse.view(-1)[0] = 1.0
    got = cb.compress(impulse.to(device), plan, 9)
    ref = reference.select_topk(cb.dct(impulse.to(device), plan).cpu(), plan.k_eff(9))
    assert torch.equal(got[0].cpu(), ref[0])


def _momentum32(delta, grad, beta, lr):
    """SPEC 3's ``beta * delta + lr * grad`` on the float32 state, as the kernel rounds it:
    float32 ``beta * delta``, then one fused multiply-add (in float64, then rounded once).
    Chunks of one element make a per-chunk check sensitive to this rounding when the two
    terms cancel, so the model rounds the same way; sections 2-3 then run in float64."""
    b32, lr32 = np.float32(beta), np.float32(lr)
    scaled = (b32 * delta.float().numpy()).astype(np.float64)  # float32 product
    fused = float(lr32) * grad.float().numpy().astype(np.float64) + scaled
    return torch.from_numpy(np.asarray(fused).astype(np.float32).astype(np.float64))


@pytest.mark.parametrize("shape,chunk", [(s, c) for s, c, p in SHAPES if p == "divisor"],
                         ids=[i for i, (s, c, p) in zip(IDS, SHAPES) if p == "divisor"])
@pytest.mark.parametrize("k,grad_dtype", [(3, torch.float32), (40, torch.bfloat16),
                                          (100000, torch.float16)])
def test_demo_step_matches_float64_model(device, shape, chunk, k, grad_dtype):
    """Two fused steps: momentum, selection, values and the error-feedback state."""
    plan = chunk_plan(shape, chunk)
    beta, lr = 0.9, 0.5
    delta = _randn(shape, 5)
    state = delta.clone().to(device)
    model = delta.double()
    for step in range(2):
        grad = _randn(shape, 10 + step, grad_dtype)
        indices, values = cb.demo_step_(state, grad.to(device), plan, beta, lr, k)
        model = _momentum32(model, grad, beta, lr)
        x64 = _dct64(model, plan)
        _check_selection(indices, values, x64, plan.k_eff(k))
        sent = np.zeros_like(x64)
        rows = np.arange(plan.n_chunks)[:, None]
        sent[rows, indices.cpu().numpy()] = x64[rows, indices.cpu().numpy()]
        scale = np.linalg.norm(model.numpy())
        model = model - torch.from_numpy(_idct64(sent, plan)).reshape(model.shape)
        assert np.linalg.norm(state.cpu().numpy() - model.numpy()) <= 1e-5 * scale
        model = state.detach().cpu().double()


def test_demo_step_many_is_per_tensor_steps_laid_flat(device):
    specs = [((128, 64), 64), ((96,), 32), ((67, 5), 64), ((1,), 64), ((2, 29, 12), 32)]
    specs += [(s, c) for s, c, _ in _gpu_extra(device)]
    k = 4
    deltas = [_randn(s, 20 + i) for i, (s, _) in enumerate(specs)]
    grads = [_randn(s, 30 + i) for i, (s, _) in enumerate(specs)]
    plans = [chunk_plan(s, c) for s, c in specs]
    many = [d.clone().to(device) for d in deltas]
    flat_i, flat_v = cb.demo_step_many_(many, [g.to(device) for g in grads], plans, 0.95, 0.1, k)
    singles_i, singles_v = [], []
    for d, g, p, after in zip(deltas, grads, plans, many):
        state = d.clone().to(device)
        i, v = cb.demo_step_(state, g.to(device), p, 0.95, 0.1, k)
        singles_i.append(i.reshape(-1))
        singles_v.append(v.reshape(-1))
        assert_same_bits(after, state)
    assert torch.equal(flat_i.cpu(), torch.cat(singles_i).cpu())
    assert_same_bits(flat_v, torch.cat(singles_v))


def test_demo_step_agrees_with_reference(device):
    plan = chunk_plan((64, 128), 64)
    delta, grad = _randn((64, 128), 6), _randn((64, 128), 7)
    ref_state = delta.clone()
    ref_i, ref_v = reference.demo_step_(ref_state, grad, plan, 0.999, 1.0, 32)
    state = delta.clone().to(device)
    got_i, got_v = cb.demo_step_(state, grad.to(device), plan, 0.999, 1.0, 32)
    assert torch.equal(got_i.cpu(), ref_i)
    torch.testing.assert_close(got_v.cpu(), ref_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.cpu(), ref_state, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- decode


DECODE_CASES = [  # (codec, reduce, sign, peers, k)
    ("f32", "mean", False, 3, 5),
    ("f32", "mean", True, 8, 32),
    ("bf16", "sum_over_peers", True, 2, 9),
    ("f16", "mean", False, 1, 4),
    ("sign", "mean", False, 4, 6),
    ("sign", "sum_over_peers", True, 3, 100000),
]


@pytest.mark.parametrize("shape,chunk,policy", SHAPES, ids=IDS)
@pytest.mark.parametrize("codec,reduce,sign,peers,k", DECODE_CASES,
                         ids=[f"{c}-{r}-sign{s}-P{p}-k{k}" for c, r, s, p, k in DECODE_CASES])
def test_decompress_bit_identical(device, shape, chunk, policy, codec, reduce, sign, peers, k):
    plan = chunk_plan(shape, chunk, policy)
    indices_list, values_list = _payload(plan, k, peers, codec, seed=hash((shape, codec, k)) % 1000)
    got = cb.decompress([i.to(device) for i in indices_list], [v.to(device) for v in values_list],
                        plan, reduce, "sign" if codec == "sign" else "f32", sign)
    for oracle in _oracles():
        want = oracle.decompress(indices_list, values_list, plan, reduce,
                                 "sign" if codec == "sign" else "f32", sign)
        assert_same_bits(got, want)


def test_decompress_large_shapes_on_gpu(device):
    for shape, chunk, policy in _gpu_extra(device):
        plan = chunk_plan(shape, chunk, policy)
        for codec, reduce, sign, peers, k in DECODE_CASES:
            il, vl = _payload(plan, k, peers, codec, seed=11)
            codec_name = "sign" if codec == "sign" else "f32"
            got = cb.decompress([i.to(device) for i in il], [v.to(device) for v in vl], plan,
                                reduce, codec_name, sign)
            assert_same_bits(got, _oracles()[-1].decompress(il, vl, plan, reduce, codec_name, sign))


def test_decompress_many_matches_per_tensor_decode(device):
    specs = [((128, 64), 64), ((61,), 64), ((2, 58, 12), 32), ((4099,), 64), ((1, 1), 64)]
    plans = [chunk_plan(s, c) for s, c in specs]
    il, vl = [], []
    for t, plan in enumerate(plans):
        i, v = _payload(plan, 6, 3, "f32", seed=40 + t)
        il.append(i)
        vl.append(v)
    got = cb.decompress_many([[i.to(device) for i in x] for x in il],
                             [[v.to(device) for v in x] for x in vl], plans, "mean", "f32", True)
    for oracle in _oracles():
        want = oracle.decompress_many(il, vl, plans, "mean", "f32", True)
        for g, w in zip(got, want):
            assert_same_bits(g, w)


@pytest.mark.parametrize("shape,chunk,policy", SHAPES, ids=IDS)
def test_idct_bit_identical(device, shape, chunk, policy):
    plan = chunk_plan(shape, chunk, policy)
    coeffs = _randn((plan.n_chunks, plan.elements_per_chunk), 8)
    coeffs.view(-1)[::5] = 0.0
    if plan.cm > 1:
        coeffs.view(plan.n_chunks, plan.cm, plan.cn)[:, 1] = 0.0  # an all-zero row
    got = cb.idct(coeffs.to(device), plan)
    for oracle in _oracles():
        assert_same_bits(got, oracle.idct(coeffs, plan))


def test_round_trip_one_peer_returns_the_selected_coefficients(device):
    plan = chunk_plan((128, 64), 64)
    x = _randn((128, 64), 9)
    indices, values = cb.compress(x.to(device), plan, 32)
    dense = torch.zeros(plan.n_chunks, plan.elements_per_chunk)
    dense.scatter_(1, indices.cpu().long(), values.cpu())
    got = cb.decompress([indices], [values], plan, "mean", "f32", False)
    assert_same_bits(got, reference.idct(dense, plan))


@pytest.mark.parametrize("rule", ["index_range", "negative_index", "index_order", "duplicate",
                                  "nan", "inf", "huge"])
def test_decompress_rejects_like_the_reference(device, rule):
    plan = chunk_plan((64, 96), 64)
    il, vl = _payload(plan, 5, 3, "f32", seed=12)
    bad_i, bad_v = il[1].clone(), vl[1].clone()
    if rule == "index_range":
        bad_i[1, -1] = plan.elements_per_chunk
    elif rule == "negative_index":
        bad_i[0, 0] = -1
    elif rule == "index_order":
        bad_i[1, [0, 1]] = bad_i[1, [1, 0]]
    elif rule == "duplicate":
        bad_i[0, 1] = bad_i[0, 0]
    else:
        bad_v[1, 2] = {"nan": float("nan"), "inf": float("-inf"), "huge": 2.0**64}[rule]
    il[1], vl[1] = bad_i, bad_v
    with pytest.raises(ValueError) as want:
        reference.decompress(il, vl, plan)
    with pytest.raises(ValueError) as got:
        cb.decompress([i.to(device) for i in il], [v.to(device) for v in vl], plan)
    assert str(got.value) == str(want.value) and "peer 1" in str(got.value)


def test_decompress_many_reports_the_lowest_bad_tensor(device):
    plans = [chunk_plan((64, 64), 64), chunk_plan((61,), 64), chunk_plan((7, 5), 64)]
    il, vl = [], []
    for t, plan in enumerate(plans):
        i, v = _payload(plan, 3, 2, "f32", seed=50 + t)
        il.append(i)
        vl.append(v)
    il[2][0][0, 0] = 99  # tensor 2, peer 0: out of range
    il[1][1][0, 1] = il[1][1][0, 0]  # tensor 1, peer 1: duplicate
    want = pytest.raises(ValueError)
    with want:
        reference.decompress_many(il, vl, plans)
    with pytest.raises(ValueError) as got:
        cb.decompress_many([[i.to(device) for i in x] for x in il], [[v.to(device) for v in x] for x in vl], plans)
    assert str(got.value) == str(want.excinfo.value) == (
        "tensor 1: peer 1: indices not strictly ascending within a chunk (unsorted or duplicate)")


def test_unsupported_chunk_falls_back_to_reference(device):
    plan = chunk_plan((256, 128), 128)
    x = _randn((256, 128), 13)
    assert_same_bits(cb.dct(x.to(device), plan).cpu(), reference.dct(x, plan))
    i, v = cb.compress(x.to(device), plan, 8)
    assert_same_bits(cb.decompress([i], [v], plan), reference.decompress([i.cpu()], [v.cpu()], plan))


# ----------------------------------------------------------------------------- signs


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000, 4099])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pack_unpack_signs_match_reference(device, n, dtype):
    values = _randn((n,), 14, dtype)
    if n > 3:
        values[1] = -0.0
        values[2] = 0.0
        values[3] = float("nan") if dtype == torch.float32 else values[3]
    packed = cb.pack_signs(values.to(device))
    assert torch.equal(packed.cpu(), reference.pack_signs(values))
    assert torch.equal(cb.unpack_signs(packed, n).cpu(), reference.unpack_signs(packed.cpu(), n))


# ----------------------------------------------------------------------------- dispatch


def test_public_ops_dispatch_to_cuda(device, monkeypatch):
    """Through the public ``dk.compress``/``dk.decompress`` with these kernels registered as
    ``native`` on the test's device, temporarily (on CPU tensors, in place of the C++ kernels
    for the duration of the test)."""
    import distro_kernels as dk
    from distro_kernels import dispatch

    monkeypatch.setitem(dispatch._modules, "native", {**dispatch._modules.get("native", {})})
    monkeypatch.setattr(dispatch, "unavailable", dict(dispatch.unavailable))
    dispatch.register("native", cb, (device.type,))
    x = _randn((64, 96), 15).to(device)
    plan = chunk_plan((64, 96), 64)
    i, v = dk.compress(x, 8, backend="native")
    ri, rv = reference.compress(x.cpu(), plan, 8)
    assert torch.equal(i.cpu(), ri)
    got = dk.decompress([i], [v], (64, 96), backend="native", sign=True)
    assert_same_bits(got, reference.decompress([i.cpu()], [v.cpu()], plan, sign=True))


# ----------------------------------------------------------------------------- random geometry

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _emulated_size_ok(dims) -> bool:
    # without a GPU the kernels run in the host emulation, each block's 256 threads as OS
    # threads: with draws up to 150^3 elements, one CI run here spent ~8 minutes in this test
    return math.prod(dims) <= 60_000


@settings(max_examples=12, deadline=None)
@given(dims=st.lists(st.integers(1, 150), min_size=1, max_size=3).filter(_emulated_size_ok),
       chunk=st.integers(1, 64),
       k=st.integers(1, 70), peers=st.integers(1, 4), sign_codec=st.booleans(),
       seed=st.integers(0, 2**16))
def test_random_geometry_encode_and_decode(device, dims, chunk, k, peers, sign_codec, seed):
    """Random shapes and chunk targets (so random divisor chunk sides and tile packings):
    compress is SPEC 3's rule on the backend's own coefficients, decode has the cpu bits."""
    plan = chunk_plan(dims, chunk)
    x = _randn(dims, seed)
    indices, values = cb.compress(x.to(device), plan, k)
    ref_i, _ = reference.select_topk(cb.dct(x.to(device), plan).cpu(), plan.k_eff(k))
    assert torch.equal(indices.cpu(), ref_i)
    codec = "sign" if sign_codec else "f32"
    il, vl = _payload(plan, k, peers, codec, seed)
    got = cb.decompress([i.to(device) for i in il], [v.to(device) for v in vl], plan, "mean", codec, True)
    assert_same_bits(got, _oracles()[-1].decompress(il, vl, plan, "mean", codec, True))
