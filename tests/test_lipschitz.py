"""Lipschitz bounds and certified radii: never below what the network measurably does.

Every bound is checked against lower bounds measured on the network itself: the largest
singular value of its Jacobian (the full Jacobian by autograd for a network's logits; power
iteration on JᵀJ with autograd for a stage's state) at many inputs, and difference quotients.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import neuralpde
from neuralpde._lipschitz import rk_step_lipschitz, shear_lipschitz
from neuralpde.stability import constrain, scheme_lipschitz

pytestmark = pytest.mark.usefixtures("float64")


def jacobian_norm(f, x: torch.Tensor) -> float:
    """σ_max of the Jacobian of ``f`` (one sample ``x`` -> a vector) at ``x``."""
    J = torch.autograd.functional.jacobian(f, x)
    return float(torch.linalg.matrix_norm(J.reshape(J.shape[0], -1), ord=2))


def power_norm(f, x: torch.Tensor, iters: int = 60, seed: int = 0) -> float:
    """σ_max of the Jacobian of ``f`` at ``x`` by power iteration on JᵀJ (jvp and vjp by
    autograd): a lower bound."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen)
    v = v / v.norm()
    s = 0.0
    for _ in range(iters):
        _, jv = torch.autograd.functional.jvp(f, x, v)
        _, v = torch.autograd.functional.vjp(f, x, jv)
        s = math.sqrt(float(v.norm()))
        v = v / v.norm().clamp_min(1e-300)
    return s


def measured(net, shape, inputs: int = 6, seed: int = 0) -> float:
    """The largest of: the logits' Jacobian norm at ``inputs`` random inputs (of three
    scales, so that ReLUs switch), and difference quotients along its top direction."""
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    f = lambda z: net(z[None])[0].detach()  # noqa: E731
    for i in range(inputs):
        x = torch.randn(shape, generator=gen) * (0.3, 1.0, 3.0)[i % 3]
        J = torch.autograd.functional.jacobian(lambda z: net(z[None])[0], x).reshape(
            net.num_classes, -1
        )
        _, s, vh = torch.linalg.svd(J)
        best = max(best, float(s[0]))
        for eps in (1e-2, 1e-4):
            d = vh[0].reshape(shape) * eps
            best = max(best, float((f(x + d) - f(x)).norm()) / eps)
            d = torch.randn(shape, generator=gen) * eps
            best = max(best, float((f(x + d) - f(x)).norm() / d.norm()))
    return best


SOLVERS = {
    "parabolic": [None, ("euler", 0.5), ("midpoint", 1.0), ("rk4", 1.0), ("dopri5", None)],
    "resnet": [None, ("rk4", 1.0), ("dopri5", None)],
    "hamiltonian": [None, ("leapfrog", 1.0), ("verlet", 0.5), ("yoshida4", 1.0), ("rk4", 1.0)],
    "second_order": [None, ("symplectic_euler", 1.0), ("verlet", 1.0), ("heun3", 1.0)],
}
CASES = [
    (arch, norm, solver)
    for arch, solvers_ in SOLVERS.items()
    for norm in (("tv",) if arch == "resnet" else ("tv", "bias"))
    for solver in solvers_
]


def _net(arch, norm, solver, *, fraction=None, lipschitz=False, seed=0):
    torch.manual_seed(seed)
    opts = {} if arch == "resnet" else {"normalization": norm}
    net = neuralpde.PDECNN(arch, 1, 10, (4, 6, 6), rhs_options=opts, lipschitz=lipschitz)
    if fraction is not None:
        constrain(net, (1, 8, 8), fraction=fraction)
    if solver is not None:
        method, h = solver
        net.set_solver(method, step_size=h)
    with torch.no_grad():  # running statistics that differ from the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("arch, norm, solver", CASES, ids=[f"{a}-{n}-{s}" for a, n, s in CASES])
