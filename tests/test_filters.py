"""PDE image filters: exact adjoint, heat-equation mode decay, PSNR gain on a real photograph."""

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

import neuralpde
import solvers
from neuralpde import stability
from neuralpde._filters import _gradient, _gradient_adjoint

T64 = torch.float64


def solve(rhs, u0, T, method="euler", step_size=None, **kw):
    t = torch.tensor([0.0, T], dtype=T64)
    options = None if step_size is None else {"step_size": step_size}
    return solvers.odeint(rhs, u0, t, method=method, options=options, **kw)[-1]


def test_gradient_adjoint_is_exact():
    torch.manual_seed(0)
    u = torch.randn(2, 3, 5, 7, dtype=T64)
    v = torch.randn(2, 3, 2, 5, 7, dtype=T64)
    lhs = (_gradient(u) * v).sum()
    rhs = (u * _gradient_adjoint(v)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)
    # Neumann: the difference across the last row and column is zero.
    g = _gradient(u)
    assert g[:, :, 0, -1].abs().max() == 0 and g[:, :, 1, :, -1].abs().max() == 0


@pytest.mark.parametrize("k,l", [(1, 0), (3, 2), (7, 5)])
def test_heat_cosine_mode_decays_at_discrete_eigenvalue(k, l):
    H, W, T = 8, 12, 0.7
    i = torch.arange(H, dtype=T64)[:, None]
    j = torch.arange(W, dtype=T64)[None, :]
    mode = torch.cos(math.pi * k * (i + 0.5) / H) * torch.cos(math.pi * l * (j + 0.5) / W)
    lam = 4 * math.sin(math.pi * k / (2 * H)) ** 2 + 4 * math.sin(math.pi * l / (2 * W)) ** 2
    heat = neuralpde.HeatRHS(diffusivity=0.5)
    u = solve(heat, mode[None, None], T, method="dopri5", rtol=1e-10, atol=1e-12)
    expected = math.exp(-0.5 * lam * T) * mode
    assert (u[0, 0] - expected).abs().max().item() < 1e-8
    # And forward Euler at its stable step reproduces the discrete factor (1 - hcλ)^n exactly.
    h = 0.1
    u = solve(heat, mode[None, None], T, step_size=h)
    n = round(T / h)
    assert (u[0, 0] - (1 - h * 0.5 * lam) ** n * mode).abs().max().item() < 1e-12


def test_gradient_spectrum_and_heat_step_limit():
    H, W = 9, 6
    heat = neuralpde.HeatRHS()
    rho = stability.power_iteration(lambda v: -heat(None, v), (1, 1, H, W), dtype=T64).item()
    exact = 4 * math.sin(math.pi * (H - 1) / (2 * H)) ** 2
    exact += 4 * math.sin(math.pi * (W - 1) / (2 * W)) ** 2
    assert rho == pytest.approx(exact, rel=1e-3)
    assert rho < 8 and heat.stable_step == 0.25
    torch.manual_seed(0)
    u0 = torch.randn(1, 1, H, W, dtype=T64)
    # Just above 2/ρ the checkerboard mode blows up; at the stable step nothing grows.
    h = 1.05 * 2 / exact
    assert solve(heat, u0, 200 * h, step_size=h).norm() > 10 * u0.norm()
    assert solve(heat, u0, 200 * 0.25, step_size=0.25).norm() <= u0.norm()


@pytest.mark.parametrize(
    "rhs", [neuralpde.HeatRHS(), neuralpde.PeronaMalikRHS(0.1), neuralpde.TVFlowRHS(0.05)]
)
def test_filters_conserve_the_mean(rhs):
    torch.manual_seed(1)
    u0 = torch.rand(2, 3, 10, 9, dtype=T64)
    u = solve(rhs, u0, 20 * rhs.stable_step, step_size=rhs.stable_step * 0.9)
    assert torch.allclose(u.mean(dim=(2, 3)), u0.mean(dim=(2, 3)), atol=1e-12)


def test_perona_malik_keeps_an_edge_that_heat_blurs():
    u0 = torch.zeros(1, 1, 16, 16, dtype=T64)
    u0[..., 8:] = 1.0
    jump = {}
    for name, rhs in (("heat", neuralpde.HeatRHS()), ("pm", neuralpde.PeronaMalikRHS(0.1))):
        u = solve(rhs, u0, 4.0, step_size=0.2)
        jump[name] = (u[0, 0, :, 8] - u[0, 0, :, 7]).mean().item()
    assert jump["pm"] > 0.9 and jump["heat"] < 0.5, jump


def test_tv_flow_decreases_total_variation():
    torch.manual_seed(2)
    tv = neuralpde.TVFlowRHS(0.05)
    u = torch.rand(1, 1, 12, 12, dtype=T64)
    values = []
    for _ in range(6):
        values.append(_gradient(u).pow(2).sum(2).add(0.05**2).sqrt().sum().item())
        u = solve(tv, u, 0.02, step_size=0.9 * tv.stable_step)
    assert all(b < a for a, b in zip(values, values[1:]))


def noisy_camera(sigma=0.1):
    img = data.camera()[::4, ::4].astype(np.float64) / 255.0
    noisy = img + sigma * np.random.default_rng(0).standard_normal(img.shape)
    return img, noisy


@pytest.mark.parametrize(
    "rhs,T,gain",
    [
        (neuralpde.HeatRHS(), 0.5, 2.0),
        (neuralpde.PeronaMalikRHS(0.1), 2.0, 5.0),
        (neuralpde.TVFlowRHS(0.05), 0.05, 4.5),
    ],
)
def test_filter_gains_psnr_on_a_noisy_photograph(rhs, T, gain):
    img, noisy = noisy_camera()
    u0 = torch.tensor(noisy)[None, None]
    out = solve(rhs, u0, T, step_size=0.9 * rhs.stable_step)[0, 0].numpy()
    before = peak_signal_noise_ratio(img, noisy, data_range=1.0)
    after = peak_signal_noise_ratio(img, out, data_range=1.0)
    assert before == pytest.approx(20.0, abs=0.2)
    assert after > before + gain


def test_filters_reject_bad_arguments():
    with pytest.raises(ValueError, match="kappa"):
        neuralpde.PeronaMalikRHS(0.0)
    with pytest.raises(ValueError, match="eps"):
        neuralpde.TVFlowRHS(-1.0)
    with pytest.raises(ValueError, match="batch, channels"):
        neuralpde.HeatRHS()(None, torch.zeros(4, 4))
