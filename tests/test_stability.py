"""neuralpde.stability: spectral estimates against dense matrices, and step limits that hold."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import neuralpde
import solvers
from neuralpde import stability


def dense_conv(weight, c, h, w):
    """The zero-padded 3×3 convolution as a dense (c·h·w) × (c·h·w) matrix."""
    n = c * h * w
    eye = torch.eye(n, dtype=torch.float64).reshape(n, c, h, w)
    return F.conv2d(eye, weight.double(), padding=1).reshape(n, n).T


def stage(arch, channels=4, steps=2, step_size=1.0, gain=1.0, seed=0, **kw):
    torch.manual_seed(seed)
    cls = {
        "parabolic": neuralpde.ParabolicRHS,
        "hamiltonian": neuralpde.HamiltonianRHS,
        "second_order": neuralpde.SecondOrderRHS,
        "resnet": neuralpde.ResNetRHS,
    }[arch]
    s = neuralpde.Stage(cls(channels, steps, step_size, **kw))
    with torch.no_grad():
        for name, p in s.named_parameters():
            if "weight" in name:
                p.mul_(gain)
    return s


def test_power_iteration_matches_dense_spectral_norm():
    torch.manual_seed(1)
    c, h, w = 3, 5, 6
    weight = torch.randn(c, c, 3, 3)
    K = dense_conv(weight, c, h, w)
    exact = torch.linalg.matrix_norm(K, ord=2).item() ** 2
    op = lambda v: F.conv_transpose2d(F.conv2d(v, weight, padding=1), weight, padding=1)  # noqa: E731
    est = stability.power_iteration(op, (1, c, h, w))
    assert est.item() == pytest.approx(exact, rel=1e-2)
    assert est.item() <= exact * (1 + 1e-5)  # a Rayleigh quotient never overshoots
    assert stability.symbol_bound(weight, h, w) >= exact * (1 - 1e-9)
    # kernel_spectrum: the same pair per parameter set, for kernels that are not square too.
    ((rho, up),) = stability.kernel_spectrum(weight[None], h, w)
    assert rho == pytest.approx(est.item(), rel=1e-9) and up >= exact * (1 - 1e-9)
    wide = torch.randn(2, 5, c, 3, 3)  # two sets of a c -> 5 channel convolution
    for j, (rho, up) in enumerate(stability.kernel_spectrum(wide, h, w)):
        exact = torch.linalg.matrix_norm(dense_rect(wide[j], h, w), ord=2).item() ** 2
        assert rho == pytest.approx(exact, rel=1e-2) and exact * (1 - 1e-9) <= up
    with pytest.raises(ValueError, match=r"3×3 kernels \(n, c_out, c_in, 3, 3\)"):
        stability.kernel_spectrum(weight, h, w)


def dense_rect(weight, h, w):
    """A (c_out, c_in, 3, 3) zero-padded convolution as a dense matrix."""
    c_in = weight.shape[1]
    n = c_in * h * w
    eye = torch.eye(n, dtype=torch.float64).reshape(n, c_in, h, w)
    return F.conv2d(eye, weight.double(), padding=1).reshape(n, -1).T


def test_report_rho_matches_dense_for_every_arch_and_step():
    h, w = 6, 5
    for arch in ("parabolic", "hamiltonian", "second_order", "resnet"):
        s = stage(arch)
        rows = stability.report(s, (s.rhs.channels, h, w)).rows
        assert len(rows) == (4 if arch == "hamiltonian" else 2)
        for r in rows:
            if arch == "hamiltonian":
                theta = s.rhs.theta_q if r["layer"] == "K1" else s.rhs.theta_p
                K = dense_conv(theta.weight[r["step"]].detach(), 2, h, w)
            elif arch == "resnet":
                K1 = dense_conv(s.rhs.theta.weight1[r["step"]].detach(), 4, h, w)
                K = dense_conv(s.rhs.theta.weight2[r["step"]].detach(), 4, h, w) @ K1
            else:
                K = dense_conv(s.rhs.theta.weight[r["step"]].detach(), 4, h, w)
            exact = torch.linalg.matrix_norm(K, ord=2).item() ** 2
            assert r["rho"] == pytest.approx(exact, rel=1e-2), (arch, r)
            assert r["rho"] <= exact * (1 + 1e-5) and r["rho_upper"] >= exact * (1 - 1e-9)


def test_stage_sizes_follow_the_pooling():
    net = neuralpde.PDECNN("parabolic", 1, 3, (2, 2, 2), steps=1)
    rep = stability.report(net, (7, 1, 12, 10))
    w1 = net.stages[1].rhs.theta.weight[0].detach()
    assert rep.rows[1]["rho_upper"] == pytest.approx(stability.symbol_bound(w1, 6, 5))
    K = dense_conv(w1, 2, 6, 5)
    assert rep.rows[1]["rho"] == pytest.approx(torch.linalg.matrix_norm(K, ord=2).item() ** 2, 1e-2)


def test_unit_limits_are_the_classical_ones():
    lim = stability.stability_limit
    assert lim("euler", "dissipative") == pytest.approx(2.0, abs=1e-8)
    assert lim("rk4", "dissipative") == pytest.approx(2.785293563, abs=1e-6)
    for m in ("symplectic_euler", "leapfrog", "verlet"):
        assert lim(m, "oscillatory") == pytest.approx(2.0, abs=1e-8)
    assert lim("rk4", "oscillatory") == pytest.approx(2 * math.sqrt(2), abs=1e-6)
    assert lim("euler", "oscillatory") == 0.0  # forward Euler amplifies every oscillation
    assert lim("dopri5", "dissipative") is None


def test_stability_limit_names_a_bad_method_or_model():
    with pytest.raises(ValueError, match="'dissipative' or 'oscillatory'"):
        stability.stability_limit("euler", "parabolic")
    with pytest.raises(ValueError, match="unknown method 'eulr'"):
        stability.stability_limit("eulr", "dissipative")


def test_a_name_registered_again_gets_the_new_steppers_limit():
    """The limit is of the stepper, not of its name: Verlet's tableau (2) and then
    Yoshida's fourth-order composition (about 1.57) under one name, freed in between."""
    from solvers._methods import STEPPERS

    name = "test_limit_registered_again"
    limits = []
    for source in ("verlet", "yoshida4"):
        tableau = solvers.stepper(source).tableau
        solvers.register_stepper(solvers.SplittingStepper(name, order=2, tableau=tableau))
        try:
            limits.append(stability.stability_limit(name, "oscillatory"))
            assert limits[-1] == stability.stability_limit(source, "oscillatory")
        finally:
            del STEPPERS[name]
    assert limits[0] == pytest.approx(2.0, abs=1e-8)
    assert limits[1] < 1.9

    # A user's stepper need not be hashable (a dataclass, say): the limit is kept with it
    # by identity.
    @dataclasses.dataclass
    class Unhashable(solvers.Stepper):
        name: str = "test_limit_registered_again"
        order: int = 1
        evals: tuple = (1, 1)

        def step(self, func, t, h, state):
            (f_q, f_p), (q, p) = func, state
            q = q + h * f_q(t, p)
            return q, p + h * f_p(t, q)

    solvers.register_stepper(Unhashable())
    try:
        assert stability.stability_limit(name, "oscillatory") == pytest.approx(2.0, abs=1e-8)
    finally:
        del STEPPERS[name]


