"""Every error path: exception type AND a message fragment, on every backend; and that a
failed call changes nothing."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import distro_kernels as dk
from distro_kernels import dispatch
from conftest import BACKENDS, HAS_CPU

ops = torch.ops.distro_kernels

I32 = torch.int32


def _payload(n_chunks=2, k=3, E=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(E, generator=g)[:k].sort().values for _ in range(n_chunks)])
    return idx.to(I32), torch.randn(n_chunks, k, generator=g)


SHAPE, CHUNK = (8, 16), 8  # 2 chunks of 8 x 8 (E = 64)


def _raises(exc, fragment, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert re.search(fragment, str(info.value)), f"{fragment!r} not in {str(info.value)!r}"
    return info.value


# ---------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.int64, torch.uint8,
                                   torch.bool, torch.complex64], ids=str)
def test_wrong_input_dtype(backend, dtype):
    x = torch.ones(8, 8).to(dtype)
    frag = "must be float32, bfloat16 or float16"
    _raises(TypeError, "x " + frag, dk.dct, x, 8, backend=backend)
    _raises(TypeError, "x " + frag, dk.compress, x, 3, 8, backend=backend)
    _raises(TypeError, "coeffs " + frag, dk.idct, x.reshape(1, 64), (8, 8), 8, backend=backend)
    _raises(TypeError, "values " + frag, dk.pack_signs, x, backend=backend)
    _raises(TypeError, "grad " + frag, dk.demo_step_, torch.zeros(8, 8), x, backend=backend)


def test_not_a_tensor(backend):
    _raises(TypeError, "x must be a torch.Tensor", dk.dct, [1.0, 2.0], backend=backend)
    _raises(TypeError, "must be a torch.Tensor", dk.compress, np.ones(4, np.float32),
            backend=backend)


def test_decompress_not_tensors(backend):
    """A numpy array or a list where a peer's tensor belongs is a TypeError naming the peer."""
    idx, vals = _payload()
    _raises(TypeError, "peer 0: indices and values must be torch.Tensors", dk.decompress,
            [idx.numpy()], [vals], SHAPE, CHUNK, backend=backend)
    _raises(TypeError, "peer 0: indices and values must be torch.Tensors", dk.decompress,
            [idx], [vals.tolist()], SHAPE, CHUNK, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16, torch.int32],
                         ids=str)
def test_delta_must_be_float32(backend, dtype):
    delta = torch.zeros(8, 8, dtype=dtype)
    _raises(TypeError, r"delta \(the momentum state\) must be a float32 tensor", dk.demo_step_,
            delta, torch.ones(8, 8), backend=backend)
    _raises(TypeError, "delta .* must be a float32", dk.demo_step_many_, [delta],
            [torch.ones(8, 8)], backend=backend)
    assert not torch.any(delta)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int16, torch.uint8, torch.float32], ids=str)
def test_indices_must_be_int32(backend, dtype):
    idx, vals = _payload()
    _raises(TypeError, f"peer 0: indices must be int32, got {dtype}", dk.decompress,
            [idx.to(dtype)], [vals], SHAPE, CHUNK, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.uint8], ids=str)
def test_values_must_be_float(backend, dtype):
    idx, vals = _payload()
    _raises(TypeError, "peer 1: values must be floating point", dk.decompress,
            [idx, idx], [vals, vals.to(dtype)], SHAPE, CHUNK, backend=backend)


def test_unpack_signs_packed_must_be_uint8(backend):
    _raises(TypeError, "packed must be uint8, got torch.int8", dk.unpack_signs,
            torch.zeros(2, dtype=torch.int8), 3, backend=backend)
    _raises(TypeError, "packed must be uint8", dk.unpack_signs, torch.zeros(2), 3,
            backend=backend)


# ---------------------------------------------------------------------------- k and chunk


@pytest.mark.parametrize("k", [0, -1, -32])
def test_nonpositive_k(backend, k):
    x = torch.randn(8, 8)
    _raises(ValueError, f"k must be >= 1, got {k}", dk.compress, x, k, 8, backend=backend)
    delta = torch.zeros(8, 8)
    _raises(ValueError, f"k must be >= 1, got {k}", dk.demo_step_, delta, x, 0.9, 1.0, k, 8,
            backend=backend)
    _raises(ValueError, f"k must be >= 1, got {k}", dk.demo_step_many_, [delta], [x], 0.9,
            1.0, k, 8, backend=backend)
    assert not torch.any(delta), "a rejected step must not touch the state"


