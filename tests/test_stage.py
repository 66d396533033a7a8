"""Stage.set_solver changes only what it is given; a stage's solver is one solvers.Solver."""

import pytest
import torch

import neuralpde
import solvers


def test_step_size_change_keeps_reversible_memory():
    # The reproduction: set_solver(step_size=0.5) silently switched memory to autograd.
    net = neuralpde.PDECNN("hamiltonian", 3, 10, (8, 8), memory="reversible")
    net.set_solver(step_size=0.5)
    (stage,) = net.stages
    assert (stage.method, stage.step_size, stage.memory) == ("symplectic_euler", 0.5, "reversible")
    net.set_solver(checkpoint_every=2)
    net.set_solver("verlet")
    assert (stage.method, stage.step_size, stage.memory) == ("verlet", 0.5, "reversible")
    assert stage.options == {"checkpoint_every": 2}
    # And the forward pass really runs with what was kept: 6 Verlet steps of h = 0.5.
    net(torch.randn(1, 3, 4, 4))
    assert net.solver_stats()[0]["steps"] == 6


def test_tolerances_and_options_are_kept_until_named():
    stage = neuralpde.Stage(neuralpde.ParabolicRHS(2, steps=2))
    stage.set_solver("dopri5", rtol=1e-6, max_num_steps=500)
    stage.set_solver(atol=1e-7)
    s = stage.solver
    assert (s.method, s.rtol, s.atol, dict(s.options)) == (
        "dopri5",
        1e-6,
        1e-7,
        {"max_num_steps": 500},
    )
    stage.set_solver(max_num_steps=800)  # an option is replaced by name, the others stay
    assert stage.options == {"max_num_steps": 800}


def test_method_change_keeps_the_rest_and_names_what_does_not_fit():
    stage = neuralpde.Stage(neuralpde.SecondOrderRHS(2, steps=2, step_size=0.5))
    # The default step (None: the training step) fits every fixed-step method and none of
    # the adaptive ones, so it carries over both ways.
    stage.set_solver("rk4")
    assert stage.step_size == 0.5 and stage.solver.step_size is None
    stage.set_solver("dopri5")
    assert stage.step_size is None
    stage.set_solver("leapfrog")
    assert stage.step_size == 0.5
    # A step the user set does not silently vanish: the adaptive method refuses it, and
    # the stage is unchanged after the error.
    stage.set_solver(step_size=0.25)
    before = stage.solver
    with pytest.raises(ValueError, match="step_size=0.25 is for fixed-step.*pass step_size=None"):
        stage.set_solver("dopri5")
    assert stage.solver == before
    stage.set_solver("dopri5", step_size=None)
    assert stage.kind == "adaptive"
    # Nor does a memory mode: reversible memory, then a Runge–Kutta method, is an error
    # that says the memory mode was kept and what to pass.
    stage.set_solver("leapfrog", memory="reversible")
    with pytest.raises(
        ValueError, match="'rk4' is not one.*keeps what it is not given.*reversible"
    ):
        stage.set_solver("rk4")
    assert stage.memory == "reversible" and stage.method == "leapfrog"
    stage.set_solver("rk4", memory="autograd")
    assert (stage.method, stage.memory) == ("rk4", "autograd")
    # checkpoint_every belongs to reversible memory (a rule of solvers.Solver, asked once).
    with pytest.raises(ValueError, match="checkpoint_every is an option of memory='reversible'"):
        stage.set_solver(checkpoint_every=3)


def test_reset_and_method_none_return_to_the_dynamics_own_scheme():
    stage = neuralpde.Stage(neuralpde.HamiltonianRHS(4, steps=3, step_size=0.5))
    stage.set_solver("verlet", step_size=0.125, memory="reversible", checkpoint_every=4)
    stage.set_solver(method=None)  # the default method; everything else kept
    assert (stage.method, stage.step_size, stage.memory) == (
        "symplectic_euler",
        0.125,
        "reversible",
    )
    stage.reset_solver()
    assert stage.solver == solvers.Solver("symplectic_euler", rtol=1e-3, atol=1e-4)
    assert (stage.step_size, stage.memory, stage.options) == (0.5, "autograd", {})
    net = neuralpde.PDECNN("second_order", 1, 2, (4, 4, 4), method="rk4", step_size=0.5)
    net.set_solver("dopri5", stage=1)
    net.reset_solver(stage=1)
    assert [s.method for s in net.stages] == ["rk4", "leapfrog"]
    net.reset_solver()
    assert [(s.method, s.step_size) for s in net.stages] == [("leapfrog", 0.5)] * 2


def test_solver_value_round_trips_and_is_checked_against_the_dynamics():
    stage = neuralpde.Stage(neuralpde.HamiltonianRHS(4))
    saved = stage.solver
    stage.set_solver("yoshida4", step_size=0.5, memory="reversible")
    assert stage.solver != saved
    stage.solver = saved
    assert stage.solver == saved and stage.method == "symplectic_euler"
    parabolic = neuralpde.Stage(neuralpde.ParabolicRHS(4))
    with pytest.raises(ValueError, match="'verlet' needs a split"):
        parabolic.solver = solvers.Solver("verlet", step_size=0.5)
    with pytest.raises(TypeError, match="solver must be a solvers.Solver"):
        parabolic.solver = "rk4"
    assert parabolic.method == "euler"


def test_network_change_is_all_or_nothing():
    net = neuralpde.PDECNN("hamiltonian", 1, 2, (4, 4, 4))
    net.set_solver("rk4", memory="adjoint", stage=1)
    before = [s.solver for s in net.stages]
    # Stage 0 could take verlet, stage 1 cannot (adjoint memory): neither changes.
    with pytest.raises(ValueError, match="stage 1: memory='adjoint'.*'verlet'"):
        net.set_solver("verlet")
    assert [s.solver for s in net.stages] == before


