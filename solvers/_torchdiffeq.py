"""The torchdiffeq methods: counting, the sync-free fixed-grid path, errors named."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
import torchdiffeq
from torch import Tensor, nn

from . import _adaptive, _fixed_grid
from ._errors import NonFiniteError, SolverError
from ._grid import grid_constructor
from ._methods import SCIPY_OPTIONS, kind_of
from ._pin import Pinned, owners
from ._solver import DEFAULT_MAX_NUM_STEPS, Solver, Stats
from ._state import (
    FRESH_OUTPUTS,
    OutputGuard,
    SharedOutput,
    check_derivative,
    in_transform,
    parts,
    reachable,
    uncovered_tensors,
)

try:
    from torchdiffeq._impl.misc import _all_adjoint_callback_names, _all_callback_names
    from torchdiffeq._impl.odeint import SOLVERS
except ImportError:  # a torchdiffeq whose internals moved: count nothing but evaluations
    _all_callback_names, _all_adjoint_callback_names, SOLVERS = [], [], None

# Which statistic a callback of torchdiffeq's counts.
_COUNTS = {
    "callback_step": "steps",
    "callback_accept_step": "steps",
    "callback_reject_step": "rejected",
}


class _Counter(nn.Module):
    """``func`` with its evaluations and steps counted; the user's callbacks still called.

    The first evaluation's result is checked against the state (shape, dtype, structure).
    """

    def __init__(self, func, y0, method: str):
        super().__init__()
        self.func = func
        self.y0 = y0
        self.method = method
        self.nfe = 0
        self.steps = 0
        self.rejected = 0
        self.pin: Pinned | None = None
        self.guard = OutputGuard()

    def forward(self, t, y):
        self.nfe += 1
        if self.pin is None:
            out = self.func(t, y)
        else:  # the adjoint's backward evaluates func with the forward's parameters
            with self.pin.restored():
                out = self.func(t, y)
        if self.nfe == 1:
            check_derivative(out, self.y0, self.method)
        return self.guard(out)


def _callback(name: str, counts: str | None):
    def callback(self, *args):
        if counts is not None:
            setattr(self, counts, getattr(self, counts) + 1)
        user = getattr(self.func, name, None)
        if user is not None:
            return user(*args)
        return None

    callback.__name__ = name
    return callback


_CLASSES: dict[tuple, type] = {}


def _counter(func, y0, method: str) -> _Counter:
    """A counter whose callbacks are the method's own (counting) plus the user's.

    Exactly the callbacks torchdiffeq would find on ``func``, plus the counting ones the
    method supports: it then calls, and warns about, the same ones as for ``func`` itself.
    """
    valid = SOLVERS[method].valid_callbacks() if SOLVERS is not None else set()
    names = tuple(n for n in _all_callback_names if n in valid and n in _COUNTS or hasattr(func, n))
    names += tuple(n for n in _all_adjoint_callback_names if hasattr(func, n))
    key = (names, tuple(n in valid for n in names))
    if key not in _CLASSES:
        # Adaptive solvers call callback_step on every attempt: count accepts instead.
        adaptive = "callback_accept_step" in valid
        counts = {n: _COUNTS.get(n) if n in valid else None for n in names}
        if adaptive and "callback_step" in counts:
            counts["callback_step"] = None
        body = {n: _callback(n, counts[n]) for n in names}
        _CLASSES[key] = type("_CountingFunc", (_Counter,), body)
    return _CLASSES[key](func, y0, method)


def integrate(
    func, y0: Any, t: Tensor, ts: list[float], solver: Solver, params, final_only: bool
) -> tuple[Any, Stats]:
    """Solve with a torchdiffeq method; the solution stacked (or final) and its stats.

    A ``func`` that writes every result into one buffer it reuses would overwrite the
    stage derivatives a step still holds (torchdiffeq's own loop then gives wrong numbers
    for rk4, heun2/3 and the first step of an adaptive method): it is found when a result
    has the storage of an earlier one still held (:class:`~solvers._state.OutputGuard`),
    and the solve runs again with every evaluation copied. The statistics are the second
    solve's.
    """
    try:
        try:
            return _integrate(func, y0, t, ts, solver, params, final_only)
        except SharedOutput:
            token = FRESH_OUTPUTS.set(True)
            try:
                return _integrate(func, y0, t, ts, solver, params, final_only)
            finally:
                FRESH_OUTPUTS.reset(token)
    except (RuntimeError, NotImplementedError) as err:
        if solver.kind == "adaptive" and solver.method != "scipy_solver":
            # vmap batches tensor operations, not the host's decisions: an adaptive method
            # accepts or rejects each step, and sizes the next, from its error norm.
            if in_transform() and str(err).startswith("vmap:"):
                raise RuntimeError(_VMAP_ADAPTIVE.format(method=solver.method)) from err
            # torchdiffeq's loop (what the driver declines) writes stages through an
            # autograd Function without setup_context (torch.func) or jvp (forward mode).
            if "setup_context" in str(err) or "implement the jvp function" in str(err):
                raise RuntimeError(_LOOP_TRANSFORM.format(method=solver.method)) from err
        raise


_LOOP_TRANSFORM = (
    "{method}: this solve runs torchdiffeq's own adaptive loop (solvers.odeint keeps it "
    "outside torch.func transforms for torchdiffeq's numbers; solve takes it for "
    "per-component tolerances, step callbacks on func, a t with a gradient, or "
    "memory='adjoint'), whose stage writes have no forward-mode derivative and cannot run "
    "under torch.func transforms. Use solvers.solve with scalar rtol and atol, no step "
    "callbacks, a t without gradient and memory='autograd' (its adaptive driver supports "
    "grad, jvp, vjp and dual tensors), or a fixed-step method"
)
_VMAP_ADAPTIVE = (
    "{method}: an adaptive method cannot run under torch.func.vmap: it accepts or rejects "
    "each step, and chooses the next step size, from its error norm on the host, a "
    "decision vmap cannot batch. Under vmap use a fixed-step or symplectic method "
    "(e.g. Solver('rk4', step_size=0.05)); or give the batch to one solve (its steps then "
    "follow the error of the whole batch); grad, jvp and vjp work with adaptive methods"
)


def _integrate(
    func, y0: Any, t: Tensor, ts: list[float], solver: Solver, params, final_only: bool
) -> tuple[Any, Stats]:
    method, kind = solver.method, solver.kind
    options = dict(solver.options)
    adjoint = solver.memory == "adjoint"
    if sum(y.numel() for y in parts(y0)) == 0:
        _warn_unsupported_callbacks(func, method)
        return _empty(func, y0, t, ts, method, final_only)
    if kind == "fixed" and _fixed_grid.supports(func, t, method, options, adjoint):
        _warn_unsupported_callbacks(func, method)
        # torchdiffeq's numbers without its per-step syncs and wrappers (see _fixed_grid).
        sol, nfe, steps = _fixed_grid.integrate_fixed(
            func, y0, t, ts, method, solver.step_size, options, final_only
        )
        return sol, Stats(nfe=nfe, steps=steps)
    if method == "scipy_solver" and not adjoint:
        _warn_unsupported_callbacks(func, method)
        return _scipy(func, y0, t, ts, solver, final_only)
    if kind == "adaptive":
        _check_resolution(solver, parts(y0)[0].dtype)
        if _adaptive.supports(func, y0, t, method, solver.rtol, solver.atol, options, adjoint):
            # torchdiffeq's steps with the stages kept apart (see _adaptive): the same
            # numbers up to rounding, in less than half the time on a convolutional stage.
            driver_options = dict(options)
            driver_options.setdefault("max_num_steps", DEFAULT_MAX_NUM_STEPS)
            try:
                sol, nfe, steps, rejected = _adaptive.integrate_adaptive(
                    func, y0, t, solver.rtol, solver.atol, method, driver_options, final_only
                )
                return sol, Stats(nfe=nfe, steps=steps, rejected=rejected)
            except (AssertionError, RuntimeError) as err:
                raise _named(
                    err, method, driver_options, _resolution(solver, parts(y0)[0].dtype)
                ) from err
    if kind == "fixed" and solver.step_size is not None:
        # The one grid (see _grid), built from t so that t's gradient flows.
        options["grid_constructor"] = grid_constructor(solver.step_size)
    if kind == "adaptive" and method != "scipy_solver":
        options.setdefault("max_num_steps", DEFAULT_MAX_NUM_STEPS)
    counter = _counter(func, y0, method)
    kw: dict[str, Any] = {}
    if adjoint:
        if params is None and not isinstance(func, nn.Module):
            owner = getattr(func, "__self__", None)
            hint = (
                f" (for this method of a {type(owner).__name__}: "
                "params=tuple(module.parameters()); odeint_adjoint: adjoint_params=)"
                if isinstance(owner, nn.Module)
                else ""
            )
            raise TypeError(
                "memory='adjoint' differentiates the parameters of func, which is not an "
                f"nn.Module: wrap it in a module, or pass the tensors as params={hint}"
            )
        lost = uncovered_tensors((func,), tuple(params) if params is not None else None)
        if lost:
            raise ValueError(
                f"memory='adjoint' differentiates y0 and "
                f"{'the tensors given as params' if params is not None else 'the parameters of func'}"
                f"; these tensors func reads require grad but are not among them, so their "
                f"gradient would be lost: {'; '.join(lost)}. Pass every tensor to differentiate "
                "as params= (odeint_adjoint: adjoint_params=), or detach the ones you mean "
                "to hold fixed (a plain tensor attribute of a module may also become an "
                "nn.Parameter of it)"
            )
        if params is not None:
            kw["adjoint_params"] = tuple(params)
        back = dict(solver.backward or {})
        for key in ("rtol", "atol", "method"):
            if key in back:
                kw[f"adjoint_{key}"] = back[key]
        if "options" in back or "step_size" in back or back.get("method", method) != method:
            # torchdiffeq infers the backward's options from the forward's only for the
            # same method; otherwise they are built here, as the forward's are.
            kw["adjoint_options"] = _backward_options(back, method, ts)
        counter.pin = Pinned(owners((func,)), "adjoint")
    run = None
    if method == "scipy_solver":
        # The adjoint (the only scipy solve that reaches here): torchdiffeq's wrapper, which
        # solves the backward with scipy too, stepping a class with _scipy's step limit and
        # named failures (the wrapper would return fewer rows, or run on without a limit).
        run = _ScipyRun(ts)
        options = _scipy_stepper(method, options, run)
    solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    if kind == "adaptive":
        # Eager under torch.compile (a graph break): torchdiffeq's adaptive setup checks
        # the step and jump times for duplicates with Tensor.unique, whose output shape
        # depends on the data, and Inductor cannot lower it (aten._unique2). Eager, the
        # loop gives torchdiffeq's numbers, as odeint promises.
        solve = torch.compiler.disable(solve)
    try:
        sol = solve(
            counter, y0, t, rtol=solver.rtol, atol=solver.atol, method=method, options=options, **kw
        )
    except (AssertionError, RuntimeError) as err:
        note = _resolution(solver, parts(y0)[0].dtype)
        if adjoint and "does not require grad" in str(err):
            raise RuntimeError(
                f"{err}. With memory='adjoint' (odeint_adjoint) the forward solve runs "
                "under torch.no_grad, so a func that differentiates inside itself (a "
                "Hamiltonian's or a potential's gradient, torch.autograd.grad) finds no "
                "graph: in func, compute that part under torch.enable_grad(), from "
                "y.detach().requires_grad_() where y does not require grad, or use "
                "memory='autograd'"
            ) from err
        raise _named(err, method, options, note) from err
    if run is not None:
        rows = parts(sol)[0].shape[0]
        if rows != len(ts):  # the stepper raises first: a short result is never returned
            raise SolverError(
                f"{method}: scipy stopped before t={ts[rows]:g}, returning {rows} of "
                f"{len(ts)} output times; the solution probably blows up there, or the "
                "problem is stiff (try options={'solver': 'Radau'} or looser rtol/atol)",
                status="underflow",
            )
        run.backward = True  # the backward's solves, if it reuses the forward's options
        stats = Stats(nfe=counter.nfe, steps=run.steps)
    elif kind == "fixed":
        stats = Stats(nfe=counter.nfe, steps=counter.steps)
    else:
        stats = Stats(nfe=counter.nfe, steps=counter.steps, rejected=counter.rejected)
    if final_only:
        sol = tuple(s[-1] for s in sol) if isinstance(sol, tuple) else sol[-1]
    if adjoint:
        # The final state alone is copied: torchdiffeq saves its output for the backward,
        # and a stage's output is the caller's to modify in place (nn.ReLU(inplace=True)).
        outs = _FirstOrder.apply(final_only, *parts(sol))
        sol = outs if isinstance(sol, tuple) else outs[0]
    return sol, stats


_ADJOINT_SECOND_ORDER = (
    "memory='adjoint' differentiates once: torchdiffeq's adjoint backward is not itself "
    "differentiable, so second derivatives (backward or grad with create_graph=True, as "
    "gradient penalties, Hessians and Hessian-vector products need) would be silently "
    "missing. Use memory='autograd' for them"
)


class _FirstOrder(torch.autograd.Function):
    """The adjoint solution unchanged (or copied); its backward refuses a second order."""

    @staticmethod
    def forward(ctx, copy: bool, *ys):
        return tuple(y.clone() if copy else y.view_as(y) for y in ys)

    @staticmethod
    def backward(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(_ADJOINT_SECOND_ORDER)
        return (None, *grads)


def _warn_unsupported_callbacks(func, method: str) -> None:
    """torchdiffeq's warning for callbacks on ``func`` that ``method`` never calls (the
    paths that do not go through torchdiffeq's own checks)."""
    if SOLVERS is None:
        return
    defined = {n for n in _all_callback_names if hasattr(func, n)}
    unsupported = defined - SOLVERS[method].valid_callbacks()
    if unsupported:
        warnings.warn(f"Solver '{method}' does not support callbacks {unsupported}", stacklevel=4)


