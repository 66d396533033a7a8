"""solvers.odeint / odeint_adjoint are drop-ins for torchdiffeq 0.2.x.

The cases follow torchdiffeq's own test suite (tests/odeint_tests.py, api_tests.py,
gradient_tests.py, event_tests.py, norm_tests.py in rtqichen/torchdiffeq): the same
problems, methods, dtypes, directions and thresholds, written here against both
implementations. Every case runs torchdiffeq first; where it passes there, ours must give
the same numbers (bit for bit: the same Runge–Kutta arithmetic) and pass the same check;
where torchdiffeq raises, ours must raise too. The issue's failures each have a test at the
end of the module.
"""

import math
import warnings

import pytest
import torch
import torchdiffeq

import solvers

F32, F64 = torch.float32, torch.float64
FIXED = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams")
ADAPTIVE = ("dopri5", "bosh3", "adaptive_heun", "dopri8")
SCIPY = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


class Ours:
    odeint = staticmethod(solvers.odeint)
    odeint_adjoint = staticmethod(solvers.odeint_adjoint)


IMPLS = {"torchdiffeq": torchdiffeq, "ours": Ours}


# --- torchdiffeq's test problems, with known solutions -----------------------------------
class Constant(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.2))
        self.b = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, t, y):
        return self.a + (y - (self.a * t + self.b)) ** 5

    def exact(self, t):
        return self.a * t + self.b


class Sine(torch.nn.Module):
    def forward(self, t, y):
        return 2 * y / t + t**4 * torch.sin(2 * t) - t**2 + 4 * t**3

    def exact(self, t):
        return (
            -0.5 * t**4 * torch.cos(2 * t)
            + 0.5 * t**3 * torch.sin(2 * t)
            + 0.25 * t**2 * torch.cos(2 * t)
            - t**3
            + 2 * t**4
            + (math.pi - 0.25) * t**2
        )


class Linear(torch.nn.Module):
    def __init__(self, dim=10):
        super().__init__()
        u = torch.randn(dim, dim, generator=torch.Generator().manual_seed(0)) * 0.1
        self.A = torch.nn.Parameter(2 * u - (u + u.T))

    def forward(self, t, y):
        return (self.A @ y.reshape(-1, 1)).reshape(-1)

    def exact(self, t):
        a = self.A.detach().double()
        ones = torch.ones(a.shape[0], dtype=F64)
        return torch.stack([torch.linalg.matrix_exp(a * ti) @ ones for ti in t.double()]).to(t)


PROBLEMS = {"constant": Constant, "sine": Sine, "linear": Linear}


def problem(name, dtype=F64, reverse=False, npts=10):
    f = PROBLEMS[name]().to(dtype)
    t = torch.linspace(1, 8, npts, dtype=dtype, requires_grad=True)
    sol = f.exact(t)
    if reverse:
        t, sol = t.flip(0).detach(), sol.flip(0).detach()
    return f, sol[0].detach().requires_grad_(True), t, sol


def rel_error(true, estimate):
    return float(((true - estimate) / true).abs().max().detach())


def same(a, b):
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(map(same, a, b))
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def both(call):
    """``call(impl)`` with torchdiffeq, then with ours: the outputs, or both raise."""
    try:
        theirs = call(torchdiffeq)
    except Exception:
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever torchdiffeq raised
            call(Ours)
        pytest.skip("torchdiffeq itself fails on this case; ours raises too")
    return theirs, call(Ours)


# --- odeint_tests.py: TestSolverError ------------------------------------------------------
# Low-order adaptive methods take 10^4-10^5 steps on these problems at the default
# tolerances (seconds to minutes each): run once, forward in float64, and marked slow.
HEAVY = {
    ("bosh3", "sine"),
    ("bosh3", "linear"),
    ("adaptive_heun", "sine"),
    ("adaptive_heun", "linear"),
}


def _solver_cases():
    for reverse in (False, True):
        for dtype in (F32, F64):
            for method in FIXED + ADAPTIVE:
                if dtype == F32 and method == "dopri8":
                    continue
                for ode in PROBLEMS if method in ADAPTIVE else ("constant",):
                    if (method, ode) not in HEAVY:
                        yield reverse, dtype, method, ode
                    elif dtype == F64 and not reverse:
                        yield pytest.param(reverse, dtype, method, ode, marks=pytest.mark.slow)


