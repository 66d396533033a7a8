"""experiments.ode_study: every strategy trains, is swapped and lands in the table, on a
budget's options as on the quick recipe's."""

import json

import pytest

import neuralpde
from experiments import resolve_config
from experiments._ode_study import STRATEGIES, _options, study
from neuralpde.stability import second_order_method


@pytest.mark.parametrize(
    "method, expected",
    [
        ("euler", "midpoint"),
        ("symplectic_euler", "verlet"),
        ("leapfrog", "verlet"),
        ("midpoint", None),
        ("verlet", None),
        ("rk4", None),
        ("no such method", None),
        (None, None),
    ],
)
def test_second_order_method_of_each_first_order_scheme(method, expected):
    assert second_order_method(method) == expected


@pytest.mark.parametrize(
    "arch, solver",
    [("parabolic", "midpoint"), ("hamiltonian", "verlet"), ("second_order", "verlet")],
)
def test_second_order_strategies_train_with_the_method_of_the_archs_kind(arch, solver):
    names = [n for n in STRATEGIES if n.startswith("second-order method")]
    assert len(names) == 5
    for name in names:
        opts = _options(name, 4, arch)
        assert opts["solver"] == solver
        assert opts["normalization"] == "bias" and opts["rate_bound"] > 0
    # "and methods": the second-order method and the first-order schemes of its kind.
    opts = _options("second-order method 9/10 + random steps and methods", 4, arch)
    first = {"midpoint": ["euler"], "verlet": ["leapfrog", "symplectic_euler"]}[solver]
    assert opts["random_methods"] == [solver, *first]
    assert resolve_config(arch=arch, **opts).random_methods == [solver, *first]


def test_second_order_strategy_names_an_arch_without_one(registered):
    class Fourth(neuralpde.ParabolicRHS):
        default_method = "rk4"

    registered("fourth_order_test", Fourth)
    with pytest.raises(ValueError, match="no second-order method"):
        _options("second-order method 1/4", 4, "fourth_order_test")


def test_study_on_a_budget_trains_each_strategy_and_writes_the_table(tmp_path):
    # A budget's options (as experiments.table1's cpu budget gives them) set the strategy
    # options too; each strategy's own must win, not collide.
    base = {
        "dataset": "digits",
        "widths": [4, 4],
        "epochs": 1,
        "train_fraction": 0.25,
        "threads": 1,
        "stability_penalty": 0.0,
        "normalization": "tv",
        "rate_bound": 0.0,
    }
    rows = study(
        ["parabolic", "hamiltonian"],
        ["paper", "second-order method 1/4"],
        tmp_path,
        base=base,
        images=60,
        nfe_sweep=False,
        row_seconds=60.0,
        log=lambda *_: None,
    )
    assert [(r["arch"], r["strategy"]) for r in rows] == [
        ("parabolic", "paper"),
        ("parabolic", "second-order method 1/4"),
        ("hamiltonian", "paper"),
        ("hamiltonian", "second-order method 1/4"),
    ]
    for r in rows:
        assert "diverged" not in r, r
        folder = tmp_path / r["arch"] / r["strategy"].replace(" ", "-").replace("/", "")
        saved = json.loads((folder / "config.json").read_text())
        want = STRATEGIES[r["strategy"]]["options"]
        assert saved["normalization"] == want.get("normalization", "tv")
        assert saved["rate_bound"] == want.get("rate_bound", 0.0)
        if r["strategy"] == "second-order method 1/4":
            assert saved["solver"] == {"parabolic": "midpoint", "hamiltonian": "verlet"}[r["arch"]]
        else:  # the arch's own scheme, the paper's
            assert (
                saved["solver"]
                == {"parabolic": "euler", "hamiltonian": "symplectic_euler"}[r["arch"]]
            )
        assert 0 <= r["worst"] <= r["training_scheme"] <= 1
        assert r["swap_images"] == 60
    assert [r["time_ratio"] for r in rows if r["strategy"] == "paper"] == [1.0, 1.0]
    table = (tmp_path / "study.md").read_text()
    assert table.count("| parabolic |") == 2 and table.count("| hamiltonian |") == 2
    assert (tmp_path / "study.png").stat().st_size > 0
    assert table.count("not measured | not measured |") == 4  # nfe_sweep=False
    assert "**paper**" in table and "**multilevel**" not in table  # the strategies shown
    # Resumed: read back, not trained again.
    again = study(["parabolic"], ["paper"], tmp_path, base=base, resume=True, log=lambda *_: None)
    assert again[0]["study_seconds"] == rows[0]["study_seconds"]


def test_the_resnet_control_runs_no_strategy_that_bounds_or_penalizes_rates(monkeypatch, tmp_path):
    # It declares no rates: a bound is refused for it, and its penalty run was the paper
    # run again. Every other strategy still runs for it.
    import experiments._ode_study as ode_study

    ran = []

    def fake_run_one(arch, strategy, folder, **_):
        folder.mkdir(parents=True)
        ran.append(strategy)
        return {"arch": arch, "strategy": strategy}

    monkeypatch.setattr(ode_study, "run_one", fake_run_one)
    monkeypatch.setattr(ode_study, "write_study", lambda *a, **k: None)
    study(["resnet"], list(STRATEGIES), tmp_path, log=lambda *_: None)
    skipped = {
        name
        for name, s in STRATEGIES.items()
        if {"rate_bound", "stability_penalty"} & set(s["options"])
        or "normalization" in s["options"]
        or "resnet" not in s.get("archs", ["resnet"])
    }
    assert "stability penalty" in skipped and "paper" in ran
    assert set(ran) == set(STRATEGIES) - skipped


def test_study_table_says_which_rows_did_not_finish(tmp_path):
    from experiments._ode_study import write_study

    row = {
        "arch": "parabolic",
        "strategy": "paper",
        "train_seconds": 10.0,
        "test_accuracy": 0.7,
        "swap_images": 2000,
        "training_scheme": 0.71,
        "worst": 0.1,
        "worst_solver": "midpoint",
        "converged": float("nan"),  # dopri5 at rtol 1e-4 ran out of its budget
        "rk4_nfe": None,
        "dopri5_nfe": None,
    }
    write_study([row], tmp_path, "t")
    md = (tmp_path / "study.md").read_text()
    assert "| parabolic | paper | 1.00 | 70.0% | 71.0% | 10.0% (midpoint) | did not finish |" in md
    assert "on 2,000 test images" in md and "nan" not in md


def test_command_refuses_bad_options_before_any_training(capsys):
    from experiments.ode_study import main

    with pytest.raises(SystemExit):
        main(["--epochs", "0", "--out", "unused"])
    assert "--epochs must be a positive int" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--strategies", "paper,rate bound 1/3"])
    assert "unknown 'rate bound 1/3'" in capsys.readouterr().err