@pytest.mark.parametrize("chunk", [0, -1, 257, 10_000])
def test_chunk_out_of_range(backend, chunk):
    x = torch.randn(8, 8)
    frag = re.escape(f"chunk must be in [1, 256], got {chunk}")
    _raises(ValueError, frag, dk.dct, x, chunk, backend=backend)
    _raises(ValueError, frag, dk.idct, torch.zeros(1, 64), (8, 8), chunk, backend=backend)
    _raises(ValueError, frag, dk.compress, x, 3, chunk, backend=backend)
    idx, vals = _payload()
    _raises(ValueError, frag, dk.decompress, [idx], [vals], SHAPE, chunk, backend=backend)
    _raises(ValueError, frag, dk.demo_step_, torch.zeros(8, 8), x, 0.9, 1.0, 3, chunk,
            backend=backend)


def test_chunk_256_is_allowed(backend):
    x = torch.randn(256)
    assert tuple(dk.dct(x, 256, backend=backend).shape) == (1, 256)


# ---------------------------------------------------------------------------- decompress lists


def test_mismatched_list_lengths(backend):
    idx, vals = _payload()
    _raises(ValueError, "indices_list has 2 peers but values_list has 1", dk.decompress,
            [idx, idx], [vals], SHAPE, CHUNK, backend=backend)
    _raises(ValueError, "indices_list has 1 peers but values_list has 3", dk.decompress,
            [idx], [vals, vals, vals], SHAPE, CHUNK, backend=backend)


def test_mismatched_k_between_peers(backend):
    a, va = _payload(k=3)
    b, vb = _payload(k=4, seed=1)
    _raises(ValueError, "peer 1: 4 indices per chunk, peer 0 has 3", dk.decompress,
            [a, b], [va, vb], SHAPE, CHUNK, backend=backend)


@pytest.mark.parametrize("bad_shape", [(3, 3), (1, 3), (2,), (6,), (2, 3, 1)])
def test_indices_shape_mismatch(backend, bad_shape):
    idx = torch.zeros(bad_shape, dtype=I32)
    vals = torch.zeros(bad_shape)
    _raises(ValueError, r"peer 0: indices must have shape \(2, k\)", dk.decompress, [idx], [vals],
            SHAPE, CHUNK, backend=backend)


def test_payload_for_another_shape(backend):
    """A payload made for another tensor (different chunk count) is rejected by shape."""
    idx, vals = dk.compress(torch.randn(16, 16), 3, 8, backend=backend)  # 4 chunks
    _raises(ValueError, "indices must have shape", dk.decompress, [idx], [vals], SHAPE, CHUNK,
            backend=backend)


def test_too_many_indices_per_chunk(backend):
    idx = torch.arange(65, dtype=I32).expand(2, 65).contiguous()
    _raises(ValueError, r"65 indices per chunk, expected 1\.\.64", dk.decompress, [idx],
            [torch.zeros(2, 65)], SHAPE, CHUNK, backend=backend)


def test_zero_indices_per_chunk(backend):
    _raises(ValueError, r"0 indices per chunk, expected 1\.\.64", dk.decompress,
            [torch.zeros(2, 0, dtype=I32)], [torch.zeros(2, 0)], SHAPE, CHUNK, backend=backend)


@pytest.mark.parametrize("n_values", [5, 7, 12])
def test_wrong_values_length(backend, n_values):
    idx, _ = _payload()
    _raises(ValueError, f"peer 0: {n_values} values for 6 indices", dk.decompress, [idx],
            [torch.zeros(n_values)], SHAPE, CHUNK, backend=backend)


@pytest.mark.parametrize("n_bytes, dtype", [(0, torch.uint8), (2, torch.uint8), (1, torch.int8),
                                            (1, torch.float32)])
def test_wrong_sign_byte_count(backend, n_bytes, dtype):
    idx, _ = _payload()  # 6 values -> exactly 1 byte
    _raises(ValueError, r"peer 0: sign values must be 1 uint8 bytes", dk.decompress, [idx],
            [torch.zeros(n_bytes, dtype=dtype)], SHAPE, CHUNK, value_codec="sign",
            backend=backend)


# ---------------------------------------------------------------------------- content rules


