"""``python -m experiments.table1``: the paper's Table 1 end to end on a tiny image folder,
resumption of a half-done table, and the recipes' values (SPEC.md, "Training recipe")."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import neuralpde
from experiments import build_model, resolve_config
from experiments._table1 import TABLE1_ARCHS, budget_options, pick_examples, table1
from experiments.table1 import main
from experiments.train import config_from_args

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("NEURALPDE_CIFAR10_JPEG", ROOT.parent / "shared/data/cifar10-jpeg"))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"]
CLASSES += ["truck"]
# Tiny runs skip compilation (a minute per network), which the cpu budget turns on.
TINY = ["--epochs", "1", "--widths", "4,8", "--threads", "1", "--no-compile"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """train/<class>/ (5 images each) and test/<class>/ (2 each) of class-coloured noise."""
    root = tmp_path_factory.mktemp("cifar-like")
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        for k, c in enumerate(CLASSES):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                x = rng.integers(0, 60, (32, 32, 3))
                x[..., k % 3] += 18 * k
                Image.fromarray(x.astype(np.uint8)).save(root / split / c / f"{i:04d}.png")
    return root


def test_table_end_to_end(folder, tmp_path, capsys):
    out = tmp_path / "table"
    assert main(["--data-root", str(folder), "--out", str(out), *TINY]) == 0
    r = json.loads((out / "results.json").read_text())
    assert list(r["networks"]) == list(TABLE1_ARCHS)
    nets = r["networks"]
    # The paper's CIFAR-10 column beside ours; the ResNet control has none.
    assert [nets[a]["paper_accuracy"] for a in TABLE1_ARCHS] == [0.885, 0.893, 0.892, None]
    assert [nets[a]["paper_loss"] for a in TABLE1_ARCHS] == [0.333, 0.349, 0.333, None]
    for arch in TABLE1_ARCHS:
        n = nets[arch]
        report = json.loads((out / arch / "report.json").read_text())
        assert n["test_accuracy"] == report["test_accuracy"]
        assert 0 <= n["test_accuracy"] <= 1 and n["params"] == report["params"]
        assert report["arch"] == arch and report["test_images"] == 20
    assert nets["hamiltonian"]["params"] < nets["parabolic"]["params"] < nets["resnet"]["params"]
    p = r["protocol"]
    assert (p["widths"], p["epochs"], p["batch_size"], p["bn_eps"]) == ([4, 8], 1, 125, 1e-4)
    assert (p["train_images"], p["val_images"], p["test_images"]) == (40, 10, 20)
    assert r["command"].startswith("python -m experiments.table1 --data-root")
    assert r["load_average"]["samples"] >= 1 and "CPU cores" in r["machine"]
    gap = max(nets["resnet"]["test_accuracy"] - nets[a]["test_accuracy"] for a in TABLE1_ARCHS[:3])
    assert r["max_gap_to_resnet"] == pytest.approx(gap)
    md = (out / "results.md").read_text()
    assert "88.5 %" in md and "89.3 %" in md and "89.2 %" in md
    assert all(f"| {a} |" in md for a in TABLE1_ARCHS)
    for fig in ("fig1_probabilities.png", "fig3_confusion.png", "fig4_validation.png"):
        assert (out / fig).stat().st_size > 10_000, fig
        assert f"]({fig})" in md
    assert "resnet        test accuracy" in capsys.readouterr().out


class _Stop(Exception):
    pass


def test_resume_keeps_finished_networks_and_continues_the_half_done_one(folder, tmp_path):
    out = tmp_path / "table"
    opts = {"widths": [4, 8], "threads": 1, "epochs": 2, "archs": ("parabolic", "resnet")}
    opts["compile"] = False
    seen: list[str] = []

    def stop_in_the_second_network(line: str) -> None:
        seen.append(line)
        # Killed while the second network ends its second epoch: its last.pt holds epoch 1.
        if line.startswith("epoch 2/2") and any(s.startswith("[2/2]") for s in seen):
            raise _Stop

    with pytest.raises(_Stop):
        table1(str(folder), "cpu", out, log=stop_in_the_second_network, **opts)
    assert not (out / "results.json").exists() and not (out / "resnet" / "report.json").exists()
    first = (out / "parabolic" / "report.json").read_bytes()
    first_mtime = (out / "parabolic" / "best.pt").stat().st_mtime_ns

    log: list[str] = []
    r = table1(str(folder), "cpu", out, resume=True, log=log.append, **opts)
    assert any("parabolic: finished earlier, kept" in s for s in log)
    assert any("resnet: resuming" in s for s in log)
    assert any(s.startswith("resuming") and "at epoch 2, batch 1" in s for s in log)
    assert not any(s.startswith("epoch 1/2") for s in log)  # nothing trained twice
    assert (out / "parabolic" / "report.json").read_bytes() == first
    assert (out / "parabolic" / "best.pt").stat().st_mtime_ns == first_mtime
    assert r["networks"]["parabolic"]["kept"] and r["networks"]["resnet"]["resumed"]
    assert len((out / "resnet" / "metrics.csv").read_text().splitlines()) == 3  # header + 2

    # A finished table resumed with other options is refused, not silently mixed.
    with pytest.raises(ValueError, match="finished run with other options"):
        table1(str(folder), "cpu", out, resume=True, log=log.append, **{**opts, "seed": 1})


def test_cpu_budget_is_the_paper_recipe_reduced():
    cfg = resolve_config(arch="parabolic", dataset="imagefolder", **budget_options("cpu"))
    assert cfg.widths == [16, 32, 64, 64] and cfg.steps == 3
    # The paper's first rate, cosine-annealed to 0 over 4 epochs; compiled.
    assert cfg.lr_schedule == [[4, 0.1]] and cfg.epochs == 4
    assert cfg.lr_decay == "cosine" and cfg.compile
    assert (cfg.batch_size, cfg.momentum, cfg.smoothness, cfg.weight_decay) == (
        125,
        0.9,
        2e-4,
        2e-4,
    )
    assert (cfg.clip_weights, cfg.augment, cfg.bn_eps, cfg.train_fraction) == (
        True,
        False,
        1e-4,
        1.0,
    )
    assert cfg.preset is None and cfg.image_size == 32
    ten = resolve_config(dataset="imagefolder", **budget_options("cpu", epochs=10))
    assert ten.lr_schedule == [[10, 0.1]] and ten.epochs == 10
    with pytest.raises(ValueError, match="--budget must be one of"):
        budget_options("gpu")


@pytest.mark.parametrize("arch", ["parabolic", "hamiltonian", "second_order"])
def test_paper_recipe_on_an_image_folder(arch):
    cfg, resume = config_from_args(
        [
            "--dataset",
            "imagefolder",
            "--data-root",
            "x",
            "--preset",
            "paper",
            "--recipe",
            "cifar10",
            "--arch",
            arch,
        ]  # fmt: skip
    )
    assert not resume and (cfg.preset, cfg.recipe, cfg.image_size) == ("paper", "cifar10", 32)
    assert cfg.lr_schedule == [[60, 0.1], [20, 0.02], [20, 0.004]] and cfg.epochs == 100
    assert (cfg.batch_size, cfg.momentum, cfg.smoothness, cfg.weight_decay) == (
        125,
        0.9,
        2e-4,
        2e-4,
    )
    assert (cfg.augment, cfg.clip_weights, cfg.bn_eps, cfg.steps) == (True, True, 1e-4, 3)
    net = build_model(cfg, 3, 10)
    assert net.widths == (32, 64, 112, 112)
    assert neuralpde.count_parameters(net) == {"hamiltonian": 264_106}.get(arch, 502_570)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {(m.eps, m.momentum) for m in bns} == {(1e-4, 0.1)}
    stl = resolve_config(dataset="imagefolder", preset="paper", recipe="stl10")
    assert (stl.image_size, stl.smoothness, stl.weight_decay) == (96, 4e-4, 1e-4)
    # The paper budget of the table command is this recipe.
    paper = resolve_config(dataset="imagefolder", arch=arch, **budget_options("paper"))
    assert paper.to_dict() == {**cfg.to_dict(), "data_root": "data", "out": paper.out}


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--dataset", "imagefolder", "--preset", "paper"], "needs --recipe"),
        (["--dataset", "imagefolder", "--recipe", "cifar10"], "add --preset paper"),
        (["--dataset", "cifar10", "--preset", "paper", "--recipe", "stl10"], "contradicts"),
        (["--dataset", "imagefolder", "--preset", "paper", "--recipe", "mnist"], "invalid choice"),
    ],
)
def test_recipe_errors(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        config_from_args(argv)
    assert e.value.code == 2 and expected in capsys.readouterr().err


def test_table_errors(folder, tmp_path, capsys):
    assert main(["--data-root", str(folder), "--archs", "unet", "--out", str(tmp_path)]) == 2
    assert "--archs must be taken from" in capsys.readouterr().err
    assert main(["--data-root", str(tmp_path / "none"), "--out", str(tmp_path), *TINY]) == 1
    assert "imagefolder" in capsys.readouterr().err
    assert main(["--data-root", str(folder), "--budget", "paper", "--widths", "8,8"]) == 2
    assert "contradicts --preset paper" in capsys.readouterr().err


def test_pick_examples_covers_confident_uncertain_and_misclassified():
    probs = torch.tensor(
        [[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.99, 0.01], [0.5, 0.5], [0.3, 0.7]]
    )
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    picks = pick_examples(probs, labels, per_kind=2)
    assert picks == [
        {"index": 3, "kind": "confident"},
        {"index": 0, "kind": "confident"},
        {"index": 4, "kind": "uncertain"},
        {"index": 1, "kind": "uncertain"},
        {"index": 2, "kind": "misclassified"},
    ]


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real CIFAR-10 JPEGs not found at {REAL}")
def test_real_cifar10_images_beat_chance(tmp_path):
    out = tmp_path / "real"
    argv = ["--data-root", str(REAL), "--out", str(out), "--archs", "parabolic",
            "--train-fraction", "0.1", "--epochs", "2", "--widths", "8,16,16", "--threads", "1",
            "--no-compile"]  # fmt: skip
    assert main(argv) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["protocol"]["train_images"] == 4_000 and r["protocol"]["test_images"] == 10_000
    assert r["networks"]["parabolic"]["test_accuracy"] > 0.2  # chance: 0.1


def test_report_only_reports_a_table_still_training(folder, tmp_path):
    out = tmp_path / "table"
    opts = {"widths": [4, 8], "threads": 1, "epochs": 2, "compile": False}
    seen: list[str] = []

    def stop_in_the_second_network(line: str) -> None:
        seen.append(line)
        if line.startswith("epoch 2/2") and any(s.startswith("[2/4]") for s in seen):
            raise _Stop  # hamiltonian has one epoch and its best.pt on disk

    with pytest.raises(_Stop):
        table1(str(folder), "cpu", out, log=stop_in_the_second_network, **opts)
    log: list[str] = []
    r = table1(str(folder), "cpu", out, report_only=True, log=log.append, **opts)
    assert not any(s.startswith("epoch") for s in log)  # nothing trained
    assert list(r["networks"]) == ["parabolic", "hamiltonian"]
    assert r["not_started"] == ["second_order", "resnet"]
    par, ham = r["networks"]["parabolic"], r["networks"]["hamiltonian"]
    assert par["finished"] and par["epochs_done"] == 2
    assert not ham["finished"] and ham["epochs_done"] == 1 and 0 <= ham["test_accuracy"] <= 1
    md = (out / "results.md").read_text()
    assert "hamiltonian (after 1 of 2 epochs)" in md and "Unfinished table" in md
    assert (out / "fig4_validation.png").is_file()