def _check_resolution(solver: Solver, dtype: torch.dtype) -> None:
    """Tolerances the state's dtype can resolve: the local error of a step is never below
    the round-off of ``y`` (about ``eps |y|``), so an error target ``atol + rtol |y|`` far
    below ``eps`` is never met and the step size underflows. A sixteenth of ``eps`` is
    allowed (float32 with torchdiffeq's default ``rtol=1e-7`` works)."""
    eps = torch.finfo(dtype).eps

    def biggest(x):
        return float(x.max()) if isinstance(x, Tensor) else float(x)

    if max(biggest(solver.rtol), biggest(solver.atol)) < eps / 16:
        raise ValueError(
            f"{solver.method}: rtol={biggest(solver.rtol):g} and atol={biggest(solver.atol):g} "
            f"are below what a {dtype} state resolves (eps {eps:.3g}); the step size would "
            f"underflow. Use rtol >= {eps:.2g} (and atol to match) for {dtype}, or integrate "
            "in float32/float64"
        )


def _empty(func, y0: Any, t: Tensor, ts: list[float], method: str, final_only: bool):
    """An empty state (a batch of 0): nothing to integrate, the solution is ``y0`` at every
    time. No step is taken: torchdiffeq's error norms of an empty state are NaN (reported
    as a step-size underflow) or fail (implicit_adams, scipy); ``func`` is evaluated once,
    to check what it returns."""
    check_derivative(func(t[0], y0), y0, method)
    if final_only:
        return y0, Stats(nfe=1, steps=0, rejected=0)
    n = len(ts)
    sol = (
        tuple(torch.stack([y] * n) for y in y0) if isinstance(y0, tuple) else torch.stack([y0] * n)
    )
    return sol, Stats(nfe=1, steps=0, rejected=0)


