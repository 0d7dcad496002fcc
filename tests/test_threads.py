"""The cpu backend's own thread pool (csrc/cpu/thread_pool.cpp, parallel.h): results do not
depend on the thread count, which follows torch.get_num_threads(); errors found by several
threads in one pass are all reported; concurrent callers and forked children get correct
results (a busy pool runs the caller's pass on the caller alone; a child starts a new pool)."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

import distro_kernels as dk
from conftest import f32_bits, needs_cpu, randn, seed_of

pytestmark = needs_cpu
# 1024 x 640 in 64 x 64 chunks: 160 chunks, so up to 10 threads get runs of 16 chunks.
SHAPE = (1024, 640)
THREADS = [1, 2, 3, 8]


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _outputs(seed: int) -> dict[str, torch.Tensor]:
    x = randn(SHAPE, seed)
    peers = [dk.compress(randn(SHAPE, seed + 1 + p), 32, 64, backend="cpu") for p in range(4)]
    idx, val = [p[0] for p in peers], [p[1] for p in peers]
    small = [dk.compress(randn((97, 61), seed + 5 + p), 8, 64, backend="cpu") for p in range(4)]
    small_idx, small_val = [p[0] for p in small], [p[1] for p in small]
    delta = randn(SHAPE, seed + 9, scale=0.1)
    i_step, v_step = dk.demo_step_(delta, randn(SHAPE, seed + 10), 0.9, 0.5, 16, 64, backend="cpu")
    signs = randn((1_500_001,), seed + 11)
    packed = dk.pack_signs(signs, backend="cpu")
    c_idx, c_val = dk.compress(x, 32, 64, backend="cpu")
    return {
        "dct": f32_bits(dk.dct(x, 64, backend="cpu")),
        "compress_idx": c_idx,
        "compress_val": f32_bits(c_val),
        "decompress": f32_bits(dk.decompress(idx, val, SHAPE, 64, sign=True, backend="cpu")),
        "decompress_many": torch.cat([f32_bits(t).flatten() for t in dk.decompress_many(
            [idx, small_idx], [val, small_val], [SHAPE, (97, 61)], 64, backend="cpu")]),
        "demo_step_delta": f32_bits(delta),
        "demo_step_idx": i_step,
        "demo_step_val": f32_bits(v_step),
        "pack_signs": packed,
        "unpack_signs": f32_bits(dk.unpack_signs(packed, signs.numel(), backend="cpu")),
    }


def test_results_do_not_depend_on_thread_count(torch_threads):
    seed = seed_of("threads")
    torch_threads(1)
    serial = _outputs(seed)
    # Independent checks of the serial run itself (so "all equal" cannot mean "all wrong").
    signs = randn((1_500_001,), seed + 11)
    assert torch.equal(serial["unpack_signs"], f32_bits(torch.where(torch.signbit(signs), -1.0, 1.0)))
    assert torch.equal(serial["pack_signs"], dk.pack_signs(signs, backend="reference"))
    for n in THREADS[1:]:
        torch_threads(n)
        got = _outputs(seed)
        for name, want in serial.items():
            assert torch.equal(got[name], want), f"{name} differs with {n} threads"


def test_errors_found_by_several_threads_are_all_reported(torch_threads):
    torch_threads(4)
    peers = [dk.compress(randn(SHAPE, seed_of("err", p)), 8, 64, backend="cpu") for p in range(3)]
    idx = [p[0].clone() for p in peers]
    val = [p[1].clone() for p in peers]
    idx[2][::7, -1] = 64 * 64  # out of range, in chunks spread over every thread's runs
    with pytest.raises(ValueError, match=r"peer 2: index out of range"):
        dk.decompress(idx, val, SHAPE, 64, backend="cpu")
    val[1][-1, 0] = float("nan")  # the last chunk only: a lower peer, found by another thread
    with pytest.raises(ValueError, match=r"peer 1: value not finite"):
        dk.decompress(idx, val, SHAPE, 64, backend="cpu")


def test_concurrent_callers_get_correct_results(torch_threads):
    torch_threads(2)
    peers = [dk.compress(randn(SHAPE, seed_of("conc", p)), 16, 64, backend="cpu") for p in range(3)]
    idx, val = [p[0] for p in peers], [p[1] for p in peers]
    want = f32_bits(dk.decompress(idx, val, SHAPE, 64, backend="reference"))
    results, errors = [], []

    def work():
        try:
            for _ in range(3):
                results.append(f32_bits(dk.decompress(idx, val, SHAPE, 64, backend="cpu")))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a caller did not finish"
    assert not errors, errors
    assert len(results) == 12 and all(torch.equal(r, want) for r in results)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_parallel_kernels(torch_threads):
    # An OpenMP build of these kernels hangs here (the child's libgomp waits for the parent's
    # threads); the pool starts afresh in the child.
    torch_threads(2)
    peers = [dk.compress(randn(SHAPE, seed_of("fork", p)), 16, 64, backend="cpu") for p in range(2)]
    idx, val = [p[0] for p in peers], [p[1] for p in peers]
    # The pool now has workers. (torch's own libgomp cannot run a parallel region in a child
    # forked after it ran one, so the child compares bytes with numpy, not torch.)
    want = dk.decompress(idx, val, SHAPE, 64, backend="cpu").numpy().tobytes()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a parallel pass on a fresh pool, the answer through the pipe
        code = 1
        try:
            torch.set_num_threads(2)
            got = dk.decompress(idx, val, SHAPE, 64, backend="cpu").numpy().tobytes()
            code = 0 if got == want else 2
        finally:
            os.write(write_end, bytes([code]))
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + 120
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("forked child hung in a parallel pass")
    answer = os.read(read_end, 1)
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0 and answer == b"\x00", (status, answer)