@pytest.mark.parametrize("reverse,dtype,method,ode", list(_solver_cases()))
def test_solver_error(reverse, dtype, method, ode):
    kw = {"rtol": 1e-12, "atol": 1e-14} if method == "dopri8" else {}
    eps = {"adaptive_heun": 4e-3, "bosh3": 3e-3}.get(method, 2e-3 if ode == "linear" else 1e-4)
    f, y0, t, sol = problem(ode, dtype, reverse)
    theirs, ours = both(lambda m: m.odeint(f, y0, t, method=method, **kw))
    assert same(ours, theirs)
    assert rel_error(sol, ours) < eps


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("ode", sorted(PROBLEMS))
def test_adjoint_forward(reverse, dtype, ode):
    f, y0, t, sol = problem(ode, dtype, reverse)
    theirs, ours = both(lambda m: m.odeint_adjoint(f, y0, t))
    assert same(ours, theirs)
    assert rel_error(sol, ours) < (2e-3 if ode == "linear" else 1e-4)


# --- odeint_tests.py: TestScipySolvers ----------------------------------------------------
# torchdiffeq's scipy_solver passes min_step to every scipy solver, and scipy's explicit
# Runge-Kutta solvers warn that it has no effect: torchdiffeq's behaviour, not ours.
@pytest.mark.filterwarnings("ignore:The following arguments have no effect:UserWarning")
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("solver", SCIPY)
@pytest.mark.parametrize("ode", sorted(PROBLEMS))
def test_scipy_solvers(reverse, dtype, solver, ode):
    pytest.importorskip("scipy")
    f, y0, t, sol = problem(ode, dtype, reverse)
    y0, t = y0.detach(), t.detach()

    def g(t, y):
        return f(t, y).detach()

    opts = {"solver": solver}
    theirs, ours = both(lambda m: m.odeint(g, y0, t, method="scipy_solver", options=opts))
    assert same(ours, theirs)
    assert ours.shape == sol.shape and rel_error(sol, ours) < 1e-3


# --- odeint_tests.py: TestNoIntegration ---------------------------------------------------
@pytest.mark.parametrize("method", FIXED + ADAPTIVE)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("ode", sorted(PROBLEMS))
def test_no_integration(method, reverse, dtype, ode):
    f, y0, t, sol = problem(ode, dtype, reverse)
    theirs, ours = both(lambda m: m.odeint(f, y0, t[0:1], method=method))
    assert same(ours, theirs) and ours.shape == (1, *y0.shape)
    assert (sol[0] - ours).abs().max() < 1e-12


# --- odeint_tests.py: TestStepLocations ---------------------------------------------------
# adaptive_heun takes about 10^5 steps here (a minute per case): slow.
SLOW_HEUN = [
    m if m != "adaptive_heun" else pytest.param(m, marks=pytest.mark.slow) for m in ADAPTIVE
]


@pytest.mark.parametrize("method", SLOW_HEUN)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_step_locations(method, dtype):
    if dtype == F32 and method == "dopri8":
        pytest.skip("torchdiffeq's suite skips dopri8 in float32")
    nfe = {}
    for name, impl in IMPLS.items():
        for opts in ({"jump_t": torch.tensor([0.5])}, {}):
            calls = [0]

            def f(t, x, calls=calls):
                calls[0] += 1
                return -0.5 * x if t < 0.5 else x**2

            x0 = torch.tensor([1.0, 2.0], dtype=dtype)
            impl.odeint(f, x0, torch.tensor([0.0, 1.0]), method=method, options=opts)
            nfe[name, bool(opts)] = calls[0]
    assert nfe["ours", True] == nfe["torchdiffeq", True] < nfe["ours", False]
    assert nfe["ours", False] == nfe["torchdiffeq", False]


