"""One ``odeint`` for every method: torchdiffeq's Runge–Kutta family and our steppers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchdiffeq
from torch import Tensor, nn

from . import _fixed_grid
from ._errors import NonFiniteError, SolverError
from ._steppers import STEPPERS, Stepper

# torchdiffeq's method names, split by whether the user must give a step size. Its
# "fixed_adams" is left out: a second name for "implicit_adams" (one name per thing).
FIXED_STEP_METHODS = (
    "euler",
    "midpoint",
    "heun2",
    "heun3",
    "rk4",
    "explicit_adams",
    "implicit_adams",
)
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "scipy_solver")

# torchdiffeq's own default is 2**31 - 1 steps, which looks like a hang to a user whose
# right-hand side has gone stiff or non-finite.
DEFAULT_MAX_NUM_STEPS = 10_000


def methods() -> dict[str, str]:
    """All method names ``odeint`` accepts, mapped to their kind.

    Returns:
        ``{name: kind}`` with kind one of ``"fixed"`` (torchdiffeq, needs ``step_size``),
        ``"adaptive"`` (torchdiffeq, error-controlled) and ``"symplectic"`` (ours, needs a
        split state and ``step_size``).
    """
    out = {m: "fixed" for m in FIXED_STEP_METHODS}
    out.update({m: "adaptive" for m in ADAPTIVE_METHODS})
    out.update({m: "symplectic" for m in STEPPERS})
    return out


def _unknown_method(method: Any) -> ValueError:
    names = ", ".join(sorted(methods()))
    return ValueError(f"unknown method {method!r}; valid methods are: {names}")


def _times_on_host(t: Tensor | Sequence[float]) -> list[float]:
    if isinstance(t, (list, tuple)):
        # Times known on the host: no device read at all (torch.compile, CUDA sync-free).
        if len(t) < 2 or not all(isinstance(x, (int, float)) for x in t):
            raise ValueError(f"t must hold at least 2 times as Python numbers, got {t!r}")
        ts = [float(x) for x in t]
    else:
        if not isinstance(t, Tensor):
            raise TypeError(f"t must be a 1-d tensor of times, got {type(t).__name__}")
        if t.dim() != 1 or t.numel() < 2:
            raise ValueError(
                f"t must be a 1-d tensor with at least 2 times, got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"t must be a floating-point tensor, got dtype {t.dtype}")
        # One host-device sync, before the first step: the grid is fixed from here on.
        ts = t.detach().to("cpu", torch.float64).tolist()
    if not all(math.isfinite(x) for x in ts):
        raise ValueError(f"t must be finite, got {ts}")
    diffs = [b - a for a, b in zip(ts[:-1], ts[1:])]
    if not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
        raise ValueError(
            f"t must be strictly increasing or strictly decreasing, got {ts}; "
            "sort the output times or split the integration in two calls"
        )
    return ts


def _check_state(y0: Any, name: str = "y0", check_finite: bool = True) -> None:
    tensors = y0 if isinstance(y0, tuple) else (y0,)
    for i, y in enumerate(tensors):
        if not isinstance(y, Tensor):
            raise TypeError(
                f"{name} must be a tensor or a tuple of tensors, got {type(y).__name__}"
            )
        if not y.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {y.dtype}")
        if check_finite and not torch.compiler.is_compiling() and not _all_finite(y):
            where = f"{name}[{i}]" if isinstance(y0, tuple) else name
            # A numerical fault upstream (the previous layer), not a malformed call: the
            # same error type as a NaN met during the steps, so callers catch one thing.
            raise NonFiniteError(f"{where} contains NaN or Inf before the first step", t=None)


def _all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` is finite (one sync).

    A sum is one cheap reduction, where ``isfinite(x).all()`` makes several passes and a
    bool tensor as large as ``x`` (on a network stage it cost a third of a training step).
    The sum is finite whenever every entry is; when it is not, an overflow of finite
    entries is told apart by the exact test.
    """
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _first_bad(sol: Tensor | tuple[Tensor, ...], final_only: bool = False) -> int | None:
    """Index of the first output time whose state is not finite (one sync), or None.

    With ``final_only`` ``sol`` is the last state alone, and a bad one gives index -1.
    """
    parts = sol if isinstance(sol, tuple) else (sol,)
    if all(_all_finite(s) for s in parts):
        return None
    if final_only:
        return -1
    ok = torch.stack([torch.isfinite(s.reshape(s.shape[0], -1)).all(1) for s in parts]).all(0)
    if bool(ok.all()):
        return None
    return int((~ok).nonzero()[0, 0])


