"""Right-hand sides ``forward(t, y)``: the dynamics of each network, θ(t) inside.

Each module is exactly what ``torchdiffeq.odeint`` calls. The hyperbolic ones take and
return the first-order split system ``(q, p)`` and also expose its separable parts
``(f_q, f_p)`` for the symplectic steppers of :mod:`solvers`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._layers import TV_EPS, check_image, check_width, init_kernel, resnet_layer, symmetric_layer
from ._weights import TimeWeights


def _symmetric_weights(
    channels: int, n: int, T: float, interpolation: str, normalize: bool = True
) -> TimeWeights:
    params = {"weight": torch.stack([init_kernel(channels, channels, 3, 3) for _ in range(n)])}
    if normalize:
        params["scale"] = torch.ones(n, channels)
        params["shift"] = torch.zeros(n, channels)
    return TimeWeights(params, T, interpolation)


def _check_width(channels: int, who: str) -> None:
    check_width(channels, who)


def _check_pair(state, channels: int, who: str) -> None:
    if not (isinstance(state, tuple) and len(state) == 2):
        raise TypeError(
            f"{who}: the state must be the tuple (q, p); got {type(state).__name__} — "
            "use to_state(x) to build it from a (batch, channels, height, width) tensor"
        )
    check_image(state[0], channels, who, "q")
    check_image(state[1], channels, who, "p")


class _RHS(nn.Module):
    """Shared plumbing: time span and conversion between a tensor and the ODE state."""

    split: bool = False

    def __init__(self, channels: int, steps: int, step_size: float, interpolation: str):
        super().__init__()
        who = type(self).__name__
        _check_width(channels, who)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{who}: steps must be a positive int, got {steps!r}")
        if (
            not isinstance(step_size, (int, float))
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
        self.eps = TV_EPS

    def thetas(self) -> list[TimeWeights]:
        """All :class:`TimeWeights` of this right-hand side."""
        return [m for m in self.children() if isinstance(m, TimeWeights)]

    def jump_times(self) -> list[float]:
        """Times where θ(t) jumps (for adaptive solvers' ``jump_t``)."""
        return sorted({t for w in self.thetas() for t in w.jump_times()})

    def to_state(self, x: Tensor):
        """The ODE's initial state for a stage input ``x: (batch, channels, h, w)``."""
        check_image(x, self.channels, type(self).__name__, "x")
        return x

    def from_state(self, state) -> Tensor:
        """The stage output ``(batch, channels, h, w)`` from the ODE state at time T."""
        return state

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, steps={self.steps}, step_size={self.step_size}, "
            f"interpolation={self.interpolation!r}"
        )


class ParabolicRHS(_RHS):
    """``dY/dt = F_sym(θ(t), Y) = -K(t)ᵀ relu(N(K(t) Y))``: the parabolic (heat-like) network.

    Stable for any non-decreasing activation (Ruthotto & Haber 2020, Theorem 1).

    Args:
        channels: ``c``; the state is ``(batch, c, h, w)``.
        steps: number of parameter sets (cells or knots) over ``[0, T]``.
        step_size: the training step ``h``; ``T = steps * h``.
        interpolation: ``"constant"`` (ResNet-like θ_j per step) or ``"linear"``.
        normalize: ``False`` drops the normalization N (``F = -Kᵀ relu(K Y)``), the setting
            of the discrete stability bound ``h <= 2 / ‖K‖²``.

    ``forward(t, y)``: ``t`` 0-d tensor, ``y (batch, c, h, w)`` -> ``(batch, c, h, w)``.
    """

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant", normalize=True):
        super().__init__(channels, steps, step_size, interpolation)
        self.normalize = normalize
        self.theta = _symmetric_weights(channels, steps, self.T, interpolation, normalize)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        check_image(y, self.channels, type(self).__name__, "y")
        w = self.theta(t)
        return symmetric_layer(y, w["weight"], w.get("scale"), w.get("shift"), self.eps)


class ResNetRHS(_RHS):
    """``dY/dt = K2(t) relu(N(K1(t) Y))``: the non-symmetric ResNet control.

    Args as :class:`ParabolicRHS`; ``18c² + 2c`` parameters per step.

    ``forward(t, y)``: ``t`` 0-d tensor, ``y (batch, c, h, w)`` -> ``(batch, c, h, w)``.
    """

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant"):
        super().__init__(channels, steps, step_size, interpolation)
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


