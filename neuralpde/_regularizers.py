"""Regularizers of the weights θ(t) that belong to the model, not to a training loop."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._weights import TimeWeights


def time_smoothness(module: nn.Module, tau: float = 1e-3) -> Tensor:
    """Smoothed total variation in time of every θ(t) in ``module``.

    ``Σ_j h · sqrt(((θ_{j+1} − θ_j)/h)² + τ)``, summed over every entry of every
    parameter of every :class:`~neuralpde.TimeWeights` in ``module`` (so of every
    :class:`~neuralpde.RHS`, whatever its dynamics), with ``h`` the spacing of the time
    knots (``T/n`` for ``n`` cells, ``T/(n−1)`` for ``n`` linear knots). It favours
    weights that change little from step to step, i.e. a network that discretizes a
    smooth θ(t). This is the α1 term of the regularizer of Ruthotto & Haber (2020,
    Sec. 4), who use τ = 1e-3 and α1 = 2e-4 (CIFAR) or 4e-4
    (STL-10); multiply by α1 and add it to the loss.

    Args:
        module: a network, a stage, a right-hand side or a :class:`TimeWeights`.
        tau: ``τ > 0``, the smoothing that makes the square root differentiable at 0.

    Returns:
        A 0-d tensor (differentiable in the weights); zero, on the weights' device and
        dtype, when no θ(t) has two or more knots.

    Raises:
        ValueError: ``tau`` is not a positive finite number.
        TypeError: ``module`` is not an ``nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"time_smoothness: expected an nn.Module, got {type(module).__name__}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < math.inf:
        raise ValueError(f"time_smoothness: tau must be a positive finite number, got {tau!r}")
    total = None
    for m in module.modules():
        if not isinstance(m, TimeWeights) or m.n < 2:
            continue
        h = m.T / m.n if m.interpolation == "constant" else m.T / (m.n - 1)
        for p in m.parameters(recurse=False):
            d = (p[1:] - p[:-1]) / h
            term = h * torch.sqrt(d.pow(2) + tau).sum()
            total = term if total is None else total + term
    if total is None:
        p = next(module.parameters(), None)
        return torch.zeros(()) if p is None else p.new_zeros(())
    return total
