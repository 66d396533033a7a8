"""Faults found in the field (issue 15): each kind's right value, over methods, dtypes and
entry points (``solve``, ``odeint``, ``odeint_adjoint``, ``Stage``/``PDECNN``)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torchdiffeq
from torch import nn

import neuralpde
import solvers

FIXED = ["euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams"]
ADAPTIVE = ["dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8"]
SYMPLECTIC = ["symplectic_euler", "verlet", "yoshida4"]
DTYPES = [torch.float32, torch.float64]


class Decay(nn.Module):
    """``y' = -w y``."""

    def __init__(self, w: float = 1.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, t, y):
        return -self.w * y


def _spring():
    return (lambda t, p: p, lambda t, q: -q)


# ---- 1. every requested output time gets its row ---------------------------------------

TINY_TIMES = [[0.0, 1e-9], [0.0, 1e-9, 2e-9], [1.0, 1.0 - 1e-7], [0.0, 1e-9, 0.35]]


@pytest.mark.parametrize("times", TINY_TIMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", FIXED + SYMPLECTIC)
@pytest.mark.parametrize("as_list", [False, True])
def test_1_no_output_time_dropped(times, dtype, method, as_list):
    t = times if as_list else torch.tensor(times, dtype=dtype)
    if method in SYMPLECTIC:
        y0 = (torch.ones(2, dtype=dtype), torch.zeros(2, dtype=dtype))
        sol = solvers.solve(_spring(), y0, t, solvers.Solver(method, step_size=0.1))
        assert sol.ys[0].shape == (len(times), 2) and sol.ys[1].shape == (len(times), 2)
        assert torch.isfinite(sol.ys[0]).all()
        return
    y0 = torch.ones(2, dtype=dtype)
    ys = solvers.solve(lambda t, y: -y, y0, t, solvers.Solver(method, step_size=0.1)).ys
    assert ys.shape == (len(times), 2)
    if not as_list:
        ys2 = solvers.odeint(lambda t, y: -y, y0, t, method=method, options={"step_size": 0.1})
        assert ys2.shape == (len(times), 2)
        torch.testing.assert_close(ys2, ys)
    # the state at a time 1e-9 away from its start is the start to round-off
    torch.testing.assert_close(ys[1], y0 * math.exp(-(times[1] - times[0])), rtol=1e-5, atol=0)


# ---- 2. gradient with respect to t: exact where cheap, else a named error ---------------


@pytest.mark.parametrize(
    "method", ["rk4", "euler", "midpoint", "dopri5", "bosh3", "implicit_adams"]
)
@pytest.mark.parametrize("memory", ["autograd", "adjoint"])
@pytest.mark.parametrize("save", ["all", "final"])
def test_2_t_gradient_matches_torchdiffeq(method, memory, save):
    opts = {"step_size": 0.1} if method in FIXED else {}
    step = opts.get("step_size")
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    f = Decay().double()
    sol = solvers.solve(
        f,
        torch.ones(1, dtype=torch.float64),
        t,
        solvers.Solver(method, step_size=step, memory=memory),
        save=save,
    )
    sol.y_final.sum().backward()
    assert t.grad is not None
    t_ref = t.detach().clone().requires_grad_(True)
    ode = torchdiffeq.odeint_adjoint if memory == "adjoint" else torchdiffeq.odeint
    kw = {"adjoint_params": tuple(f.parameters())} if memory == "adjoint" else {}
    ref = ode(
        f, torch.ones(1, dtype=torch.float64), t_ref, method=method, options=opts or None, **kw
    )
    ref[-1].sum().backward()
    torch.testing.assert_close(t.grad, t_ref.grad)
    if method in ("rk4", "dopri5"):
        e = math.exp(-1)
        torch.testing.assert_close(
            t.grad, torch.tensor([e, -e], dtype=torch.float64), atol=1e-4, rtol=0
        )


def test_2_odeint_rk4_t_gradient_is_e_inverse():
    w = torch.tensor(1.0, requires_grad=True)
    t = torch.tensor([0.0, 1.0], requires_grad=True)
    y = solvers.odeint(
        lambda t, y: -w * y, torch.ones(2), t, method="rk4", options={"step_size": 0.1}
    )
    y[-1].sum().backward()
    e = 2 * math.exp(-1)
    torch.testing.assert_close(t.grad, torch.tensor([e, -e]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", SYMPLECTIC)
@pytest.mark.parametrize("memory", ["autograd", "reversible"])
def test_2_symplectic_t_gradient_is_a_named_error(method, memory):
    t = torch.tensor([0.0, 1.0], requires_grad=True)
    y0 = (torch.ones(2), torch.zeros(2))
    with pytest.raises(
        ValueError, match=f"{method}: gradients with respect to t are not supported"
    ):
        solvers.solve(_spring(), y0, t, solvers.Solver(method, step_size=0.1, memory=memory))
    with pytest.raises(ValueError, match="not supported"):
        solvers.odeint(_spring(), y0, t, method=method, options={"step_size": 0.1})


def test_2_scipy_t_gradient_is_a_named_error():
    """The values, as torchdiffeq returns them; the named error when a gradient with
    respect to t is asked for (issue 21: not at the forward pass)."""
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    y0 = torch.ones(1, dtype=torch.float64)
    ys = solvers.odeint(lambda t, y: -y, y0, t, method="scipy_solver")
    torch.testing.assert_close(ys[-1], y0 * math.exp(-1), rtol=1e-6, atol=0)
    with pytest.raises(
        ValueError, match="scipy_solver: gradients with respect to t are not supported"
    ):
        ys.sum().backward()
    sol = solvers.solve(lambda t, y: -y, y0, t, solvers.Solver("scipy_solver"))
    with pytest.raises(ValueError, match="not supported"):
        torch.autograd.grad(sol.y_final.sum(), t)


# ---- 3. a right-hand side of the wrong shape, dtype or structure --------------------------

BAD_RHS = {
    "shape": (lambda t, y: -y.unsqueeze(-1), "returned shape \\(4, 1\\)"),
    "dtype": (
        lambda t, y: -y.double(),
        "dtype torch.float64 for a state of shape \\(4,\\) and dtype torch.float32",
    ),
    "structure": (lambda t, y: (-y, -y), "must return one tensor"),
}


@pytest.mark.parametrize("bad", sorted(BAD_RHS))
@pytest.mark.parametrize("method", FIXED + ADAPTIVE + ["scipy_solver"])
@pytest.mark.parametrize(
    "entry", ["solve_all", "solve_final", "solve_nothrow", "odeint", "odeint_adjoint"]
)
def test_3_wrong_derivative_is_named(bad, method, entry):
    f, msg = BAD_RHS[bad]
    y0 = torch.ones(4)
    t = torch.tensor([0.0, 0.5, 1.0])
    step = 0.1 if method in FIXED else None
    with pytest.raises((ValueError, TypeError), match=msg):
        if entry == "odeint":
            solvers.odeint(f, y0, t, method=method, options={"step_size": step} if step else None)
        elif entry == "odeint_adjoint":
            solvers.odeint_adjoint(
                f,
                y0,
                t,
                method=method,
                options={"step_size": step} if step else None,
                adjoint_params=(),
            )
        else:
            save = "final" if entry == "solve_final" else "all"
            solvers.solve(
                f,
                y0,
                t,
                solvers.Solver(method, step_size=step),
                save=save,
                throw=entry != "solve_nothrow",
            )


@pytest.mark.parametrize("method", ["rk4", "dopri5", "euler"])
def test_3_tuple_state_single_tensor_derivative(method):
    y0 = (torch.ones(5), torch.ones(5))
    step = None if method == "dopri5" else 0.1
    with pytest.raises(
        TypeError, match="must return a tuple of 2 tensors like the state, got Tensor"
    ):
        solvers.odeint(
            lambda t, y: -y[0],
            y0,
            torch.tensor([0.0, 1.0]),
            method=method,
            options={"step_size": step} if step else None,
        )


@pytest.mark.parametrize("method", SYMPLECTIC)
def test_3_symplectic_wrong_derivative_is_named(method):
    y0 = (torch.ones(4), torch.ones(4))
    with pytest.raises(ValueError, match="f_q changed q from shape \\(4,\\)"):
        solvers.solve(
            (lambda t, p: p.unsqueeze(-1), lambda t, q: -q),
            y0,
            [0.0, 1.0],
            solvers.Solver(method, step_size=0.1),
        )
    with pytest.raises(ValueError, match="dtype torch.float64"):
        solvers.solve(
            (lambda t, p: p, lambda t, q: -q.double()),
            y0,
            [0.0, 1.0],
            solvers.Solver(method, step_size=0.1),
        )


# ---- 5. an empty batch is an empty solution -----------------------------------------------


@pytest.mark.parametrize("method", FIXED + ADAPTIVE + ["scipy_solver"])
@pytest.mark.parametrize("save", ["all", "final"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_5_empty_batch(method, save, dtype):
    step = 0.1 if method in FIXED else None
    y0 = torch.ones(0, 4, dtype=dtype)
    sol = solvers.solve(
        lambda t, y: -y, y0, [0.0, 0.5, 1.0], solvers.Solver(method, step_size=step), save=save
    )
    assert sol.status == "ok" and sol.y_final.shape == (0, 4) and sol.y_final.dtype == dtype
    if save == "all":
        assert sol.ys.shape == (3, 0, 4)
    ys = solvers.odeint(
        lambda t, y: -y,
        y0,
        torch.tensor([0.0, 1.0], dtype=dtype),
        method=method,
        options={"step_size": step} if step else None,
    )
    assert ys.shape == (2, 0, 4)
    ys = solvers.odeint_adjoint(
        Decay().to(dtype),
        y0,
        torch.tensor([0.0, 1.0], dtype=dtype),
        method=method,
        options={"step_size": step} if step else None,
    )
    assert ys.shape == (2, 0, 4)


@pytest.mark.parametrize("arch", ["parabolic", "hamiltonian", "second_order"])
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4"])
def test_5_empty_batch_network(arch, method):
    torch.manual_seed(0)
    kw = {} if method in ADAPTIVE else {"step_size": 1.0}
    net = neuralpde.PDECNN(arch, 3, 10, (8, 8), method=method)
    if method in ADAPTIVE:
        net.set_solver(method, step_size=None)
    out = net(torch.ones(0, 3, 8, 8))
    assert out.shape == (0, 10)
    del kw


# ---- 7. scipy_solver: every time or a named failure at the time reached ---------------------


def _blowup(t, y):
    return y**2  # y(t) = 1 / (1 - t): a singularity at t = 1


T_BLOWUP = [0.0, 0.5, 2.0]


@pytest.mark.parametrize("scipy_method", ["RK45", "RK23", "DOP853", "LSODA", "Radau"])
@pytest.mark.parametrize("save", ["all", "final"])
def test_7_scipy_blowup_is_named(scipy_method, save):
    y0 = torch.ones(1, dtype=torch.float64)
    # A step limit below the default keeps the test short; LSODA would need a million.
    opts = {"solver": scipy_method, "max_num_steps": 3000}
    solver = solvers.Solver("scipy_solver", options=opts)
    with pytest.raises(solvers.SolverError, match=f"scipy_solver \\({scipy_method}\\)") as err:
        solvers.solve(_blowup, y0, T_BLOWUP, solver, save=save)
    # the error names the time reached: just before the singularity at t = 1
    reached = float(re.search(r"t=([0-9.e+-]+) of 2", str(err.value)).group(1))
    assert 0.9 < reached <= 1.0 + 1e-6
    with pytest.raises(solvers.SolverError):
        t = torch.tensor(T_BLOWUP, dtype=torch.float64)
        solvers.odeint(_blowup, y0, t, method="scipy_solver", options=opts)
    sol = solvers.solve(_blowup, y0, T_BLOWUP, solver, save=save, throw=False)
    assert sol.status in ("underflow", "max_num_steps") and sol.t_reached == 0.5
    assert torch.isnan(sol.y_final).all()
    if save == "all":
        torch.testing.assert_close(
            sol.ys[1], torch.tensor([2.0], dtype=torch.float64), rtol=1e-5, atol=0
        )


def test_7_scipy_step_limit_applies():
    y0 = torch.ones(1, dtype=torch.float64)
    solver = solvers.Solver("scipy_solver", options={"max_num_steps": 50})
    with pytest.raises(solvers.SolverError, match="more than 50 steps") as err:
        solvers.solve(_blowup, y0, T_BLOWUP, solver)
    assert err.value.status == "max_num_steps"
    sol = solvers.solve(lambda t, y: -y, y0, [0.0, 1.0], solvers.Solver("scipy_solver"))
    assert sol.stats.steps > 0 and sol.stats.nfe > 0
    # the reported hang: default LSODA through odeint now stops at the default limit
    t = torch.tensor(T_BLOWUP, dtype=torch.float64)
    with pytest.raises(solvers.SolverError, match="more than 10000 steps"):
        solvers.odeint(_blowup, y0, t, method="scipy_solver")


@pytest.mark.parametrize("scipy_method", ["LSODA", "RK45", "DOP853"])
@pytest.mark.parametrize("times", [[0.0, 0.3, 1.0, 2.0], [2.0, 1.0, 0.5]])
def test_7_scipy_same_numbers_as_torchdiffeq(scipy_method, times):
    t = torch.tensor(times, dtype=torch.float64)
    y0 = torch.ones(3, dtype=torch.float64)
    opts = {"solver": scipy_method}
    ours = solvers.odeint(lambda t, y: -t * y, y0, t, method="scipy_solver", options=opts)
    with pytest.warns(None) if False else _quiet():
        ref = torchdiffeq.odeint(lambda t, y: -t * y, y0, t, method="scipy_solver", options=opts)
    assert torch.equal(ours, ref)


def _quiet():
    import warnings

    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore")  # scipy's "min_step has no effect" notice for RK methods
    return _Exit(ctx)


class _Exit:
    def __init__(self, ctx):
        self.ctx = ctx

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)


# ---- 10. tolerances: tensors validated like numbers; dtype resolution named -----------------

BAD_TOL = [
    torch.tensor(float("nan")),
    torch.tensor(-1e-3),
    torch.tensor(float("inf")),
    torch.tensor(0.0),
]


@pytest.mark.parametrize("tol", BAD_TOL, ids=["nan", "negative", "inf", "zero"])
@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("entry", ["Solver", "odeint", "odeint_adjoint", "Stage"])
def test_10_tensor_tolerance_is_validated(tol, name, entry):
    y0, t = torch.ones(2), torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match=f"{name} must be positive and finite"):
        if entry == "Solver":
            solvers.Solver("dopri5", **{name: tol})
        elif entry == "odeint":
            solvers.odeint(lambda t, y: -y, y0, t, **{name: tol})
        elif entry == "odeint_adjoint":
            solvers.odeint_adjoint(Decay(), y0, t, **{name: tol})
        else:
            net = neuralpde.PDECNN("parabolic", 3, 10, (8, 8))
            net.set_solver("dopri5", step_size=None, **{name: tol})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_10_tolerance_below_dtype_resolution_is_named(dtype, method):
    y0, t = torch.ones(3, dtype=dtype), torch.tensor([0.0, 1.0], dtype=dtype)
    msg = f"rtol=1e-07 and atol=1e-09 are below what a {dtype} state resolves"
    with pytest.raises(ValueError, match=msg):
        solvers.odeint(lambda t, y: -y, y0, t, method=method)
    with pytest.raises(ValueError, match=f"below what a {dtype} state resolves"):
        solvers.solve(
            lambda t, y: -y, y0, t, solvers.Solver(method, rtol=torch.tensor([1e-6, 1e-6, 1e-6]))
        )
    # Tolerances near eps: if the step size underflows, the error names them and the dtype.
    try:
        solvers.solve(
            lambda t, y: -y, y0, t, solvers.Solver(method, rtol=torch.finfo(dtype).eps, atol=1e-4)
        )
    except solvers.SolverError as err:
        assert f"close to the resolution of the {dtype} state" in str(err)
    # Tolerances the dtype resolves: a loose but finished solve.
    sol = solvers.solve(lambda t, y: -y, y0, t, solvers.Solver(method, rtol=1e-2, atol=1e-3))
    assert sol.status == "ok" and sol.y_final.dtype == dtype
    # loose tolerances and 8 or 11 bits: about 0.1 off for the low-order pairs
    atol = 0.2
    torch.testing.assert_close(
        sol.y_final.float(), torch.full((3,), math.exp(-1)), atol=atol, rtol=0
    )


@pytest.mark.parametrize("method", ADAPTIVE)
def test_10_float32_default_tolerances_still_work(method):
    sol = solvers.solve(lambda t, y: -y, torch.ones(3), [0.0, 1.0], solvers.Solver(method))
    torch.testing.assert_close(sol.y_final, torch.full((3,), math.exp(-1)), atol=1e-4, rtol=0)


def test_10_float16_network_names_the_tolerance():
    torch.manual_seed(0)
    net = neuralpde.PDECNN("parabolic", 3, 10, (8, 8))
    net.set_solver("dopri5", step_size=None)
    net = net.half().eval()
    with pytest.raises(ValueError, match="below what a torch.float16 state resolves"):
        net.set_solver(rtol=1e-7, atol=1e-9)
        net(torch.ones(2, 3, 8, 8, dtype=torch.float16))
    # the stage's own default tolerances (rtol 1e-3) are near float16's eps: named if it fails
    net.set_solver(rtol=1e-3, atol=1e-4)
    try:
        out = net(torch.ones(2, 3, 8, 8, dtype=torch.float16))
    except solvers.SolverError as err:
        assert "close to the resolution of the torch.float16 state" in str(err)
    else:
        assert out.dtype == torch.float16 and torch.isfinite(out).all()


# ---- 6. tensors that are not parameters: covered by params=, or a named error ---------------


class PlainTensorDecay(nn.Module):
    """``y' = -a y`` with ``a`` a plain tensor attribute, not a parameter."""

    def __init__(self):
        super().__init__()
        self.a = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)

    def forward(self, t, y):
        return -self.a * y


def _autograd_grad_a():
    f = PlainTensorDecay()
    y = solvers.solve(
        f, torch.ones(3, dtype=torch.float64), [0.0, 1.0], solvers.Solver("rk4", step_size=0.1)
    ).y_final
    y.sum().backward()
    return f.a.grad


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
@pytest.mark.parametrize("entry", ["solve", "odeint_adjoint"])
def test_6_adjoint_plain_tensor_attribute(method, entry):
    f = PlainTensorDecay()
    y0, t = torch.ones(3, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    step = 0.1 if method == "rk4" else None
    solver = solvers.Solver(method, step_size=step, memory="adjoint")
    with pytest.raises(ValueError, match=r"would be lost: PlainTensorDecay\.a\. Pass every tensor"):
        if entry == "solve":
            solvers.solve(f, y0, t, solver)
        else:
            solvers.odeint_adjoint(
                f, y0, t, method=method, options={"step_size": step} if step else None
            )
    # covered by params=: the gradient is autograd's to the solver's accuracy
    if entry == "solve":
        y = solvers.solve(f, y0, t, solver, params=[f.a]).y_final
    else:
        y = solvers.odeint_adjoint(
            f,
            y0,
            t,
            method=method,
            options={"step_size": step} if step else None,
            adjoint_params=(f.a,),
        )[-1]
    y.sum().backward()
    torch.testing.assert_close(f.a.grad, _autograd_grad_a(), rtol=1e-5, atol=0)
    torch.testing.assert_close(
        f.a.grad, torch.tensor(-3 * math.exp(-0.7), dtype=torch.float64), rtol=1e-5, atol=0
    )


def test_6_closure_tensor_not_in_params_is_named():
    a = torch.tensor(0.7, requires_grad=True)
    w = torch.tensor(0.1, requires_grad=True)

    def f(t, y):
        return -a * y - w * y

    with pytest.raises(ValueError, match=r"would be lost: w \(in the closure of .*f\)"):
        solvers.odeint_adjoint(f, torch.ones(2), torch.tensor([0.0, 1.0]), adjoint_params=(a,))
    solvers.odeint_adjoint(f, torch.ones(2), torch.tensor([0.0, 1.0]), adjoint_params=(a, w))


# A global tensor a right-hand side reads (`lambda t, y: -rate * y`), and one that only
# shares its name with an attribute a method reads (`self.rate`).
rate = torch.tensor(0.7, requires_grad=True)


class AttributeRate(nn.Module):
    def __init__(self):
        super().__init__()
        self.rate = nn.Parameter(torch.tensor(0.5))

    def forward(self, t, y):
        return -self.rate * y


def test_6_global_tensor_not_in_params_is_named_and_an_attribute_is_not_a_global():
    y0, t = torch.ones(2), torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match=r"would be lost: rate \(read by .*<lambda> as a global\)"):
        solvers.odeint_adjoint(lambda t, y: -rate * y, y0, t, adjoint_params=())
    y = solvers.odeint_adjoint(lambda t, y: -rate * y, y0, t, adjoint_params=(rate,))[-1]
    (g,) = torch.autograd.grad(y.sum(), rate)
    torch.testing.assert_close(g, -2 * torch.exp(torch.tensor(-0.7)), rtol=1e-4, atol=0)
    # An nn.Parameter outside a module is a tensor like any other: making it one is no way
    # around the check.
    weight = nn.Parameter(torch.tensor(0.7))
    with pytest.raises(ValueError, match=r"would be lost: weight \(in the closure of"):
        solvers.odeint_adjoint(lambda t, y: -weight * y, y0, t, adjoint_params=())
    # `self.rate` is an attribute, not the global `rate`: no error, the parameter's gradient.
    f = AttributeRate()
    solvers.odeint_adjoint(f.forward, y0, t, adjoint_params=(f.rate,))[-1].sum().backward()
    torch.testing.assert_close(f.rate.grad, -2 * torch.exp(torch.tensor(-0.5)), rtol=1e-4, atol=0)


@pytest.mark.parametrize("method", SYMPLECTIC)
def test_6_reversible_closure_tensor(method):
    k = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    func = (lambda t, p: p, lambda t, q: -k * q)
    y0 = (torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    rev = solvers.Solver(method, step_size=0.1, memory="reversible")
    with pytest.raises(ValueError, match=r"would be lost: k \(in the closure of .*<lambda>\)"):
        solvers.solve(func, y0, [0.0, 1.0], rev)
    q, p = solvers.solve(func, y0, [0.0, 1.0], rev, params=[k]).y_final
    (q.sum() + p.sum()).backward()
    g = k.grad.clone()
    k.grad = None
    q, p = solvers.solve(func, y0, [0.0, 1.0], rev.replace(memory="autograd")).y_final
    (q.sum() + p.sum()).backward()
    torch.testing.assert_close(g, k.grad)


def test_6_parameters_of_a_module_a_function_holds_are_checked():
    # `lambda t, q: -net(q)` under reversible memory without params: the plain functions
    # contribute no parameters, so net's gradient would be lost without a word.
    net = nn.Linear(2, 2).double()
    func = (lambda t, p: p, lambda t, q: -net(q))
    y0 = (torch.ones(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))
    rev = solvers.Solver("verlet", step_size=0.1, memory="reversible")
    with pytest.raises(ValueError, match=r"would be lost: net\.weight \(in the closure of"):
        solvers.solve(func, y0, [0.0, 1.0], rev)
    q, p = solvers.solve(func, y0, [0.0, 1.0], rev, params=list(net.parameters())).y_final
    (q.sum() + p.sum()).backward()
    g = net.weight.grad.clone()
    net.weight.grad = None
    q, p = solvers.solve(func, y0, [0.0, 1.0], rev.replace(memory="autograd")).y_final
    (q.sum() + p.sum()).backward()
    torch.testing.assert_close(g, net.weight.grad)


# ---- 4. reversible memory and modules with side effects -------------------------------------


class Kick(nn.Module):
    """``dp/dt = -K(q)`` with ``K`` a small network holding ``extra`` (Dropout, BatchNorm)."""

    def __init__(self, extra: nn.Module):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 4).double()
        self.extra = extra.double()

    def f_q(self, t, p):
        return p

    def f_p(self, t, q):
        return -torch.tanh(self.extra(self.lin(q)))


def _run(kick: Kick, memory: str, method: str):
    torch.manual_seed(1)
    q0 = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    p0 = torch.zeros(8, 4, dtype=torch.float64)
    solver = solvers.Solver(method, step_size=0.25, memory=memory)
    q, p = solvers.solve((kick.f_q, kick.f_p), (q0, p0), [0.0, 1.0], solver).y_final
    (q.square().sum() + p.sum()).backward()
    return q0.grad, [w.grad.clone() for w in kick.parameters()]


@pytest.mark.parametrize("method", SYMPLECTIC)
@pytest.mark.parametrize(
    "random",
    [nn.Dropout(0.3), nn.AlphaDropout(0.3), nn.RReLU()],
    ids=["Dropout", "AlphaDropout", "RReLU"],
)
def test_4_reversible_refuses_random_modules_in_training(method, random):
    kick = Kick(random).train()
    with pytest.raises(
        ValueError, match=f"{type(random).__name__} in training mode would draw other random"
    ):
        _run(kick, "reversible", method)
    # in eval mode they are deterministic: the gradient is autograd's
    kick.eval()
    g_rev = _run(kick, "reversible", method)
    kick.zero_grad()
    g_auto = _run(kick, "autograd", method)
    torch.testing.assert_close(g_rev, g_auto)


@pytest.mark.parametrize("method", SYMPLECTIC)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_4_reversible_batchnorm_counts_each_batch_once(method, momentum):
    kicks = {
        m: Kick(nn.BatchNorm1d(4, momentum=momentum)).train() for m in ("reversible", "autograd")
    }
    grads = {m: _run(k, m, method) for m, k in kicks.items()}
    torch.testing.assert_close(grads["reversible"], grads["autograd"])
    bn_rev, bn_auto = kicks["reversible"].extra, kicks["autograd"].extra
    torch.testing.assert_close(bn_rev.running_mean, bn_auto.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn_rev.running_var, bn_auto.running_var, rtol=1e-12, atol=1e-12)
    assert int(bn_rev.num_batches_tracked) == int(bn_auto.num_batches_tracked)


class NoisyCoupled(neuralpde.RHS):
    """A split dynamics whose ``f_p`` holds ``extra`` (Dropout or BatchNorm)."""

    state = "halves"
    default_method = "verlet"

    def __init__(self, channels, extra, steps=3, step_size=1.0, interpolation="constant"):
        super().__init__(channels, steps, step_size, interpolation)
        half = channels // 2
        self.theta = neuralpde.TimeWeights(
            {"K": 0.3 * torch.randn(steps, half, half, 3, 3)}, self.T, interpolation
        )
        self.extra = extra

    def f_q(self, t, p):
        return p

    def f_p(self, t, q):
        K = self.theta(t)["K"]
        z = self.extra(torch.nn.functional.conv2d(q, K, padding=1))
        return -torch.nn.functional.conv_transpose2d(torch.tanh(z), K, padding=1)


def test_4_stage_reversible_dropout_and_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(4, 4, 6, 6)
    stage = neuralpde.Stage(NoisyCoupled(4, nn.Dropout2d(0.2)), memory="reversible").train()
    with pytest.raises(ValueError, match="Dropout2d in training mode"):
        stage(x)
    stage.eval()
    stage(x).sum().backward()

    stages = {}
    for memory in ("reversible", "autograd"):
        torch.manual_seed(0)
        stages[memory] = neuralpde.Stage(NoisyCoupled(4, nn.BatchNorm2d(2)), memory=memory).train()
        stages[memory](x).square().sum().backward()
    rev, auto = stages["reversible"], stages["autograd"]
    for (name, a), b in zip(rev.named_parameters(), auto.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-3, msg=name)  # float32
    for a, b in zip(rev.rhs.extra.buffers(), auto.rhs.extra.buffers()):
        torch.testing.assert_close(a, b)
