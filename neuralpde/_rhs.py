"""Right-hand sides ``forward(t, y)``: the dynamics of each network, θ(t) inside.

:class:`RHS` is the contract every dynamics follows — the paper's three networks, the
ResNet control, the image filters and a user's own. Each module is exactly what
``torchdiffeq.odeint`` calls. A split dynamics takes and returns the first-order system
``(q, p)`` and also exposes its separable parts ``(f_q, f_p)`` for the symplectic steppers
of :mod:`solvers`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

import solvers

from ._layers import (
    TV_EPS,
    biased_symmetric_layer,
    check_image,
    init_kernel,
    resnet_layer,
    symmetric_layer,
)
from ._lipschitz import scheme_lipschitz, steps_of
from ._spectra import Spectrum, kernel_spectrum, symbol_rho
from ._weights import TimeWeights

# How a stage input x (batch, c, h, w) becomes the ODE state, and the state the output.
STATES = ("single", "halves", "velocity")


# The normalization N between K and σ in the symmetric layer: the paper's total-variation
# normalization (gain up to |scale|/sqrt(ε)), an elementwise bias (gain 1: the rate is
# ρ(KᵀK) exactly, what a stability guarantee needs; docs/concepts.md), or none.
NORMALIZATIONS = ("tv", "bias", "none")


def _check_normalization(normalization: str, who: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"{who}: normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
        )


def _symmetric_weights(
    channels: int, n: int, T: float, interpolation: str, normalization: str = "tv"
) -> TimeWeights:
    params = {"weight": torch.stack([init_kernel(channels, channels, 3, 3) for _ in range(n)])}
    if normalization == "tv":
        params["scale"] = torch.ones(n, channels)
    if normalization != "none":
        params["shift"] = torch.zeros(n, channels)
    return TimeWeights(params, T, interpolation)


def _symmetric(y: Tensor, w: dict[str, Tensor], eps: float, negate: bool = False) -> Tensor:
    """``∓Kᵀ σ(N(K y))`` with the normalization the weights ``w`` of θ(t) carry."""
    if "scale" not in w and "shift" in w:
        return biased_symmetric_layer(y, w["weight"], w["shift"], negate=negate)
    return symmetric_layer(y, w["weight"], w.get("scale"), w.get("shift"), eps, negate=negate)


def _rho_max(weight: Tensor, height: int, width: int) -> float:
    """The largest rigorous bound of ``ρ(KᵀK)`` over a stack of kernels (float64)."""
    with torch.no_grad():
        return float(symbol_rho(weight.detach().to(torch.float64), height, width).max())


def _gain(theta: TimeWeights, eps: float) -> float:
    """The Lipschitz constant of N: 1 for a bias or none; for the TV normalization
    ``max|scale| / sqrt(ε)`` (the Jacobian of ``z / sqrt(|z|² + ε)`` has norm ``1/sqrt(|z|²
    + ε)`` at most)."""
    if "scale" not in theta.names:
        return 1.0
    return float(theta.scale.detach().abs().max()) / math.sqrt(eps)


def _check_images(y, channels: int | None, who: str, name: str) -> None:
    if channels is not None:
        check_image(y, channels, who, name)
    elif not isinstance(y, Tensor):
        raise TypeError(f"{who}: {name} must be a tensor, got {type(y).__name__}")
    elif y.dim() != 4:
        raise ValueError(
            f"{who}: {name} must have shape (batch, channels, height, width), got {tuple(y.shape)}"
        )


class RHS(nn.Module):
    """The right-hand side ``F(t, y)`` of a stage: the contract of every dynamics.

    A subclass is an ``nn.Module`` whose ``forward(t, y)`` is what ``torchdiffeq.odeint``
    calls, and declares four things that :class:`~neuralpde.Stage`,
    :class:`~neuralpde.PDECNN`, :func:`neuralpde.stability.report`, reversible memory and
    :func:`~neuralpde.time_smoothness` read, so that each works for every subclass:

    * **its state** (class attribute ``state``): ``"single"`` — the state is the stage input
      ``y = x``, and ``forward(t, y)`` is implemented; ``"halves"`` — the split state
      ``(q, p)`` is the two channel halves of ``x`` (the width must be even) and the output
      is ``cat(q, p)``; ``"velocity"`` — ``(q, p) = (x, 0)``, position and zero velocity of
      a second-order equation, and the output is ``q``. A split dynamics implements
      ``f_q(t, p)`` (``dq/dt``) and ``f_p(t, q)`` (``dp/dt``); ``forward`` is then derived.
      Split states are what symplectic methods and ``memory="reversible"`` need.
    * **its default method** (class attribute ``default_method``): the scheme the dynamics
      was designed for, used by a stage unless told otherwise.
    * **its time-dependent weights**: every :class:`~neuralpde.TimeWeights` among its
      submodules (:meth:`thetas`), found without a list to maintain.
    * **its stability limit**: :meth:`spectrum`, which the stability report calls (the
      base class declares none).

    Subclassing a dynamics inherits all four: ``class MyRHS(ParabolicRHS): pass`` is a
    working parabolic dynamics. ``neuralpde.register_arch("mine", MyRHS)`` makes it an
    ``arch`` of :class:`~neuralpde.PDECNN`.

    Args:
        channels: ``c``, the width of the stage input ``(batch, c, h, w)``; ``None``
            accepts any width (the image filters).
        steps: number of steps of size ``step_size`` (for a network: parameter sets, the
            cells or knots of θ(t)) over ``[0, T]``.
        step_size: the step ``h`` the dynamics was designed or trained with, a stage's
            default step; ``T = steps * h``.
        interpolation: θ(t) between steps, ``"constant"`` (the paper) or ``"linear"``; for
            subclasses that build :class:`~neuralpde.TimeWeights`.

    Raises:
        ValueError: a width the state cannot take (see :meth:`check_width`), a
            non-positive ``steps`` or ``step_size``.
        TypeError: at class creation, an unknown ``state`` or a non-string
            ``default_method``.
    """

    state: ClassVar[str] = "single"
    default_method: ClassVar[str] = "euler"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.state not in STATES:
            raise TypeError(f"{cls.__name__}.state must be one of {STATES}, got {cls.state!r}")
        if not isinstance(cls.default_method, str):
            raise TypeError(
                f"{cls.__name__}.default_method must be a method name such as 'euler', got "
                f"{cls.default_method!r}"
            )

    def __init__(
        self,
        channels: int | None,
        steps: int = 3,
        step_size: float = 1.0,
        interpolation: str = "constant",
    ):
        super().__init__()
        who = type(self).__name__
        if channels is not None:
            type(self).check_width(channels)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{who}: steps must be a positive int, got {steps!r}")
        if (
            isinstance(step_size, bool)
            or not isinstance(step_size, (int, float))
            or not math.isfinite(step_size)
            or step_size <= 0
        ):
            raise ValueError(
                f"{who}: step_size must be a positive finite number, got {step_size!r}"
            )
        self.channels = channels
        self.steps = steps
        self.step_size = float(step_size)
        self.T = steps * float(step_size)
        self.interpolation = interpolation

    @property
    def split(self) -> bool:
        """Whether the state is the split pair ``(q, p)`` (``state != "single"``)."""
        return self.state != "single"

    @classmethod
    def check_width(cls, channels: int) -> None:
        """Raise ``ValueError`` unless ``channels`` is a width this dynamics can take.

        The rule, in this one place: a positive int, and even when the state is the two
        channel halves (``state = "halves"``).
        """
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"{cls.__name__}: channels must be a positive int, got {channels!r}")
        if cls.state == "halves" and channels % 2:
            raise ValueError(
                f"{cls.__name__}: channels must be even to split the state into (q, p) "
                f"halves, got {channels}; use an even width such as {channels + 1}"
            )

    @classmethod
    def check_solver(cls, method: str, memory: str) -> None:
        """Raise ``ValueError`` unless a solver with ``method`` and ``memory`` can integrate
        this dynamics: what the state allows, in this one place.

        A symplectic method, and ``memory="reversible"``, need a split state ``(q, p)``.
        (What a method allows whatever the dynamics, e.g. that reversible memory needs a
        symplectic method, is checked by :mod:`solvers`.)

        Args:
            method: a name from :func:`solvers.methods`.
            memory: ``"autograd"``, ``"reversible"`` or ``"adjoint"``.
        """
        kind = solvers.methods().get(method)
        if kind == "symplectic" and cls.state == "single":
            raise ValueError(
                f"{method!r} needs a split (q, p) system, but {cls.__name__} declares a single "
                f"state (state = {cls.state!r}); use a Runge–Kutta method such as 'euler', "
                "'rk4' or 'dopri5', or, if it defines f_q and f_p, declare state = 'halves' "
                "(or 'velocity') on the class"
            )
        if memory == "reversible" and cls.state == "single":
            raise ValueError(
                f"memory='reversible' needs a time-reversible stage, and the {cls.__name__} "
                f"stage is not reversible (it declares state = {cls.state!r}, not split into "
                "(q, p)): its earlier states cannot be recomputed from later ones. Use "
                "memory='adjoint' (constant memory, approximate gradient) or "
                "memory='autograd', or, if it defines f_q and f_p, declare state = 'halves'"
            )

    def thetas(self) -> list[TimeWeights]:
        """All :class:`TimeWeights` among this module's submodules, in definition order."""
        return [m for m in self.modules() if isinstance(m, TimeWeights)]

    def jump_times(self) -> list[float]:
        """Times where θ(t) jumps (for adaptive solvers' ``jump_t``)."""
        return sorted({t for w in self.thetas() for t in w.jump_times()})

    def refine(self, factor: int):
        """Prolongate every θ(t) of this right-hand side onto ``factor``× the parameter
        sets (:meth:`TimeWeights.refine`), in place: ``steps`` grows by ``factor``,
        ``step_size`` (the cell width) shrinks by it and ``T`` is unchanged.

        Returns ``self``; raises ``ValueError`` for a ``factor`` that is not a positive int.
        """
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(
                f"{type(self).__name__}.refine: factor must be a positive int, got {factor!r}"
            )
        for w in self.thetas():
            w.refine(factor)
        self.steps *= factor
        self.step_size = self.T / self.steps
        return self

    def to_state(self, x: Tensor):
        """The ODE's initial state for a stage input ``x: (batch, channels, h, w)``:
        ``x``, the pair of its channel halves, or ``(x, 0)``, as ``state`` declares."""
        _check_images(x, self.channels, type(self).__name__, "x")
        if self.state == "halves":
            if x.shape[1] % 2:
                raise ValueError(
                    f"{type(self).__name__}: x needs an even number of channels to split into "
                    f"(q, p) halves, got {x.shape[1]}"
                )
            q, p = x.chunk(2, dim=1)
            return q, p
        if self.state == "velocity":
            return x, torch.zeros_like(x)
        return x

    def from_state(self, state) -> Tensor:
        """The stage output ``(batch, channels, h, w)`` from the ODE state at time ``T``."""
        if self.state == "halves":
            return torch.cat(state, dim=1)
        if self.state == "velocity":
            return state[0]
        return state

    @property
    def separable(self):
        """``(f_q, f_p)``: the split right-hand side for the symplectic steppers."""
        if not self.split:
            raise AttributeError(
                f"{type(self).__name__} has a single state and no separable (f_q, f_p) form"
            )
        return (self.f_q, self.f_p)

    def f_q(self, t: Tensor, p: Tensor) -> Tensor:
        """``dq/dt`` of a split dynamics, from ``p``."""
        raise NotImplementedError(f"{type(self).__name__} (a split dynamics) must define f_q")

    def f_p(self, t: Tensor, q: Tensor) -> Tensor:
        """``dp/dt`` of a split dynamics, from ``q``."""
        raise NotImplementedError(f"{type(self).__name__} (a split dynamics) must define f_p")

    def forward(self, t: Tensor, y):
        """``F(t, y)``. A split dynamics returns ``(f_q(t, p), f_p(t, q))`` for ``y = (q, p)``;
        a single-state one must override this."""
        if not self.split:
            raise NotImplementedError(
                f"{type(self).__name__} has a single state and must define forward(t, y)"
            )
        if not (isinstance(y, tuple) and len(y) == 2):
            raise TypeError(
                f"{type(self).__name__}: the state must be the tuple (q, p); got "
                f"{type(y).__name__} — use to_state(x) to build it from a (batch, channels, "
                "height, width) tensor"
            )
        q, p = y
        dp = self.f_p(t, q)  # q first: a malformed state is reported in the order (q, p)
        return self.f_q(t, p), dp

    def spectrum(
        self, height: int, width: int, *, iters: int = 500, tol: float = 1e-6, seed: int = 0
    ) -> Spectrum | None:
        """The frozen-coefficient linearization at images of ``height × width``, for
        :func:`neuralpde.stability.report`; ``None`` (the default): no limit declared.

        Args:
            height, width: the spatial size the stage runs at.
            iters, tol, seed: for :func:`neuralpde.stability.kernel_spectrum`.

        Returns:
            A :class:`~neuralpde.stability.Spectrum`, or ``None``.
        """
        return None

    def rates(self, rho: Callable[[Tensor], Tensor]) -> Tensor | None:
        """The largest rate ``z_j`` of the linearization for each of the ``steps`` parameter
        sets, differentiable in the weights: what :class:`~neuralpde.stability.StabilityPenalty`
        bounds during training. It is the rate :meth:`spectrum` reports, written with
        ``rho`` instead of a converged eigenvalue solver. ``None`` (the default): none
        declared, and the penalty refuses a dynamics whose :meth:`spectrum` declares a
        step limit.

        Args:
            rho: ``rho(K) -> (steps,)``: an estimate of ``ρ(KᵀK)`` per parameter set for a
                kernel ``K (steps, c_out, c_in, kh, kw)`` (odd ``kh``, ``kw``, zero-padded
                "same" convolution), differentiable in ``K``. Call it once per kernel, in
                the same order on every call (each kernel keeps its own warm-started
                power-iteration vector).

        Returns:
            ``z (steps,)``, e.g. ``rho(K)`` for ``Y' = -KᵀDK Y``, or ``None``.
        """
        return None

    def lipschitz(
        self, height: int, width: int, method: str, step_size: float | None
    ) -> float | None:
        """An upper bound of the ℓ2 Lipschitz constant of the stage's map, input
        ``(batch, channels, height, width)`` to output, under ``method`` with ``step_size``,
        at the current weights (every ``θ(t)``, ``t`` in ``[0, T]``): what
        :func:`neuralpde.lipschitz_bound` multiplies.
        ``None`` (the default): no bound declared, and the network's bound is infinite.

        It must be rigorous (never a power-iteration estimate): with ``L`` a bound of the
        field's Lipschitz constant, :func:`neuralpde.stability.scheme_lipschitz` gives one
        for any method. The state maps are isometries or projections (the channel halves
        ``(q, p)``; ``(x, 0)`` and its position), so the bound on the state is one on the map.

        Args:
            height, width: the image size the stage runs at.
            method: a name from :func:`solvers.methods`.
            step_size: the step (``None`` for an adaptive method).

        Returns:
            A float ``>= 0`` (``math.inf`` where the bound overflows), or ``None``.
        """
        return None

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, steps={self.steps}, step_size={self.step_size}, "
            f"interpolation={self.interpolation!r}"
        )