def linear_growth(s, h, n_steps=400):
    """‖Y(T)‖/‖Y(0)‖ (Y = q for second order, (q, p) else) of the linearization with D = I, stepped by the stage's own scheme."""
    rhs = s.rhs
    torch.manual_seed(0)
    y = torch.randn(1, rhs.channels, 6, 6, dtype=torch.float64)

    def KtK(weight, v):
        weight = weight.detach().double()
        return F.conv_transpose2d(F.conv2d(v, weight, padding=1), weight, padding=1)

    t = torch.tensor([0.0, n_steps * h], dtype=torch.float64)
    if isinstance(rhs, neuralpde.ParabolicRHS):
        out = solvers.odeint(
            lambda _, v: -KtK(rhs.theta.weight[0], v),
            y,
            t,
            method="euler",
            options={"step_size": h},
        )[-1]
        return (out.norm() / y.norm()).item()
    if isinstance(rhs, neuralpde.SecondOrderRHS):
        f = (lambda _, p: p, lambda _, q: -KtK(rhs.theta.weight[0], q))
        q0, p0 = y, torch.zeros_like(y)
    else:
        f = (
            lambda _, p: -KtK(rhs.theta_q.weight[0], p),
            lambda _, q: KtK(rhs.theta_p.weight[0], q),
        )
        q0, p0 = y.chunk(2, dim=1)
    q, p = solvers.odeint(f, (q0, p0), t, method=s.method, options={"step_size": h})
    if isinstance(rhs, neuralpde.SecondOrderRHS):
        return (q[-1].norm() / q0.norm()).item()  # p is a velocity, in other units
    return (torch.cat([q[-1], p[-1]], 1).norm() / torch.cat([q0, p0], 1).norm()).item()


