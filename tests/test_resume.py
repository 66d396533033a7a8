"""Interrupted training: SIGKILL mid-epoch, --resume, and the same final metrics."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from experiments import (
    CheckpointError,
    ConfigError,
    fit,
    load_checkpoint,
    resolve_config,
    save_checkpoint,
)

OPTIONS = {"widths": [8, 16], "epochs": 3, "batch_size": 32, "checkpoint_every": 5, "seed": 11}
ARGS = ["--widths", "8,16", "--epochs", "3", "--batch-size", "32", "--checkpoint-every", "5",
        "--seed", "11"]  # fmt: skip


def _metrics(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("seconds")
    return rows


def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "experiments.train", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _mid_epoch_state(last):
    try:
        s = load_checkpoint(last)
    except CheckpointError:
        return None  # not written yet
    return (s["epoch"], s["batch"]) if s["epoch"] >= 1 and s["batch"] > 0 else None


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    out = tmp_path / "killed"
    proc = _run([*ARGS, "--out", str(out)])
    killed_at = None
    deadline = time.monotonic() + 300
    while killed_at is None and proc.poll() is None and time.monotonic() < deadline:
        killed_at = _mid_epoch_state(out / "last.pt")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert killed_at is not None, "the run ended before a mid-epoch checkpoint was seen"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "report.json").exists()
    state = load_checkpoint(out / "last.pt")  # intact despite the kill
    assert (state["epoch"], state["batch"]) >= killed_at and state["epoch"] < 3

    resumed = _run(["--resume", "--out", str(out)])
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr.decode()
    assert b"resuming" in stdout

    clean = resolve_config(**OPTIONS, out=str(tmp_path / "clean"))
    report = fit(clean, log=lambda *_: None)
    assert _metrics(out / "metrics.csv") == _metrics(tmp_path / "clean" / "metrics.csv")
    got = json.loads((out / "report.json").read_text())
    assert (got["test_accuracy"], got["test_loss"]) == (
        report["test_accuracy"],
        report["test_loss"],
    )
    a = load_checkpoint(out / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "clean" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_options(tmp_path):
    cfg = resolve_config(widths=[4, 8], epochs=1, train_fraction=0.1, out=str(tmp_path))
    fit(cfg, log=lambda *_: None)
    r = _run(["--resume", "--out", str(tmp_path), "--lr", "0.3"])
    _, err = r.communicate(timeout=300)
    assert r.returncode == 2
    assert b"differ from the run being resumed" in err and b"lr_schedule" in err
    # A truncated last.pt is refused with a clear error, and nothing else is touched.
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    r = _run(["--resume", "--out", str(tmp_path)])
    _, err = r.communicate(timeout=300)
    assert r.returncode == 2 and b"truncated or corrupted" in err


def test_resume_refuses_a_run_whose_random_methods_were_drawn_per_batch(tmp_path):
    # A training state written before --random-methods split each batch (no record of
    # how they trained) cannot end where an uninterrupted run ends: refused, not resumed.
    cfg = resolve_config(
        widths=[4, 8],
        epochs=2,
        train_fraction=0.1,
        random_methods=["euler", "midpoint"],
        out=str(tmp_path),
    )
    fit(cfg, log=lambda *_: None)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["random_options"] == "shares"
    del state["random_options"]
    save_checkpoint(tmp_path / "last.pt", state)
    with pytest.raises(ConfigError, match="drew them once per batch"):
        fit(cfg, resume=True, log=lambda *_: None)
