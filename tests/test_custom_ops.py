"""The ``torch.library`` custom ops: opcheck, fake (meta) implementations, torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.library import opcheck

import distro_kernels as dk
import spec_numpy as sn
from conftest import BACKENDS, assert_same_bits, randn
from distro_kernels import dispatch

ops = torch.ops.distro_kernels
OP_NAMES = ["dct", "idct", "compress", "decompress", "decompress_many", "decompress_many_into_",
            "decompress_many_apply_", "demo_step_", "demo_step_many_", "demo_step_coeffs_many_", "pack_signs",
            "unpack_signs"]


def test_every_op_is_registered():
    for name in OP_NAMES:
        assert hasattr(ops, name), name
        assert isinstance(getattr(ops, name).default, torch._ops.OpOverload)
    assert ops.dct.default is dk.ops.definitions.dct._opoverload


def _samples(backend):
    """(op, args) pairs with small, odd inputs for every op."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 10, generator=g)
    out = []
    for shape, chunk in [((6, 10), 4), ((7,), 64), ((), 64), ((2, 3, 5), 4)]:
        xs = torch.randn(shape, generator=g)
        out.append((ops.dct.default, (xs, chunk, "divisor")))
        out.append((ops.compress.default, (xs, 3, chunk, "divisor")))
        p = sn.plan(shape, chunk)
        C = torch.randn(p.n_chunks, p.E, generator=g)
        out.append((ops.idct.default, (C, list(shape), chunk, "divisor")))
    out.append((ops.dct.default, (x.to(torch.bfloat16), 4, "pad")))
    out.append((ops.compress.default, (x.to(torch.float16), 100, 4, "pad")))
    i, v = dk.compress(x, 3, 4, backend=backend)
    i2, v2 = dk.compress(-x, 3, 4, backend=backend)
    for reduce in ("mean", "sum_over_peers"):
        out.append((ops.decompress.default,
                     ([i, i2], [v, v2], [6, 10], 4, reduce, "f32", False, "divisor")))
    out.append((ops.decompress.default,
                 ([i, i2], [dk.pack_signs(v), dk.pack_signs(v2)], [6, 10], 4, "mean", "sign",
                  True, "divisor")))
    out.append((ops.decompress.default,
                 ([i], [v.to(torch.bfloat16)], [6, 10], 4, "mean", "bf16", False, "divisor")))
    # decompress_many: two tensors ((6, 10) and (7,)), two peers each, flattened tensor-major
    j, w = dk.compress(torch.randn(7, generator=g), 2, 4, backend=backend)
    out.append((ops.decompress_many.default,
                ([i, i2, j, j], [v, v2, w, -w], [6, 10, 7], [2, 1], 4, "mean", "f32", False)))
    out.append((ops.decompress_many_into_.default,
                ([torch.empty(6, 10), torch.empty(7)], [i, i2, j, j], [v, v2, w, -w], [6, 10, 7],
                 [2, 1], 4, "mean", "f32", True)))
    for sign, keeps in ((True, [0.99, 1.0]), (False, [1.0, 0.5])):
        out.append((ops.decompress_many_apply_.default,
                    ([torch.empty(6, 10), torch.empty(7)], [torch.randn(6, 10, generator=g), torch.randn(7, generator=g)],
                     [i, i2, j, j], [v, v2, w, -w], [6, 10, 7], [2, 1], 4, "mean", "f32", sign, keeps,
                     [-0.01, -0.25])))
    out.append((ops.pack_signs.default, (v,)))
    out.append((ops.pack_signs.default, (torch.randn(13, generator=g),)))
    out.append((ops.unpack_signs.default, (dk.pack_signs(v), v.numel())))
    out.append((ops.unpack_signs.default, (torch.tensor([5, 255], dtype=torch.uint8), 11)))
    out.append((ops.demo_step_.default,
                (torch.randn(6, 10, generator=g), x, 0.9, 1.0, 3, 4)))
    out.append((ops.demo_step_.default,
                (torch.randn(7, generator=g), torch.randn(7, generator=g).half(), 0.5, 2.0, 2,
                 64)))
    out.append((ops.demo_step_many_.default,
                ([torch.randn(6, 10, generator=g), torch.randn(5, generator=g)],
                 [x, torch.randn(5, generator=g).to(torch.bfloat16)], 0.9, 1.0, 3, 4)))
    states = [torch.randn(p.n_chunks, p.E, generator=g) for p in (sn.plan((6, 10), 4), sn.plan((5,), 4))]
    out.append((ops.demo_step_coeffs_many_.default,
                (states, [x, torch.randn(5, generator=g).to(torch.bfloat16)], 0.9, 1.0, 3, 4)))
    return out


def _label(op, args):
    shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else
              [tuple(t.shape) for t in a] if isinstance(a, list) and a and
              isinstance(a[0], torch.Tensor) else a for a in args[:3]]
    return f"{op._schema.name.split('::')[1]}{shapes}".replace(" ", "")