class ParabolicRHS(RHS):
    """``dY/dt = F_sym(θ(t), Y) = -K(t)ᵀ relu(N(K(t) Y))``: the parabolic (heat-like) network.

    Stable for any non-decreasing activation (Ruthotto & Haber 2020, Theorem 1). Default
    method: forward Euler, the paper's ResNet step.

    Args:
        channels: ``c``; the state is ``(batch, c, h, w)``.
        steps: number of parameter sets (cells or knots) over ``[0, T]``.
        step_size: the training step ``h``; ``T = steps * h``.
        interpolation: ``"constant"`` (ResNet-like θ_j per step) or ``"linear"``.
        normalization: N, ``"tv"`` (the paper's total-variation normalization, with a
            per-channel scale and shift), ``"bias"`` (``N(z) = z + b``: gain 1, so the rate
            is exactly ``ρ(KᵀK)`` and ``h ρ <= 2`` makes a forward-Euler step
            non-expansive) or ``"none"`` (``F = -Kᵀ relu(K Y)``).

    ``forward(t, y)``: ``t`` 0-d tensor, ``y (batch, c, h, w)`` -> ``(batch, c, h, w)``.
    """

    default_method = "euler"

    def __init__(
        self, channels, steps=3, step_size=1.0, interpolation="constant", normalization="tv"
    ):
        super().__init__(channels, steps, step_size, interpolation)
        _check_normalization(normalization, type(self).__name__)
        self.normalization = normalization
        self.eps = TV_EPS
        self.theta = _symmetric_weights(channels, steps, self.T, interpolation, normalization)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        check_image(y, self.channels, type(self).__name__, "y")
        return _symmetric(y, self.theta(t), self.eps)

    def spectrum(self, height, width, *, iters=500, tol=1e-6, seed=0) -> Spectrum:
        """A mode of ``Y' = -KᵀDK Y`` (``0 <= D <= I``) decays at a rate up to ``ρ(KᵀK)``:
        ``"dissipative"`` with ``z = ρ``; forward Euler needs ``h <= 2/ρ``."""
        rho = kernel_spectrum(self.theta.weight, height, width, iters=iters, tol=tol, seed=seed)
        return Spectrum("dissipative", {"K": rho}, rho, self.normalization == "tv")

    def rates(self, rho):
        """``z = ρ(KᵀK)`` per parameter set (see :meth:`spectrum`)."""
        return rho(self.theta.weight)

    def lipschitz(self, height, width, method, step_size):
        """With an elementwise bias (or none), ``F = -∇Φ`` with ``Φ = ½‖relu(KY + b)‖²``
        convex and ``ρ``-smooth, ``ρ = max_j ρ̄(K_jᵀK_j)`` (:func:`~neuralpde.stability.symbol_rho`, rigorous; a
        linearly interpolated ``K(t)`` has no larger norm). Then a forward-Euler step with
        ``h ρ <= 2`` is non-expansive (``∇Φ`` is ``1/ρ``-cocoercive, Baillon & Haddad
        1977), and so is the flow (``F`` is monotone): the bound is 1. Beyond the limit a
        forward-Euler step is ``max(1, h ρ - 1)``-Lipschitz (its Jacobians ``I - h KᵀDK``,
        ``0 <= D <= I``, are symmetric with eigenvalues in ``[1 - h ρ, 1]``), so a network
        constrained at one image size and bounded at another, where ``ρ̄`` is a little
        larger, loses a little, not everything. Other methods, and the TV normalization
        (gain ``max|scale|/sqrt(ε)``): :func:`~neuralpde.stability.scheme_lipschitz` of
        the field's Lipschitz constant ``ρ · gain``."""
        rho = _rho_max(self.theta.weight, height, width)
        if self.normalization != "tv":
            if solvers.methods().get(method) == "adaptive":
                return 1.0
            if method == "euler":
                return max(1.0, step_size * rho - 1.0) ** steps_of(self.T, step_size)
        return scheme_lipschitz(method, step_size, self.T, rho * _gain(self.theta, self.eps))