@pytest.mark.parametrize("arch", ["parabolic", "second_order", "hamiltonian"])
def test_violating_step_is_flagged_and_suggested_step_is_stable(arch):
    s = (
        stage(arch, steps=1, gain=2.0, normalization="none")
        if arch == "parabolic"
        else stage(arch, steps=1, gain=2.0)
    )
    if arch == "hamiltonian":
        # K2 = K1 makes ρ(AB) = ρ1ρ2: the product bound is then tight, so it must be sharp.
        with torch.no_grad():
            s.rhs.theta_p.weight.copy_(s.rhs.theta_q.weight)
    rep = stability.report(s, (s.rhs.channels, 6, 6))
    assert not rep.ok and all(r["ok"] is False for r in rep.rows)
    max_step = min(r["max_step"] for r in rep.rows)
    suggested = rep.suggestions()[0]
    assert suggested <= max_step
    assert 1.0 / suggested == pytest.approx(round(1.0 / suggested))  # divides the cell
    s.set_solver(step_size=suggested)
    assert stability.report(s, (s.rhs.channels, 6, 6)).ok
    # Linearization with D = I: just above the limit the top mode grows, at the suggestion not.
    assert linear_growth(s, 1.05 * max_step) > 10.0
    bound = 1.0 + 1e-9 if arch == "parabolic" else 3.0  # symplectic: bounded, not monotone
    assert linear_growth(s, suggested) <= bound


def test_unnormalized_parabolic_stage_is_nonexpansive_at_suggested_step():
    # F = -∇Φ, Φ = ½‖relu(KY)‖² convex and ρ-smooth: Euler with h <= 2/ρ is non-expansive.
    torch.manual_seed(2)
    s = stage("parabolic", steps=3, gain=1.5, normalization="none").double()
    s.set_solver(step_size=stability.report(s, (4, 8, 8)).suggestions()[0])
    x = torch.randn(16, 4, 8, 8, dtype=torch.float64)
    dx = 1e-1 * torch.randn_like(x)
    ratio = (s(x + dx) - s(x)).flatten(1).norm(dim=1) / dx.flatten(1).norm(dim=1)
    assert ratio.max().item() <= 1.0 + 1e-9
    assert ratio.min().item() < 0.999  # and it does contract something


def test_resnet_has_no_step_limit_and_report_converts():
    net = neuralpde.PDECNN("resnet", 1, 3, (4, 4), steps=2)
    rep = stability.report(net, (1, 6, 6))
    assert all(r["max_step"] is None and r["ok"] is None for r in rep.rows)
    assert rep.ok  # nothing to violate
    table = rep.to_dict()
    assert set(table) == set(stability.COLUMNS) and table["layer"] == ["K2K1", "K2K1"]
    text = str(rep)
    assert text.splitlines()[0].split() == list(stability.COLUMNS) and len(text.splitlines()) == 4