class _Counter(nn.Module):
    """Counts evaluations of a torchdiffeq solve."""

    def __init__(self, func: Callable):
        super().__init__()
        self.func = func
        self.nfe = 0
        self.steps = 0
        self.rejected = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.func(t, y)


class _FixedCounter(_Counter):
    """Also counts the steps of a fixed-grid solve (the only callback those solvers call)."""

    def callback_step(self, t0, y0, dt):
        self.steps += 1


class _AdaptiveCounter(_Counter):
    """Also counts accepted and rejected steps of an adaptive solve."""

    def callback_accept_step(self, t0, y0, dt):
        self.steps += 1

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def _last(sol):
    return tuple(s[-1] for s in sol) if isinstance(sol, tuple) else sol[-1]


def _torchdiffeq(
    func, y0, t, method, step_size, rtol, atol, options, adjoint, check_finite, ts, final_only
):
    kind = methods()[method]
    options = dict(options or {})
    if kind == "fixed":
        if step_size is None and "grid_constructor" not in options:
            raise ValueError(
                f"method {method!r} is fixed-step and needs step_size= (e.g. step_size=0.1), "
                "or use an adaptive method such as 'dopri5'"
            )
        if step_size is not None:
            options["step_size"] = float(step_size)
    else:
        if step_size is not None:
            raise ValueError(
                f"step_size is for fixed-step methods; {method!r} chooses its own steps from "
                "rtol/atol (pass options={'first_step': ...} to set the first one)"
            )
        if method != "scipy_solver":
            options.setdefault("max_num_steps", DEFAULT_MAX_NUM_STEPS)
    if adjoint and not isinstance(func, nn.Module):
        raise TypeError(
            "adjoint=True needs func to be an nn.Module (its parameters get gradients); "
            "wrap the function in a module"
        )
    if kind == "fixed" and _fixed_grid.supports(method, options, adjoint):
        # torchdiffeq's numbers without its per-step syncs and wrappers (see _fixed_grid).
        sol, stats = _fixed_grid.integrate_fixed(
            func, y0, t, ts, method, options, rtol, atol, final_only
        )
        if check_finite and not torch.compiler.is_compiling():
            _raise_if_nonfinite(sol, t, method, final_only)
        return sol, stats
    if method == "scipy_solver":
        counter = _Counter(func)
    elif kind == "fixed":
        counter = _FixedCounter(func)
    else:
        counter = _AdaptiveCounter(func)
    solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    try:
        sol = solve(counter, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    except (AssertionError, RuntimeError) as err:
        msg = str(err)
        if "underflow in dt" in msg:
            raise SolverError(
                f"{method}: the step size underflowed ({msg}); the right-hand side is probably "
                "stiff or not finite. Loosen rtol/atol, or use a fixed-step method"
            ) from err
        if "max_num_steps exceeded" in msg:
            raise SolverError(
                f"{method}: more than {options.get('max_num_steps')} steps were needed ({msg}); "
                "raise options={'max_num_steps': N}, loosen rtol/atol, or use a fixed-step method"
            ) from err
        raise
    if kind == "fixed":
        stats = {"nfe": counter.nfe, "steps": counter.steps}
    else:
        # scipy reports no steps to torchdiffeq's callbacks: None rather than a wrong 0.
        steps = None if method == "scipy_solver" else counter.steps
        stats = {"nfe": counter.nfe, "steps": steps, "rejected": counter.rejected}
    if final_only:
        sol = _last(sol)
    if check_finite and not torch.compiler.is_compiling():
        _raise_if_nonfinite(sol, t, method, final_only)
    return sol, stats


def _raise_if_nonfinite(sol, t: Tensor, method: str, final_only: bool = False) -> None:
    i = _first_bad(sol, final_only)
    if i is not None:
        # With only the final state at hand the bad interval is all of [t[0], t[-1]].
        start = float(t[0]) if final_only else float(t[i - 1])
        tt = float(t[i])
        raise NonFiniteError(
            f"{method}: the state became NaN/Inf between t={start} and t={tt}", t=tt
        )


def _slack(t: Tensor) -> float:
    """Relative slack for counting steps: a few ulps of the dtype the times were given in."""
    return 16 * torch.finfo(t.dtype).eps


def _grid(
    ts: list[float], step_size: float, slack: float = 1e-12
) -> list[tuple[float, float, int]]:
    """Per output interval: (start, signed step, number of steps); steps divide it exactly."""
    out = []
    for a, b in zip(ts[:-1], ts[1:]):
        # The slack keeps e.g. 3.0 / 1.0 from becoming 4 steps through round-off, and a
        # float32 T = 6.4 (6.4000001) from taking 65 steps of 0.1 instead of 64.
        n = max(1, math.ceil(abs(b - a) / step_size * (1.0 - slack)))
        out.append((a, (b - a) / n, n))
    return out


def _check_split(func, y0, method):
    if not (isinstance(y0, tuple) and len(y0) == 2):
        raise TypeError(
            f"method {method!r} integrates a split state: pass y0=(q0, p0), got {type(y0).__name__}"
        )
    if not (isinstance(func, (tuple, list)) and len(func) == 2 and all(map(callable, func))):
        raise TypeError(
            f"method {method!r} needs func=(f_q, f_p) with dq/dt = f_q(t, p) and "
            f"dp/dt = f_p(t, q), got {type(func).__name__}"
        )


def integrate_split(
    stepper: Stepper,
    func,
    y0: tuple[Tensor, Tensor],
    ts: list[float],
    step_size: float,
    time_dtype: torch.dtype,
    slack: float = 1e-12,
    final_only: bool = False,
) -> tuple[tuple[Tensor, Tensor], int, list[tuple[float, float, int]]]:
    """Run ``stepper`` over the grid of ``ts``; returns the stacked solution (the final
    state alone with ``final_only``), the number of steps and the grid."""
    grid = _grid(ts, step_size, slack)
    device = y0[0].device
    starts = [a + k * h for a, h, n in grid for k in range(n)]
    # Built once: per-step times are views into it, so the loop never syncs.
    times = torch.tensor(starts, dtype=time_dtype, device=device)
    q, p = y0
    qs, ps = [q], [p]
    i = 0
    for _, h, n in grid:
        for _ in range(n):
            q, p = stepper.step(func, times[i], h, (q, p))
            if i == 0:
                _check_step_shapes((q, p), y0, stepper.name)
            i += 1
        if not final_only:
            qs.append(q)
            ps.append(p)
    if final_only:
        return (q, p), i, grid
    return (torch.stack(qs), torch.stack(ps)), i, grid


def _check_step_shapes(new, old, method: str) -> None:
    # Static shapes only: a plain Python comparison, free and invisible to torch.compile.
    for name, a, b in (("q", new[0], old[0]), ("p", new[1], old[1])):
        if a.shape != b.shape:
            f = "f_q" if name == "q" else "f_p"
            raise ValueError(
                f"{method}: {f} changed the shape of {name} from {tuple(b.shape)} to "
                f"{tuple(a.shape)}; f_q(t, p) must return q's shape and f_p(t, q) p's shape"
            )


def _locate_nonfinite(stepper, func, start, ts, grid, bad) -> NonFiniteError:
    """Re-run from ``start`` (the state at ``ts[bad - 1]``; ``bad = -1``: at ``ts[0]``),
    step by step, to name the first bad step."""
    q, p = start
    intervals = range(len(grid)) if bad == -1 else [bad - 1]
    first = sum(g[2] for g in grid[: intervals[0]])
    with torch.no_grad():
        for j in intervals:
            a, h, n = grid[j]
            for k in range(n):
                t = a + k * h
                tt = torch.tensor(t, dtype=q.dtype, device=q.device)
                q, p = stepper.step(func, tt, h, (q, p))
                if not (bool(torch.isfinite(q).all()) and bool(torch.isfinite(p).all())):
                    return NonFiniteError(
                        f"{stepper.name}: the state became NaN/Inf in step {first + k} "
                        f"(t={t:g} to t={t + h:g})",
                        t=t,
                        step=first + k,
                    )
            first += n
    lo = ts[0] if bad == -1 else ts[bad - 1]
    return NonFiniteError(
        f"{stepper.name}: the state became NaN/Inf between t={lo:g} and t={ts[bad]:g}", t=lo
    )


def odeint(
    func,
    y0,
    t: Tensor,
    *,
    method: str,
    step_size: float | None = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict[str, Any] | None = None,
    adjoint: bool = False,
    memory: str | None = None,
    check_finite: bool = True,
    return_stats: bool = False,
    on_failure: str = "raise",
    final_only: bool = False,
):
    """Solve ``dy/dt = func(t, y)`` and return the solution at every time of ``t``.

    The calling convention of ``torchdiffeq.odeint``. Runge–Kutta and Adams methods
    (``"euler"``, ``"midpoint"``, ``"rk4"``, ``"dopri5"``, ... see :func:`methods`) are
    handed to torchdiffeq unchanged. The symplectic methods ``"symplectic_euler"``,
    ``"leapfrog"``, ``"verlet"`` and ``"yoshida4"`` are ours and integrate a split,
    separable system ``dq/dt = f_q(t, p)``, ``dp/dt = f_p(t, q)``.

    Args:
        func: ``func(t, y) -> dy/dt`` with ``y`` a tensor or a tuple of tensors (torchdiffeq
            methods); or the pair ``(f_q, f_p)`` (symplectic methods).
        y0: initial state, a tensor ``(*shape)``, a tuple of tensors, or ``(q0, p0)``.
        t: ``(n_times,)`` strictly increasing or strictly decreasing output times; ``t[0]``
            is the time of ``y0``. A list or tuple of Python floats also works (a tensor of
            ``y0``'s dtype and device is made from it) and avoids reading ``t`` back from
            the device: with it, the fixed-step Runge–Kutta and the symplectic methods do no
            host–device sync (with ``check_finite=False``) and compile under
            ``torch.compile(fullgraph=True)``.
        method: a name from :func:`methods`.
        step_size: step of fixed-step and symplectic methods (required for them). For the
            symplectic methods each output interval is divided into the fewest equal steps
            no longer than ``step_size``.
        rtol, atol: tolerances of adaptive methods.
        options: extra options passed to torchdiffeq (e.g. ``jump_t``, ``max_num_steps``,
            ``perturb``); adaptive methods default to ``max_num_steps=10_000``. With
            ``memory="reversible"``: ``checkpoint_every`` (store the state every this many
            steps to bound float32 reconstruction drift) and ``params`` (the tensors to
            differentiate; default: the parameters of the module(s) ``f_q``, ``f_p`` are
            methods of).
        adjoint: ``True`` is the torchdiffeq spelling of ``memory="adjoint"``.
        memory: how the backward pass gets the states it needs (default ``"autograd"``):
            ``"autograd"`` stores every step's activations (memory linear in the number
            of steps); ``"reversible"`` (symplectic methods) stores only the final state
            and recomputes each step's input by running the stepper backwards, giving the
            gradient of the discrete solution exactly up to round-off in memory
            independent of the number of steps; ``"adjoint"`` (torchdiffeq methods;
            ``func`` must be an ``nn.Module``) is ``torchdiffeq.odeint_adjoint``, which
            solves an adjoint ODE backwards: its gradient only approximates the gradient
            of the discrete solution (to the solver's tolerance or step size).
        check_finite: check ``y0`` before and every output after the solve for NaN/Inf
            (a sync each) and, if one is found, raise :class:`NonFiniteError` naming the
            first bad step. Skipped while ``torch.compile`` traces.
        return_stats: also return a dict with ``nfe`` and ``steps`` (and ``rejected`` for
            adaptive methods) of this call. For the symplectic methods ``nfe`` counts calls
            of ``f_q`` plus calls of ``f_p`` (also given apart as ``nfe_q``, ``nfe_p``).
        on_failure: ``"raise"`` (default) raises :class:`SolverError` or
            :class:`NonFiniteError`. ``"return"`` integrates one output interval at a time
            and, when one fails, returns the solution so far with NaN at the later times,
            and stats with ``status`` (``"ok"``, ``"max_num_steps"``, ``"underflow"`` or
            ``"nonfinite"``), ``t_reached`` (the last time with a finite solution) and
            ``message``; stats are then always returned. Adaptive methods restart their
            step-size control at each output time in this mode.
        final_only: return only the state at ``t[-1]``, ``(*shape)``, instead of the
            stacked solution. The fixed-step and symplectic methods then never build the
            ``(n_times, *shape)`` tensor: no copy of every output state and no scatter of
            the gradient back out of it (a network stage needs only its end state).
            With it, a NaN/Inf is reported for the whole span ``[t[0], t[-1]]`` (the
            symplectic methods still name the step).

    Returns:
        The solution stacked on a new leading axis, ``(n_times, *shape)`` — a tuple of such
        tensors for a tuple state — or with ``final_only`` the state at ``t[-1]``; and,
        with ``return_stats=True``, the stats dict.

    Raises:
        ValueError: unknown method, missing/invalid ``step_size``, non-monotone ``t``, a
            ``memory`` mode the method does not support or that contradicts ``adjoint``.
        TypeError: a symplectic method given a non-split state or a single function.
        NonFiniteError: NaN/Inf appeared in the state.
        SolverError: adaptive step-size underflow, or more than ``max_num_steps`` steps.
    """
    kinds = methods()
    if method not in kinds:
        raise _unknown_method(method)
    _check_arguments(func, rtol, atol, options, on_failure, kinds[method])
    if on_failure == "return":
        return _odeint_partial(
            func,
            y0,
            t,
            method=method,
            step_size=step_size,
            rtol=rtol,
            atol=atol,
            options=options,
            adjoint=adjoint,
            memory=memory,
            check_finite=check_finite,
            final_only=final_only,
        )
    memory = _check_memory(memory, adjoint, method, kinds[method])
    ts = _times_on_host(t)
    _check_state(y0, check_finite=check_finite)
    if not isinstance(t, Tensor):
        first = y0[0] if isinstance(y0, tuple) else y0
        t = torch.tensor(ts, dtype=first.dtype, device=first.device)
    if kinds[method] != "symplectic":
        if isinstance(func, (tuple, list)):
            raise TypeError(
                f"method {method!r} takes one function func(t, y); the pair (f_q, f_p) is for "
                f"the symplectic methods {sorted(STEPPERS)}"
            )
        sol, stats = _torchdiffeq(
            func,
            y0,
            t,
            method,
            step_size,
            rtol,
            atol,
            options,
            memory == "adjoint",
            check_finite,
            ts,
            final_only,
        )
        return (sol, stats) if return_stats else sol

    _check_split(func, y0, method)
    options = dict(options or {})
    allowed = {"checkpoint_every", "params"} if memory == "reversible" else set()
    if set(options) - allowed:
        extra = sorted(set(options) - allowed)
        hint = (
            ""
            if memory == "reversible"
            else " (memory='reversible' takes checkpoint_every, params)"
        )
        raise ValueError(f"method {method!r} takes no options {extra}{hint}")
    step_size = _check_step_size(step_size, method)
    stepper = STEPPERS[method]
    time_dtype = torch.promote_types(t.dtype, y0[0].dtype)
    if memory == "reversible":
        from ._reversible import odeint_reversible

        every = _check_checkpoint_every(options.get("checkpoint_every"))
        grid = _grid(ts, step_size, _slack(t))
        starts = [a + k * h for a, h, n in grid for k in range(n)]
        times = torch.tensor(starts, dtype=time_dtype, device=y0[0].device)
        sol = odeint_reversible(
            stepper, tuple(func), y0, grid, times, options.get("params"), every, final_only
        )
        steps = len(starts)
    else:
        sol, steps, grid = integrate_split(
            stepper, tuple(func), y0, ts, step_size, time_dtype, _slack(t), final_only
        )
    if check_finite and not torch.compiler.is_compiling():
        bad = _first_bad(sol, final_only)
        if bad is not None:
            start = y0 if final_only else (sol[0][bad - 1], sol[1][bad - 1])
            raise _locate_nonfinite(stepper, tuple(func), start, ts, grid, bad)
    e_q, e_p = stepper.evals
    stats = {"nfe": steps * (e_q + e_p), "steps": steps, "nfe_q": steps * e_q, "nfe_p": steps * e_p}
    return (sol, stats) if return_stats else sol


def _check_arguments(func, rtol, atol, options, on_failure, kind) -> None:
    if on_failure not in ("raise", "return"):
        raise ValueError(f"on_failure must be 'raise' or 'return', got {on_failure!r}")
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
    if kind != "symplectic" and not isinstance(func, (tuple, list)) and not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, Tensor):
            continue  # torchdiffeq accepts per-component tolerance tensors
        if (
            isinstance(tol, bool)
            or not isinstance(tol, (int, float))
            or not (math.isfinite(tol) and tol > 0)
        ):
            raise ValueError(f"{name} must be a positive finite number, got {tol!r}")


