

# ----------------------------------------------------------------------------- random geometry

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=12, deadline=None)
@given(dims=st.lists(st.integers(1, 150), min_size=1, max_size=3), chunk=st.integers(1, 64),
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