# --- api_tests.py: TestCollectionState ----------------------------------------------------
@pytest.mark.parametrize("method", ADAPTIVE + ("scipy_solver",))
@pytest.mark.parametrize("dtype", [F32, F64])
def test_tuple_state_forward(method, dtype):
    f, y0, t, sol = problem("constant", dtype)
    if method == "scipy_solver":
        y0, t = y0.detach(), t.detach()

        def g(t, y, f=f):
            return f(t, y).detach()

    else:
        g = f

    def tuple_f(t, y):
        return (g(t, y[0]), g(t, y[1]))

    theirs, ours = both(lambda m: m.odeint(tuple_f, (y0, y0), t, method=method))
    assert same(ours, theirs)
    eps = 1e-5 if dtype == F32 else 1e-12
    assert (sol - ours[0]).max() < eps and (sol - ours[1]).max() < eps


@pytest.mark.slow
@pytest.mark.parametrize("method", ADAPTIVE)
def test_tuple_state_gradcheck(method):
    f, y0, t, _ = problem("constant")

    def tuple_f(t, y):
        return (f(t, y[0]), f(t, y[1]))

    for i in range(2):

        def func(y0, t, i=i):
            return solvers.odeint(tuple_f, (y0, y0), t, method=method)[i]

        assert torch.autograd.gradcheck(func, (y0, t))


# --- gradient_tests.py ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "method", ["midpoint", "rk4", "dopri5", "bosh3", "adaptive_heun", "dopri8"]
)
def test_gradcheck_y0_and_t(method):
    """gradcheck with respect to y0 and every output time (the fixed-step methods step on
    the output times: their gradient reaches t through the grid)."""
    f, y0, t, _ = problem("constant")
    assert torch.autograd.gradcheck(lambda y0, t: solvers.odeint(f, y0, t, method=method), (y0, t))


def test_adjoint_gradients_equal_dopri5():
    grads = {}
    for name in ("odeint", "odeint_adjoint"):
        f, y0, t, _ = problem("constant")
        ys = getattr(solvers, name)(f, y0, t, method="dopri5")
        ys.backward(torch.rand(ys.shape, generator=torch.Generator().manual_seed(0), dtype=F64))
        grads[name] = (t.grad, f.a.grad, f.b.grad)
    for a, b in zip(*grads.values()):
        assert (a - b).abs().max() < 1e-12


class _Cubic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.A = torch.nn.Parameter(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]]))
        self.unused_module = torch.nn.Linear(2, 5)

    def forward(self, t, y):
        return torch.mm(y**3, self.A)


def test_compare_adjoint_gradient():
    torch.manual_seed(0)
    out = {}
    for name in ("odeint_adjoint", "odeint"):
        func = _Cubic()
        y0 = torch.tensor([[2.0, 0.0]], requires_grad=True)
        t = torch.linspace(0.0, 25.0, 10, requires_grad=True)
        ys = getattr(solvers, name)(func, y0, t, method="dopri5")
        if name == "odeint_adjoint":
            g = torch.rand_like(ys) * 0.1
        ys.backward(g)
        out[name] = (y0.grad, t.grad, func.A.grad)
        if name == "odeint_adjoint":
            assert func.unused_module.weight.grad.abs().max() == 0
    (ay, at, aA), (ry, rt, rA) = out["odeint_adjoint"], out["odeint"]
    assert (ry - ay).abs().max() < 3e-4
    assert (rt - at).abs().max() < 1e-4
    assert (rA - aA).abs().max() < 2e-3


# --- event_tests.py -------------------------------------------------------------------------
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("method", FIXED + tuple(SLOW_HEUN))
@pytest.mark.parametrize("ode", ["constant", "sine"])
def test_event_handling(reverse, dtype, method, ode):
    tol = {"explicit_adams": 7e-2, "euler": 5e-3}.get(method, 1e-4)
    f, y0, t, sol = problem(ode, dtype, reverse)

    def event_fn(t, y):
        return torch.sum(y - sol[2])

    opts = {"step_size": 0.01, "interp": "cubic"} if method in FIXED else {}
    theirs, ours = both(
        lambda m: m.odeint(f, y0, t[0:2], event_fn=event_fn, method=method, options=opts)
    )
    assert same(ours[0], theirs[0]) and same(ours[1], theirs[1])
    event_t, y = ours
    assert rel_error(sol[2], y[-1]) < tol and rel_error(t[2], event_t) < tol


