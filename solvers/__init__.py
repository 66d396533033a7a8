"""Time integration for neuralpde: one ``odeint`` for torchdiffeq's methods and ours.

Numerics only: this package knows nothing about networks and imports without ``neuralpde``.
"""

from ._errors import NonFiniteError as NonFiniteError
from ._errors import SolverError as SolverError
from ._odeint import methods as methods
from ._odeint import odeint as odeint
from ._odeint import odeint_second_order as odeint_second_order
from ._steppers import Stepper as Stepper
from ._steppers import register_stepper as register_stepper

__all__ = [
    "NonFiniteError",
    "SolverError",
    "Stepper",
    "methods",
    "odeint",
    "odeint_second_order",
    "register_stepper",
]
