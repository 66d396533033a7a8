"""solve() and the odeint facade: torchdiffeq's numbers, statistics, status and clear errors."""

import math

import pytest
import torch
import torchdiffeq

import solvers
from solvers import Solver

pytestmark = pytest.mark.usefixtures("float64")


class Decay(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([[-1.0, 0.5], [-0.5, -0.2]]))

    def forward(self, t, y):
        return y @ self.a.T + torch.sin(t)


Y0 = torch.tensor([[1.0, -1.0], [0.3, 0.2]], dtype=torch.float64)
T = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)
PAIR = (lambda t, p: p, lambda t, q: -q)


@pytest.mark.parametrize(
    "method,kw",
    [
        ("euler", {"options": {"step_size": 0.1}}),
        ("midpoint", {"options": {"step_size": 0.1}}),
        ("rk4", {"options": {"step_size": 0.3}}),  # 0.3 divides neither interval
        ("explicit_adams", {"options": {"step_size": 0.1}}),
        ("dopri5", {"rtol": 1e-6, "atol": 1e-8}),
        ("bosh3", {}),
    ],
)
def test_equals_torchdiffeq(method, kw):
    f = Decay()
    assert torch.equal(
        solvers.odeint(f, Y0, T, method=method, **kw),
        torchdiffeq.odeint(f, Y0, T, method=method, **kw),
    )


def test_solve_equals_odeint():
    f = Decay()
    sol = solvers.solve(f, Y0, T, Solver("rk4", step_size=0.1))
    assert torch.equal(sol.ys, solvers.odeint(f, Y0, T, method="rk4", options={"step_size": 0.1}))
    assert torch.equal(sol.y_final, sol.ys[-1]) and torch.equal(sol.ts, T)
    assert sol.status == "ok" and sol.t_reached == 1.5 and sol.message == ""


def test_adjoint_equals_torchdiffeq_adjoint():
    f = Decay()
    ours = solvers.odeint_adjoint(f, Y0, T, method="rk4", options={"step_size": 0.1})
    ours.sum().backward()
    g_ours = f.a.grad.clone()
    f.a.grad = None
    theirs = torchdiffeq.odeint_adjoint(f, Y0, T, method="rk4", options={"step_size": 0.1})
    theirs.sum().backward()
    assert torch.equal(ours, theirs)
    assert torch.allclose(g_ours, f.a.grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "adjoint",
    [
        {"adjoint_method": "rk4", "adjoint_options": {"step_size": 0.05}},
        {"adjoint_method": "dopri5"},
        {"adjoint_method": "bosh3", "adjoint_rtol": 1e-9, "adjoint_atol": 1e-9},
    ],
)
def test_adjoint_with_another_backward_method_equals_torchdiffeq(adjoint):
    # torchdiffeq refuses a backward method other than the forward's unless adjoint_options
    # are given too (it infers them only for the same method); here they need not be.
    f = Decay()
    ours = solvers.odeint_adjoint(f, Y0, T, method="rk4", options={"step_size": 0.1}, **adjoint)
    ours.sum().backward()
    g_ours = f.a.grad.clone()
    f.a.grad = None
    theirs = torchdiffeq.odeint_adjoint(
        f, Y0, T, method="rk4", options={"step_size": 0.1}, **{"adjoint_options": {}, **adjoint}
    )
    theirs.sum().backward()
    assert torch.equal(ours, theirs)
    assert torch.allclose(g_ours, f.a.grad, rtol=1e-6, atol=0)


def test_tuple_state_gives_tuple():
    def f(t, y):
        return (-y[1], y[0])

    q, p = solvers.solve(f, (Y0[0], Y0[1]), T, Solver("rk4", step_size=0.05)).ys
    assert q.shape == (3, 2) and p.shape == (3, 2)