def test_event_handling_adjoint():
    f, y0, t, sol = problem("constant")

    def event_fn(t, y):
        return torch.sum(y - sol[-1])

    event_t, y = solvers.odeint_adjoint(f, y0, t[0:2], event_fn=event_fn, method="dopri5")
    assert rel_error(sol[-1], y[-1]) < 1e-4 and rel_error(t[-1], event_t) < 1e-4
    event_t.backward(retain_graph=True)
    y[-1].sum().backward()


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_event_time_is_differentiated(interface, method):
    # y' = -k y with y(0) = y0 stops where y_0(t) = 1/2: t* = ln(2 y0_0) / k. Bare
    # torchdiffeq.odeint held t* constant (gradient [0.5, 0.5], dt*/dk = 0).
    class Decay(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))

        def forward(self, t, y):
            return -self.k * y

    f = Decay()
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    opts = {"step_size": 1e-3} if method == "rk4" else None
    kw = dict(rtol=1e-10, atol=1e-12, method=method, options=opts)

    def event_fn(t, y):
        return y[0] - 0.5

    event_t, ys = getattr(solvers, interface)(f, y0, t, event_fn=event_fn, **kw)
    with torch.no_grad():  # the forward numbers are torchdiffeq's, bit for bit
        bare_t, bare_ys = getattr(torchdiffeq, interface)(f, y0, t, event_fn=event_fn, **kw)
    assert torch.equal(event_t, bare_t) and torch.equal(ys, bare_ys)
    assert abs(event_t.item() - math.log(2.0)) < 1e-6
    (dk,) = torch.autograd.grad(event_t, f.k, retain_graph=True)
    assert abs(dk.item() + math.log(2.0)) < 1e-5
    (dy0,) = torch.autograd.grad(ys[-1].sum(), y0)
    torch.testing.assert_close(dy0, torch.tensor([-1.0, 0.5], dtype=F64), rtol=0, atol=1e-5)


# --- norm_tests.py ----------------------------------------------------------------------------
def test_norm_sees_the_state_as_given():
    t = torch.tensor([0.0, 1.0])
    for x0, check in (
        (torch.tensor(1.0), lambda s: isinstance(s, torch.Tensor) and s.shape == ()),
        ((torch.tensor(1.0),), lambda s: isinstance(s, tuple) and len(s) == 1),
        (
            (torch.tensor(1.0), torch.tensor([[0.5, 0.5], [0.1, 0.1]])),
            lambda s: isinstance(s, tuple) and s[1].shape == (2, 2),
        ),
    ):
        seen = []

        def norm(state, check=check, seen=seen):
            seen.append(check(state))
            first = state[0] if isinstance(state, tuple) else state
            return first.pow(2).mean().sqrt()

        solvers.odeint(lambda t, x: x, x0, t, options={"norm": norm})
        assert seen and all(seen)


def test_user_adjoint_norm_is_called():
    t = torch.tensor([0.0, 1.0])
    params = (torch.rand(7, requires_grad=True), torch.rand((), requires_grad=True))
    shapes = []

    def adjoint_norm(tensors):
        shapes.append(tuple(x.shape for x in tensors))
        return max(x.abs().max() for x in tensors)

    xs = solvers.odeint_adjoint(
        lambda t, x: x,
        torch.tensor(1.0),
        t,
        adjoint_params=params,
        adjoint_options={"norm": adjoint_norm},
    )
    xs.sum().backward()
    assert shapes and shapes[0] == ((), (), (), (7,), ())


class _NeuralF(torch.nn.Module):
    def __init__(self, width, oscillate):
        super().__init__()
        self.linears = torch.nn.Sequential(
            torch.nn.Linear(2, width), torch.nn.Tanh(), torch.nn.Linear(width, 2), torch.nn.Tanh()
        )
        self.nfe = 0
        self.oscillate = oscillate

    def forward(self, t, x):
        self.nfe += 1
        out = self.linears(x)
        return out * t.mul(20).sin() if self.oscillate else out


