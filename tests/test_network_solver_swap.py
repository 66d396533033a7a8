"""Solver swap on a fixed network: refinements converge, NFE grows as expected."""

import math

import pytest
import torch

import neuralpde

pytestmark = pytest.mark.usefixtures("float64")


def stage_of(arch, interpolation="constant"):
    torch.manual_seed(0)
    rhs_cls = {
        "parabolic": neuralpde.ParabolicRHS,
        "hamiltonian": neuralpde.HamiltonianRHS,
        "second_order": neuralpde.SecondOrderRHS,
    }[arch]
    stage = neuralpde.Stage(rhs_cls(4, steps=3, step_size=1.0, interpolation=interpolation))
    # Kernels at 0.4x their initial size keep the stage non-stiff (ρ(KᵀK) ~ 1), so the
    # asymptotic orders show at modest step sizes and adaptive solves stay cheap.
    with torch.no_grad():
        for theta in stage.rhs.thetas():
            theta.weight.mul_(0.4)
    return stage, torch.randn(1, 4, 4, 4)


def reference(stage, x):
    """A fine rk4 solution (h = 1/256) of the same ODE, far below the errors measured."""
    with torch.no_grad():
        stage.set_solver("rk4", step_size=1 / 256)
        return stage(x)


@pytest.mark.parametrize("arch", ["parabolic", "hamiltonian", "second_order"])
def test_euler_refinement_converges_first_order(arch):
    stage, x = stage_of(arch)
    with torch.no_grad():
        ref = reference(stage, x)
        errs, nfes = [], []
        for m in (1, 2, 4, 8, 16, 32, 64):
            stage.set_solver("euler", step_size=1.0 / m)
            errs.append(float((stage(x) - ref).norm()))
            nfes.append(stage.last_stats["nfe"])
    assert nfes == [3, 6, 12, 24, 48, 96, 192]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    # In the asymptotic range each halving of h halves the error (first order).
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(4, 6)]
    assert all(0.8 < r < 1.3 for r in rates), (errs, rates)


@pytest.mark.parametrize("arch", ["parabolic", "hamiltonian", "second_order"])
def test_rk4_and_dopri5_converge_on_continuous_weights(arch):
    # With θ(t) linear in time the right-hand side is continuous in t, but relu makes it only
    # Lipschitz in Y: where the trajectory crosses a kink, high-order methods drop to
    # second order. So rk4 must converge at least at rate 2, and dopri5's error must follow
    # its tolerance while its NFE grows.
    stage, x = stage_of(arch, "linear")
    with torch.no_grad():
        ref = reference(stage, x)
        errs = []
        for h in (0.5, 0.25, 0.125):
            stage.set_solver("rk4", step_size=h)
            errs.append(float((stage(x) - ref).norm()))
        assert math.log2(errs[1] / errs[2]) > 1.8, errs
        derrs, nfes = [], []
        for tol in (1e-3, 1e-5, 1e-7):
            # step_size=None: the rk4 step set above does not apply to dopri5 (set_solver
            # keeps every setting not named, and refuses one the new method cannot take).
            stage.set_solver("dopri5", step_size=None, rtol=tol, atol=tol)
            derrs.append(float((stage(x) - ref).norm()))
            nfes.append(stage.last_stats["nfe"])
    assert derrs[0] > derrs[1] > derrs[2]
    assert nfes[0] < nfes[1] < nfes[2]


def test_dopri5_is_told_where_theta_jumps():
    # With piecewise-constant θ the adaptive solver must step exactly to each jump: its
    # answer then agrees with a very fine Euler discretization of the same ODE.
    stage, x = stage_of("parabolic")
    with torch.no_grad():
        b = reference(stage, x)
        stage.set_solver("dopri5", step_size=None, rtol=1e-8, atol=1e-8)
        a = stage(x)
        told = stage.last_stats
        # The control: the same solve not told about the jumps finds them by rejecting steps.
        stage.set_solver("dopri5", rtol=1e-8, atol=1e-8, jump_t=torch.tensor([]))
        stage(x)
        blind = stage.last_stats
    assert float((a - b).norm() / b.norm()) < 1e-5  # both within ~1e-6 of the ODE
    assert told["rejected"] < blind["rejected"] and told["nfe"] < blind["nfe"]


@pytest.mark.parametrize("arch", ["hamiltonian", "second_order"])
@pytest.mark.parametrize("method", ["symplectic_euler", "leapfrog", "verlet", "yoshida4"])
def test_symplectic_methods_converge_on_hyperbolic_stage(arch, method):
    # On a network stage relu's kinks make the observed rates erratic between 1 and 2 for
    # the higher-order methods (their orders are proven on smooth problems in
    # test_solvers_order.py); here the swap must converge to the same ODE solution.
    stage, x = stage_of(arch, "linear")
    order = {"symplectic_euler": 1, "leapfrog": 1, "verlet": 2, "yoshida4": 4}[method]
    with torch.no_grad():
        ref = reference(stage, x)
        errs = []
        for h in (0.25, 0.125, 0.0625):
            stage.set_solver(method, step_size=h)
            errs.append(float((stage(x) - ref).norm()))
    assert errs[0] > errs[1] > errs[2], errs
    assert math.log2(errs[0] / errs[2]) > 2 * min(order, 2) * 0.6, errs


@pytest.mark.parametrize(
    "arch,method",
    [
        ("hamiltonian", "symplectic_euler"),
        ("hamiltonian", "verlet"),
        ("second_order", "leapfrog"),
        ("second_order", "yoshida4"),
    ],
)
def test_hyperbolic_stage_run_backwards_recovers_input(arch, method):
    import solvers

    stage, x = stage_of(arch)
    rhs = stage.rhs
    with torch.no_grad():
        state = rhs.to_state(x)
        fwd = solvers.odeint(
            rhs.separable,
            state,
            torch.tensor([0.0, 3.0]),
            method=method,
            options={"step_size": 1.0},
        )
        end = (fwd[0][-1], fwd[1][-1])
        back = solvers.odeint(
            rhs.separable, end, torch.tensor([3.0, 0.0]), method=method, options={"step_size": 1.0}
        )
    assert torch.allclose(rhs.from_state((back[0][-1], back[1][-1])), x, rtol=0, atol=1e-12)
    assert (rhs.from_state(end) - x).abs().max() > 1e-2