class HamiltonianRHS(_RHS):
    """The Hamiltonian network on a channel split ``Y | Z`` (the paper's eq. (14)).

    ``dq/dt = F_sym(θ1(t), p)``, ``dp/dt = -F_sym(θ2(t), q)`` with ``q = Y``, ``p = Z``, each
    layer on ``c/2`` channels. With symplectic Euler (q first) and h = 1 this is
    ``Y_{j+1} = Y_j + h F(θ1_j, Z_j)``, ``Z_{j+1} = Z_j - h F(θ2_j, Y_{j+1})``.

    Args:
        channels: ``c``, even; the stage input ``(batch, c, h, w)`` is split in halves.
        steps, step_size, interpolation: as :class:`ParabolicRHS`.

    ``forward(t, (q, p))`` -> ``(dq/dt, dp/dt)``, each ``(batch, c/2, h, w)``.
    ``separable`` is the pair ``(f_q, f_p)`` for the symplectic steppers.
    """

    split = True

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant"):
        _check_width(channels, "HamiltonianRHS")
        if channels % 2:
            raise ValueError(
                f"HamiltonianRHS: channels must be even to split the state into (Y, Z) halves, "
                f"got {channels}; use an even width such as {channels + 1}"
            )
        super().__init__(channels, steps, step_size, interpolation)
        half = channels // 2
        self.theta_q = _symmetric_weights(half, steps, self.T, interpolation)
        self.theta_p = _symmetric_weights(half, steps, self.T, interpolation)

    def f_q(self, t: Tensor, p: Tensor) -> Tensor:
        """``dq/dt = F_sym(θ1(t), p)``; ``p (batch, c/2, h, w)``."""
        check_image(p, self.channels // 2, "HamiltonianRHS.f_q", "p")
        w = self.theta_q(t)
        return symmetric_layer(p, w["weight"], w["scale"], w["shift"], self.eps)

    def f_p(self, t: Tensor, q: Tensor) -> Tensor:
        """``dp/dt = -F_sym(θ2(t), q)``; ``q (batch, c/2, h, w)``."""
        check_image(q, self.channels // 2, "HamiltonianRHS.f_p", "q")
        w = self.theta_p(t)
        return symmetric_layer(q, w["weight"], w["scale"], w["shift"], self.eps, negate=True)

    @property
    def separable(self):
        """``(f_q, f_p)``: the split right-hand side for :func:`solvers.odeint`."""
        return (self.f_q, self.f_p)

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        _check_pair(state, self.channels // 2, "HamiltonianRHS")
        q, p = state
        return self.f_q(t, p), self.f_p(t, q)

    def to_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_image(x, self.channels, "HamiltonianRHS", "x")
        q, p = x.chunk(2, dim=1)
        return q, p

    def from_state(self, state) -> Tensor:
        return torch.cat(state, dim=1)


class SecondOrderRHS(_RHS):
    """The second-order (wave-like) network ``d²Y/dt² = F_sym(θ(t), Y)``, ``Y'(0) = 0``.

    As a first-order split system: ``dq/dt = p``, ``dp/dt = F_sym(θ(t), q)`` with ``q = Y``
    and ``p = dY/dt``. The leapfrog stepper gives the paper's
    ``Y_{j+1} = 2Y_j - Y_{j-1} + h² F(θ_j, Y_j)``, ``Y_{-1} = Y_0``.

    Args:
        channels, steps, step_size, interpolation: as :class:`ParabolicRHS`.

    ``forward(t, (q, p))`` -> ``(p, F_sym(θ(t), q))``, each ``(batch, c, h, w)``.
    ``separable`` is the pair ``(f_q, f_p)`` for the symplectic steppers.
    """

    split = True

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant"):
        super().__init__(channels, steps, step_size, interpolation)
        self.theta = _symmetric_weights(channels, steps, self.T, interpolation)

    def f_q(self, t: Tensor, p: Tensor) -> Tensor:
        """``dq/dt = p``."""
        return p

    def f_p(self, t: Tensor, q: Tensor) -> Tensor:
        """``dp/dt = F_sym(θ(t), q)``; ``q (batch, c, h, w)``."""
        check_image(q, self.channels, "SecondOrderRHS.f_p", "q")
        w = self.theta(t)
        return symmetric_layer(q, w["weight"], w["scale"], w["shift"], self.eps)

    @property
    def separable(self):
        """``(f_q, f_p)``: the split right-hand side for :func:`solvers.odeint`."""
        return (self.f_q, self.f_p)

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        _check_pair(state, self.channels, "SecondOrderRHS")
        q, p = state
        return p, self.f_p(t, q)

    def to_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_image(x, self.channels, "SecondOrderRHS", "x")
        return x, torch.zeros_like(x)

    def from_state(self, state) -> Tensor:
        return state[0]
