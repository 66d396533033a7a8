"""solve's adaptive Runge–Kutta driver (solvers/_adaptive.py): torchdiffeq's steps with the
stage derivatives kept apart.

Against torchdiffeq.odeint on the same problems: the same evaluations, accepted and
rejected steps in float64 (the step-size controller sees error ratios that differ only by
rounding) and the same solution to rounding; gradients to rounding; torchdiffeq's errors
named as solve names them. solvers.odeint, the drop-in, keeps torchdiffeq's own loop.
"""

import pytest
import torch
import torchdiffeq

import neuralpde
import solvers
from solvers import _adaptive

F32, F64 = torch.float32, torch.float64
METHODS = ("dopri5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8")


class Field(torch.nn.Module):
    """A stiff-ish convolutional field with a kink at t = 0.7 and counted evaluations."""

    def __init__(self, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(0.25 * torch.randn(3, 3, 3, 3, generator=g, dtype=dtype))
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        gain = torch.where(t < 0.7, 1.0 + t, 2.0 - t)
        z = torch.nn.functional.conv2d(y, self.w, padding=1)
        return -gain * torch.nn.functional.conv2d(
            torch.relu(z), self.w.transpose(0, 1).flip(-1, -2), padding=1
        ) + 0.1 * torch.sin(3 * t)


class TupleField(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.f = Field(dtype)

    def forward(self, t, y):
        q, p = y
        return p, self.f(t, q) - 0.1 * p


def _run_ours(func, y0, t, method, rtol, atol, options):
    solver = solvers.Solver(method, rtol=rtol, atol=atol, options=options)
    return solvers.solve(func, y0, t, solver)


def _problem(state, dtype, reverse):
    torch.manual_seed(1)
    if state == "tensor":
        func = Field(dtype)
        y0 = torch.randn(4, 3, 6, 6, dtype=dtype)
    else:
        func = TupleField(dtype)
        y0 = (torch.randn(4, 3, 6, 6, dtype=dtype), torch.zeros(4, 3, 6, 6, dtype=dtype))
    t = torch.tensor([0.0, 0.4, 1.0, 1.5], dtype=dtype)
    return func, y0, (t.flip(0) if reverse else t)


_EXACT = {}


def _exact(state, reverse):
    """The float64 solution to 1e-10 (dopri8, the jump given), once per problem."""
    if (state, reverse) not in _EXACT:
        func, y0, t = _problem(state, F64, reverse)
        jump = {"jump_t": torch.tensor([0.7], dtype=F64)}
        _EXACT[state, reverse] = torchdiffeq.odeint(
            func, y0, t, rtol=1e-10, atol=1e-12, method="dopri8", options=jump
        )
    return _EXACT[state, reverse]


def _error(sol, ref):
    if isinstance(sol, tuple):
        return max(_error(a, b) for a, b in zip(sol, ref))
    return float((sol - ref).abs().max() / ref.abs().max())


# dopri8 in float32: its tolerances would lie below float32's resolution (left out).
@pytest.mark.parametrize(
    "method,dtype", [(m, d) for m in METHODS for d in (F32, F64) if (m, d) != ("dopri8", F32)]
)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("state", ["tensor", "tuple"])
@pytest.mark.parametrize("jumps", [False, True])
def test_as_accurate_as_torchdiffeq(method, dtype, reverse, state, jumps):
    """Every method, dtype, direction, state and jump option: ours is as close to the exact
    solution as torchdiffeq's, at about the same cost (a controller whose error ratios
    differ by rounding may accept a step torchdiffeq rejects, or the other way: near the
    kink at t = 0.7, undeclared, such decisions are many)."""
    func, y0, t = _problem(state, dtype, reverse)
    options = {"jump_t": torch.tensor([0.7], dtype=F64)} if jumps else {}
    rtol, atol = (1e-4, 1e-6) if dtype == F32 else (1e-5, 1e-7)
    with torch.no_grad():
        exact = _exact(state, reverse)
        counted = func if state == "tensor" else func.f
        counted.nfe = 0
        theirs = torchdiffeq.odeint(
            func, y0, t, rtol=rtol, atol=atol, method=method, options=options
        )
        nfe_theirs, counted.nfe = counted.nfe, 0
        sol = _run_ours(func, y0, t, method, rtol, atol, options)
    assert sol.stats.nfe == counted.nfe
    assert 0.8 * nfe_theirs <= counted.nfe <= 1.25 * nfe_theirs
    exact = tuple(e.to(dtype) for e in exact) if state == "tuple" else exact.to(dtype)
    # Where a step straddles the undeclared kink, where it falls decides the error: both
    # are then errors of the tolerance's size, not one a multiple of the other.
    assert _error(sol.ys, exact) <= max(2 * _error(theirs, exact), 5 * rtol)


def _smooth(dtype=F64):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).to(dtype)

    def f(t, y):
        return -torch.relu(conv(y)) * (1 + t) + 0.1 * torch.sin(3 * t)

    return f, conv, torch.randn(8, 4, 8, 8, dtype=dtype)


@pytest.mark.parametrize("method", ["fehlberg2", "adaptive_heun", "dopri5"])
def test_same_steps_as_torchdiffeq_where_no_ratio_is_near_one(method):
    """On a smooth problem in float64 the rounding of the stage sums moves no decision of
    the controller: the same evaluations, accepted and rejected steps (a first step of 1
    forces rejections), and the solution to rounding."""
    smooth, _, y0 = _smooth()
    nfe = [0]

    def f(t, y):
        nfe[0] += 1
        return smooth(t, y)

    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    seen = {"accept": 0, "reject": 0}

    class Counted(torch.nn.Module):
        def forward(self, t, y):
            return f(t, y)

        def callback_accept_step(self, t0, y0, dt):
            seen["accept"] += 1

        def callback_reject_step(self, t0, y0, dt):
            seen["reject"] += 1

    opts = {"first_step": 1.0}
    with torch.no_grad():
        theirs = torchdiffeq.odeint(
            Counted(), y0, t, rtol=1e-5, atol=1e-6, method=method, options=opts
        )
        nfe_theirs, nfe[0] = nfe[0], 0
        sol = _run_ours(f, y0, t, method, 1e-5, 1e-6, opts)
    assert seen["reject"] > 0
    assert (sol.stats.steps, sol.stats.rejected) == (seen["accept"], seen["reject"])
    assert sol.stats.nfe == nfe[0] == nfe_theirs
    assert _error(sol.ys, theirs) < 1e-12


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "fehlberg2"])
def test_gradients_match_torchdiffeq(method, monkeypatch):
    """Backpropagation through the driver's steps gives torchdiffeq's gradients (the first
    step's size, chosen from f(y0), is differentiated as torchdiffeq differentiates it)."""
    # bosh3's dense output here is the cubic Hermite one (see _adaptive._BOSH3_MID); given
    # the same midpoint, torchdiffeq's numbers are the driver's.
    from torchdiffeq._impl.bosh3 import Bosh3Solver

    monkeypatch.setattr(Bosh3Solver, "mid", torch.tensor(_adaptive._BOSH3_MID, dtype=F64))
    f, conv, y0 = _smooth()
    y0.requires_grad_(True)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    params = [y0, *conv.parameters()]

    def grads(out):
        w = torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)
        return torch.autograd.grad((out * w).sum(), params)

    theirs = grads(torchdiffeq.odeint(f, y0, t, rtol=1e-5, atol=1e-6, method=method))
    ours = grads(_run_ours(f, y0, t, method, 1e-5, 1e-6, {}).ys)
    for a, b in zip(ours, theirs):
        assert _error(a, b) < 1e-10