def test_bound_is_never_below_the_measured_lipschitz_constant(arch, norm, solver):
    net = _net(arch, norm, solver, fraction=0.5 if norm == "bias" else None)
    bound = neuralpde.lipschitz_bound(net, (1, 8, 8))
    if not bound.finite:  # e^{L T} of a TV flow: beyond a float, and named
        assert solver[0] == "dopri5" and norm == "tv"
        assert "exceeds a float's range" in bound.unbounded[0]
        return
    assert bound.total > 0
    lower = measured(net, (1, 8, 8))
    assert lower > 0
    assert lower <= bound.total * (1 + 1e-9), (lower, str(bound))
    # The breakdown multiplies to the total and names every stage.
    product = math.prod(r["bound"] for r in bound.layers)
    assert product == pytest.approx(bound.total, rel=1e-12)
    assert [r["layer"] for r in bound.layers if r["layer"].startswith("stage")] == [
        "stage0",
        "stage1",
    ]


def test_tv_normalization_is_named_and_its_bound_is_vacuous():
    net = _net("parabolic", "tv", None)
    bound = neuralpde.lipschitz_bound(net, (1, 8, 8))
    stage = next(r for r in bound.layers if r["layer"] == "stage0")
    assert "TV normalization" in stage["note"]
    # The gain max|scale|/sqrt(ε) = 100 per step puts the bound far above the network's.
    assert bound.total > 1e4 * measured(net, (1, 8, 8))


def test_certified_configuration_is_one_lipschitz_up_to_pooling():
    net = _net("parabolic", "bias", None, fraction=1.0, lipschitz=True)
    bound = neuralpde.lipschitz_bound(net, (1, 8, 8))
    # Every layer 1 except 2×2 pooling (1/2) and the global mean over 4×4 (1/4).
    assert bound.total <= 0.125 * (1 + 1e-9)
    stages = [r["bound"] for r in bound.layers if r["layer"].startswith("stage")]
    assert stages == [1.0, 1.0]
    assert measured(net, (1, 8, 8)) <= bound.total
    # Finer forward-Euler steps and the flow keep every stage at 1.
    for method, h in (("euler", 0.5), ("euler", 0.125), ("dopri5", None)):
        net.set_solver(method, step_size=h)
        b = neuralpde.lipschitz_bound(net, (1, 8, 8))
        assert [r["bound"] for r in b.layers if r["layer"].startswith("stage")] == [1.0, 1.0]


STAGE_CASES = [
    ("parabolic", "euler", 1.0, 1.0),
    ("parabolic", "euler", 0.25, 1.0),
    # Beyond the limit (h ρ up to 3): a step is max(1, hρ - 1)-Lipschitz, not 1 + hρ.
    ("parabolic", "euler", 1.5, 1.0),
    ("parabolic", "rk4", 1.0, 0.5),
    pytest.param("parabolic", "dopri5", None, 1.0, marks=pytest.mark.slow),  # the flow
    ("hamiltonian", "symplectic_euler", 1.0, 1.0),
    ("hamiltonian", "yoshida4", 1.0, 0.25),
    ("second_order", "leapfrog", 1.0, 1.0),
    ("second_order", "midpoint", 1.0, 0.1),
]


@pytest.mark.parametrize("arch, method, h, fraction", STAGE_CASES)
def test_stage_bound_is_never_below_its_jacobian_norm(arch, method, h, fraction):
    # The stage alone, where the bounds are tight (a parabolic Euler stage at its limit is
    # exactly 1-Lipschitz on its linear regime): power iteration on JᵀJ at many inputs.
    torch.manual_seed(1)
    net = neuralpde.PDECNN(arch, 1, 10, (6, 6), rhs_options={"normalization": "bias"})
    constrain(net, (1, 6, 6), fraction=fraction)
    stage = net.stages[0]
    with torch.no_grad():
        for w in stage.rhs.thetas():
            w.shift.uniform_(-0.5, 0.5)
    bound = stage.rhs.lipschitz(6, 6, method, h)
    if h is None:
        # The bound is the exact flow's (the solver's error is not in it): the flow,
        # approximated by rk4 at 1/8 of the step (a relative error near 1e-4).
        stage.set_solver("rk4", step_size=1 / 8)
    else:
        stage.set_solver(method, step_size=h)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for i in range(8 if h else 4):
        x = torch.randn(1, 6, 6, 6, generator=gen) * (0.1, 1.0, 10.0, 100.0)[i % 4]
        worst = max(worst, power_norm(stage, x, iters=60 if h else 25, seed=i))
    assert 0.5 < worst <= bound * (1 + (1e-9 if h else 1e-3)), (worst, bound)
    if arch == "parabolic" and method == "euler" and h <= 1:
        assert bound == 1.0 and worst > 0.9  # the bound is attained to within 10 %
    if arch == "parabolic" and method == "euler" and h > 1:
        assert 1.0 < bound <= 2.0**2  # two steps of 1.5, each at most 3 - 1


