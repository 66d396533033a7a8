"""neuralpde.RHS: a dynamics of one's own works in Stage, PDECNN, the stability report,
reversible memory and the time-smoothness regularizer, exactly like the paper's."""

import math

import pytest
import torch
import torch.nn.functional as F

import neuralpde
import solvers
from experiments import ConfigError, resolve_config
from experiments._swap import load_trained
from neuralpde import stability

pytestmark = pytest.mark.usefixtures("float64")


class Reaction(neuralpde.RHS):
    """``y' = -Kᵀ tanh(K y) - a y``, the weights nested one module deeper than usual."""

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant"):
        super().__init__(channels, steps, step_size, interpolation)
        self.inner = torch.nn.Module()
        self.inner.theta = neuralpde.TimeWeights(
            {
                "K": 0.3 * torch.randn(steps, channels, channels, 3, 3),
                "a": torch.rand(steps, channels),
            },
            self.T,
            interpolation,
        )

    def forward(self, t, y):
        w = self.inner.theta(t)
        z = torch.tanh(F.conv2d(y, w["K"], padding=1))
        return -F.conv_transpose2d(z, w["K"], padding=1) - w["a"].view(1, -1, 1, 1) * y

    def spectrum(self, height, width, *, iters=500, tol=1e-6, seed=0):
        k = stability.kernel_spectrum(self.inner.theta.K, height, width, iters=iters, seed=seed)
        a = self.inner.theta.a.detach().amax(dim=1).tolist()
        return stability.Spectrum("dissipative", {"K": k}, [(lo + b, hi + b) for (lo, hi), b in zip(k, a)], False)  # fmt: skip

    def rates(self, rho):
        # The same rate as spectrum's, differentiable: ρ(KᵀK) + max a.
        return rho(self.inner.theta.K) + self.inner.theta.a.amax(dim=1)


class Coupled(neuralpde.RHS):
    """A split dynamics of its own: ``q' = p``, ``p' = -Kᵀ tanh(K q) - q`` on channel halves."""

    state = "halves"
    default_method = "verlet"

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant"):
        super().__init__(channels, steps, step_size, interpolation)
        half = channels // 2
        self.theta = neuralpde.TimeWeights(
            {"K": 0.3 * torch.randn(steps, half, half, 3, 3)}, self.T, interpolation
        )

    def f_q(self, t, p):
        return p

    def f_p(self, t, q):
        K = self.theta(t)["K"]
        return -F.conv_transpose2d(torch.tanh(F.conv2d(q, K, padding=1)), K, padding=1) - q


def unrolled_euler(rhs, x, h, steps):
    """Forward Euler written out, evaluating θ at each step's left end."""
    for j in range(steps):
        x = x + h * rhs(torch.tensor(j * h), x)
    return x


def test_subclass_of_a_paper_dynamics_is_a_stage():
    # The reproduction: a KeyError: 'MyRHS' (the default method was looked up by
    # class name). A subclass inherits its state, default method, weights and spectrum.
    class MyRHS(neuralpde.ParabolicRHS):
        pass

    torch.manual_seed(0)
    mine, theirs = MyRHS(8), neuralpde.ParabolicRHS(8)
    theirs.load_state_dict(mine.state_dict())
    a, b = neuralpde.Stage(mine), neuralpde.Stage(theirs)
    assert a.method == b.method == "euler" and a.step_size == 1.0
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(a(x), b(x))
    rep = stability.report(a, (8, 4, 4))
    assert [r["rho"] for r in rep.rows] == [r["rho"] for r in stability.report(b, (8, 4, 4)).rows]
    assert {r["arch"] for r in rep.rows} == {"MyRHS"}


