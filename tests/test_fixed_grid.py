"""The sync-free fixed-grid driver returns exactly what torchdiffeq's own loop returns."""

import pytest
import torch
import torchdiffeq

import solvers
from solvers import _fixed_grid


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
    ours, stats = solvers.odeint(
        f, y0, t, method=method, step_size=step_size, options=options, return_stats=True
    )
    theirs = torchdiffeq.odeint(
        f, y0, t, method=method, options={"step_size": step_size, **options}
    )
    return ours, theirs, stats


@pytest.mark.parametrize("method", _fixed_grid.FAST_METHODS)
@pytest.mark.parametrize("perturb", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bitwise_equal_to_torchdiffeq(method, perturb, dtype):
    # Output times off the grid (interpolated) and a step that does not divide the span.
    t = torch.tensor([0.0, 0.35, 0.5, 1.3], dtype=dtype)
    ours, theirs, stats = _both(method, Y0.to(dtype), t, step_size=0.1, perturb=perturb)
    assert torch.equal(ours, theirs)
    assert stats["steps"] == 13
    evals = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}[method]
    assert stats["nfe"] == 13 * evals


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_reversed_time_and_tuple_state(method):
    t = torch.tensor([1.0, 0.45, -0.2], dtype=torch.float64)
    ours, theirs, _ = _both(method, Y0.double(), t, step_size=0.07, perturb=True)
    assert torch.equal(ours, theirs)

    def g(t, y):
        q, p = y
        return p * torch.cos(t), -q

    y0 = (Y0.double(), 2 * Y0.double())
    ours = solvers.odeint(g, y0, t, method=method, step_size=0.07)
    theirs = torchdiffeq.odeint(g, y0, t, method=method, options={"step_size": 0.07})
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_gradients_equal_torchdiffeq():
    f = Rotate().double()
    t = torch.tensor([0.0, 0.8], dtype=torch.float64)
    ours = solvers.odeint(f, Y0.double(), t, method="rk4", step_size=0.1)
    (g_ours,) = torch.autograd.grad(ours.square().sum(), f.a)
    theirs = torchdiffeq.odeint(f, Y0.double(), t, method="rk4", options={"step_size": 0.1})
    (g_theirs,) = torch.autograd.grad(theirs.square().sum(), f.a)
    assert torch.equal(g_ours, g_theirs)


def test_host_times_equal_tensor_times():
    f = Rotate()
    a = solvers.odeint(f, Y0, [0.0, 0.5, 1.0], method="midpoint", step_size=0.1)
    b = solvers.odeint(f, Y0, torch.tensor([0.0, 0.5, 1.0]), method="midpoint", step_size=0.1)
    assert torch.equal(a, b) and a.dtype == Y0.dtype


def test_options_it_does_not_know_go_to_torchdiffeq():
    assert not _fixed_grid.supports("rk4", {"step_size": 0.1, "interp": "cubic"}, False)
    assert not _fixed_grid.supports("rk4", {"step_size": 0.1}, True)
    assert not _fixed_grid.supports("explicit_adams", {"step_size": 0.1}, False)
    assert _fixed_grid.supports("rk4", {"step_size": 0.1, "perturb": True}, False)
    t = torch.tensor([0.0, 0.35, 1.0])
    ours, theirs, _ = _both("rk4", Y0, t, step_size=0.1, interp="cubic")
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_python_grid_equals_torchdiffeq_grid(dtype):
    # The grid is built in Python floats (so torch.compile sees constants); it must be the
    # grid torchdiffeq builds with tensor ops, point for point, including the round-off
    # cases where (end - start) / h lands just above an integer.
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
        assert _fixed_grid._grid(ts, h, dtype) == theirs, (a, b, h)