def test_network_with_its_solvers_copies_and_pickles(tmp_path):
    # A stage holds a solvers.Solver (read-only options): copy.deepcopy (EMA, model
    # snapshots) and torch.save of the whole module must carry it over unchanged.
    import copy

    net = neuralpde.PDECNN("hamiltonian", 1, 2, (4, 4, 4), memory="reversible")
    net.set_solver(checkpoint_every=2, stage=0)
    net.set_solver("dopri5", step_size=None, memory="autograd", max_num_steps=50, stage=1)
    twin = copy.deepcopy(net)
    torch.save(net, tmp_path / "net.pt")
    loaded = torch.load(tmp_path / "net.pt", weights_only=False)
    for other in (twin, loaded):
        assert [s.solver for s in other.stages] == [s.solver for s in net.stages]
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(twin(x), net(x))


def test_training_mix_integrates_each_share_with_its_solver_in_training_only():
    torch.manual_seed(0)
    rhs = neuralpde.SecondOrderRHS(3)
    stage = neuralpde.Stage(rhs, "verlet")
    mix = [solvers.Solver(m) for m in ("verlet", "symplectic_euler", "leapfrog")]
    stage.training_mix = mix
    x = torch.randn(7, 3, 4, 4, requires_grad=True)
    y = stage.train()(x)
    # Shares of 3, 2, 2 images, each exactly what a stage of that one solver gives.
    want = torch.cat(
        [neuralpde.Stage(rhs, s.method)(part) for part, s in zip(x.split([3, 2, 2]), mix)]
    )
    assert torch.equal(y, want)
    assert stage.last_stats["method"] == "verlet+symplectic_euler+leapfrog"
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # A batch smaller than the mix: the empty shares are skipped, nothing is lost.
    shares = [
        neuralpde.Stage(rhs, m)(x[i : i + 1]) for i, m in enumerate(("verlet", "symplectic_euler"))
    ]
    assert torch.equal(stage(x[:2]), torch.cat(shares))
    # Evaluation mode: the stage's own solver, whatever the mix.
    assert torch.equal(stage.eval()(x), neuralpde.Stage(rhs, "verlet")(x))
    assert stage.method == "verlet"
    stage.training_mix = ()
    assert torch.equal(stage.train()(x), neuralpde.Stage(rhs, "verlet")(x))


def test_neighbouring_shares_of_one_fixed_step_solver_are_integrated_together():
    torch.manual_seed(0)
    rhs = neuralpde.ParabolicRHS(3).double()
    stage = neuralpde.Stage(rhs, "euler").train()
    x = torch.randn(7, 3, 4, 4, dtype=torch.float64)
    # euler, euler, midpoint: shares of 3, 2, 2 images; the two forward-Euler shares are one
    # integration of 5 images, the same numbers as two, at one call's cost.
    stage.training_mix = [solvers.Solver(m) for m in ("euler", "euler", "midpoint")]
    y = stage(x)
    want = torch.cat(
        [neuralpde.Stage(rhs, "euler")(x[:5]), neuralpde.Stage(rhs, "midpoint")(x[5:])]
    )
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    assert stage.last_stats["method"] == "euler+midpoint"
    assert stage.last_stats["nfe"] == rhs.steps + 2 * rhs.steps
    # Equal solvers apart are not neighbours: euler, midpoint, euler stays three integrations.
    stage.training_mix = [solvers.Solver(m) for m in ("euler", "midpoint", "euler")]
    torch.testing.assert_close(
        stage(x),
        torch.cat(
            [
                neuralpde.Stage(rhs, m)(p)
                for p, m in zip(x.split([3, 2, 2]), ("euler", "midpoint", "euler"))
            ]
        ),  # fmt: skip
        rtol=1e-12,
        atol=1e-12,
    )
    assert stage.last_stats["method"] == "euler+midpoint+euler"
    # An adaptive solver's steps follow the error of its whole share: its shares stay apart.
    stage.training_mix = [solvers.Solver("dopri5", rtol=1e-6, atol=1e-8)] * 2
    stage(x)
    assert len(stage.last_stats["shares"]) == 2


def test_training_mix_is_checked_against_the_dynamics():
    stage = neuralpde.Stage(neuralpde.ParabolicRHS(4))
    with pytest.raises(ValueError, match="'verlet' needs a split"):
        stage.training_mix = [solvers.Solver("euler"), solvers.Solver("verlet")]
    with pytest.raises(ValueError, match="a training mix of one solver"):
        stage.training_mix = [solvers.Solver("euler")]
    with pytest.raises(TypeError, match='solvers.Solver\\("euler"\\) for a name'):
        stage.training_mix = ["euler", "midpoint"]
    with pytest.raises(TypeError, match="stage: training_mix takes a sequence of solvers.Solver"):
        stage.training_mix = solvers.Solver("euler")
    assert stage.training_mix == ()
    stage.training_mix = [solvers.Solver("euler"), solvers.Solver("midpoint", step_size=0.5)]
    # print(net) shows the mix, each solver with the step it takes here.
    assert "training_mix=[('euler', 1.0), ('midpoint', 0.5)]" in repr(stage)
    # An empty batch passes through as it does without a mix.
    assert stage.train()(torch.randn(0, 4, 5, 5)).shape == (0, 4, 5, 5)
    stage.training_mix = None
    assert stage.training_mix == ()