def test_stats_fixed_adaptive_symplectic():
    f = Decay()
    t = torch.tensor([0.0, 1.0])
    st = solvers.solve(f, Y0, t, Solver("rk4", step_size=0.25)).stats
    assert st == solvers.Stats(nfe=16, steps=4) and st.as_dict() == {"nfe": 16, "steps": 4}
    st = solvers.solve(f, Y0, t, Solver("dopri5")).stats
    assert st.steps > 0 and st.rejected >= 0
    # dopri5 is FSAL: 6 new evaluations per attempted step, plus 2 to pick the first step.
    assert st.nfe == 6 * (st.steps + st.rejected) + 2
    st = solvers.solve(PAIR, (Y0[0], Y0[1]), t, Solver("verlet", step_size=0.1)).stats
    assert st.as_dict() == {"nfe": 30, "steps": 10, "nfe_q": 10, "nfe_p": 20}


def _evaluation_times(method, t, h):
    seen = []

    def f(t, y):
        seen.append(float(t))
        return -y

    if solvers.methods()[method] == "symplectic":
        solvers.solve((f, f), (Y0, Y0), t, Solver(method, step_size=h))
    else:
        solvers.solve(f, Y0, t, Solver(method, step_size=h))
    return seen


@pytest.mark.parametrize("t", [[0.0, 1.0], [1.0, 0.0], [0.0, 0.4, 1.0]])
def test_one_grid_for_every_fixed_step_method(t):
    """euler and symplectic Euler at step 0.3 on [0, 1] step through the same cells.

    Euler evaluates at each cell's start, symplectic Euler at its midpoint (right-open
    piecewise-constant weights then give both the same θ_j).
    """
    starts = _evaluation_times("euler", torch.tensor(t), 0.3)
    mids = _evaluation_times("symplectic_euler", torch.tensor(t), 0.3)[::2]
    ends = starts[1:] + [t[-1]]
    assert len(starts) == 4 == len(mids)
    for a, b, m in zip(starts, ends, mids):
        assert m == pytest.approx(0.5 * (a + b), abs=1e-12)
    # The grid is torchdiffeq's, over the whole span: 0, .3, .6, .9, 1.
    if t[0] < t[-1]:
        assert starts == pytest.approx([0.0, 0.3, 0.6, 0.9], abs=1e-12)
    else:  # decreasing: the same cells walked backwards (the short one is [0.9, 1])
        assert starts == pytest.approx([1.0, 0.9, 0.6, 0.3], abs=1e-12)


def test_no_output_time_is_dropped():
    """t = [0, 1e-9] with step 0.1: two rows (torchdiffeq leaves the second unfilled)."""
    for t in (torch.tensor([0.0, 1e-9], dtype=torch.float32), [0.0, 1e-9]):
        for method in ("euler", "rk4", "verlet"):
            func, y0 = (
                (PAIR, (torch.ones(2), torch.ones(2)))
                if method == "verlet"
                else (
                    lambda t, y: -y,
                    torch.ones(2),
                )
            )
            ys = solvers.solve(func, y0, t, Solver(method, step_size=0.1)).ys
            for y in ys if isinstance(ys, tuple) else (ys,):
                assert y.shape == (2, 2) and torch.allclose(y[1], y[0], atol=1e-8)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="unknown method 'rk5'.*dopri5.*verlet"):
        solvers.odeint(Decay(), Y0, T, method="rk5")


def test_symplectic_needs_split_state_and_pair_of_functions():
    with pytest.raises(TypeError, match="split state"):
        solvers.solve((Decay(), Decay()), Y0, T, Solver("verlet", step_size=0.1))
    with pytest.raises(TypeError, match=r"\(f_q, f_p\)"):
        solvers.solve(Decay(), (Y0, Y0), T, Solver("verlet", step_size=0.1))


def test_rk_method_rejects_pair_of_functions():
    with pytest.raises(TypeError, match="one function"):
        solvers.solve((Decay(), Decay()), (Y0, Y0), T, Solver("rk4", step_size=0.1))