def test_report_is_reachable_from_the_package_and_rejects_bad_input():
    assert neuralpde.stability.report is stability.report
    with pytest.raises(ValueError, match="input_shape"):
        stability.report(neuralpde.PDECNN("parabolic", 1, 3, (2, 2)), (8, 8))
    with pytest.raises(TypeError, match="PDECNN"):
        stability.report(torch.nn.Linear(2, 2), (1, 8, 8))


def test_methods_change_the_limit_and_euler_cannot_integrate_an_oscillation():
    s = stage("second_order", steps=1)
    leapfrog = stability.report(s, (4, 6, 6)).rows[0]
    s.set_solver("rk4")
    rk4 = stability.report(s, (4, 6, 6)).rows[0]
    assert rk4["max_step"] == pytest.approx(leapfrog["max_step"] * math.sqrt(2), rel=1e-6)
    s.set_solver("euler")
    euler = stability.report(s, (4, 6, 6)).rows[0]
    assert euler["max_step"] == 0.0 and euler["ok"] is False and euler["suggested_step"] is None
    s.set_solver("dopri5")
    adaptive = stability.report(s, (4, 6, 6)).rows[0]
    assert adaptive["h"] is None and adaptive["ok"] is None and adaptive["max_step"] is None


def test_filter_stage_report_is_exact_for_heat():
    # -KᵀK of the Neumann gradient: ρ = Σ_axes 4 sin²(π(n-1)/(2n)), exactly; forward Euler's
    # limit 2/ρ, and the filter's own default step respects it.
    s = neuralpde.Stage(neuralpde.HeatRHS(diffusivity=0.5, T=2.0))
    (row,) = stability.report(s, (1, 9, 6)).rows
    exact = sum(4 * math.sin(math.pi * (n - 1) / (2 * n)) ** 2 for n in (9, 6))
    assert row["rho"] == pytest.approx(0.5 * exact, rel=1e-12) and row["rho_upper"] == 4.0
    assert row["max_step"] == pytest.approx(2 / (0.5 * exact), rel=1e-8)  # c by bisection
    assert row["arch"] == "HeatRHS" and row["ok"] and not row["normalized"]
    # The power iteration on the filter itself agrees with the closed form.
    heat = s.rhs
    rho = stability.power_iteration(lambda v: -heat(None, v), (1, 1, 9, 6), dtype=torch.float64)
    assert rho.item() == pytest.approx(0.5 * exact, rel=1e-3)


def test_dynamics_without_a_spectrum_gets_one_row_without_bounds():
    class Decay(neuralpde.RHS):
        def forward(self, t, y):
            return -y

    rep = stability.report(neuralpde.Stage(Decay(2, steps=2, step_size=0.5)), (2, 4, 4))
    (row,) = rep.rows
    assert row["arch"] == "Decay" and row["method"] == "euler" and row["h"] == 0.5
    assert all(row[c] is None for c in ("step", "layer", "rho", "max_step", "ok"))
    assert rep.ok and rep.suggestions() == {}

    class Wrong(Decay):
        def spectrum(self, height, width, **kw):
            return {"K": [(1.0, 2.0)]}

    with pytest.raises(TypeError, match="Wrong.spectrum must return a Spectrum or None"):
        stability.report(neuralpde.Stage(Wrong(2)), (2, 4, 4))


def test_spectrum_is_validated():
    with pytest.raises(ValueError, match="model must be one of"):
        stability.Spectrum("elliptic", {"K": [(1.0, 1.0)]}, [(1.0, 1.0)], False)
    with pytest.raises(ValueError, match="one entry per parameter set"):
        stability.Spectrum("dissipative", {"K": [(1.0, 1.0)]}, [(1.0, 1.0)] * 2, False)
    with pytest.raises(ValueError, match="rates exactly when a model"):
        stability.Spectrum(None, {"K": [(1.0, 1.0)]}, [(1.0, 1.0)], False)