@pytest.mark.parametrize(
    "rhs", [neuralpde.HeatRHS(0.5, T=1.0), neuralpde.PeronaMalikRHS(0.1, T=1.0)], ids=str
)
def test_image_filters_are_stages_like_any_other(rhs):
    # Stage(HeatRHS()) used to be refused. Any width: the filters act per channel.
    assert rhs.steps * rhs.step_size == pytest.approx(1.0) and rhs.step_size <= rhs.stable_step
    stage = neuralpde.Stage(rhs)
    u = torch.rand(2, 3, 9, 7)
    out = stage(u)
    want = solvers.odeint(
        rhs, u, torch.tensor([0.0, 1.0]), method="euler", options={"step_size": rhs.step_size}
    )[-1]
    assert torch.allclose(out, want, rtol=0, atol=1e-14)
    assert stage.last_stats["nfe"] == rhs.steps
    # Diffusion with a stable step never grows the image's spread.
    assert out.std() < u.std()


def test_own_dynamics_from_scratch_through_stage():
    torch.manual_seed(1)
    rhs = Reaction(4, steps=3, step_size=0.5)
    # Its time-dependent weights are found without being listed, however deep they sit.
    assert rhs.thetas() == [rhs.inner.theta] and rhs.jump_times() == [0.5, 1.0]
    stage = neuralpde.Stage(rhs)
    assert (stage.method, stage.step_size, rhs.split) == ("euler", 0.5, False)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(stage(x), unrolled_euler(rhs, x, 0.5, 3), rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="stage: 'verlet' needs a split .* Reaction"):
        stage.set_solver("verlet")
    with pytest.raises(ValueError, match="memory='reversible'.*Reaction stage is not reversible"):
        stage.set_solver(memory="reversible")
    # Any Runge–Kutta method, adaptive included, integrates it: rk4 and dopri5 agree.
    stage.set_solver("rk4", step_size=0.0125)
    fine = stage(x)
    stage.set_solver("dopri5", step_size=None, rtol=1e-8, atol=1e-10)
    assert torch.allclose(stage(x), fine, atol=1e-6)


def test_stability_report_reads_the_declared_spectrum():
    torch.manual_seed(2)
    stage = neuralpde.Stage(Reaction(3, steps=2, step_size=0.25))
    rows = stability.report(stage, (3, 6, 5)).rows
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        K = stage.rhs.inner.theta.K[r["step"]].detach()
        n = 3 * 6 * 5
        dense = F.conv2d(torch.eye(n).reshape(n, 3, 6, 5), K, padding=1).reshape(n, n).T
        rho = torch.linalg.matrix_norm(dense, ord=2).item() ** 2
        a = stage.rhs.inner.theta.a[r["step"]].max().item()
        assert r["rho"] == pytest.approx(rho, rel=1e-2) and r["rho"] <= rho * (1 + 1e-9)
        # Forward Euler's limit 2/z with z = ρ + max a, the dissipative model problem's.
        assert r["max_step"] == pytest.approx(2 / (r["rho"] + a), rel=1e-8)
        assert r["ok"] is (0.25 <= r["max_step"]) and r["normalized"] is False


def test_own_arch_in_pdecnn_by_class_and_by_registered_name(registered):
    torch.manual_seed(3)
    by_class = neuralpde.PDECNN(Reaction, 1, 3, (4, 6, 8), steps=2)
    assert by_class.arch == "Reaction" and isinstance(by_class.stages[1].rhs, Reaction)
    registered("reaction_test", Reaction)
    assert neuralpde.archs()["reaction_test"] is Reaction
    torch.manual_seed(3)
    by_name = neuralpde.PDECNN("reaction_test", 1, 3, (4, 6, 8), steps=2)
    assert by_name.arch == "reaction_test"
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(by_class(x), by_name(x))
    # A registered arch is a name for the report too.
    assert {r["arch"] for r in stability.report(by_name, (1, 8, 8)).rows} == {"reaction_test"}
    with pytest.raises(ValueError, match="already registered"):
        neuralpde.register_arch("reaction_test", Reaction)
    with pytest.raises(ValueError, match="already registered"):
        neuralpde.register_arch("parabolic", Reaction)
    with pytest.raises(TypeError, match="not a subclass of neuralpde.RHS"):
        neuralpde.register_arch("linear", torch.nn.Linear)
    with pytest.raises(ValueError, match="non-empty"):
        neuralpde.register_arch("", Reaction)
    # A network builds stages as cls(channels, steps, step_size, interpolation): a class
    # that cannot be built that way (an image filter) is refused with that said.
    with pytest.raises(TypeError, match=r"HeatRHS\(channels, steps, step_size, interpolation\)"):
        neuralpde.register_arch("heat", neuralpde.HeatRHS)
    with pytest.raises(TypeError, match="put it in a Stage of your own"):
        neuralpde.PDECNN(neuralpde.HeatRHS, 1, 3, (4, 4))
    with pytest.raises(ValueError, match="unknown arch 'elliptic'.*register_arch"):
        neuralpde.PDECNN("elliptic", 1, 3, (4, 4))
    archs = neuralpde.archs()
    archs.clear()  # a copy: the registry is untouched
    assert "parabolic" in neuralpde.archs()


