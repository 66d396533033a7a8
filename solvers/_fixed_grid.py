"""A sync-free driver for torchdiffeq's fixed-grid Runge–Kutta methods.

torchdiffeq's own loop compares tensors on every step (``t1 >= t[j]``, ``t == t0``), calls
``.item()`` to size the grid, and wraps the right-hand side in modules that add work to
every evaluation (``y.abs()`` to find a dtype, a ``cat`` per call for tuple states). When
the step grid is known on the host before the first step, all of those decisions can be
made once in Python. This module takes the grid in Python floats (``_grid.grid``, rounded as
torchdiffeq's tensor arithmetic rounds), decides on the host which step produces which
output, and then drives torchdiffeq's own
``_step_func`` (the Runge–Kutta formulas are torchdiffeq's, untouched) from a plain Python
loop: no host–device sync and nothing data-dependent, so it runs under
``torch.compile(fullgraph=True)``, CUDA graphs and ``torch.cuda.set_sync_debug_mode``.

Every arithmetic operation on the state is the one torchdiffeq performs, in the same order
and dtype, so the result equals ``torchdiffeq.odeint`` bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._grid import grid as _grid
from ._state import OutputGuard, check_derivative

try:
    from torchdiffeq._impl.misc import Perturb, _flat_to_shape
    from torchdiffeq._impl.odeint import SOLVERS
    from torchdiffeq._impl.solvers import FixedGridODESolver
except ImportError:  # a torchdiffeq whose internals moved: odeint falls back to its loop
    SOLVERS = None

# Methods whose solver class is a FixedGridODESolver (Adams methods keep history and are
# left to torchdiffeq's loop).
FAST_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4")
# Options this driver understands; anything else goes to torchdiffeq unchanged.
_OPTIONS = {"perturb", "interp"}


def supports(func, t: Tensor, method: str, options: dict[str, Any], adjoint: bool) -> bool:
    """Whether :func:`integrate_fixed` reproduces ``torchdiffeq.odeint`` for this call.

    Not when ``t`` requires grad (the host grid carries no gradient to ``t``) or ``func``
    has a ``callback_step`` (torchdiffeq's loop calls it with its own wrapped arguments).
    """
    return (
        SOLVERS is not None
        and not adjoint
        and method in FAST_METHODS
        and issubclass(SOLVERS[method], FixedGridODESolver)
        and set(options) <= _OPTIONS
        and options.get("interp", "linear") == "linear"
        and not t.requires_grad
        and not hasattr(func, "callback_step")
    )


def _nextafter(t: Tensor, toward: Tensor) -> Tensor:
    """torchdiffeq's ``_nextafter`` (the next float, with ``t``'s gradient) without its
    custom autograd Function, which ``torch.func`` transforms refuse. Exact: two adjacent
    floats differ by a representable amount, so ``t + (next - t)`` is ``next``."""
    with torch.no_grad():
        step = torch.nextafter(t, toward) - t
    return t + step


class _Eval:
    """``func`` as torchdiffeq's wrappers present it: reversed time, tuple flattening and
    ``perturb``; counts evaluations. A plain class: one is made per solve, and building an
    ``nn.Module`` costs more than a small stage's arithmetic."""

    def __init__(self, func, shapes, reverse: bool, method: str, y0):
        self.func = func
        self.shapes = shapes
        self.reverse = reverse
        self.method = method
        self.y0 = y0
        self.nfe = 0
        self.guard = OutputGuard()

    def __call__(self, t: Tensor, y: Tensor, *, perturb=None) -> Tensor:
        self.nfe += 1
        # The real dtype of y without reading y (torchdiffeq computes y.abs() for it).
        t = t.to(y.real.dtype if y.is_complex() else y.dtype)
        if perturb is Perturb.NEXT:
            t = _nextafter(t, t + 1)
        elif perturb is Perturb.PREV:
            t = _nextafter(t, t - 1)
        if self.reverse:
            t = -t
        if self.shapes is None:
            f = self.func(t, y)
            if self.nfe == 1:
                check_derivative(f, self.y0, self.method)
            f = self.guard(f)
        else:
            f = self.func(t, _flat_to_shape(y, (), self.shapes))
            if self.nfe == 1:
                check_derivative(f, self.y0, self.method)
            f = torch.cat([f_.reshape(-1) for f_ in f])
        return -1.0 * f if self.reverse else f


def integrate_fixed(
    func,
    y0: Tensor | tuple[Tensor, ...],
    t: Tensor,
    ts: list[float],
    method: str,
    step_size: float | None,
    options: dict[str, Any],
    final_only: bool = False,
) -> tuple[Tensor | tuple[Tensor, ...], int, int]:
    """``torchdiffeq.odeint(func, y0, t, method=method, options=...)`` without syncs.

    Args:
        func, y0, t, method: as for ``torchdiffeq.odeint``.
        ts: ``t`` as Python floats (read once by the caller).
        step_size: the step (``None``: step on the output times).
        options: ``perturb`` and ``interp="linear"`` at most.
        final_only: return only the state at ``t[-1]`` (the grid ends exactly there).

    Returns:
        the solution ``(len(t), *y0.shape)`` (``y0.shape`` with ``final_only``; a tuple
        for a tuple state) in ``y0``'s dtype, the number of evaluations and of steps.
    """
    state0 = y0
    shapes = None
    if isinstance(y0, tuple):
        shapes = [y.shape for y in y0]
        y0 = torch.cat([y.reshape(-1) for y in y0])
    reverse = len(ts) > 1 and ts[1] < ts[0]
    points = _grid(ts, step_size, t.dtype)
    if reverse:  # torchdiffeq steps in negated time
        points = [-x for x in points]
    t_vals = [-x for x in ts] if reverse else list(ts)
    device = y0.device
    # Made from Python floats: torch.compile sees constants, CUDA gets a host-to-device copy.
    grid_dev = torch.tensor(points, dtype=t.dtype, device=device)
    t_dev = (-t if reverse else t).to(device)
    f = _Eval(func, shapes, reverse, method, state0)
    solver = SOLVERS[method](
        func=f,
        y0=y0,
        rtol=None,  # unused by a fixed-grid step, required by the constructor
        atol=None,
        step_size=step_size,
        perturb=options.get("perturb", False),
    )
    out = [y0]
    # With final_only no output is recorded: the last grid point is t[-1] itself.
    j = len(t_vals) if final_only else 1
    y = y0
    for i in range(len(points) - 1):
        t0, t1 = grid_dev[i], grid_dev[i + 1]
        dy, _ = solver._step_func(f, t0, t1 - t0, t1, y)
        y1 = y + dy
        while j < len(t_vals) and points[i + 1] >= t_vals[j]:
            if t_vals[j] == points[i]:
                out.append(y)
            elif t_vals[j] == points[i + 1]:
                out.append(y1)
            else:
                slope = (t_dev[j] - t0) / (t1 - t0)
                out.append(y + slope * (y1 - y))
            j += 1
        y = y1
    steps = len(points) - 1
    # torchdiffeq writes every output into a buffer of y0's dtype: a 0-d float32 state
    # with float64 times computes in float64 and comes back float32.
    if final_only:
        y = y.to(y0.dtype)
        return (y if shapes is None else _flat_to_shape(y, (), shapes)), f.nfe, steps
    sol = torch.stack([o.to(y0.dtype) for o in out])
    if shapes is not None:
        sol = _flat_to_shape(sol, (len(t_vals),), shapes)
    return sol, f.nfe, steps
