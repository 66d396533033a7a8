"""Orders of convergence, fitted from problems with known solutions (float64).

Every method's expected order is read from the method itself: ``order`` of each stepper in
the registry (a user's registered splitting method included), and torchdiffeq's ``order``
of its solver classes.
"""

import contextlib
import math

import pytest
import torch
from torchdiffeq._impl.odeint import SOLVERS

import solvers
from solvers._methods import FIXED_STEP_METHODS, STEPPERS

pytestmark = pytest.mark.usefixtures("float64")

# A user's splitting method, registered for the test only: position Verlet
# (drift-kick-drift), second order. It gets the order test with no code of its own.
USER = solvers.SplittingStepper(
    "test_position_verlet",
    order=2,
    tableau=[("drift", 0.5, 0.5), ("kick", 1.0, 0.5), ("drift", 0.5, 0.5)],
)


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


SPLIT_METHODS = sorted(STEPPERS) + [USER.name]


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


@pytest.mark.parametrize("backwards", [False, True])
@pytest.mark.parametrize("method", SPLIT_METHODS)
def test_symplectic_order(method, backwards):
    # Backwards integrates from T down to 0: the order is the same in either direction.
    t0, t1 = (1.0, 0.0) if backwards else (0.0, 1.0)
    # Steps that do not divide [0, 1] too: one grid, with a short last step.
    hs = [0.1, 0.05, 0.03, 0.0125]
    with registered(method) as stepper:
        errs = []
        for h in hs:
            q, p = solvers.solve(
                (f_q, f_p),
                tuple(torch.tensor(v) for v in exact(t0)),
                torch.tensor([t0, t1]),
                solvers.Solver(method, step_size=h),
                save="final",
            ).y_final
            eq, ep = exact(t1)
            errs.append(math.hypot(float(q) - eq, float(p) - ep))
        assert abs(_slope(hs, errs) - stepper.order) < 0.2


# Linear system with a known solution through the matrix exponential.
A = torch.tensor([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, -1.0]], dtype=torch.float64)
Y0 = torch.tensor([1.0, 0.5, -0.3], dtype=torch.float64)


def linear(t, y):
    return A @ y


# torchdiffeq's Adams methods raise their order up to 12 by default, and high-order
# Adams–Bashforth is unstable at these steps. Its `max_order` counts history terms plus one:
# max_order=5 gives the four-step Adams–Bashforth, of the order torchdiffeq states. The
# implicit corrector's fixed-point iteration needs more than its default 4 iterations at
# h = 0.1 (else torchdiffeq warns that the solution may be incorrect).
OPTIONS = {
    "explicit_adams": {"max_order": 5},
    "implicit_adams": {"max_order": 4, "max_iters": 20},
}


@pytest.mark.parametrize("method", FIXED_STEP_METHODS)
def test_torchdiffeq_fixed_order(method):
    T = 1.0
    exact_y = torch.linalg.matrix_exp(A * T) @ Y0
    hs = [0.1, 0.05, 0.025, 0.0125]
    errs = []
    for h in hs:
        y = solvers.solve(
            linear,
            Y0,
            torch.tensor([0.0, T]),
            solvers.Solver(method, step_size=h, options=OPTIONS.get(method, {})),
        ).y_final
        errs.append(float((y - exact_y).norm()))
    assert abs(_slope(hs, errs) - SOLVERS[method].order) < 0.2


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