SAMPLES = {be: _samples(be) for be in BACKENDS}
SAMPLE_PARAMS = [
    pytest.param(be, n, id=f"{be}-{n}-{_label(*SAMPLES[be][n])}")
    for be in BACKENDS for n in range(len(SAMPLES[be]))
]


def _clone_args(args):
    return [a.clone() if isinstance(a, torch.Tensor) else
            [t.clone() for t in a] if isinstance(a, list) and a and isinstance(a[0], torch.Tensor)
            else a for a in args]


def test_samples_cover_every_op():
    for be in BACKENDS:
        assert {op._schema.name.split("::")[1] for op, _ in SAMPLES[be]} == set(OP_NAMES)


@pytest.mark.parametrize("backend_name, n", SAMPLE_PARAMS)
def test_opcheck(backend_name, n):
    op, args = SAMPLES[backend_name][n]
    with dispatch.forced(backend_name):
        result = opcheck(op, _clone_args(args))
    bad = {k: v for k, v in result.items() if v != "SUCCESS"}
    assert not bad, bad


@pytest.mark.parametrize("backend_name, n", SAMPLE_PARAMS)
def test_fake_tensors_give_shapes_and_dtypes(backend_name, n):
    """Under FakeTensorMode every op returns the shapes, dtypes and strides the real op does."""
    op, args = SAMPLES[backend_name][n]
    with dispatch.forced(backend_name):
        real = op(*_clone_args(args))
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake_args = [
            mode.from_tensor(a) if isinstance(a, torch.Tensor)
            else [mode.from_tensor(t) for t in a]
            if isinstance(a, list) and a and isinstance(a[0], torch.Tensor) else a
            for a in args
        ]
        fake = op(*fake_args)

    def leaves(r):
        if isinstance(r, (tuple, list)):
            return [t for item in r for t in leaves(item)]
        return [r]

    reals, fakes = leaves(real), leaves(fake)
    if real is None:  # an op that only writes its arguments (decompress_many_into_)
        assert fake is None
        reals, fakes = leaves(args[0]), leaves(fake_args[0])
    assert len(reals) == len(fakes)
    for r, f in zip(reals, fakes):
        assert (tuple(f.shape), f.dtype) == (tuple(r.shape), r.dtype)
        assert f.stride() == r.stride(), "fake and real strides differ"


def test_meta_device(backend):
    """Meta tensors go through the fake kernels (shape inference without data)."""
    x = torch.empty(6, 130, device="meta")
    X = dk.dct(x, 64)
    assert X.device.type == "meta" and tuple(X.shape) == (5, 156) and X.dtype == torch.float32
    i, v = dk.compress(x, 32, 64)
    assert tuple(i.shape) == (5, 32) and i.dtype == torch.int32 and v.dtype == torch.float32
    y = dk.decompress([i], [v], (6, 130), 64)
    assert tuple(y.shape) == (6, 130) and y.device.type == "meta"


@pytest.mark.parametrize("shape, chunk", [((2, 3, 5), 4), ((64, 97), 64), ((3, 5), 4),
                                          ((2, 16, 17), 16), ((6, 130), 64), ((97,), 64),
                                          ((), 64), ((29, 64), 16)])
def test_real_outputs_match_fake_strides(backend, shape, chunk):
    """Fake kernels promise contiguous outputs; the real ones must deliver exactly that, or
    compiled graphs (which plan memory from the fake strides) break. Shapes with a chunk
    column of width 1 (prime last dim > chunk) are the awkward case."""
    p = sn.plan(shape, chunk)
    x = randn(shape, 1)
    C = torch.randn(p.n_chunks, p.E, generator=torch.Generator().manual_seed(2))
    i, v = dk.compress(x, 3, chunk, backend=backend)
    outs = {
        "dct": dk.dct(x, chunk, backend=backend),
        "idct": dk.idct(C, shape, chunk, backend=backend),
        "compress.indices": i,
        "compress.values": v,
        "decompress": dk.decompress([i], [v], shape, chunk, backend=backend),
        "decompress.sign": dk.decompress([i], [dk.pack_signs(v, backend=backend)], shape, chunk,
                                         value_codec="sign", sign=True, backend=backend),
    }
    bad = {k: (tuple(t.shape), t.stride()) for k, t in outs.items() if not t.is_contiguous()}
    assert not bad, f"non-contiguous outputs (fake says contiguous): {bad}"


# ---------------------------------------------------------------------------- torch.compile


def _encode_decode(x, delta, grad, chunk=16):
    """No backend argument: compiled graphs carry none; ``dispatch.forced`` around the call
    (not inside the graph) picks the implementation at run time."""
    i, v = dk.compress(x, 5, chunk)
    i2, v2 = dk.compress(x * 0.5 + 1.0, 5, chunk)
    y = dk.decompress([i, i2], [v, v2], x.shape, chunk)
    ys = dk.decompress([i, i2], [dk.pack_signs(v), dk.pack_signs(v2)], x.shape, chunk,
                       value_codec="sign", sign=True)
    si, sv = dk.demo_step_(delta, grad, 0.9, 1.0, 4, chunk)
    C = dk.dct(x, chunk)
    back = dk.idct(C * 2.0, x.shape, chunk)
    # consumers that depend on the output layout
    return (y + 1.0).reshape(-1), ys.reshape(-1)[:50], si, sv, back.t().contiguous()


