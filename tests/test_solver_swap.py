"""Solver swap: one trained network, unchanged weights, many discretizations."""

import csv
import io
import math

import pytest
import torch

import experiments._swap as swap
import solvers
from experiments import fit, load_checkpoint, resolve_config, swap_verdict
from experiments._data import load_data
from experiments._swap import load_trained, swap_plan, swap_table, write_swap
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
    # The quick recipe trains the Hamiltonian network with Verlet (QUICK_ARCH_OPTIONS).
    assert t["accuracy"] == report["test_accuracy"] and t["method"] == "verlet"
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


# --- a swap a user can wait for: --images, a budget per row, progress within a row ---------

RK4 = [{"label": "rk4", "method": "rk4", "step_size": 1.0}]
DOPRI5 = [{"label": "dopri5 rtol=1e-06", "method": "dopri5", "rtol": 1e-6, "atol": 1e-7}]
QUIET = {"log": lambda *_: None}


def test_images_evaluates_n_test_images_spread_over_the_test_set(trained):
    out, _ = trained
    (row,) = swap_table(out / "best.pt", plan=RK4, images=50, batch_size=16, **QUIET)
    # The same 50 images, every (n/50)-th (an image folder lists its test set class by
    # class: the first 50 would be one class), through the network by hand, one batch.
    net, cfg = load_trained(out / "best.pt")
    test = load_data(cfg).test
    picked = [i * len(test) // 50 for i in range(50)]
    x = torch.stack([test[i][0] for i in picked])
    y = torch.tensor([int(test[i][1]) for i in picked])
    net.set_solver("rk4", 1.0)
    with torch.no_grad():
        want = (net(x).argmax(1) == y).sum().item() / 50
    assert row["status"] == "ok" and row["accuracy"] == want
    # More images than the test set has: all of them, as without --images.
    (every,) = swap_table(out / "best.pt", plan=RK4, images=10**6, **QUIET)
    (whole,) = swap_table(out / "best.pt", plan=RK4, **QUIET)
    assert every["accuracy"] == whole["accuracy"] and every["nfe"] == whole["nfe"]
    with pytest.raises(ValueError, match="images must be positive"):
        swap_table(out / "best.pt", plan=RK4, images=0, **QUIET)


def test_a_row_over_its_seconds_budget_did_not_finish(trained):
    out, _ = trained
    # The budget is checked after each batch: spent after the first of 360 / 40 = 9.
    rows = swap_table(out / "best.pt", plan=RK4 + DOPRI5, row_seconds=1e-9, batch_size=40, **QUIET)
    for r in rows:
        assert math.isnan(r["accuracy"]) and math.isnan(r["loss"])
        assert r["status"].startswith("did not finish within 1e-09 s (1 of 9 batches, 40 of 360")
        assert r["nfe"] > 0  # what the finished batch cost
    # A budget the row keeps: the row is whole, equal to one without a budget.
    (kept,) = swap_table(out / "best.pt", plan=RK4, row_seconds=3600, **QUIET)
    (free,) = swap_table(out / "best.pt", plan=RK4, **QUIET)
    assert kept["status"] == "ok" and kept["accuracy"] == free["accuracy"]


def test_an_adaptive_row_over_its_step_limit_did_not_finish(trained):
    out, _ = trained
    logs = []
    rows = swap_table(out / "best.pt", plan=RK4 + DOPRI5, max_steps=2, log=logs.append)
    rk4, dopri5 = rows
    # The step limit is the adaptive solver's; a fixed-step row takes its steps.
    assert rk4["status"] == "ok" and 0 <= rk4["accuracy"] <= 1
    assert math.isnan(dopri5["accuracy"])
    assert dopri5["status"].startswith("did not finish within 2 steps")
    assert dopri5["seconds"] > 0 and dopri5["batchnorm"] == "" and rk4["batchnorm"] == "saved"
    assert any(line.startswith("dopri5 rtol=1e-06") and "did not finish" in line for line in logs)
    # Without the limit the same row finishes, with more than 2 steps per stage.
    (free,) = swap_table(out / "best.pt", plan=DOPRI5, **QUIET)
    assert free["status"] == "ok" and free["nfe"] > 2 * 6


def test_progress_within_a_row_off_a_terminal(trained, monkeypatch):
    out, _ = trained
    monkeypatch.setattr(swap, "PROGRESS_EVERY", 0.0)
    logs = []
    swap_table(out / "best.pt", plan=RK4, batch_size=100, progress=True, log=logs.append)
    # 360 images in 4 batches: a line after each batch but the last, then the row.
    steps = [line for line in logs if line.startswith("rk4: ")]
    assert [s.split(" batches")[0] for s in steps] == ["rk4: 1/4", "rk4: 2/4", "rk4: 3/4"]
    assert "accuracy so far" in steps[0] and logs[-1].startswith("rk4 ") and "NFE" in logs[-1]
    quiet = []
    swap_table(out / "best.pt", plan=RK4, batch_size=100, log=quiet.append)
    assert len(quiet) == 1  # progress=False: the row alone


def test_progress_within_a_row_on_a_terminal(trained, monkeypatch):
    out, _ = trained

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr("sys.stdout", term)
    swap_table(out / "best.pt", plan=RK4, batch_size=100, progress=True, **QUIET)
    bar = term.getvalue()
    # tqdm's bar for the row, counted in batches (a fast row ends before its first redraw),
    # cleared when the row ends (the row's line follows it).
    assert bar.startswith("\rrk4:   0%") and "0/4 [" in bar and "batch/s" in bar
    assert bar.endswith("\r")


def test_cli_reports_rows_that_did_not_finish(trained, tmp_path, capsys):
    out, _ = trained
    args = ["--checkpoint", str(out / "best.pt"), "--out", str(tmp_path), "--no-progress"]
    assert main([*args, "--images", "80", "--batch-size", "40", "--row-seconds", "1e-9"]) == 0
    printed = capsys.readouterr().out
    with open(tmp_path / "solver_swap.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(swap_plan("hamiltonian", 1.0))
    assert all(
        r["status"].startswith("did not finish within 1e-09 s (1 of 2 batches") for r in rows
    )
    table = (tmp_path / "solver_swap.md").read_text()
    assert "(80 test images spread over the test set)" in table and table.count(
        "did not finish within 1e-09 s"
    ) == len(rows)
    assert "no accuracy: rk4: did not finish within 1e-09 s" in printed
    assert "no verdict:" in printed and "worst row" not in printed
    for bad in (
        ["--images", "0"],
        ["--row-seconds", "-1"],
        ["--max-steps", "x"],
        ["--threads", "0"],
    ):
        with pytest.raises(SystemExit) as e:
            main([*args, *bad])
        assert e.value.code == 2


def test_cli_threads_sets_torchs_thread_count(trained, tmp_path, monkeypatch):
    out, _ = trained
    calls = []  # recorded, not applied: the rest of the suite keeps its thread count
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    args = ["--checkpoint", str(out / "best.pt"), "--out", str(tmp_path), "--no-progress"]
    assert main([*args, "--images", "40", "--row-seconds", "1e-9", "--threads", "1"]) == 0
    assert calls == [1]


def test_verdict_needs_the_accuracy_of_its_rows(trained):
    out, _ = trained
    rows = swap_table(out / "best.pt", max_steps=2, **QUIET)
    with pytest.raises(ValueError, match=r"no accuracy for dopri5 rtol=0.0001 \(did not finish"):
        swap_verdict(rows)


def test_recalibrated_batchnorm_holds_the_statistics_of_the_new_solver(trained):
    out, _ = trained
    net, cfg = load_trained(out / "best.pt")
    data = load_data(cfg)
    opening = net.opening[1]
    (after,) = [m for m in net.connectors.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    trained_stats = [
        (m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in (opening, after)
    ]
    # What the BatchNorm after the stage sees under another solver, from the deployed
    # network (the opening's BatchNorm at its trained statistics), on the images the
    # re-estimate uses: the first 101 of the seed-0 permutation of the training split.
    net.set_solver("symplectic_euler")
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    x = torch.stack([data.train[int(i)][0] for i in order[:101]])
    seen = []
    hook = after.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        net.eval()(x)
    hook.remove()
    f = seen[0]
    with swap.batchnorm_recalibrated(net, data.train, 100, "cpu", batch_size=100):
        assert not net.training and not after.training
        torch.testing.assert_close(after.running_mean, f[:100].mean((0, 2, 3)))
        torch.testing.assert_close(after.running_var, f[:100].var((0, 2, 3), unbiased=True))
        # The opening's statistics do not depend on the solver: kept as trained.
        assert torch.equal(opening.running_mean, trained_stats[0][0])
        assert not torch.allclose(after.running_mean, trained_stats[1][0])
    # A short last batch weighs its one image, not as much as the 100 before it.
    with swap.batchnorm_recalibrated(net, data.train, 101, "cpu", batch_size=100):
        torch.testing.assert_close(after.running_mean, f.mean((0, 2, 3)))
    # Leaving the block gives back the trained statistics, bit for bit, and the momentum.
    for m, (mean, var, momentum) in zip((opening, after), trained_stats):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert m.momentum == momentum and not m.training
    with pytest.raises(ValueError, match="only 377 images; give at most 377"):
        with swap.batchnorm_recalibrated(net, data.train, 378, "cpu"):
            pass
    with pytest.raises(ValueError, match="positive int, got 2.5"):
        with swap.batchnorm_recalibrated(net, data.train, 2.5, "cpu"):
            pass


def test_swap_table_recalibrates_each_row_and_leaves_the_weights(trained):
    out, report = trained
    before = load_checkpoint(out / "best.pt")["model"]
    plan = [p for p in swap_plan("hamiltonian", 1.0, "verlet") if p["label"] in
            ("training scheme", "leapfrog")]  # fmt: skip
    plain = swap_table(out / "best.pt", plan=plan, log=lambda *_: None)
    again = swap_table(out / "best.pt", plan=plan, recalibrate_bn=200, log=lambda *_: None)
    assert plain[0]["accuracy"] == report["test_accuracy"]
    # Statistics re-estimated on 200 training images are not the trained ones: the
    # losses differ, the accuracy stays a probability.
    assert all(a["loss"] != b["loss"] for a, b in zip(plain, again))
    assert all(0 <= r["accuracy"] <= 1 for r in again)
    # Each row says whose statistics it used, in the CSV too.
    assert {r["batchnorm"] for r in plain} == {"saved"}
    assert {r["batchnorm"] for r in again} == {"re-estimated on 200 training images"}
    write_swap(again, out / "swap", "t")
    with open(out / "swap" / "solver_swap.csv") as f:
        assert [r["batchnorm"] for r in csv.DictReader(f)] == [again[0]["batchnorm"]] * 2
    after = load_checkpoint(out / "best.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="recalibrate_bn must be positive"):
        swap_table(out / "best.pt", plan=plan, recalibrate_bn=0)
    with pytest.raises(ValueError, match="give at most 377"):
        swap_table(out / "best.pt", plan=plan, recalibrate_bn=10**6)
    # The re-estimating pass counts in the row's budget.
    slow = swap_table(out / "best.pt", plan=plan[:1], recalibrate_bn=100, batch_size=10,
                      row_seconds=1e-9, log=lambda *_: None)  # fmt: skip
    assert math.isnan(slow[0]["accuracy"]) and slow[0]["seconds"] > 0
    assert slow[0]["status"].startswith("did not finish within 1e-09 s (re-estimating")
    assert slow[0]["batchnorm"] == ""  # no accuracy, so no statistics it is of


def test_recalibrating_a_network_without_batchnorm_is_refused(trained, tmp_path, capsys):
    out, _ = trained
    _, cfg = load_trained(out / "best.pt")
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="no BatchNorm after a stage"):
        with swap.batchnorm_recalibrated(plain, load_data(cfg).train, 10, "cpu"):
            pass
    code = main(["--checkpoint", str(out / "best.pt"), "--out", str(tmp_path),
                 "--recalibrate-bn", "20", "--images", "20"])  # fmt: skip
    assert code == 0
    assert "re-estimated per row on 20 training images" in (tmp_path / "solver_swap.md").read_text()