_SCIPY_SOLVERS = ("LSODA", "RK45", "RK23", "DOP853", "Radau", "BDF")


def _scipy(func, y0: Any, t: Tensor, ts: list[float], solver: Solver, final_only: bool):
    """``scipy.integrate``'s solvers, stepped here rather than by ``solve_ivp``.

    torchdiffeq's wrapper calls ``solve_ivp`` and reshapes what comes back: when scipy
    stops early (a blow-up, a step-size underflow) it returns fewer rows than times and
    the wrapper returns them as if complete, and LSODA near a singularity takes millions
    of steps. The loop below is ``solve_ivp``'s (the same steps and dense-output points,
    so the same numbers) with a step limit and a named error at the time reached.
    Forward only (``memory="autograd"``): a gradient asked of it is the named error of
    :class:`_NoGradient`. The adjoint goes through torchdiffeq's wrapper instead, stepping
    the class of :func:`_scipy_stepper`, which stops as this loop does.
    """
    import numpy as np

    method = solver.method
    cls, options, max_steps = _scipy_class(method, solver.options)
    state = parts(y0)
    dtype, device = state[0].dtype, state[0].device
    shapes = [y.shape for y in state]
    sizes = [y.numel() for y in state]
    counter = _counter(func, y0, method)

    # As torchdiffeq: decreasing times are integrated as increasing -t with -f, and the
    # output times enter scipy in t's own dtype (its dense output computes in it).
    sign = 1.0 if ts[-1] > ts[0] else -1.0

    def fun(tt, yy):
        tt = torch.tensor(sign * tt).to(device, dtype)
        flat = torch.tensor(yy).to(device, dtype)
        ys = tuple(v.reshape(sh) for v, sh in zip(flat.split(sizes), shapes))
        with torch.no_grad():
            out = counter(tt, ys if isinstance(y0, tuple) else ys[0])
        f = torch.cat([o.reshape(-1) for o in parts(out)])
        return (f if sign > 0 else -f).cpu().numpy()

    def tol(x):
        return x.detach().cpu().numpy().reshape(-1) if isinstance(x, Tensor) else x

    flat0 = torch.cat([y.detach().reshape(-1) for y in state]).cpu().numpy()
    t_eval = (sign * t).detach().cpu().numpy()
    t0, t1 = float(t_eval[0]), float(t_eval[-1])
    ode = cls(fun, t0, flat0, t1, rtol=tol(solver.rtol), atol=tol(solver.atol), **options)
    rows: list[np.ndarray] = []
    steps = 0
    i_eval = 0
    while ode.status == "running":
        if steps == max_steps:
            raise _scipy_too_many(f"{method} ({cls.__name__})", max_steps, sign * ode.t, ts[-1])
        message = ode.step()
        steps += 1
        if ode.status == "failed":
            raise _scipy_failed(f"{method} ({cls.__name__})", sign * ode.t, ts[-1], message)
        i_new = int(np.searchsorted(t_eval, ode.t, side="right"))
        chunk = t_eval[i_eval:i_new]
        if chunk.size:
            rows.extend(ode.dense_output()(chunk).T)
            i_eval = i_new
    sol = torch.tensor(np.stack(rows)).to(device, dtype)
    out = tuple(v.reshape(len(ts), *sh) for v, sh in zip(sol.split(sizes, dim=1), shapes))
    params = _grad_tensors(func)
    if torch.is_grad_enabled() and (
        t.requires_grad or params or any(y.requires_grad for y in state)
    ):
        # The values stand (torchdiffeq returns them too); a gradient cannot be had.
        names = tuple(name for name, _ in params)
        out = _NoGradient.apply(t, names, *state, *(p for _, p in params), *out)
    out = out if isinstance(y0, tuple) else out[0]
    if final_only:
        out = tuple(o[-1] for o in out) if isinstance(y0, tuple) else out[-1]
    return out, Stats(nfe=counter.nfe, steps=steps)


