"""Time integration for neuralpde: torchdiffeq's methods and symplectic steppers, one API.

Numerics only: this package knows nothing about networks and imports without ``neuralpde``.

The API in five lines::

    solver = solvers.Solver("rk4", step_size=0.1)          # immutable, validated once
    solver = solver.replace(memory="adjoint")              # a new value; the rest kept
    sol = solvers.solve(func, y0, t, solver)               # -> Solution
    sol.ys, sol.y_final, sol.stats.nfe, sol.status         # states, end state, cost, status
    ys = solvers.odeint(func, y0, t, method="rk4", options={"step_size": 0.1})  # torchdiffeq

- :class:`Solver` (method, step_size, rtol, atol, memory, options, backward, check_finite)
  is the one description of a solve; a setting a method cannot take is an error.
- :func:`solve` ``(func, y0, t, solver, *, save="all"|"final", params=None, throw=True)``
  returns a :class:`Solution` (``ys`` at every time, ``y_final``, :class:`Stats`
  ``nfe/steps/rejected``, ``status``, ``t_reached``, ``message``).
- :func:`odeint` / :func:`odeint_adjoint` are ``torchdiffeq.odeint`` /
  ``torchdiffeq.odeint_adjoint`` (0.2.x): same signatures, defaults and numbers.
- :class:`SplittingStepper` describes a symplectic method by its splitting tableau;
  :func:`register_stepper` makes it a method name everywhere, reversible memory included.
"""

from ._errors import NonFiniteError as NonFiniteError
from ._errors import SolverError as SolverError
from ._methods import methods as methods
from ._methods import register_stepper as register_stepper
from ._methods import stepper as stepper
from ._odeint import odeint as odeint
from ._odeint import odeint_adjoint as odeint_adjoint
from ._odeint import odeint_second_order as odeint_second_order
from ._solve import solve as solve
from ._solver import Solution as Solution
from ._solver import Solver as Solver
from ._solver import Stats as Stats
from ._steppers import SplittingStepper as SplittingStepper
from ._steppers import Stepper as Stepper

__all__ = [
    "NonFiniteError",
    "Solution",
    "Solver",
    "SolverError",
    "SplittingStepper",
    "Stats",
    "Stepper",
    "methods",
    "odeint",
    "odeint_adjoint",
    "odeint_second_order",
    "register_stepper",
    "solve",
    "stepper",
]