def _odeint_partial(func, y0, t, final_only=False, **kw):
    """``on_failure="return"``: one output interval at a time, stopping at the first failure."""
    ts = _times_on_host(t)
    if not isinstance(t, Tensor):
        first = y0[0] if isinstance(y0, tuple) else y0
        t = torch.tensor(ts, dtype=first.dtype, device=first.device)
    tuple_state = isinstance(y0, tuple)
    outs = [[y] for y in y0] if tuple_state else [[y0]]
    stats: dict[str, Any] = {
        "nfe": 0,
        "steps": 0,
        "status": "ok",
        "t_reached": ts[0],
        "message": "",
    }
    state = y0
    for i in range(len(ts) - 1):
        try:
            sol, st = odeint(func, state, t[i : i + 2], return_stats=True, **kw)
        except (SolverError, NonFiniteError) as err:
            msg = str(err)
            status = (
                "nonfinite"
                if isinstance(err, NonFiniteError)
                else ("underflow" if "underflow" in msg else "max_num_steps")
            )
            stats.update(status=status, message=msg)
            break
        for k in ("nfe", "steps"):
            if st.get(k) is not None and stats[k] is not None:
                stats[k] += st[k]
            else:
                stats[k] = None
        if "rejected" in st:
            stats["rejected"] = stats.get("rejected", 0) + st["rejected"]
        parts = sol if tuple_state else (sol,)
        for out, part in zip(outs, parts):
            out.append(part[-1])
        state = tuple(part[-1] for part in parts) if tuple_state else parts[0][-1]
        stats["t_reached"] = ts[i + 1]
    missing = len(ts) - len(outs[0])
    for out in outs:
        out.extend(torch.full_like(out[0], float("nan")) for _ in range(missing))
    if final_only:
        last = tuple(out[-1] for out in outs)
        return (last if tuple_state else last[0]), stats
    stacked = tuple(torch.stack(out) for out in outs)
    return (stacked if tuple_state else stacked[0]), stats