def _scipy_class(method: str, options: dict) -> tuple[type, dict, int]:
    """The ``scipy.integrate.OdeSolver`` class ``options`` name, the keyword arguments it
    takes from them and the step limit."""
    import scipy.integrate

    options = dict(options)
    extra = sorted(set(options) - SCIPY_OPTIONS)
    if extra:
        raise ValueError(f"{method}: unknown options {extra}; it takes {sorted(SCIPY_OPTIONS)}")
    name = options.pop("solver", "LSODA")
    max_steps = options.pop("max_num_steps", DEFAULT_MAX_NUM_STEPS)
    if isinstance(name, str) and name in _SCIPY_SOLVERS:
        cls = getattr(scipy.integrate, name)
    elif isinstance(name, type) and issubclass(name, scipy.integrate.OdeSolver):
        cls = name
    else:
        raise ValueError(
            f"{method}: options['solver'] must be one of {_SCIPY_SOLVERS} or a "
            f"scipy.integrate.OdeSolver subclass, got {name!r}"
        )
    if cls is scipy.integrate.LSODA:
        options.setdefault("min_step", 0.0)  # torchdiffeq's default
    return cls, options, max_steps


def _scipy_too_many(where: str, max_steps: int, reached: float, end: float) -> SolverError:
    return SolverError(
        f"{where}: more than {max_steps} steps were needed; it reached t={reached:g} of "
        f"{end:g}. Raise options={{'max_num_steps': N}}, or check the right-hand side for a "
        "blow-up (a finite-time singularity) or stiffness",
        status="max_num_steps",
    )


