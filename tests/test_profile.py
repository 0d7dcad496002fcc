"""``distro-kernels profile``: the command end to end on CPU, its files, and the pure logic of
the GPU-only paths (device keys, the CUDA clock) with fakes.

Timings are never asserted (performance lives in benchmarks); the tests check what the
numbers must satisfy whatever they are: GB/s is bytes over the median, the roofline fraction
is that over the copy bandwidth of the same run, the ratios are medians of the same run, and
the bytes are the op floors computed here independently.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch

from distro_kernels import dispatch
from distro_kernels.profile import SCHEMA, compare, device, layouts, timing, tune, tuning
from distro_kernels.profile.ops import OPS, Config, Workload
from distro_kernels.profile.run import select_backends

ROOT = Path(__file__).resolve().parents[1]
NO_CACHE = Path(tempfile.gettempdir()) / f"distro_kernels_no_tuning_{os.getpid()}"  # nothing tuned
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
EAGER_OPS = ("encode", "compress", "decode", "decode+sign")
ROW_FIELDS = ("op", "layout", "shape", "backend", "status", "median_s", "spread", "min_s", "max_s",
              "runs", "bytes", "gb_s", "roofline_fraction", "ratio_vs_eager", "ratio_vs_reference",
              "dispatch", "clock")


def profile(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m distro_kernels profile ARGS`` in a new interpreter (as a user runs it)."""
    cmd = [sys.executable, "-m", "distro_kernels", "profile", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, tuning.ENV: str(NO_CACHE), **(env or {})})


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The same command in this process (fast: no interpreter start)."""
    from distro_kernels.__main__ import main

    capsys.readouterr()
    rc = main(["profile", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(autouse=True)
def _no_tuning_cache(monkeypatch):
    monkeypatch.setenv(tuning.ENV, str(NO_CACHE))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The issue's command, once: ``profile --device cpu --quick`` with every output."""
    out = tmp_path_factory.mktemp("quick")
    extra = ["--plot"] if HAS_MPL else []
    res = profile("--device", "cpu", "--quick", "--out", str(out), "--csv", "--markdown", *extra,
                  env={"DISTRO_KERNELS_CACHE": str(out / "cache")})
    assert res.returncode == 0, res.stderr[-3000:]
    key = device.cpu_key(device.cpu_model(Path("/proc/cpuinfo").read_text()), device.kernel_variant())
    return out, key, res


def _doc(out: Path, key: str) -> dict:
    return json.loads((out / f"{key}.json").read_text())


