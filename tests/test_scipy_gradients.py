"""scipy_solver and gradients: the adjoint solves forward and backward with scipy; with
memory="autograd" a gradient asked of it is a named error, never a silent loss."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
import torchdiffeq
from torch import nn

import solvers

F64 = torch.float64
TOL = {"rtol": 1e-8, "atol": 1e-10}


class Decay(nn.Module):
    """dy/dt = -k y: y(t) = y0 exp(-k (t - t0))."""

    def __init__(self, k: float = 0.7):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=F64))

    def forward(self, t, y):
        return -self.k * y


class Blowup(nn.Module):
    """dy/dt = k y^2: y(t) = 1 / (1/y0 - k t), a singularity at t = 1 for y0 = k = 1."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(1.0, dtype=F64))

    def forward(self, t, y):
        return self.k * y**2


def _exact(times: list[float], y0: float, k: float):
    """sum_i y(t_i) for Decay, and its derivatives with respect to k and y0."""
    d = [ti - times[0] for ti in times]
    loss = sum(y0 * math.exp(-k * di) for di in d)
    d_k = sum(-di * y0 * math.exp(-k * di) for di in d)
    d_y0 = sum(math.exp(-k * di) for di in d)
    return loss, d_k, d_y0


def _ours(entry: str, f, y0, t, opts):
    if entry == "odeint_adjoint":
        return solvers.odeint_adjoint(f, y0, t, method="scipy_solver", options=opts, **TOL)
    solver = solvers.Solver("scipy_solver", memory="adjoint", options=opts, **TOL)
    sol = solvers.solve(f, y0, t, solver)
    assert sol.stats.steps > 0 and sol.stats.nfe > 0
    return sol.ys