def _scipy_failed(where: str, reached: float, end: float, message: str | None) -> SolverError:
    return SolverError(
        f"{where} failed at t={reached:g} of {end:g}: {message}; the solution probably blows "
        "up there, or the problem is stiff (try options={'solver': 'Radau'} or looser "
        "rtol/atol)",
        status="underflow",
    )


def _backward_options(back: dict, forward: str, ts: list[float]) -> dict:
    """torchdiffeq's ``adjoint_options`` for ``Solver.backward``, built as the forward's
    are: a fixed-step method's ``step_size``, an adaptive method's
    step limit, and scipy's stepper with its limit and named failures (the backward of a
    scipy forward that reuses the forward's options gets the same from the forward)."""
    method = back.get("method", forward)
    options = dict(back.get("options", {}))
    if "step_size" in back:
        # torchdiffeq's own option, not the forward's grid (_grid): no gradient of t flows
        # through the backward's grid, and odeint_adjoint's numbers stay torchdiffeq's.
        options["step_size"] = back["step_size"]
    if method == "scipy_solver":
        try:
            return _scipy_stepper(method, options, _ScipyRun(ts, backward=True))
        except ValueError as err:
            # The forward's options may be fine: say which solve the bad option is of.
            raise ValueError(f"Solver.backward options: {err}") from err
    if kind_of(method) == "adaptive":
        options.setdefault("max_num_steps", DEFAULT_MAX_NUM_STEPS)
    return options


