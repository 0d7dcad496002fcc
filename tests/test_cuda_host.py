"""Host-side parts of the cuda backend that need no GPU: the tensor table against
``csrc/cuda/table.h``, the division magics, argument packing, code-object lookup, the
registration message, the build flags, and the decode's integer division against IEEE."""

from __future__ import annotations

import ctypes
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import distro_kernels.cuda as dk_cuda
from distro_kernels.chunking import chunk_plan
from distro_kernels.cuda import gate, objects
from distro_kernels.cuda import table as tb
from distro_kernels.cuda.launch import KERNELS, Packed, grid_blocks

ROOT = Path(__file__).resolve().parents[1]
CUDA_SRC = ROOT / "csrc" / "cuda"
CI = os.environ.get("CI") == "true"


def _enum_values(text: str) -> dict[str, int]:
    return {name: int(value) for name, value in re.findall(r"\b(DK_\w+)\s*=\s*(\d+)", text)}


def test_table_fields_mirror_the_header():
    header = (CUDA_SRC / "table.h").read_text()
    values = _enum_values(header)
    assert int(re.search(r"#define DK_FIELDS (\d+)", header).group(1)) == tb.FIELDS
    for name, value in values.items():
        py = name.removeprefix("DK_")
        if hasattr(tb, py):
            assert getattr(tb, py) == value, name
    mirrored = [n for n in values if hasattr(tb, n.removeprefix("DK_"))]
    assert len(mirrored) == len(values), set(values) - set(mirrored)
    compat = (CUDA_SRC / "compat.h").read_text()
    assert int(re.search(r"#define DK_THREADS (\d+)", compat).group(1)) == tb.THREADS
    assert int(re.search(r"#define DK_TILE (\d+)", compat).group(1)) == tb.TILE


def test_kernel_names_match_the_source():
    source = "".join(p.read_text() for p in CUDA_SRC.glob("*.cuh"))
    assert set(re.findall(r"DK_KERNEL (dk_\w+)\(", source)) == set(KERNELS) == set(gate.KERNELS)
    sim = (CUDA_SRC / "sim_entry.cpp").read_text()
    assert set(re.findall(r'\{"(dk_\w+)", entry', sim)) == set(KERNELS)


def test_magic_division_is_exact():
    rng = np.random.default_rng(0)
    divisors = [2, 3, 5, 7, 61, 64, 4096, 12345, 2**31 - 1, 2**31, 2**32 - 1]
    divisors += rng.integers(2, 2**32, 50).tolist()
    numerators = [0, 1, 2**31, 2**32 - 1] + rng.integers(0, 2**32, 200).tolist()
    for d in divisors:
        m = tb.magic(d) % 2**64
        assert m == (2**64 - 1) // d + 1
        for n in numerators + [d - 1, d, d + 1, 2 * d - 1]:
            if 0 <= n < 2**32:
                assert tb.divide(n, d) == n // d, (n, d)
    assert tb.magic(1) == 0 and tb.divide(12345, 1) == 12345
    assert -(2**63) <= tb.magic(2) < 2**63  # stored as a signed int64 word
    for bad in (0, 2**32):
        with pytest.raises(ValueError):
            tb.magic(bad)


@pytest.mark.parametrize("shape,chunk", [((128, 192), 64), ((61,), 64), ((3, 29, 12), 32),
                                         ((4099,), 64), ((), 64), ((131, 7), 64)])