def test_solve_takes_the_driver_and_odeint_keeps_torchdiffeqs_loop(monkeypatch):
    """The network's path (solve) never calls torchdiffeq's stage arithmetic; the drop-in
    (odeint) does, and matches it bit for bit."""
    from torchdiffeq._impl import rk_common

    calls = []
    original = rk_common._runge_kutta_step

    def spy(*args, **kw):
        calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(rk_common, "_runge_kutta_step", spy)
    net = neuralpde.PDECNN("parabolic", 1, 3, widths=(4, 4)).eval()
    net.set_solver("dopri5", rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        net(torch.randn(2, 1, 8, 8))
    assert calls == []
    func, y0 = Field(F32), torch.randn(2, 3, 5, 5)
    t = torch.tensor([0.0, 1.0])
    out = solvers.odeint(func, y0, t)
    assert calls
    assert torch.equal(out, torchdiffeq.odeint(func, y0, t))


def test_torchdiffeq_failures_are_named():
    func, y0 = Field(F64), torch.randn(2, 3, 5, 5, dtype=F64)
    t = torch.tensor([0.0, 5.0], dtype=F64)
    solver = solvers.Solver("dopri5", rtol=1e-10, atol=1e-12, options={"max_num_steps": 3})
    with pytest.raises(solvers.SolverError, match="max_num_steps") as err:
        solvers.solve(func, y0, t, solver)
    assert err.value.status == "max_num_steps"

    def blow_up(t, y):
        return y**2

    y1 = torch.ones(3, dtype=F64)
    with pytest.raises(solvers.SolverError) as err:
        solvers.solve(blow_up, y1, torch.tensor([0.0, 2.0], dtype=F64), solvers.Solver("dopri5"))
    assert err.value.status in ("underflow", "max_num_steps")


def test_unsupported_calls_fall_back_to_torchdiffeq():
    y0, t = torch.randn(3), torch.tensor([0.0, 1.0])
    tensor_tol = torch.full((3,), 1e-6)
    assert not _adaptive.supports(lambda t, y: -y, y0, t, "dopri5", tensor_tol, 1e-8, {}, False)
    assert not _adaptive.supports(lambda t, y: -y, y0, t, "dopri5", 1e-6, 1e-8, {}, True)
    assert not _adaptive.supports(lambda t, y: -y, y0, t, "rk4", 1e-6, 1e-8, {}, False)
    assert _adaptive.supports(lambda t, y: -y, y0, t, "dopri5", 1e-6, 1e-8, {}, False)
    with _adaptive.torchdiffeq_arithmetic():
        assert not _adaptive.supports(lambda t, y: -y, y0, t, "dopri5", 1e-6, 1e-8, {}, False)


@pytest.mark.parametrize("option", [{"max_step": 0.1}, {"max_step": 0.3}, {"min_step": 0.2}])
def test_step_bounds_take_torchdiffeqs_steps(option):
    """A step at max_step is measured as (t + dt) - t only where it was shortened onto a
    prescribed point: otherwise rounding makes it a little longer than max_step, and a
    step over max_step is rejected (it was, forever)."""
    accepted = []

    class Decay(torch.nn.Module):
        def forward(self, t, y):
            return -y

        def callback_accept_step(self, t0, y0, dt):
            accepted.append(float(dt))

    y0, t = torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    theirs = torchdiffeq.odeint(Decay(), y0, t, options=option)
    sol = _run_ours(lambda t, y: -y, y0, t, "dopri5", 1e-7, 1e-9, option)
    assert sol.stats.steps == len(accepted)
    assert _error(sol.y_final, theirs[-1]) < 1e-12


class _Buffered(torch.nn.Module):
    """-cos(t)·y written into one buffer that every call reuses and returns."""

    def __init__(self, fresh: bool = False):
        super().__init__()
        self.fresh, self.buf, self.calls = fresh, None, 0
        self.w = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))

    def forward(self, t, y):
        self.calls += 1
        if self.fresh:
            return -torch.cos(t) * self.w * y
        if self.buf is None or self.buf.shape != y.shape:
            self.buf = torch.empty_like(y)
        with torch.no_grad():  # the buffer's own values; the gradient is tested apart
            return torch.mul(y, -torch.cos(t) * self.w, out=self.buf)


