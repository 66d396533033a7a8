"""Training strategies that make a trained θ(t) an ODE: options, the penalty, the verdict,
exact resumption of each strategy."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import neuralpde
import solvers
from experiments import ConfigError, fit, load_checkpoint, load_trained, resolve_config
from experiments._config import TrainConfig, discretization_in_words
from experiments._trainer import training_mix
from neuralpde import PDECNN, ConvergenceVerdict, convergence_check
from neuralpde.stability import StabilityPenalty, report

# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "given, message",
    [
        ({"multilevel": [1]}, "can be prolongated at the start of epochs 2..12"),
        ({"multilevel": [13]}, "can be prolongated at the start of epochs 2..12"),
        ({"multilevel": [6, 4]}, "increasing epoch numbers"),
        ({"multilevel": [4, 4]}, "increasing epoch numbers"),
        ({"random_steps": [1.0, -0.5]}, "positive step sizes"),
        ({"random_steps": [1.0], "solver": "dopri5"}, "adaptive"),
        ({"random_steps": [1.0], "multilevel": [5]}, "use one of the two"),
        ({"random_steps": [1.0], "step_size": 0.5}, "replaces --step-size"),
        # A step that does not divide θ's unit cells straddles its jumps (1/n only).
        ({"step_size": 0.75}, "--step-size 0.75: a training step must divide"),
        ({"step_size": 2.0}, "--step-size 2: a training step must divide"),
        ({"random_steps": [1.0, 0.4]}, "--random-steps 0.4: a training step must divide"),
        ({"random_methods": ["dopri5"]}, "dopri5 is adaptive"),
        ({"random_methods": ["euler", "rk9"]}, "unknown method 'rk9'"),
        ({"random_methods": ["euler"], "solver": "dopri5"}, "adaptive"),
        ({"random_methods": ["verlet"]}, "--random-methods verlet"),  # parabolic: one state
        # Forward Euler grows every oscillation: no step of it is stable on a hyperbolic stage.
        ({"random_methods": ["verlet", "euler"], "arch": "hamiltonian"}, "no step of it is"),
        # Validation uses the training method (here the paper's symplectic Euler): listed?
        (
            {
                "random_methods": ["verlet", "leapfrog"],
                "arch": "hamiltonian",
                "rate_bound": 0.0,
                "normalization": "tv",
            },
            "does not list the training method symplectic_euler",
        ),
        ({"random_methods": "verlet"}, "a list of method names"),
        # The rate bound holds rk4's limit (2.79); forward Euler's (2) is below it.
        ({"random_methods": ["rk4", "euler"], "solver": "rk4"}, "h·z <= 2.*below"),
        ({"random_methods": ["verlet", "rk4"], "arch": "hamiltonian", "solver": "verlet"}, None),
        ({"stability_penalty": -1.0}, "must be >= 0"),
        ({"stability_penalty": 0.1, "solver": "dopri5"}, "adaptive"),
        ({"interpolation": "cubic"}, "--interpolation must be one of"),
        ({"interpolation": "linear", "steps": 1}, "needs --steps >= 2"),
        (
            {"interpolation": "linear", "preset": "paper", "dataset": "cifar10"},
            "contradicts --preset paper",
        ),
        # A continuous θ(t) has no jumps for a step to straddle.
        ({"interpolation": "linear", "random_steps": [1.0, 0.4]}, None),
    ],
)
def test_strategy_options_are_checked_with_a_named_error(given, message):
    if message is None:  # on oscillations rk4 (2.83) is at least as stable as Verlet (2)
        resolve_config(**given)
        return
    with pytest.raises(ConfigError, match=message):
        resolve_config(**given)


def test_the_training_mix_is_every_pair_of_method_and_step_and_empty_for_one():
    own = solvers.Solver("midpoint")
    cfg = resolve_config(random_methods=["euler", "midpoint"], random_steps=[1.0, 0.5], seed=3)
    mix = training_mix(cfg, own)
    assert [(s.method, s.step_size) for s in mix] == [
        ("euler", 1.0), ("euler", 0.5), ("midpoint", 1.0), ("midpoint", 0.5),
    ]  # fmt: skip
    steps = training_mix(
        resolve_config(random_steps=[1, 0.5]), solvers.Solver("euler", step_size=0.25)
    )
    assert [(s.method, s.step_size) for s in steps] == [("euler", 1.0), ("euler", 0.5)]
    methods = training_mix(resolve_config(random_methods=["euler", "midpoint"]), own)
    assert [(s.method, s.step_size) for s in methods] == [("euler", None), ("midpoint", None)]
    assert training_mix(resolve_config(), own) == []
    assert training_mix(resolve_config(random_methods=["midpoint"], solver="midpoint"), own) == []


def test_each_batch_is_shared_by_the_mix_and_validation_uses_the_own(monkeypatch, tmp_path):
    seen = []
    real_integrate = neuralpde.Stage._integrate

    def spy_integrate(stage, x):
        seen.append((stage.training, stage.index, stage.method, stage.step_size, x.shape[0]))
        return real_integrate(stage, x)

    monkeypatch.setattr(neuralpde.Stage, "_integrate", spy_integrate)
    cfg = resolve_config(
        widths=[4, 4, 4], epochs=1, train_fraction=0.3, seed=2, solver="midpoint",
        random_methods=["euler", "midpoint"], random_steps=[1.0, 0.5], out=str(tmp_path),
        batch_size=10,
    )  # fmt: skip
    fit(cfg, log=lambda *_: None)
    train = [r for r in seen if r[0]]
    pairs = [("euler", 1.0), ("euler", 0.5), ("midpoint", 1.0), ("midpoint", 0.5)]
    # A full batch of 10: four shares of 3, 3, 2, 2 images, in the mix's order, every stage.
    first = [r[2:] for r in train[:4]]
    assert first == [(*p, n) for p, n in zip(pairs, (3, 3, 2, 2))]
    stages = {r[1] for r in train}
    assert len(stages) > 1
    for stage in stages:
        assert [r[2:4] for r in train if r[1] == stage][:4] == pairs
    report = json.loads((tmp_path / "report.json").read_text())
    assert sum(r[4] for r in train if r[1] == 0) == report["train_images"]  # none dropped
    # report.json says how the steps were held stable, as config.json does.
    bound = {
        k: report[k] for k in ("normalization", "rate_bound", "raw_scale", "stability_penalty")
    }
    assert bound == {
        "normalization": cfg.normalization, "rate_bound": cfg.rate_bound,
        "raw_scale": cfg.raw_scale, "stability_penalty": cfg.stability_penalty,
    }  # fmt: skip
    assert cfg.rate_bound > 0
    evals = [r for r in seen if not r[0]]
    assert evals and {(r[2], r[3]) for r in evals} == {("midpoint", 1.0)}
    assert (
        "each training batch split evenly among the methods euler, midpoint and the steps 1, "
        "0.5 (every pair), validation and test with the training method alone"
        in (tmp_path / "report.md").read_text()
    )
    from experiments._report import _training_mix

    alone = resolve_config(solver="midpoint", random_methods=["euler", "midpoint"])
    assert _training_mix(alone).startswith(
        "; each training batch split evenly among the methods euler, midpoint, validation"
    )
    # The report says how the steps were held stable, not only config.json.
    from experiments._report import _bound

    ham = resolve_config(dataset="imagefolder", arch="hamiltonian")
    assert _bound(ham) == (
        "normalization bias, rate bound 1 of the method's stability limit, raw scale 2 "
        "(raw kernels started at 2× their bounded value: the bounded kernels' learning "
        "rate / 4)"
    )
    # The log and the report say the raw scale in the same words.
    assert _bound(ham).endswith(discretization_in_words(ham).rsplit(", ", 1)[1])
    paper = resolve_config(arch="parabolic", normalization="tv", rate_bound=0.0)
    assert _bound(paper) == "normalization tv, no rate bound"
    penalty = resolve_config(arch="parabolic", rate_bound=0.0, stability_penalty=0.1)
    assert _bound(penalty).endswith("no rate bound, stability penalty 0.1")


def test_help_states_each_discretization_default():
    # A user finds the defaults with --help: the digits' and each arch's on photographs,
    # read from what resolve_config gives.
    from experiments._config import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "forward Euler for the parabolic network, Verlet for the hyperbolic ones" in text
    assert f"default: {resolve_config().rate_bound:g} on the digits" in text
    for arch in ("parabolic", "hamiltonian", "second_order"):
        cfg = resolve_config(dataset="imagefolder", arch=arch)
        bound = "the whole" if cfg.rate_bound == 1 else f"{cfg.rate_bound:g}"
        said = f"{arch} {cfg.solver} at {bound} of its limit with {','.join(cfg.random_methods)}"
        assert text.count(said) == 3, said  # --solver, --random-methods, --rate-bound


def test_the_quick_recipe_is_stable_by_construction_for_every_symmetric_arch():
    for arch, bound, solver in (
        ("parabolic", 0.25, None),
        ("hamiltonian", 0.25, "verlet"),  # second order: its network is its flow
        ("second_order", 0.25, "verlet"),
    ):
        cfg = resolve_config(arch=arch)
        assert (cfg.normalization, cfg.rate_bound, cfg.stability_penalty) == ("bias", bound, 0.0)
        assert cfg.step_size is None and cfg.solver == solver
    # An arch's default stays unless that option is given...
    for arch in ("hamiltonian", "second_order"):
        assert resolve_config(arch=arch, rate_bound=0.1).solver == "verlet"
        assert resolve_config(arch=arch, step_size=0.5).solver == "verlet"
        assert resolve_config(arch=arch, stability_penalty=0.1).solver == "verlet"
        assert resolve_config(arch=arch, random_steps=[1.0, 0.5]).solver == "verlet"
        assert resolve_config(arch=arch, solver="yoshida4").solver == "yoshida4"
        # ...and none with the bound turned off: the paper's scheme.
        paper_scheme = resolve_config(arch=arch, normalization="tv", rate_bound=0.0)
        assert paper_scheme.solver is None  # symplectic Euler, leapfrog
    assert resolve_config(arch="second_order", rate_bound=0.5).rate_bound == 0.5
    # The ResNet control has no normalization to choose and no step limit to hold.
    assert resolve_config(arch="resnet").normalization == "tv"
    with pytest.raises(ConfigError, match="no choice of normalization"):
        resolve_config(arch="resnet", normalization="bias")
    # No rates declared: no bound taken from the recipe, none accepted when given, and a
    # run saved with the recipe's bound (never applied) loads as the same run.
    for dataset in ("digits", "imagefolder"):
        assert resolve_config(dataset=dataset, arch="resnet").rate_bound == 0.0
    with pytest.raises(ConfigError, match="resnet dynamics declares no rates"):
        resolve_config(arch="resnet", rate_bound=0.5)
    with pytest.raises(ConfigError, match="penalty would add nothing"):
        resolve_config(arch="resnet", stability_penalty=0.1)
    saved = resolve_config(arch="resnet").to_dict()
    saved |= {"rate_bound": 0.25, "raw_scale": 2.0, "stability_penalty": 0.1}
    loaded = resolve_config(TrainConfig.from_dict(saved))
    assert (loaded.rate_bound, loaded.raw_scale, loaded.stability_penalty) == (0.0, 1.0, 0.0)
    # An image folder without --preset gets the same recipe, the parabolic network its own
    # training scheme on photographs (IMAGES_ARCH_OPTIONS): forward Euler at 8/10 of its
    # limit, with three shares of each batch to midpoint's one, as one choice that any
    # discretization option replaces.
    for dataset in ("imagefolder", "cifar10", "stl10"):
        cfg = resolve_config(dataset=dataset)
        assert (cfg.normalization, cfg.rate_bound) == ("bias", 0.8)
        assert (cfg.solver, cfg.random_steps, cfg.step_size) == ("euler", [], None)
        assert cfg.random_methods == ["euler", "euler", "euler", "midpoint"]
    for given in ({"rate_bound": 0.25}, {"solver": "euler"}, {"step_size": 0.5},
                  {"multilevel": [2, 3]}, {"stability_penalty": 0.1}):  # fmt: skip
        cfg = resolve_config(dataset="imagefolder", **given)
        assert cfg.random_steps == cfg.random_methods == [], given
        assert cfg.solver == given.get("solver"), given
        assert cfg.rate_bound == given.get("rate_bound", 0.25), given
    assert resolve_config(dataset="imagefolder", certified=True).random_steps == []
    # The Hamiltonian network's: Verlet at its whole limit, sharing each batch with
    # symplectic Euler.
    cfg = resolve_config(dataset="imagefolder", arch="hamiltonian")
    assert (cfg.solver, cfg.rate_bound, cfg.random_steps) == ("verlet", 1.0, [])
    assert cfg.random_methods == ["verlet", "symplectic_euler"]
    # ...its raw kernels at twice the bound (a quarter of the learning rate for them): not
    # a discretization option, so given alone it keeps the rest of the default.
    assert cfg.raw_scale == 2.0
    cfg = resolve_config(dataset="imagefolder", arch="hamiltonian", raw_scale=1.0)
    assert (cfg.raw_scale, cfg.rate_bound, cfg.random_methods[-1]) == (1.0, 1.0, "symplectic_euler")
    assert resolve_config(dataset="imagefolder", arch="hamiltonian", rate_bound=0.5).raw_scale == 1
    # The second-order network's too; the parabolic one (and the ResNet control) keep 1.
    assert resolve_config(dataset="imagefolder", arch="second_order").raw_scale == 2.0
    for arch in ("parabolic", "resnet"):
        assert resolve_config(dataset="imagefolder", arch=arch).raw_scale == 1.0
    assert resolve_config(arch="hamiltonian").raw_scale == 1.0  # digits
    assert resolve_config(dataset="imagefolder", arch="hamiltonian", preset="paper",
                          recipe="cifar10").raw_scale == 1.0  # fmt: skip
    with pytest.raises(ConfigError, match="--raw-scale is where .* got 0.5"):
        resolve_config(dataset="imagefolder", arch="hamiltonian", raw_scale=0.5)
    with pytest.raises(ConfigError, match="this run has no rate bound; drop --raw-scale"):
        resolve_config(arch="hamiltonian", raw_scale=2.0, rate_bound=0.0)
    cfg = resolve_config(dataset="imagefolder", arch="hamiltonian", rate_bound=0.25)
    assert (cfg.solver, cfg.random_steps, cfg.random_methods) == ("verlet", [], [])
    assert resolve_config(arch="hamiltonian").random_methods == []  # digits: Verlet at 1/4
    # The second-order network's: the same at 7/10 (at 9/10 it is no ODE).
    cfg = resolve_config(dataset="imagefolder", arch="second_order")
    assert (cfg.solver, cfg.rate_bound, cfg.random_steps) == ("verlet", 0.7, [])
    assert cfg.random_methods == ["verlet", "symplectic_euler", "leapfrog"]
    assert resolve_config(arch="second_order").rate_bound == 0.25


def line_of(arch: str) -> str:
    return discretization_in_words(resolve_config(dataset="imagefolder", arch=arch))


def test_the_run_says_how_it_discretizes_and_when_an_option_replaced_the_default():
    # One discretization option given alone replaces the photographs' default whole (the
    # bound falls to the digits' 1/4): the run's log says so, and names the flags to give.
    line = discretization_in_words(resolve_config(dataset="imagefolder", arch="hamiltonian"))
    assert line.startswith("training discretization: solver verlet, rate bound 1 (")
    assert "Not the photographs' default" not in line
    alone = resolve_config(
        dataset="imagefolder", arch="hamiltonian", random_methods=["verlet", "symplectic_euler"]
    )
    line = discretization_in_words(alone)
    assert "rate bound 0.25 (the fraction of its stability limit), random methods verlet," in line
    assert (
        "Not the photographs' default for hamiltonian (--solver verlet --rate-bound 1 "
        "--random-methods verlet,symplectic_euler --raw-scale 2)"
    ) in line
    # The digits and the paper's scheme have no photographs' default to depart from.
    assert "Not the" not in discretization_in_words(resolve_config(arch="hamiltonian"))
    paper = resolve_config(dataset="cifar10", preset="paper", arch="second_order")
    assert (
        discretization_in_words(paper) == "training discretization: solver leapfrog, no rate bound"
    )
    # The raw scale is said where it is not 1.
    assert line_of("hamiltonian").endswith(
        "random methods verlet,symplectic_euler, raw scale 2 (raw kernels started at 2× "
        "their bounded value: the bounded kernels' learning rate / 4)"
    )
    # Adam's step does not follow the gradient's size: the rate falls as 1/s, not 1/s².
    adam = resolve_config(arch="hamiltonian", raw_scale=2.0, optimizer="adam")
    assert discretization_in_words(adam).endswith("the bounded kernels' learning rate / 2)")
    # An arch without a photographs' default (the ResNet control) has nothing to depart from.
    for dataset in ("digits", "imagefolder"):
        line = discretization_in_words(resolve_config(dataset=dataset, arch="resnet"))
        assert line == "training discretization: solver euler, no rate bound"
    # Nor Table 1's paper configuration, the paper's scheme given as options.
    scheme = resolve_config(
        dataset="imagefolder", arch="second_order", normalization="tv", rate_bound=0.0
    )
    assert "Not the" not in discretization_in_words(scheme)
    # A bound of 0 alone (the bias normalization kept) is a partial choice: still said.
    assert "Not the" in discretization_in_words(
        resolve_config(dataset="imagefolder", arch="second_order", rate_bound=0.0)
    )


def test_a_linear_theta_trains_reports_and_loads_back(tmp_path):
    """--interpolation linear reaches every stage, the log, report.json and the checkpoint."""
    cfg = resolve_config(
        interpolation="linear", widths=[4, 4], epochs=1, train_fraction=0.1, out=str(tmp_path)
    )
    assert discretization_in_words(cfg).startswith(
        "training discretization: solver euler, θ(t) linear, rate bound 0.25"
    )
    lines = []
    fit(cfg, log=lines.append)
    assert any("θ(t) linear" in line for line in lines)
    assert json.loads((tmp_path / "report.json").read_text())["interpolation"] == "linear"
    assert (
        "3 knots per stage, θ(t) linear between them, training step h = 1, trained"
        in (tmp_path / "report.md").read_text()
    )
    net, back = load_trained(tmp_path / "best.pt")
    assert back.interpolation == "linear"
    assert {s.rhs.theta.interpolation for s in net.stages} == {"linear"}
    # A config saved before the option existed loads as the paper's piecewise-constant θ.
    old = {k: v for k, v in cfg.to_dict().items() if k != "interpolation"}
    assert TrainConfig.from_dict(old).interpolation == "constant"


def test_a_run_logs_its_discretization(tmp_path):
    lines = []
    cfg = resolve_config(
        widths=[4, 4], epochs=1, train_fraction=0.1, arch="hamiltonian", out=str(tmp_path)
    )
    fit(cfg, log=lines.append)
    assert (
        "training discretization: solver verlet, rate bound 0.25 (the fraction of its "
        "stability limit)" in lines
    )


def test_paper_preset_is_exactly_the_papers_scheme():
    cfg = resolve_config(dataset="cifar10", preset="paper")
    assert (cfg.step_size, cfg.multilevel, cfg.random_steps, cfg.stability_penalty) == (
        None,
        [],
        [],
        0.0,
    )
    assert (cfg.normalization, cfg.rate_bound) == ("tv", 0.0)
    assert cfg.steps == 3 and cfg.solver is None


# ---------------------------------------------------------------- the penalty


def _hot(arch, scale, widths=(4, 4)):
    torch.manual_seed(0)
    net = PDECNN(arch, 1, 3, widths)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 5:
                p.mul_(scale)
    return net


@pytest.mark.parametrize("arch", ["parabolic", "hamiltonian", "second_order"])
def test_penalty_converges_to_the_reports_rate_and_vanishes_inside_the_limit(arch):
    net = _hot(arch, 3.0)
    pen = StabilityPenalty(net, (1, 8, 8), iters=50)
    value = pen(net)
    # With the iteration converged, the penalty is Σ relu(h z / c − 1)² of the report's
    # rows (z from rho: ρ for parabolic, sqrt(ρ1ρ2) or sqrt(ρ) for hyperbolic).
    rows = report(net, (1, 8, 8))
    expect = 0.0
    for r in rows.rows:
        if r["layer"] in ("K", "K1"):
            expect += max(0.0, r["h"] / r["max_step"] - 1.0) ** 2
    assert value.item() > 0
    torch.testing.assert_close(value.item(), expect, rtol=1e-3, atol=0)
    # A step far inside every limit: no penalty at all.
    net.set_solver(step_size=1e-3)
    assert pen(net).item() == 0.0


def test_penalty_holds_every_solver_of_a_training_mix():
    net = _hot("parabolic", 3.0)
    pen = StabilityPenalty(net, (1, 8, 8), iters=50)
    stages = list(net.stages)

    def with_steps(*hs):
        for st in stages:
            st.training_mix = [solvers.Solver("euler", step_size=h) for h in hs]
        return pen(net).item()

    net.train()
    at_1 = with_steps(1.0, 0.5)
    at_2 = with_steps(2.0, 1.0)
    for st in stages:
        st.training_mix = ()
    own = pen(net).item()  # the own step, h = 1
    assert at_1 == pytest.approx(own, rel=1e-3)  # the power iteration moves a little per call
    assert at_2 > 2 * own  # the h = 2 share is held, not only the own step
    # RK4's limit is larger than forward Euler's: the mix's worst h / c is forward Euler's.
    for st in stages:
        st.set_solver("rk4")
        st.training_mix = [solvers.Solver("rk4"), solvers.Solver("euler")]
    assert pen(net).item() == pytest.approx(own, rel=1e-3)
    net.eval()  # evaluation mode: the own solver alone (RK4)
    assert pen(net).item() < own


def test_penalty_gradient_shrinks_the_spectral_radius():
    net = _hot("parabolic", 3.0)
    pen = StabilityPenalty(net, (1, 8, 8), iters=20)
    w = net.stages[0].rhs.theta.weight
    before = report(net, (1, 8, 8)).rows[0]["rho"]
    opt = torch.optim.SGD([w], lr=1e-3)
    for _ in range(5):
        opt.zero_grad()
        pen(net).backward()
        opt.step()
    after = report(net, (1, 8, 8)).rows[0]["rho"]
    assert after < before


def test_penalty_skips_the_resnet_control_and_adaptive_stages_and_restarts_after_refine():
    assert StabilityPenalty(_hot("resnet", 3.0), (1, 8, 8))(_hot("resnet", 3.0)).item() == 0.0
    net = _hot("parabolic", 3.0)
    pen = StabilityPenalty(net, (1, 8, 8))
    net.set_solver("dopri5", step_size=None)
    assert pen(net).item() == 0.0
    net.set_solver("euler")
    net.refine(2)  # 6 parameter sets per stage now: the vectors start again
    assert pen(net).item() > 0
    assert pen.v0_theta_weight.shape[0] == 6  # a buffer: saved with the training state
    assert "v0_theta_weight" in pen.state_dict()


@pytest.mark.parametrize("bad", [{"iters": 0}, {"margin": 0.0}])
def test_penalty_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        StabilityPenalty(_hot("parabolic", 1.0), (1, 8, 8), **bad)


# ---------------------------------------------------------------- the verdict


def test_verdict_from_scores_in_plain_words():
    good = ConvergenceVerdict(training=0.99, refined=0.985, rk4=0.99, reference=0.988)
    assert good.converged and str(good).startswith("converged")
    bad = ConvergenceVerdict(training=0.99, refined=0.47, rk4=0.96, reference=0.53)
    assert not bad.converged
    text = str(bad)
    assert text.startswith("NOT converged") and "52.0 points" in text and "multilevel" in text
    assert round(bad.step_gap, 4) == 0.52 and round(bad.ode_gap, 4) == 0.46


def test_verdict_counts_a_gap_of_exactly_the_tolerance_as_converged():
    # 1,414 and 1,394 right of 2,000 images: exactly one point apart, though the difference
    # of the two floats is 0.010000000000000009.
    n = 2000
    at = ConvergenceVerdict(training=1414 / n, refined=1414 / n, rk4=1400 / n, reference=1394 / n)
    assert at.ode_gap > 0.01 and at.converged
    # One image more is over the tolerance, on either gap.
    assert not ConvergenceVerdict(
        training=1414 / n, refined=1414 / n, rk4=0, reference=1393 / n
    ).converged
    assert not ConvergenceVerdict(
        training=1414 / n, refined=1435 / n, rk4=0, reference=1414 / n
    ).converged


@pytest.mark.parametrize(
    "method, bound, says, never",
    [
        # Unknown training: the generic advice names the default and what goes beyond it.
        (None, None, ["--rate-bound 0.25", "--step-size", "--multilevel"], ["trained with every"]),
        # Trained without a bound: retrain with it.
        ("euler", 0.0, ["without a rate bound", "--rate-bound 0.25"], ["tighter"]),
        # Already bounded: never the bound it already has; a tighter one, a second-order method.
        (
            "euler",
            0.25,
            ["at 0.25 of", "--solver midpoint", "--solver euler --rate-bound 0.1"],
            ["0.25`"],
        ),  # fmt: skip
        # The photographs' default: the tighter bound keeps the method it was trained with.
        ("midpoint", 0.5, ["--solver midpoint --rate-bound 0.2"], ["second-order training"]),
        ("euler", 0.1, ["--rate-bound 0.04", "--solver midpoint"], ["--rate-bound 0.1`"]),
        ("symplectic_euler", 0.25, ["--solver verlet"], ["midpoint"]),
        ("leapfrog", 0.1, ["--solver verlet", "--rate-bound 0.04"], []),
        (
            "verlet",
            0.25,
            ["--solver verlet --rate-bound 0.1", "--step-size"],
            ["second-order training"],
        ),  # fmt: skip
    ],
)
def test_verdict_advice_follows_how_the_network_was_trained(method, bound, says, never):
    text = str(
        ConvergenceVerdict(
            training=0.9, refined=0.8, rk4=0.8, reference=0.8, method=method, rate_bound=bound
        )
    )
    for s in says:
        assert s in text, (s, text)
    for s in never:
        assert s not in text, (s, text)


@pytest.mark.parametrize(
    "method, bound, shared, says, never",
    [
        # The photographs' parabolic default: the mix stays in every option, and the
        # second-order advice is a larger share for midpoint, not midpoint alone.
        (
            "euler",
            0.8,
            ("euler", "euler", "euler", "midpoint"),
            [
                "--solver euler --random-methods euler,euler,euler,midpoint --rate-bound 0.32",
                "a larger share of each batch for midpoint (`--solver euler --random-methods "
                "euler,euler,euler,midpoint,midpoint --rate-bound 0.8`)",
            ],
            ["--solver midpoint`"],
        ),
        # The hyperbolic ones: Verlet shares with the symplectic methods of its kind.
        (
            "verlet",
            1.0,
            ("verlet", "symplectic_euler", "leapfrog"),
            ["--solver verlet --random-methods verlet,symplectic_euler,leapfrog --rate-bound 0.4"],
            ["second-order training", "larger share"],
        ),
        # A mix without the second-order method: that method is still advised.
        ("euler", 0.25, ("euler", "euler"), ["--solver midpoint`"], ["larger share"]),
    ],
)
def test_verdict_advice_keeps_the_methods_that_shared_each_batch(
    method, bound, shared, says, never
):
    text = str(
        ConvergenceVerdict(
            training=0.9,
            refined=0.8,
            rk4=0.8,
            reference=0.8,
            method=method,
            rate_bound=bound,
            shared=shared,
        )
    )
    for s in says:
        assert s in text, (s, text)
    for s in never:
        assert s not in text, (s, text)


def test_convergence_check_reads_the_training_method_and_bound():
    from neuralpde.stability import constrain

    net = PDECNN("parabolic", 1, 10, (8, 8)).eval()
    x = torch.randn(16, 1, 8, 8)
    assert convergence_check(net, x).rate_bound is None
    constrain(net, (1, 8, 8), fraction=0.3)
    verdict = convergence_check(net, x)
    assert (verdict.method, verdict.rate_bound) == ("euler", 0.3)
    assert verdict.shared == ()
    for stage in net.stages:
        stage.training_mix = [solvers.Solver("euler"), solvers.Solver("midpoint")]
    assert convergence_check(net, x).shared == ("euler", "midpoint")
    assert neuralpde.stability.rate_fraction(net) == 0.3


def test_convergence_check_on_networks_that_are_and_are_not_odes():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    # Zero kernels: F ≡ 0, every solver computes the same map.
    still = PDECNN("parabolic", 1, 10, (8, 8)).eval()
    with torch.no_grad():
        still.stages[0].rhs.theta.weight.zero_()
    verdict = convergence_check(still, x)
    assert verdict.converged and verdict.training == verdict.reference == 1.0
    # Large kernels at h = 1: forward Euler is far from the flow.
    wild = _hot("parabolic", 4.0, widths=(8, 16, 16)).eval()
    solver = wild.stages[0].solver
    verdict = convergence_check(wild, x)
    assert not verdict.converged and verdict.training < 0.9
    assert wild.stages[0].solver == solver  # the stages' own solver is restored
    with pytest.raises(ValueError, match="one label per image"):
        convergence_check(wild, x, torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------- exact resumption

OPTIONS = {"widths": [8, 8], "epochs": 3, "batch_size": 32, "checkpoint_every": 4, "seed": 5}
ARGS = ["--widths", "8,8", "--epochs", "3", "--batch-size", "32", "--checkpoint-every", "4",
        "--seed", "5"]  # fmt: skip
STRATEGIES = {
    "multilevel": ({"multilevel": [2, 3]}, ["--multilevel", "2,3"]),
    "random steps": ({"random_steps": [1.0, 0.5]}, ["--random-steps", "1,0.5"]),
    "random methods": (
        {"solver": "midpoint", "random_methods": ["euler", "midpoint"], "rate_bound": 0.5},
        ["--solver", "midpoint", "--random-methods", "euler,midpoint", "--rate-bound", "0.5"],
    ),
    "stability penalty": ({"stability_penalty": 0.05}, ["--stability-penalty", "0.05"]),
    "rate bound": ({"rate_bound": 0.5}, ["--rate-bound", "0.5"]),
    "second-order method": (
        {"solver": "midpoint", "rate_bound": 0.5},
        ["--solver", "midpoint", "--rate-bound", "0.5"],
    ),
    "paper scheme": (
        {"normalization": "tv", "rate_bound": 0.0},
        ["--normalization", "tv", "--rate-bound", "0"],
    ),
    # Not an ODE strategy, but a per-batch state of the same kind: the learning rate.
    "cosine lr": ({"lr_decay": "cosine"}, ["--lr-decay", "cosine"]),
}


def _metrics(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("seconds")
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_each_strategy_resumes_exactly_after_sigkill(strategy, tmp_path):
    options, args = STRATEGIES[strategy]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "experiments.train", *ARGS, *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed_at, deadline = None, time.monotonic() + 300
    # Kill in the second or third epoch, mid-epoch: after the first prolongation.
    while killed_at is None and proc.poll() is None and time.monotonic() < deadline:
        try:
            s = load_checkpoint(out / "last.pt")
            if s["epoch"] >= 1 and s["batch"] > 0:
                killed_at = (s["epoch"], s["batch"])
        except Exception:
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert killed_at is not None, "the run ended before a mid-epoch checkpoint was seen"
    resumed = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--resume", "--out", str(out)],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    clean = resolve_config(**OPTIONS, **options, out=str(tmp_path / "clean"))
    fit(clean, log=lambda *_: None)
    assert _metrics(out / "metrics.csv") == _metrics(tmp_path / "clean" / "metrics.csv")
    a = load_checkpoint(out / "best.pt")
    b = load_checkpoint(tmp_path / "clean" / "best.pt")
    assert a["level"] == b["level"] == (2 if strategy == "multilevel" else 0)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


class _Killed(BaseException):
    """A kill between two steps of fit (a BaseException: nothing in fit may catch it)."""


@pytest.mark.parametrize("interpolation", ["constant", "linear"])
def test_a_multilevel_run_resumes_from_the_checkpoint_before_its_prolongation(
    interpolation, monkeypatch, tmp_path
):
    # The end-of-epoch checkpoint is written before the next epoch's prolongation: a run
    # stopped in between must resume at the checkpoint's level and refine then.
    import experiments._trainer as trainer

    opts = dict(widths=[8, 8], epochs=3, batch_size=32, seed=5, multilevel=[2],
                train_fraction=0.3, interpolation=interpolation)  # fmt: skip
    lines = []
    clean = fit(resolve_config(**opts, out=str(tmp_path / "clean")), log=lines.append)
    n = 5 if interpolation == "linear" else 6
    words = "knots per stage, θ(t) linear" if interpolation == "linear" else "parameter sets"
    assert f"epoch 2: θ(t) prolongated to {n} {words}" in "\n".join(lines)
    real = trainer._prolongate

    def killed(run, log):
        if trainer.refinements(run.cfg, run.epoch) > run.level:
            raise _Killed
        real(run, log)

    monkeypatch.setattr(trainer, "_prolongate", killed)
    cfg = resolve_config(**opts, out=str(tmp_path / "killed"))
    with pytest.raises(_Killed):
        fit(cfg, log=lambda *_: None)
    state = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert (state["epoch"], state["batch"], state["level"]) == (1, 0, 0)
    monkeypatch.setattr(trainer, "_prolongate", real)
    resumed = fit(cfg, resume=True, log=lambda *_: None)
    assert _metrics(tmp_path / "killed" / "metrics.csv") == _metrics(
        tmp_path / "clean" / "metrics.csv"
    )
    assert (resumed["test_accuracy"], resumed["test_loss"]) == (
        clean["test_accuracy"],
        clean["test_loss"],
    )


def test_multilevel_run_ends_on_the_fine_level_and_loads_back(tmp_path):
    cfg = resolve_config(
        widths=[4, 4], epochs=3, train_fraction=0.2, multilevel=[2, 3], out=str(tmp_path)
    )
    fit(cfg, log=lambda *_: None)
    state = load_checkpoint(tmp_path / "best.pt")
    assert state["level"] == 2 and state["epoch"] == 3  # best chosen on the finest level
    from experiments._swap import load_trained

    net, _ = load_trained(tmp_path / "best.pt")
    assert net.stages[0].rhs.steps == 12 and net.stages[0].step_size == 0.25
    assert isinstance(net, neuralpde.PDECNN)