MEMORY_MODES = ("autograd", "reversible", "adjoint")


def _check_memory(memory, adjoint: bool, method: str, kind: str) -> str:
    """Resolve ``memory`` and the ``adjoint`` flag into one mode, or say why not."""
    if memory is None:
        memory = "adjoint" if adjoint else "autograd"
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    if adjoint and memory != "adjoint":
        raise ValueError(
            f"adjoint=True asks for memory='adjoint' but memory={memory!r} was given; "
            "pass only memory="
        )
    if memory == "reversible" and kind != "symplectic":
        raise ValueError(
            f"memory='reversible' needs a reversible method, and {method!r} is not one; use a "
            f"symplectic method ({', '.join(sorted(STEPPERS))}) on a split state, or "
            "memory='adjoint' / memory='autograd' for this method"
        )
    if memory == "adjoint" and kind == "symplectic":
        raise ValueError(
            f"memory='adjoint' (adjoint=True) is torchdiffeq's adjoint and does not apply to "
            f"{method!r}; use memory='reversible' for exact gradients in constant memory"
        )
    return memory


def _check_checkpoint_every(every) -> int | None:
    if every is None:
        return None
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"checkpoint_every must be a positive int or None, got {every!r}")
    return every


def _check_step_size(step_size, method) -> float:
    if step_size is None:
        raise ValueError(f"method {method!r} is fixed-step and needs step_size= (e.g. 0.1)")
    if isinstance(step_size, Tensor):
        raise TypeError("step_size must be a Python float (the grid is fixed before stepping)")
    step_size = float(step_size)
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive finite number, got {step_size}")
    return step_size


