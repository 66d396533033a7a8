"""Symplectic, reversible one-step methods for separable split systems.

A split system is ``dq/dt = f_q(t, p)``, ``dp/dt = f_p(t, q)`` with state ``(q, p)``.

Every stepper here evaluates the right-hand side only at times strictly inside the
step's cell ``[t, t + h]``. A piecewise-constant, right-open θ(t) (θ_j on [t_j, t_{j+1}))
therefore always yields θ_j for the step j, in either direction of time; a stepper that
evaluated at ``t + h`` would silently use θ_{j+1} (see SPEC: "Which weights a step uses").
Time is frozen at the cell's midpoint inside a Verlet step: that is Strang splitting of
``dt/dt = 1`` around the frozen-time Verlet map, so symmetry and order 2 survive for
time-dependent right-hand sides.

A step with ``h < 0`` applies the adjoint method, which is the exact inverse of the
forward step over the same cell; integrating forward and then backward over the same
grid returns to the start up to round-off for every stepper.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

SplitFunc = tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]
SplitState = tuple[Tensor, Tensor]

# Yoshida (1990), "Construction of higher order symplectic integrators", Phys. Lett. A 150.
_CBRT2 = 2.0 ** (1.0 / 3.0)
_W1 = 1.0 / (2.0 - _CBRT2)
_W0 = -_CBRT2 / (2.0 - _CBRT2)


class Stepper:
    """A one-step method for a split state ``(q, p)``.

    Attributes:
        name: the registered method name.
        order: the global order of convergence.
        symplectic: whether the map preserves the symplectic form.
        symmetric: whether ``step(t + h, -h, step(t, h, y)) == y`` holds with the *same*
            formula (true for all registered steppers through their adjoint, see module doc);
            symmetric methods in the classical sense are ``verlet`` and ``yoshida4``.
        evals: evaluations of ``(f_q, f_p)`` per step.
    """

    name: str = ""
    order: int = 0
    symplectic: bool = True
    symmetric: bool = False
    evals: tuple[int, int] = (0, 0)

    def step(self, func: SplitFunc, t: Tensor, h: float, state: SplitState) -> SplitState:
        """Advance ``state = (q, p)`` from time ``t`` (0-d tensor) by ``h`` (may be negative).

        Args:
            func: ``(f_q, f_p)`` with ``dq/dt = f_q(t, p)`` and ``dp/dt = f_p(t, q)``.
            t: 0-d tensor, the start of the step's cell ``[t, t + h]``.
            h: the step (a Python float); ``h < 0`` must invert the step over that cell.
            state: ``(q, p)``, two tensors of any shape (``(batch, c, h, w)`` in a network).

        Returns:
            The new ``(q, p)``, shapes unchanged.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"


def _q_then_p(func: SplitFunc, tau: Tensor, h: float, q: Tensor, p: Tensor) -> SplitState:
    f_q, f_p = func
    q = q + h * f_q(tau, p)
    p = p + h * f_p(tau, q)
    return q, p


def _p_then_q(func: SplitFunc, tau: Tensor, h: float, q: Tensor, p: Tensor) -> SplitState:
    f_q, f_p = func
    p = p + h * f_p(tau, q)
    q = q + h * f_q(tau, p)
    return q, p


class SymplecticEuler(Stepper):
    """Symplectic Euler, q first: ``q += h f_q(p)``, then ``p += h f_p(q_new)``.

    The Hamiltonian network of Ruthotto & Haber (2020), eq. (14). Order 1, symplectic;
    its inverse is the p-first variant run with ``-h``, which is what ``h < 0`` does.
    Reference: Hairer, Lubich, Wanner, *Geometric Numerical Integration*, Thm. VI.3.3.
    """

    name = "symplectic_euler"
    order = 1
    evals = (1, 1)

    def step(self, func, t, h, state):
        tau = t + 0.5 * h
        if h >= 0:
            return _q_then_p(func, tau, h, *state)
        return _p_then_q(func, tau, h, *state)


class Leapfrog(Stepper):
    """The leapfrog of Ruthotto & Haber (2020), eq. (17), in staggered one-step form.

    ``p += h f_p(q)``, then ``q += h f_q(p_new)``. For ``y'' = f(t, y)`` with ``q = y``,
    ``p = v`` this is ``y_{j+1} = 2 y_j - y_{j-1} + h^2 f(t_j, y_j)`` with
    ``y_{-1} = y_0 - h v_0`` (the paper's ``Y_{-1} = Y_0`` when ``v_0 = 0``), and ``p`` holds
    the backward difference ``(y_j - y_{j-1}) / h``. The two-step recursion is second order,
    but that starting value is only first-order accurate, so the global error is O(h):
    order 1. Symplectic and exactly reversible (``h < 0`` applies the inverse).
    """

    name = "leapfrog"
    order = 1
    evals = (1, 1)

    def step(self, func, t, h, state):
        tau = t + 0.5 * h
        if h >= 0:
            return _p_then_q(func, tau, h, *state)
        return _q_then_p(func, tau, h, *state)


def _verlet(func: SplitFunc, t: Tensor, h: float, q: Tensor, p: Tensor) -> SplitState:
    f_q, f_p = func
    tau = t + 0.5 * h
    p = p + (0.5 * h) * f_p(tau, q)
    q = q + h * f_q(tau, p)
    p = p + (0.5 * h) * f_p(tau, q)
    return q, p


class Verlet(Stepper):
    """Störmer–Verlet (kick–drift–kick) with time frozen at the cell midpoint.

    Order 2, symplectic, symmetric: the step with ``-h`` from ``t + h`` is its exact inverse.
    Reference: Hairer, Lubich, Wanner, *Geometric Numerical Integration*, Sect. I.3.1.
    """

    name = "verlet"
    order = 2
    symmetric = True
    evals = (1, 2)

    def step(self, func, t, h, state):
        return _verlet(func, t, h, *state)


class Yoshida4(Stepper):
    """Yoshida's fourth-order triple jump: Verlet steps of ``w1 h, w0 h, w1 h``.

    ``w1 = 1 / (2 - 2^{1/3})``, ``w0 = 1 - 2 w1`` (negative). Order 4, symplectic,
    symmetric. Reference: H. Yoshida, Phys. Lett. A 150 (1990) 262–268.
    """

    name = "yoshida4"
    order = 4
    symmetric = True
    evals = (3, 6)

    def step(self, func, t, h, state):
        q, p = state
        q, p = _verlet(func, t, _W1 * h, q, p)
        q, p = _verlet(func, t + _W1 * h, _W0 * h, q, p)
        q, p = _verlet(func, t + (_W1 + _W0) * h, _W1 * h, q, p)
        return q, p


STEPPERS: dict[str, Stepper] = {}


def register_stepper(stepper: Stepper) -> Stepper:
    """Register a :class:`Stepper` instance under ``stepper.name`` for ``solvers.odeint``.

    Args:
        stepper: an instance with ``name``, ``order``, ``evals`` and ``step``.

    Returns:
        the same stepper, so the call can be used as a one-liner after the class.

    Raises:
        ValueError: if the name is empty or already taken.
    """
    if not stepper.name:
        raise ValueError("register_stepper: the stepper has no `name`; set a class attribute")
    if stepper.name in STEPPERS:
        raise ValueError(
            f"register_stepper: a stepper named {stepper.name!r} is already registered"
        )
    STEPPERS[stepper.name] = stepper
    return stepper


for _cls in (SymplecticEuler, Leapfrog, Verlet, Yoshida4):
    register_stepper(_cls())