def test_quick_run_writes_files_named_by_device_key(quick):
    out, key, res = quick
    names = {p.name for p in out.iterdir() if p.is_file()}
    assert {f"{key}.json", f"{key}.csv", f"{key}.md"} <= names
    assert HAS_MPL == (f"{key}.png" in names)
    if HAS_MPL:
        assert (out / f"{key}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"device {key}" in res.stdout and "vs eager" in res.stdout
    assert "] 0/8 " in res.stderr and "] 0/8 " not in res.stdout  # the progress bar is on stderr


def test_quick_json_schema_and_versions(quick):
    out, key, _ = quick
    doc = _doc(out, key)
    assert doc["schema"] == SCHEMA
    assert doc["device"]["key"] == key and doc["device"]["type"] == "cpu"
    assert doc["device"]["kernel_variant"] == device.kernel_variant()
    assert doc["versions"]["torch"] == torch.__version__
    assert {"distro_kernels", "triton", "numpy", "python"} <= set(doc["versions"])
    assert doc["clock"] == "perf_counter"
    assert doc["copy_bandwidth"]["gb_s"] > 0 and doc["copy_bandwidth"]["runs"] >= 2
    assert doc["config"] == {**doc["config"], "k": 32, "chunk": 64, "peers": 8, "codec": "f32", "quick": True}
    assert [l["name"] for l in doc["config"]["layouts"]] == ["512x1024"]
    assert doc["dispatch"] == ("native" if "cpu" in dispatch.device_types("native") else "reference")
    for row in doc["rows"]:
        assert set(ROW_FIELDS) <= set(row)
    ok = [r for r in doc["rows"] if r["status"] == "ok"]
    assert {r["op"] for r in ok} == set(OPS)
    assert all(r["status"] == "ok" for r in doc["rows"])  # nothing was asked for that cannot run
    skipped = {s["backend"]: s for s in doc["skipped"]}  # default: every backend, each run or skipped
    assert set(skipped) | set(doc["backends"]) == {"reference", "native", "triton"}
    assert not any(s["requested"] for s in skipped.values()) and all(s["reason"] for s in skipped.values())


def test_quick_rates_agree_with_bytes_over_time(quick):
    out, key, _ = quick
    doc = _doc(out, key)
    copy = doc["copy_bandwidth"]
    assert math.isclose(copy["gb_s"], copy["bytes"] / copy["median_s"] / 1e9, rel_tol=1e-9)
    medians = {(r["op"], r["backend"]): r["median_s"] for r in doc["rows"] if r["status"] == "ok"}
    for r in doc["rows"]:
        if r["status"] != "ok":
            continue
        assert r["runs"] >= 2 and r["min_s"] <= r["median_s"] <= r["max_s"]
        assert math.isclose(r["spread"], (r["max_s"] - r["min_s"]) / r["median_s"], rel_tol=1e-9)
        assert math.isclose(r["gb_s"], r["bytes"] / r["median_s"] / 1e9, rel_tol=1e-9)
        assert math.isclose(r["roofline_fraction"], r["gb_s"] / copy["gb_s"], rel_tol=1e-9)
        eager = medians.get((r["op"], "eager"))
        assert (r["ratio_vs_eager"] is None) == (eager is None)
        if eager is not None:
            assert math.isclose(r["ratio_vs_eager"], eager / r["median_s"], rel_tol=1e-9)


def test_quick_has_the_eager_baseline_of_the_same_run(quick):
    out, key, _ = quick
    doc = _doc(out, key)
    for op in EAGER_OPS:
        rows = [r for r in doc["rows"] if r["op"] == op and r["status"] == "ok"]
        assert {"eager", "reference"} <= {r["backend"] for r in rows}
        assert [r for r in rows if r["backend"] == "eager"][0]["ratio_vs_eager"] == 1.0


def test_quick_bytes_are_the_op_floors(quick):
    """512x1024 in 64x64 chunks: 128 chunks, 32 kept each; floors from first principles."""
    out, key, _ = quick
    numel, kept, peers = 512 * 1024, 128 * 32, 8
    expect = {
        "encode": numel * 12 + kept * 8, "compress": numel * 4 + kept * 8,
        "decode": numel * 4 + peers * kept * 8, "decode+sign": numel * 4 + peers * kept * 8,
        "pack_signs": kept * 4 + kept // 8, "unpack_signs": kept * 4 + kept // 8,
    }
    for r in _doc(out, key)["rows"]:
        if r["op"] in expect:
            assert r["bytes"] == expect[r["op"]], r["op"]
        elif r["op"] == "payload_encode":
            assert r["bytes"] > kept * 8  # plus the message
        assert r["numel"] == numel and r["tensors"] == 1


def test_quick_csv_and_markdown_hold_every_row(quick):
    out, key, _ = quick
    doc = _doc(out, key)
    with open(out / f"{key}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(doc["rows"])
    assert {r["device_key"] for r in rows} == {key}
    for got, want in zip(rows, doc["rows"]):
        assert got["op"] == want["op"] and got["backend"] == want["backend"]
        if want["median_s"] is not None:
            assert math.isclose(float(got["median_s"]), want["median_s"], rel_tol=1e-12)
    md = (out / f"{key}.md").read_text()
    assert "| op | layout | backend | median |" in md and f"device {key}" in md
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + sum(
        r["status"] != "unavailable" for r in doc["rows"])


def test_compare_prints_one_table_across_device_keys(quick, tmp_path):
    out, key, _ = quick
    doc = _doc(out, key)
    gpu = json.loads(json.dumps(doc))
    gpu["device"].update(key="nvidia-h200-sm_90", name="NVIDIA H200", type="cuda")
    for r in gpu["rows"]:  # a GPU 10x faster on every row: the CPU is the slowest member
        if r["median_s"]:
            r["median_s"] /= 10
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    res = profile("compare", str(out / f"{key}.json"), str(tmp_path / "gpu.json"))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert key in lines[0] and "nvidia-h200-sm_90" in lines[0] and "slowest" in lines[0]
    auto = [line for line in lines if " auto " in line]
    assert len(auto) == len(OPS) - 2  # the wire rows are not a backend pick
    assert all(line.rstrip().endswith(key) for line in auto)
    header, table, _ = compare.table([doc, gpu])
    assert header[3:5] == [key, "nvidia-h200-sm_90"]
    assert {tuple(row[:3]) for row in table} >= {(op, "512x1024", "eager") for op in EAGER_OPS}


def test_compare_rejects_what_is_not_a_profile(tmp_path, capsys):
    (tmp_path / "x.json").write_text('{"rows": []}')
    (tmp_path / "y.json").write_text("not json")
    for name in ("x.json", "y.json", "missing.json"):
        rc, _, err = run_main(capsys, "compare", str(tmp_path / name))
        assert rc == 2 and str(tmp_path / name) in err
    assert run_main(capsys, "frobnicate")[0] == 2
    assert run_main(capsys, "compare")[0] == 2


def test_unavailable_backends_are_reported_not_dropped(tmp_path, capsys):
    rc, out, err = run_main(capsys, "--device", "cpu", "--layout", "tiny", "--ops", "encode,payload_parse",
                            "--quick", "--backends", "reference,triton", "--out", str(tmp_path),
                            "--no-progress")
    assert rc == 0, err
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    skipped = {s["backend"]: s for s in doc["skipped"]}
    assert skipped["triton"]["requested"]
    assert "does not run on cpu tensors" in skipped["triton"]["reason"]
    assert "native" in skipped and not skipped["native"]["requested"]
    rows = {(r["op"], r["backend"]): r for r in doc["rows"]}
    assert rows[("encode", "triton")]["status"] == "unavailable"
    assert rows[("encode", "triton")]["reason"] == skipped["triton"]["reason"]
    assert rows[("encode", "reference")]["status"] == "ok" and ("encode", "native") not in rows
    assert "not profiled: triton (requested)" in out


def test_unavailable_reason_comes_from_the_registry(monkeypatch):
    monkeypatch.setitem(dispatch._modules, "triton", {})  # as if Triton never registered
    monkeypatch.setitem(dispatch.unavailable, "triton", "triton not importable (test)")
    run, skipped = select_backends(["triton", "reference"], torch.device("cpu"))
    assert run == ["reference"]
    entry = [s for s in skipped if s["backend"] == "triton"][0]
    assert entry["requested"] and entry["reason"] == "not available: triton not importable (test)"
    with pytest.raises(ValueError, match="unknown backend"):
        select_backends(["native", "nonsense"], torch.device("cpu"))


def test_usage_errors_exit_2_before_timing(tmp_path, capsys):
    for args, words in ((["--layout", "nonsense"], "unknown layout"), (["--backends", "bogus"], "unknown backend"),
                        (["--ops", "encode,nope"], "unknown ops"), (["--k", "0"], "--k"),
                        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "device")):
        rc, _, err = run_main(capsys, "--device", "cpu", *args, "--out", str(tmp_path / "x"), "--no-progress")
        assert rc == 2 and words in err, (args, err)
    assert not (tmp_path / "x").exists()


def test_plot_without_matplotlib_fails_first_with_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    rc, _, err = run_main(capsys, "--device", "cpu", "--layout", "tiny", "--plot", "--out", str(tmp_path / "p"))
    assert rc == 2
    assert "pip install 'distro_kernels[plot]'" in err
    assert not (tmp_path / "p").exists()  # refused before any timing or file


def test_help_lists_profile():
    from distro_kernels.__main__ import build_parser

    parser = build_parser()
    assert "profile" in parser.format_help()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["profile"].format_help()
    assert all(opt in text for opt in ("--layout-json", "--backends", "--codec", "--tune", "--plot", "compare"))


# ------------------------------------------------------------------ layouts


def test_named_layouts():
    llama = layouts.parse_layout("llama-1b")
    assert llama.numel == 1_100_048_384 and len(llama.shapes) == 201  # TinyLlama-1.1B
    assert layouts.parse_layout("llama-1b-block").shapes == llama.shapes[1:10]
    assert layouts.parse_layout("4096x4096").shapes == ((4096, 4096),)
    assert layouts.parse_layout("7").shapes == ((7,),)
    assert [l.name for l in layouts.parse_layouts(["tiny,3x5x7", "64"])] == ["tiny", "3x5x7", "64"]
    for bad in ("0x4", "4x", "x", "llama", "4096*4096"):
        with pytest.raises(ValueError):
            layouts.parse_layout(bad)


def test_layout_json(tmp_path):
    good = tmp_path / "mine.json"
    good.write_text("[[96, 64], [7], [2, 3, 5]]")
    assert layouts.load_layout_json(good).shapes == ((96, 64), (7,), (2, 3, 5))
    named = tmp_path / "n.json"
    named.write_text('{"name": "my-model", "shapes": [[4, 4]]}')
    assert layouts.load_layout_json(named).name == "my-model"
    for text, words in (("{", "not JSON"), ("[]", "non-empty"), ("[[0, 4]]", "dimension"),
                        ("[[4, true]]", "dimension"), ('[["4"]]', "dimension"), ("[4]", "shape"),
                        ('{"name": 3, "shapes": [[4]]}', "name"), ("[[1,1,1,1,1,1,1,1,1]]", "shape")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ValueError, match=words):
            layouts.load_layout_json(bad)
    with pytest.raises(ValueError, match="missing"):
        layouts.load_layout_json(tmp_path / "missing.json")


def test_layout_json_runs_end_to_end(tmp_path, capsys):
    spec = tmp_path / "odd.json"
    spec.write_text('{"name": "odd", "shapes": [[31, 64], [5], [3, 8, 16]]}')
    rc, _, err = run_main(capsys, "--device", "cpu", "--layout-json", str(spec), "--ops", "decode+sign,payload_parse",
                          "--backends", "reference", "--quick", "--out", str(tmp_path), "--no-progress")
    assert rc == 0, err
    doc = json.loads(next(tmp_path.glob("*-*.json")).read_text())
    assert {r["layout"] for r in doc["rows"]} == {"odd"}
    assert all(r["status"] == "ok" for r in doc["rows"])


def test_workload_payloads_are_valid_and_floors_match(tmp_path):
    lay = layouts.parse_layout("tiny")
    for codec in ("f32", "bf16", "sign"):
        w = Workload(lay, Config(k=5, peers=3, codec=codec), torch.device("cpu"))
        idx, vals = w.payloads(0)
        import distro_kernels as dk

        outs = dk.decompress_many(idx, vals, w.shapes, 64, value_codec=codec, sign=True, backend="reference")
        assert tuple(tuple(o.shape) for o in outs) == lay.shapes
        kept = sum(p.n_chunks * p.k_eff(5) for p in w.plans)
        assert w.kept == kept
        width = {"f32": 4, "bf16": 2, "sign": 1 / 8}[codec]
        assert w.op_bytes("decode") == lay.numel * 4 + math.ceil(3 * kept * (4 + width))


# ------------------------------------------------------------------ device keys (GPU logic, no GPU)


def test_device_keys():
    assert device.slug("AMD EPYC 7B13 64-Core Processor") == "amd-epyc-7b13"
    assert device.slug("Intel(R) Xeon(R) Platinum 8480+") == "intel-xeon-platinum-8480"
    assert device.slug("Intel(R) Core(TM) i7-9750H CPU @ 2.60GHz") == "intel-core-i7-9750h"
    assert device.cpu_model("processor\t: 0\nmodel name\t: AMD EPYC\nflags: avx2\n") == "AMD EPYC"
    assert device.cpu_model("processor : 0\nHardware : BCM2835\n") == "BCM2835"
    assert device.cpu_key("AMD EPYC", "avx2") == "amd-epyc-avx2"
    assert device.cpu_key("AMD EPYC", None) == "amd-epyc-noext"
    assert device.gpu_arch(9, 0) == "sm_90" and device.gpu_arch(8, 6) == "sm_86"
    assert device.gpu_arch(9, 4, "gfx942:sramecc+:xnack-", is_hip=True) == "gfx942"
    assert device.gpu_arch(9, 0, None, is_hip=True) == "gfx90"
    assert device.gpu_key("NVIDIA H200", "sm_90") == "nvidia-h200-sm_90"
    assert device.gpu_key("AMD Instinct MI300X", "gfx942") == "amd-instinct-mi300x-gfx942"
    info = device.describe(torch.device("cpu"))
    assert info["key"].endswith(device.kernel_variant() or "noext") and info["cache_bytes"] > 0
    with pytest.raises(ValueError):
        device.describe(torch.device("meta"))


# ------------------------------------------------------------------ timing


class FakeEvent:
    """Stands for torch.cuda.Event: records the fake GPU clock at record()."""

    def __init__(self, log, now):
        self.log, self.now, self.t = log, now, None

    def record(self):
        self.t = self.now[0]
        self.log.append("record")

    def synchronize(self):
        self.log.append("sync")

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3  # milliseconds, as CUDA reports


def test_cuda_clock_flushes_then_times_between_events():
    log, now = [], [0.0]

    class Flush:
        def zero_(self):
            log.append("flush")

    clock = timing.CudaClock(torch.device("cpu"), 0, event=lambda: FakeEvent(log, now), flush_buffer=Flush(),
                             synchronize=lambda: log.append("device-sync"))

    def kernel():
        log.append("kernel")
        now[0] += 0.25
    assert clock.time(kernel) == pytest.approx(0.25)
    assert log == ["flush", "record", "kernel", "record", "sync"]


def test_rotation_count():
    cache = 32 << 20
    assert timing.rotation_count(64 << 20, cache) == 1
    assert timing.rotation_count(16 << 20, cache) == 4
    assert timing.rotation_count(1000, cache) == timing.MAX_ROTATION
    assert timing.rotation_count(600 << 20, cache, max_bytes=1 << 30) == 1
    assert timing.rotation_count(0, cache) == 1


def test_interleaved_round_robin_rotation_and_errors():
    calls, now = [], [0.0]

    class Clock:
        def time(self, fn):
            start = now[0]
            fn()
            return now[0] - start

    def case(name, cost, fail_at=None):
        count = [0]

        def run(state):
            count[0] += 1
            if fail_at is not None and count[0] == fail_at:
                raise RuntimeError("boom")
            calls.append((name, state))
            now[0] += cost
        made = iter(range(100))
        return timing.Case(make=lambda: next(made), run=run, set_bytes=16 << 20)

    cases = {"a": case("a", 1.0), "b": case("b", 3.0), "c": case("c", 1.0, fail_at=3)}
    out = timing.measure_interleaved(cases, Clock(), timing.RunPolicy(2, 4, 5.0), rotate_cache_bytes=32 << 20)
    assert out["a"].samples == [1.0] * 4  # max_runs
    assert out["b"].samples == [3.0, 3.0]  # budget spent after min_runs
    assert isinstance(out["c"], RuntimeError)  # reported, the others went on
    assert calls[:3] == [("a", 0), ("b", 0), ("c", 0)]  # one warm-up each, on set 0
    assert calls[3:6] == [("a", 1), ("b", 1), ("c", 1)]  # then round-robin over 4 rotating sets
    assert [s for n, s in calls if n == "a"] == [0, 1, 2, 3, 0]


def test_timing_stats():
    t = timing.Timing([3.0, 1.0, 2.0, 10.0])
    assert t.median_s == 2.5 and t.runs == 4 and t.spread == pytest.approx(9.0 / 2.5)


# ------------------------------------------------------------------ tuning


def test_tuning_cache_round_trip_and_validation(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.ENV, str(tmp_path))
    assert tuning.cache_path() == tmp_path / "tuning.json"
    assert tuning.settings("native", "k") == {}
    tuning.store("k", "native", {"threads": 2}, {"seconds": 1.0})
    tuning.store("k", "triton", {"ENCODE_KB": 32})
    tuning.store("other", "native", {"threads": 1})
    assert tuning.settings("native", "k") == {"threads": 2}
    assert tuning.settings("triton", "k") == {"ENCODE_KB": 32}
    with pytest.raises(ValueError):
        tuning.store("k", "triton", {"ENCODE_KB": 5})
    with pytest.raises(ValueError):
        tuning.store("k", "native", {"rm -rf": 1})
    doc = json.loads((tmp_path / "tuning.json").read_text())
    doc["devices"]["k"]["triton"]["settings"].update(ENCODE_KB=7, __class__=1, WARPS_SMALL=True)
    (tmp_path / "tuning.json").write_text(json.dumps(doc))
    assert tuning.settings("triton", "k") == {}  # only valid, known settings are read back
    (tmp_path / "tuning.json").write_text("{broken")
    with pytest.warns(UserWarning, match="unreadable"):
        assert tuning.settings("native", "k") == {}


def test_tuning_applies_to_modules_and_threads(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.ENV, str(tmp_path))
    fake = types.SimpleNamespace(ENCODE_KB=16, ENCODE_WARPS_LARGE={"cuda": 8, "hip": 4}, WARPS_SMALL=4)
    tuning.store("gpu-key", "triton", {"ENCODE_KB": 32, "ENCODE_WARPS_LARGE": 16})
    assert tuning.apply("triton", "gpu-key", fake) == {"ENCODE_KB": 32, "ENCODE_WARPS_LARGE": 16}
    assert fake.ENCODE_KB == 32 and fake.ENCODE_WARPS_LARGE[tuning.vendor()] == 16
    assert fake.WARPS_SMALL == 4 and len(fake.ENCODE_WARPS_LARGE) == 2
    threads = torch.get_num_threads()
    try:
        tuning.store("cpu-key", "native", {"threads": 1})
        assert tuning.apply("native", "cpu-key") == {"threads": 1} and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_coordinate_search_keeps_only_real_gains():
    cost = {("a", 1): 1.0, ("a", 2): 0.5, ("a", 3): 0.49, ("b", 1): 0.0, ("b", 2): 0.2}

    def measure(s):
        if s["b"] == 3:
            raise RuntimeError("does not compile")
        return cost[("a", s["a"])] + cost[("b", s["b"])]
    best, seconds, trials = tune.coordinate_search({"a": [1, 2, 3], "b": [1, 2, 3]}, {"a": 1, "b": 2}, measure)
    assert best == {"a": 2, "b": 1}  # a=3 is < 3% better than a=2: noise, not kept
    assert seconds == 0.5
    assert any("error" in t for t in trials) and len(trials) == 5
    assert tune.thread_candidates(6) == [1, 2, 4, 6] and tune.thread_candidates(1) == [1]


def test_tune_cpu_threads_for_real(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(tuning.ENV, str(tmp_path / "c"))
    threads = torch.get_num_threads()
    try:
        rc, out, err = run_main(capsys, "--device", "cpu", "--layout", "tiny", "--ops", "encode", "--backends",
                                "native", "--quick", "--tune", "--out", str(tmp_path), "--no-progress")
    finally:
        torch.set_num_threads(threads)
    if "cpu" not in dispatch.device_types("native"):
        assert rc == 0 and "not available" in out
        return
    assert rc == 0, err
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    cache = json.loads((tmp_path / "c" / "tuning.json").read_text())
    best = cache["devices"][doc["device"]["key"]]["native"]["settings"]
    assert best["threads"] in tune.thread_candidates(device.usable_cpus())
    assert doc["tuning"]["native"]["best"] == best and doc["settings"]["native"] == best
    assert doc["device"]["threads"] == best["threads"]
    tried = [t["settings"]["threads"] for t in doc["tuning"]["native"]["trials"]]
    assert sorted(tried) == sorted(set(tune.thread_candidates(device.usable_cpus())) | {threads})


# ------------------------------------------------------------------ the triton backend's path, on CPU

HAS_TRITON = importlib.util.find_spec("triton") is not None


def test_triton_rows_through_the_interpreter(tmp_path):
    """The GPU backend's rows, run by Triton's interpreter on CPU tensors (a smoke run)."""
    res = profile("--device", "cpu", "--triton-interpreter", "--backends", "triton", "--layout", "7x64",
                  "--ops", "decode+sign,unpack_signs", "--quick", "--out", str(tmp_path), "--no-progress",
                  env={"TRITON_INTERPRET": "1"})
    if not HAS_TRITON:
        assert res.returncode == 2 and "triton" in res.stderr
        return
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(next(tmp_path.glob("*-triton-interpreter.json")).read_text())
    assert doc["config"]["triton_interpreter"] is True
    rows = {(r["op"], r["backend"]): r for r in doc["rows"]}
    assert rows[("decode+sign", "triton")]["status"] == "ok"
    assert rows[("decode+sign", "eager")]["status"] == "ok"
    assert rows[("unpack_signs", "triton")]["status"] == "ok"


def test_triton_interpreter_flag_needs_the_environment(tmp_path, capsys):
    if HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1":  # this process runs the interpreter: the flag is accepted
        import distro_kernels.triton as dk_triton

        dk_triton.enable_interpreter()
        assert dispatch.resolve("triton", torch.device("cpu")) is not None
        return
    rc, _, err = run_main(capsys, "--device", "cpu", "--triton-interpreter", "--out", str(tmp_path / "t"))
    assert rc == 2
    assert ("TRITON_INTERPRET=1" in err) if HAS_TRITON else ("triton" in err)
    assert not (tmp_path / "t").exists()


def test_triton_tuner_sets_and_restores_the_backend_constants():
    if not HAS_TRITON:
        with pytest.raises(ImportError):
            tune._applier("triton")
        return
    from distro_kernels.triton import impl as tb

    start, set_ = tune._applier("triton")
    assert set(start) == set(tuning.TUNABLES["triton"]) and start["ENCODE_KB"] == tb.ENCODE_KB
    try:
        set_({**start, "ENCODE_KB": 32, "ENCODE_WARPS_LARGE": 16})
        assert tb.ENCODE_KB == 32 and tb.ENCODE_WARPS_LARGE[tuning.vendor()] == 16
    finally:
        set_(start)
    assert tuning.module_settings(tb, start) == start


def test_apply_once_sets_a_backend_module_once_per_device(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.ENV, str(tmp_path))
    cpu = torch.device("cpu")
    key = device.describe(cpu)["key"]
    fake = types.SimpleNamespace(ENCODE_KB=16, ROWS_TILE=2048)
    tuning.store(key, "triton", {"ENCODE_KB": 8})
    tuning.apply_once("triton", fake, cpu)
    assert fake.ENCODE_KB == 8 and fake.ROWS_TILE == 2048
    tuning.store(key, "triton", {"ENCODE_KB": 32})
    tuning.apply_once("triton", fake, cpu)  # already applied in this process: no file read
    assert fake.ENCODE_KB == 8


def test_sign_codec_rows_run_and_use_the_codec_floor(tmp_path, capsys):
    rc, _, err = run_main(capsys, "--device", "cpu", "--layout", "29x48", "--ops", "decode,payload_parse",
                          "--codec", "sign", "--peers", "3", "--k", "5", "--quick", "--out", str(tmp_path),
                          "--no-progress")
    assert rc == 0, err
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert doc["config"]["codec"] == "sign" and all(r["status"] == "ok" for r in doc["rows"])
    kept = 5  # 29x48 is one chunk (29 and 48 are <= 64), k_eff = 5
    decode = [r for r in doc["rows"] if r["op"] == "decode"][0]
    assert decode["bytes"] == 29 * 48 * 4 + math.ceil(3 * kept * (4 + 1 / 8))