@pytest.mark.parametrize("bad", [-1, 64, 65, 2**31 - 1, -(2**31)])
@pytest.mark.parametrize("codec", ["f32", "sign"])
def test_index_out_of_range(backend, bad, codec):
    idx, vals = _payload()
    bad_idx = idx.clone()
    bad_idx[1, 0 if bad < 0 else -1] = bad
    v = dk.pack_signs(vals) if codec == "sign" else vals
    _raises(ValueError, re.escape("peer 1: index out of range [0, E)"), dk.decompress,
            [idx, bad_idx], [v, v], SHAPE, CHUNK, value_codec=codec, backend=backend)


@pytest.mark.parametrize("kind", ["unsorted", "duplicate", "descending"])
def test_unsorted_or_duplicate_indices(backend, kind):
    idx, vals = _payload(k=4)
    bad = idx.clone()
    if kind == "unsorted":
        bad[0, 1], bad[0, 2] = idx[0, 2], idx[0, 1]
    elif kind == "duplicate":
        bad[1, 2] = bad[1, 1]
    else:
        bad = bad.flip(1).contiguous()
    _raises(ValueError, r"peer 2: indices not strictly ascending", dk.decompress,
            [idx, idx, bad], [vals, vals, vals], SHAPE, CHUNK, backend=backend)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 2.0**64, -(2.0**64),
                                 3e38])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_finite_or_huge_values(backend, bad, dtype):
    idx, vals = _payload()
    v = vals.clone()
    v[1, 2] = bad
    v = v.to(dtype)
    _raises(ValueError, re.escape("peer 0: value not finite or |value| >= 2^64"), dk.decompress,
            [idx], [v], SHAPE, CHUNK, backend=backend)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_f16_values(backend, bad):
    idx, vals = _payload()
    v = vals.clone().to(torch.float16)
    v[0, 0] = bad
    _raises(ValueError, "value not finite", dk.decompress, [idx], [v], SHAPE, CHUNK,
            value_codec="f16", backend=backend)


def test_largest_value_below_2_pow_64_is_accepted(backend):
    idx, vals = _payload()
    v = vals.clone()
    v[0, 0] = float(np.nextafter(np.float32(2.0**64), np.float32(0)))
    assert torch.all(torch.isfinite(dk.decompress([idx], [v], SHAPE, CHUNK, backend=backend)))


def test_content_errors_name_the_first_bad_peer(backend):
    idx, vals = _payload()
    bad_v = vals.clone()
    bad_v[0, 0] = float("nan")
    bad_i = idx.clone()
    bad_i[0, 0] = 99
    _raises(ValueError, "peer 3: value not finite", dk.decompress, [idx] * 5,
            [vals, vals, vals, bad_v, vals], SHAPE, CHUNK, backend=backend)
    _raises(ValueError, "peer 1: index out of range", dk.decompress, [idx, bad_i, bad_i],
            [vals] * 3, SHAPE, CHUNK, backend=backend)


# ---------------------------------------------------------------------------- names


def test_unknown_reduce_and_codec(backend):
    idx, vals = _payload()
    _raises(ValueError, r"reduce must be one of \('mean', 'sum_over_peers'\), got 'median'",
            dk.decompress, [idx], [vals], SHAPE, CHUNK, reduce="median", backend=backend)
    _raises(ValueError, "value_codec must be one of .*got 'int8'", dk.decompress, [idx], [vals],
            SHAPE, CHUNK, value_codec="int8", backend=backend)


def test_unknown_policy(backend):
    x = torch.randn(8, 8)
    _raises(ValueError, "unknown chunk policy 'round'", dk.dct, x, 8, policy="round",
            backend=backend)
    _raises(ValueError, "unknown chunk policy", dk.compress, x, 3, 8, policy="round",
            backend=backend)
    _raises(ValueError, "unknown chunk policy", dk.idct, torch.zeros(1, 64), (8, 8), 8,
            policy="round", backend=backend)
    idx, vals = _payload()
    _raises(ValueError, "unknown chunk policy", dk.decompress, [idx], [vals], SHAPE, CHUNK,
            policy="round", backend=backend)


def test_unknown_backend():
    x = torch.randn(8, 8)
    frag = (r"backend must be one of \('auto', 'reference', 'native', 'triton', 'cpu', 'cuda'\), "
            r"got 'gpu'")
    _raises(ValueError, frag, dk.dct, x, 8, backend="gpu")
    _raises(ValueError, "backend must be one of", dk.compress, x, 3, 8, backend="gpu")
    _raises(ValueError, "backend must be one of", dk.idct, torch.zeros(1, 64), (8, 8), 8,
            backend="gpu")
    idx, vals = _payload()
    _raises(ValueError, "backend must be one of", dk.decompress, [idx], [vals], SHAPE, CHUNK,
            backend="gpu")
    _raises(ValueError, "backend must be one of", dk.pack_signs, x, backend="gpu")
    _raises(ValueError, "backend must be one of", dk.unpack_signs,
            torch.zeros(1, dtype=torch.uint8), 3, backend="gpu")
    delta = torch.zeros(8, 8)
    _raises(ValueError, "backend must be one of", dk.demo_step_, delta, x, backend="gpu")
    assert not torch.any(delta)