class _ScipyRun:
    """What the scipy solves of one adjoint solve share: the direction of time, whether
    the backward pass has begun, and the steps of the forward solve."""

    def __init__(self, ts: list[float], backward: bool = False):
        self.ts = ts
        self.backward = backward
        self.steps = 0


def _scipy_stepper(method: str, options: dict, run: _ScipyRun) -> dict:
    """torchdiffeq's scipy options for ``options``: the named class, subclassed to stop
    where ``_scipy`` stops (the step limit, a failure) with its error at the time reached.

    torchdiffeq's wrapper passes ``solve_ivp`` the class as its ``method``: the steps and
    numbers are the class's own, as with the name. The wrapper's ``min_step=0`` and
    ``max_step=inf`` give way to the options, as in ``_scipy`` (scipy would warn on every
    Runge–Kutta solve that ``min_step`` has no effect), and ``first_step`` and
    ``max_num_steps``, which the wrapper does not take, reach the class here.
    """
    cls, kwargs, max_steps = _scipy_class(method, options)

    class Stepper(cls):
        def __init__(self, fun, t0, y0, t_bound, **kw):
            kw = {k: v for k, v in kw.items() if k not in ("min_step", "max_step")}
            super().__init__(fun, t0, y0, t_bound, **kw, **kwargs)
            self.taken = 0

        def step(self):
            # torchdiffeq integrates in increasing time: decreasing times enter negated,
            # and the backward pass runs against the forward's direction.
            forward = 1.0 if run.ts[-1] > run.ts[0] else -1.0
            sign = -forward if run.backward else forward
            end = run.ts[0] if run.backward else run.ts[-1]
            where = f"{method} ({cls.__name__}){' adjoint (backward pass)' if run.backward else ''}"
            if self.taken == max_steps:
                raise _scipy_too_many(where, max_steps, sign * self.t, end)
            message = super().step()
            self.taken += 1
            run.steps += 0 if run.backward else 1
            if self.status == "failed":
                raise _scipy_failed(where, sign * self.t, end, message)
            return message

    Stepper.__name__ = Stepper.__qualname__ = cls.__name__
    return {"solver": Stepper}


