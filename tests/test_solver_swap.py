"""Solver swap: one trained network, unchanged weights, many discretizations."""

import csv

import pytest
import torch

import solvers
from experiments import fit, load_checkpoint, resolve_config
from experiments._swap import swap_plan, swap_table, write_swap
from experiments.solver_swap import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("swap")
    cfg = resolve_config(
        arch="hamiltonian", widths=[8, 16], epochs=1, train_fraction=0.3, out=str(out)
    )
    report = fit(cfg, log=lambda *_: None)
    return out, report


def test_plan_covers_the_issue():
    labels = [p["label"] for p in swap_plan("hamiltonian", 1.0)]
    for want in ("training scheme", "euler x1", "euler x2", "euler x4", "euler x8", "midpoint",
                 "rk4", "dopri5 rtol=0.01", "dopri5 rtol=0.001", "dopri5 rtol=0.0001",
                 "symplectic_euler", "leapfrog", "verlet", "yoshida4"):  # fmt: skip
        assert want in labels
    parabolic = [p["method"] for p in swap_plan("parabolic", 1.0)]
    assert "leapfrog" not in parabolic and parabolic.count("euler") == 4


def test_swap_keeps_weights_and_counts_evaluations(trained):
    out, report = trained
    before = load_checkpoint(out / "best.pt")["model"]
    rows = {r["solver"]: r for r in swap_table(out / "best.pt", log=lambda *_: None)}
    # The training scheme reproduces the test accuracy of training: nothing was changed.
    t = rows["training scheme"]
    assert t["accuracy"] == report["test_accuracy"] and t["method"] == "symplectic_euler"
    assert t["loss"] == pytest.approx(report["test_loss"], rel=1e-6)
    # One stage of 3 steps: euler xk takes 3k evaluations of the full field, rk4 4 per step.
    for k in (1, 2, 4, 8):
        assert rows[f"euler x{k}"]["nfe"] == 3 * k
    assert rows["midpoint"]["nfe"] == 6 and rows["rk4"]["nfe"] == 12
    # Symplectic Euler: one half-field evaluation each for q and p per step.
    assert rows["symplectic_euler"]["nfe"] == 6
    tight, loose = rows["dopri5 rtol=0.0001"], rows["dopri5 rtol=0.01"]
    assert tight["nfe"] > loose["nfe"]
    assert all(0 <= r["accuracy"] <= 1 for r in rows.values())
    after = load_checkpoint(out / "best.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cli_writes_table_csv_and_plot(trained, tmp_path, capsys):
    out, _ = trained
    assert main(["--checkpoint", str(out / "best.pt"), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    with open(tmp_path / "solver_swap.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(swap_plan("hamiltonian", 1.0))
    for r in rows:
        assert r["solver"] in printed
    assert (tmp_path / "solver_swap.png").stat().st_size > 0
    assert main(["--checkpoint", str(tmp_path / "nope.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_write_swap_skips_failed_rows_in_the_plot(tmp_path):
    rows = [
        {"solver": "a", "method": "euler", "step_size": 1.0, "rtol": "", "accuracy": 0.5,
         "loss": 1.0, "nfe": 3, "seconds": 0.1},
        {"solver": "b", "method": "dopri5", "step_size": "", "rtol": 1e-3,
         "accuracy": float("nan"), "loss": float("nan"), "nfe": float("nan"), "seconds": 0},
    ]  # fmt: skip
    write_swap(rows, tmp_path, "t")
    assert (tmp_path / "solver_swap.csv").read_text().count("\n") == 3


def test_swap_restores_the_solver_the_network_was_trained_with(tmp_path, monkeypatch):
    # The swap used to end with net.set_solver(None): the paper's scheme, not the network's.
    import experiments._swap as swap

    out = tmp_path / "verlet"
    cfg = resolve_config(
        arch="hamiltonian", widths=[4, 8], epochs=1, train_fraction=0.1, out=str(out),
        solver="verlet", step_size=0.5, memory="reversible",
    )  # fmt: skip
    fit(cfg, log=lambda *_: None)
    loaded = []

    def spy(checkpoint, device="cpu"):
        net, cfg = load_trained(checkpoint, device)
        loaded.append((net, [s.solver for s in net.stages]))
        return net, cfg

    load_trained = swap.load_trained
    monkeypatch.setattr(swap, "load_trained", spy)
    plan = [
        {"label": "rk4", "method": "rk4", "step_size": 1.0},
        {"label": "dopri5", "method": "dopri5", "rtol": 1e-2, "atol": 1e-3},
    ]
    rows = swap_table(out / "best.pt", plan=plan, log=lambda *_: None)
    assert [r["method"] for r in rows] == ["rk4", "dopri5"]
    assert all(r["accuracy"] == r["accuracy"] for r in rows)  # both ran (no NaN)
    ((net, trained),) = loaded
    assert trained[0] == solvers.Solver(
        "verlet", step_size=0.5, rtol=1e-3, atol=1e-4, memory="reversible"
    )
    assert [s.solver for s in net.stages] == trained
