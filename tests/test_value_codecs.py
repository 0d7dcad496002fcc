"""``value_codec="bf16"``/``"f16"`` in decompress: float values are rounded to that format first,
so decoding float32 values equals decoding what the wire would carry for them."""

import pytest
import torch

import distro_kernels as dk
from conftest import BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("codec,dtype", [("bf16", torch.bfloat16), ("f16", torch.float16)])
def test_half_codecs_round_then_decode(backend, codec, dtype):
    shape = (48, 80)
    gen = torch.Generator().manual_seed(7)
    peers = [dk.compress(torch.randn(shape, generator=gen), k=5, chunk=16) for _ in range(3)]
    indices = [i for i, _ in peers]
    values = [v * 1.0001 for _, v in peers]  # not representable in the half format
    got = dk.decompress(indices, values, shape, 16, value_codec=codec, backend=backend)
    want = dk.decompress(indices, [v.to(dtype) for v in values], shape, 16, value_codec="f32", backend=backend)
    unrounded = dk.decompress(indices, values, shape, 16, value_codec="f32", backend=backend)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert not torch.equal(got, unrounded)  # the rounding happened