def _grad_tensors(func) -> list[tuple[str, Tensor]]:
    """The tensors requiring grad that ``func`` visibly depends on
    (:func:`~solvers._state.reachable`), each with a name for a message: the tensors it holds,
    and the parameters of the modules it is, is a method of, holds or names."""
    found: dict[int, tuple[str, Tensor]] = {}
    for name, where, v in reachable((func,)):
        at = f" ({where})" if where else ""
        if isinstance(v, Tensor) and v.requires_grad:
            found.setdefault(id(v), (f"{name}{at}", v))
        elif isinstance(v, nn.Module):
            for pname, p in v.named_parameters():
                if p.requires_grad:
                    found.setdefault(id(p), (f"{name}.{pname}{at}", p))
    return list(found.values())


class _NoGradient(torch.autograd.Function):
    """``scipy_solver``'s solution, attached to ``t``, ``y0`` and the parameters of
    ``func``: its backward is the named error, raised only when a gradient is actually
    asked for (a forward-only solve with inputs that require grad keeps working)."""

    @staticmethod
    def forward(ctx, t, names, *tensors):
        # names: one per parameter tensor, to say in the error which of them asked.
        n_state = (len(tensors) - len(names)) // 2
        ctx.n_state, ctx.names = n_state, names
        return tensors[n_state + len(names) :]

    @staticmethod
    def backward(ctx, *grads):
        need = ctx.needs_input_grad
        n = ctx.n_state
        asked = [name for name, a in zip(ctx.names, need[2 + n :]) if a]
        names = [
            name
            for name, wanted in (
                ("t", need[0]),
                ("y0", any(need[2 : 2 + n])),
                (f"the parameters of func ({', '.join(asked)})", bool(asked)),
            )
            if wanted
        ]
        wanted = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise ValueError(
            f"scipy_solver: gradients with respect to {wanted} are not supported with "
            "memory='autograd': scipy integrates in NumPy, so no gradient flows through the "
            "solve. Use memory='adjoint' (solvers.odeint_adjoint), whose backward pass solves "
            "the adjoint equation with scipy too, or a torchdiffeq method such as dopri5; for "
            "a forward-only solve, detach them or use torch.no_grad()"
        )