@pytest.mark.parametrize("name", [n for n in ("triton", "native", "cpu")
                                  if "cpu" not in dispatch.device_types(n)
                                  and not dispatch.device_types(n)])
def test_backend_not_available(name):
    x = torch.randn(8, 8)
    err = _raises(RuntimeError, f"backend '{name}' is not available", dk.dct, x, 8, backend=name)
    assert str(err).split("is not available: ", 1)[1], "the reason must be given"
    idx, vals = _payload()
    _raises(RuntimeError, "is not available", dk.decompress, [idx], [vals], SHAPE, CHUNK,
            backend=name)
    delta = torch.zeros(8, 8)
    _raises(RuntimeError, "is not available", dk.demo_step_, delta, x, backend=name)
    assert not torch.any(delta)


@pytest.mark.skipif("triton" not in dispatch.available(), reason="triton is not installed")
def test_triton_refuses_cpu_tensors():
    """Triton registers for CUDA tensors; asked to run on CPU tensors it says so."""
    _raises(ValueError, "backend 'triton' does not run on cpu tensors", dk.dct, torch.randn(8, 8), 8,
            backend="triton")


@pytest.mark.skipif(not HAS_CPU, reason="needs the native CPU kernels")
def test_backend_wrong_device():
    """``cpu`` (native on CPU) runs on CPU tensors only; ``native`` is not built for meta.
    (Ops on meta tensors run their fakes, whatever the override: shapes need no kernel.)"""
    _raises(ValueError, "backend 'cpu' runs on cpu tensors, got meta tensors",
            dispatch.resolve, "cpu", torch.device("meta"))
    _raises(ValueError, "backend 'native' does not run on meta tensors",
            dispatch.resolve, "native", torch.device("meta"))


# ---------------------------------------------------------------------------- shapes


def test_idct_shape_mismatch(backend):
    _raises(ValueError, r"coeffs has shape \(2, 64\), expected \(1, 64\)", dk.idct,
            torch.zeros(2, 64), (8, 8), 8, backend=backend)
    _raises(ValueError, r"coeffs has shape \(64,\), expected \(1, 64\)", dk.idct,
            torch.zeros(64), (8, 8), 8, backend=backend)
    _raises(ValueError, "expected", dk.idct, torch.zeros(64, 1), (8, 8), 8, backend=backend)


@pytest.mark.parametrize("shape", [(0,), (4, 0), (0, 4, 4)])
def test_empty_dims_rejected(backend, shape):
    _raises(ValueError, "every dimension must be >= 1", dk.idct, torch.zeros(1, 1), shape, 8,
            backend=backend)
    idx, vals = _payload()
    _raises(ValueError, "every dimension must be >= 1", dk.decompress, [idx], [vals], shape,
            CHUNK, backend=backend)


def test_empty_tensors_rejected_by_dct(backend):
    with pytest.raises(ValueError, match="every dimension must be >= 1"):
        dk.dct(torch.zeros(0), 8, backend=backend)
    with pytest.raises(ValueError, match="every dimension must be >= 1"):
        dk.compress(torch.zeros(4, 0), 3, 8, backend=backend)


def test_grad_shape_mismatch(backend):
    delta = torch.zeros(8, 8)
    _raises(ValueError, r"grad shape \(64,\) != delta shape \(8, 8\)", dk.demo_step_, delta,
            torch.ones(64), backend=backend)
    _raises(ValueError, r"grad shape \(8, 9\) != delta shape \(8, 8\)", dk.demo_step_, delta,
            torch.ones(8, 9), backend=backend)
    assert not torch.any(delta)


def test_noncontiguous_delta_rejected(backend):
    delta = torch.zeros(8, 16).t()
    _raises(ValueError, "delta must be contiguous", dk.demo_step_, delta, torch.ones(16, 8),
            backend=backend)
    assert not torch.any(delta)


def test_unpack_signs_count(backend):
    packed = torch.zeros(2, dtype=torch.uint8)
    _raises(ValueError, "n=17 does not fit in 2 bytes", dk.unpack_signs, packed, 17,
            backend=backend)
    _raises(ValueError, "n=-1 does not fit", dk.unpack_signs, packed, -1, backend=backend)
    assert tuple(dk.unpack_signs(packed, 16, backend=backend).shape) == (16,)


