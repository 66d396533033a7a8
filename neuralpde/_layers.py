"""The symmetric layer F_sym = -Kᵀ σ(N(K Y)) and the non-symmetric ResNet control."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ε of the total-variation normalization: 1e-4 in the authors' Meganet code (1e-3 in the text).
TV_EPS = 1e-4


def tv_norm(x: Tensor, scale: Tensor, shift: Tensor, eps: float = TV_EPS) -> Tensor:
    """Total-variation normalization: each pixel's channel vector divided by its norm.

    Args:
        x: ``(batch, channels, height, width)``.
        scale, shift: ``(channels,)`` per-channel affine map applied after normalizing.
        eps: added under the square root so a zero vector stays finite.

    Returns:
        ``x / sqrt(sum_c x_c^2 + eps) * scale + shift``, same shape as ``x``.
    """
    x = x * torch.rsqrt(x.pow(2).sum(dim=1, keepdim=True) + eps)
    return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def symmetric_layer(
    y: Tensor,
    weight: Tensor,
    scale: Tensor | None,
    shift: Tensor | None,
    eps: float = TV_EPS,
) -> Tensor:
    """``F_sym(θ, Y) = -Kᵀ relu(N(K Y))`` with K a 3×3 convolution and Kᵀ its transpose.

    Args:
        y: ``(batch, c, height, width)``.
        weight: ``(c, c, 3, 3)`` the kernel of K; Kᵀ reuses it (weight tying makes the
            Jacobian ``-Kᵀ D K`` symmetric negative semi-definite).
        scale, shift: ``(c,)`` the normalization's affine parameters; ``None`` for both
            drops the normalization (``F = -Kᵀ relu(K Y)``, a negative gradient of the
            convex ``½‖relu(K Y)‖²``).

    Returns:
        ``(batch, c, height, width)``.
    """
    z = F.conv2d(y, weight, padding=1)
    if scale is not None:
        z = tv_norm(z, scale, shift, eps)
    z = torch.relu(z)
    return -F.conv_transpose2d(z, weight, padding=1)


def resnet_layer(
    y: Tensor, weight1: Tensor, weight2: Tensor, scale: Tensor, shift: Tensor, eps: float = TV_EPS
) -> Tensor:
    """The non-symmetric control ``F(θ, Y) = K2 relu(N(K1 Y))`` with independent kernels.

    Args:
        y: ``(batch, c, height, width)``.
        weight1, weight2: ``(c, c, 3, 3)``.
        scale, shift: ``(c,)``.

    Returns:
        ``(batch, c, height, width)``.
    """
    z = torch.relu(tv_norm(F.conv2d(y, weight1, padding=1), scale, shift, eps))
    return F.conv2d(z, weight2, padding=1)


def init_kernel(*shape: int, generator: torch.Generator | None = None) -> Tensor:
    """A 3×3 kernel ``(c_out, c_in, 3, 3)`` drawn as in the reference code.

    Truncated normal with sd ``sqrt(2 / (3 c_in))``, clipped at ±2 sd.
    """
    sd = math.sqrt(2.0 / (3.0 * shape[-3]))
    w = torch.empty(*shape)
    return nn.init.trunc_normal_(w, std=sd, a=-2 * sd, b=2 * sd, generator=generator)


def _check_input(y: Tensor, channels: int, who: str) -> None:
    if not isinstance(y, Tensor):
        raise TypeError(f"{who}: expected a tensor, got {type(y).__name__}")
    if y.dim() != 4 or y.shape[1] != channels:
        raise ValueError(
            f"{who}: expected input of shape (batch, {channels}, height, width), "
            f"got {tuple(y.shape)}"
        )


class SymmetricLayer(nn.Module):
    """The symmetric layer ``F_sym(θ, Y) = -Kᵀ relu(N(K Y))`` with one fixed θ.

    Args:
        channels: ``c``, the width; the layer maps ``(batch, c, h, w)`` to the same shape.
        eps: ε of the total-variation normalization.

    Parameters: ``weight (c, c, 3, 3)``, ``scale (c,)`` (init 1), ``shift (c,)`` (init 0):
    ``9c² + 2c`` numbers.
    """

    def __init__(self, channels: int, eps: float = TV_EPS):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.weight = nn.Parameter(init_kernel(channels, channels, 3, 3))
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, y: Tensor) -> Tensor:
        """``y: (batch, c, h, w)`` -> ``(batch, c, h, w)``."""
        _check_input(y, self.channels, type(self).__name__)
        return symmetric_layer(y, self.weight, self.scale, self.shift, self.eps)


class ResNetLayer(nn.Module):
    """The non-symmetric control layer ``K2 relu(N(K1 Y))`` with one fixed θ.

    Args:
        channels: ``c``; maps ``(batch, c, h, w)`` to the same shape.
        eps: ε of the total-variation normalization.

    Parameters: ``weight1, weight2 (c, c, 3, 3)``, ``scale, shift (c,)``: ``18c² + 2c``.
    """

    def __init__(self, channels: int, eps: float = TV_EPS):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.weight1 = nn.Parameter(init_kernel(channels, channels, 3, 3))
        self.weight2 = nn.Parameter(init_kernel(channels, channels, 3, 3))
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, y: Tensor) -> Tensor:
        """``y: (batch, c, h, w)`` -> ``(batch, c, h, w)``."""
        _check_input(y, self.channels, type(self).__name__)
        return resnet_layer(y, self.weight1, self.weight2, self.scale, self.shift, self.eps)
