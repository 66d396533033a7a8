"""Each right-hand side equals the paper's formula, evaluated by hand with dense matrices."""

import pytest
import torch

import neuralpde
from neuralpde._layers import TV_EPS

pytestmark = pytest.mark.usefixtures("float64")


def dense_conv(weight, c, h, w):
    """The 3×3 zero-padded convolution as a dense (c·h·w) × (c·h·w) matrix, column by column."""
    n = c * h * w
    eye = torch.eye(n).reshape(n, c, h, w)
    return torch.nn.functional.conv2d(eye, weight, padding=1).reshape(n, n).T


def F_sym_by_hand(y, weight, scale, shift):
    b, c, h, w = y.shape
    K = dense_conv(weight, c, h, w)
    out = []
    for i in range(b):
        z = (K @ y[i].reshape(-1)).reshape(c, h * w)
        z = z / torch.sqrt((z**2).sum(0, keepdim=True) + TV_EPS)  # per pixel, over channels
        z = torch.relu(z * scale[:, None] + shift[:, None])
        out.append(-(K.T @ z.reshape(-1)).reshape(c, h, w))
    return torch.stack(out)


def randomize(module):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return module


@pytest.mark.parametrize("interp", ["constant", "linear"])
def test_parabolic_rhs_matches_formula(interp):
    rhs = randomize(neuralpde.ParabolicRHS(3, steps=4, step_size=0.5, interpolation=interp))
    y = torch.randn(2, 3, 4, 5)
    for t in (0.0, 0.7, 1.2, 1.99):
        th = rhs.theta
        if interp == "constant":
            j = int(t // 0.5)
            W, s, b = th.weight[j], th.scale[j], th.shift[j]
        else:
            knots = torch.linspace(0, 2.0, 4)
            j = min(int(t // (2.0 / 3)), 2)
            a = (t - float(knots[j])) / float(knots[j + 1] - knots[j])
            W, s, b = (
                (1 - a) * getattr(th, n)[j] + a * getattr(th, n)[j + 1]
                for n in ("weight", "scale", "shift")
            )
        expected = F_sym_by_hand(y, W, s, b)
        assert torch.allclose(rhs(torch.tensor(t), y), expected, atol=1e-12)


def test_hamiltonian_rhs_matches_formula():
    rhs = randomize(neuralpde.HamiltonianRHS(4, steps=3))
    q, p = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    for j, t in enumerate((0.0, 1.5, 2.5)):
        dq, dp = rhs(torch.tensor(t), (q, p))
        a, b = rhs.theta_q, rhs.theta_p
        assert torch.allclose(dq, F_sym_by_hand(p, a.weight[j], a.scale[j], a.shift[j]), atol=1e-12)
        assert torch.allclose(
            dp, -F_sym_by_hand(q, b.weight[j], b.scale[j], b.shift[j]), atol=1e-12
        )
        f_q, f_p = rhs.separable
        assert torch.equal(f_q(torch.tensor(t), p), dq) and torch.equal(f_p(torch.tensor(t), q), dp)


def test_second_order_rhs_matches_formula():
    rhs = randomize(neuralpde.SecondOrderRHS(3, steps=3))
    y, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    dy, dv = rhs(torch.tensor(1.0), (y, v))
    th = rhs.theta
    assert torch.equal(dy, v)
    assert torch.allclose(dv, F_sym_by_hand(y, th.weight[1], th.scale[1], th.shift[1]), atol=1e-12)


def test_resnet_rhs_matches_formula():
    rhs = randomize(neuralpde.ResNetRHS(3, steps=2))
    y = torch.randn(2, 3, 4, 4)
    th = rhs.theta
    K1, K2 = dense_conv(th.weight1[1], 3, 4, 4), dense_conv(th.weight2[1], 3, 4, 4)
    out = rhs(torch.tensor(1.0), y)
    for i in range(2):
        z = (K1 @ y[i].reshape(-1)).reshape(3, 16)
        z = z / torch.sqrt((z**2).sum(0, keepdim=True) + TV_EPS)
        z = torch.relu(z * th.scale[1][:, None] + th.shift[1][:, None])
        assert torch.allclose(out[i].reshape(-1), K2 @ z.reshape(-1), atol=1e-12)


def test_layers_match_formula():
    layer = randomize(neuralpde.SymmetricLayer(3))
    y = torch.randn(2, 3, 5, 4)
    assert torch.allclose(
        layer(y), F_sym_by_hand(y, layer.weight, layer.scale, layer.shift), atol=1e-12
    )
    res = randomize(neuralpde.ResNetLayer(3))
    assert res(y).shape == y.shape


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parabolic_jacobian_factors_as_minus_Kt_M_K(seed):
    # With the normalization N the Jacobian is -Kᵀ M K, M = d relu(N(z))/dz block-diagonal
    # per pixel: M = diag(relu' · s) · (I/r - z zᵀ/r³), a non-negative diagonal times a
    # positive semi-definite matrix, so M is similar to a PSD matrix (real spectrum >= 0)
    # whenever the scales s are positive. Checked numerically in float64.
    torch.manual_seed(seed)
    rhs = neuralpde.ParabolicRHS(2, steps=1)
    with torch.no_grad():
        rhs.theta.scale.uniform_(0.2, 2.0)
        rhs.theta.shift.normal_(0.0, 0.3)
    y = torch.randn(1, 2, 4, 4)
    J = torch.autograd.functional.jacobian(lambda x: rhs(torch.tensor(0.0), x), y)
    J = J.reshape(32, 32)
    th = rhs.theta
    K = dense_conv(th.weight[0], 2, 4, 4)
    z = (K @ y.reshape(-1)).reshape(1, 2, 4, 4)

    def act(z):
        return torch.relu(neuralpde._layers.tv_norm(z, th.scale[0], th.shift[0]))

    M = torch.autograd.functional.jacobian(act, z).reshape(32, 32)
    assert torch.allclose(J, -K.T @ M @ K, atol=1e-12)
    ev = torch.linalg.eigvals(M)
    assert ev.imag.abs().max() < 1e-9 and ev.real.min() > -1e-9


def test_unnormalized_parabolic_jacobian_is_symmetric_nsd():
    # Without N the Jacobian is exactly -Kᵀ diag(relu'(K y)) K: symmetric and NSD.
    torch.manual_seed(0)
    rhs = randomize(neuralpde.ParabolicRHS(2, steps=1, normalization="none"))
    y = torch.randn(1, 2, 4, 4)
    J = torch.autograd.functional.jacobian(lambda x: rhs(torch.tensor(0.0), x), y).reshape(32, 32)
    assert torch.allclose(J, J.T, atol=1e-12)
    assert torch.linalg.eigvalsh(J).max() <= 1e-10


def test_odd_channels_for_hamiltonian():
    with pytest.raises(ValueError, match="even"):
        neuralpde.HamiltonianRHS(5)
    with pytest.raises(ValueError, match="even"):
        neuralpde.PDECNN("hamiltonian", 3, 10, (6, 7, 8))


def test_rhs_in_torchdiffeq_directly():
    import torchdiffeq

    rhs = neuralpde.HamiltonianRHS(4, steps=3)
    y0 = rhs.to_state(torch.randn(2, 4, 4, 4))
    q, p = torchdiffeq.odeint(
        rhs, y0, torch.tensor([0.0, 3.0]), method="rk4", options={"step_size": 0.5}
    )
    assert q.shape == (2, 2, 2, 4, 4)