# ---------------------------------------------------------------------------- demo_step_many_


def test_many_mismatched_or_empty_lists(backend):
    d = [torch.zeros(8, 8), torch.zeros(5)]
    g = [torch.ones(8, 8), torch.ones(5)]
    frag = "deltas and grads must be non-empty lists of equal length"
    _raises(ValueError, frag, dk.demo_step_many_, d, g[:1], backend=backend)
    _raises(ValueError, frag, dk.demo_step_many_, d[:1], g, backend=backend)
    _raises(ValueError, frag, dk.demo_step_many_, [], [], backend=backend)
    assert not any(torch.any(t) for t in d)


@pytest.mark.parametrize("which", ["dtype", "shape", "grad_dtype", "noncontig"])
def test_many_bad_tensor_changes_nothing(backend, which):
    """Validation happens before any state moves: a bad third tensor leaves all untouched."""
    deltas = [torch.full((8, 8), 0.5), torch.full((5,), 0.25), torch.zeros(8, 16)]
    grads = [torch.ones(8, 8), torch.ones(5), torch.ones(8, 16)]
    if which == "dtype":
        deltas[2] = deltas[2].double()
    elif which == "shape":
        grads[2] = torch.ones(16, 8)
    elif which == "grad_dtype":
        grads[2] = grads[2].to(torch.int64)
    else:
        deltas[2] = torch.zeros(16, 8).t()
    before = [d.clone() for d in deltas]
    with pytest.raises((TypeError, ValueError)):
        dk.demo_step_many_(deltas, grads, 0.9, 1.0, 3, 8, backend=backend)
    for a, b in zip(deltas, before):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- raw custom ops


def _raw_decompress(idx, vals, shape, reduce="mean", codec="f32"):
    return lambda: ops.decompress(idx, vals, shape, 8 if shape != [64] else 64, reduce, codec,
                                  False, "divisor")


_I = [torch.tensor([[0, 3]], dtype=I32)]
_V = [torch.tensor([[1.0, 2.0]])]

# name: (call() -> result, message regex when it must raise, or acceptable(result, backend))
RAW_CASES = {
    "decompress_short_values": (_raw_decompress(_I, [torch.tensor([1.0])], [8]),
                                r"peer 0: 1 values for 2 indices"),
    "decompress_mismatched_lists": (_raw_decompress(_I * 2, _V, [8]),
                                    r"indices_list has 2 peers but values_list has 1"),
    "decompress_wrong_chunk_count": (_raw_decompress(_I, _V, [16]),
                                     r"peer 0: indices must have shape \(2, k\), got \(1, 2\)"),
    "decompress_unknown_reduce": (_raw_decompress(_I, _V, [8], reduce="median"),
                                  r"reduce must be one of \('mean', 'sum_over_peers'\), got 'median'"),
    "decompress_unknown_codec": (_raw_decompress(_I, _V, [8], codec="int8"),
                                 r"value_codec must be one of .*got 'int8'"),
    "decompress_short_sign_bytes": (
        _raw_decompress([torch.arange(64, dtype=I32).reshape(1, 64)],
                        [torch.zeros(1, dtype=torch.uint8)], [64], codec="sign"),
        r"peer 0: sign values must be 8 uint8 bytes, got 1 of torch.uint8"),
    "decompress_int64_indices": (_raw_decompress([_I[0].long()], _V, [8]),
                                 r"peer 0: indices must be int32, got torch.int64"),
    "decompress_mixed_devices": (
        _raw_decompress([_I[0], _I[0].to("meta")], [_V[0], _V[0].to("meta")], [8]),
        r"decompress: all tensors must be on one device, got cpu, meta"),
    "idct_short_coeffs": (lambda: ops.idct(torch.ones(3), [8], 8, "divisor"),
                          r"coeffs has shape \(3,\), expected \(1, 8\)"),
    "dct_float64": (lambda: ops.dct(torch.ones(8, dtype=torch.float64), 8, "divisor"),
                    r"x must be float32, bfloat16 or float16, got torch.float64"),
    "dct_int": (lambda: ops.dct(torch.ones(8, dtype=torch.int32), 8, "divisor"),
                r"x must be float32, bfloat16 or float16, got torch.int32"),
    "pack_signs_int": (
        lambda: ops.pack_signs(torch.tensor([-1, 2, -3], dtype=torch.int32)),
        lambda out, be: out.tolist() == [0b101]),
    "unpack_signs_n_too_big": (lambda: ops.unpack_signs(torch.zeros(1, dtype=torch.uint8), 100),
                               r"n=100 does not fit in 1 bytes"),
    "demo_step_grad_shape": (
        lambda: ops.demo_step_(torch.zeros(8), torch.ones(4), 0.9, 1.0, 2, 8),
        r"grad shape \(4,\) != delta shape \(8,\)"),
    "demo_step_aliased": (
        lambda: ops.demo_step_many_([_ALIAS, _ALIAS], [torch.ones(8), torch.ones(8)], 0.9, 1.0, 2, 8),
        r"delta of tensor 0 and delta of tensor 1 share memory"),
}
_ALIAS = torch.zeros(8)


