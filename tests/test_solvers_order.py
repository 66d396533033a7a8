"""Orders of convergence, fitted from problems with known solutions (float64)."""

import math

import pytest
import torch

import solvers

pytestmark = pytest.mark.usefixtures("float64")


def _slope(hs, errs):
    x = torch.log(torch.tensor(hs))
    y = torch.log(torch.tensor(errs))
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


# A non-autonomous separable system with q = sin 2t, p = cos 3t as exact solution: both
# halves depend on t, so a stepper that evaluates at the wrong time loses its order.
def f_q(t, p):
    return p + (2 * torch.cos(2 * t) - torch.cos(3 * t))


def f_p(t, q):
    return -q + (-3 * torch.sin(3 * t) + torch.sin(2 * t))


def exact(t):
    return math.sin(2 * t), math.cos(3 * t)


ORDERS = {"symplectic_euler": 1, "leapfrog": 1, "verlet": 2, "yoshida4": 4}


@pytest.mark.parametrize("backwards", [False, True])
@pytest.mark.parametrize("method", sorted(ORDERS))
def test_symplectic_order(method, backwards):
    # Backwards integrates from T down to 0: the order is the same in either direction.
    t0, t1 = (1.0, 0.0) if backwards else (0.0, 1.0)
    hs = [0.1, 0.05, 0.025, 0.0125]
    errs = []
    for h in hs:
        q, p = solvers.odeint(
            (f_q, f_p),
            tuple(torch.tensor(v) for v in exact(t0)),
            torch.tensor([t0, t1]),
            method=method,
            step_size=h,
        )
        eq, ep = exact(t1)
        errs.append(math.hypot(float(q[-1]) - eq, float(p[-1]) - ep))
    assert abs(_slope(hs, errs) - ORDERS[method]) < 0.2


# Linear system with a known solution through the matrix exponential.
A = torch.tensor([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, -1.0]], dtype=torch.float64)
Y0 = torch.tensor([1.0, 0.5, -0.3], dtype=torch.float64)


def linear(t, y):
    return A @ y


TORCHDIFFEQ_ORDERS = {
    "euler": 1,
    "midpoint": 2,
    "heun2": 2,
    "heun3": 3,
    "rk4": 4,
    "explicit_adams": 4,
    "implicit_adams": 4,
}
# torchdiffeq's Adams methods raise their order up to 12 by default, and high-order
# Adams–Bashforth is unstable at these steps. Its `max_order` counts history terms plus one:
# max_order=5 gives the four-step, fourth-order Adams–Bashforth.
OPTIONS = {"explicit_adams": {"max_order": 5}, "implicit_adams": {"max_order": 4}}


@pytest.mark.parametrize("method", sorted(TORCHDIFFEQ_ORDERS))
def test_torchdiffeq_fixed_order(method):
    T = 1.0
    exact_y = torch.linalg.matrix_exp(A * T) @ Y0
    hs = [0.1, 0.05, 0.025, 0.0125]
    errs = []
    for h in hs:
        y = solvers.odeint(
            linear,
            Y0,
            torch.tensor([0.0, T]),
            method=method,
            step_size=h,
            rtol=1e-12,
            atol=1e-12,
            options=OPTIONS.get(method),
        )
        errs.append(float((y[-1] - exact_y).norm()))
    assert abs(_slope(hs, errs) - TORCHDIFFEQ_ORDERS[method]) < 0.2


@pytest.mark.parametrize("method", ["dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"])
def test_adaptive_error_follows_tolerance(method):
    # For error-controlled methods the convergence parameter is the tolerance: the global
    # error must fall steadily as the tolerance does (slope in log-log near 1 is typical;
    # we require at least 0.5).
    T = 2.0
    exact_y = torch.linalg.matrix_exp(A * T) @ Y0
    tols = [1e-3, 1e-5, 1e-7]
    errs = []
    for tol in tols:
        y = solvers.odeint(linear, Y0, torch.tensor([0.0, T]), method=method, rtol=tol, atol=tol)
        errs.append(float((y[-1] - exact_y).norm()))
    assert _slope(tols, errs) > 0.5
    assert errs[0] > errs[1] > errs[2]