def test_split_dynamics_of_ones_own_reversible_gradients_equal_autograd():
    torch.manual_seed(4)
    net = neuralpde.PDECNN(Coupled, 1, 3, (4, 6, 8), steps=4, step_size=0.25)
    assert [s.method for s in net.stages] == ["verlet", "verlet"]
    x = torch.randn(3, 1, 8, 8)
    y = torch.tensor([0, 2, 1])
    grads = {}
    for memory in ("autograd", "reversible"):
        net.set_solver(memory=memory)
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        grads[memory] = {n: p.grad.clone() for n, p in net.named_parameters()}
    assert [s.memory for s in net.stages] == ["reversible", "reversible"]
    for name, g in grads["autograd"].items():
        assert torch.allclose(grads["reversible"][name], g, rtol=1e-10, atol=1e-12), name
    assert any(n.startswith("stages.") and g.abs().max() > 0 for n, g in grads["autograd"].items())


def test_width_and_state_rules_are_declared_once():
    # The even-width rule belongs to the "halves" state, whichever class declares it.
    with pytest.raises(ValueError, match="Coupled: channels must be even"):
        Coupled(5)
    with pytest.raises(ValueError, match=r"PDECNN: stage widths \(6, 5\): .* must be even"):
        neuralpde.PDECNN(Coupled, 1, 3, (6, 5, 8))
    with pytest.raises(ValueError, match="HamiltonianRHS: channels must be even"):
        neuralpde.HamiltonianRHS(7)
    neuralpde.PDECNN(neuralpde.SecondOrderRHS, 1, 3, (5, 4))  # a velocity state: any width
    with pytest.raises(TypeError, match="state must be one of"):

        class Bad(neuralpde.RHS):
            state = "triple"

    with pytest.raises(TypeError, match="default_method must be a method name"):

        class Worse(neuralpde.RHS):
            default_method = None

    class NoForward(neuralpde.RHS):
        state = "halves"

    with pytest.raises(NotImplementedError, match="NoForward .* must define f_p"):
        NoForward(2)(torch.tensor(0.0), (torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)))


def test_experiments_config_asks_neuralpde(registered):
    # The config checks an arch with neuralpde's own rules: a newly registered one too.
    registered("coupled_test", Coupled)
    cfg = resolve_config(arch="coupled_test", widths=[4, 8], memory="reversible")
    assert cfg.arch == "coupled_test"
    with pytest.raises(ConfigError, match="Coupled: channels must be even"):
        resolve_config(arch="coupled_test", widths=[3, 8])
    with pytest.raises(ConfigError, match="reversible.*'rk4' is not one"):
        resolve_config(arch="coupled_test", solver="rk4", memory="reversible")
    with pytest.raises(ConfigError, match="ParabolicRHS stage is not reversible"):
        resolve_config(arch="parabolic", memory="reversible")


def test_time_smoothness_is_the_paper_formula():
    net = neuralpde.PDECNN("parabolic", 1, 10, (4, 8), steps=3, step_size=0.5)
    tau = 1e-3
    want = 0.0
    for m in net.modules():
        if isinstance(m, neuralpde.TimeWeights):
            for p in (m.weight, m.scale, m.shift):
                d = (p[1:] - p[:-1]) / 0.5
                want += (0.5 * torch.sqrt(d**2 + tau)).sum().item()
    assert math.isclose(neuralpde.time_smoothness(net, tau).item(), want, rel_tol=1e-12)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, neuralpde.TimeWeights):
                m.weight.copy_(m.weight[:1].expand_as(m.weight))
                m.scale.fill_(1.0)
                m.shift.fill_(0.0)
    # Constant-in-time weights: only the τ floor, h·sqrt(τ) per entry and step.
    n_entries = sum(
        p[1:].numel()
        for m in net.modules()
        if isinstance(m, neuralpde.TimeWeights)
        for p in m.parameters(recurse=False)
    )
    got = neuralpde.time_smoothness(net, tau).item()
    assert math.isclose(got, n_entries * 0.5 * math.sqrt(tau), rel_tol=1e-12)