def test_runge_kutta_and_splitting_step_bounds():
    z = 0.7
    assert rk_step_lipschitz("euler", z) == pytest.approx(1 + z)
    # Non-negative tableaus of order s: the Taylor polynomial of e^z.
    assert rk_step_lipschitz("midpoint", z) == pytest.approx(1 + z + z**2 / 2)
    assert rk_step_lipschitz("heun3", z) == pytest.approx(1 + z + z**2 / 2 + z**3 / 6)
    # Kutta's 3/8 rule has negative coefficients: its bound exceeds e^z's polynomial.
    assert rk_step_lipschitz("rk4", z) > 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24
    assert rk_step_lipschitz("explicit_adams", z) is None
    # The shear bound is the exact norm of [[1, b], [0, 1]].
    for b in (0.0, 0.3, 2.0):
        m = torch.tensor([[1.0, b], [0.0, 1.0]])
        assert shear_lipschitz(b) == pytest.approx(float(torch.linalg.matrix_norm(m, 2)))
    assert scheme_lipschitz("dopri5", None, 3.0, 0.5) == pytest.approx(math.exp(1.5))
    assert scheme_lipschitz("leapfrog", 1.0, 3.0, 0.5) is None  # a split method needs (L_q, L_p)
    assert scheme_lipschitz("euler", 0.4, 1.0, 2.0) == pytest.approx(1.8**3)  # 3 steps, last short


class ReactionDiffusion(neuralpde.RHS):
    """``dY/dt = -Kᵀ tanh(K Y + b) - a Y`` (a >= 0): declares its own bound."""

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant"):
        super().__init__(channels, steps, step_size, interpolation)
        c = channels
        self.theta = neuralpde.TimeWeights(
            {"K": torch.randn(steps, c, c, 3, 3) / (3 * c), "b": torch.randn(steps, c)},
            self.T,
            interpolation,
        )
        self.a = 0.3

    def forward(self, t, y):
        w = self.theta(t)
        z = torch.tanh(F.conv2d(y, w["K"], padding=1) + w["b"].view(1, -1, 1, 1))
        return -F.conv_transpose2d(z, w["K"], padding=1) - self.a * y

    def lipschitz(self, height, width, method, step_size):
        rho = float(neuralpde.stability.symbol_rho(self.theta.K.detach(), height, width).max())
        return scheme_lipschitz(method, step_size, self.T, rho + self.a)


class Undeclared(neuralpde.RHS):
    """A dynamics that declares no bound."""

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant"):
        super().__init__(channels, steps, step_size, interpolation)
        self.theta = neuralpde.TimeWeights({"b": torch.zeros(steps, channels)}, self.T)

    def forward(self, t, y):
        return torch.tanh(y) + self.theta(t)["b"].view(1, -1, 1, 1)


def test_a_users_dynamics_declares_its_own_bound(registered):
    registered("lipschitz_reaction", ReactionDiffusion)
    for method, h in (("euler", 1.0), ("rk4", 0.5), ("dopri5", None)):
        torch.manual_seed(0)
        net = neuralpde.PDECNN("lipschitz_reaction", 1, 10, (4, 6, 6)).eval()
        net.set_solver(method, step_size=h)
        bound = neuralpde.lipschitz_bound(net, (1, 8, 8))
        assert bound.finite
        assert measured(net, (1, 8, 8)) <= bound.total


