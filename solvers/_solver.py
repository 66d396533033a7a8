"""The solver as one immutable value, and the solution a solve returns."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._methods import STEPPERS, TORCHDIFFEQ_METHODS, kind_of, torchdiffeq_options

MEMORY_MODES = ("autograd", "reversible", "adjoint")
# Options of the symplectic steppers (memory="reversible" only); the torchdiffeq methods
# take torchdiffeq's options, passed through unchanged.
_SPLIT_OPTIONS = ("checkpoint_every",)
# The settings of the backward solve of memory="adjoint": torchdiffeq.odeint_adjoint's
# adjoint_rtol / adjoint_atol / adjoint_method / adjoint_options, and the step size of a
# fixed-step backward method (its grid, as Solver.step_size gives the forward's).
_BACKWARD_KEYS = ("rtol", "atol", "method", "options", "step_size")
# torchdiffeq's own default is 2**31 - 1 steps, which looks like a hang to a user whose
# right-hand side has gone stiff or non-finite; `solve` stops earlier (odeint does not).
DEFAULT_MAX_NUM_STEPS = 10_000


def _check_options(method: str, options: Mapping[str, Any], where: str) -> None:
    """Refuse names torchdiffeq's ``method`` does not read: it would warn at solve time
    and drop them, so a misspelt ``max_num_step`` would silently be the default."""
    known = torchdiffeq_options(method)
    if known is None:
        return
    known -= {"step_size"}
    extra = sorted(set(options) - known)
    if extra:
        # The step and tolerances are settings of their own (odeint's step_size option
        # becomes Solver.step_size before it gets here).
        elsewhere = (
            " (the step size and tolerances are given apart: Solver(step_size=h, rtol=..., "
            "atol=...); odeint takes options={'step_size': h})"
        ) * any(k in ("rtol", "atol", "h", "dt") or k.replace("_", "") == "stepsize" for k in extra)
        raise ValueError(
            f"{where}: method {method!r} takes no options {extra}; its options are "
            f"{sorted(known)}{elsewhere}"
        )


def _check_tolerance(name: str, tol: Any) -> None:
    if isinstance(tol, Tensor):
        # Per-component tolerances, as torchdiffeq accepts them: the same rule per entry.
        if not tol.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {tol.dtype}")
        if tol.requires_grad:
            raise ValueError(f"{name} must not require grad (detach it)")
        if not bool(torch.isfinite(tol).all()) or not bool((tol > 0).all()):
            raise ValueError(f"{name} must be positive and finite in every entry, got {tol}")
        return
    if isinstance(tol, (list, tuple)):
        # torchdiffeq reads a list as one tolerance per part of a tuple state; here a
        # tuple state has one tolerance for all its parts.
        raise ValueError(
            f"{name} must be one positive finite number, or a tensor of a tensor state's "
            f"shape (per-component tolerances), got the {type(tol).__name__} {tol!r}; per-"
            "part tolerances of a tuple state are not supported: scale the parts so that "
            f"one {name} suits them all, or concatenate them into one tensor state"
        )
    if (
        isinstance(tol, bool)
        or not isinstance(tol, (int, float))
        # A chained comparison, not math.isfinite: under torch.compile a number that changed
        # between calls is traced as a symbolic float, which comparisons accept (NaN fails).
        or not 0 < tol < math.inf
    ):
        raise ValueError(f"{name} must be a positive finite number, got {tol!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Solver:
    """How to integrate: method, step size, tolerances, memory mode and options, validated once.

    An immutable value: :meth:`replace` returns a new, revalidated one. Settings a method
    cannot take are an error, never silently dropped or reset: ``replace`` keeps every
    setting it is not given, so ``Solver("rk4", step_size=0.1).replace(method="dopri5")``
    raises (dopri5 chooses its own steps) and ``replace(method="dopri5", step_size=None)``
    is the change that works.

    Args:
        method: a name from :func:`solvers.methods` (default ``"dopri5"``, torchdiffeq's).
        step_size: step of the fixed-step and symplectic methods, a positive float; ``None``
            steps from output time to output time (torchdiffeq's behaviour). Adaptive
            methods take none (``options={"first_step": h}`` sets their first step).
        rtol, atol: tolerances of the adaptive methods: positive finite numbers, or
            per-component tensors of the state's shape.
        memory: how the backward pass gets its states: ``"autograd"`` (store every step),
            ``"reversible"`` (symplectic methods: recompute each step's input by inverting
            the step; exact gradient, memory independent of the number of steps) or
            ``"adjoint"`` (torchdiffeq methods: ``torchdiffeq.odeint_adjoint``; gradient
            approximate to the solver's accuracy). ``scipy_solver`` integrates in NumPy:
            gradients only with ``"adjoint"``, whose backward solve is scipy's too (with
            ``"autograd"`` a backward pass through it raises a ``ValueError``).
        options: torchdiffeq's options of the method (``perturb``, ``jump_t``,
            ``max_num_steps``, ``first_step``, ...; adaptive methods stop after
            ``max_num_steps=10_000`` steps unless told otherwise), or, for a symplectic
            method with ``memory="reversible"``, ``checkpoint_every`` (store the state every
            this many steps, bounding float32 reconstruction drift). The step size is
            ``step_size``, never an option. A name the method does not read is refused
            (torchdiffeq warns at solve time and drops it).
        backward: ``memory="adjoint"`` only: settings of the adjoint solve, a mapping with
            keys among ``rtol``, ``atol``, ``method``, ``options`` (torchdiffeq's
            ``adjoint_*`` arguments) and ``step_size`` (a fixed-step backward method's
            step). Missing keys take torchdiffeq's defaults: the forward's method, and
            with it the forward's options and step; a fixed-step backward method other
            than the forward's, or the same one with options of its own, takes the
            forward's ``step_size`` (for another method, a ``ValueError`` where there is
            none). Unlike torchdiffeq, another method needs no options of its
            own. The backward solve keeps the forward's step limits (an adaptive
            method's ``max_num_steps``, scipy's, with scipy's named failures).
        check_finite: check the initial state and the solution for NaN/Inf (a sync each)
            and raise :class:`NonFiniteError` naming where it appeared.

    Raises:
        ValueError: an unknown method or memory mode, a step size the method cannot take
            or an invalid one, tolerances that are not positive and finite, options the
            method does not take, a memory mode the method does not support.
        TypeError: options or backward not a mapping, check_finite not a bool.
    """

    method: str = "dopri5"
    step_size: float | None = None
    rtol: float | Tensor = 1e-7
    atol: float | Tensor = 1e-9
    memory: str = "autograd"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    backward: Mapping[str, Any] | None = None
    check_finite: bool = True

    def __post_init__(self) -> None:
        kind = kind_of(self.method)
        set_ = object.__setattr__
        set_(self, "_kind", kind)  # read on every solve: looked up once
        if self.step_size is not None:
            if isinstance(self.step_size, (bool, Tensor)) or not isinstance(
                self.step_size, (int, float)
            ):
                raise TypeError(
                    f"step_size must be a Python float (the grid is fixed before stepping), "
                    f"got {type(self.step_size).__name__}"
                )
            if not 0 < self.step_size < math.inf:  # not math.isfinite: see _check_tolerance
                raise ValueError(
                    f"step_size must be a positive finite number, got {self.step_size}"
                )
            set_(self, "step_size", float(self.step_size))
            if kind == "adaptive":
                raise ValueError(
                    f"step_size={self.step_size} is for fixed-step methods and {self.method!r} "
                    "chooses its own steps from rtol/atol; pass step_size=None with it "
                    "(options={'first_step': h} sets the first step)"
                )
        _check_tolerance("rtol", self.rtol)
        _check_tolerance("atol", self.atol)
        if self.memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {self.memory!r}")
        if self.memory == "reversible" and kind != "symplectic":
            raise ValueError(
                f"memory='reversible' needs a reversible method, and {self.method!r} is not "
                f"one; use a symplectic method ({', '.join(sorted(STEPPERS))}) on a split "
                "state, or memory='adjoint' / memory='autograd' for this method"
            )
        if self.memory == "adjoint" and kind == "symplectic":
            raise ValueError(
                f"memory='adjoint' is torchdiffeq's adjoint and does not apply to "
                f"{self.method!r}; use memory='reversible' for exact gradients in constant memory"
            )
        if not isinstance(self.options, Mapping):
            raise TypeError(f"options must be a dict, got {type(self.options).__name__}")
        options = dict(self.options)
        if "step_size" in options:
            raise ValueError(
                "pass the step size as Solver(step_size=...), not in options "
                "(solvers.odeint takes torchdiffeq's options={'step_size': h})"
            )
        if kind == "symplectic":
            allowed = _SPLIT_OPTIONS if self.memory == "reversible" else ()
            extra = sorted(set(options) - set(allowed))
            if extra:
                hint = "" if allowed else " (memory='reversible' takes checkpoint_every)"
                raise ValueError(f"method {self.method!r} takes no options {extra}{hint}")
            every = options.get("checkpoint_every")
            if every is not None and (
                isinstance(every, bool) or not isinstance(every, int) or every < 1
            ):
                raise ValueError(f"checkpoint_every must be a positive int or None, got {every!r}")
        elif "checkpoint_every" in options:
            raise ValueError(
                f"checkpoint_every is an option of memory='reversible' with a symplectic "
                f"method, not of {self.method!r}"
            )
        elif kind == "fixed" and "grid_constructor" in options and self.step_size is not None:
            raise ValueError("give either step_size or options['grid_constructor'], not both")
        if options and self.method in TORCHDIFFEQ_METHODS:
            _check_options(self.method, options, "options")
        set_(self, "options", MappingProxyType(options))
        if self.backward is not None:
            if self.memory != "adjoint":
                raise ValueError(
                    f"backward= sets the adjoint solve and needs memory='adjoint', got "
                    f"memory={self.memory!r}"
                )
            if not isinstance(self.backward, Mapping):
                raise TypeError(f"backward must be a dict, got {type(self.backward).__name__}")
            extra = sorted(set(self.backward) - set(_BACKWARD_KEYS))
            if extra:
                raise ValueError(f"backward takes keys {_BACKWARD_KEYS}, got {extra}")
            back = dict(self.backward)
            # Unknown and symplectic alike: kind_of's list would name the steppers too.
            if "method" in back and back["method"] not in TORCHDIFFEQ_METHODS:
                valid = ", ".join(sorted(TORCHDIFFEQ_METHODS))
                raise ValueError(
                    f"backward method {back['method']!r} is not a torchdiffeq method; the "
                    f"adjoint's backward solve takes one of: {valid}"
                )
            b_method = back.get("method", self.method)
            if "options" in back and not isinstance(back["options"], Mapping):
                raise TypeError(
                    f"backward options must be a dict, got {type(back['options']).__name__}"
                )
            if "step_size" in dict(back.get("options") or {}):
                raise ValueError(
                    "pass the backward step size as backward={'step_size': h}, not in its options"
                )
            if back.get("options") and b_method in TORCHDIFFEQ_METHODS:
                _check_options(b_method, back["options"], "backward options")
            if "step_size" in back:
                h = back["step_size"]
                if isinstance(h, bool) or not isinstance(h, (int, float)) or not 0 < h < math.inf:
                    raise ValueError(
                        f"backward step_size must be a positive finite number, got {h!r}"
                    )
                if kind_of(b_method) != "fixed":
                    raise ValueError(
                        f"backward step_size={h} is for a fixed-step backward method, and "
                        f"{b_method!r} chooses its own steps from rtol/atol; drop it, or give "
                        "a fixed-step method with it (backward={'method': 'rk4', 'step_size': "
                        "h}; odeint_adjoint: adjoint_method='rk4', adjoint_options="
                        "{'step_size': h})"
                    )
                back["step_size"] = float(h)
            elif kind_of(b_method) == "fixed" and (b_method != self.method or "options" in back):
                # Without a step a fixed-step method steps once per output interval: as a
                # backward method that is a coarse gradient nobody asked for. The same
                # method without options of its own inherits the forward's options and with
                # them its grid (torchdiffeq's rule); with options, the step is inherited here.
                if self.step_size is not None:
                    back["step_size"] = self.step_size
                elif b_method != self.method:
                    raise ValueError(
                        f"backward method {b_method!r} is a fixed-step method: give its step "
                        "as backward={'method': "
                        f"{b_method!r}, 'step_size': h}} (odeint_adjoint: adjoint_options="
                        "{'step_size': h}); without one it would step once per output "
                        "interval"
                    )
            for name in ("rtol", "atol"):
                if name in back:
                    _check_tolerance(f"backward {name}", back[name])
            set_(self, "backward", MappingProxyType(back))
        if not isinstance(self.check_finite, bool):
            raise TypeError(f"check_finite must be a bool, got {self.check_finite!r}")

    @property
    def kind(self) -> str:
        """``"fixed"``, ``"adaptive"`` or ``"symplectic"`` (see :func:`solvers.methods`)."""
        return self._kind

    def replace(self, **changes: Any) -> Solver:
        """A copy with ``changes`` applied and validated again; other settings are kept.

        Raises:
            TypeError: a name that is not a field of :class:`Solver`.
            ValueError: the new combination is invalid (the message names the setting).
        """
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise TypeError(f"Solver has no settings {unknown}; its settings are {sorted(fields)}")
        try:
            return dataclasses.replace(self, **changes)
        except (ValueError, TypeError) as err:
            kept = {k: getattr(self, k) for k in ("step_size", "memory") if k not in changes}
            if self.options and "options" not in changes:
                kept["options"] = dict(self.options)
            raise type(err)(f"Solver.replace({_kw(changes)}) keeps {_kw(kept)}: {err}") from err

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Solver):
            return NotImplemented
        return all(
            _same(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
        )

    __hash__ = None  # type: ignore[assignment]  # options may hold tensors

    def __reduce__(self):
        # The read-only mappings cannot be pickled: rebuild from plain dicts, so that
        # copy.deepcopy and torch.save of a module holding a Solver work.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("options", "backward"):
            if fields[name] is not None:
                fields[name] = dict(fields[name])
        return (_rebuild, (fields,))

    def __repr__(self) -> str:
        parts = [f"{self.method!r}"]
        for f in dataclasses.fields(self)[1:]:
            value = getattr(self, f.name)
            if f.name in ("options", "backward") and not value:
                continue
            if f.name not in ("options", "backward") and _same(value, f.default):
                continue
            shown = dict(value) if isinstance(value, MappingProxyType) else value
            parts.append(f"{f.name}={shown!r}")
        return f"Solver({', '.join(parts)})"


def _rebuild(fields: dict[str, Any]) -> Solver:
    return Solver(**fields)


def _kw(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and a.shape == b.shape
            and bool((a == b).all())
        )
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@dataclasses.dataclass(frozen=True)
class Stats:
    """What a solve cost.

    Attributes:
        nfe: evaluations of the right-hand side (for a split state: of ``f_q`` plus ``f_p``).
        steps: steps taken (accepted steps for adaptive methods; for ``scipy_solver``
            those of the forward solve).
        rejected: rejected steps of an adaptive method (``None`` for the others and for
            ``scipy_solver``, which does not report them).
        nfe_q, nfe_p: evaluations of ``f_q`` and ``f_p`` apart (split states only, else None).
    """

    nfe: int
    steps: int | None
    rejected: int | None = None
    nfe_q: int | None = None
    nfe_p: int | None = None

    def as_dict(self) -> dict[str, int]:
        """The statistics that apply to this solve, as a dict (``None`` entries left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def __add__(self, other: Stats) -> Stats:
        def add(a, b):
            return None if a is None or b is None else a + b

        return Stats(
            self.nfe + other.nfe,
            add(self.steps, other.steps),
            add(self.rejected, other.rejected),
            add(self.nfe_q, other.nfe_q),
            add(self.nfe_p, other.nfe_p),
        )


STATUSES = ("ok", "max_num_steps", "underflow", "nonfinite")


@dataclasses.dataclass(frozen=True, eq=False)
class Solution:
    """The result of :func:`solvers.solve`.

    Attributes:
        ts: ``(n_times,)`` the requested output times.
        y_final: the state at ``ts[-1]``, ``(*shape)`` (a tuple for a tuple state); after a
            failure with ``throw=False``, NaN like the later rows of ``ys``.
        stats: the :class:`Stats` of the solve.
        status: ``"ok"``, or why the solve stopped: ``"max_num_steps"``, ``"underflow"``
            (adaptive step size), ``"nonfinite"`` (NaN/Inf in the state).
        t_reached: the last output time with a valid state (``ts[-1]`` when ``"ok"``).
        message: what went wrong (empty when ``"ok"``).
    """

    ts: Tensor
    y_final: Any
    stats: Stats
    status: str = "ok"
    t_reached: float | None = None
    message: str = ""
    saved: Any = dataclasses.field(default=None, repr=False)

    @property
    def ys(self) -> Any:
        """``(n_times, *shape)``: the states at every output time (a tuple for a tuple state).

        Raises:
            ValueError: the solve was asked for the final state only (``save="final"``).
        """
        if self.saved is None:
            raise ValueError(
                "this solution holds the final state only (solve(..., save='final')); use "
                "y_final, or solve with save='all' for every output time"
            )
        return self.saved
