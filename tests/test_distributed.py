"""Data parallelism: 2 gloo processes on CPU reach the weights of 1 process, same global batch.

Each process takes half of every global batch (``EpochBatches``) and DistributedDataParallel
averages their gradients. Batch normalization is made global (``GlobalBatchNorm2d``:
per-channel sums all-reduced in forward and backward), so the two processes compute the
very function one process computes on the whole batch; only the order of floating-point
sums differs. Plain per-process BatchNorm would normalize by half-batch statistics, a
different function (the last check shows how far that lands).
"""

import csv
import os
import subprocess
import sys

import torch

from experiments import fit, load_checkpoint, resolve_config

N_TRAIN = 256  # a multiple of the global batch: no incomplete batch to drop
FRACTION = N_TRAIN / 1257
OPTIONS = {"widths": [8, 16], "epochs": 2, "batch_size": 32, "train_fraction": FRACTION}
ARGS = ["--widths", "8,16", "--epochs", "2", "--batch-size", "32",
        "--train-fraction", repr(FRACTION)]  # fmt: skip


def _max_diff(a, b):
    keys = [k for k in a if a[k].is_floating_point()]
    return max((a[k] - b[k]).abs().max().item() for k in keys)


def test_two_gloo_processes_match_one_process(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "experiments.train", *ARGS, "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    single = resolve_config(**OPTIONS, out=str(tmp_path / "single"))
    report = fit(single, log=lambda *_: None)
    assert report["train_images"] == N_TRAIN and report["processes"] == 1

    ddp = load_checkpoint(out / "last.pt")
    one = load_checkpoint(tmp_path / "single" / "last.pt")
    assert ddp["epoch"] == one["epoch"] == 2
    # Parameters and batch-norm running statistics, after 16 SGD steps.
    diff = _max_diff(ddp["model"], one["model"])
    assert diff < 1e-4, diff
    with open(out / "metrics.csv") as f:
        ddp_val = [float(row["val_loss"]) for row in csv.DictReader(f)]
    with open(tmp_path / "single" / "metrics.csv") as f:
        one_val = [float(row["val_loss"]) for row in csv.DictReader(f)]
    assert torch.allclose(torch.tensor(ddp_val), torch.tensor(one_val), rtol=1e-4)

    # Scale of the tolerance: one process with each rank's local batch of 16 ends far away.
    half = resolve_config(**{**OPTIONS, "batch_size": 16}, out=str(tmp_path / "half"))
    fit(half, log=lambda *_: None)
    assert _max_diff(load_checkpoint(tmp_path / "half" / "last.pt")["model"], one["model"]) > 1e-2
