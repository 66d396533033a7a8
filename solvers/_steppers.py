"""Symplectic one-step methods for separable split systems, described by splitting tableaux.

A split system is ``dq/dt = f_q(t, p)``, ``dp/dt = f_p(t, q)`` with state ``(q, p)``. Each
half on its own is solved exactly by one Euler update: a *drift* ``q <- q + a h f_q(τ, p)``
(p fixed) or a *kick* ``p <- p + a h f_p(τ, q)`` (q fixed). A splitting method is a fixed
sequence of drifts and kicks; it is symplectic because each of them is the exact flow of a
Hamiltonian, and its order comes from the coefficients (Hairer, Lubich & Wanner, *Geometric
Numerical Integration*, 2nd ed., Sect. II.5 and III.5). A :class:`SplittingStepper` is that
sequence written down once — its *splitting tableau* — from which the step, its inverse
and the reversible backward pass (``_reversible``) are all generated.

Time. Each substep evaluates at ``τ = t + c h`` with a node ``c`` strictly inside (0, 1):
a piecewise-constant, right-open θ(t) (θ_j on [t_j, t_{j+1})) then always yields θ_j for
step j, in either direction of time (an evaluation at ``t + h`` would use θ_{j+1}, where
the paper's schemes, Ruthotto & Haber 2020 eqs. (14) and (17), use θ_j). Freezing time
at a symmetric node is Strang splitting of ``dt/dt = 1`` around the frozen-time map, so
symmetry and order survive for time-dependent right-hand sides.

Direction. A step with ``h < 0`` from ``t`` applies the *adjoint* method: the tableau read
backwards, with the nodes mirrored (``c -> 1 - c``). That is the exact inverse of the forward
step over the same cell, so integrating forward and then backward over the same grid
returns to the start up to round-off, for every splitting stepper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor

from ._methods import register_stepper

SplitFunc = tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]
SplitState = tuple[Tensor, Tensor]
# One substep as the drivers use it: (0 = drift of q by f_q(τ, p), 1 = kick of p by
# f_p(τ, q), τ, coefficient a * h).
Substep = tuple[int, Tensor, float]

_HALVES = {"drift": 0, "kick": 1}


class Stepper:
    """A one-step method for a split state ``(q, p)``.

    The general contract; a splitting method is best written as a
    :class:`SplittingStepper`, which generates ``step`` and its inverse from its tableau.

    Attributes:
        name: the registered method name.
        order: the global order of convergence.
        symplectic: whether the map preserves the symplectic form.
        symmetric: whether the method equals its adjoint (``verlet``, ``yoshida4``).
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
        return f"{type(self).__name__}(name={self.name!r}, order={self.order})"


