"""The split-state driver: a registered stepper over the one time grid."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._errors import NonFiniteError
from ._grid import grid, placements
from ._methods import STEPPERS
from ._solver import Stats
from ._steppers import Stepper


class Plan:
    """The steps of one split-state solve, fixed on the host before the first step.

    Attributes:
        points: the grid (:func:`_grid.grid`), floats.
        steps: ``(start time as a 0-d tensor view, signed step h)`` per step.
        place: per step, the outputs it gives (:func:`_grid.placements`).
    """

    def __init__(self, stepper: Stepper, ts: list[float], step_size, t: Tensor, time_dtype, device):
        self.stepper = stepper
        self.ts = ts
        # The grid in t's dtype, as for the Runge–Kutta methods: one grid for every method.
        self.points = grid(ts, step_size, t.dtype)
        # Built once: per-step times are views into it, so the loop never syncs.
        times = torch.tensor(self.points, dtype=time_dtype, device=device)
        self.steps = [
            # The cell's own length (its end points' difference), not the nominal step:
            # a backward walk then evaluates at the forward step's times to the last bit,
            # which reversibility needs (a 1-ulp time offset grows to 1e-8 over 300 steps).
            (times[i], self.points[i + 1] - self.points[i])
            for i in range(len(self.points) - 1)
        ]
        self.place = placements(self.points, ts)

    def stats(self) -> Stats:
        e_q, e_p = self.stepper.evals
        n = len(self.steps)
        return Stats(nfe=n * (e_q + e_p), steps=n, nfe_q=n * e_q, nfe_p=n * e_p)


def check_split(func: Any, y0: Any, method: str) -> None:
    if not (isinstance(y0, tuple) and len(y0) == 2):
        raise TypeError(
            f"method {method!r} integrates a split state: pass y0=(q0, p0), got {type(y0).__name__}"
        )
    if not (isinstance(func, (tuple, list)) and len(func) == 2 and all(map(callable, func))):
        raise TypeError(
            f"method {method!r} needs func=(f_q, f_p) with dq/dt = f_q(t, p) and "
            f"dp/dt = f_p(t, q), got {type(func).__name__}"
        )


def run(
    step: Callable, plan: Plan, y0: tuple[Tensor, Tensor], final_only: bool, after_step=None
) -> tuple[Tensor, Tensor]:
    """Step ``y0`` over ``plan``; the outputs stacked, or the final state alone.

    ``step(t, h, q, p) -> (q, p)``; ``after_step(i, q, p)`` is called after step ``i``.
    """
    q, p = y0
    qs, ps = [q], [p]
    for i, (t, h) in enumerate(plan.steps):
        q1, p1 = step(t, h, q, p)
        if i == 0:
            _check_step(q1, p1, y0, plan.stepper.name)
        if after_step is not None:
            after_step(i, q1, p1)
        if not final_only:
            for _, s in plan.place[i]:
                if s == 1.0:
                    qs.append(q1)
                    ps.append(p1)
                elif s == 0.0:
                    qs.append(q)
                    ps.append(p)
                else:  # an output time between two grid points, as torchdiffeq gives it
                    qs.append(q + s * (q1 - q))
                    ps.append(p + s * (p1 - p))
        q, p = q1, p1
    if final_only:
        return q, p
    return torch.stack(qs), torch.stack(ps)


def _check_step(q: Tensor, p: Tensor, y0, method: str) -> None:
    # Static shapes and dtypes only: a plain Python comparison, invisible to torch.compile.
    for name, a, b in (("q", q, y0[0]), ("p", p, y0[1])):
        if a.shape != b.shape or a.dtype != b.dtype:
            f = "f_q" if name == "q" else "f_p"
            raise ValueError(
                f"{method}: {f} changed {name} from shape {tuple(b.shape)} and dtype {b.dtype} "
                f"to shape {tuple(a.shape)} and dtype {a.dtype}; f_q(t, p) must return q's "
                "shape and dtype, f_p(t, q) p's"
            )


def integrate(func, y0, plan: Plan, final_only: bool) -> tuple[Any, Stats]:
    """Autograd memory: every step recorded by autograd."""
    stepper = plan.stepper

    def step(t, h, q, p):
        return stepper.step(func, t, h, (q, p))

    return run(step, plan, y0, final_only), plan.stats()


def locate_nonfinite(func, y0, plan: Plan) -> NonFiniteError:
    """Re-run from ``y0`` without a graph to name the first step that is not finite."""
    q, p = (y.detach() for y in y0)
    with torch.no_grad():
        for i, (t, h) in enumerate(plan.steps):
            q, p = plan.stepper.step(func, t, h, (q, p))
            if not (bool(torch.isfinite(q).all()) and bool(torch.isfinite(p).all())):
                a = plan.points[i]
                return NonFiniteError(
                    f"{plan.stepper.name}: the state became NaN/Inf in step {i} "
                    f"(t={a:g} to t={a + h:g})",
                    t=a,
                    step=i,
                )
    return NonFiniteError(
        f"{plan.stepper.name}: the state became NaN/Inf between t={plan.ts[0]:g} and "
        f"t={plan.ts[-1]:g}",
        t=plan.ts[0],
    )


__all__ = ["STEPPERS", "Plan", "check_split", "integrate", "locate_nonfinite", "run"]