class _TwoBuffers:
    """-cos(t)·y written into two buffers in turn."""

    def __init__(self):
        self.bufs, self.i = None, 0

    def __call__(self, t, y):
        if self.bufs is None:
            self.bufs = [torch.empty_like(y), torch.empty_like(y)]
        out, self.i = self.bufs[self.i], 1 - self.i
        return torch.mul(y, -torch.cos(t), out=out)


@pytest.mark.parametrize(
    "method",
    ["euler", "midpoint", "heun2", "heun3", "rk4", "dopri5", "bosh3", "adaptive_heun", "dopri8"],
)
def test_a_field_that_reuses_its_output_buffer_is_solved_as_one_that_does_not(method):
    """A right-hand side that writes every result into one reused buffer overwrites the
    stage derivatives a step still holds: torchdiffeq's rk4 is then first order. Every
    method of solve (and odeint) gives exactly the numbers of the same field returning new
    tensors, with the first solve's two evaluations the only extra cost."""
    y0, t = torch.ones(3, dtype=F64), torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    adaptive = method in ("dopri5", "bosh3", "adaptive_heun", "dopri8")
    solver = (
        solvers.Solver(method, rtol=1e-6, atol=1e-8)
        if adaptive
        else solvers.Solver(method, step_size=0.05)
    )
    with torch.no_grad():
        want = solvers.solve(_Buffered(fresh=True), y0, t, solver)
        field = _Buffered()
        got = solvers.solve(field, y0, t, solver)
    assert torch.equal(got.saved, want.saved)
    assert got.stats == want.stats
    assert field.calls == want.stats.nfe + 2
    # throw=False solves one output interval at a time: each is found and solved again.
    with torch.no_grad():
        part = solvers.solve(_Buffered(), y0, t, solver, throw=False)
        part_want = solvers.solve(_Buffered(fresh=True), y0, t, solver, throw=False)
    assert part.status == "ok" and torch.equal(part.y_final, part_want.y_final)
    # The drop-in odeint too, where torchdiffeq's own numbers are wrong for this field.
    options = None if adaptive else {"step_size": 0.05}
    kw = dict(rtol=1e-6, atol=1e-8) if adaptive else {}
    with torch.no_grad():
        ours = solvers.odeint(_Buffered(), y0, t, method=method, options=options, **kw)
        fresh = torchdiffeq.odeint(_Buffered(True), y0, t, method=method, options=options, **kw)
        theirs = torchdiffeq.odeint(_Buffered(), y0, t, method=method, options=options, **kw)
    assert torch.equal(ours, fresh)
    # A field cycling through two buffers (the third evaluation overwrites the first).
    with torch.no_grad():
        two = solvers.solve(_TwoBuffers(), y0, t, solver)
    assert torch.equal(two.saved, want.saved)
    if method in ("rk4", "heun3"):
        exact = torch.exp(-torch.sin(t[-1]))
        assert (theirs[-1] - exact).abs().max() > 1e3 * (ours[-1] - exact).abs().max()