def _resolution(solver: Solver, dtype: torch.dtype) -> str:
    """A note for an underflow when the tolerances are within 100 eps of the dtype's
    resolution (float16 needs rtol of about 1e-2 in practice), else ''."""
    eps = torch.finfo(dtype).eps
    rtol, atol = (
        float(x.max()) if isinstance(x, Tensor) else x for x in (solver.rtol, solver.atol)
    )
    if max(rtol, atol) >= 100 * eps:
        return ""
    return (
        f" rtol={rtol:g} and atol={atol:g} are close to the resolution of the {dtype} state "
        f"(eps {eps:.3g}): loosen them (rtol >= {100 * eps:.2g}) or integrate in a wider dtype."
    )


def _named(err: Exception, method: str, options: dict[str, Any], note: str = "") -> Exception:
    msg = str(err)
    if "underflow in dt" in msg:
        return SolverError(
            f"{method}: the step size underflowed ({msg}); the right-hand side is probably "
            "stiff or not finite. Loosen rtol/atol, or use a fixed-step method. If it is "
            "defined only up to the last output time: an adaptive step can end past it "
            "(the output is interpolated back), and options={'step_t': t[-1:]} ends the "
            f"last step there.{note}",
            status="underflow",
        )
    if "max_num_steps exceeded" in msg:
        return SolverError(
            f"{method}: more than {options.get('max_num_steps')} steps were needed ({msg}); "
            "raise options={'max_num_steps': N}, loosen rtol/atol, or use a fixed-step method",
            status="max_num_steps",
        )
    if "Reached maximum number of iterations" in msg:  # a fixed-step event search
        return SolverError(
            f"{method}: the event did not fire within {msg.split()[-1].rstrip('.')} steps "
            f"of step_size {options.get('step_size')} ({msg}); check that event_fn "
            "crosses zero, or take a larger step_size",
            status="max_num_steps",
        )
    if "non-finite values in state" in msg:
        # torchdiffeq's loop reports no time: the error norm let a NaN/Inf stage through.
        return NonFiniteError(
            f"{method}: the state became NaN/Inf during the solve ({msg[:200]}); the "
            "right-hand side is not finite there",
            t=None,
        )
    return err


def odeint_event(func, y0, t, rtol, atol, method, options, event_fn, adjoint_kw):
    """torchdiffeq's event handling, ``(event_t, solution)``, with ``event_t`` differentiated.

    Bare ``torchdiffeq.odeint`` treats the event time as a constant, so the gradient of the
    solution misses how the event moves with ``y0`` and ``func``'s parameters (the gradient
    of ``event_t`` itself is zero). ``torchdiffeq.odeint_event`` adds that dependence by the
    implicit function theorem (Chen, Amos & Nickel, "Learning neural event functions for
    ordinary differential equations", ICLR 2021), and is what runs here: the forward numbers
    are bare ``odeint``'s, bit for bit. As there, only ``t[0]`` and the direction of
    ``t[1]`` are read.
    """
    if len(t) != 2:
        raise ValueError(
            f"event_fn: t must hold two times, the start and one more that gives the "
            f"direction of time (as torchdiffeq), got {len(t)}"
        )
    interface = (
        torchdiffeq.odeint
        if adjoint_kw is None
        else functools.partial(torchdiffeq.odeint_adjoint, **adjoint_kw)
    )
    try:
        return torchdiffeq.odeint_event(
            func,
            y0,
            t[0],
            event_fn=event_fn,
            reverse_time=bool(t[1] < t[0]),
            odeint_interface=interface,
            rtol=rtol,
            atol=atol,
            method=method,
            options=options,
        )
    except (AssertionError, RuntimeError) as err:
        raise _named(err, method, options) from err
