"""Property-based tests over random shapes and configurations (hypothesis)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import neuralpde
import solvers

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
dims = st.integers(min_value=1, max_value=5)


@SETTINGS
@given(b=dims, c=st.integers(1, 4), h=dims, w=dims, seed=st.integers(0, 2**16))
def test_symmetric_layer_keeps_shape_and_is_monotone_without_norm(b, c, h, w, seed):
    # F(Y) = -Kᵀ relu(K Y) is minus the gradient of a convex function, so -F is a monotone
    # operator: <F(y) - F(z), y - z> <= 0 for all y, z. This is Theorem 1's mechanism.
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(c, c, 3, 3, generator=g, dtype=torch.float64)
    y = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    z = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    Fy = neuralpde._layers.symmetric_layer(y, weight, None, None)
    Fz = neuralpde._layers.symmetric_layer(z, weight, None, None)
    assert Fy.shape == y.shape
    assert float(((Fy - Fz) * (y - z)).sum()) <= 1e-9 * (1 + float((y - z).norm() ** 2))
    layer = neuralpde.SymmetricLayer(c).double()
    assert layer(y).shape == y.shape and torch.isfinite(layer(y)).all()


@SETTINGS
@given(
    n=st.integers(1, 6),
    T=st.floats(0.5, 8.0),
    frac=st.floats(-0.2, 1.2),
    interp=st.sampled_from(["constant", "linear"]),
)
def test_time_weights_lookup(n, T, frac, interp):
    if interp == "linear" and n < 2:
        n = 2
    values = torch.arange(n, dtype=torch.float64).reshape(n, 1) * 10.0
    tw = neuralpde.TimeWeights({"v": values}, T, interp).double()
    t = frac * T
    got = float(tw(torch.tensor(t, dtype=torch.float64))["v"].detach())
    if interp == "constant":
        # Right-open cells [j h, (j+1) h), clamped to the first and last.
        j = min(max(math.floor(t / (T / n)), 0), n - 1)
        # At a float boundary, either neighbour is a correct answer within round-off.
        assert got == 10.0 * j or abs(t / (T / n) - round(t / (T / n))) < 1e-9
    else:
        s = min(max(t / T * (n - 1), 0.0), n - 1)
        assert math.isclose(got, 10.0 * s, rel_tol=1e-9, abs_tol=1e-9)


@SETTINGS
@given(
    arch=st.sampled_from(["parabolic", "hamiltonian", "second_order", "resnet"]),
    half=st.integers(1, 3),
    steps=st.integers(1, 3),
    h=st.sampled_from([0.25, 0.5, 1.0]),
    size=st.integers(1, 4),
    batch=st.integers(1, 3),
)
def test_stage_maps_shape_to_shape(arch, half, steps, h, size, batch):
    c = 2 * half
    rhs_cls = {
        "parabolic": neuralpde.ParabolicRHS,
        "hamiltonian": neuralpde.HamiltonianRHS,
        "second_order": neuralpde.SecondOrderRHS,
        "resnet": neuralpde.ResNetRHS,
    }[arch]
    torch.manual_seed(0)
    stage = neuralpde.Stage(rhs_cls(c, steps=steps, step_size=h))
    x = torch.randn(batch, c, size, size)
    y = stage(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert stage.last_stats["steps"] == steps


@SETTINGS
@given(
    method=st.sampled_from(["symplectic_euler", "leapfrog", "verlet", "yoshida4"]),
    times=st.lists(st.floats(0.05, 1.0), min_size=1, max_size=4),
    h=st.floats(0.01, 0.5),
    shape=st.lists(st.integers(1, 3), min_size=0, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_symplectic_grids_and_reversibility(method, times, h, shape, seed):
    g = torch.Generator().manual_seed(seed)
    q0 = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    p0 = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    func = (lambda t, p: torch.tanh(p) * (1 + t), lambda t, q: -torch.sin(q))
    t = torch.tensor([0.0, *times], dtype=torch.float64).cumsum(0)
    solver = solvers.Solver(method, step_size=h)
    sol = solvers.solve(func, (q0, p0), t, solver)
    (q, p), stats = sol.ys, sol.stats
    assert q.shape == (len(t), *shape) and p.shape == (len(t), *shape)
    # The grid: torchdiffeq's points t[0] + k h over the whole span, at least one step.
    expected = max(1, math.ceil(float(t[-1] - t[0]) / h + 1) - 1)
    assert abs(stats.steps - expected) <= 1  # the float rounding of ceil's argument
    # Backwards over the same times: the same cells in reverse, back to the start.
    back = solvers.solve(func, (q[-1], p[-1]), t.flip(0), solver).ys
    assert torch.allclose(back[0][-1], q0, atol=1e-10) and torch.allclose(
        back[1][-1], p0, atol=1e-10
    )


@SETTINGS
@given(
    method=st.sampled_from(["euler", "midpoint", "rk4", "dopri5", "bosh3"]),
    n=st.integers(2, 5),
    shape=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    decreasing=st.booleans(),
)
def test_odeint_shapes_and_stats_for_torchdiffeq_methods(method, n, shape, decreasing):
    t = torch.linspace(0.0, 1.0, n)
    if decreasing:
        t = t.flip(0)
    y0 = torch.ones(*shape)
    kw = {"step_size": 0.01} if method in ("euler", "midpoint", "rk4") else {"rtol": 1e-5}
    result = solvers.solve(lambda t, y: -y, y0, t, solvers.Solver(method, **kw))
    sol, stats = result.ys, result.stats
    assert sol.shape == (n, *shape)
    assert stats.nfe >= stats.steps > 0
    assert torch.allclose(sol[-1], y0 * math.exp(-float(t[-1] - t[0])), rtol=1e-2)
