"""The one time grid and the sync-free fixed-grid driver: torchdiffeq's numbers, exactly."""

import pytest
import torch
import torchdiffeq

import solvers
from solvers import Solver, _fixed_grid, _grid


class Rotate(torch.nn.Module):
    """A time-dependent linear field with a jump at t = 0.5 (to exercise ``perturb``)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([[-0.3, 1.0], [-1.0, -0.1]]))

    def forward(self, t, y):
        jump = (t >= 0.5).to(y.dtype)
        return y @ self.a.to(y.dtype).T * (1.0 + jump) + torch.cos(3 * t)


Y0 = torch.tensor([[1.0, -0.5], [0.2, 0.7], [0.0, 1.0]])


def _both(method, y0, t, step_size, **options):
    f = Rotate()
    sol = solvers.solve(f, y0, t, Solver(method, step_size=step_size, options=options))
    theirs = torchdiffeq.odeint(
        f, y0, t, method=method, options={"step_size": step_size, **options}
    )
    return sol.ys, theirs, sol.stats


@pytest.mark.parametrize("method", _fixed_grid.FAST_METHODS)
@pytest.mark.parametrize("perturb", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bitwise_equal_to_torchdiffeq(method, perturb, dtype):
    # Output times off the grid (interpolated) and a step that does not divide the span.
    t = torch.tensor([0.0, 0.35, 0.5, 1.3], dtype=dtype)
    ours, theirs, stats = _both(method, Y0.to(dtype), t, step_size=0.1, perturb=perturb)
    assert torch.equal(ours, theirs)
    assert stats.steps == 13
    evals = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}[method]
    assert stats.nfe == 13 * evals


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_reversed_time_and_tuple_state(method):
    # 0.07 does not divide 1.2: the short step is [-0.2, -0.17] in both directions here,
    # where torchdiffeq puts it at the end of the walk; with a step that divides the span,
    # the two grids are the same points to round-off.
    t = torch.tensor([1.0, 0.45, -0.2], dtype=torch.float64)
    ours, theirs, _ = _both(method, Y0.double(), t, step_size=0.07, perturb=True)
    exact = torchdiffeq.odeint(Rotate(), Y0.double(), t, rtol=1e-10, atol=1e-12)
    # Two grids of one accuracy: ours is not less accurate.
    err_ours, err_theirs = (float((y - exact).abs().max().detach()) for y in (ours, theirs))
    assert err_ours < 1.2 * err_theirs
    forward = solvers.solve(
        Rotate(), Y0.double(), t.flip(0), Solver(method, step_size=0.07, options={"perturb": True})
    )
    steps = _grid.grid(t.tolist(), 0.07, torch.float64)
    assert steps == _grid.grid(t.flip(0).tolist(), 0.07, torch.float64)[::-1]
    assert forward.stats.steps == len(steps) - 1
    ours, theirs, _ = _both(method, Y0.double(), t, step_size=0.1, perturb=True)
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-12)

    def g(t, y):
        q, p = y
        return p * torch.cos(t), -q

    y0 = (Y0.double(), 2 * Y0.double())
    ours = solvers.solve(g, y0, t, Solver(method, step_size=0.1)).ys
    theirs = torchdiffeq.odeint(g, y0, t, method=method, options={"step_size": 0.1})
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(ours, theirs))


def test_gradients_equal_torchdiffeq():
    f = Rotate().double()
    t = torch.tensor([0.0, 0.8], dtype=torch.float64)
    ours = solvers.odeint(f, Y0.double(), t, method="rk4", options={"step_size": 0.1})
    (g_ours,) = torch.autograd.grad(ours.square().sum(), f.a)
    theirs = torchdiffeq.odeint(f, Y0.double(), t, method="rk4", options={"step_size": 0.1})
    (g_theirs,) = torch.autograd.grad(theirs.square().sum(), f.a)
    assert torch.equal(g_ours, g_theirs)


def test_host_times_equal_tensor_times():
    f = Rotate()
    solver = Solver("midpoint", step_size=0.1)
    a = solvers.solve(f, Y0, [0.0, 0.5, 1.0], solver).ys
    b = solvers.solve(f, Y0, torch.tensor([0.0, 0.5, 1.0]), solver).ys
    assert torch.equal(a, b) and a.dtype == Y0.dtype


def test_what_the_driver_leaves_to_torchdiffeq():
    t = torch.tensor([0.0, 1.0])
    f = Rotate()
    assert not _fixed_grid.supports(f, t, "rk4", {"interp": "cubic"}, False)
    assert not _fixed_grid.supports(f, t, "rk4", {}, True)
    assert not _fixed_grid.supports(f, t, "explicit_adams", {}, False)
    assert not _fixed_grid.supports(f, t.clone().requires_grad_(), "rk4", {}, False)

    class WithCallback(Rotate):
        def callback_step(self, t0, y0, dt):
            pass

    assert not _fixed_grid.supports(WithCallback(), t, "rk4", {}, False)
    assert _fixed_grid.supports(f, t, "rk4", {"perturb": True}, False)
    t = torch.tensor([0.0, 0.35, 1.0])
    ours, theirs, _ = _both("rk4", Y0, t, step_size=0.1, interp="cubic")
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_python_grid_equals_torchdiffeq_grid(dtype):
    # The grid is built in Python floats (so torch.compile sees constants); it must be the
    # grid torchdiffeq builds with tensor ops, point for point, including the round-off
    # cases where (end - start) / h lands just above an integer; and the tensor version
    # given to torchdiffeq's own loop (for gradients with respect to t) must agree.
    make = _fixed_grid.FixedGridODESolver._grid_constructor_from_step_size
    g = torch.Generator().manual_seed(0)
    cases = [
        (0.0, 3.0, 1.0),
        (0.0, 1.0, 0.1),
        (0.0, 0.3, 0.1),
        (-0.2, 0.7, 0.03),
        (1.0, 2.0, 1 / 3),
    ]
    for _ in range(200):
        a, b = sorted(torch.rand(2, generator=g).tolist())
        cases.append((4 * a - 2, 4 * b - 2 + 1e-3, float(torch.rand(1, generator=g)) * 0.5 + 1e-3))
    for a, b, h in cases:
        t = torch.tensor([a, b], dtype=dtype)
        ts = t.double().tolist()
        theirs = make(h)(None, None, t).double().tolist()
        if len(theirs) > 1:  # torchdiffeq's degenerate one-point grid is the one exception
            assert _grid.grid(ts, h, dtype) == theirs, (a, b, h)
        assert _grid.grid_constructor(h)(None, None, t).double().tolist() == _grid.grid(
            ts, h, dtype
        )
        back = _grid.grid_constructor(h)(None, None, t.flip(0)).double().tolist()
        assert back == _grid.grid(ts[::-1], h, dtype) == _grid.grid(ts, h, dtype)[::-1]


def test_placements_give_every_output_its_row():
    points = _grid.grid([0.0, 0.35, 1.0], 0.3, torch.float64)
    assert points == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0])
    place = _grid.placements(points, [0.0, 0.35, 1.0])
    assert [len(p) for p in place] == [0, 1, 0, 1]
    (j, s), (k, r) = place[1][0], place[3][0]
    assert (j, k, r) == (1, 2, 1.0) and s == pytest.approx(0.05 / 0.3)