@pytest.mark.parametrize("method", SLOW_HEUN)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_large_norm_takes_more_steps(method, dtype):
    if dtype == F32 and method == "dopri8":
        pytest.skip("torchdiffeq's suite skips dopri8 in float32")
    torch.manual_seed(3456789)
    x0 = torch.tensor([1.0, 2.0], dtype=dtype)
    t = torch.tensor([0.0, 1.0], dtype=dtype)
    small = _NeuralF(10, oscillate=True).to(dtype)
    large = _NeuralF(10, oscillate=True).to(dtype)
    large.load_state_dict(small.state_dict())
    solvers.odeint(small, x0, t, method=method, options={"norm": lambda x: x.abs().max()})
    solvers.odeint(large, x0, t, method=method, options={"norm": lambda x: 10 * x.abs().max()})
    assert small.nfe <= large.nfe


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8"])
def test_seminorm_saves_backward_evaluations(method):
    torch.manual_seed(3456786)
    x0 = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    full = _NeuralF(256, oscillate=True).to(F64)
    semi = _NeuralF(256, oscillate=True).to(F64)
    semi.load_state_dict(full.state_dict())
    out = solvers.odeint_adjoint(full, x0, t, atol=3e-7, method=method)
    full.nfe = 0
    out.sum().backward()
    out = solvers.odeint_adjoint(
        semi, x0, t, atol=1e-6, method=method, adjoint_options={"norm": "seminorm"}
    )
    semi.nfe = 0
    out.sum().backward()
    assert semi.nfe <= full.nfe


# --- the failures found when torchdiffeq's suite was first run against odeint ------------------
def _decay(t, y):
    return -y


def test_default_method_is_dopri5():
    y0, t = torch.ones(3), torch.tensor([0.0, 0.5, 1.0])
    assert same(solvers.odeint(_decay, y0, t), torchdiffeq.odeint(_decay, y0, t))
    assert same(solvers.odeint(_decay, y0, t), solvers.odeint(_decay, y0, t, method="dopri5"))


@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_without_step_size_steps_on_the_output_times(method):
    y0, t = torch.ones(3), torch.tensor([0.0, 0.1, 0.3, 0.35])
    seen = {}
    for name, impl in IMPLS.items():
        # implicit_adams's functional iteration does not converge at these steps: both
        # say so, with the same warning.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seen[name] = impl.odeint(_decay, y0, t, method=method)
        seen[name, "warnings"] = [str(w.message) for w in caught]
    ours = seen["ours"]
    assert same(ours, seen["torchdiffeq"])
    assert seen["ours", "warnings"] == seen["torchdiffeq", "warnings"]
    if method == "euler":
        expected = [1.0, 0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.95]
        assert torch.allclose(ours[:, 0], torch.tensor(expected))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # implicit_adams, as above
        sol = solvers.solve(_decay, y0, t, solvers.Solver(method))
    assert sol.stats.steps == 3


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun3", "rk4", "implicit_adams"])
@pytest.mark.parametrize("t", [[0.0, 0.35, 1.0], [1.0, 0.35, 0.0]])
def test_options_step_size(method, t):
    y0, t = torch.ones(3), torch.tensor(t)
    opts = {"step_size": 0.1}
    ours = solvers.odeint(_decay, y0, t, method=method, options=opts)
    theirs = torchdiffeq.odeint(_decay, y0, t, method=method, options=opts)
    if t[0] < t[-1]:
        assert same(ours, theirs)
    else:
        # Decreasing times walk the increasing grid backwards (the same cells as forward):
        # torchdiffeq's points to round-off, as 0.1 divides the span.
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=0)
    assert torch.allclose(ours[-1], y0 * math.exp(-float(t[-1] - t[0])), rtol=0.1)


def test_single_output_time_returns_y0():
    y0 = torch.randn(2, 3)
    for method in ("dopri5", "rk4", "euler"):
        out = solvers.odeint(_decay, y0, torch.tensor([0.3]), method=method)
        assert same(out, y0[None])
    q, p = solvers.odeint(
        (_decay, _decay), (y0, y0), torch.tensor([0.3]), method="verlet", options={"step_size": 0.1}
    )
    assert same(q, y0[None]) and same(p, y0[None])


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = {"callback_step": [], "callback_accept_step": [], "callback_reject_step": []}

    def forward(self, t, y):
        return -10 * y * torch.cos(5 * t)

    def callback_step(self, t0, y0, dt):
        self.calls["callback_step"].append((float(t0), float(dt)))

    def callback_accept_step(self, t0, y0, dt):
        self.calls["callback_accept_step"].append((float(t0), float(dt)))

    def callback_reject_step(self, t0, y0, dt):
        self.calls["callback_reject_step"].append((float(t0), float(dt)))


