"""Symplectic steppers: bounded energy, exact reversibility, gradients, splitting tableaux.

Every test runs over the whole stepper registry, plus a user's splitting method registered
for the test: what a registered method gets with no code of its own.
"""

import contextlib

import pytest
import torch

import neuralpde
import solvers
from solvers._methods import STEPPERS

USER = solvers.SplittingStepper(
    "test_position_verlet",
    order=2,
    tableau=[("drift", 0.5, 0.5), ("kick", 1.0, 0.5), ("drift", 0.5, 0.5)],
)
SYMPLECTIC = sorted(STEPPERS) + [USER.name]


@contextlib.contextmanager
def registered(name):
    """The stepper called ``name``, registering the user's one for the duration."""
    if name != USER.name:
        yield STEPPERS[name]
        return
    solvers.register_stepper(USER)
    try:
        yield USER
    finally:
        del STEPPERS[USER.name]


def split_solve(func, y0, t, method, h):
    with registered(method):
        return solvers.solve(func, y0, t, solvers.Solver(method, step_size=h)).ys


def oscillator():
    return (lambda t, p: p, lambda t, q: -q), lambda q, p: 0.5 * (q**2 + p**2)


def pendulum():
    return (lambda t, p: p, lambda t, q: -torch.sin(q)), lambda q, p: 0.5 * p**2 - torch.cos(q)


def energy_error(method, problem, h=0.1, n=10_000):
    func, H = problem()
    y0 = (torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64))
    t = torch.arange(n + 1, dtype=torch.float64) * h
    if method in SYMPLECTIC:
        q, p = split_solve(func, y0, t, method, h)
    else:
        f_q, f_p = func

        def joint(t, y):
            return (f_q(t, y[1]), f_p(t, y[0]))

        q, p = solvers.odeint(joint, y0, t, method=method, options={"step_size": h})
    return (H(q, p) - H(*y0)).abs().flatten()


@pytest.mark.parametrize("problem", [oscillator, pendulum])
@pytest.mark.parametrize("method", SYMPLECTIC)
def test_energy_bounded_over_1e4_steps(method, problem):
    err = energy_error(method, problem)
    first, second = err[:5000].max(), err[5000:].max()
    # Bounded: no growth from the first half to the second, and small in absolute terms
    # (O(h^order) oscillation of a modified Hamiltonian).
    assert second <= 1.1 * first + 1e-12
    assert float(err.max()) < 0.1


@pytest.mark.parametrize("problem", [oscillator, pendulum])
def test_euler_and_rk4_drift_at_same_step(problem):
    # The control: non-symplectic methods accumulate energy error linearly (rk4) or
    # exponentially (euler) over the same 10^4 steps.
    e_euler = energy_error("euler", problem)
    e_rk4 = energy_error("rk4", problem)
    assert float(e_euler[-1]) > 1.0
    assert float(e_rk4[-1]) > 1.8 * float(e_rk4[5000])


@pytest.mark.parametrize("h", [0.01, 0.07])  # 0.07 leaves a short step: the same cell back
@pytest.mark.parametrize("method", SYMPLECTIC)
def test_forward_then_backward_returns_to_start(method, h):
    torch.manual_seed(0)
    W = torch.randn(5, 5, dtype=torch.float64)

    def f_q(t, p):
        return torch.tanh(W @ p) * (1 + t)

    def f_p(t, q):
        return -torch.sin(W.T @ q) * torch.cos(t)

    y0 = (torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64))
    fwd = split_solve((f_q, f_p), y0, torch.tensor([0.0, 3.0]), method, h)
    yT = (fwd[0][-1], fwd[1][-1])
    back = split_solve((f_q, f_p), yT, torch.tensor([3.0, 0.0]), method, h)
    assert torch.allclose(back[0][-1], y0[0], rtol=0, atol=1e-12)
    assert torch.allclose(back[1][-1], y0[1], rtol=0, atol=1e-12)
    # And the trip was not trivial.
    assert (yT[0] - y0[0]).abs().max() > 0.1


@pytest.mark.parametrize("method", SYMPLECTIC)
def test_gradcheck(method):
    # 0.25 does not divide 0.5 - 0: the output at 0.5 is interpolated between two steps.
    torch.manual_seed(0)
    W = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    q0 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    p0 = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def run(q0, p0, W):
        func = (lambda t, p: torch.tanh(W @ p), lambda t, q: -W.T @ q * torch.cos(t))
        return split_solve(func, (q0, p0), torch.tensor([0.0, 0.4, 1.0]), method, 0.25)

    assert torch.autograd.gradcheck(run, (q0, p0, W))


def test_leapfrog_is_the_papers_two_step_recursion():
    # y_{j+1} = 2 y_j - y_{j-1} + h^2 f(t_j, y_j), y_{-1} = y_0 - h v_0, unrolled by hand.
    torch.manual_seed(1)
    W = torch.randn(4, 4, dtype=torch.float64)
    h, n = 0.3, 7

    def f(t, y):
        return -torch.relu(W @ y) * (1 + t)

    y0, v0 = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    y, v = solvers.odeint_second_order(
        f, y0, v0, torch.arange(n + 1, dtype=torch.float64) * h, step_size=h
    )
    prev, cur = y0 - h * v0, y0
    for j in range(n):
        # Evaluations are at the cell midpoint t_j + h/2; for θ piecewise constant on the
        # cell this is θ_j, the paper's choice.
        prev, cur = cur, 2 * cur - prev + h**2 * f(torch.tensor(j * h + h / 2), cur)
        assert torch.allclose(y[j + 1], cur, atol=1e-12)
        assert torch.allclose(v[j + 1], (cur - prev) / h, atol=1e-12)