def _compare(eager_out, comp_out):
    assert len(eager_out) == len(comp_out)
    for a, b in zip(eager_out, comp_out):
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.dtype == torch.float32:
            assert_same_bits(b.contiguous(), a.contiguous())
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("shape, chunk", [((29, 64), 16), ((64, 97), 64)])
def test_compile_fullgraph_aot_eager(backend, shape, chunk):
    torch._dynamo.reset()

    def f(x, delta, grad):
        return _encode_decode(x, delta, grad, chunk)

    x, delta, grad = randn(shape, 21), randn(shape, 22), randn(shape, 23, torch.bfloat16)
    d_eager, d_comp = delta.clone(), delta.clone()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    with dispatch.forced(backend):
        eager = f(x, d_eager, grad)
        comp = compiled(x, d_comp, grad)
    _compare(eager, comp)
    assert_same_bits(d_comp, d_eager)  # the in-place state update survived compilation
    assert not torch.equal(d_comp, delta)


def test_compile_fullgraph_inductor():
    """One real inductor compile (slow: ~20 s on two cores) covering every backend, on a
    shape with a prime last dim > chunk (chunk columns of width 1)."""
    torch._dynamo.reset()
    shape, chunk = (64, 97), 64

    def f(x, delta, grad):
        return _encode_decode(x, delta, grad, chunk)

    x, delta, grad = randn(shape, 31), randn(shape, 32), randn(shape, 33, torch.float16)
    compiled = torch.compile(f, fullgraph=True)
    for be in BACKENDS:  # one graph, every implementation: no backend is baked in
        d_eager, d_comp = delta.clone(), delta.clone()
        with dispatch.forced(be):
            eager = f(x, d_eager, grad)
            comp = compiled(x, d_comp, grad)
        _compare(eager, comp)
        assert_same_bits(d_comp, d_eager)


@pytest.mark.parametrize("layout", ["param", "dct"])
def test_compile_demo_step_many(backend, layout):
    """Both fused steps (momentum in the parameter's layout, or as DCT coefficients)."""
    torch._dynamo.reset()
    fused = dk.demo_step_many_ if layout == "param" else dk.demo_step_coeffs_many_

    def step(states, grads):
        return fused(states, grads, 0.9, 1.0, 3, 8)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    shapes = [(16, 24), (7,), (3, 5, 7)]
    states = [randn(s, i) for i, s in enumerate(shapes)]
    if layout == "dct":
        states = [dk.dct(s, 8, backend="reference") for s in states]
    grads = [randn(s, 10 + i) for i, s in enumerate(shapes)]
    s1 = [s.clone() for s in states]
    s2 = [s.clone() for s in states]
    with dispatch.forced(backend):
        a_i, a_v = step(s1, grads)
        b_i, b_v = compiled(s2, grads)
    for x, y in zip(a_i + a_v + s1, b_i + b_v + s2):
        assert torch.equal(x, y)


def test_compile_rejects_bad_arguments_at_trace_time(backend):
    """The Python-side validation still runs when the public functions are compiled."""
    torch._dynamo.reset()

    def f(x):
        return dk.compress(x, 0, 8)

    with dispatch.forced(backend), pytest.raises(Exception, match="k must be >= 1"):
        torch.compile(f, fullgraph=True, backend="aot_eager")(torch.randn(8, 8))


def test_backend_override_is_eager_only_under_compile():
    """``backend=`` never enters a graph: with ``fullgraph=True`` it is refused, otherwise the
    call runs outside the graph and gives the eager result."""
    torch._dynamo.reset()

    def f(x):
        i, v = dk.compress(x, 4, 8, backend="reference")
        return i, v * 2.0

    x = torch.randn(16, 16)
    with pytest.raises(Exception, match="(?i)disable|skip"):
        torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    got, want = torch.compile(f, backend="aot_eager")(x), f(x)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_info_reports_backends():
    info = dk.info()
    assert info["backends"] == dk.dispatch.available()
    assert set(BACKENDS) <= set(info["backends"]) and "reference" in info["backends"]
    for name, why in info["unavailable"].items():  # "native:cuda" = native on cuda devices
        implementation, _, device = name.partition(":")
        assert why and (device or implementation not in info["backends"])
        if device:
            assert implementation not in info["devices"][device]["available"]
    assert info["devices"]["cpu"]["default"] == ("native" if "native" in BACKENDS else "reference")
    assert info["version"] == dk.__version__
    assert isinstance(info["threads"], int) and info["threads"] >= 1
