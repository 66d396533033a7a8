"""torchdiffeq's calling convention on top of :func:`solve`: ``odeint`` and ``odeint_adjoint``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from . import _adaptive, _torchdiffeq
from ._methods import STEPPERS, kind_of
from ._solve import solve
from ._solver import Solver

# torchdiffeq's step limit for its adaptive methods: odeint keeps it (solve stops earlier).
_TORCHDIFFEQ_MAX_NUM_STEPS = 2**31 - 1


def _solver(method, rtol, atol, options, **kw) -> tuple[Solver, dict[str, Any]]:
    method = "dopri5" if method is None else method
    kind = kind_of(method)
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
    options = dict(options or {})
    step_size = options.pop("step_size", None)
    if kind == "adaptive" and method != "scipy_solver":
        options.setdefault("max_num_steps", _TORCHDIFFEQ_MAX_NUM_STEPS)
    solver = Solver(
        method, step_size=step_size, rtol=rtol, atol=atol, options=options, check_finite=False, **kw
    )
    return solver, options


def odeint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, event_fn=None):
    """``torchdiffeq.odeint``, with the same signature, defaults and numbers, plus our methods.

    Code written for torchdiffeq 0.2.x runs unchanged: ``method`` defaults to
    ``"dopri5"``; a fixed-step method without ``options={"step_size": h}`` steps on the
    output times; a single output time returns ``y0[None]``; callbacks on ``func``
    (``callback_step``, ``callback_accept_step``, ``callback_reject_step``) are called;
    ``event_fn`` returns ``(event_t, solution)`` (torchdiffeq's event handling, with the
    event time differentiated as ``torchdiffeq.odeint_event`` does it: the solution's
    gradient includes how the event moves with ``y0`` and ``func``'s parameters, where
    bare ``torchdiffeq.odeint`` holds the event time constant). Adaptive
    methods keep torchdiffeq's step limit (``scipy_solver``: ``max_num_steps=10_000``, as it
    stops at a singularity instead of running on) and no finiteness check is made. Differences:
    underflow and step-limit failures raise :class:`SolverError` (a ``RuntimeError``)
    naming the fix, a NaN/Inf state that torchdiffeq's step meets raises
    :class:`NonFiniteError` (torchdiffeq: a bare ``AssertionError``), ``scipy_solver``
    with ``y0``, ``t`` or parameters of ``func`` requiring grad raises a ``ValueError``
    naming :func:`odeint_adjoint` when a backward pass reaches it (torchdiffeq: no
    gradient, no error), a right-hand side whose first result does not match the state's
    shape or dtype raises, a right-hand side that returns one reused buffer on every call
    is solved as one that returns new tensors (torchdiffeq's rk4, heun2/3 and adaptive
    methods overwrite stage derivatives they still hold with it), an option the method
    does not read raises a ``ValueError`` listing those it does (torchdiffeq warns and
    drops it), and no output time is ever dropped. Two things torchdiffeq takes are a
    ``TypeError``/``ValueError`` naming the way out: a complex state, and a list of
    tolerances, one per part of a tuple state.
    Kept from torchdiffeq, as its numbers are: bosh3's outputs between its steps come from
    a first-order midpoint (off by O(h^2); :func:`solve` fits them to third order).
    The symplectic methods of
    :func:`methods` are additional names: ``func=(f_q, f_p)``, ``y0=(q0, p0)``,
    ``options={"step_size": h}``. For statistics, memory modes and failure status use
    :func:`solve` with a :class:`Solver`.

    Args:
        func: ``func(t, y) -> dy/dt``; ``y`` a tensor or a tuple of tensors.
        y0: ``(*shape)`` initial state (or a tuple of tensors).
        t: ``(n_times,)`` strictly monotone output times; ``t[0]`` is the time of ``y0``.
        rtol, atol: tolerances of the adaptive methods (numbers or per-component tensors).
        method: a name from :func:`methods` (default ``"dopri5"``).
        options: torchdiffeq's options of the method; ``step_size`` for fixed-step and
            symplectic methods.
        event_fn: ``event_fn(t, y) -> Tensor``; the solve stops where it crosses zero
            (torchdiffeq methods). ``t`` then holds the start and a second time that only
            gives the direction, as in torchdiffeq: the search has no end time, so an
            event that never fires runs to ``options["max_num_steps"]`` (adaptive methods;
            set it to bound the search) or 20,000 steps (fixed-step methods).

    Returns:
        ``(n_times, *shape)`` solution (a tuple for a tuple state); with ``event_fn``,
        ``(event_t, solution)``.

    Raises:
        ValueError / TypeError: as for :class:`Solver` and :func:`solve`.
        SolverError: step-size underflow or too many steps.
    """
    if event_fn is not None:
        return _event(func, y0, t, rtol, atol, method, options, event_fn, None)
    solver, _ = _solver(method, rtol, atol, options)
    with _adaptive.torchdiffeq_arithmetic():  # a drop-in: torchdiffeq's numbers, bit for bit
        return solve(func, y0, t, solver).ys


def odeint_adjoint(
    func,
    y0,
    t,
    *,
    rtol=1e-7,
    atol=1e-9,
    method=None,
    options=None,
    event_fn=None,
    adjoint_rtol=None,
    adjoint_atol=None,
    adjoint_method=None,
    adjoint_options=None,
    adjoint_params=None,
):
    """``torchdiffeq.odeint_adjoint``, same signature and defaults: gradients by the adjoint ODE.

    The backward pass solves the adjoint equation backwards in time, in memory independent
    of the number of steps; its gradient approximates that of the forward solve to the
    solver's accuracy. Reference: Chen et al., "Neural Ordinary Differential Equations",
    NeurIPS 2018.

    Args:
        func: ``func(t, y) -> dy/dt``, an ``nn.Module`` unless ``adjoint_params`` is given.
        y0, t, rtol, atol, method, options, event_fn: as for :func:`odeint` (torchdiffeq
            methods only). ``scipy_solver`` solves the forward and the adjoint equation with
            the same scipy solver; a failure or ``max_num_steps`` in either raises
            :class:`SolverError` at the time reached, as in :func:`odeint`.
        adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options: settings of the
            backward solve (default: those of the forward one, as torchdiffeq). A
            fixed-step ``adjoint_method`` takes its step as ``adjoint_options={"step_size":
            h}``, else the forward's; unlike torchdiffeq, an ``adjoint_method`` other than
            the forward's needs no ``adjoint_options`` (see ``Solver.backward``).
        adjoint_params: the tensors to differentiate (default: ``func``'s parameters).

    Returns:
        as :func:`odeint`.

    Raises:
        ValueError: a symplectic method (use ``Solver(memory="reversible")`` with
            :func:`solve`); a tensor that requires grad, that ``func`` visibly reads (a
            closure, a ``functools.partial`` argument, a global it names, a module's tensor
            attribute or buffer) and that is not among ``adjoint_params``, whose gradient
            would be lost (what ``func`` reads through another function is not seen);
            otherwise as :func:`odeint`.
    """
    back = {
        k: v
        for k, v in (
            ("rtol", adjoint_rtol),
            ("atol", adjoint_atol),
            ("method", adjoint_method),
            ("options", adjoint_options),
        )
        if v is not None
    }
    if event_fn is not None:
        kw = {f"adjoint_{k}": v for k, v in back.items()}
        kw["adjoint_params"] = adjoint_params
        return _event(func, y0, t, rtol, atol, method, options, event_fn, kw)
    if "options" in back and "step_size" in back["options"]:
        # torchdiffeq's form of a fixed-step backward's step: Solver.backward's step_size.
        back["options"] = dict(back["options"])
        back["step_size"] = back["options"].pop("step_size")
    try:
        solver, _ = _solver(method, rtol, atol, options, memory="adjoint", backward=back or None)
    except (TypeError, ValueError) as e:
        # Solver names its backward settings as Solver(backward=...) spells them; here the
        # caller spelled them adjoint_options.
        if str(e).startswith("backward options"):
            raise type(e)("adjoint_options" + str(e)[len("backward options") :]) from None
        raise
    return solve(func, y0, t, solver, params=adjoint_params).ys


def _event(func, y0, t, rtol, atol, method, options, event_fn, adjoint_kw):
    solver, options = _solver(method, rtol, atol, options)
    if solver.kind == "symplectic":
        raise ValueError(
            f"event_fn is supported by the torchdiffeq methods, not by {solver.method!r}; "
            "integrate to a fixed time instead"
        )
    if solver.step_size is not None:
        options["step_size"] = solver.step_size
    return _torchdiffeq.odeint_event(
        func, y0, t, rtol, atol, solver.method, options, event_fn, adjoint_kw
    )


def odeint_second_order(
    f: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    v0: Tensor,
    t: Tensor,
    *,
    method: str = "leapfrog",
    step_size: float | None = None,
    check_finite: bool = True,
):
    """Solve ``y'' = f(t, y)``, ``y(t[0]) = y0``, ``y'(t[0]) = v0`` with a symplectic method.

    Args:
        f: the acceleration ``f(t, y)``, same shape as ``y``.
        y0, v0: ``(*shape)`` initial position and velocity.
        t: ``(n_times,)`` monotone output times.
        method: a symplectic method: ``"leapfrog"`` (the paper's
            ``y_{j+1} = 2y_j - y_{j-1} + h^2 f(t_j, y_j)``, ``y_{-1} = y_0 - h v_0``),
            ``"symplectic_euler"``, ``"verlet"``, ``"yoshida4"`` or a registered one.
        step_size: the step ``h`` (``None``: step on the output times).
        check_finite: as in :class:`Solver`.

    Returns:
        ``(y, v)``, each ``(n_times, *shape)``: positions and the method's velocity (for
        leapfrog the backward difference ``(y_j - y_{j-1}) / h``).

    Raises:
        ValueError: not a symplectic method; TypeError: ``f`` not callable or ``y0``/``v0``
            not tensors; ValueError: ``y0`` and ``v0`` of different shapes.
    """
    if method not in STEPPERS:
        raise ValueError(
            f"odeint_second_order: {method!r} is not a symplectic method; valid methods are: "
            f"{', '.join(sorted(STEPPERS))}"
        )
    if not callable(f):
        raise TypeError(f"f must be callable f(t, y), got {type(f).__name__}")
    if not isinstance(y0, Tensor) or not isinstance(v0, Tensor):
        raise TypeError("y0 and v0 must be tensors")
    if y0.shape != v0.shape:
        raise ValueError(
            f"y0 and v0 must have one shape, got {tuple(y0.shape)} and {tuple(v0.shape)}"
        )
    solver = Solver(method, step_size=step_size, check_finite=check_finite)
    return solve((_velocity, f), (y0, v0), t, solver).ys


def _velocity(t: Tensor, v: Tensor) -> Tensor:
    return v
