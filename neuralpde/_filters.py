"""Classic PDE image filters in the form of the symmetric layer, ``u' = -Kᵀ σ(K u)``.

Here ``K`` is the finite-difference gradient (forward differences, Neumann boundary: the
difference across the last row/column is zero, i.e. the image is reflected) and
``Kᵀ = -div`` its exact adjoint, minus the backward-difference divergence. ``σ(v) =
g(|v|²) v`` scales the gradient by an edge-stopping function ``g``:

* heat equation: ``g = 1`` (``u' = Δu``, linear isotropic diffusion);
* Perona–Malik: ``g = 1 / (1 + |∇u|²/κ²)`` (diffusion stops across edges steeper than κ);
* total-variation flow: ``g = 1 / sqrt(|∇u|² + ε²)`` (``u' = div(∇u/|∇u|)``, the
  gradient flow of the total variation, regularized by ε).

With ``K`` a learned convolution and ``σ`` a ReLU this is the parabolic network's layer;
the filters are the same dynamics with hand-made ``K`` and ``σ``. Each is a
:class:`~neuralpde.RHS` with ``forward(t, u)`` for :func:`solvers.odeint`, and a stage like
any other (``Stage(HeatRHS(T=2.0))``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._rhs import RHS
from ._spectra import Spectrum

# ρ(KᵀK) of the 2-D Neumann gradient is below 4 + 4 = 8 (the largest eigenvalue of the
# 1-D Neumann Laplacian is 4 sin²(π(n-1)/(2n)) < 4 per axis).
GRADIENT_RHO = 8.0


def _gradient(u: Tensor) -> Tensor:
    """``K u``: forward differences, ``u (b, c, h, w)`` -> ``(b, c, 2, h, w)`` (rows, cols)."""
    # Zero difference across the last row and column: the Neumann (reflecting) boundary.
    dy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    dx = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1, 0, 0))
    return torch.stack([dy, dx], dim=2)


def _gradient_adjoint(v: Tensor) -> Tensor:
    """``Kᵀ v = -div v`` (backward differences), ``v (b, c, 2, h, w)`` -> ``(b, c, h, w)``."""
    gy, gx = v[:, :, 0, :-1, :], v[:, :, 1, :, :-1]
    # The last row/column of K u is identically zero, so Kᵀ ignores those entries of v.
    ty = F.pad(gy, (0, 0, 1, 0)) - F.pad(gy, (0, 0, 0, 1))
    tx = F.pad(gx, (1, 0, 0, 0)) - F.pad(gx, (0, 1, 0, 0))
    return ty + tx


def _check_image(u: Tensor, who: str) -> None:
    if not isinstance(u, Tensor):
        raise TypeError(f"{who}: expected a tensor, got {type(u).__name__}")
    if u.dim() != 4:
        raise ValueError(
            f"{who}: expected images (batch, channels, height, width), got {tuple(u.shape)}"
        )


def _stable_steps(T: float, max_diffusivity: float, who: str) -> tuple[int, float]:
    """``(steps, step_size)``: the fewest equal forward-Euler steps over ``[0, T]`` that
    respect ``h <= 2 / (ρ max g)``."""
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not 0 < T < math.inf:
        raise ValueError(f"{who}: T must be a positive finite number, got {T!r}")
    steps = max(1, math.ceil(T * GRADIENT_RHO * max_diffusivity / 2.0 - 1e-9))
    return steps, T / steps


class _DiffusionRHS(RHS):
    """``u' = -Kᵀ (g(|K u|²) K u)`` with ``g`` from the subclass, on any number of channels.

    A right-hand side like any other (a :class:`~neuralpde.Stage` integrates it over
    ``[0, T]``): its default step is the largest that divides ``T`` and respects
    :attr:`stable_step`, with forward Euler.
    """

    def __init__(self, T: float, max_diffusivity: float):
        steps, step_size = _stable_steps(T, max_diffusivity, type(self).__name__)
        super().__init__(None, steps, step_size)
        self.T = float(T)

    def edge_stopping(self, sq: Tensor) -> Tensor:
        """The diffusivity ``g(|∇u|²)`` from ``sq = |∇u|²``, shape ``(batch, channels, 1,
        height, width)``; returns the same shape."""
        raise NotImplementedError

    @property
    def max_diffusivity(self) -> float:
        """Upper bound of ``g``: the largest diffusion coefficient."""
        raise NotImplementedError

    @property
    def stable_step(self) -> float:
        """Forward-Euler step limit ``2 / (ρ(KᵀK) max g)`` of the frozen-``g`` linearization.

        The parabolic bound of :mod:`neuralpde.stability` with ``ρ(KᵀK) < 8``: for the heat
        equation it is exact (``h <= 1/4``); for Perona–Malik and TV flow ``g`` is frozen.
        """
        return 2.0 / (GRADIENT_RHO * self.max_diffusivity)

    def spectrum(self, height, width, *, iters=500, tol=1e-6, seed=0) -> Spectrum:
        """``"dissipative"`` with the exact ``ρ(KᵀK)`` of the Neumann gradient at
        ``height × width`` (``4 sin²(π(n-1)/(2n))`` per axis) times ``max g`` (layer
        ``"KᵀgK"``); the upper bound uses ``ρ < 8``. Exact for the heat equation, the
        frozen-``g`` linearization otherwise. ``iters``, ``tol``, ``seed``: unused."""
        exact = sum(4 * math.sin(math.pi * (n - 1) / (2 * n)) ** 2 for n in (height, width))
        g = self.max_diffusivity
        rho = [(exact * g, GRADIENT_RHO * g)]
        return Spectrum("dissipative", {"KᵀgK": rho}, rho, False)

    def rates(self, rho) -> Tensor:
        """``8 max g`` per step, the size-independent bound of :meth:`spectrum` (a filter
        has no weights: a training penalty has nothing to move)."""
        return torch.full((self.steps,), GRADIENT_RHO * self.max_diffusivity)

    def forward(self, t: Tensor, u: Tensor) -> Tensor:
        """``t`` 0-d tensor (unused: autonomous); ``u (batch, channels, height, width)``."""
        _check_image(u, type(self).__name__)
        v = _gradient(u)
        # |∇u|² per pixel and channel: channels are filtered independently.
        g = self.edge_stopping(v.pow(2).sum(dim=2, keepdim=True))
        return -_gradient_adjoint(g * v)


class HeatRHS(_DiffusionRHS):
    """The heat equation ``u' = c Δu = -c KᵀK u`` with the Neumann finite-difference Laplacian.

    A cosine mode ``cos(π k (i + ½) / n)`` along an axis of length ``n`` is an eigenvector of
    ``KᵀK`` with eigenvalue ``4 sin²(π k / (2n))``; it decays as ``exp(-c λ t)``.

    Args:
        diffusivity: ``c > 0``.
        T: the end time of a :class:`~neuralpde.Stage` that integrates it.

    ``forward(t, u)``: ``u (batch, channels, height, width)`` -> same shape.
    """

    def __init__(self, diffusivity: float = 1.0, T: float = 1.0):
        if not diffusivity > 0:
            raise ValueError(f"HeatRHS: diffusivity must be positive, got {diffusivity!r}")
        super().__init__(T, float(diffusivity))
        self.diffusivity = float(diffusivity)

    def edge_stopping(self, sq: Tensor) -> Tensor:
        return torch.full_like(sq, self.diffusivity)

    @property
    def max_diffusivity(self) -> float:
        return self.diffusivity

    def extra_repr(self) -> str:
        return f"diffusivity={self.diffusivity}, T={self.T}"


class PeronaMalikRHS(_DiffusionRHS):
    """Perona–Malik diffusion ``u' = div(g(|∇u|²) ∇u)``, ``g(s) = 1 / (1 + s/κ²)``.

    Smooths where ``|∇u| < κ`` and stops (even sharpens) across steeper edges.
    Reference: P. Perona, J. Malik, IEEE TPAMI 12 (1990) 629–639.

    Args:
        kappa: the edge threshold ``κ > 0``, in image units (e.g. 0.1 for images in [0, 1]).
        T: the end time of a :class:`~neuralpde.Stage` that integrates it.

    ``forward(t, u)``: ``u (batch, channels, height, width)`` -> same shape.
    """

    def __init__(self, kappa: float = 0.1, T: float = 1.0):
        if not kappa > 0:
            raise ValueError(f"PeronaMalikRHS: kappa must be positive, got {kappa!r}")
        super().__init__(T, 1.0)
        self.kappa = float(kappa)

    def edge_stopping(self, sq: Tensor) -> Tensor:
        return 1.0 / (1.0 + sq / self.kappa**2)

    @property
    def max_diffusivity(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"kappa={self.kappa}, T={self.T}"


class TVFlowRHS(_DiffusionRHS):
    """Total-variation flow ``u' = div(∇u / sqrt(|∇u|² + ε²))``.

    The gradient flow of the (ε-regularized, isotropic) total variation
    ``Σ sqrt(|∇u|² + ε²)``: flattens noise, keeps edges. Stiff: ``g <= 1/ε``, so an
    explicit step must be below ``ε / 4``. Reference: Rudin, Osher, Fatemi, Physica D 60
    (1992) 259–268; Andreu et al., Differential Integral Equations 14 (2001).

    Args:
        eps: ``ε > 0``, in image units.
        T: the end time of a :class:`~neuralpde.Stage` that integrates it.

    ``forward(t, u)``: ``u (batch, channels, height, width)`` -> same shape.
    """

    def __init__(self, eps: float = 0.05, T: float = 1.0):
        if not eps > 0:
            raise ValueError(f"TVFlowRHS: eps must be positive, got {eps!r}")
        super().__init__(T, 1.0 / float(eps))
        self.eps = float(eps)

    def edge_stopping(self, sq: Tensor) -> Tensor:
        return torch.rsqrt(sq + self.eps**2)

    @property
    def max_diffusivity(self) -> float:
        return 1.0 / self.eps

    def extra_repr(self) -> str:
        return f"eps={self.eps}, T={self.T}"