def test_no_declared_bound_is_named_and_certifies_nothing(registered):
    registered("lipschitz_undeclared", Undeclared)
    net = neuralpde.PDECNN("lipschitz_undeclared", 1, 10, (4, 6, 6)).eval()
    bound = neuralpde.lipschitz_bound(net, (1, 8, 8))
    assert not bound.finite and bound.total == math.inf
    assert len(bound.unbounded) == 2 and "declares no Lipschitz bound" in bound.unbounded[0]
    assert "none" in str(bound)
    radii = neuralpde.certify(net, torch.randn(3, 1, 8, 8))
    assert torch.equal(radii, torch.zeros(3, dtype=torch.float64))


def test_certified_radius_is_the_margin_over_sqrt2_l_and_holds():
    net = _net("parabolic", "bias", None, fraction=1.0, lipschitz=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=gen)
    L = neuralpde.lipschitz_bound(net, (1, 8, 8)).total
    radii = neuralpde.certify(net, x)
    with torch.no_grad():
        logits = net(x)
    top = logits.topk(2, dim=1).values
    torch.testing.assert_close(radii, (top[:, 0] - top[:, 1]) / (math.sqrt(2) * L))
    pred = logits.argmax(1)
    # No perturbation inside the radius changes the class: random directions, and the
    # direction that closes the margin fastest (the gradient of the margin).
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        out = net(xi)[0]
        runner = out.clone().detach()
        runner[pred[i]] = -math.inf
        j = int(runner.argmax())
        (g,) = torch.autograd.grad(out[pred[i]] - out[j], xi)
        dirs = [-g] + [torch.randn(x[i : i + 1].shape, generator=gen) for _ in range(8)]
        with torch.no_grad():
            for d in dirs:
                d = d / d.norm() * radii[i] * 0.999
                assert net(x[i : i + 1] + d).argmax(1).item() == pred[i].item()
    # With labels: 0 where the prediction is wrong.
    y = pred.clone()
    y[:4] = (y[:4] + 1) % 10
    with_y = neuralpde.certify(net, x, y)
    assert torch.all(with_y[:4] == 0) and torch.equal(with_y[4:], radii[4:])


def test_errors_are_named():
    net = _net("parabolic", "bias", None)
    with pytest.raises(TypeError, match="expected a PDECNN"):
        neuralpde.lipschitz_bound(net.stages[0], (1, 8, 8))
    with pytest.raises(ValueError, match="input_shape"):
        neuralpde.lipschitz_bound(net, (8, 8))
    net.train()
    with pytest.raises(ValueError, match="training mode"):
        neuralpde.lipschitz_bound(net, (1, 8, 8))
    with pytest.raises(ValueError, match=r"certify: x must be"):
        neuralpde.certify(net, torch.zeros(1, 8, 8))
    net.eval()
    with pytest.raises(ValueError, match="has 3 channels, the network takes 1"):
        neuralpde.lipschitz_bound(net, (3, 8, 8))
    with pytest.raises(ValueError, match="divisible by 2, got 7×8"):
        neuralpde.lipschitz_bound(net, (1, 7, 8))
    with pytest.raises(ValueError, match="input_shape"):
        neuralpde.lipschitz_bound(net, "abc")
    x = torch.zeros(2, 1, 8, 8)
    for bad in (-1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="certify: bound must be"):
            neuralpde.certify(net, x, bound=bad)
    with pytest.raises(ValueError, match="computed for 16×16 inputs, x is 8×8"):
        neuralpde.certify(net, x, bound=neuralpde.lipschitz_bound(net, (1, 16, 16)))
    with pytest.raises(ValueError, match=r"y must be a \(2,\) tensor"):
        neuralpde.certify(net, x, [0, 1])
