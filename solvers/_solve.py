"""``solve``: one entry point for every method, returning a :class:`Solution`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _reversible, _split, _torchdiffeq
from ._errors import NonFiniteError, SolverError
from ._grid import output_times
from ._methods import STEPPERS
from ._solver import Solution, Solver, Stats
from ._state import check_state, first_bad, in_transform, parts

_SAVE = ("all", "final")


def solve(
    func,
    y0,
    t: Tensor | Sequence[float],
    solver: Solver,
    *,
    save: str = "all",
    params: Sequence[Tensor] | None = None,
    throw: bool = True,
) -> Solution:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, with ``solver``; return a :class:`Solution`.

    Runge–Kutta and Adams methods are torchdiffeq's (the fixed-step ones driven without
    host–device syncs, with torchdiffeq's numbers; the adaptive Runge–Kutta ones with
    torchdiffeq's steps and controller but the stage derivatives kept as separate
    tensors, about twice as fast on a convolutional stage, the numbers torchdiffeq's up to
    rounding: ``docs/choosing-a-solver.md``); the symplectic methods are the
    registered steppers on a split state. Every fixed-step method steps on one grid: the
    points ``t[0] + k step_size`` (the last one ``t[-1]``), output times between two
    points interpolated linearly, as torchdiffeq does (see ``docs/choosing-a-solver.md``).

    Args:
        func: ``func(t, y) -> dy/dt`` with ``y`` a tensor or a tuple of tensors; for a
            symplectic method the pair ``(f_q, f_p)`` with ``dq/dt = f_q(t, p)`` and
            ``dp/dt = f_p(t, q)``. A ``func`` that writes each result into one buffer it
            reuses (or a few, in turn) is found when a result has the storage of an earlier
            one still held, and the solve runs again with every evaluation copied: the
            numbers of a ``func`` returning new tensors (not under
            ``torch.compile`` or a ``torch.func`` transform, where storage cannot be read;
            step callbacks on ``func`` run again for the steps taken before it was found).
            Results that carry gradients cannot share a buffer: a ``ValueError``.
        y0: the initial state ``(*shape)``, a tuple of tensors, or ``(q0, p0)``.
        t: ``(n_times,)`` strictly monotone output times, ``t[0]`` the time of ``y0``; a
            list of Python floats avoids reading ``t`` back from the device (no sync for
            the fixed-step and symplectic methods with ``check_finite=False``, and it
            compiles under ``torch.compile(fullgraph=True)``).
        solver: a :class:`Solver`.
        save: ``"all"``: the states at every time of ``t`` (``Solution.ys``) and the final
            one; ``"final"``: the state at ``t[-1]`` alone (``Solution.y_final``); the
            fixed-step and symplectic methods then never build the stacked tensor.
        params: the tensors to differentiate besides ``y0`` under ``memory="adjoint"``
            (torchdiffeq's ``adjoint_params``; default: ``func``'s parameters) and
            ``memory="reversible"`` (default: the parameters of the module(s) ``f_q``,
            ``f_p`` belong to).
        throw: ``True``: a failure raises. ``False``: a failure returns the solution so far
            with NaN at the later times and ``status``, ``t_reached`` and ``message`` set;
            the solve then runs one output interval at a time (adaptive methods restart
            their step-size control at each output time).

    Returns:
        A :class:`Solution`.

    Raises:
        ValueError / TypeError: malformed ``t``, state, ``func``, ``save`` or ``params``;
            under ``memory="adjoint"`` or ``"reversible"``, a tensor that requires grad,
            that ``func`` visibly reads (a closure, a ``functools.partial`` argument, a
            global it names, a module's tensor attribute or buffer) and that is not among
            ``params``, whose gradient would be lost (what ``func`` reads through another
            function is not seen).
        NonFiniteError: NaN/Inf in the state (``solver.check_finite``), with ``throw``.
        SolverError: adaptive step-size underflow or too many steps, with ``throw``.
    """
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a solvers.Solver, got {type(solver).__name__}")
    if save not in _SAVE:
        raise ValueError(f"save must be one of {_SAVE}, got {save!r}")
    if params is not None and solver.memory == "autograd":
        raise ValueError(
            "params= names the tensors to differentiate under memory='adjoint' or "
            "'reversible'; memory='autograd' differentiates everything: drop params"
        )
    kind = solver.kind
    if solver.memory != "autograd" and in_transform():
        raise RuntimeError(
            f"memory={solver.memory!r} runs a hand-written backward pass that torch.func "
            "transforms (vmap, grad, jacrev, jvp) cannot enter; use memory='autograd' under "
            "them (per-sample gradients, Jacobian-vector products)"
        )
    if kind == "adaptive" and torch.jit.is_tracing():
        raise RuntimeError(
            f"{solver.method} chooses its steps from the data, and torch.jit.trace would "
            "record the steps of this one input for every other input (wrong results on a "
            "new batch). Trace with a fixed-step method (set_solver('rk4', step_size=h)), "
            "or torch.compile the network, whose adaptive stages keep their loop"
        )
    if kind == "symplectic":
        _split.check_split(func, y0, solver.method)
    else:
        if isinstance(func, (tuple, list)):
            raise TypeError(
                f"method {solver.method!r} takes one function func(t, y); the pair (f_q, f_p) "
                f"is for the symplectic methods {sorted(STEPPERS)}"
            )
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    check_state(y0, solver.check_finite)
    ts, t = output_times(t, parts(y0)[0])
    if not throw and len(ts) > 1:
        return _partial(func, y0, t, ts, solver, save, params)
    final_only = save == "final"
    if len(ts) == 1:  # nothing to integrate: torchdiffeq returns y0[None]
        stacked = tuple(y[None] for y in y0) if isinstance(y0, tuple) else y0[None]
        return Solution(t, y0, Stats(nfe=0, steps=0), t_reached=ts[0], saved=stacked)
    sol, stats = _integrate(func, y0, t, ts, solver, params, final_only)
    if final_only:
        return Solution(t, sol, stats, t_reached=ts[-1])
    last = tuple(s[-1] for s in sol) if isinstance(sol, tuple) else sol[-1]
    return Solution(t, last, stats, t_reached=ts[-1], saved=sol)