def test_symplectic_euler_from_rest_is_leapfrog_one_step_late():
    # The second-order network starts at rest (Y'(0) = 0). Symplectic Euler drifts first, so
    # its first step moves nothing and its positions are leapfrog's one step late: the last
    # cell's parameter set only kicks the velocity and never reaches the stage's output Y.
    # This is why the network cannot be accurate under Verlet and symplectic Euler at once
    # unless its last parameter set does little (docs/concepts.md).
    torch.manual_seed(2)
    rhs = neuralpde.SecondOrderRHS(3, steps=3, normalization="bias").double()
    with torch.no_grad():
        for p in rhs.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    y0 = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    t = torch.arange(4, dtype=torch.float64)

    def positions(method):
        y, _ = solvers.odeint_second_order(
            rhs.f_p, y0, torch.zeros_like(y0), t, method=method, step_size=1.0
        )
        return y

    euler, leapfrog, verlet = (positions(m) for m in ("symplectic_euler", "leapfrog", "verlet"))
    assert torch.equal(euler[1], y0)
    for j in range(1, 3):
        assert torch.allclose(euler[j + 1], leapfrog[j], atol=1e-12)
    with torch.no_grad():
        rhs.theta.weight[2].add_(torch.randn_like(rhs.theta.weight[2]))
    assert torch.equal(positions("symplectic_euler")[-1], euler[-1])
    for method, before in (("leapfrog", leapfrog), ("verlet", verlet)):
        assert (positions(method)[-1] - before[-1]).abs().max() > 1e-3, method


def test_second_order_methods_converge_to_cosine():
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    y0, v0 = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)
    for method, tol in [
        ("leapfrog", 2e-2),
        ("verlet", 1e-4),
        ("yoshida4", 1e-8),
        ("symplectic_euler", 2e-2),
    ]:
        y, _ = solvers.odeint_second_order(
            lambda t, y: -y, y0, v0, t, method=method, step_size=0.01
        )
        assert abs(float(y[-1]) - torch.cos(torch.tensor(2.0)).item()) < tol, method


@pytest.mark.parametrize("method", SYMPLECTIC)
def test_inverse_undoes_the_step_and_negative_h_is_the_inverse(method):
    torch.manual_seed(2)
    W = torch.randn(4, 4, dtype=torch.float64)
    func = (lambda t, p: torch.tanh(W @ p) * (1 + t), lambda t, q: -torch.sin(W.T @ q) + t)
    y = (torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64))
    t, h = torch.tensor(0.3, dtype=torch.float64), 0.2
    with registered(method) as stepper:
        y1 = stepper.step(func, t, h, y)
        for back in (stepper.inverse(func, t, h, y1), stepper.step(func, t + h, -h, y1)):
            for a, b in zip(back, y):
                assert torch.allclose(a, b, rtol=0, atol=1e-14)
        assert (y1[0] - y[0]).abs().max() > 1e-2


@pytest.mark.parametrize("method", SYMPLECTIC)
def test_tableau_gives_evals_and_symmetry(method):
    with registered(method) as stepper:
        kinds = [k for k, _, _ in stepper.tableau]
        assert stepper.evals == (kinds.count("drift"), kinds.count("kick"))
        adjoint = [(k, a, 1 - c) for k, a, c in reversed(stepper.tableau)]
        assert stepper.symmetric == all(
            k1 == k2 and abs(a1 - a2) < 1e-12 and abs(c1 - c2) < 1e-12
            for (k1, a1, c1), (k2, a2, c2) in zip(stepper.tableau, adjoint)
        )
    assert STEPPERS["verlet"].symmetric and STEPPERS["yoshida4"].symmetric
    assert not STEPPERS["symplectic_euler"].symmetric


@pytest.mark.parametrize(
    "tableau,match",
    [
        ([("drift", 1.0, 0.5), ("jump", 1.0, 0.5)], "kind 'drift' or 'kick'"),
        ([("drift", 1.0, 1.0), ("kick", 1.0, 0.5)], "strictly inside"),
        ([("drift", 0.5, 0.5), ("kick", 1.0, 0.5)], "drift coefficients sum to 0.5"),
        ([("drift", 1.0, 0.5), ("kick", float("nan"), 0.5)], "finite coefficient"),
    ],
)
def test_bad_tableau_is_refused(tableau, match):
    with pytest.raises(ValueError, match=match):
        solvers.SplittingStepper("bad", order=1, tableau=tableau)


def test_register_refuses_taken_names_and_classes():
    with pytest.raises(ValueError, match="already exists"):
        solvers.register_stepper(
            solvers.SplittingStepper("rk4", 1, [("drift", 1, 0.5), ("kick", 1, 0.5)])
        )
    with pytest.raises(ValueError, match="already exists"):
        solvers.register_stepper(STEPPERS["verlet"])
    with pytest.raises(TypeError, match="Stepper instance"):
        solvers.register_stepper(solvers.SplittingStepper)


def test_stepper_gives_a_registered_methods_tableau_and_names_the_others():
    verlet = solvers.stepper("verlet")
    assert verlet is STEPPERS["verlet"] and verlet.tableau and verlet.order == 2
    with registered(USER.name):
        assert solvers.stepper(USER.name) is USER  # a user's stepper too
    for name in ("rk4", "dopri5", "no_such_method", None):
        with pytest.raises(ValueError, match="is not a registered symplectic method"):
            solvers.stepper(name)
