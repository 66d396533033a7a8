"""The method names every entry point accepts, and what kind each one is."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._steppers import Stepper

# torchdiffeq's method names, split by whether they control their own step. Its
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
TORCHDIFFEQ_METHODS = FIXED_STEP_METHODS + ADAPTIVE_METHODS

# scipy_solver's options as this package steps it (solvers._torchdiffeq._scipy): scipy's
# solver and step bounds, and the step limit and first step the loop adds.
SCIPY_OPTIONS = frozenset({"solver", "min_step", "max_step", "max_num_steps", "first_step"})


def torchdiffeq_options(method: str) -> frozenset[str] | None:
    """The names in ``options`` that torchdiffeq's solver class of ``method`` reads: the
    keyword arguments of its ``__init__`` and of its bases' (torchdiffeq only warns about
    others and drops them), and, for the error-controlled methods, ``norm``, which
    ``odeint`` reads itself (a fixed-step method or scipy's would drop it without a word).
    ``None`` where a torchdiffeq whose internals moved does not say."""
    return _OPTIONS.get(method)


def _init_keywords(method: str) -> frozenset[str] | None:
    import inspect

    try:
        from torchdiffeq._impl.odeint import SOLVERS
    except ImportError:  # as solvers._torchdiffeq: internals that moved check nothing
        return None
    mro = SOLVERS[method].__mro__
    # The error norm steers step-size control; fixed grids (the Adams corrector included,
    # which measures its own convergence in the max norm) have none to steer.
    names = {"norm"} if any(c.__name__ == "AdaptiveStepsizeODESolver" for c in mro) else set()
    for cls in mro:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                names.add(p.name)
    # Set by odeint or by the class for itself, not by a user.
    return frozenset(names - {"self", "func", "y0", "rtol", "atol", "implicit"})


# Read once, at import: a Solver is rebuilt on every forward pass of a stage, and
# inspecting classes there would cost ~0.5 ms each time, and break a torch.compile graph
# (fullgraph) where the first Solver of a method with options is built inside the trace.
_OPTIONS: dict[str, frozenset[str] | None] = {
    m: SCIPY_OPTIONS if m == "scipy_solver" else _init_keywords(m) for m in TORCHDIFFEQ_METHODS
}


def methods() -> dict[str, str]:
    """All method names the solvers accept, mapped to their kind.

    Returns:
        ``{name: kind}`` with kind one of ``"fixed"`` (torchdiffeq, fixed step),
        ``"adaptive"`` (torchdiffeq, error-controlled) and ``"symplectic"`` (a registered
        :class:`Stepper`, on a split state ``(q, p)``).
    """
    out = {m: "fixed" for m in FIXED_STEP_METHODS}
    out.update({m: "adaptive" for m in ADAPTIVE_METHODS})
    out.update({m: "symplectic" for m in STEPPERS})
    return out


def kind_of(method: object) -> str:
    """The kind of ``method`` (see :func:`methods`), or a ValueError listing the names."""
    kinds = methods()
    if not isinstance(method, str) or method not in kinds:
        raise ValueError(
            f"unknown method {method!r}; valid methods are: {', '.join(sorted(kinds))}"
        )
    return kinds[method]


STEPPERS: dict[str, Stepper] = {}


def stepper(method: str) -> Stepper:
    """The registered :class:`Stepper` of a symplectic method name (its splitting tableau,
    order and step, for code that reasons about the method, e.g. a Lipschitz bound).

    Raises:
        ValueError: ``method`` is not a registered symplectic method (torchdiffeq's methods
            have no stepper object); :func:`methods` lists the kinds.
    """
    if not isinstance(method, str) or method not in STEPPERS:
        symplectic = sorted(STEPPERS)
        raise ValueError(
            f"solvers.stepper: {method!r} is not a registered symplectic method; those are "
            f"{', '.join(symplectic)} (solvers.methods() gives every method's kind)"
        )
    return STEPPERS[method]


def register_stepper(stepper: Stepper) -> Stepper:
    """Register a stepper instance under ``stepper.name`` for every solver entry point.

    A :class:`SplittingStepper` gets reversible memory and its inverse from its tableau; a
    plain :class:`Stepper` must invert itself when ``step`` is called with ``-h``.

    Args:
        stepper: a :class:`Stepper` instance with ``name``, ``order``, ``evals`` and ``step``.

    Returns:
        the same stepper, so the call can be used as a one-liner.

    Raises:
        TypeError: if ``stepper`` is not a :class:`Stepper` instance.
        ValueError: if the name is empty, taken by a stepper or a torchdiffeq method.
    """
    from ._steppers import Stepper

    if not isinstance(stepper, Stepper):
        raise TypeError(
            f"register_stepper takes a Stepper instance, got {type(stepper).__name__}; "
            "instantiate the class (register_stepper(MyStepper()))"
        )
    if not stepper.name:
        raise ValueError("register_stepper: the stepper has no `name`; set one")
    if stepper.name in STEPPERS or stepper.name in TORCHDIFFEQ_METHODS:
        raise ValueError(f"register_stepper: a method named {stepper.name!r} already exists")
    STEPPERS[stepper.name] = stepper
    return stepper


# The built-in steppers register themselves on import.
from . import _steppers  # noqa: E402, F401
