"""A Convex Potential Layer network as a user's dynamics: the control of tutorial 08.

A Convex Potential Layer (Meunier et al., ICML 2022) is ``y - (2/‖K‖²) Kᵀ relu(K y + b)``,
a forward-Euler step of the parabolic flow at exactly its stability limit. Written as a
user would write it in their own file, then ``neuralpde.register_arch("cpl", CPL)``.
"""

import torch
import torch.nn.functional as F

import neuralpde
import solvers
from neuralpde.stability import symbol_rho


class CPL(neuralpde.RHS):
    """``dY/dt = -K̃ᵀ relu(K̃ Y + b)`` with ``K̃ = K sqrt(2 / (h ‖K‖²))``: ``h ρ(K̃ᵀK̃) = 2``."""

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant"):
        super().__init__(channels, steps, step_size, interpolation)
        c = channels
        self.theta = neuralpde.TimeWeights(
            {"K": torch.randn(steps, c, c, 3, 3) / (3 * c), "b": torch.zeros(steps, c)},
            self.T,
            interpolation,
        )

    def forward(self, t, y):
        w = self.theta(t)
        rho = symbol_rho(w["K"][None], y.shape[-2], y.shape[-1])[0]  # rigorous ‖K‖²
        K = w["K"] * (2 * (1 - 1e-5) / (self.step_size * rho)).sqrt()
        z = torch.relu(F.conv2d(y, K, w["b"], padding=1))
        return -F.conv_transpose2d(z, K, padding=1)

    def lipschitz(self, height, width, method, step_size):
        # A forward-Euler step no larger than h is a CPL layer: non-expansive; so is the
        # flow of -∇ of a convex potential. Other methods: no bound declared.
        if solvers.methods()[method] == "adaptive":
            return 1.0
        return 1.0 if method == "euler" and step_size <= self.step_size else None
