"""Exceptions raised by the solvers."""

from __future__ import annotations


class SolverError(RuntimeError):
    """An integration could not be completed (too many steps, step-size underflow).

    The message says what happened and which option changes it.

    Attributes:
        status: ``"max_num_steps"`` or ``"underflow"`` (as in :attr:`Solution.status`).
    """

    def __init__(self, message: str, *, status: str = "max_num_steps"):
        super().__init__(message)
        self.status = status


class NonFiniteError(FloatingPointError):
    """A NaN or Inf appeared in the state during an integration.

    Attributes:
        t: the time of the first step whose result is not finite (a float); ``None``
            when the initial state itself is not finite, or when torchdiffeq's own loop
            found it (it reports no time).
        step: the index of that step on the integration grid (``None`` for adaptive methods,
            where only the output time is known).
    """

    def __init__(self, message: str, *, t: float | None, step: int | None = None):
        super().__init__(message)
        self.t = t
        self.step = step
