"""The CPU decode output pool (``distro_kernels/output_pool.py``): a block is handed out
again only once no tensor, view or export reaches it, and never aliases a live output."""

import io
import pickle
import threading

import pytest
import torch

import distro_kernels as dk
from distro_kernels.output_pool import MIN_BYTES, OutputPool

pytestmark = pytest.mark.skipif(dk.info()["cpu_kernel"] is None, reason="needs the cpu backend")

SHAPE = (512, 640)  # 1.25 MiB of float32: pooled (>= MIN_BYTES)
MIB = 1 << 20


def payload(seed, shape=SHAPE, k=8):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return dk.compress(x, k=k, backend="cpu")


def decode(seed, shape=SHAPE):
    i, v = payload(seed, shape)
    return dk.decompress([i], [v], shape, sign=False, backend="cpu")


def expected(seed, shape=SHAPE):
    i, v = payload(seed, shape)
    return dk.decompress([i], [v], shape, sign=False, backend="reference")


def test_pool_threshold_is_below_the_test_shape():
    assert 4 * SHAPE[0] * SHAPE[1] >= MIN_BYTES


def test_dropped_output_is_reused_and_holds_the_new_decode():
    first = decode(1)
    ptr = first.data_ptr()
    del first
    second = decode(2)
    assert second.data_ptr() == ptr
    assert torch.equal(second, expected(2))


def test_live_output_is_never_overwritten():
    first = decode(3)
    snapshot = first.clone()
    second = decode(4)
    assert second.data_ptr() != first.data_ptr()
    assert torch.equal(first, snapshot) and torch.equal(second, expected(4))


@pytest.mark.parametrize("keep", ["view", "numpy", "slice_of_view", "storage"])
def test_anything_reaching_the_block_keeps_it(keep):
    first = decode(5)
    ptr = first.data_ptr()
    held = {"view": lambda t: t[1:].t(), "numpy": lambda t: t.numpy(),
            "slice_of_view": lambda t: t.view(-1)[7:99], "storage": lambda t: t.untyped_storage()}[keep](first)
    snapshot = first.clone()
    del first
    second = decode(6)
    assert second.data_ptr() != ptr
    alive = torch.empty(0).set_(held) if keep == "storage" else torch.as_tensor(held)
    reference = {"view": snapshot[1:].t(), "numpy": snapshot, "storage": snapshot.view(-1),
                 "slice_of_view": snapshot.view(-1)[7:99]}[keep]
    assert torch.equal(alive.reshape(reference.shape), reference)


def test_aligned_like_torch_empty():
    outs = [decode(s) for s in range(3)]
    assert all(o.data_ptr() % 64 == 0 for o in outs)


def test_outputs_behave_as_tensors():
    out = decode(7)
    buf = io.BytesIO()
    torch.save(out, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), out)
    assert torch.equal(pickle.loads(pickle.dumps(out)), out)
    assert out.is_contiguous() and out.dtype == torch.float32 and out.shape == SHAPE
    out.add_(1.0)  # writable
    with pytest.raises(RuntimeError, match="not resizable"):
        out.resize_(2 * SHAPE[0], SHAPE[1])  # documented: the storage is a fixed block


def test_small_outputs_are_not_pooled():
    pool = OutputPool(64 * MIB)
    t = pool.empty((16, 16))
    assert pool.stats()["blocks"] == 0 and t.shape == (16, 16)


def test_cap_zero_turns_the_pool_off():
    pool = OutputPool(0)
    a = pool.empty((1024, 1024))
    del a
    pool.empty((1024, 1024))
    assert pool.stats()["blocks"] == 0 and pool.stats()["held_bytes"] == 0


def test_cap_counts_blocks_in_use_and_evicts_idle_ones():
    pool = OutputPool(8 * MIB)
    a = pool.empty((1024, 1024))  # 4 MiB
    b = pool.empty((1024, 1024))
    c = pool.empty((1024, 1024))  # over the cap while a and b live: plain memory
    assert pool.stats() == {"cap_bytes": 8 * MIB, "blocks": 2, "held_bytes": 8 * MIB, "idle_bytes": 0}
    assert len({a.data_ptr(), b.data_ptr(), c.data_ptr()}) == 3
    del a
    d = pool.empty((512, 1024))  # another size: the idle 4 MiB block makes room for it
    assert pool.stats()["blocks"] == 2 and pool.stats()["held_bytes"] == 6 * MIB
    del b, c, d
    assert pool.stats()["idle_bytes"] == 6 * MIB
    pool.empty_cache()
    assert pool.stats()["blocks"] == 0


def test_empty_cache_keeps_blocks_in_use():
    pool = OutputPool(64 * MIB)
    live = pool.empty((1024, 1024))
    live.fill_(3.0)
    dead = pool.empty((1024, 1024))
    del dead
    pool.empty_cache()
    assert pool.stats()["blocks"] == 1 and bool((live == 3.0).all())


def test_threads_get_distinct_live_blocks():
    pool = OutputPool(256 * MIB)
    got, lock = [], threading.Lock()

    def worker(n):
        for _ in range(20):
            t = pool.empty((1024, 256))
            t.fill_(float(n))
            with lock:
                got.append(t)  # every tensor stays alive: no two may share a block
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({t.data_ptr() for t in got}) == len(got)


def test_info_reports_the_pool():
    stats = dk.info()["cpu_output_pool"]
    assert set(stats) == {"cap_bytes", "blocks", "held_bytes", "idle_bytes"}


def test_empty_cache_is_public():
    out = decode(8)
    del out
    dk.empty_cache()
    assert dk.info()["cpu_output_pool"]["idle_bytes"] == 0