class SplittingStepper(Stepper):
    """A symplectic splitting method given by its splitting tableau.

    The tableau is the sequence of substeps of one step of size ``h`` from ``t``, each
    ``(kind, a, c)``: ``kind`` is ``"drift"`` (``q += a h f_q(t + c h, p)``) or ``"kick"``
    (``p += a h f_p(t + c h, q)``). The drift coefficients sum to 1, so do the kick
    coefficients (consistency), and every node ``c`` lies strictly inside (0, 1). From the
    tableau come ``step`` (``h < 0`` applies the adjoint method, the exact inverse of the
    step over the same cell), :meth:`inverse`, ``evals``, ``symmetric`` and, in
    ``memory="reversible"``, the backward pass.

    Args:
        name: the method name it is registered under.
        order: the global order of convergence (read by the order tests).
        tableau: the substeps ``(kind, a, c)`` in the order they are applied.
        reference: where the method is published.

    Raises:
        ValueError: an unknown substep kind, a node outside (0, 1), non-finite coefficients,
            or drift/kick coefficients that do not each sum to 1.

    Reference: Hairer, Lubich & Wanner, *Geometric Numerical Integration*, Sect. II.5
    (composition and splitting methods).
    """

    def __init__(
        self,
        name: str,
        order: int,
        tableau: Sequence[tuple[str, float, float]],
        reference: str = "",
    ):
        rows = []
        for row in tableau:
            if len(row) != 3 or row[0] not in _HALVES:
                raise ValueError(
                    f"{name}: a tableau row is (kind, a, c) with kind 'drift' or 'kick', "
                    f"got {row!r}"
                )
            kind, a, c = row[0], float(row[1]), float(row[2])
            if not (math.isfinite(a) and 0.0 < c < 1.0):
                raise ValueError(
                    f"{name}: row {row!r} needs a finite coefficient a and a node c strictly "
                    "inside (0, 1) (an evaluation at the cell's end would use the next cell's "
                    "weights)"
                )
            rows.append((kind, a, c))
        for kind in _HALVES:
            total = sum(a for k, a, _ in rows if k == kind)
            if abs(total - 1.0) > 1e-12:
                raise ValueError(
                    f"{name}: the {kind} coefficients sum to {total}, not 1; the method would "
                    "not be consistent"
                )
        self.name = name
        self.order = int(order)
        self.tableau: tuple[tuple[str, float, float], ...] = tuple(rows)
        self.reference = reference
        self.symplectic = True
        self.evals = (
            sum(k == "drift" for k, _, _ in rows),
            sum(k == "kick" for k, _, _ in rows),
        )
        adjoint = [(k, a, 1.0 - c) for k, a, c in reversed(rows)]
        self.symmetric = all(
            k1 == k2 and abs(a1 - a2) < 1e-12 and abs(c1 - c2) < 1e-12
            for (k1, a1, c1), (k2, a2, c2) in zip(rows, adjoint)
        )

    def substeps(self, t: Tensor, h: float) -> list[Substep]:
        """The substeps ``(half, τ, a h)`` of the step of ``h`` from ``t`` (half 0: drift)."""
        if h >= 0:
            return [(_HALVES[k], t + c * h, a * h) for k, a, c in self.tableau]
        # The adjoint method: the forward step over the cell [t + h, t], undone.
        return [(_HALVES[k], t + (1.0 - c) * h, a * h) for k, a, c in reversed(self.tableau)]

    def step(self, func: SplitFunc, t: Tensor, h: float, state: SplitState) -> SplitState:
        """Advance ``state = (q, p)`` from ``t`` by ``h``; see :meth:`Stepper.step`.

        Args:
            func: ``(f_q, f_p)``.
            t: 0-d tensor, the start of the step's cell ``[t, t + h]``.
            h: the step, a Python float (``h < 0``: the adjoint method, inverting the step).
            state: ``(q, p)``, two tensors ``(*shape)`` each.

        Returns:
            The new ``(q, p)``, shapes unchanged.
        """
        f_q, f_p = func
        q, p = state
        for half, tau, coef in self.substeps(t, h):
            if half == 0:
                q = q + coef * f_q(tau, p)
            else:
                p = p + coef * f_p(tau, q)
        return q, p

    def inverse(self, func: SplitFunc, t: Tensor, h: float, state: SplitState) -> SplitState:
        """The state ``y`` with ``step(func, t, h, y) == state``, to round-off.

        Every substep is undone with the same evaluation time: ``x <- x - a h f(τ, y)``.
        ``state = (q, p)``, two tensors ``(*shape)`` each; returns the same shapes.
        """
        f_q, f_p = func
        q, p = state
        for half, tau, coef in reversed(self.substeps(t, h)):
            if half == 0:
                q = q - coef * f_q(tau, p)
            else:
                p = p - coef * f_p(tau, q)
        return q, p

    def __repr__(self) -> str:
        return f"SplittingStepper(name={self.name!r}, order={self.order}, tableau={self.tableau})"


# Yoshida (1990), "Construction of higher order symplectic integrators", Phys. Lett. A 150.
_CBRT2 = 2.0 ** (1.0 / 3.0)
_W1 = 1.0 / (2.0 - _CBRT2)
_W0 = -_CBRT2 / (2.0 - _CBRT2)


def _verlet_rows(w: float, start: float) -> list[tuple[str, float, float]]:
    """Kick–drift–kick of relative size ``w`` starting at relative time ``start``."""
    mid = start + 0.5 * w
    return [("kick", 0.5 * w, mid), ("drift", w, mid), ("kick", 0.5 * w, mid)]


# The built-in methods: every number below is the whole description of a method.
register_stepper(
    SplittingStepper(
        "symplectic_euler",
        order=1,
        tableau=[("drift", 1.0, 0.5), ("kick", 1.0, 0.5)],
        reference="Ruthotto & Haber (2020), eq. (14); Hairer, Lubich & Wanner, Thm. VI.3.3",
    )
)
register_stepper(
    SplittingStepper(
        # The paper's leapfrog, eq. (17), in staggered one-step form: with q = y, p = v it is
        # y_{j+1} = 2 y_j - y_{j-1} + h^2 f(t_j, y_j) with y_{-1} = y_0 - h v_0. The two-step
        # recursion is second order but that start is first-order accurate: order 1.
        "leapfrog",
        order=1,
        tableau=[("kick", 1.0, 0.5), ("drift", 1.0, 0.5)],
        reference="Ruthotto & Haber (2020), eq. (17)",
    )
)
register_stepper(
    SplittingStepper(
        "verlet",
        order=2,
        tableau=_verlet_rows(1.0, 0.0),
        reference="Störmer–Verlet; Hairer, Lubich & Wanner, Sect. I.3.1",
    )
)
register_stepper(
    SplittingStepper(
        # The triple jump: Verlet steps of w1 h, w0 h, w1 h (w0 < 0).
        "yoshida4",
        order=4,
        tableau=_verlet_rows(_W1, 0.0) + _verlet_rows(_W0, _W1) + _verlet_rows(_W1, _W1 + _W0),
        reference="H. Yoshida, Phys. Lett. A 150 (1990) 262-268",
    )
)