def test_a_buffer_holding_results_with_gradients_is_a_named_error():
    """Written under autograd (copy_ of a result that requires grad), the buffer's history
    reaches the evaluations saved for backward: a ValueError that names the fix."""

    class WithGrad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(-0.5, dtype=F64))
            self.buf = torch.zeros(2, dtype=F64)

        def forward(self, t, y):
            return self.buf.copy_(self.w * y)

    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    for solver in (solvers.Solver("dopri5"), solvers.Solver("rk4", step_size=0.1)):
        with pytest.raises(ValueError, match="buffer it reuses.*Return a new tensor"):
            solvers.solve(WithGrad(), y0, [0.0, 1.0], solver)


def test_a_field_that_reuses_its_output_buffer_through_torchdiffeqs_loop():
    """The paths that run torchdiffeq's own loop (the adjoint, a step callback) find the
    buffer too, and give the numbers of a field returning new tensors."""

    class WithCallback(_Buffered):
        def callback_step(self, t0, y0, dt):
            pass

    y0, t = torch.ones(3, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64)
    for method in ("rk4", "dopri5"):
        for memory, field in (("adjoint", _Buffered), ("autograd", WithCallback)):
            opts = {"step_size": 0.05} if method == "rk4" else {}
            solver = solvers.Solver(method, memory=memory, **opts)
            with torch.no_grad():
                got = solvers.solve(field(), y0, t, solver).y_final
                want = solvers.solve(field(fresh=True), y0, t, solver).y_final
            assert torch.equal(got, want), (method, memory)