@pytest.mark.parametrize("case", sorted(RAW_CASES))
def test_raw_ops_reject_invalid_arguments(backend, case):
    """``torch.ops.distro_kernels.*`` are public entry points too (anyone can call them, and
    compiled graphs do). Called directly with invalid arguments they raise the same error, with
    the same message, as the public functions; where a sensible result exists (integer signs)
    they return exactly it; never read past a buffer or silently return something else."""
    call, expected = RAW_CASES[case]
    with dispatch.forced(backend):
        if callable(expected):
            assert expected(call(), backend)
        else:
            with pytest.raises((TypeError, ValueError), match=expected):
                call()


@pytest.mark.parametrize("case", ["float64", "noncontiguous"])
def test_raw_demo_step_state_layout(backend, case):
    """The raw demo_step_ op on a float64 or non-contiguous ``delta`` raises the public op's
    error and leaves the tensor untouched; never reinterprets its memory as contiguous float32."""
    g = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    if case == "float64":
        delta = torch.full((8, 8), 0.5, dtype=torch.float64)
    else:
        delta = torch.full((8, 8), 0.5).t()
        delta[0, 1] = 2.0  # make the layout matter
    before = delta.clone()
    message = "must be a float32 tensor" if case == "float64" else "delta must be contiguous"
    with dispatch.forced(backend), pytest.raises((TypeError, ValueError), match=message):
        ops.demo_step_(delta, g, 0.9, 1.0, 3, 8)
    assert torch.equal(delta, before), "state changed by a refused call"


# ---------------------------------------------------------------------------- cross-backend


@pytest.mark.skipif(not HAS_CPU, reason="needs the cpu backend")
@given(
    P=st.integers(1, 5),
    corruptions=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 3),
                  st.sampled_from(["range_hi", "range_lo", "dup", "swap", "nan", "inf", "huge"])),
        min_size=0, max_size=4),
    codec=st.sampled_from(["f32", "bf16", "sign"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_cpu_and_reference_report_the_same_error(P, corruptions, codec, seed):
    """Whatever mix of broken rules a payload has, both backends accept it or both raise the
    same message (same rule, same peer)."""
    shape, chunk = (16, 16), 8  # 4 chunks, E = 64
    idx_list, val_list = [], []
    for p in range(P):
        idx, vals = _payload(n_chunks=4, k=4, seed=seed + p)
        idx_list.append(idx)
        val_list.append(vals)
    for peer, row, col, kind in corruptions:
        if peer >= P:
            continue
        idx, vals = idx_list[peer], val_list[peer]
        if kind == "range_hi":
            idx[row, col] = 64 + col
        elif kind == "range_lo":
            idx[row, col] = -1 - col
        elif kind == "dup":
            idx[row, col] = idx[row, (col + 1) % 4]
        elif kind == "swap":
            idx[row] = idx[row].flip(0)
        elif codec != "sign":
            vals[row, col] = {"nan": float("nan"), "inf": float("inf"), "huge": 2.0**64}[kind]
    if codec == "sign":
        val_list = [dk.pack_signs(v) for v in val_list]
    elif codec == "bf16":
        val_list = [v.to(torch.bfloat16) for v in val_list]
    outcome = {}
    for be in ("reference", "cpu"):
        try:
            outcome[be] = dk.decompress(idx_list, val_list, shape, chunk, value_codec=codec,
                                        backend=be)
        except ValueError as error:
            outcome[be] = str(error)
    a, b = outcome["reference"], outcome["cpu"]
    if isinstance(a, str) or isinstance(b, str):
        assert a == b if isinstance(a, str) and isinstance(b, str) else False, (a, b)
    else:
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
