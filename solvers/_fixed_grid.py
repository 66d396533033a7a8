"""A sync-free driver for torchdiffeq's fixed-grid Runge–Kutta methods.

torchdiffeq's own loop compares tensors on every step (``t1 >= t[j]``, ``t == t0``), calls
``.item()`` to size the grid, and wraps the right-hand side in modules that add work to
every evaluation (``y.abs()`` to find a dtype, a ``cat`` per call for tuple states). When
the step grid is known on the host before the first step, all of those decisions can be
made once in Python. This module builds torchdiffeq's grid in Python floats (rounded as
torchdiffeq's tensor arithmetic rounds), decides on the host which step produces which
output, and then drives torchdiffeq's own
``_step_func`` (the Runge–Kutta formulas are torchdiffeq's, untouched) from a plain Python
loop: no host–device sync and nothing data-dependent, so it runs under
``torch.compile(fullgraph=True)``, CUDA graphs and ``torch.cuda.set_sync_debug_mode``.

Every arithmetic operation on the state is the one torchdiffeq performs, in the same order
and dtype, so the result equals ``torchdiffeq.odeint`` bit for bit.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import torch
from torch import Tensor

try:
    from torchdiffeq._impl.misc import Perturb, _flat_to_shape, _nextafter
    from torchdiffeq._impl.odeint import SOLVERS
    from torchdiffeq._impl.solvers import FixedGridODESolver
except ImportError:  # a torchdiffeq whose internals moved: odeint falls back to its loop
    SOLVERS = None

# Methods whose solver class is a FixedGridODESolver (Adams methods keep history and are
# left to torchdiffeq's loop).
FAST_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4")
# Options this driver understands; anything else goes to torchdiffeq unchanged.
_OPTIONS = {"step_size", "perturb", "interp"}


def supports(method: str, options: dict[str, Any], adjoint: bool) -> bool:
    """Whether :func:`integrate_fixed` reproduces ``torchdiffeq.odeint`` for this call."""
    return (
        SOLVERS is not None
        and not adjoint
        and method in FAST_METHODS
        and issubclass(SOLVERS[method], FixedGridODESolver)
        and "step_size" in options
        and set(options) <= _OPTIONS
        and options.get("interp", "linear") == "linear"
    )


class _Eval:
    """``func`` as torchdiffeq's wrappers present it: reversed time, tuple flattening and
    ``perturb``; counts evaluations. A plain class: one is made per solve, and building an
    ``nn.Module`` costs more than a small stage's arithmetic."""

    def __init__(self, func, shapes, reverse: bool):
        self.func = func
        self.shapes = shapes
        self.reverse = reverse
        self.nfe = 0

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
        else:
            f = self.func(t, _flat_to_shape(y, (), self.shapes))
            f = torch.cat([f_.reshape(-1) for f_ in f])
        return -1.0 * f if self.reverse else f


def _rounder(dtype: torch.dtype):
    """Python function rounding a float to ``dtype`` as torch's CPU and CUDA kernels do:
    the result of an op is computed in float64 (float64) or float32 (the narrower
    floating types) and rounded once to ``dtype``."""

    def f32(x: float) -> float:
        return struct.unpack("f", struct.pack("f", x))[0]

    if dtype == torch.float64:
        return lambda x: x, lambda x: x
    if dtype == torch.float32:
        return f32, f32
    if dtype == torch.float16:
        return (lambda x: struct.unpack("e", struct.pack("e", f32(x)))[0]), f32
    if dtype == torch.bfloat16:

        def bf16(x: float) -> float:
            bits = struct.unpack("I", struct.pack("f", f32(x)))[0]
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return struct.unpack("f", struct.pack("I", bits))[0]

        return bf16, f32
    raise TypeError(f"unsupported time dtype {dtype}")


def _grid(ts: list[float], step_size: float, dtype: torch.dtype) -> list[float]:
    """torchdiffeq's grid for ``step_size`` (``FixedGridODESolver``'s constructor), in
    plain Python floats rounded as its tensor ops in ``dtype`` round: ``ceil`` of
    ``(t[-1] - t[0]) / h + 1`` points ``k h + t[0]``, the last replaced by ``t[-1]``."""
    rnd, op_scalar = _rounder(dtype)
    h = op_scalar(step_size)  # a Python scalar enters a kernel in its compute type
    start, end = ts[0], ts[-1]
    n = math.ceil(rnd(rnd(rnd(end - start) / h) + 1.0))
    grid = [rnd(rnd(rnd(float(k)) * h) + start) for k in range(n)]
    grid[-1] = end
    return grid


def integrate_fixed(
    func,
    y0: Tensor | tuple[Tensor, ...],
    t: Tensor,
    ts: list[float],
    method: str,
    options: dict[str, Any],
    rtol,
    atol,
    final_only: bool = False,
) -> tuple[Tensor | tuple[Tensor, ...], dict[str, int]]:
    """``torchdiffeq.odeint(func, y0, t, method=method, options=options)`` without syncs.

    Args:
        func, y0, t, method, options, rtol, atol: as for ``torchdiffeq.odeint`` (``options``
            holds ``step_size`` and optionally ``perturb`` / ``interp="linear"``).
        ts: ``t`` as Python floats (read once by the caller).
        final_only: return only the state at ``t[-1]`` (the grid ends exactly there).

    Returns:
        the solution ``(len(t), *y0.shape)`` (``y0.shape`` with ``final_only``; a tuple
        for a tuple state) and ``{"nfe", "steps"}``.
    """
    shapes = None
    if isinstance(y0, tuple):
        shapes = [y.shape for y in y0]
        y0 = torch.cat([y.reshape(-1) for y in y0])
    reverse = ts[1] < ts[0]
    t_vals = [-x for x in ts] if reverse else list(ts)
    grid = _grid(t_vals, float(options["step_size"]), t.dtype)
    device = y0.device
    # Made from Python floats: torch.compile sees constants, CUDA gets a host-to-device copy.
    grid_dev = torch.tensor(grid, dtype=t.dtype, device=device)
    t_dev = (-t if reverse else t).to(device)
    step_size = options["step_size"]
    f = _Eval(func, shapes, reverse)
    solver = SOLVERS[method](
        func=f,
        y0=y0,
        rtol=rtol,
        atol=atol,
        step_size=step_size,
        perturb=options.get("perturb", False),
    )
    out = [y0]
    # With final_only no output is recorded: the last grid point is t[-1] itself.
    j = len(t_vals) if final_only else 1
    y = y0
    for i in range(len(grid) - 1):
        t0, t1 = grid_dev[i], grid_dev[i + 1]
        dy, _ = solver._step_func(f, t0, t1 - t0, t1, y)
        y1 = y + dy
        while j < len(t_vals) and grid[i + 1] >= t_vals[j]:
            if t_vals[j] == grid[i]:
                out.append(y)
            elif t_vals[j] == grid[i + 1]:
                out.append(y1)
            else:
                slope = (t_dev[j] - t0) / (t1 - t0)
                out.append(y + slope * (y1 - y))
            j += 1
        y = y1
    stats = {"nfe": f.nfe, "steps": len(grid) - 1}
    if final_only:
        return (y if shapes is None else _flat_to_shape(y, (), shapes)), stats
    sol = torch.stack(out)
    if shapes is not None:
        sol = _flat_to_shape(sol, (len(t_vals),), shapes)
    return sol, stats