@pytest.mark.parametrize(
    "method,opts",
    [("rk4", {"step_size": 0.1}), ("euler", {}), ("dopri5", {}), ("bosh3", {"first_step": 0.5})],
)
@pytest.mark.parametrize("reverse", [False, True])
def test_user_callbacks_are_called(method, opts, reverse):
    t = torch.tensor([1.0, 0.0] if reverse else [0.0, 0.5, 1.0])
    y0 = torch.ones(2)
    theirs, ours = _Recorder(), _Recorder()
    with warnings.catch_warnings():
        # Fixed-step solvers do not support the adaptive callbacks: torchdiffeq warns, and
        # must warn the same way for both.
        warnings.simplefilter("ignore", UserWarning)
        ref = torchdiffeq.odeint(theirs, y0, t, method=method, options=opts)
        out = solvers.odeint(ours, y0, t, method=method, options=opts)
    if reverse and "step_size" in opts:
        # Decreasing times walk the increasing grid backwards: torchdiffeq's points to
        # round-off (0.1 divides the span), so the same calls at the same times to round-off.
        assert torch.allclose(out, ref, rtol=1e-6, atol=0)
        for name, calls in ours.calls.items():
            assert len(calls) == len(theirs.calls[name])
            if calls:
                assert torch.allclose(
                    torch.tensor(calls), torch.tensor(theirs.calls[name]), rtol=0, atol=1e-6
                )
    else:
        assert same(out, ref)
        assert ours.calls == theirs.calls
    assert ours.calls["callback_step"]  # called at all
    if method in ("dopri5", "bosh3"):
        assert ours.calls["callback_accept_step"] and ours.calls["callback_reject_step"]


def test_unsupported_callback_warns_like_torchdiffeq():
    with pytest.warns(UserWarning, match="does not support callbacks"):
        solvers.odeint(_Recorder(), torch.ones(2), torch.tensor([0.0, 1.0]), method="rk4")


def test_adjoint_params_and_options():
    """A plain function closing over a tensor: adjoint_params is how it gets a gradient."""
    a = torch.tensor(0.7, dtype=F64, requires_grad=True)
    y0, t = torch.ones(3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    grads = {}
    for name, impl in IMPLS.items():
        a.grad = None
        ys = impl.odeint_adjoint(
            lambda t, y: -a * y,
            y0,
            t,
            adjoint_params=(a,),
            adjoint_method="rk4",
            adjoint_options={"step_size": 0.01},
        )
        ys[-1].sum().backward()
        grads[name] = a.grad.clone()
    assert torch.equal(grads["ours"], grads["torchdiffeq"])
    assert torch.allclose(grads["ours"], -3 * math.exp(-0.7) * torch.ones((), dtype=F64))


@pytest.mark.parametrize("method", ["euler", "rk4"])
@pytest.mark.parametrize("opts", [{}, {"step_size": 0.1}])
def test_float32_scalar_state_with_float64_times_stays_float32(method, opts):
    y0 = torch.tensor(1.0, dtype=F32)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=F64)
    ours = solvers.odeint(_decay, y0, t, method=method, options=opts)
    theirs = torchdiffeq.odeint(_decay, y0, t, method=method, options=opts)
    assert ours.dtype == F32 and same(ours, theirs)


@pytest.mark.parametrize("method", ["euler", "rk4"])
@pytest.mark.parametrize("opts", [{}, {"step_size": 0.1}, {"step_size": 0.3}])
def test_gradient_with_respect_to_end_times_on_the_fixed_grid(method, opts):
    w = torch.tensor(1.0, dtype=F64)
    grads = {}
    for name, impl in IMPLS.items():
        t = torch.tensor([0.0, 1.0], dtype=F64, requires_grad=True)
        y = impl.odeint(
            lambda t, y: -w * y, torch.ones((), dtype=F64), t, method=method, options=opts
        )
        (grads[name],) = torch.autograd.grad(y[-1], t)
    assert torch.equal(grads["ours"], grads["torchdiffeq"])
    # d/dt1 exp(-(t1 - t0)) = -e^-1 and d/dt0 = +e^-1, to the method's accuracy.
    assert grads["ours"][1] < -0.3 and grads["ours"][0] > 0.3