def odeint_second_order(
    f: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    v0: Tensor,
    t: Tensor,
    *,
    method: str = "leapfrog",
    step_size: float | None = None,
    check_finite: bool = True,
    return_stats: bool = False,
):
    """Solve ``y'' = f(t, y)``, ``y(t[0]) = y0``, ``y'(t[0]) = v0`` with a symplectic method.

    Args:
        f: the acceleration ``f(t, y)``, same shape as ``y``.
        y0, v0: ``(*shape)`` initial position and velocity.
        t: ``(n_times,)`` monotone output times.
        method: ``"leapfrog"`` (the paper's ``y_{j+1} = 2y_j - y_{j-1} + h^2 f(t_j, y_j)``,
            ``y_{-1} = y_0 - h v_0``), ``"symplectic_euler"``, ``"verlet"`` or ``"yoshida4"``.
        step_size: the step ``h`` (required).
        check_finite, return_stats: as in :func:`odeint`; ``nfe`` counts evaluations of ``f``.

    Returns:
        ``(y, v)``, each ``(n_times, *shape)``: positions and the method's velocity (for
        leapfrog the backward difference ``(y_j - y_{j-1}) / h``); with
        ``return_stats=True`` also the stats dict.
    """
    if method not in STEPPERS:
        raise ValueError(
            f"odeint_second_order: unknown method {method!r}; valid methods are: "
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
    out = odeint(
        (_velocity, f),
        (y0, v0),
        t,
        method=method,
        step_size=step_size,
        check_finite=check_finite,
        return_stats=return_stats,
    )
    if not return_stats:
        return out
    sol, stats = out
    stats = {"nfe": stats["steps"] * STEPPERS[method].evals[1], "steps": stats["steps"]}
    return sol, stats


def _velocity(t: Tensor, v: Tensor) -> Tensor:
    return v


__all__: Sequence[str] = ("odeint", "odeint_second_order", "methods")
