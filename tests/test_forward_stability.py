"""Theorem 1, discrete: a parabolic stage within its step bound does not amplify perturbations."""

import pytest
import torch

import neuralpde

pytestmark = pytest.mark.usefixtures("float64")


def conv_norm_squared(weight, c, h, w):
    """‖K‖² of the zero-padded 3×3 convolution on (c, h, w) images, computed densely."""
    n = c * h * w
    eye = torch.eye(n).reshape(n, c, h, w)
    K = torch.nn.functional.conv2d(eye, weight.detach(), padding=1).reshape(n, n)
    return float(torch.linalg.matrix_norm(K, ord=2)) ** 2


@pytest.mark.parametrize("seed", range(5))
def test_perturbations_do_not_grow_within_the_bound(seed):
    # Without N, F(Y) = -Kᵀ relu(K Y) is minus the gradient of the convex φ = ½‖relu(KY)‖²,
    # whose gradient is ‖K‖²-Lipschitz; a gradient step with h <= 2/‖K‖² is non-expansive.
    torch.manual_seed(seed)
    c, hw, steps = 3, 5, 6
    rhs = neuralpde.ParabolicRHS(c, steps=steps, step_size=1.0, normalization="none")
    with torch.no_grad():
        rhs.theta.weight.normal_(0.0, 0.6)
    L = max(conv_norm_squared(rhs.theta.weight[j], c, hw, hw) for j in range(steps))
    h = 2.0 / L
    stage = neuralpde.Stage(
        neuralpde.ParabolicRHS(c, steps=steps, step_size=h, normalization="none")
    )
    with torch.no_grad():
        stage.rhs.theta.weight.copy_(rhs.theta.weight)
        worst = 0.0
        for _ in range(20):
            y = torch.randn(1, c, hw, hw) * 3
            dy = torch.randn(1, c, hw, hw) * 10 ** float(torch.empty(1).uniform_(-6, 0))
            growth = (stage(y + dy) - stage(y)).norm() / dy.norm()
            worst = max(worst, float(growth))
    assert worst <= 1.0 + 1e-10


def test_perturbations_can_grow_beyond_the_bound():
    # The control: with h well above 2/‖K‖² the same stage amplifies some perturbation.
    torch.manual_seed(0)
    c, hw, steps = 3, 5, 6
    stage = neuralpde.Stage(
        neuralpde.ParabolicRHS(c, steps=steps, step_size=1.0, normalization="none")
    )
    with torch.no_grad():
        stage.rhs.theta.weight.normal_(0.0, 0.6)
    L = max(conv_norm_squared(stage.rhs.theta.weight[j], c, hw, hw) for j in range(steps))
    stage.rhs.step_size = stage.rhs.T / steps  # unchanged grid, just to be explicit
    assert 1.0 > 2.5 / L  # the step h = 1 violates the bound
    with torch.no_grad():
        worst = 0.0
        for _ in range(20):
            y = torch.randn(1, c, hw, hw) * 3
            dy = torch.randn(1, c, hw, hw) * 1e-4
            worst = max(worst, float((stage(y + dy) - stage(y)).norm() / dy.norm()))
    assert worst > 1.5