@pytest.mark.parametrize("t", [[0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
def test_non_monotone_t(t):
    with pytest.raises(ValueError, match="t must"):
        solvers.solve(Decay(), Y0, torch.tensor(t), Solver("rk4", step_size=0.1))


def test_nan_in_symplectic_state_names_the_step_and_time():
    def f_p(t, q):
        # Finite until t = 0.5, then NaN: the error must name step 5 (t = 0.5 to 0.6).
        return torch.where(t > 0.5, torch.full_like(q, float("nan")), -q)

    for save in ("all", "final"):
        with pytest.raises(solvers.NonFiniteError, match="step 5") as err:
            solvers.solve(
                (lambda t, p: p, f_p),
                (Y0, Y0),
                torch.tensor([0.0, 1.0]),
                Solver("verlet", step_size=0.1),
                save=save,
            )
        assert err.value.step == 5 and abs(err.value.t - 0.5) < 1e-12


def test_nan_in_torchdiffeq_state_names_the_time():
    def f(t, y):
        return torch.where(t > 0.8, torch.full_like(y, float("inf")), -y)

    with pytest.raises(solvers.NonFiniteError, match="t=0.7 and t=1.5"):
        solvers.solve(f, Y0, T, Solver("euler", step_size=0.1))
    with pytest.raises(solvers.NonFiniteError, match="between t=0.0 and t=1.5"):
        solvers.solve(f, Y0, T, Solver("euler", step_size=0.1), save="final")


def test_nan_in_initial_state():
    with pytest.raises(solvers.NonFiniteError, match="NaN or Inf before the first step"):
        solvers.solve(Decay(), torch.full((2,), float("nan")), T, Solver("rk4", step_size=0.1))


def test_too_many_steps_is_a_clear_error():
    with pytest.raises(solvers.SolverError, match="max_num_steps") as err:
        solvers.solve(
            lambda t, y: -1e4 * y,
            Y0,
            torch.tensor([0.0, 10.0]),
            Solver("dopri5", options={"max_num_steps": 50}),
        )
    assert err.value.status == "max_num_steps"


def test_solve_stops_at_10000_steps_by_default():
    with pytest.raises(solvers.SolverError, match="more than 10000 steps"):
        solvers.solve(lambda t, y: -1e6 * y, Y0, torch.tensor([0.0, 100.0]), Solver("bosh3"))


def test_underflow_is_a_clear_error():
    def blowup(t, y):
        return y**2

    with pytest.raises((solvers.SolverError, solvers.NonFiniteError)):
        solvers.solve(blowup, torch.ones(1), torch.tensor([0.0, 2.0]), Solver("dopri5"))


def test_a_field_defined_up_to_the_last_time_is_named_and_step_t_solves_it():
    # Adaptive steps may end past t[-1] (the output is interpolated back): a field that is
    # not defined there underflows the step size; the error says so and step_t stops there.
    def f(t, y):
        v = torch.cos(t) * torch.ones_like(y)
        return v if float(t) <= 1.0 else v * float("nan")

    y0, t = torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(solvers.SolverError, match=r"step_t"):
        solvers.solve(f, y0, t, Solver("dopri5"))
    for ys in (
        solvers.solve(f, y0, t, Solver("dopri5", options={"step_t": t[-1:]})).ys,
        solvers.odeint(f, y0, t, options={"step_t": t[-1:]}),
    ):
        assert abs(ys[-1].item() - (1.0 + math.sin(1.0))) < 1e-6


def test_solvers_import_without_neuralpde():
    import subprocess
    import sys

    code = "import sys, solvers; assert 'neuralpde' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_throw_false_gives_partial_solution_and_status():
    t = torch.tensor([0.0, 1.0, 2.0, 3.0])

    def f_p(t, q):
        return torch.where(t > 1.5, torch.full_like(q, float("nan")), -q)

    sol = solvers.solve(
        (lambda t, p: p, f_p), (Y0[0], Y0[1]), t, Solver("verlet", step_size=0.1), throw=False
    )
    q, p = sol.ys
    assert sol.status == "nonfinite" and sol.t_reached == 1.0 and "t=1.5" in sol.message
    assert torch.isfinite(q[:2]).all() and torch.isnan(q[2:]).all()
    assert torch.isnan(sol.y_final[0]).all()
    # The part before the failure equals an ordinary solve.
    ref = solvers.solve(
        (lambda t, p: p, f_p), (Y0[0], Y0[1]), t[:2], Solver("verlet", step_size=0.1)
    )
    assert torch.equal(q[1], ref.ys[0][-1])

    sol = solvers.solve(
        lambda t, y: -1e4 * y,
        Y0,
        torch.tensor([0.0, 1e-3, 1.0]),
        Solver("dopri5", options={"max_num_steps": 30}),
        throw=False,
    )
    assert sol.status == "max_num_steps" and "max_num_steps" in sol.message
    assert torch.isnan(sol.ys[-1]).all() and torch.equal(sol.ys[0], Y0)

    sol = solvers.solve(Decay(), Y0, T, Solver("rk4", step_size=0.1), throw=False)
    assert sol.status == "ok" and sol.t_reached == 1.5
    assert torch.allclose(sol.ys, solvers.solve(Decay(), Y0, T, Solver("rk4", step_size=0.1)).ys)


def test_float32_times_do_not_add_a_step():
    # float32(6.4) is 6.4000001: still 64 steps of 0.1, not 65.
    st = solvers.solve(
        PAIR,
        (Y0[0], Y0[1]),
        torch.tensor([0.0, 6.4], dtype=torch.float32),
        Solver("verlet", step_size=0.1),
    ).stats
    assert st.steps == 64
    st = solvers.solve(
        PAIR,
        (Y0[0], Y0[1]),
        torch.tensor([0.0, 0.1], dtype=torch.float32),
        Solver("leapfrog", step_size=0.05),
    ).stats
    assert st.steps == 2


def _pair():
    return (lambda t, p: p, lambda t, q: -q * (1 + 0.1 * t)), (Y0, 0.5 * Y0)


@pytest.mark.parametrize(
    "solver,state",
    [
        (Solver("euler", step_size=0.1), "single"),
        (Solver("rk4", step_size=0.3), "tuple"),  # 0.3 does not divide 0.7: interpolated
        (Solver("explicit_adams", step_size=0.1), "single"),
        (Solver("dopri5", rtol=1e-6, atol=1e-8), "single"),
        (Solver("verlet", step_size=0.3), "split"),
        (Solver("leapfrog", step_size=0.1, memory="reversible"), "split"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("throw", [True, False])
def test_final_only_is_the_last_output_bit_for_bit(solver, state, throw):
    if state == "single":
        func, y0 = Decay(), Y0
    elif state == "tuple":
        f = Decay()
        func, y0 = (lambda t, y: (f(t, y[0]), -y[1])), (Y0, 2 * Y0)
    else:
        func, y0 = _pair()
    full = solvers.solve(func, y0, T, solver, throw=throw)
    last = solvers.solve(func, y0, T, solver, save="final", throw=throw)
    assert last.status == "ok" and last.stats == full.stats
    with pytest.raises(ValueError, match="final state only"):
        last.ys  # noqa: B018
    if isinstance(full.ys, tuple):
        assert isinstance(last.y_final, tuple) and len(last.y_final) == len(full.ys)
        for a, b in zip(full.ys, last.y_final):
            assert b.shape == a.shape[1:] and torch.equal(a[-1], b)
    else:
        assert last.y_final.shape == full.ys.shape[1:] and torch.equal(full.ys[-1], last.y_final)


def test_final_only_gradients_equal_the_stacked_ones():
    f = Decay()
    y0 = Y0.clone().requires_grad_()
    solver = Solver("rk4", step_size=0.1)
    g_full = torch.autograd.grad(solvers.solve(f, y0, T, solver).ys[-1].square().sum(), (y0, f.a))
    g_last = torch.autograd.grad(
        solvers.solve(f, y0, T, solver, save="final").y_final.square().sum(), (y0, f.a)
    )
    for a, b in zip(g_full, g_last):
        assert torch.equal(a, b)


def test_final_only_builds_no_stacked_output(graph_ops):
    """The reason for save='final': no copy of the states and no scatter of the gradient."""
    f = Decay()
    y0 = Y0.clone().requires_grad_()
    funcs, pair = _pair()
    pair = tuple(x.clone().requires_grad_() for x in pair)
    euler, verlet = Solver("euler", step_size=0.1), Solver("verlet", step_size=0.1)
    outs = [
        solvers.solve(f, y0, T, euler, save="final").y_final,
        *solvers.solve(funcs, pair, T, verlet, save="final").y_final,
    ]
    stacked = solvers.solve(f, y0, T, euler).ys[-1]
    assert {"StackBackward0", "SelectBackward0"} <= graph_ops(stacked)  # the control
    for out in outs:
        assert not {"StackBackward0", "SelectBackward0"} & graph_ops(out)


def test_odeint_second_order_is_the_split_solve():
    t = torch.tensor([0.0, 1.0])
    y, v = solvers.odeint_second_order(lambda t, y: -y, Y0, 0 * Y0, t, step_size=0.1)
    q, p = solvers.solve(PAIR, (Y0, 0 * Y0), t, Solver("leapfrog", step_size=0.1)).ys
    assert torch.equal(y, q) and torch.equal(v, p)
    with pytest.raises(ValueError, match="not a symplectic method"):
        solvers.odeint_second_order(lambda t, y: -y, Y0, Y0, t, method="rk4", step_size=0.1)


def test_torchdiffeq_warning_that_the_solution_may_be_incorrect_reaches_the_user():
    """implicit_adams on a stiff problem: its fixed-point iteration does not converge.

    The warning comes through (and the test configuration turns every warning into an
    error, so no test passes with it unseen).
    """
    for call in (
        lambda: solvers.solve(
            lambda t, y: -1000 * y,
            torch.ones(2),
            [0.0, 1.0],
            Solver("implicit_adams", step_size=0.1),
        ),
        lambda: solvers.odeint(
            lambda t, y: -1000 * y,
            torch.ones(2),
            torch.tensor([0.0, 1.0]),
            method="implicit_adams",
            options={"step_size": 0.1},
        ),
    ):
        with pytest.warns(UserWarning, match="Solution may be incorrect"):
            call()


def test_a_field_that_differentiates_inside_itself_under_the_adjoint():
    # The adjoint's forward solve runs under no_grad: a gradient field (a potential's
    # gradient by autograd) finds no graph there; the error says how to write it.
    class Potential(torch.nn.Module):
        def __init__(self, fixed):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
            self.fixed = fixed

        def forward(self, t, y):
            with torch.enable_grad():
                if self.fixed and not y.requires_grad:
                    y = y.detach().requires_grad_()
                energy = self.w * (y**2).sum() / 2
                return -torch.autograd.grad(energy, y, create_graph=True)[0]

    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.ones(2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"y\.detach\(\)\.requires_grad_\(\)"):
        solvers.solve(Potential(False), y0, t, Solver("dopri5", memory="adjoint"))
    grads = []
    for memory in ("adjoint", "autograd"):
        f = Potential(True)
        ys = solvers.solve(f, y0, t, Solver("dopri5", rtol=1e-9, atol=1e-11, memory=memory)).ys
        (g,) = torch.autograd.grad(ys[-1].sum(), f.w)
        grads.append(g.item())
    # y(1) = e^{-w}: d/dw sum = -2 e^{-1} at w = 1.
    assert abs(grads[0] + 2 * math.exp(-1)) < 1e-6 and abs(grads[1] + 2 * math.exp(-1)) < 1e-6


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"options": {"max_num_steps": 50}}, "more than 50 steps"),
        ({"method": "rk4", "options": {"step_size": 0.1}}, "the event did not fire within 20000"),
    ],
)
def test_an_event_that_never_fires_is_a_solver_error(kw, words):
    # y = 2 e^{-t} never reaches 5: the search runs into the step limit, named as without
    # an event (torchdiffeq: a bare AssertionError, or a RuntimeError without the event).
    with pytest.raises(solvers.SolverError, match=words):
        solvers.odeint(
            lambda t, y: -y,
            torch.tensor([2.0]),
            torch.tensor([0.0, 1.0]),
            event_fn=lambda t, y: y[0] - 5.0,
            **kw,
        )