def test_time_smoothness_for_every_dynamics_and_its_gradient():
    torch.manual_seed(5)
    rhs = Reaction(2, steps=4, step_size=0.25, interpolation="linear")
    th = rhs.inner.theta
    h = 1.0 / 3  # four linear knots over T = 1
    want = sum((h * torch.sqrt(((p[1:] - p[:-1]) / h) ** 2 + 1e-2)).sum() for p in (th.K, th.a))
    got = neuralpde.time_smoothness(neuralpde.Stage(rhs), tau=1e-2)
    assert torch.allclose(got, want, rtol=1e-12)
    got.backward()
    # d/dθ_j of h·sqrt(((θ_{j+1}-θ_j)/h)² + τ): a smoothed sign of the jumps, per entry.
    d = (th.a[1:] - th.a[:-1]).detach() / h
    s = d / torch.sqrt(d**2 + 1e-2)
    expected = torch.zeros_like(th.a)
    expected[:-1] -= s
    expected[1:] += s
    assert torch.allclose(th.a.grad, expected, rtol=1e-10)
    # No θ(t) at all (a filter): zero, in the module's dtype.
    assert neuralpde.time_smoothness(neuralpde.Stage(neuralpde.HeatRHS())).item() == 0.0
    with pytest.raises(ValueError, match="tau must be a positive"):
        neuralpde.time_smoothness(rhs, 0.0)
    with pytest.raises(TypeError, match="expected an nn.Module"):
        neuralpde.time_smoothness([rhs], 1e-3)


# ------------------------------------------------- the training penalty reads rates()


class Anisotropic(neuralpde.RHS):
    """``y' = -Kxᵀ tanh(Kx y) - Kyᵀ tanh(Ky y)`` with 1×3 and 3×1 kernels: no 3×3 kernel."""

    def __init__(self, channels, steps=3, step_size=1.0, interpolation="constant"):
        super().__init__(channels, steps, step_size, interpolation)
        c = channels
        self.theta = neuralpde.TimeWeights(
            {"Kx": torch.randn(steps, c, c, 1, 3), "Ky": torch.randn(steps, c, c, 3, 1)},
            self.T,
            interpolation,
        )

    def forward(self, t, y):
        w = self.theta(t)
        out = 0
        for k, pad in ((w["Kx"], (0, 1)), (w["Ky"], (1, 0))):
            out = out - F.conv_transpose2d(torch.tanh(F.conv2d(y, k, padding=pad)), k, padding=pad)
        return out

    def spectrum(self, height, width, *, iters=500, tol=1e-6, seed=0):
        rho = [(1.0, 1.0)] * self.steps  # a stand-in: the penalty reads only the model
        return stability.Spectrum("dissipative", {"Kx, Ky": rho}, rho, False)

    def rates(self, rho):
        return rho(self.theta.Kx) + rho(self.theta.Ky)


