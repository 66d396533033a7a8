"""Stability by construction: neuralpde.stability.constrain holds every parameter set's rate
inside a fraction of the method's limit, by a rigorous bound, at every step of training."""

import math

import pytest
import torch
import torch.nn.functional as F

import neuralpde
from neuralpde import stability

SYMMETRIC = ("parabolic", "hamiltonian", "second_order")


def dense(weight, h, w):
    """A zero-padded "same" convolution (c_out, c_in, kh, kw) as a dense matrix."""
    c_in = weight.shape[1]
    n = c_in * h * w
    eye = torch.eye(n, dtype=torch.float64).reshape(n, c_in, h, w)
    pad = (weight.shape[-2] // 2, weight.shape[-1] // 2)
    return F.conv2d(eye, weight.double(), padding=pad).reshape(n, -1).T


def kernels(net):
    """Every constrained kernel stack (the parametrized value) with its RateBound."""
    out = []
    for m in net.modules():
        if isinstance(m, neuralpde.TimeWeights) and hasattr(m, "parametrizations"):
            for name, plist in m.parametrizations.items():
                out.append((getattr(m, name), plist[0]))
    return out


def rigorous_rho(kernel, bound):
    return [stability.symbol_bound(k, bound.height, bound.width) for k in kernel.detach()]


@pytest.mark.parametrize("shape", [(2, 5, 4, 3, 3), (1, 3, 3, 5, 5), (2, 4, 6, 1, 1)])
def test_symbol_rho_is_a_rigorous_bound_with_the_gradient_of_the_bound(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    h, wd = 5, 6
    rho = stability.symbol_rho(w, h, wd)
    for j in range(shape[0]):
        exact = torch.linalg.matrix_norm(dense(w[j].detach(), h, wd), ord=2).item() ** 2
        assert exact <= rho[j].item() * (1 + 1e-12)
        if shape[-1] == 3:  # the 3x3 bound of symbol_bound, to round-off
            assert rho[j].item() == pytest.approx(stability.symbol_bound(w[j], h, wd), rel=1e-12)
    # The gradient is the derivative of the bound itself (central differences).
    d = torch.randn_like(w)
    (g,) = torch.autograd.grad(rho.sum(), w)
    eps = 1e-6
    up = stability.symbol_rho((w + eps * d).detach(), h, wd).sum()
    down = stability.symbol_rho((w - eps * d).detach(), h, wd).sum()
    assert (g * d).sum().item() == pytest.approx(((up - down) / (2 * eps)).item(), rel=1e-5)


def test_non_finite_kernels_are_named_not_a_lapack_failure():
    """A diverged step's NaN reaches the bound as a ValueError that names the parameter
    sets and says "NaN or Inf" (what the trainer's --nan guard reads), from the bound
    itself, the 3x3 bound and a constrained network's forward pass alike."""
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4, 3, 3, dtype=torch.float64)
    w[1, 0, 0, 0, 0], w[2, 1, 2, 1, 1] = math.nan, math.inf
    with pytest.raises(ValueError, match=r"symbol_rho: .*set\(s\) \[1, 2\] hold NaN or Inf"):
        stability.symbol_rho(w, 6, 6)
    with pytest.raises(ValueError, match="symbol_bound: the kernel holds NaN or Inf"):
        stability.symbol_bound(w[2], 6, 6)
    assert stability.symbol_bound(w[0], 6, 6) > 0  # the finite ones still bound
    with pytest.raises(ValueError, match=r"kernel_spectrum: .*set\(s\) \[1, 2\] hold NaN"):
        stability.kernel_spectrum(w, 6, 6)
    net = neuralpde.PDECNN("parabolic", 1, 10, (4, 8), rhs_options={"normalization": "bias"})
    stability.constrain(net, (1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    net(x)  # warm: the next call would read the carried bounds
    raw = net.stages[0].rhs.theta.parametrizations.weight.original
    with torch.no_grad():
        raw[0, 0, 0, 1, 1] = math.nan
    with pytest.raises(ValueError, match=r"set\(s\) \[0\] hold NaN or Inf"):
        net(x)


@pytest.mark.parametrize("arch", SYMMETRIC)
@pytest.mark.parametrize("fraction", [0.25, 1.0])
def test_constrained_network_is_proven_stable_at_its_fraction(arch, fraction):
    torch.manual_seed(1)
    net = neuralpde.PDECNN(arch, 1, 10, (8, 16, 16), rhs_options={"normalization": "bias"})
    with torch.no_grad():  # kernels far outside every limit before the constraint
        for stage in net.stages:
            for w in stage.rhs.thetas():
                w.weight.mul_(10)
    assert not stability.report(net, (1, 16, 16)).proven
    stability.constrain(net, (1, 16, 16), fraction=fraction)
    rep = stability.report(net, (1, 16, 16))
    assert rep.ok and rep.proven
    c = 2.0  # forward Euler (dissipative), symplectic Euler and leapfrog (oscillatory)
    for k, stage in enumerate(net.stages):
        spec = stage.rhs.spectrum(16 >> k, 16 >> k)  # stage k runs at 16 / 2**k
        for _, z_upper in spec.rates:
            assert stage.step_size * z_upper <= fraction * c * (1 + 1e-6)
    # The bound is on the network as it runs: its output is finite and the shape is kept.
    assert torch.isfinite(net(torch.randn(4, 1, 16, 16))).all()


def test_tv_normalized_rows_say_what_the_bound_leaves_out():
    net = neuralpde.PDECNN("parabolic", 1, 10, (8, 16))
    stability.constrain(net, (1, 8, 8), fraction=0.5)
    rep = stability.report(net, (1, 8, 8))
    assert rep.ok and not rep.proven
    assert all("normalization" in r["leaves_out"] for r in rep.rows)
    # The ResNet control has no step limit: nothing to prove, and nothing is claimed.
    control = stability.report(neuralpde.PDECNN("resnet", 1, 10, (8, 16)), (1, 8, 8))
    assert control.ok and not control.proven


@pytest.mark.parametrize("arch", SYMMETRIC)
def test_rigorous_bound_is_never_below_the_jacobians_largest_singular_value(arch):
    # The whole linearization of the layer, normalization (the bias) included: the exact
    # largest singular value of the Jacobian of F at many states (dense, by autograd) is
    # never above rho_upper, nor above the power-iteration estimate rho of the report.
    torch.manual_seed(2)
    rhs = neuralpde.archs()[arch](6, steps=2, normalization="bias").double()
    with torch.no_grad():
        for w in rhs.thetas():
            w.shift.normal_()
    spec = rhs.spectrum(5, 5)
    if arch == "hamiltonian":
        layers = [(rhs.f_q, rhs.theta_q, spec.layers["K1"], 3)]
        layers.append((rhs.f_p, rhs.theta_p, spec.layers["K2"], 3))
    else:
        f = rhs.f_p if arch == "second_order" else rhs.forward
        layers = [(f, rhs.theta, spec.layers["K"], 6)]
    for f, theta, bounds, c in layers:
        for j in range(2):
            t = torch.tensor(theta.T * (j + 0.5) / 2, dtype=torch.float64)
            for _ in range(5):
                y = torch.randn(1, c, 5, 5, dtype=torch.float64)
                jac = torch.autograd.functional.jacobian(lambda s, f=f, t=t: f(t, s), y)
                sigma = torch.linalg.matrix_norm(jac.reshape(y.numel(), -1), ord=2).item()
                assert sigma <= bounds[j][1] * (1 + 1e-9)
                assert sigma <= bounds[j][0] * (1 + 1e-6)


@pytest.mark.parametrize("arch", SYMMETRIC)
def test_the_constrained_rate_never_exceeds_its_bound_during_training(arch):
    torch.manual_seed(3)
    net = neuralpde.PDECNN(arch, 1, 10, (8, 16, 16), rhs_options={"normalization": "bias"})
    stability.constrain(net, (1, 8, 8), fraction=0.5)
    caps = [b.cap for _, b in kernels(net)]
    # A large learning rate pushes the raw kernels far outside the bound.
    opt = torch.optim.SGD(net.parameters(), lr=5.0, momentum=0.9)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    grew = False
    for _ in range(8):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        for (kernel, bound), cap in zip(kernels(net), caps):
            assert max(rigorous_rho(kernel, bound)) <= cap * (1 + 1e-6)
        raw = [
            stability.symbol_rho(m.parametrizations[n].original.detach(), 4, 4).max().item()
            for m in net.modules()
            if isinstance(m, neuralpde.TimeWeights) and hasattr(m, "parametrizations")
            for n in m.parametrizations
        ]
        grew = grew or max(r / c for r, c in zip(raw, caps)) > 1.5
    assert grew, "the raw kernels never left the bound: the test did not test it"


@pytest.mark.parametrize("arch", SYMMETRIC)
def test_a_linear_theta_is_bounded_between_its_knots_too(arch):
    # θ(t) between two knots is their convex combination and the spectral norm is convex,
    # so capping the knots caps every t: the report's rows (the knots) prove the whole stage.
    torch.manual_seed(4)
    net = neuralpde.PDECNN(
        arch, 1, 10, (8, 16), rhs_options={"normalization": "bias"}, interpolation="linear"
    )
    stability.constrain(net, (1, 8, 8), fraction=0.5)
    opt = torch.optim.SGD(net.parameters(), lr=5.0, momentum=0.9)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(4):  # raw kernels pushed outside the bound, as above
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    assert stability.report(net, (1, 8, 8)).proven
    checked = 0
    for stage in net.stages:
        for theta in stage.rhs.thetas():
            assert theta.interpolation == "linear"
            bound = theta.parametrizations["weight"][0]
            for t in torch.linspace(0, theta.T, 13, dtype=torch.float64):
                kernel = theta(t)["weight"].detach()
                rho = stability.symbol_bound(kernel, bound.height, bound.width)
                assert rho <= bound.cap * (1 + 1e-6)
                checked += 1
    assert checked


def test_a_linear_hamiltonian_rate_bounds_every_t_where_its_factors_peak_apart():
    # K1 peaks at the first knot and K2 at the second: sqrt(ρ1 ρ2) is (5/4)² = 1.56 times
    # larger halfway between them than at either knot, so knot-wise products would prove a
    # stage that is not stable.
    rhs = neuralpde.HamiltonianRHS(2, steps=3, interpolation="linear", normalization="bias")
    a = torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        rhs.theta_q.weight.copy_(torch.stack([2 * a, 0.5 * a, 0.5 * a]))
        rhs.theta_p.weight.copy_(torch.stack([0.5 * a, 2 * a, 0.5 * a]))
    rates = [upper for _, upper in rhs.spectrum(8, 8).rates]
    for t in torch.linspace(0, rhs.T, 41, dtype=torch.float64):
        k1, k2 = rhs.theta_q(t)["weight"], rhs.theta_p(t)["weight"]
        z = math.sqrt(stability.symbol_bound(k1, 8, 8) * stability.symbol_bound(k2, 8, 8))
        # t lies between knots j and j + 1 (1.5 apart): both rows must bound it.
        j = min(int(t.item() // 1.5), 1)
        assert z <= min(rates[j], rates[j + 1]) * (1 + 1e-9)
    # The knot-wise product alone would be below halfway's rate: the test can fail.
    rho = stability.symbol_bound(a, 8, 8)
    assert math.sqrt(4 * rho * 0.25 * rho) < 1.5 * rho
    # The differentiable rate (the penalty's and constrain's) says the same.
    z = rhs.rates(lambda w: stability.symbol_rho(w.detach().double(), 8, 8))
    assert z.tolist() == pytest.approx(rates, rel=1e-9)


@pytest.mark.parametrize(
    "arch, method, memory",
    [
        ("hamiltonian", "symplectic_euler", "reversible"),
        ("hamiltonian", "verlet", "reversible"),
        ("second_order", "leapfrog", "reversible"),
    ],
)
def test_constrained_gradients_through_reversible_memory_equal_autograd(arch, method, memory):
    torch.manual_seed(4)

    def build():
        torch.manual_seed(5)
        net = neuralpde.PDECNN(arch, 1, 10, (4, 6), rhs_options={"normalization": "bias"})
        net = net.double()
        net.set_solver(method, step_size=0.5)
        return stability.constrain(net, (1, 4, 4), fraction=0.5)

    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    ref, other = build(), build()
    other.set_solver(memory=memory)
    grads = []
    for net in (ref, other):
        net(x).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for n, g in grads[0].items():
        assert torch.allclose(grads[1][n], g, rtol=1e-9, atol=1e-9 * g.abs().max()), n


def test_constrained_network_refines_and_round_trips_its_state_dict():
    torch.manual_seed(6)
    net = neuralpde.PDECNN("parabolic", 1, 10, (4, 8), rhs_options={"normalization": "bias"})
    stability.constrain(net, (1, 8, 8), fraction=0.25)
    net.refine(2)
    assert stability.report(net, (1, 8, 8)).proven
    other = neuralpde.PDECNN("parabolic", 1, 10, (4, 8), rhs_options={"normalization": "bias"})
    stability.constrain(other, (1, 8, 8), fraction=0.25).refine(2)
    other.load_state_dict(net.state_dict())
    x = torch.randn(2, 1, 8, 8)
    net.eval(), other.eval()
    assert torch.equal(net(x), other(x))


@pytest.mark.parametrize("arch", SYMMETRIC)
def test_raw_scale_keeps_the_function_and_starts_the_raw_kernels_outside(arch):
    def build(raw_scale):
        torch.manual_seed(7)
        net = neuralpde.PDECNN(arch, 1, 10, (4, 6, 6), rhs_options={"normalization": "bias"})
        net = net.double()
        # One kernel stack inside its bound (shrunk), to be left exactly as it is.
        with torch.no_grad():
            net.stages[0].rhs.thetas()[0].weight.mul_(1e-3)
        return stability.constrain(net, (1, 8, 8), fraction=0.5, raw_scale=raw_scale)

    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    one, three = build(1.0), build(3.0)
    one.eval(), three.eval()
    assert torch.allclose(one(x), three(x), rtol=1e-12, atol=1e-12)

    def raws(net):
        return [
            (m.parametrizations[n].original.detach(), m.parametrizations[n][0])
            for m in net.modules()
            if isinstance(m, neuralpde.TimeWeights) and hasattr(m, "parametrizations")
            for n in m.parametrizations
        ]

    outside = 0
    for (r1, bound), (r3, _) in zip(raws(one), raws(three), strict=True):
        size = bound.height, bound.width
        rho1, rho3 = stability.symbol_rho(r1, *size), stability.symbol_rho(r3, *size)
        on_bound = rho1 > bound.cap * 0.99
        outside += int(on_bound.sum())
        # Outside the bound: three times its bounded value, ρ nine times the cap.
        assert torch.allclose(rho3[on_bound], 9 * rho1[on_bound], rtol=1e-9)
        # Inside it: the kernel itself, untouched.
        assert torch.equal(r3[~on_bound], r1[~on_bound])
    assert 0 < outside < sum(len(r) for r, _ in raws(one))


def test_rate_bound_gradient_falls_as_the_raw_scale_grows():
    # On and outside the bound the parametrization is 0-homogeneous: at raw scale s the
    # gradient is 1/s of the gradient at 1, and an SGD step moves the kernel 1/s² as far.
    torch.manual_seed(8)
    raw = torch.randn(3, 5, 5, 3, 3, dtype=torch.float64)
    probe = torch.randn_like(raw)
    cap = 0.1 * float(stability.symbol_rho(raw, 8, 8).min())
    grads = []
    for s in (1.0, 2.0, 4.0):
        k = (raw * s).requires_grad_()
        (stability.RateBound(cap, 8, 8)(k) * probe).sum().backward()
        grads.append(k.grad * s)
    for g in grads[1:]:
        assert torch.allclose(g, grads[0], rtol=1e-9, atol=1e-12)


def test_constrain_rejects_bad_settings():
    net = neuralpde.PDECNN("parabolic", 1, 10, (4, 8), rhs_options={"normalization": "bias"})
    for bad in (0, -0.5, 1.5, math.nan, True):
        with pytest.raises(ValueError, match="fraction must be"):
            stability.constrain(net, (1, 8, 8), fraction=bad)
    for bad in (0.5, 0, math.inf, math.nan, True, "2"):
        with pytest.raises(ValueError, match="raw_scale must be a finite number >= 1"):
            stability.constrain(net, (1, 8, 8), raw_scale=bad)
    stability.constrain(net, (1, 8, 8))
    with pytest.raises(ValueError, match="constrained already"):
        stability.constrain(net, (1, 8, 8))

    class Odd(neuralpde.ParabolicRHS):
        def rates(self, rho):  # not homogeneous in rho
            return rho(self.theta.weight) + 1.0

    with pytest.raises(ValueError, match="not positively homogeneous"):
        stability.constrain(neuralpde.Stage(Odd(4)), (4, 8, 8))

    class Derived(neuralpde.ParabolicRHS):
        def rates(self, rho):  # asks for a derived tensor, not the kernel parameter
            return rho(2 * self.theta.weight)

    with pytest.raises(ValueError, match="not a parameter of one of its TimeWeights"):
        stability.constrain(neuralpde.Stage(Derived(4)), (4, 8, 8))
    with pytest.raises(ValueError, match="normalization must be one of"):
        neuralpde.ParabolicRHS(4, normalization="batch")
    with pytest.raises(TypeError, match="rhs_options"):
        neuralpde.PDECNN("resnet", 1, 10, (4, 8), rhs_options={"normalization": "bias"})


def test_bias_normalized_layer_is_the_formula_and_differentiable():
    torch.manual_seed(7)
    y = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    from neuralpde._layers import biased_symmetric_layer

    expect = -F.conv_transpose2d(torch.relu(F.conv2d(y, k, b, padding=1)), k, padding=1)
    assert torch.equal(biased_symmetric_layer(y, k, b), expect)
    assert torch.equal(biased_symmetric_layer(y, k, b, negate=True), -expect)
    assert torch.autograd.gradcheck(biased_symmetric_layer, (y, k, b))


def test_warm_started_symbol_rho_is_the_full_maximum_and_solves_few_frequencies(monkeypatch):
    """RateBound's warm start (symbol_rho(..., warm=...)): over a run of small steps and a
    large jump the value is that of the full computation, while a small step solves only
    the frequencies that may hold the maximum."""
    import neuralpde._spectra as spectra

    solved = []
    gram = spectra._gram
    monkeypatch.setattr(spectra, "_gram", lambda s: solved.append(s.shape[:-2].numel()) or gram(s))
    g = torch.Generator().manual_seed(0)
    k = 0.1 * torch.randn(3, 8, 8, 3, 3, dtype=torch.float64, generator=g)
    warm = {}
    for step in range(12):
        big = step == 6  # a kernel far from the last: the bound is loose, more is solved
        k = k + (1.0 if big else 1e-3) * 0.1 * torch.randn(k.shape, dtype=k.dtype, generator=g)
        want = stability.symbol_rho(k, 12, 10)
        solved.clear()
        got = stability.symbol_rho(k, 12, 10, warm=warm)
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
        if step and not big:
            # 3 × 13 × 6 frequencies in all; a small step solves a handful (and the
            # eigenvector at each maximum).
            assert sum(solved) <= 3 * 13 * 6 // 4, solved
    # A zero kernel (eigenvalues 0 or a rounding below it, whose carried bound must not
    # become NaN and be skipped for good) and then any kernel: still the full maximum.
    for k2 in (torch.zeros_like(k), k):
        got = stability.symbol_rho(k2, 12, 10, warm=warm)
        torch.testing.assert_close(got, stability.symbol_rho(k2, 12, 10), rtol=1e-13, atol=0)
    # A float64 parameter updated in place, as an optimizer does: the kept kernels are a
    # copy, not a view that would show no drift.
    p = k.clone()
    for _ in range(3):
        stability.symbol_rho(p, 12, 10, warm=warm)
        with torch.no_grad():  # another kernel, its maximum at another frequency
            p.copy_(0.3 * torch.randn(k.shape, dtype=k.dtype, generator=g))
        got = stability.symbol_rho(p, 12, 10, warm=warm)
        torch.testing.assert_close(got, stability.symbol_rho(p, 12, 10), rtol=1e-13, atol=0)
    # Another image size with as many frequencies (12 × 6 = 9 × 8) restarts the bound:
    # the carried bounds belong to the other torus's frequencies.
    for size in ((11, 10), (8, 14)):
        got = stability.symbol_rho(k, *size, warm=warm)
        torch.testing.assert_close(got, stability.symbol_rho(k, *size), rtol=1e-13, atol=0)
    # Inside a torch.func transform the warm start stays out of the way.
    torch.func.vmap(lambda kk: stability.symbol_rho(kk[None], 12, 10, warm=warm))(k)
    got = stability.symbol_rho(k, 12, 10, warm=warm)
    torch.testing.assert_close(got, stability.symbol_rho(k, 12, 10), rtol=1e-13, atol=0)
    # The gradient is the full computation's too.
    kk = k.clone().requires_grad_(True)
    stability.symbol_rho(kk, 12, 10, warm=warm).sum().backward()
    kf = k.clone().requires_grad_(True)
    stability.symbol_rho(kf, 12, 10).sum().backward()
    torch.testing.assert_close(kk.grad, kf.grad, rtol=1e-10, atol=1e-12)


def test_warm_start_drift_bounds_the_symbol_drift_at_every_frequency():
    """The warm start's drift ‖ΔŴ(ω)‖_F, a quadratic form in the taps (no transform of the
    spectrum), is never below the drift of the transformed kernels, and is tight."""
    import neuralpde._spectra as spectra

    g = torch.Generator().manual_seed(1)
    for shape, size, scale in (
        ((2, 5, 4, 3, 3), (9, 7), 1e-3),
        ((3, 4, 4, 3, 3), (5, 5), 1.0),
        ((1, 6, 2, 3, 3), (4, 6), 1e-9),
        ((2, 3, 3, 5, 5), (10, 8), 0.1),
    ):
        dk = scale * torch.randn(shape, dtype=torch.float64, generator=g)
        want = torch.linalg.matrix_norm(spectra._symbols(dk, size)).reshape(shape[0], -1)
        got = spectra._drift(dk, size)
        assert got.shape == want.shape
        assert (got >= want).all()
        assert (got - want).max() <= 1e-5 * dk.norm()