def test_tile_counts_cover_every_chunk(shape, chunk):
    plan = chunk_plan(shape, chunk)
    for g in (tb.encode_tile_chunks(plan), tb.decode_tile_chunks(plan)):
        assert g >= 1 and g * plan.elements_per_chunk <= tb.TILE
        assert (tb.tiles(plan, g) - 1) * g < plan.n_chunks <= tb.tiles(plan, g) * g
    assert tb.encode_tile_chunks(plan) == (1 if plan.elements_per_chunk > tb.SMALL_E else
                                           tb.TILE // plan.elements_per_chunk)


def _decode_item(plan, peers, base):
    return tb.DecodeItem(plan, (base + 1, base + 2, base + 3), base + 4,
                         [(base + 10 + 2 * p, base + 11 + 2 * p) for p in range(peers)], 5)


def test_decode_table_layout():
    plans = [chunk_plan((128, 192), 64), chunk_plan((61,), 64), chunk_plan((2, 64, 3), 64)]
    table = tb.decode_table([_decode_item(p, n, 100 * t) for t, (p, n) in enumerate(zip(plans, (3, 1, 2)))])
    words = table.words
    assert table.n_tensors == 3
    assert words.dtype == np.int64 and words.size == 3 * tb.FIELDS + 2 * (3 + 1 + 2)
    rows = words[:3 * tb.FIELDS].reshape(3, tb.FIELDS)
    first = 0
    for t, (plan, row, peers) in enumerate(zip(plans, rows, (3, 1, 2))):
        g = tb.decode_tile_chunks(plan)
        assert row[tb.F_FIRST_TILE] == first
        first += tb.tiles(plan, g)
        assert (row[tb.F_N_CHUNKS], row[tb.F_CHUNKS_M], row[tb.F_CHUNKS_N], row[tb.F_CM],
                row[tb.F_CN], row[tb.F_TILE_CHUNKS]) == (plan.n_chunks, plan.chunks_m,
                                                         plan.chunks_n, plan.cm, plan.cn, g)
        assert row[tb.F_OUT] == 100 * t + 4 and row[tb.F_N_PEERS] == peers
        assert row[tb.F_PEER_K] == 5 and row[tb.F_MAGIC_K] == tb.magic(5)
        assert row[tb.F_MAGIC_E] == tb.magic(plan.elements_per_chunk)
        assert row[tb.F_MAGIC_CN] == tb.magic(plan.cn)
        assert row[tb.F_MAGIC_CHUNKS_M] == tb.magic(plan.chunks_m)
        assert row[tb.F_MAGIC_CHUNKS_N] == tb.magic(plan.chunks_n)
        peer_list = words[row[tb.F_PEERS]:row[tb.F_PEERS] + 2 * peers]
        assert peer_list.tolist() == [100 * t + 10 + i for i in range(2 * peers)]
    assert table.grid == first
    assert rows[:, tb.F_FLAG_BASE].tolist() == [0, 3, 4]


def test_encode_table_layout():
    plans = [chunk_plan((64, 128), 64), chunk_plan((7,), 64)]
    items = [tb.EncodeItem(p, (1, 2, 3), 10 * t + 5, tb.DTYPE_F32, 10 * t + 6, 10 * t + 7, 4,
                           10 * t + 8, tb.DTYPE_BF16) for t, p in enumerate(plans)]
    table = tb.encode_table(items)
    rows = table.words.reshape(2, tb.FIELDS)
    assert rows[1, tb.F_FIRST_TILE] == 2 and table.grid == 3
    assert rows[0, tb.F_DTYPES] == tb.DTYPE_F32 | (tb.DTYPE_BF16 << 8)
    assert rows[1, [tb.F_X, tb.F_OUT_A, tb.F_OUT_B, tb.F_GRAD, tb.F_K]].tolist() == [15, 16, 17, 18, 4]
    assert rows[1, tb.F_TILE_CHUNKS] == tb.TILE // 7


def test_unsupported_geometry_is_refused():
    big = chunk_plan((256, 256), 128)
    assert not tb.supported(big)
    with pytest.raises(ValueError, match="no CUDA kernel"):
        tb.encode_table([tb.EncodeItem(big, (0, 0, 0), 0, 0, 0)])
    assert tb.supported(chunk_plan((64, 64), 64))


def test_first_bad_reports_lowest_tensor_then_peer_then_rule():
    flags = np.array([0, 0, 0, tb.BAD_VALUE | tb.BAD_ORDER, 0, tb.BAD_RANGE], dtype=np.int32)
    assert tb.first_bad(flags, [3, 3]) == (1, 0, "index_order")
    flags[1] = tb.BAD_RANGE | tb.BAD_VALUE
    assert tb.first_bad(flags, [3, 3]) == (0, 1, "index_range")
    assert tb.first_bad(np.zeros(4, np.int32), [2, 2]) is None
    assert tb.first_bad(np.array([tb.BAD_VALUE], np.int32), [1]) == (0, 0, "value")


def test_packed_arguments_point_at_their_values():
    packed = Packed("dk_encode", (0xDEADBEEF00, 3, 2, 0.999, -1.5))
    params = packed.params
    assert len(params) == 5
    assert ctypes.c_uint64.from_address(params[0]).value == 0xDEADBEEF00
    assert ctypes.c_int32.from_address(params[1]).value == 3
    assert ctypes.c_int32.from_address(params[2]).value == 2
    assert ctypes.c_float.from_address(params[3]).value == np.float32(0.999)
    assert ctypes.c_float.from_address(params[4]).value == -1.5
    with pytest.raises(TypeError, match="takes 6 arguments"):
        Packed("dk_decompress", (1, 2))
    with pytest.raises(ValueError):
        grid_blocks(0)
    with pytest.raises(ValueError):
        grid_blocks(2**31)


def test_registration_on_this_machine():
    if torch.cuda.is_available():
        pytest.skip("GPU machine: registration is checked by test_cuda_backend.py")
    assert dk_cuda.CUDA_ERROR
    from distro_kernels import dispatch

    assert dispatch.unavailable["native:cuda"] == dk_cuda.CUDA_ERROR
    assert "cuda" not in dispatch.device_types("native")
    if torch.version.cuda is None and torch.version.hip is None:
        assert "CPU-only" in dk_cuda.CUDA_ERROR
    info = dk_cuda.describe()
    assert info["available"] is False and info["why_not"] == dk_cuda.CUDA_ERROR


def test_code_objects_are_found_through_the_override(tmp_path, monkeypatch):
    (tmp_path / objects.FATBIN).write_bytes(b"fatbin")
    (tmp_path / "dk_kernels_gfx90a.co").write_bytes(b"elf")
    monkeypatch.setenv(objects.ENV_DIR, str(tmp_path))
    assert objects.find_fatbin() == tmp_path / objects.FATBIN
    assert objects.find_hip_objects() == {"gfx90a": tmp_path / "dk_kernels_gfx90a.co"}


def test_installed_build_has_the_fatbin_when_nvcc_is_here():
    """The package build must produce the fatbin wherever nvcc is (CI has nvcc)."""
    if shutil.which("nvcc") is None:
        if CI:
            pytest.fail("CI=true but nvcc is not on PATH (the CUDA toolkit is part of CI)")
        pytest.skip("nvcc not on PATH: the fatbin is not built here")
    fatbin = objects.find_fatbin()
    assert fatbin is not None, f"no {objects.FATBIN} in {objects.search_dirs()} (rebuild: pip install -e .)"
    targets = fatbin.with_suffix(".targets").read_text().split()
    assert [f"sm_{a}" for a in (80, 86, 89, 90, 100, 120)] == [t for t in targets if t.startswith("sm_")]
    blob = fatbin.read_bytes()
    assert all(name.encode() in blob for name in KERNELS)


def test_build_flags_match_the_gate():
    cmake = (CUDA_SRC / "CMakeLists.txt").read_text()
    nvcc = re.search(r"set\(DK_NVCC_FLAGS ([^)]*)\)", cmake).group(1).split()
    hipcc = re.search(r"set\(DK_HIPCC_FLAGS ([^)]*)\)", cmake).group(1).split()
    targets = re.search(r"set\(DK_CUDA_TARGETS ([\d ]+) CACHE", cmake).group(1).split()
    assert tuple(nvcc) == gate.NVCC_FLAGS and tuple(hipcc) == gate.HIPCC_FLAGS
    assert tuple(f"sm_{t}" for t in targets) == gate.NVIDIA_TARGETS
    assert "--fmad=false" in nvcc and "-ffp-contract=off" in hipcc


def _sim():
    from distro_kernels.cuda import sim

    if shutil.which("g++") is None and not os.environ.get("CXX"):
        if CI:
            pytest.fail("CI=true but no g++ for the host emulation")
        pytest.skip("no host C++ compiler for the emulation")
    return sim.SimDriver(sim.build())


def test_integer_division_is_ieee_division():
    """dk_div_count (exact_div.h) against numpy's correctly rounded float32 division, over
    the canonical range: every count 1..300, random and adversarial numerators."""
    driver = _sim()
    rng = np.random.default_rng(7)
    counts = np.concatenate([np.arange(1, 301), rng.integers(301, 2**24, 200)]).astype(np.uint32)
    mant = rng.integers(0, 2**23, 2000, dtype=np.uint32)
    mant[:8] = [0, 1, 2**23 - 1, 2**22, 2**22 + 1, 0x555555, 0x2AAAAA, 2**23 - 2]
    exps = rng.integers(127 - 78, 127 + 90, mant.size, dtype=np.uint32)
    s = ((exps << 23) | mant).view(np.float32)
    s[::2] *= -1
    s = np.concatenate([s, np.float32([0.0, 1.0, -1.0, 3.0, 2.0**-78, 2.0**-55, 7.0, 1e30])])
    ss = np.repeat(s, counts.size)
    nn = np.tile(counts, s.size)
    got = driver.div_count(ss, nn)
    want = ss / nn.astype(np.float32)  # counts < 2^24 are exact in float32
    bad = np.nonzero(got.view(np.int32) != want.view(np.int32))[0]
    assert bad.size == 0, [(ss[i], nn[i], got[i], want[i]) for i in bad[:5]]
    # integer (sign codec) sums
    sums = np.arange(-300, 301, dtype=np.float32)
    for n in (1, 2, 3, 7, 8, 255):
        assert np.array_equal(driver.div_count(sums, np.full(sums.size, n)).view(np.int32),
                              (sums / np.float32(n)).view(np.int32))
    assert math.isclose(driver.div_count(np.float32([10.0]), np.uint32([4]))[0], 2.5)