def _integrate(func, y0, t, ts, solver: Solver, params, final_only: bool):
    if solver.kind != "symplectic":
        sol, stats = _torchdiffeq.integrate(func, y0, t, ts, solver, params, final_only)
        if solver.check_finite and not torch.compiler.is_compiling() and not in_transform():
            i = first_bad(sol, final_only)
            if i is not None:
                # With only the final state at hand the bad interval is all of [t[0], t[-1]].
                start = ts[0] if final_only else ts[i - 1]
                raise NonFiniteError(
                    f"{solver.method}: the state became NaN/Inf between t={start} and t={ts[i]}",
                    t=ts[i],
                )
        return sol, stats
    if t.requires_grad:
        raise ValueError(
            f"{solver.method}: gradients with respect to t are not supported by the symplectic "
            "methods (their grid is fixed on the host); pass t without requires_grad, or use a "
            "Runge–Kutta method"
        )
    func = tuple(func)
    time_dtype = torch.promote_types(t.dtype, y0[0].dtype)
    plan = _split.Plan(STEPPERS[solver.method], ts, solver.step_size, t, time_dtype, y0[0].device)
    if solver.memory == "reversible":
        every = solver.options.get("checkpoint_every")
        sol, stats = _reversible.integrate(func, y0, plan, params, every, final_only)
    else:
        sol, stats = _split.integrate(func, y0, plan, final_only)
    if solver.check_finite and not torch.compiler.is_compiling() and not in_transform():
        if first_bad(sol, final_only) is not None:
            raise _split.locate_nonfinite(func, y0, plan)
    return sol, stats


def _partial(func, y0, t, ts, solver: Solver, save: str, params) -> Solution:
    """``throw=False``: one output interval at a time, stopping at the first failure."""
    tuple_state = isinstance(y0, tuple)
    outs = [[y] for y in parts(y0)]
    # Adaptive methods count rejections: from 0, or the sum would be None throughout.
    rejected = 0 if solver.kind == "adaptive" and solver.method != "scipy_solver" else None
    stats = Stats(nfe=0, steps=0, rejected=rejected)
    status, message, reached = "ok", "", ts[0]
    state = y0
    for i in range(len(ts) - 1):
        try:
            sol, st = _integrate(func, state, t[i : i + 2], ts[i : i + 2], solver, params, True)
        except (SolverError, NonFiniteError) as err:
            status = "nonfinite" if isinstance(err, NonFiniteError) else err.status
            message = str(err)
            break
        stats = stats + st
        for out, part in zip(outs, parts(sol)):
            out.append(part)
        state = sol
        reached = ts[i + 1]
    missing = len(ts) - len(outs[0])
    for out in outs:
        out.extend(torch.full_like(out[0], float("nan")) for _ in range(missing))
    last = tuple(out[-1] for out in outs)
    last = last if tuple_state else last[0]
    saved = None
    if save == "all":
        stacked = tuple(torch.stack(out) for out in outs)
        saved = stacked if tuple_state else stacked[0]
    return Solution(t, last, stats, status, reached, message, saved)
