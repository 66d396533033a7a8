"""``python -m experiments.table1``: the paper's Table 1 end to end on a tiny image folder,
both configurations (paper and stable) with their solver swaps, resumption of a half-done
table, and the recipes' values (Ruthotto & Haber 2020, Sec. 4)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import neuralpde
from experiments import build_model, load_data, resolve_config
from experiments._config import QUICK_RECIPE
from experiments._table1 import (
    CONFIGS,
    TABLE1_ARCHS,
    budget_options,
    pick_examples,
    spread_test_images,
    swap_columns,
    table1,
)
from experiments.table1 import main
from experiments.train import config_from_args

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("NEURALPDE_CIFAR10_JPEG", ROOT.parent / "shared/data/cifar10-jpeg"))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"]
CLASSES += ["truck"]
# Tiny runs skip compilation (a minute per network), which the cpu budget turns on.
TINY = ["--epochs", "1", "--widths", "4,8", "--threads", "1", "--no-compile"]
PAPER_SCHEME = {"normalization": "tv", "rate_bound": 0.0, "stability_penalty": 0.0}


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
    argv = ["--data-root", str(folder), "--out", str(out), "--config", "paper", "--no-swap"]
    assert main([*argv, *TINY]) == 0
    r = json.loads((out / "results.json").read_text())
    assert list(r["networks"]) == [f"paper/{a}" for a in TABLE1_ARCHS]
    nets = {n["arch"]: n for n in r["networks"].values()}
    # The paper's CIFAR-10 column beside ours; the ResNet control has none.
    assert [nets[a]["paper_accuracy"] for a in TABLE1_ARCHS] == [0.885, 0.893, 0.892, None]
    assert [nets[a]["paper_loss"] for a in TABLE1_ARCHS] == [0.333, 0.349, 0.333, None]
    for arch in TABLE1_ARCHS:
        n = nets[arch]
        report = json.loads((out / "paper" / arch / "report.json").read_text())
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
    assert r["configs"]["paper"]["max_gap_to_resnet"] == pytest.approx(gap)
    assert list(r["configs"]) == ["paper"] and r["swap"] is None
    assert "worst_swap_accuracy" not in nets["parabolic"]
    md = (out / "results.md").read_text()
    assert "88.5 %" in md and "89.3 %" in md and "89.2 %" in md
    assert all(f"| {a} |" in md for a in TABLE1_ARCHS)
    for fig in ("fig1_probabilities.png", "fig3_confusion.png", "fig4_validation.png"):
        assert (out / fig).stat().st_size > 10_000, fig
        assert f"]({fig})" in md
    assert "worst swap" not in md
    assert "paper/resnet         test accuracy" in capsys.readouterr().out


def test_both_configurations_with_their_solver_swaps(folder, tmp_path, capsys):
    out = tmp_path / "table"
    argv = ["--data-root", str(folder), "--out", str(out), "--archs", "parabolic,resnet"]
    argv[-1] += ",second_order"
    assert main([*argv, "--swap-images", "8", *TINY]) == 0
    r = json.loads((out / "results.json").read_text())
    # The ResNet control trains once, in the paper configuration.
    assert list(r["networks"]) == [
        "paper/parabolic",
        "stable/parabolic",
        "paper/resnet",
        "paper/second_order",
        "stable/second_order",
    ]
    assert not (out / "stable" / "resnet").exists()
    # The paper configuration is exactly the paper's scheme; the stable one is the quick
    # recipe's default, both as trained (config.json of each run), whatever the recipe says.
    stable = {k: QUICK_RECIPE[k] for k in PAPER_SCHEME}
    assert CONFIGS == {"paper": PAPER_SCHEME, "stable": stable}
    assert stable["normalization"] != "tv" and stable["rate_bound"] > 0
    # The stable configuration is the quick recipe's default of each arch on photographs
    # (the second-order network: Verlet at 7/10, its symplectic methods sharing each
    # batch, its raw kernels at twice the bound), as experiments.train --dataset
    # imagefolder trains it.
    quick = resolve_config(dataset="imagefolder", arch="second_order")
    keys = (*PAPER_SCHEME, "solver", "random_steps", "random_methods")
    stable_second_order = {k: getattr(quick, k) for k in (*keys, "raw_scale")}
    assert stable_second_order["solver"] == "verlet" and stable_second_order["random_methods"]
    assert stable_second_order["raw_scale"] == 2.0
    # The parabolic network's own on photographs: forward Euler at 8/10, with three shares of
    # each batch to midpoint's one.
    quick = resolve_config(dataset="imagefolder", arch="parabolic")
    stable_parabolic = {k: getattr(quick, k) for k in keys}
    assert stable_parabolic["solver"] == "euler" and not stable_parabolic["random_steps"]
    assert stable_parabolic["random_methods"] == ["euler", "euler", "euler", "midpoint"]
    expected = {
        "paper/parabolic": PAPER_SCHEME,
        "stable/parabolic": stable_parabolic,
        "paper/second_order": PAPER_SCHEME,
        "stable/second_order": stable_second_order,
    }
    for name, options in expected.items():
        saved = json.loads((out / name / "config.json").read_text())
        assert {k: saved[k] for k in options} == options, name
        if name.startswith("paper/"):
            assert saved["solver"] is None, name  # the paper's own scheme
        assert r["networks"][name]["config"] == name.split("/")[0]
        assert r["networks"][name]["options"] == {k: v for k, v in options.items() if v != []}
    resnet = json.loads((out / "paper" / "resnet" / "config.json").read_text())
    assert {k: resnet[k] for k in PAPER_SCHEME} == PAPER_SCHEME
    accs = {name: n["test_accuracy"] for name, n in r["networks"].items()}
    for c, options in (("paper", PAPER_SCHEME), ("stable", stable)):
        mine = [name for name in r["networks"] if name.startswith(f"{c}/")]
        pde = [accs[name] for name in mine if name != "paper/resnet"]
        assert r["configs"][c] == {
            **options,
            "networks": mine,
            "min_pde_accuracy": min(pde),
            "max_gap_to_resnet": pytest.approx(max(accs["paper/resnet"] - a for a in pde)),
        }
    # Each network's swap: the default plan on 8 test images, its rows kept; the
    # hyperbolic networks' rows include their symplectic methods.
    assert r["swap"]["images"] == 8 and r["swap"]["row_seconds"] == 300
    for name, n in r["networks"].items():
        rows = json.loads((out / name / "table1_swap.json").read_text())["rows"]
        accs = [x["accuracy"] for x in rows]
        assert n["swap_images"] == 8 and n["swap_rows"] == [x["solver"] for x in rows]
        assert "rk4" in n["swap_rows"] and "dopri5 rtol=0.0001" in n["swap_rows"]
        assert n["worst_swap_accuracy"] == min(accs)
        assert n["worst_swap_solver"] == rows[accs.index(min(accs))]["solver"]
        flow = rows[n["swap_rows"].index("dopri5 rtol=0.0001")]["accuracy"]
        assert n["converged_flow_accuracy"] == flow
        assert n["swap_training_scheme_accuracy"] == accs[0] and n["swap_failed"] == {}
        assert all(k / 8 == a for a, k in zip(accs, [round(8 * a) for a in accs]))
        assert (out / name / "solver_swap.csv").is_file()
        assert ("verlet" in n["swap_rows"]) == (n["arch"] == "second_order")
    # Training time as a ratio to the paper configuration of the same network.
    nets = r["networks"]
    assert nets["paper/parabolic"]["time_ratio_to_paper"] == 1.0
    ratio = nets["stable/parabolic"]["train_seconds"] / nets["paper/parabolic"]["train_seconds"]
    assert nets["stable/parabolic"]["time_ratio_to_paper"] == pytest.approx(ratio, abs=1e-3)
    md = (out / "results.md").read_text()
    assert "| parabolic | stable (" in md and "| resnet | paper |" in md
    own = [
        f"{k.replace('_', ' ')} {v}"
        for k, v in stable_second_order.items()
        if stable.get(k) != v and v != []
    ]
    cell = "stable" + (f" ({', '.join(own)})" if own else "")
    assert f"| second_order | {cell} |" in md
    assert "worst swap" in md and "converged flow" in md and "× paper time" in md
    assert f"({nets['stable/parabolic']['worst_swap_solver']})" in md
    assert "normalization tv, no rate bound, no stability penalty" in md
    printed = capsys.readouterr().out
    assert "stable/parabolic     test accuracy" in printed and "converged flow" in printed


class _Stop(Exception):
    pass


def test_resume_keeps_finished_networks_and_continues_the_half_done_one(folder, tmp_path):
    out = tmp_path / "table"
    opts = {"widths": [4, 8], "threads": 1, "epochs": 2, "archs": ("parabolic", "resnet")}
    opts.update(compile=False, swap_images=4)
    seen: list[str] = []

    def stop_in_the_last_network(line: str) -> None:
        seen.append(line)
        # Killed while the last network ends its second epoch: its last.pt holds epoch 1.
        if line.startswith("epoch 2/2") and any(s.startswith("[3/3]") for s in seen):
            raise _Stop

    with pytest.raises(_Stop):
        table1(str(folder), "cpu", out, log=stop_in_the_last_network, **opts)
    assert not (out / "results.json").exists()
    assert not (out / "paper" / "resnet" / "report.json").exists()
    kept = ("paper/parabolic", "stable/parabolic")
    first = {n: (out / n / "report.json").read_bytes() for n in kept}
    first_mtime = {n: (out / n / "best.pt").stat().st_mtime_ns for n in kept}

    log: list[str] = []
    r = table1(str(folder), "cpu", out, resume=True, log=log.append, **opts)
    assert all(any(f"{n}: finished earlier, kept" in s for s in log) for n in kept)
    assert any("paper/resnet: resuming" in s for s in log)
    assert any(s.startswith("resuming") and "at epoch 2, batch 1" in s for s in log)
    assert not any(s.startswith("epoch 1/2") for s in log)  # nothing trained twice
    for n in kept:
        assert (out / n / "report.json").read_bytes() == first[n]
        assert (out / n / "best.pt").stat().st_mtime_ns == first_mtime[n]
        assert r["networks"][n]["kept"]
    assert r["networks"]["paper/resnet"]["resumed"]
    assert len((out / "paper/resnet/metrics.csv").read_text().splitlines()) == 3  # header + 2
    assert sum("solver swap of the best weights" in s for s in log) == 3

    # Resumed again, the finished table trains nothing and reuses its swaps.
    log.clear()
    again = table1(str(folder), "cpu", out, resume=True, log=log.append, **opts)
    assert not any("solver swap of the best weights" in s for s in log)
    assert not any(s.startswith("epoch") for s in log)
    assert (
        again["networks"]["stable/parabolic"]["worst_swap_accuracy"]
        == (r["networks"]["stable/parabolic"]["worst_swap_accuracy"])
    )

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
    argv = ["--data-root", str(folder), "--out", str(tmp_path), *TINY]
    assert main([*argv, "--swap-images", "-1"]) == 2
    assert "--swap-images must be a count" in capsys.readouterr().err
    assert main([*argv, "--swap-row-seconds", "-1"]) == 2
    assert "--swap-row-seconds must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--config", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--config must be one of"):
        table1(str(folder), "cpu", tmp_path, config="fast")
    # A table of the layout before configurations (out/<arch>) is not resumed by mistake.
    (tmp_path / "old" / "parabolic").mkdir(parents=True)
    (tmp_path / "old" / "parabolic" / "config.json").write_text("{}")
    for flag in ("--resume", "--report-only"):
        assert main(["--data-root", str(folder), "--out", str(tmp_path / "old"), flag]) == 2
        assert "move each to" in capsys.readouterr().err


def test_swap_images_spread_over_every_class(folder):
    # The image folder lists its test images class by class (2 per class here).
    data = load_data(resolve_config(dataset="imagefolder", data_root=str(folder)))
    assert data.test.labels[data.test.indices].tolist() == sorted(2 * list(range(10)))
    part = spread_test_images(data, 10).test
    assert part.indices == data.test.indices[::2]
    assert sorted(part.labels[part.indices].tolist()) == list(range(10))
    assert torch.equal(part[3][0], data.test[6][0])  # the same image, normalized alike
    assert spread_test_images(data, 0) is data and spread_test_images(data, 20) is data


def test_swap_columns_worst_row_and_converged_flow():
    def row(solver, method, accuracy, rtol="", status="ok"):
        return dict(solver=solver, method=method, accuracy=accuracy, rtol=rtol, status=status)

    late = "did not finish within 300 s (1 of 4 batches)"
    rows = [
        row("training scheme", "verlet", 0.71),
        row("euler x4", "euler", 0.62),
        row("rk4", "rk4", 0.69),
        row("dopri5 rtol=0.01", "dopri5", float("nan"), 1e-2, late),
        row("dopri5 rtol=0.0001", "dopri5", 0.70, 1e-4),
    ]
    assert swap_columns(rows) == {
        "swap_training_scheme": "training scheme",
        "swap_training_scheme_accuracy": 0.71,
        "worst_swap_accuracy": 0.62,
        "worst_swap_solver": "euler x4",
        "converged_flow_accuracy": 0.70,
        "swap_rows": [r["solver"] for r in rows],
        "swap_failed": {"dopri5 rtol=0.01": late},
    }
    bad = row("d", "dopri5", float("nan"), 1e-4, "failed (non-finite state)")
    failed = swap_columns([row("training scheme", "rk4", 0.5), bad])
    assert failed["converged_flow_accuracy"] is None and failed["worst_swap_accuracy"] == 0.5
    assert failed["swap_failed"] == {"d": "failed (non-finite state)"}


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
            "--no-compile", "--config", "paper", "--no-swap"]  # fmt: skip
    assert main(argv) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["protocol"]["train_images"] == 4_000 and r["protocol"]["test_images"] == 10_000
    assert r["networks"]["paper/parabolic"]["test_accuracy"] > 0.2  # chance: 0.1


def test_report_only_reports_a_table_still_training(folder, tmp_path):
    out = tmp_path / "table"
    opts = {"widths": [4, 8], "threads": 1, "epochs": 2, "compile": False, "swap_images": 4}
    opts["archs"] = ("parabolic", "hamiltonian", "resnet")
    seen: list[str] = []

    def stop_in_the_fourth_network(line: str) -> None:
        seen.append(line)
        if line.startswith("epoch 2/2") and any(s.startswith("[4/5]") for s in seen):
            raise _Stop  # stable/hamiltonian has one epoch and its best.pt on disk

    with pytest.raises(_Stop):
        table1(str(folder), "cpu", out, log=stop_in_the_fourth_network, **opts)
    log: list[str] = []
    r = table1(str(folder), "cpu", out, report_only=True, log=log.append, **opts)
    assert not any(s.startswith("epoch") for s in log)  # nothing trained
    done = ["paper/parabolic", "stable/parabolic", "paper/hamiltonian", "stable/hamiltonian"]
    assert list(r["networks"]) == done and r["not_started"] == ["paper/resnet"]
    par, ham = r["networks"]["stable/parabolic"], r["networks"]["stable/hamiltonian"]
    assert par["finished"] and par["epochs_done"] == 2
    assert not ham["finished"] and ham["epochs_done"] == 1 and 0 <= ham["test_accuracy"] <= 1
    # The unfinished network's swap is of its best weights so far.
    assert ham["swap_images"] == 4 and ham["worst_swap_accuracy"] <= ham["converged_flow_accuracy"]
    md = (out / "results.md").read_text()
    assert "hamiltonian (after 1 of 2 epochs)" in md and "Unfinished table" in md
    assert (out / "fig4_validation.png").is_file()