def test_a_nonfinite_state_is_a_nonfinite_error_or_status():
    """A tuple state whose second part turns NaN: the mixed norm (a max over parts) lets it
    through, and the next step finds it; with throw=False the solution says so."""

    def f(t, y):
        nan = torch.full_like(y[1], float("nan"))
        return -y[0], torch.where(t > 0.7, nan, -y[1])

    y0 = (torch.ones(2, dtype=F64), torch.ones(2, dtype=F64))
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    with pytest.raises(solvers.NonFiniteError) as err:
        solvers.solve(f, y0, t, solvers.Solver("dopri5", check_finite=False))
    assert err.value.t is not None and 0.7 <= err.value.t <= 1.0
    sol = solvers.solve(f, y0, t, solvers.Solver("dopri5"), throw=False)
    assert sol.status == "nonfinite" and sol.t_reached == 0.0


def test_partial_solves_count_rejections():
    f, _, y0 = _smooth()
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    solver = solvers.Solver("dopri5", rtol=1e-5, atol=1e-6, options={"first_step": 1.0})
    whole = solvers.solve(f, y0, t, solver).stats
    parted = solvers.solve(f, y0, t, solver, throw=False).stats
    assert isinstance(parted.rejected, int) and parted.rejected > 0
    assert isinstance(whole.rejected, int)


def test_bosh3_dense_output_is_third_order_between_steps():
    # A falling body: every bosh3 step is exact (a quadratic), so the steps are few and
    # large, and the values between them are the dense output's alone. torchdiffeq's
    # midpoint (y0 + h/2 k2) put them 21 units off at t = 2; the cubic Hermite one is exact
    # for a quadratic ...
    def fall(t, y):
        return torch.stack([y[1], -9.81 * torch.ones_like(y[0])])

    t = torch.tensor([0.0, 0.3, 0.8, 2.0], dtype=torch.float64)
    y0 = torch.tensor([2.0, 1.5], dtype=torch.float64)
    exact = torch.stack([2 + 1.5 * t - 4.905 * t**2, 1.5 - 9.81 * t], 1)
    ys = solvers.solve(fall, y0, t, solvers.Solver("bosh3")).ys
    torch.testing.assert_close(ys, exact, rtol=0, atol=1e-12)
    # ... and for a solution that is no polynomial, the output between steps is as close as
    # at the steps' ends: y' = cos(t) y, y = exp(sin t), output every 0.01.
    t = torch.linspace(0.0, 6.0, 601, dtype=torch.float64)
    sol = solvers.solve(
        lambda t, y: torch.cos(t) * y,
        torch.ones(1, dtype=torch.float64),
        t,
        solvers.Solver("bosh3", rtol=1e-6, atol=1e-9),
    )
    err = (sol.ys[:, 0] - torch.exp(torch.sin(t))).abs().max().item()
    assert err < 1e-4, err