class ResNetRHS(RHS):
    """``dY/dt = K2(t) relu(N(K1(t) Y))``: the non-symmetric ResNet control.

    Args as :class:`ParabolicRHS`; ``18c² + 2c`` parameters per step.

    ``forward(t, y)``: ``t`` 0-d tensor, ``y (batch, c, h, w)`` -> ``(batch, c, h, w)``.
    """

    default_method = "euler"

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant"):
        super().__init__(channels, steps, step_size, interpolation)
        self.eps = TV_EPS
        self.theta = TimeWeights(
            {
                "weight1": torch.stack(
                    [init_kernel(channels, channels, 3, 3) for _ in range(steps)]
                ),
                "weight2": torch.stack(
                    [init_kernel(channels, channels, 3, 3) for _ in range(steps)]
                ),
                "scale": torch.ones(steps, channels),
                "shift": torch.zeros(steps, channels),
            },
            self.T,
            interpolation,
        )

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        check_image(y, self.channels, type(self).__name__, "y")
        w = self.theta(t)
        return resnet_layer(y, w["weight1"], w["weight2"], w["scale"], w["shift"], self.eps)

    def spectrum(self, height, width, *, iters=500, tol=1e-6, seed=0) -> Spectrum:
        """No step limit: the linearization ``K2 D K1`` is not symmetric and may have
        eigenvalues with positive real part. ``rho`` is ``‖K2K1‖²`` (layer ``"K2K1"``)."""
        th = self.theta
        rho = kernel_spectrum(
            (th.weight1, th.weight2), height, width, iters=iters, tol=tol, seed=seed
        )
        return Spectrum(None, {"K2K1": rho}, None, True)

    def lipschitz(self, height, width, method, step_size):
        """:func:`~neuralpde.stability.scheme_lipschitz` of the field's Lipschitz constant ``‖K2‖ ‖K1‖`` times
        the TV normalization's gain ``max|scale|/sqrt(ε)``."""
        k1 = _rho_max(self.theta.weight1, height, width)
        k2 = _rho_max(self.theta.weight2, height, width)
        L = math.sqrt(k1 * k2) * _gain(self.theta, self.eps)
        return scheme_lipschitz(method, step_size, self.T, L)