def _dense_rho(k, height, width):
    """ρ(KᵀK) of each parameter set of kernel ``k``, from the dense matrix of the zero-padded
    convolution: the reference the penalty's power iteration converges to."""
    out = []
    for kj in k.detach():
        c_in = kj.shape[1]
        eye = torch.eye(c_in * height * width, dtype=k.dtype).reshape(-1, c_in, height, width)
        pad = (kj.shape[-2] // 2, kj.shape[-1] // 2)
        a = F.conv2d(eye, kj, padding=pad).reshape(eye.shape[0], -1)  # rows: Kᵀ e_i
        out.append(torch.linalg.matrix_norm(a, ord=2).item() ** 2)
    return out


def test_penalty_uses_the_rates_a_dynamics_declares_for_any_kernel_shape():
    torch.manual_seed(0)
    stage = neuralpde.Stage(Anisotropic(3, steps=2))
    pen = stability.StabilityPenalty(stage, (3, 6, 5), iters=1000)
    th = stage.rhs.theta
    z = [a + b for a, b in zip(_dense_rho(th.Kx, 6, 5), _dense_rho(th.Ky, 6, 5))]
    expect = sum(max(0.0, z_j / 2.0 - 1.0) ** 2 for z_j in z)  # euler: c = 2, h = 1
    value = pen(stage)
    assert expect > 0
    # A power iteration from below: converged to 1e-4 here (near-equal eigenvalues).
    torch.testing.assert_close(value.item(), expect, rtol=1e-4, atol=0)
    value.backward()
    assert th.Kx.grad.abs().sum() > 0 and th.Ky.grad.abs().sum() > 0
    # The reaction term of a declared rate counts too (it is not only ρ(KᵀK)).
    torch.manual_seed(1)
    r = neuralpde.Stage(Reaction(2, steps=2))
    with torch.no_grad():
        r.rhs.inner.theta.a.fill_(3.0)  # z >= 3 > 2: over the Euler limit by the reaction alone
        r.rhs.inner.theta.K.mul_(1e-3)
    assert stability.StabilityPenalty(r, (2, 4, 4))(r).item() > 0.2


def test_penalty_refuses_a_step_limit_without_rates_and_bad_rates():
    class NoRates(Anisotropic):
        rates = neuralpde.RHS.rates

    with pytest.raises(
        ValueError, match=r"declares a step limit .* no rates\(rho\).*stability_penalty=0"
    ):
        stability.StabilityPenalty(neuralpde.Stage(NoRates(2)), (2, 4, 4))

    class Scalar(Anisotropic):
        def rates(self, rho):
            return (rho(self.theta.Kx) + rho(self.theta.Ky)).max()

    pen = stability.StabilityPenalty(neuralpde.Stage(Scalar(2)), (2, 4, 4))
    with pytest.raises(ValueError, match=r"must return a tensor of shape \(3,\)"):
        pen(neuralpde.Stage(Scalar(2)))

    class NotAKernel(Anisotropic):
        def rates(self, rho):
            return rho(self.theta.Kx[:, :, :, 0])

    with pytest.raises(ValueError, match="odd kh and kw"):
        stability.StabilityPenalty(neuralpde.Stage(NotAKernel(2)), (2, 4, 4))


def test_own_dynamics_trains_stable_by_construction_with_the_default_recipe(registered, tmp_path):
    # A user's dynamics that declares its rates (rho(Kx) + rho(Ky)) is held to the default
    # rate bound like the built-in ones, and its trained network is proven stable.
    registered("anisotropic-test", Anisotropic)
    torch.manual_seed(0)
    cfg = resolve_config(arch="anisotropic-test", widths=[4, 4], epochs=1, out=str(tmp_path))
    assert cfg.rate_bound == 0.25 and cfg.stability_penalty == 0.0  # the quick recipe's
    from experiments import fit

    report = fit(cfg, log=lambda *_: None)
    assert math.isfinite(report["test_loss"])
    # Its rate, with the rigorous bound of each trained kernel: h z <= 1/4 of Euler's 2.
    (stage,) = load_trained(tmp_path / "best.pt")[0].stages
    rate = stage.rhs.rates(lambda k: stability.symbol_rho(k.detach(), 8, 8))
    assert (stage.step_size * rate <= 0.25 * 2 * (1 + 1e-6)).all(), rate


def test_penalty_state_keeps_the_parameter_names_of_the_paper_networks():
    net = neuralpde.PDECNN("hamiltonian", 1, 10, (4, 8, 8))  # two stages
    pen = stability.StabilityPenalty(net, (1, 8, 8))
    assert sorted(pen.state_dict()) == [
        "v0_theta_p_weight",
        "v0_theta_q_weight",
        "v1_theta_p_weight",
        "v1_theta_q_weight",
    ]