@pytest.mark.parametrize("entry", ["odeint_adjoint", "solve"])
@pytest.mark.parametrize("scipy", ["RK45", "LSODA"])
@pytest.mark.parametrize("times", [[0.0, 0.5, 1.0], [1.0, 0.4, 0.0]])
def test_adjoint_gradients_match_torchdiffeq_and_exact(entry, scipy, times):
    opts = {"solver": scipy}
    grads = {}
    for who in ("ours", "torchdiffeq"):
        f = Decay()
        y0 = torch.tensor([1.5], dtype=F64, requires_grad=True)
        t = torch.tensor(times, dtype=F64, requires_grad=True)
        if who == "ours":
            ys = _ours(entry, f, y0, t, opts)
            ys.sum().backward()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy: min_step has no effect on RK45
                ys = torchdiffeq.odeint_adjoint(
                    f, y0, t, method="scipy_solver", options=opts, **TOL
                )
                ys.sum().backward()
        grads[who] = (ys.detach(), f.k.grad, y0.grad, t.grad)
    ours, theirs = grads["ours"], grads["torchdiffeq"]
    assert torch.equal(ours[0], theirs[0])  # the forward: torchdiffeq's numbers
    for a, b in zip(ours[1:], theirs[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    loss, d_k, d_y0 = _exact(times, 1.5, 0.7)
    assert ours[0].sum().item() == pytest.approx(loss, abs=1e-5)
    assert ours[1].item() == pytest.approx(d_k, abs=1e-5)
    assert ours[2].item() == pytest.approx(d_y0, abs=1e-5)
    # dL/dt_i = f(y(t_i)) for i > 0; t_0 moves every later state: -sum_i f(y(t_i))
    slopes = [-0.7 * 1.5 * math.exp(-0.7 * (ti - times[0])) for ti in times]
    expected_t = [-sum(slopes[1:])] + slopes[1:]
    torch.testing.assert_close(ours[3], torch.tensor(expected_t, dtype=F64), rtol=0, atol=1e-5)


def test_adjoint_gradient_reaches_the_parameters_alone():
    """The fault as reported: y0 without grad, the parameter's gradient was lost."""
    f = Decay()
    y0 = torch.tensor([1.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys = solvers.odeint_adjoint(f, y0, t, method="scipy_solver", options={"solver": "RK45"}, **TOL)
    assert ys.requires_grad
    ys[-1].sum().backward()
    assert f.k.grad.item() == pytest.approx(-math.exp(-0.7), abs=1e-5)


def _autograd(entry: str, f, y0, t):
    if entry == "odeint":
        return solvers.odeint(f, y0, t, method="scipy_solver")
    return solvers.solve(f, y0, t, solvers.Solver("scipy_solver")).ys


@pytest.mark.parametrize("entry", ["odeint", "solve"])
def test_autograd_gradient_of_the_parameters_is_a_named_error(entry):
    f = Decay()
    y0 = torch.tensor([1.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    msg = (
        "scipy_solver: gradients with respect to the parameters of func \\(Decay.k\\) are not "
        "supported "
        "with memory='autograd'.*memory='adjoint' \\(solvers.odeint_adjoint\\)"
    )
    ys = _autograd(entry, f, y0, t)
    with pytest.raises(ValueError, match=msg):
        ys.sum().backward()
    # Alongside a term that has a gradient, the solve's share is not silently dropped.
    ys = _autograd(entry, f, y0, t)
    with pytest.raises(ValueError, match=msg):
        (ys.sum() + f.k**2).backward()
    y0.requires_grad_(True)
    ys = _autograd(entry, f, y0, t)
    with pytest.raises(
        ValueError, match="with respect to y0 and the parameters of func \\(Decay.k\\)"
    ):
        torch.autograd.grad(ys.sum(), (y0, f.k))


_RATE = nn.Linear(1, 1, bias=False).double()  # a module a plain function names as a global


@pytest.mark.parametrize("entry", ["odeint", "solve"])
@pytest.mark.parametrize("held", ["closure tensor", "closure module", "global module"])
def test_a_plain_function_s_tensors_are_seen_too(entry, held):
    # lambda t, y: net(y): the parameters are not func's own; their gradient would be
    # lost beside a term that has one (a weight decay), with no error.
    a = torch.tensor(0.7, dtype=F64, requires_grad=True)
    net = nn.Linear(1, 1, bias=False).double()
    funcs = {
        "closure tensor": (lambda t, y: -a * y, a, "a (in the closure of"),
        "closure module": (lambda t, y: net(y), net.weight, "net.weight (in the closure of"),
        "global module": (lambda t, y: _RATE(y), _RATE.weight, "_RATE.weight (read by"),
    }
    func, weight, named = funcs[held]
    y0 = torch.tensor([1.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys = _autograd(entry, func, y0, t)
    with pytest.raises(ValueError, match="not supported with memory='autograd'") as err:
        (ys.sum() + (weight**2).sum()).backward()
    assert f"the parameters of func ({named}" in str(err.value)


@pytest.mark.parametrize("entry", ["odeint", "solve"])
def test_forward_only_still_works(entry):
    t = torch.tensor([0.0, 1.0], dtype=F64)
    expected = torch.tensor([math.exp(-0.7)], dtype=F64)
    f = Decay()
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    with torch.no_grad():
        ys = _autograd(entry, f, y0, t)
    assert not ys.requires_grad
    torch.testing.assert_close(ys[-1], expected, rtol=1e-5, atol=0)
    # gradients enabled and wanted by nobody: the values, no error
    ys = _autograd(entry, f, y0, t)
    torch.testing.assert_close(ys[-1].detach(), expected, rtol=1e-5, atol=0)
    ys = _autograd(entry, lambda t, y: -0.7 * y, y0.detach(), t)
    assert not ys.requires_grad
    torch.testing.assert_close(ys[-1], expected, rtol=1e-5, atol=0)


T_BLOWUP = [0.0, 0.5, 2.0]


@pytest.mark.parametrize("scipy", ["RK45", "LSODA"])
@pytest.mark.parametrize("entry", ["odeint_adjoint", "solve"])
def test_adjoint_blowup_is_named_at_the_time_reached(scipy, entry):
    y0 = torch.ones(1, dtype=F64)
    # A step limit below the default keeps LSODA short (it would otherwise run on).
    opts = {"solver": scipy, "max_num_steps": 3000}
    with pytest.raises(solvers.SolverError, match=f"scipy_solver \\({scipy}\\)") as err:
        if entry == "odeint_adjoint":
            t = torch.tensor(T_BLOWUP, dtype=F64)
            solvers.odeint_adjoint(Blowup(), y0, t, method="scipy_solver", options=opts)
        else:
            solver = solvers.Solver("scipy_solver", memory="adjoint", options=opts)
            solvers.solve(Blowup(), y0, T_BLOWUP, solver, save="final")
    reached = float(re.search(r"t=([0-9.e+-]+) of 2", str(err.value)).group(1))
    assert 0.9 < reached <= 1.0 + 1e-6
    solver = solvers.Solver("scipy_solver", memory="adjoint", options=opts)
    sol = solvers.solve(Blowup(), y0, T_BLOWUP, solver, throw=False)
    assert sol.status in ("underflow", "max_num_steps") and sol.t_reached == 0.5
    assert sol.ys.shape == (3, 1) and torch.isnan(sol.ys[2]).all()
    torch.testing.assert_close(
        sol.ys[1].detach(), torch.tensor([2.0], dtype=F64), rtol=1e-5, atol=0
    )
    # Before the singularity the gradient is there: y = 1/(1/y0 - k t), at t = 0.5 and
    # y0 = k = 1: dy/dk = t y^2 = 2, dy/dy0 = (y/y0)^2 = 4.
    f = Blowup()
    y0 = y0.clone().requires_grad_(True)
    solver = solvers.Solver("scipy_solver", memory="adjoint", options={"solver": scipy}, **TOL)
    solvers.solve(f, y0, [0.0, 0.5], solver, save="final").y_final.sum().backward()
    assert f.k.grad.item() == pytest.approx(2.0, abs=1e-5)
    assert y0.grad.item() == pytest.approx(4.0, abs=1e-5)


def test_adjoint_backward_step_limit_is_named():
    f = Decay()
    y0 = torch.tensor([1.0], dtype=F64)
    solver = solvers.Solver(
        "scipy_solver",
        memory="adjoint",
        options={"solver": "RK45"},
        backward={"options": {"solver": "RK45", "max_num_steps": 1}},
        **TOL,
    )
    sol = solvers.solve(f, y0, [0.0, 1.0], solver)
    pattern = (
        r"scipy_solver \(RK45\) adjoint \(backward pass\): more than 1 steps.*t=([0-9.e+-]+) of 0"
    )
    with pytest.raises(solvers.SolverError, match=pattern) as err:
        sol.y_final.sum().backward()
    reached = float(re.search(pattern, str(err.value)).group(1))
    assert 0.0 < reached < 1.0  # one step back from t = 1


@pytest.mark.parametrize(
    "forward, backward",
    [
        ("dopri5", {"method": "scipy_solver"}),
        ("dopri5", {"method": "scipy_solver", "options": {"solver": "DOP853"}}),
        ("scipy_solver", {"method": "dopri5"}),
        ("dopri5", {"method": "bosh3"}),
        ("dopri5", {"method": "rk4", "step_size": 0.01}),
        ("rk4", {"method": "dopri5"}),
    ],
)
def test_a_backward_method_other_than_the_forward_s(forward, backward):
    # torchdiffeq infers the adjoint's options only for the forward's own method: any other
    # backward method was refused with a message about adjoint_options, which this API
    # does not have. Each gives the exact gradient: y(1) = y0 exp(-k).
    f = Decay()
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    step = {"step_size": 0.01} if forward == "rk4" else {}
    solver = solvers.Solver(forward, memory="adjoint", backward=backward, **step, **TOL)
    solvers.solve(f, y0, [0.0, 1.0], solver).y_final.sum().backward()
    # (bosh3, third order, at the forward's tolerances: 3e-6.)
    assert f.k.grad.item() == pytest.approx(-math.exp(-0.7), abs=1e-5)
    assert y0.grad.item() == pytest.approx(math.exp(-0.7), abs=1e-5)


def test_a_scipy_backward_of_another_forward_keeps_the_step_limit():
    # torchdiffeq's wrapper ignored max_num_steps (with a warning) and ran without a limit.
    f = Decay()
    y0 = torch.tensor([1.0], dtype=F64)
    back = {"method": "scipy_solver", "options": {"solver": "RK45", "max_num_steps": 1}}
    solver = solvers.Solver("dopri5", memory="adjoint", backward=back, **TOL)
    sol = solvers.solve(f, y0, [0.0, 1.0], solver)
    with pytest.raises(solvers.SolverError, match=r"adjoint \(backward pass\): more than 1 steps"):
        sol.y_final.sum().backward()


def test_a_fixed_step_backward_takes_its_step_size():
    # A fixed-step method without a step steps once per output interval: over [0, 1] one
    # rk4 step, a coarse gradient nobody asked for. Another fixed-step backward method
    # takes its own step_size, or the forward's; with neither it is a named error.
    f = Decay()
    y0 = torch.tensor([1.0], dtype=F64)
    with pytest.raises(ValueError, match="backward method 'rk4' is a fixed-step method"):
        solvers.Solver("dopri5", memory="adjoint", backward={"method": "rk4"})
    inherited = solvers.Solver(
        "rk4", step_size=0.05, memory="adjoint", backward={"method": "euler"}
    )
    assert inherited.backward["step_size"] == 0.05
    # The same method with options of its own keeps the forward's step too.
    own = solvers.Solver("rk4", step_size=0.05, memory="adjoint", backward={"options": {}})
    assert own.backward["step_size"] == 0.05
    for solver in (
        solvers.Solver("dopri5", memory="adjoint", backward={"method": "rk4", "step_size": 0.05}),
        solvers.Solver("rk4", step_size=0.05, memory="adjoint", backward={"method": "midpoint"}),
    ):
        solvers.solve(f, y0, [0.0, 1.0], solver).y_final.sum().backward()
        # Midpoint at h = 0.05: an error of about 1e-4 (one step of rk4 over [0, 1]: 5e-3).
        assert f.k.grad.item() == pytest.approx(-math.exp(-0.7), abs=3e-4)
        f.k.grad = None