def _with_neighbours(x: Tensor) -> Tensor:
    """``(n,)`` -> ``(n,)``: the largest of each entry and its neighbours (differentiable)."""
    padded = torch.cat([x[:1], x, x[-1:]])
    return torch.maximum(torch.maximum(padded[:-2], padded[1:-1]), padded[2:])


class HamiltonianRHS(RHS):
    """The Hamiltonian network on a channel split ``Y | Z`` (the paper's eq. (14)).

    ``dq/dt = F_sym(θ1(t), p)``, ``dp/dt = -F_sym(θ2(t), q)`` with ``q = Y``, ``p = Z``, each
    layer on ``c/2`` channels. With symplectic Euler (q first, the default method) and
    h = 1 this is ``Y_{j+1} = Y_j + h F(θ1_j, Z_j)``, ``Z_{j+1} = Z_j - h F(θ2_j, Y_{j+1})``.

    Args:
        channels: ``c``, even; the stage input ``(batch, c, h, w)`` is split in halves.
        steps, step_size, interpolation, normalization: as :class:`ParabolicRHS`.

    ``forward(t, (q, p))`` -> ``(dq/dt, dp/dt)``, each ``(batch, c/2, h, w)``.
    ``separable`` is the pair ``(f_q, f_p)`` for the symplectic steppers.
    """

    state = "halves"
    default_method = "symplectic_euler"

    def __init__(
        self, channels, steps=3, step_size=1.0, interpolation="constant", normalization="tv"
    ):
        super().__init__(channels, steps, step_size, interpolation)
        _check_normalization(normalization, type(self).__name__)
        half = channels // 2
        self.normalization = normalization
        self.eps = TV_EPS
        self.theta_q = _symmetric_weights(half, steps, self.T, interpolation, normalization)
        self.theta_p = _symmetric_weights(half, steps, self.T, interpolation, normalization)

    def f_q(self, t: Tensor, p: Tensor) -> Tensor:
        """``dq/dt = F_sym(θ1(t), p)``; ``p (batch, c/2, h, w)``."""
        check_image(p, self.channels // 2, "HamiltonianRHS.f_q", "p")
        return _symmetric(p, self.theta_q(t), self.eps)

    def f_p(self, t: Tensor, q: Tensor) -> Tensor:
        """``dp/dt = -F_sym(θ2(t), q)``; ``q (batch, c/2, h, w)``."""
        check_image(q, self.channels // 2, "HamiltonianRHS.f_p", "q")
        return _symmetric(q, self.theta_p(t), self.eps, negate=True)

    def spectrum(self, height, width, *, iters=500, tol=1e-6, seed=0) -> Spectrum:
        """``Y' = -A Z``, ``Z' = B Y`` (``A = K1ᵀD1K1``, ``B = K2ᵀD2K2``) oscillates with
        ``ω² <= ρ(K1ᵀK1) ρ(K2ᵀK2)``: ``"oscillatory"`` with ``z = sqrt(ρ1 ρ2)``.

        With ``interpolation="linear"`` each factor is the largest of the knot's and its
        neighbours' (:meth:`rates`), so that the rate bounds every ``t`` between knots."""
        kw = {"iters": iters, "tol": tol, "seed": seed}
        k1 = kernel_spectrum(self.theta_q.weight, height, width, **kw)
        k2 = kernel_spectrum(self.theta_p.weight, height, width, **kw)
        # Float64, as the rows: est[j] <= upper[j] must survive the rounding.
        est, upper = (
            self._pair_rates(
                torch.tensor([a[i] for a in k1], dtype=torch.float64),
                torch.tensor([b[i] for b in k2], dtype=torch.float64),
            ).tolist()
            for i in (0, 1)
        )
        rates = list(zip(est, upper))
        return Spectrum("oscillatory", {"K1": k1, "K2": k2}, rates, self.normalization == "tv")

    def rates(self, rho):
        """``z = sqrt(ρ(K1ᵀK1) ρ(K2ᵀK2))`` per parameter set (see :meth:`spectrum`).

        With ``interpolation="linear"`` between knots ``K1(t)`` and ``K2(t)`` are convex
        combinations of the two knots', so each ``ρ`` is at most the larger knot's, but the
        two can peak at different knots: the product between knots can exceed both knots'
        products. Each knot's rate then takes each factor's largest over the knot and its
        neighbours, which bounds every ``t`` of the two intervals it touches."""
        return self._pair_rates(rho(self.theta_q.weight), rho(self.theta_p.weight))

    def _pair_rates(self, rho1: Tensor, rho2: Tensor) -> Tensor:
        if self.interpolation == "linear":
            rho1, rho2 = _with_neighbours(rho1), _with_neighbours(rho2)
        return (rho1 * rho2).sqrt()

    def lipschitz(self, height, width, method, step_size):
        """:func:`~neuralpde.stability.scheme_lipschitz` on ``(q, p)`` with ``L_q = ρ̄(K1ᵀK1)·gain``, ``L_p =
        ρ̄(K2ᵀK2)·gain`` (a symplectic step: a product of shears; a Hamiltonian flow
        preserves volume, not distances, so there is no bound of 1)."""
        lq = _rho_max(self.theta_q.weight, height, width) * _gain(self.theta_q, self.eps)
        lp = _rho_max(self.theta_p.weight, height, width) * _gain(self.theta_p, self.eps)
        return scheme_lipschitz(method, step_size, self.T, (lq, lp))


class SecondOrderRHS(RHS):
    """The second-order (wave-like) network ``d²Y/dt² = F_sym(θ(t), Y)``, ``Y'(0) = 0``.

    As a first-order split system: ``dq/dt = p``, ``dp/dt = F_sym(θ(t), q)`` with ``q = Y``
    and ``p = dY/dt``. The leapfrog stepper (the default method) gives the paper's
    ``Y_{j+1} = 2Y_j - Y_{j-1} + h² F(θ_j, Y_j)``, ``Y_{-1} = Y_0``.

    Args:
        channels, steps, step_size, interpolation, normalization: as :class:`ParabolicRHS`.

    ``forward(t, (q, p))`` -> ``(p, F_sym(θ(t), q))``, each ``(batch, c, h, w)``.
    ``separable`` is the pair ``(f_q, f_p)`` for the symplectic steppers.
    """

    state = "velocity"
    default_method = "leapfrog"

    def __init__(
        self, channels, steps=3, step_size=1.0, interpolation="constant", normalization="tv"
    ):
        super().__init__(channels, steps, step_size, interpolation)
        _check_normalization(normalization, type(self).__name__)
        self.normalization = normalization
        self.eps = TV_EPS
        self.theta = _symmetric_weights(channels, steps, self.T, interpolation, normalization)

    def f_q(self, t: Tensor, p: Tensor) -> Tensor:
        """``dq/dt = p``."""
        return p

    def f_p(self, t: Tensor, q: Tensor) -> Tensor:
        """``dp/dt = F_sym(θ(t), q)``; ``q (batch, c, h, w)``."""
        check_image(q, self.channels, "SecondOrderRHS.f_p", "q")
        return _symmetric(q, self.theta(t), self.eps)

    def spectrum(self, height, width, *, iters=500, tol=1e-6, seed=0) -> Spectrum:
        """``Y'' = -KᵀDK Y`` oscillates with ``ω = sqrt(λ) <= sqrt(ρ)``: ``"oscillatory"``
        with ``z = sqrt(ρ)``; leapfrog needs ``h² ρ <= 4``."""
        rho = kernel_spectrum(self.theta.weight, height, width, iters=iters, tol=tol, seed=seed)
        rates = [(math.sqrt(lo), math.sqrt(hi)) for lo, hi in rho]
        return Spectrum("oscillatory", {"K": rho}, rates, self.normalization == "tv")

    def rates(self, rho):
        """``z = sqrt(ρ(KᵀK))`` per parameter set (see :meth:`spectrum`)."""
        return rho(self.theta.weight).sqrt()

    def lipschitz(self, height, width, method, step_size):
        """:func:`~neuralpde.stability.scheme_lipschitz` on ``(q, p)`` with ``L_q = 1`` (``dq/dt = p``) and
        ``L_p = ρ̄(KᵀK)·gain``."""
        lp = _rho_max(self.theta.weight, height, width) * _gain(self.theta, self.eps)
        return scheme_lipschitz(method, step_size, self.T, (1.0, lp))


_ARCHS: dict[str, type[RHS]] = {}


def register_arch(name: str, cls: type[RHS]) -> type[RHS]:
    """Register a dynamics under ``name``, for ``PDECNN(name, ...)`` and the experiments.

    Args:
        name: a new, non-empty name (lower case by convention, e.g. ``"reaction_diffusion"``).
        cls: a subclass of :class:`RHS` whose constructor takes
            ``(channels, steps, step_size, interpolation)``, as :class:`PDECNN` builds each
            stage with those.

    Returns:
        ``cls``, so the call can follow the class definition.

    Raises:
        ValueError: an empty name or one already taken.
        TypeError: ``cls`` is not a subclass of :class:`RHS`, or its constructor does not
            take ``(channels, steps, step_size, interpolation)``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_arch: name must be a non-empty string, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, RHS)):
        raise TypeError(f"register_arch: {cls!r} is not a subclass of neuralpde.RHS")
    if name in _ARCHS:
        raise ValueError(
            f"register_arch: {name!r} is already registered (as {_ARCHS[name].__name__}); "
            "choose another name"
        )
    _check_constructor(cls, "register_arch")
    _ARCHS[name] = cls
    return cls


def archs() -> dict[str, type[RHS]]:
    """``{name: RHS class}`` of every registered dynamics (a copy)."""
    return dict(_ARCHS)


def arch_name(cls: type[RHS]) -> str:
    """The name ``cls`` is registered under, else its class name."""
    for name, c in _ARCHS.items():
        if c is cls:
            return name
    return cls.__name__


def _check_constructor(cls: type[RHS], who: str) -> None:
    """Raise a TypeError unless ``cls(channels, steps, step_size, interpolation)`` binds."""
    try:
        inspect.signature(cls).bind(8, 3, 1.0, "constant")
    except TypeError as err:
        raise TypeError(
            f"{who}: a network builds each stage as {cls.__name__}(channels, steps, "
            f"step_size, interpolation), which {cls.__name__} does not take ({err}); give it "
            "that constructor, or put it in a Stage of your own"
        ) from None


def resolve_arch(arch: str | type[RHS], who: str) -> type[RHS]:
    """The dynamics class for a registered name or an :class:`RHS` subclass."""
    if isinstance(arch, type) and issubclass(arch, RHS):
        _check_constructor(arch, who)
        return arch
    if isinstance(arch, str) and arch in _ARCHS:
        return _ARCHS[arch]
    raise ValueError(
        f"{who}: unknown arch {arch!r}; choose one of {sorted(_ARCHS)}, pass a subclass of "
        "neuralpde.RHS, or register one with neuralpde.register_arch(name, cls)"
    )


for _name, _cls in (
    ("parabolic", ParabolicRHS),
    ("hamiltonian", HamiltonianRHS),
    ("second_order", SecondOrderRHS),
    ("resnet", ResNetRHS),
):
    register_arch(_name, _cls)
