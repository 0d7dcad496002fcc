"""``python -m distro_kernels demo``: a tiny real run (2 peer processes) and its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from distro_kernels.app import data, model
from distro_kernels.app.train import DemoConfig, lr_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--peers", "2", "--steps", "6", "--layers", "1", "--d-model", "32", "--heads", "2",
        "--context", "16", "--batch", "4", "--eval-batches", "2", "--eval-every", "3"]


def _run(*args, timeout=240):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "distro_kernels", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_knobs():
    out = _run("demo", "--help")
    assert out.returncode == 0, out.stderr
    for knob in ("--peers", "--steps", "--layers", "--d-model", "--k", "--chunk", "--codec",
                 "--json", "--plot", "--lr", "--baseline-lr", "--backend"):
        assert knob in out.stdout


def test_no_command_prints_usage():
    out = _run()
    assert out.returncode == 2 and "demo" in out.stdout


def test_tiny_demo_run_writes_table_and_json(tmp_path):
    path = tmp_path / "result.json"
    out = _run("demo", *TINY, "--json", str(path), "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "held-out loss" in out.stdout and "bytes sent / peer / step" in out.stdout
    s = json.loads(path.read_text())
    for field in ("demo_heldout_loss", "baseline_heldout_loss", "demo_bytes_per_peer_step",
                  "baseline_bytes_per_peer_step", "demo_train_loss", "baseline_train_loss",
                  "demo_seconds_per_step", "baseline_seconds_per_step", "bytes_ratio"):
        assert field in s, field
    assert s["steps"] == 6 and s["peers"] == 2
    assert 0 < s["demo_heldout_loss"] < 10 and 0 < s["baseline_heldout_loss"] < 10
    assert s["baseline_bytes_per_peer_step"] == 4 * s["params"]
    assert 0 < s["demo_bytes_per_peer_step"] < s["baseline_bytes_per_peer_step"]
    assert s["demo_peers_agree"] and s["baseline_peers_agree"]  # every peer ends identical
    assert s["demo_steps_with_left_out_peers"] == 0
    assert len(s["demo_train_curve"]) == 6 and [p[0] for p in s["demo_heldout_curve"]] == [3, 6]


def test_signed_exchange_gives_the_same_training_as_gloo(tmp_path):
    """``--exchange signed`` (store exchange, Ed25519 payloads, run manifest) trains exactly
    as the gloo exchange does: same losses, payloads 64 bytes (the signature) longer."""
    out = {}
    for exchange in ("gloo", "signed"):
        path = tmp_path / f"{exchange}.json"
        run = _run("demo", *TINY, "--only", "demo", "--exchange", exchange, "--json", str(path),
                   "--no-progress")
        assert run.returncode == 0, run.stdout + run.stderr
        out[exchange] = json.loads(path.read_text())
    gloo, signed = out["gloo"], out["signed"]
    assert signed["demo_transport"] == "StoreTransport" and gloo["demo_transport"] == "GlooTransport"
    assert signed["demo_train_curve"] == gloo["demo_train_curve"]
    assert signed["demo_heldout_loss"] == gloo["demo_heldout_loss"] and signed["demo_peers_agree"]
    assert signed["demo_bytes_per_peer_step"] == gloo["demo_bytes_per_peer_step"] + 64


def test_plot_without_matplotlib_fails_clearly(tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        out = _run("demo", *TINY, "--plot", str(tmp_path / "x.png"))
        assert out.returncode != 0 and "matplotlib" in (out.stderr + out.stdout)
    else:
        pytest.skip("matplotlib is installed; the missing-extra path cannot be exercised")


# ----------------------------------------------------------------------------- parts


def test_data_split_is_disjoint_and_deterministic():
    files = data.list_sources()
    assert files == sorted(files) and len(files) > 50
    shards = [data.split(files, r, 3)[0] for r in range(3)]
    heldout = data.split(files, 0, 3)[1]
    assert heldout and not set(heldout) & set().union(*map(set, shards))
    assert sum(map(len, shards)) + len(heldout) == len(files)
    shard = data.Shard(1, 3, train_bytes=50_000, heldout_bytes=20_000)
    a, b = shard.batch(0, 5, 4, 16), shard.batch(0, 5, 4, 16)
    assert a.shape == (4, 17) and torch.equal(a, b)
    assert not torch.equal(a, shard.batch(0, 6, 4, 16))


def test_model_size_and_same_init():
    cfg = model.ModelConfig()
    m1, m2 = model.build_model(cfg, 0), model.build_model(cfg, 0)
    assert 450_000 < model.n_params(m1) < 500_000
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    loss = m1.loss(torch.randint(0, 256, (2, cfg.context + 1)))
    assert abs(loss.item() - 5.545) < 0.3  # ~ln(256) at init


def test_lr_schedule_warms_up_and_decays():
    cfg = DemoConfig(steps=100)
    lrs = [lr_at(s, cfg, 1.0) for s in range(100)]
    assert lrs[0] < lrs[4] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(cfg.min_lr_ratio, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))


def test_custom_trainer_example_runs():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "custom_trainer.py"),
                          "--steps", "3", "--peers", "2"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bit-identical parameters: True" in out.stdout
